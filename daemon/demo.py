"""`taskmgrd demo`: a bundled simulator driven over the wire, with a live view.

What exists today is the simulator and the daemon's VDSM client, so the demo shows those: it
starts `vdsm-sim` in-process on a free port, connects to its hosts over STOMP exactly as the daemon
will, creates storage tasks, lets some finish, stops one mid-flight (VDSM rolls it back), reverts
a finished one (its volume disappears), cancels a VM migration (the VM stays on its source),
clears every task, and checks the simulator's own state at the end. Exit 0 only if every check
holds. Nothing is written to disk.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.vdsm.client import StompRpcClient
from vdsm_simulator.app import Simulator
from vdsm_simulator.config import Settings

BLANK = "00000000-0000-0000-0000-000000000000"
STATE_STYLE = {"running": "yellow", "finished": "green", "aborting": "red", "cleaning": "magenta"}


@dataclass
class DemoState:
    """What the live view shows: the last task report per task and a log of what happened."""

    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    log: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)

    def note(self, text: str) -> None:
        self.log.append(f"{time.monotonic() - self.started:5.1f}s  {text}")

    def render(self) -> Group:
        table = Table(title="SPM tasks (Host.getAllTasksStatuses)", expand=True)
        for col in ("task", "what", "taskState", "taskResult", "code", "message"):
            table.add_column(col, overflow="fold")
        for tid, st in self.tasks.items():
            state = st.get("taskState", "?")
            table.add_row(
                tid[:8],
                self.labels.get(tid, ""),
                Text(state, style=STATE_STYLE.get(state, "")),
                st.get("taskResult", ""),
                str(st.get("code", "")),
                str(st.get("message", ""))[:60],
            )
        return Group(table, Text("\n".join(self.log[-12:])))


class Demo:
    def __init__(self, console: Console) -> None:
        self.console = console
        self.state = DemoState()
        settings = Settings()
        settings.server.port = 0
        settings.cluster.hosts = 3
        settings.cluster.time_scale = 0.4
        settings.cluster.task_seconds = 4.0
        settings.cluster.task_distribution = "fixed"
        self.sim = Simulator(settings)
        self.checks: list[tuple[str, bool]] = []

    async def run(self) -> bool:
        await self.sim.start()
        try:
            with Live(self.state.render(), console=self.console, refresh_per_second=8) as live:
                poller = asyncio.create_task(self._poll(live))
                try:
                    await self._script()
                finally:
                    poller.cancel()
                    await asyncio.gather(poller, return_exceptions=True)
                    live.update(self.state.render())
        finally:
            await self.sim.stop()
        self._summary()
        return all(ok for _, ok in self.checks)

    # -- the script --------------------------------------------------------------------------

    async def _script(self) -> None:
        cluster = self.sim.cluster
        pool = next(iter(cluster.storage.pools.values()))
        assert pool.spm_host is not None
        self.spm = StompRpcClient("127.0.0.1", self.sim.port, host_header=pool.spm_host, timeout=30)
        self.pool, self.domain = pool.uuid, pool.master_domain
        s = self.state
        s.note(
            f"simulator on port {self.sim.port}: {len(cluster.hosts)} hosts, SPM {pool.spm_host}"
        )

        kept = [await self._create("disk kept") for _ in range(2)]
        stopped = await self._create("disk stopped", preallocated=True)
        reverted = await self._create("disk reverted")
        await self._until(stopped[0], "running", "message", "running job 1 of 1")
        await self.spm.call("Task.stop", {"taskID": stopped[0]})
        s.note(f"Task.stop {stopped[0][:8]}: VDSM aborts the job and rolls it back")
        for tid, _ in [*kept, stopped, reverted]:
            await self._until(tid, "finished")
        await self.spm.call("Task.revert", {"taskID": reverted[0]})
        s.note(f"Task.revert {reverted[0][:8]}: the finished task's volume is removed")
        await self._migration_cancelled()
        for tid in list(s.tasks):
            await self.spm.call("Task.clear", {"taskID": tid})
        s.note("Task.clear on every task")
        await self._check_end(kept, stopped, reverted)
        await self.spm.close()

    async def _create(self, label: str, *, preallocated: bool = False) -> tuple[str, str]:
        vol = str(uuid.uuid4())
        params = {
            "volumeID": vol,
            "storagepoolID": self.pool,
            "storagedomainID": self.domain,
            "imageID": str(uuid.uuid4()),
            "size": str(1 << 30),
            "volFormat": "RAW" if preallocated else "COW",
            "preallocate": "PREALLOCATED" if preallocated else "SPARSE",
            "diskType": "DATA",
            "desc": label,
            "srcImgUUID": BLANK,
            "srcVolUUID": BLANK,
        }
        tid = await self.spm.call("Volume.create", params)
        self.state.labels[tid] = label
        self.state.note(f"Volume.create → task {tid[:8]} ({label})")
        return tid, vol

    async def _poll(self, live: Live) -> None:
        while True:
            try:
                self.state.tasks.update(await self.spm.call("Host.getAllTasksStatuses", timeout=5))
            except Exception as e:  # the view must survive a failed poll; the script reports
                self.state.note(f"poll failed: {e}")
            live.update(self.state.render())
            await asyncio.sleep(0.1)

    async def _until(self, tid: str, state: str, key: str = "", value: str = "") -> None:
        async with asyncio.timeout(30):
            while True:
                st = self.state.tasks.get(tid, {})
                if st.get("taskState") == state and (not key or st.get(key) == value):
                    return
                await asyncio.sleep(0.05)

    async def _migration_cancelled(self) -> None:
        cluster = self.sim.cluster
        vm = cluster.fleet.add_vm(str(uuid.uuid4()), "demo-vm", "host2", memory_mb=2048)
        src = StompRpcClient("127.0.0.1", self.sim.port, host_header="host2", timeout=30)
        seen: list[str] = []
        src.on_event(lambda method, params: seen.append(method))
        await src.call(
            "VM.migrate", {"vmID": vm.vm_id, "params": {"dst": "host3", "method": "online"}}
        )
        self.state.note(f"VM.migrate {vm.name} host2 → host3")
        await _poll_host(
            lambda: src.call("VM.getMigrationStatus", {"vmID": vm.vm_id}),
            lambda st: st["progress"] >= 10,
        )
        await src.call("VM.migrateCancel", {"vmID": vm.vm_id})
        self.state.note("VM.migrateCancel: the VM stays on host2")
        await _poll_host(
            lambda: src.call("VM.getStats", {"vmID": vm.vm_id}), lambda st: st[0]["status"] == "Up"
        )
        on_src = [v["vmId"] for v in await src.call("Host.getVMList", {})]
        self.checks.append(("VM still on its source after migrateCancel", vm.vm_id in on_src))
        self.checks.append(("migration events received", any("VM_status" in m for m in seen)))
        await src.close()

    async def _check_end(
        self, kept: list[tuple[str, str]], stopped: tuple[str, str], reverted: tuple[str, str]
    ) -> None:
        vols = await self.spm.call(
            "StorageDomain.getVolumes", {"storagedomainID": self.domain, "storagepoolID": self.pool}
        )
        s = self.state.tasks
        self.checks += [
            ("kept disks exist", all(v in vols for _, v in kept)),
            ("stopped disk rolled back (gone)", stopped[1] not in vols),
            ("stopped task ended with code 411", s[stopped[0]].get("code") == 411),
            ("reverted disk removed", reverted[1] not in vols),
            (
                "reverted task reports cleanSuccess",
                s[reverted[0]].get("taskResult") == "cleanSuccess",
            ),
            ("no task left on the SPM", await self.spm.call("Host.getAllTasksStatuses") == {}),
        ]

    def _summary(self) -> None:
        self.console.print()
        table = Table(title="demo checks (read back from the simulator)")
        table.add_column("check")
        table.add_column("result")
        for name, ok in self.checks:
            table.add_row(name, Text("ok", style="green") if ok else Text("FAILED", style="red"))
        self.console.print(table)


async def _poll_host(
    ask: Callable[[], Awaitable[Any]], done: Callable[[Any], bool], deadline: float = 30.0
) -> None:
    """Ask a host until its answer satisfies `done`; VDSM has no event for everything."""
    async with asyncio.timeout(deadline):
        while not done(await ask()):  # noqa: ASYNC110 - the condition lives on a remote host
            await asyncio.sleep(0.1)


def run_demo() -> int:
    console = Console()
    ok = asyncio.run(Demo(console).run())
    console.print("demo passed" if ok else "demo FAILED", style="bold green" if ok else "bold red")
    return 0 if ok else 1

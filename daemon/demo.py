"""`taskmgrd demo`: the daemon at work on a bundled simulator, start to end in 10 to 15 seconds.

It starts vdsm-sim in-process (four hosts on a port each, one storage pool with two domains) and
a real taskmgrd on a temporary SQLite file, its API on a unix socket in the same temporary
directory, and from then on drives the daemon only through that API, as `taskmgr` does: one job
per scenario of DESIGN.md run to its end, then a stop, a revert and a batch cancelled by its
correlation id. The simulator's job gate holds the storage tasks of the jobs to be cancelled at
their end, and the migration to be stopped moves 64 GiB, so every cancel lands while its work is
provably still running: nothing depends on timing. Every outcome is then read back from the
simulator's own state (volumes, VMs, task tables), and the exit status is 0 only if all hold.
The temporary directory is removed and nothing keeps running afterwards, also on Ctrl-C.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import signal
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table
from rich.text import Text

from daemon.cli import Client
from daemon.config import load_config
from daemon.demo_view import (
    Board,
    DemoJob,
    NoteHandler,
    cancel_summary,
    current_step,
    duration,
    styled,
)
from daemon.service import Daemon
from vdsm_simulator.app import Simulator
from vdsm_simulator.cluster import SimConfig
from vdsm_simulator.config import ServerConfig, Settings
from vdsm_simulator.host import JobGate

HOSTS = 4  # host1..host3 are configured; host4 joins through AddHost
CONFIGURED = ("host1", "host2", "host3")
TIME_SCALE = 0.5  # real seconds per simulated second
TASK_SECONDS = 3.0  # simulated seconds every storage job takes
SMALL_VM_MB = 256  # migrates in about 6 simulated seconds
BIG_VM_MB = 65536  # about 21 simulated minutes: still migrating whenever it is cancelled
DISK_BYTES = 1 << 30
DEADLINE = 40.0  # seconds any one wait of the script may take before the demo gives up
TICK = 0.1  # seconds between two looks at the daemon's API


class DemoFailed(Exception):
    """The script could not go on (a wait ran out, the API refused): the message says where."""


def daemon_toml(workdir: Path, pool: str, ports: dict[str, int]) -> str:
    """The daemon's configuration file (json.dumps quotes paths as TOML basic strings)."""
    lines = [
        "[daemon]",
        f"socket = {json.dumps(str(workdir / 'api.sock'))}",
        f"db = {json.dumps(str(workdir / 'taskmgrd.db'))}",
        'synchronous = "NORMAL"',
        'log_level = "WARNING"',
        "",
        "[polling]  # fast, for a demo on a simulator with tasks of a few seconds",
        "fast_interval = 0.05",
        "idle_interval = 0.5",
        "monitor_interval = 0.25",
        "call_timeout = 10.0",
        "spm_start_timeout = 10.0",
    ]
    for name in CONFIGURED:
        lines += [
            "",
            "[[hosts]]",
            f'name = "{name}"',
            'address = "127.0.0.1"',
            f"port = {ports[name]}",
            f'pool = "{pool}"',
        ]
    return "\n".join(lines) + "\n"


class Demo:
    def __init__(self, console: Console, workdir: Path) -> None:
        self.console = console
        self.workdir = workdir
        self.board = Board(console)
        self.sim: Simulator
        self.daemon: Daemon
        self.client: Client
        self.redraw: Callable[[], None] = lambda: None
        self.failure = ""

    # -- set-up and tear-down ------------------------------------------------------------------

    async def run(self) -> bool:
        """The whole demo; True when every job ended as expected and every check held."""
        handler = NoteHandler(self.board)
        logging.getLogger().addHandler(handler)
        try:
            async with contextlib.AsyncExitStack() as stack:
                await self._start(stack)
                with self.board.live() as redraw:
                    self.redraw = redraw
                    try:
                        await self._script()
                    except DemoFailed as e:
                        self.failure = str(e)
                        self.board.note(f"FAILED: {e}")
                    finally:
                        redraw()
        finally:
            logging.getLogger().removeHandler(handler)
        self._summary()
        return not self.failure and not any(job.failures() for job in self.board.jobs.values())

    async def _start(self, stack: contextlib.AsyncExitStack) -> None:
        cluster = SimConfig(
            hosts=HOSTS,
            seed=7,
            time_scale=TIME_SCALE,
            task_seconds=TASK_SECONDS,
            task_distribution="fixed",
        )
        self.sim = Simulator(Settings(ServerConfig(port=0, port_per_host=True), cluster))
        await self.sim.start()
        stack.push_async_callback(self.sim.stop)
        pool = next(iter(self.sim.cluster.storage.pools.values()))
        assert pool.spm_host is not None
        self.pool, self.spm = pool.uuid, pool.spm_host
        self.domains = list(pool.domains)
        self.gate: JobGate = self.sim.cluster.hosts[self.spm].gate
        fleet = self.sim.cluster.fleet
        self.vms = {
            name: fleet.add_vm(str(uuid.uuid4()), name, host, memory_mb=mb).vm_id
            for name, host, mb in (
                ("demo-small", "host1", SMALL_VM_MB),
                ("demo-big", "host1", BIG_VM_MB),
                ("demo-app1", "host3", SMALL_VM_MB),
                ("demo-app2", "host3", SMALL_VM_MB),
            )
        }
        self.board.note(
            f"vdsm-sim: {HOSTS} hosts on ports {sorted(self.sim.host_ports.values())}, "
            f"pool {self.pool[:8]} (SPM {self.spm}), {len(self.domains)} domains, "
            f"{len(self.vms)} VMs"
        )
        config_file = self.workdir / "taskmgrd.toml"
        config_file.write_text(daemon_toml(self.workdir, self.pool, self.sim.host_ports))
        config = load_config(config_file)
        self.daemon = Daemon(config)
        await self.daemon.start()
        stack.push_async_callback(self.daemon.stop)
        stack.callback(self.gate.open)  # runs first: nothing waits at the gate at shutdown
        self.client = Client(str(config.daemon.socket))
        stack.push_async_callback(self.client.close)
        self.board.note(
            f"taskmgrd: db {config.daemon.db}, API on {config.daemon.socket} (all removed at exit)"
        )

    # -- the script ----------------------------------------------------------------------------

    async def _script(self) -> None:
        await self._scenarios()
        await self._cancellations()
        await self._final_checks()

    async def _scenarios(self) -> None:
        self.board.note("part 1: one job per scenario, each run to its end")
        d0, d1 = self.domains[0], self.domains[1]
        image, volume = str(uuid.uuid4()), str(uuid.uuid4())
        host4 = {
            "name": "host4",
            "address": "127.0.0.1",
            "port": self.sim.host_ports["host4"],
            "pool": self.pool,
        }
        refresh = await self._submit("refresh", "1 simple", "RefreshHost", {"host": "host1"})
        disk = await self._submit(
            "disk",
            "2 tasks",
            "CreateDisk",
            {"pool": self.pool, "domain": d0, "size": DISK_BYTES, "image": image, "volume": volume},
        )
        web = await self._submit(
            "vm web",
            "3 children",
            "CreateVm",
            {"name": "demo-web", "host": "host2", "disks": [self._disk()]},
        )
        add = await self._submit("add host4", "4 detached", "AddHost", host4)
        migrate = await self._submit(
            "migrate small",
            "4 monitor",
            "MigrateVm",
            {"vm": self.vms["demo-small"], "dst_host": "host2"},
        )
        maint = await self._submit(
            "maint host3", "4 monitor", "SetHostMaintenance", {"host": "host3"}
        )
        await self._until_ended(disk)
        disk.check(f"volume {volume[:8]} exists on domain {d0[:8]}", volume in self._volumes(d0))
        copy = await self._submit(
            "copy disk",
            "2 tasks",
            "CopyDisk",
            {"pool": self.pool, "domain": d0, "image": image, "dst_domain": d1},
        )
        await self._until_ended(copy)
        copy.check(f"image {image[:8]} copied to domain {d1[:8]}", self._has_image(d1, image))
        delete = await self._submit(
            "delete copy",
            "2 tasks",
            "DeleteDisk",
            {"pool": self.pool, "domain": d1, "image": image},
        )
        for job in (refresh, web, add, migrate, maint, delete):
            await self._until_ended(job)
        delete.check(f"the copy is gone from {d1[:8]}", not self._has_image(d1, image))
        delete.check(f"the original stays on {d0[:8]}", self._has_image(d0, image))
        web_vm = self._vm_named("demo-web")
        web.check("VM demo-web is Up on host2", web_vm == ("host2", "Up"))
        web.check("its disk exists", self._volumes_left(web) == ["exists"])
        hosts = {h["name"]: h for h in (await self._api("GET", "/hosts"))["hosts"]}
        add.check("host4 is UP in the daemon", hosts.get("host4", {}).get("status") == "UP")
        migrate.check("demo-small runs on host2 only", self._where("demo-small") == ["host2"])
        maint.check("host3 is in MAINTENANCE", hosts["host3"]["status"] == "MAINTENANCE")
        maint.check("no VM left on host3", not self.sim.cluster.fleet.vms_on("host3"))

    async def _cancellations(self) -> None:
        self.board.note(
            f"part 2: cancels. The job gate of {self.spm} (SPM) now holds every storage "
            "task at its end until the demo releases it"
        )
        self.gate.hold()
        before = self._volumes()
        db = await self._submit(
            "vm db",
            "3 children",
            "CreateVm",
            {"name": "demo-db", "host": "host2", "disks": [self._disk(), self._disk()]},
            expect="ABORTED",
            cancel_mode="revert",
        )
        batch_id = f"demo-batch-{uuid.uuid4().hex[:8]}"
        batch = await self._submit_batch(batch_id, 3)
        big = await self._submit(
            "migrate big",
            "4 monitor",
            "MigrateVm",
            {"vm": self.vms["demo-big"], "dst_host": "host2"},
            expect="ABORTED",
            cancel_mode="stop",
        )

        # revert: one disk of the VM is created, the other still being created
        await self._until(f"both disks of {db.label} held", lambda: len(self._held(db)) == 2)
        first = self._held(db)[0]
        self.gate.release(first)
        self.board.note(f"released task {first[:8]}: the first disk of {db.label} is created")
        await self._until(
            f"the first disk of {db.label} reported finished",
            lambda: any(
                t["vdsm_id"] == first and t["vdsm_state"] == "finished" for t in db.tasks()
            ),
        )
        await self._cancel(db, "revert")
        await self._release_when_stopped(db)

        # batch: three disk creations cancelled with one call, by correlation id
        await self._until(
            f"the tasks of batch {batch_id} held",
            lambda: all(len(self._held(job)) == 1 for job in batch),
        )
        doc = await self._api(
            "POST",
            "/cancel",
            {"correlation_id": batch_id, "mode": "stop", "reason": "demo: cancel the batch"},
        )
        accepted = sum(1 for j in doc["jobs"] if j["accepted"])
        self.board.note(f"POST /cancel correlation_id={batch_id} stop: {accepted} jobs accepted")
        for job in batch:
            await self._release_when_stopped(job)

        # stop: a live migration in flight is cancelled with VM.migrateCancel
        await self._until(
            "the migration of demo-big to transfer memory",
            lambda: self._migrating("demo-big") and bool(current_step(big.view)),
        )
        await self._cancel(big, "stop")

        for job in (db, *batch, big):
            await self._until_ended(job)
        self.gate.open()
        db.check("VM demo-db never reached a host", self._vm_named("demo-db") is None)
        db.check(
            "both its disks are gone (one stopped, one reverted)",
            self._volumes_left(db) == ["gone", "gone"],
        )
        actions = [a.get("action") for a in (db.view.get("cancel") or {}).get("actions", [])]
        db.check("VDSM was sent Task.stop and Task.revert", {"stopped", "reverted"} <= set(actions))
        for job in batch:
            job.check("its volume was rolled back by VDSM", self._volumes_left(job) == ["gone"])
        big.check(
            "demo-big is Up on host1, its source", self._vm_state("demo-big", "host1") == "Up"
        )
        big.check("nothing of it on host2", self._vm_state("demo-big", "host2") is None)
        db.check("the pool's volumes are as before part 2", self._volumes() == before)

    async def _final_checks(self) -> None:
        jobs = list(self.board.jobs.values())
        tables = {n: h.tasks.raw_table() for n, h in self.sim.cluster.hosts.items()}
        left = {n: len(t) for n, t in tables.items() if t}
        self.board.note(
            "no VDSM task left on any host (all cleared)" if not left else f"tasks left: {left}"
        )
        for job in jobs:
            job.check("no task left on VDSM", not left)
            job.check("its locks are released", not job.view.get("locks"))
            if job.cancel_mode:
                cancel = job.view.get("cancel") or {}
                want = "reverted" if job.cancel_mode == "revert" else "stopped"
                job.check(f"cancel outcome {want}", cancel.get("outcome") == want)

    # -- talking to the daemon -----------------------------------------------------------------

    async def _api(self, method: str, path: str, body: Any = None) -> Any:
        try:
            return await self.client.call(method, path, body=body)
        except Exception as e:  # ApiError, Unreachable: the demo cannot go on either way
            raise DemoFailed(f"{method} /api/v1{path}: {e}") from e

    async def _submit(
        self,
        label: str,
        scenario: str,
        action: str,
        params: dict[str, Any],
        *,
        expect: str = "FINISHED",
        cancel_mode: str = "",
    ) -> DemoJob:
        view = await self._api("POST", "/jobs", {"action": action, "params": params})
        job = DemoJob(label, scenario, view, expect=expect, cancel_mode=cancel_mode)
        self.board.jobs[job.id] = job
        self.board.note(f"POST /jobs {action} → job {job.id[:8]} ({label})")
        self.board.show(job)
        return job

    async def _submit_batch(self, correlation_id: str, count: int) -> list[DemoJob]:
        body = {
            "batch": [{"action": "CreateDisk", "params": self._disk()} for _ in range(count)],
            "correlation_id": correlation_id,
        }
        # the full jobs (the batch answer is a summary per job otherwise): the board shows tasks
        doc = await self._api("POST", "/jobs?view=full", body)
        jobs = [
            DemoJob(f"batch {i}", "5 batch", view, expect="ABORTED", cancel_mode="stop")
            for i, view in enumerate(doc["jobs"], start=1)
        ]
        for job in jobs:
            self.board.jobs[job.id] = job
            self.board.show(job)
        self.board.note(f"POST /jobs batch of {count} CreateDisk, correlation_id={correlation_id}")
        return jobs

    async def _cancel(self, job: DemoJob, mode: str) -> None:
        view = await self._api(
            "POST", f"/jobs/{job.id}/cancel", {"mode": mode, "reason": f"demo: {mode}"}
        )
        decision = view.get("cancel_decision", {})
        self.board.note(
            f"POST /jobs/{job.id[:8]}/cancel {mode}: {view['status']} "
            f"({decision.get('reason', '')})"
        )
        job.view = view

    async def _refresh(self) -> None:
        """One look at the daemon: every job not yet ended, and the hosts."""
        for job in self.board.jobs.values():
            if not job.ended:
                job.view = await self._api("GET", f"/jobs/{job.id}")
                self.board.show(job)
        self.board.hosts = (await self._api("GET", "/hosts"))["hosts"]
        self.redraw()

    async def _until(self, what: str, predicate: Callable[[], bool]) -> None:
        """Look at the daemon (and redraw) until `predicate` holds; DemoFailed after DEADLINE."""
        try:
            async with asyncio.timeout(DEADLINE):
                while True:
                    await self._refresh()
                    if predicate():
                        return
                    await asyncio.sleep(TICK)  # the daemon's state lives behind its API
        except TimeoutError:
            raise DemoFailed(f"waited {DEADLINE:g}s for {what}") from None

    async def _until_ended(self, job: DemoJob) -> None:
        await self._until(f"job {job.label} ({job.id}) to end", lambda: job.ended)
        # the final view, with every lock released and task cleared
        job.view = await self._api("GET", f"/jobs/{job.id}")
        self.board.show(job)

    async def _release_when_stopped(self, job: DemoJob) -> None:
        """After the daemon sent Task.stop, let VDSM end the (held) task: it rolls it back."""
        await self._until(
            f"Task.stop for every running task of {job.label}",
            lambda: all(t["stop_sent"] for t in job.tasks() if t["vdsm_state"] != "finished"),
        )
        for task_id in self._held(job):
            self.gate.release(task_id)

    # -- reading the simulator (the ground truth) ----------------------------------------------

    def _disk(self) -> dict[str, Any]:
        return {"pool": self.pool, "domain": self.domains[0], "size": DISK_BYTES}

    def _held(self, job: DemoJob) -> list[str]:
        """VDSM ids of the job's tasks waiting at the gate, in the order the job created them."""
        held = set(self.gate.held())
        return [t["vdsm_id"] for t in job.tasks() if t.get("vdsm_id") in held]

    def _volumes(self, domain: str | None = None) -> set[str]:
        pool = self.sim.cluster.storage.pools[self.pool]
        return {v for d in pool.domains.values() if domain in (None, d.uuid) for v in d.volumes}

    def _has_image(self, domain: str, image: str) -> bool:
        return bool(self.sim.cluster.storage.pools[self.pool].domains[domain].image_volumes(image))

    def _volumes_left(self, job: DemoJob) -> list[str]:
        """ "exists" or "gone" for each volume the job's CreateDisk commands chose (recorded
        before their verb was sent), so a job that recorded none fails the check too."""
        volumes = self._volumes()
        return [
            "exists" if c["data"]["volume"] in volumes else "gone"
            for c in job.view.get("commands", [])
            if c["action"] == "CreateDisk" and c.get("data", {}).get("volume")
        ]

    def _vm_named(self, name: str) -> tuple[str, str] | None:
        for host in self.sim.cluster.hosts:
            for vm in self.sim.cluster.fleet.vms_on(host):
                if vm.name == name:
                    return host, str(vm.status)
        return None

    def _vm_state(self, name: str, host: str) -> str | None:
        vm = self.sim.cluster.fleet.get(self.vms[name], host)
        return None if vm is None else str(vm.status)

    def _where(self, name: str) -> list[str]:
        return [h for h in self.sim.cluster.hosts if self._vm_state(name, h) is not None]

    def _migrating(self, name: str) -> bool:
        vm = self.sim.cluster.fleet.get(self.vms[name], "host1")
        return vm is not None and vm.migration.transfer_started and vm.migration.running

    # -- the end -------------------------------------------------------------------------------

    def _summary(self) -> None:
        table = Table(title="summary: outcomes read back from the simulator and the daemon")
        for col in ("job", "action", "final status", "cancel", "took", "checks"):
            table.add_column(col, overflow="fold")
        for job in self.board.jobs.values():
            failed = job.failures()
            status = styled(job.status)
            checks = (
                Text("FAILED: " + "; ".join(failed), style="red")
                if failed
                else Text(f"{len(job.checks)} ok", style="green")
            )
            table.add_row(
                job.label,
                job.view["action"],
                status,
                cancel_summary(job.view) or "-",
                f"{duration(job.view):.1f}s",
                checks,
            )
        self.console.print()
        self.console.print(table)
        if self.failure:
            self.console.print(f"demo stopped early: {self.failure}", style="red", markup=False)


def make_workdir() -> Path:
    """A private temporary directory (mode 0700); under /tmp when TMPDIR is too deep for the
    API's unix socket path (at most 107 bytes on Linux)."""
    workdir = Path(tempfile.mkdtemp(prefix="taskmgrd-demo-"))
    if len(bytes(workdir / "api.sock")) < 100:
        return workdir
    workdir.rmdir()
    return Path(tempfile.mkdtemp(prefix="taskmgrd-demo-", dir="/tmp"))


def run_demo() -> int:
    """`taskmgrd demo`: 0 when every job ended as expected, 1 when not, 130 on Ctrl-C."""
    console = Console()
    if not console.is_terminal:  # plain lines in a log or a pipe: room for a row each
        console.width = max(console.width, 120)
    workdir = make_workdir()
    console.print(f"taskmgrd demo: working in {workdir} (removed at exit)", highlight=False)
    started = time.monotonic()
    try:
        ok = asyncio.run(_main(console, workdir))
    except (KeyboardInterrupt, asyncio.CancelledError):
        console.print("taskmgrd demo: interrupted; simulator and daemon stopped", style="yellow")
        return 130
    except Exception as e:  # the stack could not start, or a bug: say so, still clean up
        console.print_exception()
        console.print(f"taskmgrd demo: FAILED: {e}", style="bold red", markup=False)
        return 1
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    took = time.monotonic() - started
    if ok:
        console.print(f"taskmgrd demo: passed in {took:.1f}s", style="bold green")
        return 0
    console.print(f"taskmgrd demo: FAILED after {took:.1f}s (see above)", style="bold red")
    return 1


async def _main(console: Console, workdir: Path) -> bool:
    # SIGTERM ends the demo as Ctrl-C does: the script is cancelled and everything stopped
    main = asyncio.current_task()
    assert main is not None
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, main.cancel)
    try:
        return await Demo(console, workdir).run()
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


if __name__ == "__main__":
    sys.exit(run_demo())

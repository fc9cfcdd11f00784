"""MigrateVm: ended by a monitor report (scenario 4), not by tasks.

VM.migrate returns at once; the job ends when the host monitors report the VM Up on the
destination (success) or back Up on its source with the migration over (failure). After success
the VM's Down copy on the source is destroyed, as the engine does.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import Conflict, NotFound
from daemon.model import CancelMode, HostStatus, LockKind, Step, StepStatus, StepType
from daemon.vdsm.errors import ClientTimeout, ConnectionLost, RecoveryInProgress, VdsmCallError


async def locate_vm(cmd: CommandBase, vm_id: str) -> str | None:
    """The host a VM runs Up on: from the monitors' reports, else by asking the UP hosts."""
    for name, state in cmd.ctx.executor.vms.where(vm_id).items():
        if state.status == "Up":
            return name
    for host in cmd.registry.hosts.values():
        if host.status not in (HostStatus.UP, HostStatus.PREPARING_FOR_MAINTENANCE):
            continue
        with contextlib.suppress(VdsmCallError):
            for vm in await cmd.vdsm(host.name).vm_list():
                if vm.get("vmId") == vm_id and vm.get("status") == "Up":
                    cmd.ctx.executor.vms.report(host.name, vm_id, "Up")
                    return str(host.name)
    return None


class MigrateVm(CommandBase):
    spec = ActionSpec(
        "MigrateVm",
        "Live-migrate a VM to another host",
        {"vm": Param("uuid"), "dst_host": Param("name", description="destination host")},
        CancelPolicy(
            notes="cancelled with VM.migrateCancel: the VM stays Up on its source; a migration "
            "that completed before the cancel is kept under stop and migrated back under revert",
        ),
    )
    hidden = False  # as a child of SetHostMaintenance its steps show

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"vm:{self.params['vm']}", LockKind.EXCLUSIVE)]

    async def validate(self) -> None:
        dst = self.registry.hosts.get(self.params["dst_host"])
        if dst is None:
            raise NotFound(f"no host named {self.params['dst_host']!r}")
        if dst.status is not HostStatus.UP:
            raise Conflict(f"destination {dst.name} is {dst.status}, not UP")
        src = await locate_vm(self, self.params["vm"])
        if src is None:
            raise NotFound(f"VM {self.params['vm']} is not running on any UP host")
        if src == dst.name:
            raise Conflict(f"VM {self.params['vm']} already runs on {src}")
        self.record.data["src"] = src

    async def execute(self) -> None:
        src = self.data("src")
        dst = self.registry.hosts[self.params["dst_host"]]
        step = self.registry.add_step(
            self.job,
            StepType.MIGRATE_VM,
            f"Migrating VM {self.params['vm']} from {src} to {dst.name}",
            host=src,
        )
        await self.remember(src=src, step=step.id)
        await self.vdsm(src).migrate_vm(self.params["vm"], f"{dst.address}:{dst.port}")

    def _step(self) -> Step | None:
        return self.registry.steps.get(self.job.id, {}).get(self.data("step", ""))

    async def wait(self) -> None:
        vm, src, dst = self.params["vm"], self.data("src"), self.params["dst_host"]
        while True:
            copies = self.ctx.executor.vms.where(vm)
            if dst in copies and copies[dst].status == "Up":
                return
            try:
                status = await self.vdsm(src).migration_status(vm)
            except VdsmCallError as e:
                if e.vdsm_code != 1:  # NoSuchVM on the source: it has moved
                    raise
                status = {}
            code = int(status.get("status", {}).get("code", 0) or 0) if status else 0
            if code not in (0,):
                message = status.get("status", {}).get("message", "migration failed")
                raise CommandFailed(f"migration of {vm} failed: [{code}] {message}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self.ctx.executor.vms.wait_for(
                        vm, lambda c: dst in c and c[dst].status == "Up"
                    )

    async def end_action(self) -> dict[str, Any]:
        vm, src = self.params["vm"], self.data("src")
        with contextlib.suppress(VdsmCallError):
            await self.vdsm(src).destroy_vm(vm)  # VDSM keeps the Down source copy until then
        step = self._step()
        if step is not None:
            self.registry.end_step(step, StepStatus.FINISHED)
        return {"vm": vm, "from": src, "to": self.params["dst_host"]}

    async def on_cancel(self, mode: CancelMode) -> list[str]:
        """VM.migrateCancel on the source, then wait until the VM is Up on one side."""
        src, vm, dst = self.data("src"), self.params["vm"], self.params["dst_host"]
        if not src or self.data("step") is None:
            return []  # never started: nothing to cancel
        try:
            await self.vdsm(src).migrate_cancel(vm)
        except (ClientTimeout, ConnectionLost, RecoveryInProgress):
            raise  # no answer: the coordinator retries
        except VdsmCallError:
            pass  # gone (1), nothing to abort (47), or a migration that failed: its own code
        while True:
            copies = self.ctx.executor.vms.where(vm)
            if dst in copies and copies[dst].status == "Up":
                self._end(StepStatus.FINISHED)
                await self.remember(completed_before_cancel=True)  # the cancel came late
                return ["migration completed before the cancel (VM on destination)"]
            stats = await self.vdsm(src).migration_status(vm)
            code = int(stats.get("status", {}).get("code", 0) or 0)
            if code:
                self._end(StepStatus.ABORTED)
                return [f"VM.migrateCancel on {src}: VM stays on its source"]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.ctx.executor.vms.wait_for(vm, lambda c: dst in c)

    async def compensate(self) -> list[str]:
        """Under revert, a migration that completed before the cancel is undone by migrating
        the VM back: revert promises every VM where it started."""
        if not self.data("completed_before_cancel") or self.data("migrated_back"):
            return []
        vm, src, dst = self.params["vm"], self.data("src"), self.params["dst_host"]
        back = self.registry.hosts[src]
        with contextlib.suppress(VdsmCallError):
            await self.vdsm(src).destroy_vm(vm)  # the Down copy VDSM left on the source
        await self.vdsm(dst).migrate_vm(vm, f"{back.address}:{back.port}")
        while True:
            copies = self.ctx.executor.vms.where(vm)
            if src in copies and copies[src].status == "Up":
                break
            status = await self.vdsm(dst).migration_status(vm)
            code = int(status.get("status", {}).get("code", 0) or 0)
            if code:
                message = status.get("status", {}).get("message", "migration failed")
                raise CommandFailed(f"migrating {vm} back to {src} failed: [{code}] {message}")
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    await self.ctx.executor.vms.wait_for(
                        vm, lambda c: src in c and c[src].status == "Up"
                    )
        with contextlib.suppress(VdsmCallError):
            await self.vdsm(dst).destroy_vm(vm)
        await self.remember(migrated_back=True)
        return [f"VM {vm} migrated back to {src}"]

    def _end(self, status: StepStatus) -> None:
        step = self._step()
        if step is not None and step.status is StepStatus.STARTED:
            self.registry.end_step(step, status)

    async def end_with_failure(self) -> None:
        step = self._step()
        if step is not None:
            self.registry.end_step(step, StepStatus.FAILED)

"""SetHostMaintenance: migrates every VM away through child MigrateVm commands, then the host
is in maintenance (scenario 4: ended by the migrations' monitor reports, not by tasks)."""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import Conflict, NotFound
from daemon.model import CancelMode, HostStatus, LockKind, StepStatus, StepType


class SetHostMaintenance(CommandBase):
    spec = ActionSpec(
        "SetHostMaintenance",
        "Move a host's VMs to other hosts and put it into maintenance",
        {"host": Param("name")},
        CancelPolicy(
            notes="stop cancels the migrations still running (VMs not yet moved stay) and the "
            "host returns to UP; revert also activates a host that reached maintenance (VMs "
            "already moved stay where they are)",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"host:{self.params['host']}", LockKind.EXCLUSIVE)]

    async def validate(self) -> None:
        host = self.registry.hosts.get(self.params["host"])
        if host is None:
            raise NotFound(f"no host named {self.params['host']!r}")
        if host.status is HostStatus.MAINTENANCE:
            raise Conflict(f"host {host.name} is already in maintenance")

    async def execute(self) -> None:
        name = self.params["host"]
        host = self.registry.hosts[name]
        host.status = HostStatus.PREPARING_FOR_MAINTENANCE
        self.registry.update_host(host)
        step = self.registry.add_step(
            self.job, StepType.MAINTENANCE, f"Moving VMs off {name}", host=name
        )
        await self.remember(step=step.id)
        vm_ids = [
            vm["vmId"]
            for vm in await self.vdsm(name).vm_list()
            if isinstance(vm.get("vmId"), str) and vm.get("status") == "Up"
        ]
        for vm_id in vm_ids:
            self.ctx.executor.vms.report(name, vm_id, "Up")
        targets = [
            h.name
            for h in self.registry.hosts.values()
            if h.name != name and h.status is HostStatus.UP
        ]
        if vm_ids and not targets:
            raise CommandFailed(f"no other UP host to move {len(vm_ids)} VMs to")
        runs = [
            self.ctx.executor.run_child(
                self, "MigrateVm", {"vm": vm, "dst_host": targets[i % len(targets)]}, sequence=i
            )
            for i, vm in enumerate(vm_ids)
        ]
        outcomes = await asyncio.gather(*runs)
        failed = [error for ok, error, _ in outcomes if not ok]
        await self.remember(moved=sum(1 for ok, _, _ in outcomes if ok), vms=len(vm_ids))
        if failed:
            raise CommandFailed(f"{len(failed)} of {len(vm_ids)} migrations failed: {failed[0]}")

    async def end_action(self) -> dict[str, Any]:
        host = self.registry.hosts[self.params["host"]]
        host.status = HostStatus.MAINTENANCE
        self.registry.update_host(host)
        self._end_step(StepStatus.FINISHED)
        return {"host": host.name, "status": host.status.value, "vms_moved": self.data("moved")}

    async def end_with_failure(self) -> None:
        host = self.registry.hosts.get(self.params["host"])
        if host is not None and host.status is HostStatus.PREPARING_FOR_MAINTENANCE:
            host.status = HostStatus.UP
            self.registry.update_host(host)
        self._end_step(StepStatus.FAILED)

    async def on_cancel(self, mode: CancelMode) -> list[str]:
        """Children's migrations are cancelled by the coordinator; the host comes back UP."""
        host = self.registry.hosts.get(self.params["host"])
        if host is None or host.status is not HostStatus.PREPARING_FOR_MAINTENANCE:
            return []
        host.status = HostStatus.UP
        self.registry.update_host(host)
        self._end_step(StepStatus.ABORTED)
        return [f"host {host.name} back to UP"]

    async def compensate(self) -> list[str]:
        """A completed maintenance is undone by activating the host again."""
        host = self.registry.hosts.get(self.params["host"])
        if host is None or host.status is not HostStatus.MAINTENANCE:
            return []
        host.status = HostStatus.UP
        self.registry.update_host(host)
        return [f"host {host.name} activated again"]

    def _end_step(self, status: StepStatus) -> None:
        step = self.registry.steps.get(self.job.id, {}).get(self.data("step", ""))
        if step is not None and step.status is StepStatus.STARTED:
            self.registry.end_step(step, status)

"""CreateVm: internal child commands (scenario 3) — a CreateDisk per disk, then VM.create.

The children are hidden as steps (their VDSM tasks still show under the job's EXECUTING step).
On failure the disks the children did create are rolled back with Task.revert, newest first.
"""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import Conflict, NotFound
from daemon.model import HostStatus, LockKind, new_id
from daemon.vdsm.errors import VdsmCallError


class CreateVm(CommandBase):
    revert_on_failure = True  # a half-made VM's disks are rolled back with Task.revert

    spec = ActionSpec(
        "CreateVm",
        "Create a VM with new disks and start it on a host",
        {
            "name": Param("name", description="the VM's name"),
            "host": Param("name", description="host to run it on"),
            "disks": Param(
                "disks",
                description="disks to create: [{pool, domain, size, preallocate?}] "
                "(preallocate: SPARSE, the default, or PREALLOCATED)",
            ),
        },
        CancelPolicy(
            notes="children not yet started never run; running disk creations are stopped; "
            "revert also deletes the disks already created",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [
            (f"vmname:{self.params['name']}", LockKind.EXCLUSIVE),
            (f"host:{self.params['host']}", LockKind.SHARED),
        ]

    async def validate(self) -> None:
        host = self.registry.hosts.get(self.params["host"])
        if host is None:
            raise NotFound(f"no host named {self.params['host']!r}")
        if host.status is not HostStatus.UP:
            raise Conflict(f"host {host.name} is {host.status}, not UP")

    async def execute(self) -> None:
        vm_id = self.data("vm") or new_id()
        await self.remember(vm=vm_id)
        runs = [
            self.ctx.executor.run_child(self, "CreateDisk", disk, sequence=i)
            for i, disk in enumerate(self.params["disks"])
        ]
        outcomes = await asyncio.gather(*runs)
        disks = [result for ok, _, result in outcomes if ok and result]
        await self.remember(disks=disks)
        failed = [error for ok, error, _ in outcomes if not ok]
        if failed:
            raise CommandFailed(f"{len(failed)} of {len(runs)} disks failed: {failed[0]}")
        memory_mb = 1024
        await self.vdsm(self.params["host"]).create_vm(
            vm_id,
            self.params["name"],
            memory_mb,
            [
                {
                    "pool": d["pool"],
                    "domain": d["domain"],
                    "image": d["image"],
                    "volume": d["volume"],
                }
                for d in disks
            ],
        )
        await self.remember(vm_created=True)

    async def wait(self) -> None:
        host = self.params["host"]
        await self.ctx.executor.vms.wait_for(
            self.data("vm"), lambda copies: host in copies and copies[host].status == "Up"
        )

    async def end_action(self) -> dict[str, Any]:
        return {"vm": self.data("vm"), "host": self.params["host"], "disks": self.data("disks")}

    def _vm_create_may_have_been_sent(self) -> bool:
        """VM.create is sent only after every disk was created and `disks` was committed, so
        without that record the VM cannot exist (no VM.destroy to send, one less call per job
        in a cancel burst)."""
        disks = self.data("disks")
        return disks is not None and len(disks) == len(self.params["disks"])

    async def compensate(self) -> list[str]:
        """Revert: destroy the VM if VM.create reached the host (also when the cancel landed
        while the verb was in flight, so `vm_created` was never remembered); its disks are
        reverted by the coordinator (Task.revert). Idempotent: an absent VM is left alone."""
        vm = self.data("vm")
        if not vm or not self._vm_create_may_have_been_sent():
            return []
        try:
            await self.vdsm(self.params["host"]).destroy_vm(vm)
        except VdsmCallError as e:
            if e.vdsm_code != 1:  # noVM: it was never created, or is already gone
                raise
            return []
        return [f"VM {vm} destroyed on {self.params['host']}"]

    async def end_with_failure(self) -> None:
        """Destroy the VM if it was created, then revert the disks' createVolume tasks."""
        if self.data("vm_created"):
            await self.vdsm(self.params["host"]).destroy_vm(self.data("vm"))
        await self.revert_tasks()

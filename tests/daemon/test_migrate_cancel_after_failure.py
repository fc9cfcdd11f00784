"""A cancel that reaches a VM whose migration already failed by itself (issue 6 review).

VDSM's VM.migrateCancel on a VM whose last migration failed before libvirt's transfer began
(here: at migrationCreate on the destination) answers that migration's own error code with the
text "Migration process cancelled": the source thread never cleared `_preparingMigrationEvt`,
so libvirt's "no job to abort" is swallowed and the thread's status returned. The daemon must
read the outcome (the VM runs on its source) rather than fail the cancel on that code.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.model import JobStatus
from daemon.vdsm.verbs import VdsmHost
from tests.daemon.stack import running_stack
from tests.daemon.test_cancel import until_sim


async def test_cancel_after_a_migration_failed_unheard(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = VdsmHost.migration_status
    deaf = True  # the daemon's status polls hang until the cancel cuts them

    async def polled(host: VdsmHost, vm_id: str) -> dict[str, Any]:
        if deaf:
            await asyncio.get_running_loop().create_future()
        return await real(host, vm_id)

    monkeypatch.setattr(VdsmHost, "migration_status", polled)
    async with running_stack(tmp_path) as s:
        fleet = s.sim.cluster.fleet
        vm = fleet.add_vm(str(uuid.uuid4()), "vm", "host1")
        fleet.fail_next_migration(vm.vm_id, phase="destination")
        job = await s.submit("MigrateVm", {"vm": vm.vm_id, "dst_host": "host2"})
        await until_sim(
            lambda: fleet.get_migration_status("host1", vm.vm_id)["status"]["code"] == 12
        )
        assert vm.status.value == "Up"
        deaf = False
        await s.daemon.cancels.cancel(job.id, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert [v.vm_id for v in fleet.vms_on("host1")] == [vm.vm_id]
        assert fleet.vms_on("host2") == []

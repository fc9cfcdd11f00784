"""Cancelling jobs end to end: the daemon against vdsm-sim, outcomes read from the simulator.

The simulator's job gate holds storage jobs at their end, so each test decides exactly when a
task finishes: no sleeps, no timing luck.
"""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from daemon.engine.cancel import CancelRefused
from daemon.model import CancelMode, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.sim.conftest import wait_until


async def until(s: Stack, job_id: str, predicate: object, deadline: float = 20.0) -> None:
    reg = s.daemon.registry
    async with asyncio.timeout(deadline):
        while not predicate():  # type: ignore[operator]
            await reg.wait_changed(job_id)


async def until_sim(predicate: Callable[[], bool], deadline: float = 20.0) -> None:
    """Wait for a condition on the simulator's side (it publishes no change events to us)."""
    await wait_until(predicate, deadline, 0.01)


def spm_host(s: Stack) -> str:
    spm = s.sim.cluster.storage.pools[s.pool].spm_host
    assert spm is not None
    return spm


async def test_stop_a_running_disk_creation(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit(
            "CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": volume}
        )
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))
        )
        decision = await s.daemon.cancels.cancel(
            job.id, mode=CancelMode.STOP, reason="test", requester=1000
        )
        assert (decision.accept, decision.status) == (True, 202)
        assert reg.jobs[job.id].status is JobStatus.CANCELLING  # committed before returning
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        gate.open()  # the (non-abortable) job ends, then VDSM rolls it back
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED
        assert job.cancel is not None and job.cancel.outcome == "stopped"
        assert [a["action"] for a in job.cancel.actions] == ["stopped", "cleared"]
        assert volume not in s.volumes()
        assert all(table == [] for table in s.sim_tasks().values())
        assert reg.job_locks(job.id) == []
        task = reg.job_tasks(job.id)[0]
        assert task.code == 411 and task.vdsm_result == "cleanSuccess"


async def test_revert_undoes_a_finished_child_and_stops_the_running_one(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        before = s.volumes()
        disks = [{"pool": s.pool, "domain": s.domains[0], "size": 4096} for _ in range(2)]
        job = await s.submit("CreateVm", {"name": "vmc", "host": "host2", "disks": disks})
        reg = s.daemon.registry
        await until_sim(lambda: len(gate.held()) == 2)
        first = gate.held()[0]
        gate.release(first)  # one disk finishes, the other keeps running
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
        )
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
        await until(s, job.id, lambda: any(t.stop_sent for t in reg.job_tasks(job.id)))
        gate.open()
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert job.cancel is not None
        assert (job.cancel.outcome, job.cancel.late) == ("reverted", True)
        actions = [a["action"] for a in job.cancel.actions]
        assert actions.count("stopped") == 1 and actions.count("reverted") == 1
        assert s.volumes() == before  # nothing of the VM's disks remains
        assert all(table == [] for table in s.sim_tasks().values())
        assert all(c["status"] == "CANCELLED" for c in reg.job_view(job.id)["commands"])


async def test_migration_cancel_keeps_the_vm_on_its_source(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        vm = s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "big", "host1", memory_mb=65536)
        job = await s.submit("MigrateVm", {"vm": vm.vm_id, "dst_host": "host2"})
        await until_sim(
            lambda: (
                getattr(s.sim.cluster.fleet.get(vm.vm_id, "host1"), "status", "")
                == "Migration Source"
            )
        )
        await s.daemon.cancels.cancel(job.id, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert [v.vm_id for v in s.sim.cluster.fleet.vms_on("host1")] == [vm.vm_id]
        assert s.sim.cluster.fleet.vms_on("host2") == []
        assert job.cancel is not None
        assert any("VM.migrateCancel" in a["action"] for a in job.cancel.actions)


async def test_refusals_and_repeats(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        done = await s.wait_job(await s.submit("RefreshHost", {"host": "host1"}))
        with pytest.raises(CancelRefused) as ended:
            await s.daemon.cancels.cancel(done.id, requester=1000)
        assert (ended.value.status, ended.value.code) == (409, "job_ended")
        assert done.cancel is None  # untouched

        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        image = str(uuid.uuid4())
        gate.open()
        created = await s.wait_job(
            await s.submit(
                "CreateDisk",
                {"pool": s.pool, "domain": s.domains[0], "size": 4096, "image": image},
            )
        )
        assert created.status is JobStatus.FINISHED
        gate.hold()
        delete = await s.submit(
            "DeleteDisk", {"pool": s.pool, "domain": s.domains[0], "image": image}
        )
        reg = s.daemon.registry
        await until(
            s,
            delete.id,
            lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(delete.id)),
        )
        with pytest.raises(CancelRefused) as late:
            await s.daemon.cancels.cancel(delete.id, requester=1000)
        assert late.value.code == "too_late"  # a deletion has no way back
        with pytest.raises(CancelRefused) as mode:
            await s.daemon.cancels.cancel(delete.id, mode=CancelMode.REVERT, requester=1000)
        assert mode.value.code == "mode_not_allowed"
        gate.open()
        assert (await s.wait_job(delete)).status is JobStatus.FINISHED

        gate.hold()
        job = await s.submit("CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096})
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))
        )
        first = await s.daemon.cancels.cancel(job.id, requester=1000)
        again = await s.daemon.cancels.cancel(job.id, requester=1000)
        assert (first.status, again.status, again.accept) == (202, 200, False)
        up = await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
        assert up.accept and reg.jobs[job.id].cancel.mode is CancelMode.REVERT  # type: ignore[union-attr]
        gate.open()
        assert (await s.wait_job(job)).status is JobStatus.ABORTED


async def test_taskmgr_cancel_waits_and_reports(tmp_path: Path) -> None:
    async with running_stack(tmp_path, api=True) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        job = await s.submit("CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096})
        job.owner = os.getuid()  # submitted in-process; the CLI runs as us
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "daemon.cli",
            "--socket",
            str(tmp_path / "api.sock"),
            "cancel",
            job.id,
            "--reason",
            "operator test",
            "--timeout",
            "30",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        gate.open()
        async with asyncio.timeout(40):
            out, err = await proc.communicate()
        assert proc.returncode == 0, (out, err)
        assert b"ABORTED" in out and b"outcome=stopped" in out
        assert reg.jobs[job.id].cancel is not None
        assert reg.jobs[job.id].cancel.reason == "operator test"  # type: ignore[union-attr]


async def test_stop_aborts_a_preallocated_disk_creation_at_once(tmp_path: Path) -> None:
    """A PREALLOCATED createVolume allocates through an abortable operation: Task.stop ends it
    although its work would take an hour; the volume is rolled back."""
    async with running_stack(tmp_path, time_scale=1.0, task_seconds=3600.0) as s:
        volume = str(uuid.uuid4())
        job = await s.submit(
            "CreateDisk",
            {
                "pool": s.pool,
                "domain": s.domains[0],
                "size": 4096,
                "volume": volume,
                "preallocate": "PREALLOCATED",
            },
        )
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))
        )
        sim_volume = next(
            d.volumes[volume]
            for d in s.sim.cluster.storage.pools[s.pool].domains.values()
            if volume in d.volumes
        )
        assert (sim_volume.allocation, sim_volume.format) == ("PREALLOCATED", "RAW")
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.STOP, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert volume not in s.volumes()
        assert all(table == [] for table in s.sim_tasks().values())
        assert reg.job_tasks(job.id)[0].vdsm_result == "cleanSuccess"


async def test_revert_before_the_vm_exists_sends_no_vm_destroy(tmp_path: Path) -> None:
    """A CreateVm reverted while its disks are still being created never sent VM.create, so its
    compensation sends no VM.destroy (here VM.destroy fails on the host: it must not be called)."""
    async with running_stack(tmp_path, time_scale=1.0, task_seconds=3600.0) as s:
        s.sim.cluster.hosts["host2"].faults.settings.update(
            {"error_code": 100, "error_methods": ["VM.destroy"]}
        )
        before = s.volumes()
        disks = [
            {"pool": s.pool, "domain": s.domains[0], "size": 4096, "preallocate": "PREALLOCATED"}
            for _ in range(2)
        ]
        job = await s.submit("CreateVm", {"name": "vmr", "host": "host2", "disks": disks})
        reg = s.daemon.registry
        await until(
            s,
            job.id,
            lambda: sum(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id)) == 2,
        )
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert job.cancel is not None and job.cancel.outcome == "reverted"
        assert s.volumes() == before
        assert all(table == [] for table in s.sim_tasks().values())

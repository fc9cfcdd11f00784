"""HibernateVm end to end against vdsm-sim: the whole run, and a cancel (stop and revert) in each
phase, with the VM's final status and the storage read from the simulator.

Job gates make every phase deterministic: the SPM's gate holds the memory volumes' tasks at their
end, the VM host's gate holds the save at its end (under the VM's id).
"""

from __future__ import annotations

import contextlib
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.commands.hibernate_vm import HibernateVm
from daemon.engine.cancel import CancelRefused
from daemon.model import CancelMode, JobStatus, StepStatus, TaskStatus
from daemon.vdsm.errors import VdsmCallError
from daemon.vdsm.verbs import VdsmHost
from tests.daemon.stack import Stack, running_stack, start_sim
from tests.daemon.test_cancel import spm_host, until, until_sim
from vdsm_simulator.vms import SimVm, VmStatus

VM_HOST = "host2"  # host1 is the pool's SPM: the VM's gate and the SPM's are different gates


def add_vm(s: Stack, memory_mb: int = 1024) -> SimVm:
    return s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "sleepy", VM_HOST, memory_mb=memory_mb)


def vm_status(s: Stack, vm: SimVm) -> str | None:
    copy = s.sim.cluster.fleet.get(vm.vm_id, VM_HOST)
    return copy.status.value if copy is not None else None


def memory_volumes(s: Stack) -> dict[str, str]:
    """Memory volumes on the simulated storage: volume id -> the VM using it ("" if none)."""
    pool = s.sim.cluster.storage.pools[s.pool]
    return {
        v.uuid: v.used_by
        for d in pool.domains.values()
        for v in d.volumes.values()
        if v.disktype in ("MEMD", "MEMM")
    }


def step_types(s: Stack, job_id: str) -> list[tuple[str, str, list[str]]]:
    view = s.daemon.registry.job_view(job_id)
    return [(st["type"], st["status"], [c["type"] for c in st["steps"]]) for st in view["steps"]]


async def saving(s: Stack, vm: SimVm) -> None:
    """Wait until the VM's save is held at the gate of its host (the VM in "Saving State")."""
    gate = s.sim.cluster.hosts[VM_HOST].gate
    await until_sim(lambda: vm.vm_id in gate.held())
    assert vm_status(s, vm) == "Saving State"


def assert_settled(s: Stack, job_id: str) -> None:
    assert all(table == [] for table in s.sim_tasks().values())
    assert all(t.status is TaskStatus.CLEARED for t in s.daemon.registry.job_tasks(job_id))
    assert s.daemon.registry.job_locks(job_id) == []


async def test_hibernate_runs_to_the_end(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        vm = add_vm(s)
        job = await s.wait_job(await s.submit("HibernateVm", {"vm": vm.vm_id}))
        assert job.status is JobStatus.FINISHED, job.error
        assert step_types(s, job.id) == [
            ("VALIDATING", "FINISHED", []),
            ("EXECUTING", "FINISHED", ["CREATE_VOLUME", "CREATE_VOLUME"]),
            ("SAVING_STATE", "FINISHED", []),
            ("FINALIZING", "FINISHED", []),
        ]
        assert job.result is not None
        dump, meta = job.result["memory_dump"], job.result["metadata"]
        assert job.result["hibernation_vol_handle"] == ",".join(
            [s.domains[0], s.pool, dump["image"], dump["volume"], meta["image"], meta["volume"]]
        )
        # saved: Down with exit reason 5, then destroyed on its host as the engine does
        assert vm.status is VmStatus.DOWN and vm.exit_info is not None
        assert vm.exit_info["exitReason"] == 5
        assert vm_status(s, vm) is None
        assert memory_volumes(s) == {dump["volume"]: vm.vm_id, meta["volume"]: vm.vm_id}
        volumes = s.sim.cluster.storage.pools[s.pool].domains[s.domains[0]].volumes.values()
        sizes = {v.disktype: (v.capacity, v.format, v.allocation) for v in volumes}
        # as the engine's MemoryUtils: RAW, the dump sparse on a file domain, metadata preallocated
        assert sizes["MEMD"] == ((1024 + 200) * 1024 * 1024, "RAW", "SPARSE")
        meta_size, *meta_kind = sizes["MEMM"]
        assert 10 * 1024 <= meta_size <= 16 * 1024  # 10 KiB, rounded up by the domain
        assert meta_kind == ["RAW", "PREALLOCATED"]
        assert_settled(s, job.id)


@pytest.mark.parametrize("mode", [CancelMode.STOP, CancelMode.REVERT])
async def test_cancel_while_the_volume_tasks_are_queued_and_running(
    tmp_path: Path, mode: CancelMode
) -> None:
    """One worker on the SPM: the dump's task runs (held at its end), the metadata's is queued."""
    async with running_stack(tmp_path, workers=1) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        reg = s.daemon.registry
        await until(s, job.id, lambda: len([t for t in reg.job_tasks(job.id) if t.vdsm_id]) == 2)
        await until_sim(lambda: len(gate.held()) == 1)
        await s.daemon.cancels.cancel(job.id, mode=mode, requester=1000)
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        gate.open()
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert job.cancel is not None and not job.cancel.late
        assert [a["action"] for a in job.cancel.actions].count("stopped") == 2
        assert vm_status(s, vm) == "Up" and not vm.migrating  # VM.hibernate was never sent
        assert memory_volumes(s) == {}
        assert_settled(s, job.id)


async def test_revert_removes_a_finished_volume_and_stops_the_other(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=1) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        reg = s.daemon.registry
        await until_sim(lambda: len(gate.held()) == 1)
        gate.release(gate.held()[0])  # the first volume is done, the second starts and is held
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
        )
        await until_sim(lambda: len(gate.held()) == 1)
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
        await until(s, job.id, lambda: any(t.stop_sent for t in reg.job_tasks(job.id)))
        gate.open()
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert job.cancel is not None
        assert (job.cancel.outcome, job.cancel.late) == ("reverted", True)
        actions = [a["action"] for a in job.cancel.actions]
        assert (actions.count("stopped"), actions.count("reverted")) == (1, 1)
        assert vm_status(s, vm) == "Up"
        assert memory_volumes(s) == {}
        assert_settled(s, job.id)


@pytest.mark.parametrize("mode", [CancelMode.STOP, CancelMode.REVERT])
async def test_cancel_while_saving_resumes_the_vm(tmp_path: Path, mode: CancelMode) -> None:
    async with running_stack(tmp_path) as s:
        s.sim.cluster.hosts[VM_HOST].gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await saving(s, vm)
        await s.daemon.cancels.cancel(job.id, mode=mode, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert job.cancel is not None
        actions = [a["action"] for a in job.cancel.actions]
        assert any("VM.migrateCancel" in a and "resumed" in a for a in actions)
        assert vm_status(s, vm) == "Up" and not vm.migrating
        assert s.sim.cluster.hosts[VM_HOST].gate.held() == []
        migration = s.sim.cluster.fleet.get_migration_status(VM_HOST, vm.vm_id)
        assert migration["status"] == {"code": 47, "message": "Migration canceled"}
        assert ("SAVING_STATE", "ABORTED", []) in step_types(s, job.id)
        if mode is CancelMode.STOP:
            # completed work stays: the volumes exist, unused (the save was aborted)
            assert sorted(memory_volumes(s).values()) == ["", ""]
            assert job.cancel.late and actions.count("reverted") == 0
        else:
            assert memory_volumes(s) == {}
            assert actions.count("reverted") == 2
        assert_settled(s, job.id)


async def test_cancel_after_the_save_is_too_late(tmp_path: Path) -> None:
    """Once the VM is down with its state saved the job commits (FINALIZING): refused."""
    async with running_stack(tmp_path) as s:
        gate = s.sim.cluster.hosts[VM_HOST].gate
        gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await saving(s, vm)
        # FINALIZING's VM.destroy waits: every reply of the VM's host is slowed down
        s.sim.cluster.hosts[VM_HOST].faults.settings.latency = 400.0
        gate.release(vm.vm_id)
        root = s.daemon.executor.root_of(job)
        await until(s, job.id, lambda: root.data.get("phase") == "end")
        for mode in (CancelMode.STOP, CancelMode.REVERT):
            with pytest.raises(CancelRefused) as refused:
                await s.daemon.cancels.cancel(job.id, mode=mode, requester=1000)
            assert refused.value.code == "too_late"
        s.sim.cluster.hosts[VM_HOST].faults.settings.latency = 0.0
        job = await s.wait_job(job)
        assert job.status is JobStatus.FINISHED and job.cancel is None
        assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]
        assert_settled(s, job.id)


@pytest.mark.parametrize("mode", ["stop", "revert", "stop, then revert"])
async def test_a_save_that_completed_before_the_cancel_stands(
    tmp_path: Path, mode: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race: VDSM saved the VM but the daemon has not heard yet when the cancel lands.
    The daemon is kept deaf (no VM reports, no status poll) until the cancel is committed.
    However the cancel goes on, the memory volumes, the VM's only state, must stay."""
    monkeypatch.setattr(HibernateVm, "poll_seconds", 3600.0)
    async with running_stack(tmp_path) as s:
        gate = s.sim.cluster.hosts[VM_HOST].gate
        gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await saving(s, vm)
        hosts = s.daemon.hosts
        feeds = (list(hosts.on_vm_event), list(hosts.on_vm_report))
        hosts.on_vm_event.clear()
        hosts.on_vm_report.clear()
        gate.release(vm.vm_id)
        await until_sim(lambda: vm.status is VmStatus.DOWN)
        first = CancelMode.REVERT if mode == "revert" else CancelMode.STOP
        await s.daemon.cancels.cancel(job.id, mode=first, requester=1000)
        hosts.on_vm_event.extend(feeds[0])
        hosts.on_vm_report.extend(feeds[1])
        reg = s.daemon.registry
        if mode == "stop, then revert":
            record = reg.jobs[job.id].cancel
            assert record is not None
            await until(
                s, job.id, lambda: any("already saved" in a["action"] for a in record.actions)
            )
            with contextlib.suppress(CancelRefused):  # refused once the stop is clearing
                await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
        job = await s.wait_job(job)
        assert job.cancel is not None and job.cancel.late
        # the hibernation stands: the VM stays saved and its memory volumes are kept
        assert vm.exit_info is not None and vm.exit_info["exitReason"] == 5
        assert vm_status(s, vm) is None  # the Down VM was removed from its host, as at the end
        assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]
        assert ("SAVING_STATE", "FINISHED", []) in step_types(s, job.id)
        assert not any(a["action"] == "reverted" for a in job.cancel.actions)
        if mode == "revert":
            assert job.status is JobStatus.FAILED
            assert job.error is not None and "past the point of no return" in job.error
        else:
            assert job.status is JobStatus.ABORTED, job.error
            assert any("already saved" in a["action"] for a in job.cancel.actions)
        assert_settled(s, job.id)  # the volumes' tasks were cleared, none left to the reaper


async def test_refused_when_the_vm_is_not_up(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        job = await s.wait_job(await s.submit("HibernateVm", {"vm": str(uuid.uuid4())}))
        assert job.status is JobStatus.FAILED
        assert job.error is not None and "not running Up" in job.error
        assert memory_volumes(s) == {}
        assert s.daemon.registry.job_tasks(job.id) == []
        steps = step_types(s, job.id)
        assert steps == [("VALIDATING", StepStatus.FAILED.value, [])]


async def test_vm_destroyed_while_saving_fails_and_removes_the_volumes(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        s.sim.cluster.hosts[VM_HOST].gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await saving(s, vm)
        s.sim.cluster.fleet.destroy(VM_HOST, vm.vm_id)  # someone powers it off meanwhile
        job = await s.wait_job(job)
        assert job.status is JobStatus.FAILED
        # the Down event or the status poll's NoSuchVM tells first, whichever comes first
        assert job.error is not None
        assert "went down on host2 without saving" in job.error or "disappeared" in job.error
        assert ("SAVING_STATE", "FAILED", []) in step_types(s, job.id)
        assert memory_volumes(s) == {}  # end_with_failure reverted the volume tasks
        assert_settled(s, job.id)


async def test_restart_while_saving_resumes_without_a_second_hibernate(tmp_path: Path) -> None:
    sim = await start_sim()
    try:
        gate = sim.cluster.hosts[VM_HOST].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            vm = add_vm(s)
            job = await s.submit("HibernateVm", {"vm": vm.vm_id})
            await saving(s, vm)
            root = s.daemon.executor.root_of(job)
            await until(s, job.id, lambda: bool(root.data.get("hibernate_sent")))
        save = vm.migration  # VDSM's source thread of this save
        async with running_stack(tmp_path, sim=sim) as s:
            job = s.daemon.registry.jobs[job.id]
            assert job.status is JobStatus.STARTED
            gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FINISHED, job.error
            assert vm.migration is save  # the save under way was waited for, not started again
            assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]
            assert_settled(s, job.id)
    finally:
        await sim.stop()


async def test_a_host_that_cannot_answer_while_saving_is_waited_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VDSM answering 99 (restarting) to the status poll does not fail the hibernation."""
    monkeypatch.setattr(HibernateVm, "poll_seconds", 0.01)
    async with running_stack(tmp_path) as s:
        gate = s.sim.cluster.hosts[VM_HOST].gate
        gate.hold()
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await saving(s, vm)
        refused: list[int] = []
        real = VdsmHost.migration_status

        async def counted(host: VdsmHost, vm_id: str) -> dict[str, Any]:
            try:
                return await real(host, vm_id)
            except VdsmCallError as e:
                refused.append(e.vdsm_code)
                raise

        monkeypatch.setattr(VdsmHost, "migration_status", counted)
        faults = s.sim.cluster.hosts[VM_HOST].faults
        faults.settings.recovering = True
        await until_sim(lambda: refused.count(99) >= 3)
        assert s.daemon.registry.jobs[job.id].status is JobStatus.STARTED
        faults.clear()
        gate.release(vm.vm_id)
        job = await s.wait_job(job)
        assert job.status is JobStatus.FINISHED, job.error
        assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]


async def test_a_save_that_failed_before_the_cancel_is_a_resumed_vm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The save fails by itself (its memory volume vanished) while the daemon has not heard;
    then a cancel: VM.migrateCancel answers that save's own error (12), as VDSM does. The
    cancel reads the VM's state, Up, and ends the job ABORTED instead of failing on the 12."""
    monkeypatch.setattr(HibernateVm, "poll_seconds", 3600.0)
    async with running_stack(tmp_path) as s:
        fleet = s.sim.cluster.fleet
        fleet.max_outgoing = 0  # the save waits for an outgoing slot, "Saving State"
        polls: list[dict[str, Any]] = []
        real = VdsmHost.migration_status

        async def counted(host: VdsmHost, vm_id: str) -> dict[str, Any]:
            polls.append(await real(host, vm_id))
            return polls[-1]

        monkeypatch.setattr(VdsmHost, "migration_status", counted)
        vm = add_vm(s)
        job = await s.submit("HibernateVm", {"vm": vm.vm_id})
        root = s.daemon.executor.root_of(job)
        await until_sim(lambda: bool(polls))  # the daemon saw the save under way, then sleeps
        assert vm.status is VmStatus.SAVING_STATE
        hosts = s.daemon.hosts
        hosts.on_vm_event.clear()
        hosts.on_vm_report.clear()
        dump = root.data["dump_volume"]
        s.sim.cluster.storage.remove_volume(s.pool, root.data["domain"], dump)
        await fleet.raise_outgoing_limit(VM_HOST, 2)
        await until_sim(lambda: vm.status is VmStatus.UP)
        assert fleet.get_migration_status(VM_HOST, vm.vm_id)["status"]["code"] == 12
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.STOP, requester=1000)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED, job.error
        assert vm_status(s, vm) == "Up" and not vm.migrating
        assert ("SAVING_STATE", "ABORTED", []) in step_types(s, job.id)
        assert list(memory_volumes(s).values()) == [""]  # the metadata volume, unused

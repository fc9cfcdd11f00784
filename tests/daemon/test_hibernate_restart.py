"""HibernateVm across a daemon restart in each of its phases (issue 6), in process.

The daemon is stopped with the job in a phase and a new one started on the same database against
the same simulator, as tests/daemon/test_recovery.py does; nothing the first daemon had not
committed survives, as after a SIGKILL. In every phase the job must end as an uninterrupted one
would (one save, both memory volumes used by the saved VM, every task cleared, no lock held).

The hardest window is between committing `hibernating` and committing the VM.hibernate reply: the
restarted daemon cannot know from its database whether the verb reached the host and asks it.
Both answers are tested, the "never reached" one with the VM's migration status still telling of
an earlier save that was cancelled (VDSM keeps the last migration's status on the VM).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest

from daemon.commands import hibernate_vm
from daemon.model import CancelMode, JobStatus
from daemon.vdsm.verbs import VdsmHost
from tests.daemon.stack import Stack, running_stack, start_sim
from tests.daemon.test_cancel import spm_host, until, until_sim
from tests.daemon.test_hibernate import VM_HOST, add_vm, assert_settled, memory_volumes, saving
from vdsm_simulator.app import Simulator
from vdsm_simulator.vms import SimVm, VmStatus


async def _forever() -> None:
    await asyncio.Event().wait()  # until the daemon's stop cancels the command


async def _never_sent(verb: Awaitable[None]) -> None:
    """VM.hibernate lost before it reached the host (the process died first)."""
    if hasattr(verb, "close"):
        verb.close()
    await _forever()


async def _reply_not_recorded(verb: Awaitable[None]) -> None:
    """VM.hibernate reached the host and answered, but the daemon died before recording it."""
    await verb
    await _forever()


async def _cancelled_save(s: Stack, vm: SimVm) -> None:
    """An earlier HibernateVm of the same VM, cancelled while saving: VM Up, status 47."""
    gate = s.sim.cluster.hosts[VM_HOST].gate
    gate.hold()
    job = await s.submit("HibernateVm", {"vm": vm.vm_id})
    await saving(s, vm)
    await s.daemon.cancels.cancel(job.id, mode=CancelMode.REVERT, requester=1000)
    assert (await s.wait_job(job)).status is JobStatus.ABORTED
    gate.open()
    status = s.sim.cluster.fleet.get_migration_status(VM_HOST, vm.vm_id)["status"]
    assert status["code"] == 47 and vm.status is VmStatus.UP


WINDOWS = ["never sent", "reply not recorded", "saving, VM seen Up", "saved, VM seen Up"]


@pytest.mark.parametrize("window", WINDOWS)
async def test_restart_between_hibernating_and_the_reply(
    tmp_path: Path, window: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            vm = add_vm(s)
            if window == "never sent":
                await _cancelled_save(s, vm)
            if window == "saving, VM seen Up":
                sim.cluster.hosts[VM_HOST].gate.hold()
            monkeypatch.setattr(
                hibernate_vm,
                "_critical",
                _never_sent if window == "never sent" else _reply_not_recorded,
            )
            job = await s.submit("HibernateVm", {"vm": vm.vm_id})
            root = s.daemon.executor.root_of(job)
            await until(s, job.id, lambda: bool(root.data.get("hibernating")))
            if window != "never sent":
                await until_sim(lambda: vm.migrating or vm.status is VmStatus.DOWN)
            if window == "saved, VM seen Up":
                await until_sim(lambda: vm.status is VmStatus.DOWN)
        monkeypatch.undo()
        first_save = vm.migration
        if window.endswith("VM seen Up"):
            # VDSM answers VM.hibernate before its save thread pauses the VM: a restart may
            # ask the host in between and see the VM Up; the second VM.hibernate then gets 51
            # (the save runs) or 1 (noVM: it is over, the VM Down)
            real_info = VdsmHost.vm_info
            seen: list[str] = []

            async def up_once(host: VdsmHost, vm_id: str) -> dict[str, Any]:
                stats = await real_info(host, vm_id)
                if vm_id == vm.vm_id and not seen:
                    seen.append(stats["status"])
                    return {**stats, "status": "Up"}
                return stats

            monkeypatch.setattr(VdsmHost, "vm_info", up_once)
        async with running_stack(tmp_path, sim=sim) as s:
            job = s.daemon.registry.jobs[job.id]
            assert job.status is JobStatus.STARTED
            if window == "saving, VM seen Up":
                await until(s, job.id, lambda: bool(seen))
                sim.cluster.hosts[VM_HOST].gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FINISHED, job.error
            if window != "never sent":
                assert vm.migration is first_save  # waited for, not started a second time
            assert vm.exit_info is not None and vm.exit_info["exitReason"] == 5
            assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]
            assert_settled(s, job.id)
    finally:
        await sim.stop()


async def _saved(s: Stack, vm: SimVm, sim: Simulator) -> None:
    """The VM is Down with its state saved; the daemon has not run FINALIZING yet."""
    gate = sim.cluster.hosts[VM_HOST].gate
    gate.hold()
    await saving(s, vm)
    s.daemon.hosts.on_vm_event.clear()  # keep the daemon from hearing of the end
    s.daemon.hosts.on_vm_report.clear()
    gate.release(vm.vm_id)
    await until_sim(lambda: vm.status is VmStatus.DOWN)


@pytest.mark.parametrize("phase", ["volumes running", "saved, not yet finalized"])
async def test_restart_in_a_phase_loses_nothing(
    tmp_path: Path, phase: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hibernate_vm.HibernateVm, "poll_seconds", 3600.0)
    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            vm = add_vm(s)
            if phase == "volumes running":
                sim.cluster.hosts[spm_host(s)].gate.hold()
                job = await s.submit("HibernateVm", {"vm": vm.vm_id})
                await until_sim(lambda: len(sim.cluster.hosts[spm_host(s)].gate.held()) == 2)
            else:
                job = await s.submit("HibernateVm", {"vm": vm.vm_id})
                await _saved(s, vm, sim)
        monkeypatch.undo()
        for host in sim.cluster.hosts.values():
            host.gate.open()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.wait_job(s.daemon.registry.jobs[job.id])
            assert job.status is JobStatus.FINISHED, job.error
            assert vm.exit_info is not None and vm.exit_info["exitReason"] == 5
            assert s.sim.cluster.fleet.get(vm.vm_id, VM_HOST) is None  # destroyed at the end
            assert sorted(memory_volumes(s).values()) == [vm.vm_id, vm.vm_id]
            assert_settled(s, job.id)
    finally:
        await sim.stop()


@pytest.mark.parametrize("mode", [CancelMode.STOP, CancelMode.REVERT])
@pytest.mark.parametrize("moment", ["before VM.migrateCancel", "after VM.migrateCancel"])
async def test_restart_during_a_cancel_while_saving(
    tmp_path: Path, mode: CancelMode, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The cancel's intent is committed; the daemon stops before (or just after) the save was
    aborted. The restarted coordinator carries the cancel on: the VM Up, the job ABORTED."""
    real = hibernate_vm.HibernateVm.on_cancel

    async def dies(self: hibernate_vm.HibernateVm, how: CancelMode) -> list[str]:
        if moment == "after VM.migrateCancel":
            await real(self, how)
        await _forever()
        return []

    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            sim.cluster.hosts[VM_HOST].gate.hold()
            vm = add_vm(s)
            job = await s.submit("HibernateVm", {"vm": vm.vm_id})
            await saving(s, vm)
            monkeypatch.setattr(hibernate_vm.HibernateVm, "on_cancel", dies)
            await s.daemon.cancels.cancel(job.id, mode=mode, requester=1000)
            if moment == "after VM.migrateCancel":
                await until_sim(lambda: vm.status is VmStatus.UP)
        monkeypatch.undo()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.wait_job(s.daemon.registry.jobs[job.id])
            assert job.status is JobStatus.ABORTED, job.error
            assert vm.status is VmStatus.UP and not vm.migrating
            assert sim.cluster.hosts[VM_HOST].gate.held() == []
            if mode is CancelMode.REVERT:
                assert memory_volumes(s) == {}
            else:
                assert sorted(memory_volumes(s).values()) == ["", ""]
            assert_settled(s, job.id)
    finally:
        await sim.stop()

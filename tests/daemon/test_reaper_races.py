"""The SPM moving under the orphan reaper and under a failed command's revert, against vdsm-sim.

Both send task verbs through task_verbs.py: a 401 from a host that has just lost the SPM role is
not "the task is gone" (the next SPM recovers it from storage), and a revert repeated after a
restart is VDSM's refusal of a repeat, not a failure. Each race is forced with a hook (the SPM is
moved with `sim.cluster.elect_spm` right before the verb goes out), never a sleep.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest

from daemon.commands.create_vm import CreateVm
from daemon.engine.command import CommandBase
from daemon.engine.reaper import ReapRecord
from daemon.model import JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_cancel import spm_host, until
from tests.daemon.test_cancel_races import Attempts, all_clear, cancel, disk, polling
from tests.daemon.test_recovery import restarted, simulator, spm_of


def other_host(s: Stack, host: str) -> str:
    return next(h for h in s.sim.cluster.hosts if h != host)


async def test_spm_moves_before_the_reaper_reaps_an_orphan(tmp_path: Path) -> None:
    """A forced cancel left the job's task ORPHAN; the role moves after the reaper resolved the
    SPM, so the task's status is asked of a host that no longer knows the pool's tasks (401).
    The orphan is not "already gone": the reaper finds it on the new SPM and stops and clears
    it there, and only then marks it CLEARED."""
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        old = spm_host(s)
        new = other_host(s, old)
        spm = s.sim.cluster.hosts[old]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        spm.faults.settings.update({"down": True})
        await cancel(s, job, force=True, privileged=True)
        job = await s.wait_job(job)
        reg = s.daemon.registry
        [task] = reg.job_tasks(job.id)
        assert task.status is TaskStatus.ORPHAN
        spm.faults.clear()
        reaper = s.daemon.reaper
        reap = reaper._reap
        asked_old = Attempts(s, old, "task_status")

        async def move_then_reap(record: ReapRecord) -> bool:
            if s.sim.cluster.storage.pools[s.pool].spm_host == old:
                # the reaper resolved `old` as the SPM; the role moves before it asks
                await s.sim.cluster.elect_spm(s.sim.cluster.storage.pools[s.pool], new)
            return await reap(record)

        reaper._reap = move_then_reap  # type: ignore[method-assign]
        async with asyncio.timeout(20):
            while task.status is TaskStatus.ORPHAN:
                await reaper.reap_orphans()
                await asyncio.sleep(0)
        assert asked_old.count >= 1  # the race happened: the old SPM was asked first
        assert task.status is TaskStatus.CLEARED
        assert [r.host for r in reaper.reaped] == [new]
        all_clear(s)  # before the fix the task lived on in the new SPM's table
        assert volume not in s.volumes()  # the recovered task was stopped and rolled back


async def test_spm_moves_before_a_failed_create_vm_reverts_its_disks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """VM.create fails, so CreateVm reverts the disks its children created; the role moves just
    before the revert goes out, and the old SPM answers 401. The revert is retried on the new
    SPM, which recovered the tasks, instead of failing with the disks left behind."""
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        s.daemon.executor.settle_retry = 0.01
        old = spm_host(s)
        new = other_host(s, old)
        s.sim.cluster.hosts["host2"].faults.settings.update(
            {"error_code": 100, "error_message": "no memory", "error_methods": ["VM.create"]}
        )
        reverts_on_old = Attempts(s, old, "revert_task")
        revert = CommandBase.revert_tasks

        async def move_then_revert(command: CommandBase) -> None:
            pool = s.sim.cluster.storage.pools[s.pool]
            await s.sim.cluster.elect_spm(pool, new)  # the daemon still thinks `old` is SPM
            await revert(command)

        monkeypatch.setattr(CreateVm, "revert_tasks", move_then_revert)
        before = s.volumes()
        disks = [disk(s) for _ in range(2)]
        job = await s.wait_job(
            await s.submit("CreateVm", {"name": "vm2", "host": "host2", "disks": disks})
        )
        assert reverts_on_old.count >= 1  # the race happened: the first revert met the old SPM
        assert job.status is JobStatus.FAILED
        assert "no memory" in job.error, job.error
        tasks = s.daemon.registry.job_tasks(job.id)
        assert all(t.revert_sent and t.status is TaskStatus.CLEARED for t in tasks), tasks
        assert s.volumes() == before  # both createVolume tasks were rolled back
        all_clear(s)


async def test_a_revert_repeated_after_a_restart_counts_as_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CreateVm's failure path reverts its disks, newest first. The first Task.revert reached
    VDSM but the daemon died before `revert_sent` committed: after the restart the revert is
    sent again and VDSM refuses the repeat (403 rolling back, 441 rolled back). The task's state
    says it was the first revert taking effect, so the end carries on and reverts the other
    disk too, instead of failing there and leaving it behind."""
    async with simulator() as sim:
        spm = sim.cluster.hosts[spm_of(sim)]
        sim.cluster.hosts["host2"].faults.settings.update(
            {"error_code": 100, "error_message": "no memory", "error_methods": ["VM.create"]}
        )
        reached = asyncio.Event()

        async def revert_then_die(command: CommandBase) -> None:
            newest = max(command.tasks(descendants=True), key=lambda t: t.created_at)
            assert newest.vdsm_id is not None
            spm.tasks.revert(newest.vdsm_id)  # reached VDSM; the daemon dies before recording it
            reached.set()
            await asyncio.Event().wait()

        monkeypatch.setattr(CreateVm, "revert_tasks", revert_then_die)
        async with running_stack(tmp_path, sim=sim) as s:
            before = s.volumes()
            disks = [disk(s) for _ in range(2)]
            job = await s.submit("CreateVm", {"name": "vm2", "host": "host2", "disks": disks})
            async with asyncio.timeout(20):
                await reached.wait()
            assert not any(t.revert_sent for t in s.daemon.registry.job_tasks(job.id))
        monkeypatch.undo()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.wait_job(restarted(s, job))
            assert job.status is JobStatus.FAILED
            tasks = s.daemon.registry.job_tasks(job.id)
            assert len(tasks) == 2
            assert all(t.revert_sent and t.status is TaskStatus.CLEARED for t in tasks), tasks
            assert s.volumes() == before  # both disks rolled back, the repeated one included
            all_clear(s)

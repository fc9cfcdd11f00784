"""Races of a job's own end: the executor settling its tasks (Task.stop, Task.clear) and CopyDisk's
revert deleting its copy, against vdsm-sim.

Each interleaving is forced with a hook, never a sleep: the simulator's job gate holds storage jobs,
a verb that "reached VDSM before the crash" is sent straight to the simulator's task table, and the
SPM role is moved with `sim.cluster.elect_spm` between a task's end and its clear.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import pytest

from daemon.engine.task_verbs import Refusal, TaskVerb, refusal
from daemon.model import CancelMode, Job, JobStatus, TaskStatus
from daemon.vdsm.errors import (
    TaskAborted,
    TaskNotFinished,
    TaskStateTransitionError,
    UnknownTask,
    VdsmCallError,
)
from tests.daemon.stack import running_stack
from tests.daemon.test_cancel import spm_host, until, until_sim
from tests.daemon.test_cancel_races import all_clear, cancel, disk, ended, polling
from tests.daemon.test_recovery import restarted, sim_clean, simulator, spm_of


async def test_a_stop_repeated_after_a_restart_counts_as_sent(tmp_path: Path) -> None:
    """Task.stop reached VDSM but the daemon died before `stop_sent` committed: after the restart
    the interrupted job stops its tasks again and VDSM answers 411 (already aborting). That is
    the first stop taking effect, not a failure: the stop is recorded and the job ends."""
    async with simulator() as sim:
        spm = sim.cluster.hosts[spm_of(sim)]
        spm.gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            disks = [disk(s) for _ in range(2)]
            job = await s.submit("CreateVm", {"name": "vmx", "host": "host2", "disks": disks})
            await until_sim(lambda: len(spm.gate.held()) == 2)
            reg = s.daemon.registry
            await until(s, job.id, lambda: all(t.vdsm_id for t in reg.job_tasks(job.id)))
            assert s.daemon.executor.root_of(job).data["phase"] == "execute"
            for task in reg.job_tasks(job.id):
                assert task.vdsm_id is not None
                spm.tasks.stop(task.vdsm_id)  # reached VDSM; the daemon dies before recording it
                assert not task.stop_sent
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            reg = s.daemon.registry
            await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
            spm.gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FAILED
            assert "interrupted by a daemon restart" in job.error
            assert all(t.status is TaskStatus.CLEARED for t in reg.job_tasks(job.id))
            assert reg.job_locks(job.id) == []
            assert sim_clean(s)


async def test_spm_moves_between_a_jobs_task_end_and_its_clear(tmp_path: Path) -> None:
    """A job's task ended on the old SPM; the role moves before the job's Task.clear goes out,
    so the clear reaches a host that no longer knows the pool's tasks (401). That is not
    "already cleared": the new SPM recovered the task from storage, and the clear goes there."""
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        s.daemon.executor.settle_retry = 0.01
        old = spm_host(s)
        other = next(h for h in s.sim.cluster.hosts if h != old)
        gate = s.sim.cluster.hosts[old].gate
        gate.hold()
        job = await s.submit("CreateDisk", disk(s))
        await until(s, job.id, polling(s, job))
        executor = s.daemon.executor
        settle = executor.settle

        async def move_then_settle(job: Job, *, deadline: float = 300.0) -> None:
            pool = s.sim.cluster.storage.pools[s.pool]
            await s.sim.cluster.elect_spm(pool, other)  # the daemon still thinks `old` is SPM
            await settle(job, deadline=deadline)

        executor.settle = move_then_settle  # type: ignore[method-assign]
        gate.open()
        job = await ended(s, job, JobStatus.FINISHED, None)
        assert [t.status for t in s.daemon.registry.job_tasks(job.id)] == [TaskStatus.CLEARED]
        all_clear(s)


async def test_the_copys_deletion_under_revert_is_recorded_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    """CopyDisk's revert deletes a copy that completed with an Image.delete task of its own. Like
    every task-creating verb, that task is recorded (placeholder first, VDSM's id once it
    answers): a daemon that stops while it runs finds it after the restart and sees it to its
    end, instead of leaving it on the host for the orphan reaper."""
    async with simulator() as sim:
        image = str(uuid.uuid4())
        spm = sim.cluster.hosts[spm_of(sim)]
        async with running_stack(tmp_path, sim=sim) as s:
            made = await s.wait_job(await s.submit("CreateDisk", disk(s, image=image)))
            assert made.status is JobStatus.FINISHED
            spm.gate.hold()
            params = {"pool": s.pool, "domain": s.domains[0], "image": image}
            job = await s.submit("CopyDisk", {**params, "dst_domain": s.domains[1]})
            await until_sim(lambda: len(spm.gate.held()) == 1)
            [copy] = spm.gate.held()
            await cancel(s, job, CancelMode.REVERT)
            reg = s.daemon.registry
            await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
            spm.gate.release(copy)  # the copy is committed as the stop comes: kept, 411
            await until_sim(lambda: len(spm.gate.held()) == 1 and spm.gate.held() != [copy])
            [deletion] = spm.gate.held()
            await until(s, job.id, lambda: deletion in [t.vdsm_id for t in reg.job_tasks(job.id)])
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            assert job.status is JobStatus.CANCELLING
            [task] = [t for t in s.daemon.registry.job_tasks(job.id) if t.vdsm_id == deletion]
            assert task.verb == "deleteImage" and task.status is TaskStatus.POLLING
            spm.gate.open()
            job = await ended(s, job, JobStatus.ABORTED, "reverted")
            assert task.status is TaskStatus.CLEARED
            assert s.daemon.reaper.reaped == []  # the daemon knew it: nothing was orphaned
            dst = sim.cluster.storage.pools[s.pool].domains[s.domains[1]]
            assert [v for v in dst.volumes.values() if v.image == image and not v.removing] == []
            all_clear(s)


@pytest.mark.parametrize(
    ("verb", "error", "meaning"),
    [
        (TaskVerb.STOP, TaskAborted(411, "Task is aborted"), Refusal.DONE),
        (TaskVerb.CLEAR, TaskAborted(411, "Task is aborted"), Refusal.FAILED),
        (TaskVerb.STOP, UnknownTask(401, "Task id unknown"), Refusal.CHECK_ROLE),
        (TaskVerb.CLEAR, UnknownTask(401, "Task id unknown"), Refusal.CHECK_ROLE),
        (TaskVerb.REVERT, TaskNotFinished(403, "Task not finished"), Refusal.CHECK_STATE),
        (TaskVerb.REVERT, TaskStateTransitionError(441, "bad state"), Refusal.CHECK_STATE),
        (TaskVerb.STOP, TaskStateTransitionError(441, "bad state"), Refusal.FAILED),
        (TaskVerb.CLEAR, VdsmCallError(100, "General Exception"), Refusal.FAILED),
    ],
)
def test_what_a_refusal_means(verb: TaskVerb, error: VdsmCallError, meaning: Refusal) -> None:
    """VDSM's answer to a repeated verb: only the refusals a repeat can cause count as done."""
    assert refusal(verb, error) is meaning

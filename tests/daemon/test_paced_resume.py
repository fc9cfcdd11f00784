"""Jobs resumed in phase wait take their first step after the API is up (Executor.recover):
until their turn they must behave exactly as running jobs for a cancel and for a stop."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.engine.executor import Executor
from daemon.model import Job, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_recovery import sim_clean, simulator, spm_of
from tests.sim.conftest import wait_until

Release = Callable[[Executor], None]


def disk(s: Stack) -> dict[str, Any]:
    return {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())}


async def waiting_jobs(s: Stack, count: int, held: Callable[[], int]) -> list[Job]:
    """`count` CreateDisk jobs whose task is held on the host, each committed in phase wait."""
    jobs = [await s.submit("CreateDisk", disk(s)) for _ in range(count)]
    await wait_until(
        lambda: (
            held() == count
            and all(s.daemon.executor.root_of(j).data["phase"] == "wait" for j in jobs)
        ),
        10.0,
        0.01,
    )
    return jobs


@pytest.fixture
def no_turns(monkeypatch: pytest.MonkeyPatch) -> Release:
    """Daemons started meanwhile give no turns; returns the real release to call by hand."""
    release = Executor.release_resumed
    monkeypatch.setattr(Executor, "release_resumed", lambda self: None)
    return release


async def test_a_cancel_of_a_job_still_waiting_for_its_turn_stops_it(
    tmp_path: Path, no_turns: Release
) -> None:
    async with simulator() as sim:
        gate = sim.cluster.hosts[spm_of(sim)].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            (job,) = await waiting_jobs(s, 1, lambda: len(gate.held()))
        async with running_stack(tmp_path, sim=sim) as s:
            executor = s.daemon.executor
            assert executor.unresumed == 1  # it has not taken a step since the restart
            running = executor.running_task(job.id)
            assert running is not None and not running.done()
            await s.daemon.cancels.cancel(job.id, reason="before its turn", requester=1000)
            reg = s.daemon.registry
            await wait_until(lambda: all(t.stop_sent for t in reg.job_tasks(job.id)), 10.0, 0.01)
            assert running.cancelled()
            gate.open()  # the stopped task ends on the host; VDSM rolls it back
            ended = await s.wait_job(reg.jobs[job.id])
            assert ended.status is JobStatus.ABORTED, ended.error
            assert ended.cancel is not None and ended.cancel.outcome == "stopped"
            assert [t.status for t in reg.job_tasks(job.id)] == [TaskStatus.CLEARED]
            assert reg.job_locks(job.id) == []
            assert executor.unresumed == 0
            assert sim_clean(s)


async def test_a_stop_mid_resume_leaves_every_job_to_the_next_start(
    tmp_path: Path, no_turns: Release
) -> None:
    async with simulator() as sim:
        gate = sim.cluster.hosts[spm_of(sim)].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            jobs = await waiting_jobs(s, 3, lambda: len(gate.held()))
        async with running_stack(tmp_path, sim=sim) as s:
            executor = s.daemon.executor
            assert executor.unresumed == 3
            executor.resume_chunk = 1
            no_turns(executor)  # the pacer starts opening turns, one a pass; the stop lands
            registry = s.daemon.registry
        # stopped (leaving the block stops the daemon): no job coroutine is left, none ended
        assert all(executor.running_task(j.id) is None for j in jobs)
        assert all(registry.jobs[j.id].status is JobStatus.STARTED for j in jobs)
        async with running_stack(tmp_path, sim=sim) as s:
            reg = s.daemon.registry
            for job in jobs:
                assert reg.jobs[job.id].status is JobStatus.STARTED
                assert s.daemon.executor.root_of(reg.jobs[job.id]).data["phase"] == "wait"
            no_turns(s.daemon.executor)
            gate.open()
            for job in jobs:
                ended = await s.wait_job(reg.jobs[job.id])
                assert ended.status is JobStatus.FINISHED, ended.error
                assert [t.status for t in reg.job_tasks(job.id)] == [TaskStatus.CLEARED]
            await s.daemon.executor.resumed.wait()
            assert sim_clean(s)

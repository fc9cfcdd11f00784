"""The cancel deadline while a stopped task is still running (DESIGN.md "Cancellation", rule 5).

A SPARSE volume creation has no abort callback in VDSM: a stop waits for its work, which the
simulator's gate holds. Past the deadline the job ends FAILED with the reason and its task is
left to the orphan reaper; before it, the cancel waits however many reports wake it.
"""

from __future__ import annotations

import uuid
from pathlib import Path

from daemon.model import CancelMode, JobStatus, TaskStatus
from tests.daemon.stack import running_stack
from tests.daemon.test_cancel import until


async def test_a_stop_waiting_past_the_deadline_fails_the_job(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        for host in s.sim.cluster.hosts.values():
            host.gate.hold()
        job = await s.submit(
            "CreateDisk",
            {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
        )
        reg = s.daemon.registry
        await until(s, job.id, lambda: any(t.step_id for t in reg.job_tasks(job.id)))
        s.daemon.cancels.deadline = 1.0
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.STOP, requester=0)
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        (task,) = reg.job_tasks(job.id)
        assert task.status is TaskStatus.POLLING  # VDSM cannot abort it: still running
        job = await s.wait_job(job)
        assert job.status is JobStatus.FAILED
        assert job.error == "cancel deadline passed while tasks were still running"
        assert job.cancel is not None and job.cancel.outcome == "failed"
        assert task.status is TaskStatus.ORPHAN  # for the reaper once it ends
        assert reg.job_locks(job.id) == []
        for host in s.sim.cluster.hosts.values():
            host.gate.open()

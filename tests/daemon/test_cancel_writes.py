"""What a cancel writes to the store, task by task (issue 4, the cancel-latency burst).

A thousand cancels at once made about thirty record changes per job, each one serialized and
committed; the ones a restart learns again at no risk are no writes of their own any more (see
`Registry.note_task`): the stop's answer (`stop_sent`) and the VDSM states short of finished.
These tests pin that down against the simulator, and that the facts still reach the disk with
the task's next written change.
"""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path
from typing import Any

from daemon.model import CancelMode, JobStatus, TaskStatus
from tests.daemon.stack import running_stack
from tests.daemon.test_cancel import until


async def test_a_stopped_task_is_written_ended_then_clearing_then_cleared(tmp_path: Path) -> None:
    # PREALLOCATED: VDSM aborts the allocation at once; an hour-long task ends only by the stop
    async with running_stack(tmp_path, time_scale=1.0, task_seconds=3600.0) as s:
        job = await s.submit(
            "CreateDisk",
            {
                "pool": s.pool,
                "domain": s.domains[0],
                "size": 4096,
                "volume": str(uuid.uuid4()),
                "preallocate": "PREALLOCATED",
            },
        )
        reg = s.daemon.registry
        await until(s, job.id, lambda: any(t.step_id for t in reg.job_tasks(job.id)))
        (task,) = reg.job_tasks(job.id)
        store = s.daemon.store
        written: list[dict[str, Any]] = []
        put = store.put_nowait

        def recording(
            kind: Any, key: str, doc: dict[str, Any] | None, *, urgent: bool = False
        ) -> asyncio.Future[None]:
            if kind == "task" and key == task.id and doc is not None:
                written.append(doc)
            return put(kind, key, doc, urgent=urgent)

        store.put_nowait = recording  # type: ignore[method-assign]
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.STOP, requester=0)
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED
        assert task.stop_sent and task.vdsm_result == "cleanSuccess"
        assert [d["status"] for d in written] == ["ENDED", "CLEARING", "CLEARED"]
        assert all(d["stop_sent"] for d in written)  # carried by the task's next write
        assert written[0]["vdsm_state"] == "finished"
        await store.flush()
        row = store.read_job_tree(job.id).tasks
        assert [(t["status"], t["stop_sent"]) for t in row] == [("CLEARED", True)]


async def test_a_state_short_of_finished_is_published_but_not_written(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        for host in s.sim.cluster.hosts.values():
            host.gate.hold()  # the task runs until the test lets it end
        job = await s.submit(
            "CreateDisk",
            {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
        )
        reg = s.daemon.registry
        await until(s, job.id, lambda: any(t.step_id for t in reg.job_tasks(job.id)))
        (task,) = reg.job_tasks(job.id)
        store = s.daemon.store
        await store.flush()
        (before,) = store.read_job_tree(job.id).tasks
        events = reg.events.subscribe()
        report = {"taskState": "aborting", "taskResult": "", "code": 0, "message": "m"}
        assert reg.report_task(task, report)
        assert (task.vdsm_state, task.status) == ("aborting", TaskStatus.POLLING)
        async with asyncio.timeout(5):
            while True:
                event = await events.get()
                assert event is not None
                if event.kind == "task" and event.id == task.id:
                    break
        assert event.data["vdsm_state"] == "aborting"
        await store.flush()
        assert store.read_job_tree(job.id).tasks == [before]  # published, not written
        for host in s.sim.cluster.hosts.values():
            host.gate.open()
        job = await s.wait_job(job)
        assert job.status is JobStatus.FINISHED
        await store.flush()  # the job's end is in memory before its commit
        (row,) = store.read_job_tree(job.id).tasks
        assert (row["status"], row["vdsm_state"]) == ("CLEARED", "finished")

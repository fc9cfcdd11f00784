"""Registry: changes are checked, persisted and published; a reload rebuilds the same trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from daemon import model
from daemon.model import (
    CancelMode,
    CancelRecord,
    Command,
    Job,
    JobStatus,
    LockKind,
    StepStatus,
    StepType,
    Task,
    TaskStatus,
    TransitionError,
    new_id,
    now,
)
from daemon.registry import LockConflict, Registry
from daemon.store import Store


async def open_registry(path: Path) -> Registry:
    store = Store(path)
    await store.open()
    registry = Registry(store)
    await registry.load()
    return registry


def make_job(correlation: str = "corr") -> Job:
    return Job(new_id(), "CreateDisk", {"size": 1}, owner=1000, correlation_id=correlation)


async def test_a_job_tree_survives_a_reload(tmp_path: Path) -> None:
    reg = await open_registry(tmp_path / "d.db")
    job = make_job()
    await reg.create_job(job)
    executing = reg.add_step(job, StepType.EXECUTING, "Executing")
    reg.add_step(job, StepType.CREATE_VOLUME, "Creating volume", parent_id=executing.id)
    cmd = Command(new_id(), job.id, "CreateDisk", {}, root_id="")
    cmd.root_id = cmd.id
    reg.add_command(cmd)
    task = Task(new_id(), job.id, cmd.id, "host1", "pool", "createVolume")
    await reg.add_task(task)
    await reg.record_task_id(task, "vdsm-task-1")
    reg.acquire_locks(job, [("disk:1", LockKind.EXCLUSIVE)])
    await reg.record_cancel(job, CancelRecord(CancelMode.STOP, 1000, now(), "test"))
    await reg.store.close()

    again = await open_registry(tmp_path / "d.db")
    loaded = again.jobs[job.id]
    assert loaded.status is JobStatus.CANCELLING
    assert loaded.cancel is not None and loaded.cancel.mode is CancelMode.STOP
    view = again.job_view(job.id)
    assert [s["type"] for s in view["steps"]] == ["EXECUTING"]
    assert [s["type"] for s in view["steps"][0]["steps"]] == ["CREATE_VOLUME"]
    assert again.by_vdsm_id[("host1", "vdsm-task-1")] == task.id
    assert again.tasks[task.id].status is TaskStatus.POLLING
    assert [lock.entity for lock in again.job_locks(job.id)] == ["disk:1"]
    assert again.by_correlation["corr"] == {job.id}
    await again.store.close()


async def test_illegal_moves_are_refused_and_change_nothing(tmp_path: Path) -> None:
    reg = await open_registry(tmp_path / "d.db")
    job = make_job()
    await reg.create_job(job)
    await reg.set_job_status(job, JobStatus.FINISHED)
    with pytest.raises(TransitionError):
        reg.set_job_status(job, JobStatus.STARTED)
    assert job.status is JobStatus.FINISHED
    step = reg.add_step(job, StepType.VALIDATING, "Validating")
    reg.end_step(step, StepStatus.FINISHED)
    with pytest.raises(TransitionError):
        reg.end_step(step, StepStatus.FAILED)
    await reg.store.close()


async def test_locks_conflict_between_jobs_and_release(tmp_path: Path) -> None:
    reg = await open_registry(tmp_path / "d.db")
    a, b = make_job("a"), make_job("b")
    await reg.create_job(a)
    await reg.create_job(b)
    reg.acquire_locks(a, [("vm:1", LockKind.SHARED), ("disk:1", LockKind.EXCLUSIVE)])
    reg.acquire_locks(b, [("vm:1", LockKind.SHARED)])  # shared with shared is fine
    with pytest.raises(LockConflict, match="disk:1 is locked by job"):
        reg.acquire_locks(b, [("vm:2", LockKind.EXCLUSIVE), ("disk:1", LockKind.SHARED)])
    assert "vm:2" not in reg.locks  # all or nothing
    reg.release_locks(a.id)
    reg.acquire_locks(b, [("disk:1", LockKind.EXCLUSIVE)])
    await reg.store.flush()
    stored = {(d["entity"], d["job_id"]) for d in await reg.store.load("lock")}
    assert stored == {("vm:1", b.id), ("disk:1", b.id)}
    await reg.store.close()


async def test_many_shared_holders_and_an_exclusive_one(tmp_path: Path) -> None:
    reg = await open_registry(tmp_path / "d.db")
    jobs = [make_job(f"j{i}") for i in range(200)]
    await reg.create_jobs(jobs)
    for job in jobs:
        reg.acquire_locks(job, [("host:h1", LockKind.SHARED)])
    reg.acquire_locks(jobs[0], [("host:h1", LockKind.SHARED)])  # held already: nothing new
    assert [lock.job_id for lock in reg.locks["host:h1"]] == [job.id for job in jobs]
    other = make_job("x")
    await reg.create_job(other)
    with pytest.raises(LockConflict, match=f"host:h1 is locked by job {jobs[0].id} \\(shared\\)"):
        reg.acquire_locks(other, [("host:h1", LockKind.EXCLUSIVE)])
    for job in jobs[:-1]:
        reg.release_locks(job.id)
    with pytest.raises(LockConflict, match=f"locked by job {jobs[-1].id}"):
        reg.acquire_locks(other, [("host:h1", LockKind.EXCLUSIVE)])
    reg.acquire_locks(jobs[-1], [("host:h1", LockKind.EXCLUSIVE)])  # its own shared: no conflict
    reg.release_locks(jobs[-1].id)
    assert "host:h1" not in reg.locks
    reg.acquire_locks(other, [("host:h1", LockKind.EXCLUSIVE)])
    with pytest.raises(LockConflict, match=f"locked by job {other.id} \\(exclusive\\)"):
        reg.acquire_locks(jobs[0], [("host:h1", LockKind.SHARED)])
    await reg.store.flush()
    reloaded = await open_registry(tmp_path / "d.db")
    with pytest.raises(LockConflict, match=f"locked by job {other.id} \\(exclusive\\)"):
        reloaded.acquire_locks(jobs[0], [("host:h1", LockKind.SHARED)])
    await reloaded.store.close()
    await reg.store.close()


async def test_every_change_is_published_in_order(tmp_path: Path) -> None:
    reg = await open_registry(tmp_path / "d.db")
    sub = reg.events.subscribe()
    job = make_job()
    await reg.create_job(job)
    reg.add_step(job, StepType.VALIDATING, "Validating")
    await reg.set_job_status(job, JobStatus.FAILED, error="nope")
    events = [sub.queue.get_nowait() for _ in range(3)]
    kinds = [(e.kind, e.op) for e in events if e is not None]
    assert kinds == [("job", "created"), ("step", "created"), ("job", "updated")]
    resumed = reg.events.subscribe(after=1)
    assert resumed.queue.qsize() == 2
    await reg.store.close()


async def test_create_jobs_commits_every_job_in_one_go(tmp_path: Path) -> None:
    store = Store(tmp_path / "many.db", synchronous="NORMAL")
    await store.open()
    try:
        reg = Registry(store)
        jobs = [model.Job(model.new_id(), "RefreshHost", {"host": "h"}, 0, "c") for _ in range(50)]
        commits = store.stats.commits
        await reg.create_jobs(jobs)
        assert store.stats.commits - commits <= 2
        assert reg.by_correlation["c"] == {j.id for j in jobs}
        assert {d["id"] for d in await store.load("job")} == {j.id for j in jobs}
    finally:
        await store.close()

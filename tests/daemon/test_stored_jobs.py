"""Ended jobs left on disk at start (issue 3, c and d): what a start loads of them, that every
look-up still sees the whole job, that nothing of theirs is lost or overwritten, and that a
version-1 database is upgraded in place."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from daemon import model
from daemon.api.app import job_summary
from daemon.engine.cancel import CancelRefused
from daemon.engine.reaper import Reaper
from daemon.model import (
    CancelMode,
    CancelRecord,
    Command,
    CommandStatus,
    Job,
    JobStatus,
    StepStatus,
    StepType,
    Task,
    TaskStatus,
    new_id,
    now,
)
from daemon.registry import Registry
from daemon.store import MIGRATIONS, Store
from tests.daemon.stack import running_stack, start_sim
from tests.daemon.test_registry import open_registry


async def ended_job(
    reg: Registry, task_status: TaskStatus = TaskStatus.CLEARED, vdsm_id: str = "vdsm-1"
) -> Job:
    """An ABORTED CreateDisk with a cancel record, two steps, its root command and one task."""
    job = Job(new_id(), "CreateDisk", {"size": 1}, 1000, "corr", "Create a disk")
    await reg.create_job(job)
    executing = reg.add_step(job, StepType.EXECUTING, "Executing")
    reg.add_step(job, StepType.CREATE_VOLUME, "createVolume", parent_id=executing.id)
    cmd = Command(new_id(), job.id, "CreateDisk", {"size": 1}, root_id="", hidden=False)
    cmd.root_id = cmd.id
    reg.add_command(cmd)
    task = Task(new_id(), job.id, cmd.id, "host1", "pool", "createVolume")
    await reg.add_task(task)
    await reg.record_task_id(task, vdsm_id)
    reg.set_task_status(task, TaskStatus.ENDED)
    if task_status in model.TASK_SETTLED:
        reg.set_task_status(task, TaskStatus.CLEARING)
    reg.set_task_status(task, task_status)
    await reg.record_cancel(job, CancelRecord(CancelMode.STOP, 1000, now(), "test"))
    assert job.cancel is not None
    job.cancel.outcome = "aborted"
    for step in reg.steps[job.id].values():
        reg.end_step(step, StepStatus.ABORTED)
    reg.set_command_status(cmd, CommandStatus.CANCELLED)
    await reg.set_job_status(job, JobStatus.ABORTED, error="cancelled", result={"kept": 1})
    return job


async def test_a_start_leaves_an_ended_jobs_tree_on_disk_and_shows_it_whole(
    tmp_path: Path,
) -> None:
    reg = await open_registry(tmp_path / "d.db")
    job = await ended_job(reg)
    before = reg.job_view(job.id)
    summary = job_summary(reg, job)
    await reg.store.close()

    again = await open_registry(tmp_path / "d.db")
    try:
        loaded = again.jobs[job.id]
        assert not dict.__contains__(again.steps, job.id)  # left on disk by the start
        assert not dict.__contains__(again.commands, job.id)
        assert again.tasks == {}  # its only task is CLEARED
        assert job_summary(again, loaded) == summary  # list needs no read
        assert again.by_status[JobStatus.ABORTED] == {job.id}
        assert again.by_correlation["corr"] == {job.id}
        assert again.job_view(job.id) == before
        assert again.job_tasks(job.id)[0].vdsm_id == "vdsm-1"  # now in memory
    finally:
        await again.store.close()


async def test_lookups_elsewhere_read_a_stored_jobs_tree(tmp_path: Path) -> None:
    """The executor, cancel and commands read `steps` / `commands` / `tasks_by_job` directly."""
    reg = await open_registry(tmp_path / "d.db")
    job = await ended_job(reg)
    await reg.store.close()

    for lookup in ("steps", "commands", "tasks_by_job"):
        again = await open_registry(tmp_path / "d.db")
        try:
            found: Any = getattr(again, lookup).get(job.id, {})
            assert len(found) == {"steps": 2, "commands": 1, "tasks_by_job": 1}[lookup]
            assert job.id in again.steps and len(again.steps[job.id]) == 2
        finally:
            await again.store.close()


async def test_writing_a_stored_job_keeps_its_params_and_result(tmp_path: Path) -> None:
    """The start does not read params and result; a write must not store them empty."""
    reg = await open_registry(tmp_path / "d.db")
    job = await ended_job(reg)
    await reg.store.close()

    again = await open_registry(tmp_path / "d.db")
    await again.touch_job(again.jobs[job.id])
    await again.store.close()

    third = await open_registry(tmp_path / "d.db")
    try:
        view = third.job_view(job.id)
        assert view["params"] == {"size": 1}
        assert view["result"] == {"kept": 1}
        assert view["cancel"]["reason"] == "test"
    finally:
        await third.store.close()


async def test_unsettled_tasks_of_an_ended_job_stay_in_memory(tmp_path: Path) -> None:
    """An ORPHAN task of an ended job is the reaper's; purge must see it without a read."""
    reg = await open_registry(tmp_path / "d.db")
    job = await ended_job(reg, TaskStatus.ORPHAN)
    await reg.store.close()

    again = await open_registry(tmp_path / "d.db")
    try:
        [task] = again.tasks.values()
        assert task.status is TaskStatus.ORPHAN and task.job_id == job.id
        assert again.job_tasks(job.id) == [task]
        assert not dict.__contains__(again.steps, job.id)
        again.job_view(job.id)  # reading the tree keeps the live task object
        assert again.job_tasks(job.id) == [task] and again.tasks[task.id] is task
    finally:
        await again.store.close()


async def test_a_stored_task_reported_again_is_not_reaped(tmp_path: Path) -> None:
    """The poller knows only tasks in memory; an ended job's settled ones are on disk."""
    reg = await open_registry(tmp_path / "d.db")
    await ended_job(reg, TaskStatus.LOST, vdsm_id="lost-1")
    await reg.store.close()

    again = await open_registry(tmp_path / "d.db")
    try:
        assert again.untracked_vdsm_ids(["lost-1", "stray-1"]) == ["stray-1"]
        # grace 0: an untracked id would be reaped at once, through hosts it does not have
        reaper = Reaper(again, None, grace=0.0)  # type: ignore[arg-type]
        await reaper.on_unknown_tasks("pool", "host1", ["lost-1"])
        assert reaper.unknown == {} and reaper.reaped == []
    finally:
        await again.store.close()


async def test_a_version_1_database_is_upgraded_in_place(tmp_path: Path) -> None:
    """Rows written by the first schema get their summary columns from their documents."""
    path = tmp_path / "d.db"
    reg = await open_registry(tmp_path / "source.db")
    job = await ended_job(reg)
    live = Job(new_id(), "RefreshHost", {"host": "h"}, 0, "c2")
    await reg.create_job(live)
    before = reg.job_view(job.id)
    await reg.store.close()
    with sqlite3.connect(path) as db:
        db.executescript(f"BEGIN; {MIGRATIONS[0]}; PRAGMA user_version=1; COMMIT;")
        with sqlite3.connect(tmp_path / "source.db") as src:
            for row in src.execute(
                "SELECT id, status, action, correlation_id, owner, created_at, ended_at, doc "
                "FROM jobs"
            ):
                db.execute("INSERT INTO jobs VALUES (?, ?, ?, ?, ?, ?, ?, ?)", row)
            for table in ("steps", "commands", "locks"):
                for row in src.execute(f"SELECT id, job_id, doc FROM {table}"):
                    db.execute(f"INSERT INTO {table} VALUES (?, ?, ?)", row)
            for row in src.execute("SELECT id, job_id, host, status, vdsm_id, doc FROM tasks"):
                db.execute("INSERT INTO tasks VALUES (?, ?, ?, ?, ?, ?)", row)

    again = await open_registry(path)
    try:
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
            description, error, cancel = db.execute(
                "SELECT description, error, cancel FROM jobs WHERE id = ?", (job.id,)
            ).fetchone()
        assert (description, error) == ("Create a disk", "cancelled")
        assert json.loads(cancel)["outcome"] == "aborted"
        loaded = again.jobs[job.id]
        assert loaded.cancel is not None and loaded.cancel.mode is CancelMode.STOP
        assert loaded.updated_at == before["updated_at"]
        assert again.jobs[live.id].params == {"host": "h"}
        assert again.job_view(job.id) == before
    finally:
        await again.store.close()


async def test_after_a_restart_a_finished_job_shows_refuses_cancel_and_is_purged(
    tmp_path: Path,
) -> None:
    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            params = {"pool": s.pool, "domain": s.domains[0], "size": 4096}
            job = await s.wait_job(await s.submit("CreateDisk", params))
            assert job.status is JobStatus.FINISHED, job.error
            before = s.daemon.registry.job_view(job.id)
        async with running_stack(tmp_path, sim=sim) as s:
            reg = s.daemon.registry
            assert not dict.__contains__(reg.steps, job.id)
            assert reg.task_count(job.id) == 1
            with pytest.raises(CancelRefused) as refused:
                await s.daemon.cancels.cancel(job.id, requester=1000)
            assert (refused.value.status, refused.value.code) == (409, "job_ended")
            assert reg.job_view(job.id) == before
            assert await s.daemon.purge(now=time.time() + 10**7) == [job.id]
            assert await s.daemon.store.load("step") == []
            assert job.id not in reg.jobs and not dict.__contains__(reg.steps, job.id)
    finally:
        await sim.stop()


async def test_on_commit_hears_every_group_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")
    heard: list[tuple[float, int]] = []
    store.on_commit = lambda seconds, changes: heard.append((seconds, changes))
    await store.open()
    try:
        for i in range(3):
            store.put_nowait("host", f"h{i}", {"name": f"h{i}"})
        await store.flush()
        assert sum(n for _, n in heard) == 4  # three hosts and the barrier
        assert all(seconds >= 0 for seconds, _ in heard)
        assert len(heard) == store.stats.commits
    finally:
        await store.close()


async def test_a_failing_on_commit_hook_fails_no_commit(tmp_path: Path) -> None:
    store = Store(tmp_path / "s.db")

    def broken(seconds: float, changes: int) -> None:
        raise RuntimeError("metrics down")

    store.on_commit = broken
    await store.open()
    try:
        await store.write("host", "h1", {"name": "h1"})  # acknowledged despite the hook
        await store.write("host", "h2", {"name": "h2"})  # and the store is not failed
        assert [d["name"] for d in await store.load("host")] == ["h1", "h2"]
    finally:
        await store.close()


def test_model_documents_round_trip_a_cancel_record() -> None:
    record = CancelRecord(CancelMode.REVERT, 1, 2.0, "r", outcome="aborted", actions=[{"a": 1}])
    doc = model.to_doc(Job("j", "A", {}, 0, "c", cancel=record))["cancel"]
    assert model.cancel_from_doc(json.loads(json.dumps(doc))) == record

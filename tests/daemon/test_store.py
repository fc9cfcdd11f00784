"""The store's promises: what `write` acknowledged is on disk, group commit, migrations, purge."""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from daemon.store import MIGRATIONS, Store, StoreError


async def open_store(path: Path, **kw: object) -> Store:
    store = Store(path, **kw)  # type: ignore[arg-type]
    await store.open()
    return store


async def test_write_then_load_round_trip(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    await store.write(
        "job",
        "j1",
        {
            "id": "j1",
            "status": "STARTED",
            "action": "RefreshHost",
            "correlation_id": "c",
            "owner": 0,
            "created_at": 1.0,
        },
    )
    await store.write("step", "s1", {"id": "s1", "job_id": "j1", "type": "VALIDATING"})
    await store.close()
    store = await open_store(tmp_path / "s.db")
    assert [j["id"] for j in await store.load("job")] == ["j1"]
    assert (await store.load("step"))[0]["type"] == "VALIDATING"
    await store.close()


async def test_any_json_value_is_stored(tmp_path: Path) -> None:
    """Parameters come from users: an integer beyond 64 bits or a non-string key must not break
    the writer (the fast encoder refuses the first; the store falls back)."""
    store = await open_store(tmp_path / "s.db")
    doc = {"id": "s1", "job_id": "j1", "params": {"size": 2**70, "nested": [1.5, None, "é"]}}
    await store.write("step", "s1", doc)
    await store.write("step", "s2", {"id": "s2", "job_id": "j1", "data": {1: "one"}})
    await store.close()
    store = await open_store(tmp_path / "s.db")
    loaded = {d["id"]: d for d in await store.load("step")}
    assert loaded["s1"] == doc
    assert loaded["s2"]["data"] == {"1": "one"}  # as the standard library writes it
    await store.close()


async def test_many_writes_share_few_commits(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db", synchronous="NORMAL")
    futures = [
        store.put_nowait("step", f"s{i}", {"id": f"s{i}", "job_id": "j"}) for i in range(2000)
    ]
    await asyncio.gather(*futures)
    assert store.stats.ops == 2000
    assert store.stats.commits < 20  # group commit, not one transaction per change
    assert len(await store.load("step")) == 2000
    await store.close()


async def trickle(store: Store, changes: int) -> float:
    """A change every millisecond or so, nobody waiting: what running jobs produce. Returns
    how long it took (a loaded machine stretches it)."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    for i in range(changes):
        store.put_nowait("step", f"t{i}", {"id": f"t{i}", "job_id": "j"})
        await asyncio.sleep(0.001)
    took = loop.time() - started
    await store.flush()
    return took


async def test_a_busy_writer_gathers_a_trickle_of_changes_into_few_commits(
    tmp_path: Path,
) -> None:
    """With commits back to back, a trickle of changes makes a commit every few changes; with
    an interval, whatever arrives within it shares one commit."""
    eager = await open_store(tmp_path / "a.db", synchronous="NORMAL")
    await trickle(eager, 200)
    await eager.close()
    paced = await open_store(tmp_path / "b.db", synchronous="NORMAL", commit_interval=0.5)
    await paced.write("step", "first", {"id": "first", "job_id": "j"})
    took = await trickle(paced, 200)
    # the first change at once, then one commit per interval the trickle lasted (and the last)
    assert paced.stats.commits <= 2 + took / 0.5
    assert eager.stats.commits > 20
    assert len(await paced.load("step")) == 201
    await paced.close()


async def test_an_idle_writer_commits_at_once(tmp_path: Path) -> None:
    """The interval only applies after a commit: a lone acknowledgement does not wait for it."""
    store = await open_store(tmp_path / "s.db", synchronous="NORMAL", commit_interval=1.0)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await store.write("step", "s1", {"id": "s1", "job_id": "j"})
    assert loop.time() - started < 1.0
    await store.close()


async def test_an_urgent_change_cuts_the_interval_short(tmp_path: Path) -> None:
    """A change an API answer waits for (a job accepted, a cancel intent) is committed at once,
    with whatever the paced writer was gathering; the others wait for the interval."""
    store = await open_store(tmp_path / "s.db", synchronous="NORMAL", commit_interval=1.0)
    await store.write("step", "first", {"id": "first", "job_id": "j"})  # idle: at once
    background = store.put_nowait("step", "bg", {"id": "bg", "job_id": "j"})
    await asyncio.sleep(0.05)  # let the writer start waiting out its interval
    assert not background.done()
    urgent = store.put_nowait("step", "now", {"id": "now", "job_id": "j"}, urgent=True)
    await asyncio.wait_for(urgent, 0.9)
    assert background.done()  # it shared the urgent commit
    assert store.stats.commits == 2
    await store.close()


async def test_an_update_rewrites_what_changes_and_a_lock_follows_its_holder(
    tmp_path: Path,
) -> None:
    """Rows are updated in place (an upsert), not deleted and re-inserted: the columns a record
    may change follow its document, and a lock row passed from one job to another in one
    commit names the new holder."""
    store = await open_store(tmp_path / "s.db", synchronous="NORMAL")
    job = {"id": "j1", "status": "STARTED", "action": "RefreshHost", "correlation_id": "c"}
    job |= {"owner": 0, "created_at": 1.0, "description": "refresh"}
    await store.write("job", "j1", job)
    await store.write("task", "t1", {"id": "t1", "job_id": "j1", "host": "h", "status": "POLLING"})
    store.put_nowait("lock", "disk:1", {"id": "disk:1", "job_id": "j1"})
    store.put_nowait("lock", "disk:1", None)
    store.put_nowait("lock", "disk:1", {"id": "disk:1", "job_id": "j2"})
    store.put_nowait("job", "j1", job | {"status": "FINISHED", "ended_at": 2.0, "error": None})
    await store.write("task", "t1", {"id": "t1", "job_id": "j1", "host": "h", "status": "ENDED"})
    await store.close()
    db = sqlite3.connect(tmp_path / "s.db")
    assert db.execute("SELECT status, ended_at, error, description FROM jobs").fetchall() == [
        ("FINISHED", 2.0, "", "refresh")
    ]
    assert db.execute("SELECT job_id, status FROM tasks").fetchall() == [("j1", "ENDED")]
    assert db.execute("SELECT job_id FROM locks").fetchall() == [("j2",)]
    assert json.loads(db.execute("SELECT doc FROM tasks").fetchone()[0])["status"] == "ENDED"
    db.close()


def test_a_commit_interval_out_of_range_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="commit_interval must be"):
        Store(tmp_path / "s.db", commit_interval=5.0)


async def test_last_write_of_a_key_wins_and_delete_removes(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    store.put_nowait("task", "t", {"id": "t", "job_id": "j", "host": "h", "status": "SUBMITTING"})
    store.put_nowait("task", "t", {"id": "t", "job_id": "j", "host": "h", "status": "POLLING"})
    store.put_nowait("lock", "vm:1", {"id": "vm:1", "job_id": "j"})
    store.put_nowait("lock", "vm:1", None)
    await store.flush()
    assert [t["status"] for t in await store.load("task")] == ["POLLING"]
    assert await store.load("lock") == []
    await store.close()


async def test_purge_removes_a_job_and_its_rows(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    for job in ("keep", "drop"):
        store.put_nowait(
            "job",
            job,
            {
                "id": job,
                "status": "FINISHED",
                "action": "a",
                "correlation_id": job,
                "owner": 0,
                "created_at": 0.0,
            },
        )
        store.put_nowait("step", f"{job}-s", {"id": f"{job}-s", "job_id": job})
        store.put_nowait(
            "task", f"{job}-t", {"id": f"{job}-t", "job_id": job, "host": "h", "status": "CLEARED"}
        )
    await store.purge_jobs(["drop"])
    assert [j["id"] for j in await store.load("job")] == ["keep"]
    assert [s["id"] for s in await store.load("step")] == ["keep-s"]
    assert [t["id"] for t in await store.load("task")] == ["keep-t"]
    await store.close()


async def test_migrations_set_the_version_and_refuse_a_newer_schema(tmp_path: Path) -> None:
    store = await open_store(tmp_path / "s.db")
    await store.close()
    with sqlite3.connect(tmp_path / "s.db") as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        db.execute(f"PRAGMA user_version={len(MIGRATIONS) + 1}")
    with pytest.raises(StoreError, match="newer than this daemon knows"):
        await open_store(tmp_path / "s.db")


def test_bad_synchronous_setting_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous must be"):
        Store(tmp_path / "s.db", synchronous="sometimes")


def test_acknowledged_writes_survive_sigkill(tmp_path: Path) -> None:
    """A child process acknowledges writes one by one and is killed; every ack must be on disk."""
    db = tmp_path / "s.db"
    script = textwrap.dedent(f"""
        import asyncio, os, sys
        from daemon.store import Store
        async def main():
            store = Store({str(db)!r})
            await store.open()
            i = 0
            while True:
                await store.write("job", f"j{{i}}", {{"id": f"j{{i}}", "status": "STARTED",
                    "action": "a", "correlation_id": "c", "owner": 0, "created_at": 0.0}})
                print(i, flush=True)
                i += 1
        asyncio.run(main())
    """)
    child = subprocess.Popen(
        [sys.executable, "-c", script],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(Path.cwd())},
    )
    assert child.stdout is not None
    acked = -1
    for line in child.stdout:
        acked = int(line)
        if acked >= 200:
            break
    child.kill()
    child.wait()
    with sqlite3.connect(db) as conn:
        stored = {row[0] for row in conn.execute("SELECT id FROM jobs")}
    assert {f"j{i}" for i in range(acked + 1)} <= stored


async def test_a_failed_group_commit_writes_none_of_its_changes(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    await store.open()
    step = store.put_nowait("step", "s1", {"id": "s1", "job_id": "j1"})
    bad_job = store.put_nowait("job", "j1", {"id": "j1"})  # NOT NULL columns missing
    for waiting in (step, bad_job):
        with pytest.raises(StoreError, match="commit failed"):
            await waiting
    with pytest.raises(StoreError, match="store is failed"):
        store.put_nowait("step", "s2", {"id": "s2", "job_id": "j1"})
    await store.close()
    store = Store(tmp_path / "t.db")
    await store.open()
    assert await store.load("step") == []  # rolled back with the job that failed
    await store.close()


async def test_columns_hold_plain_values_and_missing_ones_are_null(tmp_path: Path) -> None:
    from daemon import model

    store = Store(tmp_path / "t.db")
    await store.open()
    job = model.Job("j1", "CreateDisk", {}, 7, "c1", "d")
    job.cancel = model.CancelRecord(model.CancelMode.STOP, 7, 1.0)
    store.put_nowait("job", "j1", model.to_doc(job))
    store.put_nowait("task", "t1", {"id": "t1", "job_id": "j1", "host": "h", "status": "POLLING"})
    await store.flush()
    db = sqlite3.connect(tmp_path / "t.db")
    status, cancel, owner = db.execute("SELECT status, cancel, owner FROM jobs").fetchone()
    assert (type(status), status, owner) == (str, "STARTED", 7)
    assert json.loads(cancel)["mode"] == "stop"
    assert db.execute("SELECT vdsm_id, status FROM tasks").fetchone() == (None, "POLLING")
    db.close()
    await store.close()


async def test_every_status_is_stored_as_its_text(tmp_path: Path) -> None:
    """Statuses are StrEnum members, bound as they are (sqlite3 takes a str subclass as text):
    no conversion per column on the writer's path, and no member reaches the disk as anything
    but its value."""
    from daemon import model

    store = Store(tmp_path / "t.db")
    await store.open()
    for status in model.JobStatus:
        job = model.Job(f"j-{status.value}", "CreateDisk", {}, 7, "c1", "d", status=status)
        store.put_nowait("job", job.id, model.to_doc(job))
    for status in model.TaskStatus:
        task = model.Task(f"t-{status.value}", "j1", "c", "h", "p", "v", status=status)
        store.put_nowait("task", task.id, model.to_doc(task))
    await store.flush()
    await store.close()
    db = sqlite3.connect(tmp_path / "t.db")
    jobs = dict(db.execute("SELECT id, status || '/' || typeof(status) FROM jobs").fetchall())
    tasks = dict(db.execute("SELECT id, status || '/' || typeof(status) FROM tasks").fetchall())
    db.close()
    assert jobs == {f"j-{s.value}": f"{s.value}/text" for s in model.JobStatus}
    assert tasks == {f"t-{s.value}": f"{s.value}/text" for s in model.TaskStatus}


def test_a_row_of_a_one_column_table_without_its_column_holds_null() -> None:
    from daemon.store import _rows

    assert _rows([("s1", {"id": "s1"})], ("job_id",)) == [("s1", None, '{"id":"s1"}')]
    assert _rows([("s1", {"job_id": "j"})], ("job_id",)) == [("s1", "j", '{"job_id":"j"}')]

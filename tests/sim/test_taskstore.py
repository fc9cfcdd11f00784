"""Task persistence in VDSM's on-disk format, including crash safety of a save."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from vdsm_simulator.errors import TaskDirError, TaskMetaDataLoadError, TaskPersistError
from vdsm_simulator.taskstore import JobRecord, Recovery, TaskSnapshot, TaskStore

TID = "6a0d2e54-1b4c-4a45-8e9f-2f1f3c7d9b10"


class Crash(Exception):
    pass


@pytest.fixture
def store(tmp_path: Path) -> TaskStore:
    return TaskStore(tmp_path / "tasks")


def snap(state: str = "running", **kw: object) -> TaskSnapshot:
    s = TaskSnapshot(
        id=TID,
        name="createVolume",
        tag="spm",
        state=state,
        store="/rhev/data-center/P/mastersd/master/tasks",
        jobs=(JobRecord("createVolume", "<job> (args: () kwargs: {})"),),
        recoveries=(
            Recovery("createVolume rollback", "createVolumeRollback", ("sd", "img=1", "a b")),
            Recovery("second", "undo", ()),
        ),
    )
    for k, v in kw.items():
        setattr(s, k, v)
    return s


def saved(store: TaskStore, s: TaskSnapshot) -> TaskSnapshot:
    store.create(s.id)
    store.save(s)
    return s


def test_file_format(store: TaskStore) -> None:
    saved(store, snap("finished", code=0, message="1 jobs completed successfully", result="V"))
    d = store.directory / TID
    assert sorted(p.name for p in d.iterdir()) == [
        f"{TID}.job.0",
        f"{TID}.recover.0",
        f"{TID}.recover.1",
        f"{TID}.result",
        f"{TID}.task",
    ]
    assert (d / f"{TID}.task").read_text() == (
        f"id = {TID}\n"
        "name = createVolume\n"
        "tag = spm\n"
        "store = /rhev/data-center/P/mastersd/master/tasks\n"
        "recoveryPolicy = auto\n"
        "persistPolicy = auto\n"
        "cleanPolicy = manual\n"
        "priority = low\n"
        "state = finished\n"
        "njobs = 1\n"
        "nrecoveries = 2\n"
        "metadataVersion = 1\n"
    )
    assert (d / f"{TID}.recover.0").read_text() == (
        "name = createVolume rollback\n"
        "moduleName = simulator\n"
        "object = RecoveryActions\n"
        "function = createVolumeRollback\n"
        "params = sd,img_eq_1,a b\n"  # '=' is stored as _eq_, as VDSM does
    )
    assert (d / f"{TID}.result").read_text() == (
        "code = 0\nmessage = 1 jobs completed successfully\nresult = V\n"
    )
    assert (d / f"{TID}.job.0").read_text() == (
        "name = createVolume\nruncmd = <job> (args: () kwargs: {})\n"
    )


def test_round_trip(store: TaskStore) -> None:
    s = saved(store, snap("finished", code=0, message="1 jobs completed successfully", result="R"))
    assert store.load(TID) == s
    assert store.load(TID).recoveries[0].args == ("sd", "img=1", "a b")
    assert store.load(TID).recoveries[1].args == ()


def test_result_only_when_finished(store: TaskStore) -> None:
    saved(store, snap("recovered", code=201, message="value=x abortedcode=201"))
    assert not (store.directory / TID / f"{TID}.result").exists()
    loaded = store.load(TID)
    assert (loaded.code, loaded.message) == (0, "Task is initializing")


def test_save_needs_task_dir(store: TaskStore) -> None:
    with pytest.raises(TaskDirError) as e:
        store.save(snap())
    assert e.value.code == 409


def test_delete(store: TaskStore) -> None:
    saved(store, snap())
    store.delete(TID)
    assert store.task_ids() == []
    with pytest.raises(TaskDirError):
        store.load(TID)


@pytest.mark.parametrize(
    ("crash_at", "expected_state"),
    [("written", "queued"), ("backed-up", "running"), ("swapped", "running")],
)
def test_crash_during_save_leaves_old_or_new(
    store: TaskStore, crash_at: str, expected_state: str
) -> None:
    saved(store, snap("queued"))

    def crash(step: str) -> None:
        if step == crash_at:
            raise Crash(step)

    store.crash_hook = crash
    with pytest.raises(Crash):
        store.save(snap("running"))
    store.crash_hook = None
    assert store.task_ids() == [TID]  # .temp / .backup leftovers count as the same task
    assert store.load(TID).state == expected_state
    assert [s.state for s in store.load_all()] == [expected_state]
    # the next save cleans up whatever the crash left behind
    store.create(TID)
    store.save(snap("finished"))
    assert sorted(os.listdir(store.directory)) == [TID]
    assert store.load(TID).state == "finished"


def test_failed_write_keeps_old_version(store: TaskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    saved(store, snap("queued"))
    calls = {"n": 0}
    real_write = TaskStore._write

    def flaky(self: TaskStore, path: Path, fields: list[tuple[str, object]]) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full")
        real_write(self, path, fields)

    monkeypatch.setattr(TaskStore, "_write", flaky)
    with pytest.raises(TaskPersistError) as e:
        store.save(snap("running"))
    assert e.value.code == 413
    assert sorted(os.listdir(store.directory)) == [TID]  # no temp left
    assert store.load(TID).state == "queued"


def test_load_all_skips_broken(store: TaskStore) -> None:
    saved(store, snap())
    (store.directory / "garbage").mkdir()
    other = "0b0e3b0c-0000-4000-8000-000000000001"
    (store.directory / other).mkdir()
    (store.directory / other / f"{other}.task").write_text(f"id = {TID}\n")  # id mismatch
    assert store.task_ids() == [other, TID, "garbage"]
    assert [s.id for s in store.load_all()] == [TID]
    with pytest.raises(TaskMetaDataLoadError) as e:
        store.load(other)
    assert e.value.code == 408


def test_tolerant_parsing(store: TaskStore) -> None:
    saved(store, snap())
    task_file = store.directory / TID / f"{TID}.task"
    task_file.write_text(task_file.read_text() + "no separator here\nbogusField = 1\na = b = c\n")
    assert store.load(TID).state == "running"


def test_bad_policy_is_load_error(store: TaskStore) -> None:
    saved(store, snap(recovery_policy="sometimes"))
    with pytest.raises(TaskMetaDataLoadError):
        store.load(TID)


def test_missing_store_dir_lists_nothing(tmp_path: Path) -> None:
    assert TaskStore(tmp_path / "absent").load_all() == []


@pytest.mark.parametrize(
    "bad",
    [
        dict(name="", action="a"),
        dict(name="x_eq_y", action="a"),
        dict(name="n", action="no-dash"),
        dict(name="n", action="a", args=("a,b",)),
        dict(name="n", action="a", args=(" padded",)),
        dict(name="n", action="a", args=("multi\nline",)),
        dict(name="n", action="a", args=("has_eq_marker",)),
    ],
)
def test_recovery_must_be_persistable(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        Recovery(**bad)  # type: ignore[arg-type]

"""The storage task engine against the rules of VDSM's task.py / taskManager.py (spec §3, §4)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.sim.conftest import wait_until
from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    AddTaskError,
    CodedError,
    InvalidParameterException,
    TaskAborted,
    TaskHasRefs,
    TaskNotFinished,
    TaskStateError,
    TaskStateTransitionError,
    UnknownTask,
    VdsmError,
    VolumeDoesNotExist,
    VolumeImageHasChildren,
)
from vdsm_simulator.tasks import (
    LEGACY_RESULT,
    LEGACY_STATE,
    JobContext,
    Recovery,
    State,
    TaskManager,
    TaskStore,
    check_move,
)
from vdsm_simulator.taskstate import St
from vdsm_simulator.taskstore import TaskSnapshot

S = State
DEADLINE = 5.0


class Job:
    """A job the test drives: runs until released (or, if abortable, as simulated work)."""

    def __init__(
        self,
        *,
        result: Any = "",
        fail: Exception | None = None,
        abortable: bool = False,
        recoveries: Iterable[Recovery] = (),
        work: float | None = None,
    ) -> None:
        self.result, self.fail, self.abortable = result, fail, abortable
        self.recoveries = list(recoveries)
        self.work = work
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.ran_to_end = False
        self.ctx: JobContext | None = None

    async def __call__(self, ctx: JobContext) -> Any:
        self.ctx = ctx
        for r in self.recoveries:
            ctx.push_recovery(r)
        self.started.set()
        if self.work is not None:
            await ctx.work(self.work)
        elif self.abortable:
            await ctx.work(1e6, abortable=True)
        else:
            await self.release.wait()
        self.ran_to_end = True
        if self.fail is not None:
            raise self.fail
        return self.result


class Undo:
    """Recovery actions that record their calls; `fail` names actions that raise."""

    def __init__(self, fail: Iterable[str] = ()) -> None:
        self.calls: list[tuple[str, tuple[str, ...]]] = []
        self.fail = set(fail)

    def actions(self) -> dict[str, Callable[..., None]]:
        def make(name: str) -> Callable[..., None]:
            def action(*args: str) -> None:
                self.calls.append((name, args))
                if name in self.fail:
                    raise OSError(f"{name} failed")

            return action

        return {n: make(n) for n in ("undo1", "undo2", "undo3", "bad")}


@pytest.fixture
def undo() -> Undo:
    return Undo(fail={"bad"})


@pytest.fixture
async def make_tm(undo: Undo) -> AsyncIterator[Callable[..., TaskManager]]:
    made: list[TaskManager] = []

    def make(**kw: Any) -> TaskManager:
        kw.setdefault("recovery_actions", undo.actions())
        tm = TaskManager(SimClock(0.001), **kw)
        made.append(tm)
        return tm

    yield make
    for tm in made:
        await tm.close()


@pytest.fixture
def tm(make_tm: Callable[..., TaskManager], tmp_path: Path) -> TaskManager:
    return make_tm(store=TaskStore(tmp_path / "tasks"))


async def done(tm: TaskManager, tid: str) -> dict[str, Any]:
    await asyncio.wait_for(tm.wait_done(tid), DEADLINE)
    return tm.get_status(tid)


async def started(job: Job) -> None:
    await asyncio.wait_for(job.started.wait(), DEADLINE)


def state(tm: TaskManager, tid: str) -> str:
    return str(tm.all_tasks()[tid]["state"])


def recs(*names: str) -> list[Recovery]:
    return [Recovery(f"{n} rollback", n, (n, "x=1")) for n in names]


# -- state table ---------------------------------------------------------------------------------

ALLOWED = {
    S.preparing: {S.init, S.blocked},
    S.blocked: {S.preparing},
    S.acquiring: {S.preparing, S.acquiring},
    S.queued: {S.acquiring, S.running},
    S.running: {S.queued},
    S.finished: {S.running, S.preparing},
    S.aborting: {S.preparing, S.blocked, S.acquiring, S.queued, S.running},
    S.waitrecover: {S.aborting},
    S.racquiring: {S.aborting, S.finished, S.racquiring, S.waitrecover},
    S.recovering: {S.racquiring},
    S.raborting: {S.racquiring, S.recovering, S.waitrecover},
    S.recovered: {S.recovering},
    S.failed: {S.recovering, S.aborting, S.raborting},
}


def test_fifteen_states() -> None:
    assert len(State) == 15


def test_plain_state_names_are_the_members() -> None:
    plain = {k: v for k, v in vars(St).items() if not k.startswith("_")}
    assert plain == State.__members__
    assert all(plain[name] is member for name, member in State.__members__.items())


@pytest.mark.parametrize("target", list(State))
@pytest.mark.parametrize("current", list(State))
def test_transition_table(current: State, target: State) -> None:
    if current in ALLOWED.get(target, set()):
        check_move(current, target)
    else:
        with pytest.raises(TaskStateTransitionError) as e:
            check_move(current, target)
        assert e.value.code == 441
        assert e.value.message == (
            f"cannot move task to requested state: ('from {current} to {target}',)"
        )


def test_legacy_mapping() -> None:
    expected = {
        "unknown": ("unknown", ""),
        "init": ("init", ""),
        "preparing": ("running", ""),
        "blocked": ("running", ""),
        "acquiring": ("running", ""),
        "queued": ("running", ""),
        "running": ("running", ""),
        "finished": ("finished", "success"),
        "aborting": ("aborting", ""),
        "waitrecover": ("cleaning", ""),
        "racquiring": ("cleaning", ""),
        "recovering": ("cleaning", ""),
        "raborting": ("aborting", ""),
        "recovered": ("finished", "cleanSuccess"),
        "failed": ("finished", "cleanFailure"),
    }
    assert {str(s): (LEGACY_STATE[s], LEGACY_RESULT[s]) for s in State} == expected


# -- life of a task ------------------------------------------------------------------------------


async def test_success_flow(tm: TaskManager) -> None:
    job = Job(result="new-uuid")
    tid = await tm.schedule("createVolume", job)
    assert state(tm, tid) == "queued"
    assert tm.get_status(tid) == {
        "taskID": tid,
        "taskState": "running",
        "taskResult": "",
        "code": 0,
        "message": "Task is initializing",
    }
    await started(job)
    assert state(tm, tid) == "running"
    assert tm.get_status(tid)["message"] == "running job 1 of 1"
    job.release.set()
    assert await done(tm, tid) == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "success",
        "code": 0,
        "message": "1 jobs completed successfully",
    }
    assert tm.get_info(tid) == {"id": tid, "verb": "createVolume"}
    assert tm.all_tasks()[tid] == {
        "id": tid,
        "verb": "createVolume",
        "state": "finished",
        "code": 0,
        "message": "1 jobs completed successfully",
        "result": "new-uuid",
        "tag": "spm",
    }
    assert tid in tm.all_statuses()  # done tasks stay until cleared


async def test_tags(tm: TaskManager) -> None:
    spm = await tm.schedule("deleteImage", Job(work=0))
    hsm = await tm.schedule("spmStart", Job(work=0), tag="hsm", persist=False)
    sdm = await tm.schedule("sdm_copy_data", Job(work=0), tag="sdm", persist=False)
    assert set(tm.all_statuses()) == {spm}
    assert set(tm.all_info()) == {spm}
    assert tm.all_info() == {spm: {"id": spm, "verb": "deleteImage"}}
    assert set(tm.all_tasks()) == {spm, hsm, sdm}
    assert tm.get_status(hsm)["taskID"] == hsm  # getStatus works for any tag
    assert {t["tag"] for t in tm.all_tasks().values()} == {"spm", "hsm", "sdm"}


async def test_storage_failure_rolls_back_lifo(tm: TaskManager, undo: Undo) -> None:
    job = Job(fail=VolumeDoesNotExist("V"), recoveries=recs("undo1", "undo2", "undo3"), work=0)
    tid = await tm.schedule("deleteVolume", job)
    assert await done(tm, tid) == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "cleanSuccess",
        "code": 201,
        "message": "value=Volume does not exist: ('V',) abortedcode=201",
    }
    assert state(tm, tid) == "recovered"
    assert [c[0] for c in undo.calls] == ["undo3", "undo2", "undo1"]
    assert undo.calls[0] == ("undo3", ("undo3", "x=1"))


@pytest.mark.parametrize(
    ("error", "code", "text"),
    [
        (RuntimeError("boom"), 100, "boom"),
        (VolumeImageHasChildren("vol"), 100, "Cannot delete volume which has children"),
        (CodedError(358, "Storage domain does not exist: ('D',)"), 358, "Storage domain"),
    ],
)
async def test_failure_codes(tm: TaskManager, error: Exception, code: int, text: str) -> None:
    tid = await tm.schedule("createVolume", Job(fail=error, work=0))
    status = await done(tm, tid)
    assert status["code"] == code
    assert status["message"] == f"value={error} abortedcode={code}"
    assert text in status["message"]
    assert status["taskResult"] == "cleanSuccess"


async def test_failing_recovery_step_is_clean_failure(tm: TaskManager, undo: Undo) -> None:
    job = Job(fail=VolumeDoesNotExist("V"), recoveries=recs("undo1", "bad", "undo3"), work=0)
    tid = await tm.schedule("createVolume", job)
    status = await done(tm, tid)
    assert state(tm, tid) == "failed"
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanFailure")
    assert status["code"] == 201  # the job's failure stays the reported result
    assert [c[0] for c in undo.calls] == ["undo3", "bad"]  # steps below the failure never run


async def test_duplicate_recovery_name_fails_job(tm: TaskManager) -> None:
    job = Job(recoveries=[Recovery("same", "undo1"), Recovery("same", "undo2")], work=0)
    tid = await tm.schedule("createVolume", job)
    status = await done(tm, tid)
    assert status["code"] == 100
    assert status["message"] == ("value=pushRecovery: name 'same' must be unique abortedcode=100")


# -- stop ----------------------------------------------------------------------------------------


async def test_stop_non_abortable_waits_for_job(tm: TaskManager, undo: Undo) -> None:
    job = Job(recoveries=recs("undo1"))
    tid = await tm.schedule("deleteImage", job)
    await started(job)
    tm.stop(tid)
    # the flag is set, the job carries on: still reported running
    assert state(tm, tid) == "running"
    assert tm.get_status(tid)["taskState"] == "running"
    assert job.ctx is not None and job.ctx.aborting
    with pytest.raises(TaskAborted) as e:
        tm.stop(tid)
    assert e.value.code == 411
    assert e.value.message == f"Task is aborted: 'value={tid} abortedcode=411'"
    assert undo.calls == []
    job.release.set()
    status = await done(tm, tid)
    assert job.ran_to_end
    assert status == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "cleanSuccess",
        "code": 411,
        "message": "value=shutting down abortedcode=411",
    }
    assert [c[0] for c in undo.calls] == ["undo1"]


async def test_stop_abortable_interrupts_job(tm: TaskManager, undo: Undo) -> None:
    job = Job(abortable=True, recoveries=recs("undo1", "undo2"))
    tid = await tm.schedule("copyImage", job)
    await started(job)
    tm.stop(tid)
    status = await done(tm, tid)
    assert not job.ran_to_end
    assert status["code"] == 411
    assert status["message"] == f"value={tid} abortedcode=411"
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanSuccess")
    assert [c[0] for c in undo.calls] == ["undo2", "undo1"]


async def test_stopped_work_logs_no_traceback(
    tm: TaskManager, caplog: pytest.LogCaptureFixture
) -> None:
    """A stop's ActionStopped is expected: no warning (a traceback per task was the costliest
    part of a cancel burst); a job's real failure still gets its traceback."""
    caplog.set_level(logging.DEBUG, logger="vdsm_simulator.task")
    job = Job(abortable=True)
    tid = await tm.schedule("createVolume", job)
    await started(job)
    tm.stop(tid)
    assert (await done(tm, tid))["code"] == 411
    assert [r.message for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert f"task {tid}: job stopped" in caplog.messages
    caplog.clear()
    tid = await tm.schedule("createVolume", Job(fail=RuntimeError("boom"), work=0))
    await done(tm, tid)
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert [r.message for r in warned] == [f"task {tid}: unexpected error"]
    assert warned[0].exc_info is not None


async def test_abortable_work_runs_to_its_end_unless_stopped(make_tm: Callable[..., Any]) -> None:
    tm = make_tm()
    ended: list[float] = []

    async def job(ctx: JobContext) -> str:
        start = asyncio.get_running_loop().time()
        await ctx.work(50, abortable=True)  # 50 ms at the fixture's scale
        ended.append(asyncio.get_running_loop().time() - start)
        await ctx.work(0, abortable=True)  # nothing to interrupt
        return "ok"

    tid = await tm.schedule("copyImage", job)
    status = await done(tm, tid)
    assert (status["taskResult"], status["code"]) == ("success", 0)
    assert ended and 0.045 <= ended[0] < 1.0
    assert tm.get(tid)._abort_callbacks == set()


async def test_killed_abortable_work_leaves_no_callback(make_tm: Callable[..., Any]) -> None:
    tm = make_tm()
    job = Job(abortable=True)
    tid = await tm.schedule("copyImage", job)
    await started(job)
    task = tm.get(tid)
    assert len(task._abort_callbacks) == 1
    await tm.close()  # the process dies: the job is cancelled where it is
    assert task._abort_callbacks == set()
    assert state(tm, tid) == "running"


async def test_abortable_work_after_stop_stops_at_once(tm: TaskManager) -> None:
    reached: list[str] = []

    async def job(ctx: JobContext) -> str:
        await ctx.work(5)  # not abortable: runs to its end
        reached.append("copy")
        await ctx.work(1e6, abortable=True)  # registers while aborting: stops at once
        reached.append("end")
        return ""

    tid = await tm.schedule("copyImage", job)
    await wait_until(lambda: state(tm, tid) == "running")
    tm.stop(tid)
    status = await done(tm, tid)
    assert reached == ["copy"]
    assert status["message"] == f"value={tid} abortedcode=411"


async def test_stop_done_is_noop(tm: TaskManager) -> None:
    tid = await tm.schedule("createVolume", Job(work=0))
    before = await done(tm, tid)
    tm.stop(tid)
    assert tm.get_status(tid) == before
    assert state(tm, tid) == "finished"


async def test_unknown_and_invalid_ids(tm: TaskManager) -> None:
    for call in (tm.get_status, tm.get_info, tm.stop, tm.revert, tm.clear):
        with pytest.raises(UnknownTask) as e:
            call("nope")
        assert e.value.info() == {"code": 401, "message": "Task id unknown: ('nope',)"}
        with pytest.raises(InvalidParameterException) as e2:
            call("a.b")
        assert e2.value.info() == {"code": 1000, "message": "Invalid parameter: 'taskID=a.b'"}
        with pytest.raises(InvalidParameterException):
            call("")


async def test_queued_task_stop_rolls_back_at_once(
    make_tm: Callable[..., TaskManager], undo: Undo
) -> None:
    """VDSM holds no reference on a queued task, so stop aborts it in the caller; when the
    worker reaches it, the move to running fails (441) and the job never runs."""
    tm = make_tm(workers=1)
    blocker = Job()
    tid0 = await tm.schedule("createVolume", blocker)
    await started(blocker)
    queued = Job()
    tid = await tm.schedule("createVolume", queued)
    assert state(tm, tid) == "queued"
    tm.stop(tid)
    assert state(tm, tid) == "recovered"
    assert tm.get_status(tid) == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "cleanSuccess",
        "code": 0,
        "message": "Task is initializing",
    }
    blocker.release.set()
    await done(tm, tid0)
    await wait_until(lambda: tm.busy_workers == 0 and tm.queued == 0)
    assert not queued.started.is_set()
    assert state(tm, tid) == "recovered"


async def test_stop_pending_until_last_ref(tm: TaskManager, make_tm: Callable[..., Any]) -> None:
    tm = make_tm(workers=1)
    blocker = Job()
    await tm.schedule("createVolume", blocker)
    await started(blocker)
    tid = await tm.schedule("createVolume", Job())
    release = tm.hold_ref(tid)
    tm.stop(tid)
    assert state(tm, tid) == "queued"  # someone else holds it: the abort waits
    assert tm.raw_table()[1]["aborting"] is True
    release()
    assert state(tm, tid) == "recovered"


# -- pool bounds ---------------------------------------------------------------------------------


async def test_worker_pool_bound(make_tm: Callable[..., TaskManager]) -> None:
    tm = make_tm()
    jobs = [Job() for _ in range(11)]
    tids = [await tm.schedule("createVolume", j, persist=False) for j in jobs]
    await asyncio.gather(*(started(j) for j in jobs[:10]))
    await wait_until(lambda: tm.busy_workers == 10)
    assert [state(tm, t) for t in tids].count("running") == 10
    assert state(tm, tids[10]) == "queued" and not jobs[10].started.is_set()
    jobs[0].release.set()
    await started(jobs[10])
    assert state(tm, tids[10]) == "running"


async def test_queue_bound_blocks_schedule(make_tm: Callable[..., TaskManager]) -> None:
    tm = make_tm()  # VDSM defaults: 10 workers, 500 queued
    jobs = [Job() for _ in range(510)]
    for j in jobs:
        await tm.schedule("createVolume", j, persist=False)
    await wait_until(lambda: tm.busy_workers == 10)
    assert tm.queued == 500
    before = set(tm.ids())
    pending = asyncio.ensure_future(tm.schedule("createVolume", Job(), persist=False))
    await wait_until(lambda: len(tm) == 511)  # listed (queued) while the enqueue waits
    (new_id,) = set(tm.ids()) - before
    assert state(tm, new_id) == "queued"
    assert not pending.done()
    jobs[0].release.set()
    assert await asyncio.wait_for(pending, DEADLINE) == new_id
    assert tm.queued == 500


async def test_stop_while_enqueue_waits(make_tm: Callable[..., TaskManager]) -> None:
    """prepare holds its reference while blocked on the full queue: the stop waits for it,
    then prepare fails with VDSM's default error and the task rolls back."""
    tm = make_tm(workers=1, queue_size=1)
    first, second = Job(), Job()
    await tm.schedule("createVolume", first)
    await started(first)
    await tm.schedule("createVolume", second)
    before = set(tm.ids())
    pending = asyncio.ensure_future(tm.schedule("createVolume", Job()))
    await wait_until(lambda: len(tm) == 3)
    (tid,) = set(tm.ids()) - before
    tm.stop(tid)
    assert state(tm, tid) == "queued"
    first.release.set()
    with pytest.raises(TaskAborted) as e:
        await asyncio.wait_for(pending, DEADLINE)
    assert e.value.message == "Task is aborted: 'value=Unknown error encountered abortedcode=411'"
    assert state(tm, tid) == "recovered"


async def test_closed_manager_refuses(make_tm: Callable[..., TaskManager]) -> None:
    tm = make_tm()
    await tm.close()
    with pytest.raises(AddTaskError) as e:
        await tm.schedule("createVolume", Job())
    assert e.value.info() == {
        "code": 405,
        "message": "TaskManager error, unable to add task: ()",
    }
    assert len(tm) == 0


async def test_idle_managers_cost_nothing(make_tm: Callable[..., TaskManager]) -> None:
    managers = [make_tm(recovery_actions=None) for _ in range(1000)]
    assert all(m._queue is None and not m._workers for m in managers)
    tids = [await m.schedule("createVolume", Job(work=0), persist=False) for m in managers]
    for m, tid in zip(managers, tids, strict=True):
        await asyncio.wait_for(m.wait_done(tid), DEADLINE)
    await wait_until(lambda: all(not m._workers for m in managers))  # workers exit when idle


async def test_many_tasks_listing_is_cached(make_tm: Callable[..., TaskManager]) -> None:
    tm = make_tm()
    tids = [await tm.schedule("createVolume", Job(work=0), persist=False) for _ in range(20000)]
    await wait_until(lambda: tm.busy_workers == 0 and tm.queued == 0, timeout=60)
    first = tm.all_statuses(tag="")
    assert len(first) == 20000
    assert tm.all_statuses(tag="") is first  # no change: same snapshot
    tm.clear(tids[0])
    second = tm.all_statuses(tag="")
    assert second is not first and len(second) == 19999 and len(first) == 20000


# -- revert --------------------------------------------------------------------------------------


async def test_revert_rules(tm: TaskManager, undo: Undo) -> None:
    job = Job(recoveries=recs("undo1", "undo2"))
    tid = await tm.schedule("createVolume", job)
    await started(job)
    with pytest.raises(TaskNotFinished) as e:
        tm.revert(tid)
    assert e.value.info() == {
        "code": 403,
        "message": 'Task not finished: ("can\'t rollback in state running",)',
    }
    job.release.set()
    await done(tm, tid)
    release = tm.hold_ref(tid)
    with pytest.raises(TaskHasRefs) as e2:
        tm.revert(tid)
    assert e2.value.code == 442
    release()
    tm.revert(tid)  # synchronous
    assert state(tm, tid) == "recovered"
    assert [c[0] for c in undo.calls] == ["undo2", "undo1"]
    assert tm.get_status(tid) == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "cleanSuccess",
        "code": 0,
        "message": "1 jobs completed successfully",
    }
    with pytest.raises(TaskStateTransitionError) as e3:
        tm.revert(tid)
    assert e3.value.message == (
        "cannot move task to requested state: ('from recovered to racquiring',)"
    )


async def test_revert_with_failing_step_ends_failed(tm: TaskManager, undo: Undo) -> None:
    tid = await tm.schedule("createVolume", Job(recoveries=recs("undo1", "bad"), work=0))
    await done(tm, tid)
    tm.revert(tid)  # VDSM returns OK even though the rollback failed
    assert state(tm, tid) == "failed"
    assert tm.get_status(tid)["taskResult"] == "cleanFailure"
    with pytest.raises(TaskStateTransitionError):
        tm.revert(tid)


# -- clear ---------------------------------------------------------------------------------------


async def test_clear_rules(tm: TaskManager, tmp_path: Path) -> None:
    job = Job()
    tid = await tm.schedule("createVolume", job)
    await started(job)
    assert (tmp_path / "tasks" / tid).is_dir()
    with pytest.raises(TaskStateError) as e:
        tm.clear(tid)
    assert e.value.info() == {
        "code": 410,
        "message": "Operation is not allowed in this task state: "
        '("can\'t clean in state running",)',
    }
    job.release.set()
    await done(tm, tid)
    tm.clear(tid)
    assert tid not in tm.all_tasks()
    assert not (tmp_path / "tasks" / tid).exists()
    with pytest.raises(UnknownTask):
        tm.clear(tid)


async def test_clear_unpersisted_in_any_state(tm: TaskManager) -> None:
    job = Job()
    tid = await tm.schedule("spmStart", job, tag="hsm", persist=False)
    await started(job)
    tm.clear(tid)
    assert tid not in tm
    job.release.set()


async def test_stop_during_recovery(make_tm: Callable[..., TaskManager]) -> None:
    """A stop while recovering is ignored for clean policy auto (unpersisted tasks) and
    flags the task otherwise; either way a successful rollback ends recovered."""
    seen: dict[str, bool] = {}
    tm = make_tm()

    def stop_self(key: str) -> None:
        tid = next(t for t in tm.ids("") if state(tm, t) == "recovering")
        tm.stop(tid)
        seen[key] = tm.raw_table()[tm.ids("").index(tid)]["aborting"]

    tm.recovery_actions["stopper"] = stop_self
    for persist, key in ((False, "auto"), (True, "manual")):
        job = Job(fail=VolumeDoesNotExist("V"), recoveries=[Recovery("s", "stopper", (key,))])
        job.work = 0
        tid = await tm.schedule("createVolume", job, persist=persist)
        await done(tm, tid)
        assert state(tm, tid) == "recovered"
    assert seen == {"auto": False, "manual": True}


# -- persistence and restart ---------------------------------------------------------------------


async def test_states_persisted(tm: TaskManager, tmp_path: Path) -> None:
    store = TaskStore(tmp_path / "tasks")
    job = Job(recoveries=recs("undo1"))
    tid = await tm.schedule("createVolume", job)
    assert store.load(tid).state == "queued"
    await started(job)
    snap = store.load(tid)
    assert (snap.state, snap.recoveries) == ("running", tuple(recs("undo1")))
    job.release.set()
    await done(tm, tid)
    snap = store.load(tid)
    assert (snap.state, snap.code, snap.message) == (
        "finished",
        0,
        "1 jobs completed successfully",
    )
    assert (tmp_path / "tasks" / tid / f"{tid}.result").exists()


async def test_unpersisted_tasks_write_nothing(tm: TaskManager, tmp_path: Path) -> None:
    tid = await tm.schedule("spmStart", Job(work=0), tag="hsm", persist=False)
    await done(tm, tid)
    assert not (tmp_path / "tasks" / tid).exists()


def dump(store: TaskStore, state: str, **kw: Any) -> str:
    import uuid

    tid = str(uuid.uuid4())
    store.create(tid)
    store.save(TaskSnapshot(id=tid, name="createVolume", tag="spm", state=state, **kw))
    return tid


async def test_load_persisted_by_state(
    make_tm: Callable[..., TaskManager], undo: Undo, tmp_path: Path
) -> None:
    store = TaskStore(tmp_path / "tasks")
    two = (Recovery("a", "undo1", ("1",)), Recovery("b", "undo2", ("2",)))
    ids = {s: dump(store, s, recoveries=two) for s in [str(x) for x in State] if s != "init"}
    fin = dump(store, "finished", code=0, message="1 jobs completed successfully", result="R")
    manual = dump(store, "queued", recovery_policy="manual")
    tm = make_tm()
    loaded = await tm.load_persisted(store)
    assert set(loaded) == set(ids.values()) | {fin, manual}
    await wait_until(lambda: tm.busy_workers == 0 and tm.queued == 0)

    expected = {
        "unknown": "unknown",  # cannot even fail (441), stays
        "preparing": "recovered",
        "blocked": "recovered",
        "acquiring": "recovered",
        "queued": "recovered",
        "running": "recovered",
        "finished": "finished",
        "aborting": "failed",  # force-stopped: no rollback
        "waitrecover": "waitrecover",
        "racquiring": "recovered",
        "recovering": "recovered",
        "raborting": "failed",
        "recovered": "recovered",
        "failed": "failed",
    }
    assert {s: state(tm, tid) for s, tid in ids.items()} == expected
    rolled_back = sum(1 for s in expected if expected[s] == "recovered" and s != "recovered")
    assert len(undo.calls) == 2 * rolled_back
    assert undo.calls[:2] == [("undo2", ("2",)), ("undo1", ("1",))]  # LIFO
    assert tm.get_status(ids["running"])["message"] == "Task is initializing"
    assert tm.get_status(ids["running"])["code"] == 0
    assert tm.all_tasks()[fin]["result"] == "R"
    assert tm.get_status(fin)["message"] == "1 jobs completed successfully"
    assert state(tm, manual) == "waitrecover"  # manual recovery policy waits for a revert
    # every loaded task is saved again with its new state
    assert store.load(ids["running"]).state == "recovered"
    # waitrecover: revert is refused (not done); stop fails it
    with pytest.raises(TaskNotFinished):
        tm.revert(ids["waitrecover"])
    tm.stop(ids["waitrecover"])
    assert state(tm, ids["waitrecover"]) == "failed"


async def test_load_duplicate_id_refused(
    make_tm: Callable[..., TaskManager], tmp_path: Path
) -> None:
    store = TaskStore(tmp_path / "tasks")
    tm = make_tm(store=store)
    tid = await tm.schedule("createVolume", Job(work=0))
    await done(tm, tid)
    with pytest.raises(AddTaskError) as e:
        await tm.load_persisted(store)
    assert (
        e.value.message
        == f"TaskManager error, unable to add task: ('Task id already in use: {tid}',)"
    )
    assert tm.drop_tag("spm") == [tid]
    assert await tm.load_persisted(store) == [tid]


async def test_revert_policy_none_is_silent(
    make_tm: Callable[..., TaskManager], undo: Undo, tmp_path: Path
) -> None:
    store = TaskStore(tmp_path / "tasks")
    tid = dump(store, "finished", recovery_policy="none", recoveries=(Recovery("a", "undo1"),))
    tm = make_tm()
    await tm.load_persisted(store)
    await wait_until(lambda: tm.busy_workers == 0 and tm.queued == 0)
    tm.revert(tid)
    assert state(tm, tid) == "finished" and undo.calls == []


async def test_crash_and_restart_rolls_back(
    make_tm: Callable[..., TaskManager], undo: Undo, tmp_path: Path
) -> None:
    store = TaskStore(tmp_path / "tasks")
    tm = make_tm(store=store)
    job = Job(recoveries=recs("undo1", "undo2"))
    tid = await tm.schedule("createVolume", job)
    await started(job)
    await tm.close()  # the process dies mid-job
    assert state(tm, tid) == "running" and undo.calls == []
    tm2 = make_tm()
    assert await tm2.load_persisted(store) == [tid]
    await asyncio.wait_for(tm2.wait_done(tid), DEADLINE)
    assert state(tm2, tid) == "recovered"
    assert [c[0] for c in undo.calls] == ["undo2", "undo1"]
    assert not job.ran_to_end  # jobs are never resumed


async def test_errors_are_vdsm_errors() -> None:
    # every error the engine raises to clients carries a VDSM code
    for cls in (UnknownTask, TaskNotFinished, TaskHasRefs, TaskStateError, AddTaskError):
        assert issubclass(cls, VdsmError)


async def test_clear_recoveries_commits(tm: TaskManager, undo: Undo, tmp_path: Path) -> None:
    async def job(ctx: JobContext) -> str:
        ctx.push_recovery(Recovery("r", "undo1"))
        ctx.clear_recoveries()  # the change is committed: nothing to roll back any more
        raise VolumeDoesNotExist("V")

    tid = await tm.schedule("createVolume", job)
    await done(tm, tid)
    assert state(tm, tid) == "recovered" and undo.calls == []
    assert TaskStore(tmp_path / "tasks").load(tid).recoveries == ()


async def test_raw_table(tm: TaskManager) -> None:
    job = Job(recoveries=recs("undo1"))
    tid = await tm.schedule("createVolume", job)
    await started(job)
    (row,) = tm.raw_table()
    assert row["id"] == tid and row["state"] == "running" and row["refs"] == 1
    assert row["njobs"] == 1 and row["tag"] == "spm" and row["cleanPolicy"] == "manual"
    assert row["recoveries"] == [
        {"name": "undo1 rollback", "action": "undo1", "args": ["undo1", "x=1"]}
    ]
    job.release.set()

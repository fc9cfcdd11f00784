"""One storage task of the simulator: VDSM's Task on asyncio (the manager is in tasks.py).

The rules follow `lib/vdsm/storage/task.py` move by move, including its reference counting:
an abort only proceeds when the last reference drops, which is why a stop of a running job
waits for the job while a stop of a queued task (nobody holds it) rolls back at once.

Concurrency model: VDSM guards each task with a lock; here every synchronous stretch of code
is atomic with respect to the event loop, and only three places wait: a full queue in
`schedule`, a job's simulated work, and idle workers. Recovery steps are synchronous, as
`revert` runs them in VDSM's RPC thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import TYPE_CHECKING, Any, Literal, NoReturn

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    ActionStopped,
    CodedError,
    StorageException,
    TaskAborted,
    TaskHasRefs,
    TaskNotFinished,
    TaskStateError,
    TaskStateTransitionError,
    VdsmError,
)
from vdsm_simulator.taskstate import (
    ABORTABLE,
    DONE,
    LEGACY_RESULT,
    LEGACY_STATE,
    RECOVERING,
    RECOVERY_ABORTABLE,
    St,
    State,
    check_move,
    parse_state,
)
from vdsm_simulator.taskstore import JobRecord, Recovery, TaskSnapshot, TaskStore

if TYPE_CHECKING:
    from vdsm_simulator.tasks import TaskManager

log = logging.getLogger(__name__)

JobFn = Callable[["JobContext"], Awaitable[Any]]
Policy = Literal["none", "manual", "auto"]


def failure_code(e: BaseException) -> int:
    """VDSM reports a storage error's own code and 100 for anything else.

    An injected `CodedError` stands for whichever VDSM error has its code, so it keeps it.
    """
    if isinstance(e, StorageException):
        return e.code
    if isinstance(e, CodedError):
        return int(e.info()["code"])
    return 100


class JobContext:
    """What a job coroutine may do with its task."""

    __slots__ = ("_task", "clock")

    def __init__(self, task: Task, clock: SimClock) -> None:
        self._task = task
        self.clock = clock

    @property
    def task_id(self) -> str:
        return self._task.id

    @property
    def aborting(self) -> bool:
        return self._task.aborting()

    def push_recovery(self, r: Recovery) -> None:
        """Add a rollback step on top of the stack and persist it at once."""
        self._task.push_recovery(r)

    def clear_recoveries(self) -> None:
        """Forget every rollback step (VDSM jobs do this once a change is committed)."""
        self._task.recoveries.clear()
        self._task.persist()

    async def work(self, sim_seconds: float, *, abortable: bool = False) -> None:
        """Simulated work. Only abortable work (qemu-img, zeroing) notices a stop at once:
        it raises ActionStopped, as an aborted qemu-img operation does."""
        if not abortable:
            await self.clock.sleep(sim_seconds)
            return
        delay = self.clock.real(sim_seconds)
        if delay <= 0:  # no time to interrupt (as wait_for with a zero timeout)
            await asyncio.sleep(0)
            return
        # One future settled by whichever comes first, the end of the work or a stop: cheaper
        # than wait_for on an Event, which runs a task of its own per job (3,000 of them in a
        # cancel burst).
        loop = asyncio.get_running_loop()
        outcome: asyncio.Future[bool] = loop.create_future()  # True: stopped
        timer = loop.call_later(delay, _settle, outcome, False)
        try:
            with self._task.abort_callback(functools.partial(_settle, outcome, True)):
                stopped = await outcome
        finally:
            timer.cancel()
        if stopped:
            raise ActionStopped()


def _settle(outcome: asyncio.Future[bool], stopped: bool) -> None:
    if not outcome.done():
        outcome.set_result(stopped)


class Task:
    """One storage task; method names mirror VDSM's Task where the logic is VDSM's."""

    __slots__ = (
        "_abort_callbacks",
        "_aborting",
        "_done_event",
        "_force_abort",
        "_mgr",
        "_status",
        "clean_policy",
        "code",
        "error",
        "id",
        "job",
        "jobs",
        "message",
        "persist_policy",
        "persistent",
        "priority",
        "recoveries",
        "recovery_policy",
        "refs",
        "result",
        "state",
        "store",
        "tag",
        "verb",
    )

    def __init__(self, mgr: TaskManager, verb: str, tag: str, task_id: str | None = None) -> None:
        self._mgr = mgr
        self.id = task_id or str(uuid.uuid4())
        self.verb = verb
        self.tag = tag
        self.state = St.init
        self.code = 0
        self.message = "Task is initializing"
        self.result: Any = ""
        self.recovery_policy: Policy = "none"
        self.persist_policy: Policy = "none"
        self.clean_policy: Policy = "auto"
        self.priority = "low"
        self.persistent = False  # VDSM: the task has a store (SPM tasks); clear checks state
        self.store: TaskStore | None = None  # None with persistent=True: policies only, no disk
        self.job: JobFn | None = None  # None for tasks loaded from disk: jobs never resume
        self.jobs: list[JobRecord] = []
        self.recoveries: list[Recovery] = []
        self.refs = 0
        self.error: BaseException = TaskAborted("Unknown error encountered")
        self._aborting = False
        self._force_abort = False
        self._abort_callbacks: set[Callable[[], object]] = set()
        self._status: dict[str, Any] | None = None
        self._done_event: asyncio.Event | None = None

    def __repr__(self) -> str:
        return f"<Task {self.id} {self.verb} {self.state}>"

    # -- views ---------------------------------------------------------------------------------

    def legacy_status(self) -> dict[str, Any]:
        """VDSM's deprecated_getStatus, cached until the task changes; never mutated after."""
        if self._status is None:
            self._status = {
                "taskID": self.id,
                "taskState": LEGACY_STATE[self.state],
                "taskResult": LEGACY_RESULT[self.state],
                "code": self.code,
                "message": self.message,
            }
        return self._status

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "verb": self.verb}

    def details(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "verb": self.verb,
            "state": str(self.state),
            "code": self.code,
            "message": self.message,
            "result": self.result,
            "tag": self.tag,
        }

    def aborting(self) -> bool:
        return self._aborting or self.state in (St.aborting, St.raborting)

    def is_done(self) -> bool:
        return self.state in DONE

    def _changed(self) -> None:
        self._status = None
        self._mgr._invalidate()
        if self._done_event is not None and self.state in DONE:
            self._done_event.set()

    async def wait_done(self) -> None:
        if self.state in DONE:
            return
        if self._done_event is None:
            self._done_event = asyncio.Event()
        await self._done_event.wait()

    # -- persistence ---------------------------------------------------------------------------

    def snapshot(self) -> TaskSnapshot:
        return TaskSnapshot(
            id=self.id,
            name=self.verb,
            tag=self.tag,
            state=str(self.state),
            store=str(self.store.directory) if self.store else "None",
            recovery_policy=self.recovery_policy,
            persist_policy=self.persist_policy,
            clean_policy=self.clean_policy,
            priority=self.priority,
            jobs=tuple(self.jobs),
            recoveries=tuple(self.recoveries),
            code=self.code,
            message=self.message,
            result="" if self.result is None else str(self.result),
        )

    @classmethod
    def from_snapshot(cls, mgr: TaskManager, snap: TaskSnapshot) -> Task:
        t = cls(mgr, snap.name, snap.tag, snap.id)
        t.state = parse_state(snap.state)
        t.recovery_policy = _policy(snap.recovery_policy)
        t.persist_policy = _policy(snap.persist_policy)
        t.clean_policy = _policy(snap.clean_policy)
        t.priority = snap.priority
        t.jobs = list(snap.jobs)
        t.recoveries = list(snap.recoveries)
        if t.state is St.finished:  # VDSM only dumps the result in this state
            t.code, t.message, t.result = snap.code, snap.message, snap.result
        return t

    def set_persistence(self, store: TaskStore | None) -> None:
        """SPM policies (persist auto, clean manual); writes at once unless still in init."""
        self.persistent = True
        self.persist_policy = "auto"
        self.clean_policy = "manual"
        self.store = store
        if store is not None:
            store.create(self.id)
        if self.state is not St.init:
            self.persist()

    def persist(self) -> None:
        if self.persist_policy == "none" or self.store is None:
            return
        if self.state is St.init:
            raise TaskStateError(f"can't persist in state {self.state}")
        self.store.save(self.snapshot())

    def push_recovery(self, r: Recovery) -> None:
        if any(x.name == r.name for x in self.recoveries):
            raise ValueError(f"pushRecovery: name '{r.name}' must be unique")
        self.recoveries.append(r)
        self.persist()

    # -- state machine -------------------------------------------------------------------------

    def _update_state(self, target: State, force: bool = False) -> None:
        """Move (or go to aborting/raborting instead when a stop is pending) and follow up."""
        if self._aborting:
            if self.state in ABORTABLE:
                target = St.aborting
            elif self.state in RECOVERY_ABORTABLE and target is not St.recovered:
                target = St.raborting
        self._aborting = False
        if not force:
            check_move(self.state, target)
        log.debug("task %s: %s -> %s", self.id, self.state, target)
        self.state = target
        self._changed()
        if self.persist_policy == "auto":
            try:
                self.persist()
            except Exception:
                log.warning("task %s: failed persisting state %s", self.id, target, exc_info=True)
        # Follow-ups that VDSM runs inside the move. queued (enqueue) and running (the job)
        # need to wait, so schedule() and the worker run those after the move returns.
        if target is St.acquiring:
            self._update_state(St.queued)
        elif target is St.aborting:
            if self.refs > 1:
                return  # the last reference to drop finishes the abort
            if self.recovery_policy == "auto":
                self._update_state(St.racquiring)
            elif self.recovery_policy == "none":
                self._update_state(St.failed)
            else:
                self._update_state(St.waitrecover)
        elif target is St.racquiring:
            self._update_state(St.recovering)
        elif target is St.recovering:
            self._recover()
        elif target is St.raborting:
            if self.refs == 1:
                self._update_state(St.failed)
            else:
                log.warning("task %s: raborting with %d refs", self.id, self.refs)
        elif target in DONE and self.clean_policy == "auto":
            self.clean()

    def _update_result(self, code: int, message: str, result: Any) -> None:
        self.code, self.message, self.result = code, message, result
        self._changed()

    def _incref(self, force: bool = False) -> None:
        if self.aborting() and (self._force_abort or not force):
            raise TaskAborted(self.id)
        self.refs += 1

    def _decref(self, force: bool = False) -> None:
        self.refs -= 1
        if self.refs == 0 and self.aborting():
            self._do_abort(force)

    def _do_abort(self, force: bool = False) -> None:
        if self.refs != 0:
            return
        self.refs += 1
        try:
            try:
                if self.state not in ABORTABLE and force and self.state not in RECOVERY_ABORTABLE:
                    log.warning("task %s: abort ignored in state %s", self.id, self.state)
                    return
                if self.state in ABORTABLE:
                    self._update_state(St.aborting)
                else:
                    self._update_state(St.raborting)
            except TaskAborted:
                self._update_state(St.failed)
        finally:
            self.refs -= 1
            if self.state not in DONE:
                log.warning("task %s: left in %s, setting failed", self.id, self.state)
                self._update_state(St.failed)

    def _fail(self, e: Exception) -> NoReturn:
        """A job or rollback step raised: stop the task and report `value=.. abortedcode=..`.

        The ActionStopped of abortable work that a stop interrupted is that stop's expected
        outcome, not an error worth a traceback: formatting one cost as much CPU as the whole
        stop (a 1,000-job cancel burst logged 3,000 of them).
        """
        if isinstance(e, ActionStopped) and self.aborting():
            log.debug("task %s: job stopped", self.id)
        elif not isinstance(e, VdsmError) or failure_code(e) == 100:
            log.warning("task %s: unexpected error", self.id, exc_info=e)
        self.error = e
        self.stop()  # raises TaskAborted(<id>) when a stop was already pending
        raise TaskAborted(str(e), failure_code(e))

    # -- the job -------------------------------------------------------------------------------

    async def commit(self) -> None:
        """What a worker runs for a queued task."""
        try:
            self._incref()
        except TaskAborted:
            self._do_abort()
            return
        try:
            self._update_state(St.running)
            if self.state is St.running:
                await self._run_jobs()
        except asyncio.CancelledError:
            raise  # the simulated process died: state and refs stay as they were
        except BaseException:
            self._decref()
            raise
        self._decref()

    async def _run_jobs(self) -> None:
        code, message, n = 100, "Unknown Error", len(self.jobs)
        try:
            if self.aborting():
                raise TaskAborted("shutting down")
            if self.state is not St.running:
                raise TaskStateError(f"{self.id}: can't run Jobs in state {self.state}")
            result: Any = ""
            for i in range(n):
                if self.aborting():
                    raise TaskAborted("shutting down")
                self._update_result(0, f"running job {i + 1} of {n}", "")
                result = await self._run_job()
                if self.aborting():
                    raise TaskAborted("shutting down")
                if result is None:
                    result = ""
            self._update_result(0, f"{n} jobs completed successfully", result)
            self._update_state(St.finished)
            return
        except TaskAborted as e:
            message, code = e.value, e.abortedcode
            if not self.aborting():
                raise
        self._update_result(code, message, "")

    async def _run_job(self) -> Any:
        try:
            if self.job is None:
                raise TaskStateError(f"{self.id}: job was not restored")
            return await self.job(JobContext(self, self._mgr.clock))
        except Exception as e:
            self._fail(e)

    @contextlib.contextmanager
    def abort_callback(self, callback: Callable[[], object]) -> Iterator[None]:
        """Register what a stop calls at once; called right away if already aborting."""
        if self.aborting():
            callback()
        else:
            self._abort_callbacks.add(callback)
        try:
            yield
        finally:
            self._abort_callbacks.discard(callback)

    # -- stop / rollback / clean ---------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        self._incref(force)
        try:
            if self.state in DONE:
                return
            if self.state in RECOVERING and not force and self.clean_policy == "auto":
                return
            self._aborting = True
            for callback in list(self._abort_callbacks):
                try:
                    callback()
                except Exception:
                    log.exception("task %s: abort callback failed", self.id)
            self._force_abort = force
        finally:
            self._decref(force)

    def _recover(self) -> None:
        if self.state is not St.recovering:
            raise TaskStateError(f"{self.id}: _recover in state {self.state}")
        try:
            while self.state is St.recovering and self.recoveries:
                step = self.recoveries.pop()
                log.debug("task %s: running recovery %s", self.id, step)
                try:
                    self._mgr.recovery_actions[step.action](*step.args)
                except Exception as e:
                    self._fail(e)
        except Exception:
            log.warning("task %s: recovery failed", self.id, exc_info=True)
            with contextlib.suppress(TaskStateTransitionError):
                if self.state is St.recovering:
                    self._update_state(St.raborting)
        try:
            if self.state is St.recovering:
                self._update_state(St.recovered)
            elif self.state is St.raborting:
                self._update_state(St.failed)
        except TaskStateTransitionError:
            log.exception("task %s: cannot end recovery", self.id)

    def rollback(self) -> None:
        """Task.revert: synchronous rollback of a done task."""
        if self.recovery_policy == "none":
            return
        if self.state not in DONE:
            raise TaskNotFinished(f"can't rollback in state {self.state}")
        if self.refs != 0:
            raise TaskHasRefs(self.id)
        self.refs += 1
        try:
            self._update_state(St.racquiring)
        finally:
            self.refs -= 1

    def clean(self) -> None:
        if not self.persistent:
            return
        if self.state not in DONE:
            raise TaskStateError(f"can't clean in state {self.state}")
        if self.store is not None:
            self.store.delete(self.id)

    def recover_loaded(self) -> None:
        """A task read back from disk: never resume, roll back or fail by state."""
        try:
            self._incref(force=True)
        except TaskAborted:
            self._do_abort(True)
            return
        try:
            if self.state in DONE or self.state is St.waitrecover:
                return
            if self.state in ABORTABLE:
                self.stop()
            elif self.state in RECOVERING:
                self._update_state(St.racquiring, force=True)
            else:
                self.stop(force=True)
        finally:
            self._decref(force=True)


def _policy(value: str) -> Policy:
    if value == "auto":
        return "auto"
    if value == "manual":
        return "manual"
    return "none"

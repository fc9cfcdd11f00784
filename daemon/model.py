"""The daemon's records and their legal status transitions. Pure: no I/O, no asyncio.

Every status change anywhere in the daemon goes through `check_*_move`, so an illegal move (a
FINISHED job going back to STARTED, a cancel racing a completion) is an error at the place that
tried it instead of a silent corruption. Names follow the engine's (spec/engine-job-model.md) with
CANCELLING and ABORTED given the meaning the engine never gave them: ended by a cancel.
"""

from __future__ import annotations

import operator
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, TypeVar


class JobStatus(StrEnum):
    STARTED = "STARTED"  # running: validating, executing, waiting for tasks or a monitor report
    CANCELLING = "CANCELLING"  # a cancel is committed; stopping, reverting or waiting for a host
    FINISHED = "FINISHED"  # ended successfully (or a cancel came after the point of no return)
    FAILED = "FAILED"  # ended with a failure, including a cancel that could not complete
    ABORTED = "ABORTED"  # ended by a cancel
    UNKNOWN = "UNKNOWN"  # the outcome could not be established (kept visible, never hidden)


class StepStatus(StrEnum):
    STARTED = "STARTED"  # the part is in progress
    FINISHED = "FINISHED"  # the part completed
    FAILED = "FAILED"  # the part failed
    ABORTED = "ABORTED"  # the part was cut short by a cancel
    UNKNOWN = "UNKNOWN"  # the part's outcome is not known


class StepType(StrEnum):
    VALIDATING = "VALIDATING"  # validate(): parameters, entities, locks
    EXECUTING = "EXECUTING"  # execute(): verbs sent, children started
    FINALIZING = "FINALIZING"  # end_action / end_with_failure: the commit, never interrupted
    CREATE_VOLUME = "CREATE_VOLUME"  # one VDSM task per step, named after its VDSM verb
    COPY_IMAGE = "COPY_IMAGE"
    MOVE_IMAGE = "MOVE_IMAGE"
    DELETE_IMAGE = "DELETE_IMAGE"
    DELETE_VOLUME = "DELETE_VOLUME"
    MIGRATE_VM = "MIGRATE_VM"  # flow step of a migration, ended by the VM monitor
    INSTALLING_HOST = "INSTALLING_HOST"  # flow step of AddHost's detached InstallHost
    MAINTENANCE = "MAINTENANCE"  # flow step of SetHostMaintenance
    SAVING_STATE = "SAVING_STATE"  # flow step of HibernateVm
    COMPENSATING = "COMPENSATING"  # a cancel undoing completed work, one per undone piece
    UNKNOWN = "UNKNOWN"


class CommandStatus(StrEnum):
    NOT_STARTED = "NOT_STARTED"  # created, execute not begun (children not yet run stay here)
    ACTIVE = "ACTIVE"  # execute running, or waiting for its tasks or children
    SUCCEEDED = "SUCCEEDED"  # execute and every task succeeded; end_action next
    FAILED = "FAILED"  # execute or a task failed; end_with_failure next
    EXECUTION_FAILED = "EXECUTION_FAILED"  # execute raised before it completed
    ENDED_SUCCESSFULLY = "ENDED_SUCCESSFULLY"  # end_action ran
    ENDED_WITH_FAILURE = "ENDED_WITH_FAILURE"  # end_with_failure ran
    CANCELLED = "CANCELLED"  # stopped (and compensated where the cancel asked) by a cancel
    UNKNOWN = "UNKNOWN"


class TaskStatus(StrEnum):
    """The daemon's view of one VDSM task (VDSM's own state is kept beside it, verbatim)."""

    SUBMITTING = "SUBMITTING"  # the creating verb is in flight; the VDSM id is not known yet
    POLLING = "POLLING"  # VDSM runs it; polled with Host.getAllTasksStatuses
    ENDED = "ENDED"  # VDSM reports it finished (any result); waits for the command's end
    CLEARING = "CLEARING"  # Task.clear being sent
    CLEARED = "CLEARED"  # cleared on the host: nothing of it is left there
    ORPHAN = "ORPHAN"  # its job ended without clearing it (forced, host gone); the reaper owns it
    LOST = "LOST"  # never created (the verb failed) or gone from a good report


class HostStatus(StrEnum):
    UP = "UP"  # answering its monitor
    NON_RESPONSIVE = "NON_RESPONSIVE"  # missed monitor calls; jobs on it wait
    INSTALLING = "INSTALLING"  # AddHost's InstallHost is running
    MAINTENANCE = "MAINTENANCE"  # put in maintenance; gets no new work
    PREPARING_FOR_MAINTENANCE = "PREPARING_FOR_MAINTENANCE"  # migrating its VMs away


class CancelMode(StrEnum):
    STOP = "stop"  # start nothing new, stop what runs, keep what completed
    REVERT = "revert"  # stop, then undo completed work in reverse order
    FORCE = "force"  # operator only: end now, orphan what cannot be reached


class LockKind(StrEnum):
    EXCLUSIVE = "exclusive"  # no other job may lock the entity
    SHARED = "shared"  # other shared holders allowed, no exclusive one


_JOB_MOVES: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.STARTED: frozenset(
        {JobStatus.CANCELLING, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.UNKNOWN}
    ),
    JobStatus.CANCELLING: frozenset(
        {JobStatus.ABORTED, JobStatus.FINISHED, JobStatus.FAILED, JobStatus.UNKNOWN}
    ),
    JobStatus.UNKNOWN: frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED}),
    JobStatus.FINISHED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.ABORTED: frozenset(),
}

_STEP_MOVES: dict[StepStatus, frozenset[StepStatus]] = {
    StepStatus.STARTED: frozenset(
        {StepStatus.FINISHED, StepStatus.FAILED, StepStatus.ABORTED, StepStatus.UNKNOWN}
    ),
    StepStatus.UNKNOWN: frozenset({StepStatus.FINISHED, StepStatus.FAILED, StepStatus.ABORTED}),
    StepStatus.FINISHED: frozenset(),
    StepStatus.FAILED: frozenset(),
    StepStatus.ABORTED: frozenset(),
}

_C = CommandStatus
_COMMAND_MOVES: dict[CommandStatus, frozenset[CommandStatus]] = {
    _C.NOT_STARTED: frozenset({_C.ACTIVE, _C.ENDED_WITH_FAILURE, _C.CANCELLED, _C.UNKNOWN}),
    _C.ACTIVE: frozenset({_C.SUCCEEDED, _C.FAILED, _C.EXECUTION_FAILED, _C.CANCELLED, _C.UNKNOWN}),
    _C.SUCCEEDED: frozenset({_C.ENDED_SUCCESSFULLY, _C.ENDED_WITH_FAILURE, _C.CANCELLED}),
    _C.FAILED: frozenset({_C.ENDED_WITH_FAILURE, _C.CANCELLED}),
    _C.EXECUTION_FAILED: frozenset({_C.ENDED_WITH_FAILURE, _C.CANCELLED}),
    _C.UNKNOWN: frozenset({_C.ENDED_SUCCESSFULLY, _C.ENDED_WITH_FAILURE, _C.CANCELLED}),
    _C.ENDED_SUCCESSFULLY: frozenset({_C.CANCELLED}),  # a revert may compensate a finished child
    _C.ENDED_WITH_FAILURE: frozenset(),
    _C.CANCELLED: frozenset(),
}

_T = TaskStatus
_TASK_MOVES: dict[TaskStatus, frozenset[TaskStatus]] = {
    _T.SUBMITTING: frozenset({_T.POLLING, _T.LOST, _T.ORPHAN}),
    _T.POLLING: frozenset({_T.ENDED, _T.LOST, _T.ORPHAN, _T.CLEARING}),
    _T.ENDED: frozenset({_T.POLLING, _T.CLEARING, _T.ORPHAN}),  # POLLING again after a revert
    _T.CLEARING: frozenset({_T.CLEARED, _T.ENDED, _T.ORPHAN, _T.LOST}),
    _T.ORPHAN: frozenset({_T.CLEARING, _T.CLEARED, _T.LOST}),
    _T.CLEARED: frozenset(),
    _T.LOST: frozenset(),
}

JOB_TERMINAL = frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED})
STEP_TERMINAL = frozenset({StepStatus.FINISHED, StepStatus.FAILED, StepStatus.ABORTED})
COMMAND_TERMINAL = frozenset({_C.ENDED_SUCCESSFULLY, _C.ENDED_WITH_FAILURE, _C.CANCELLED})
TASK_SETTLED = frozenset({_T.CLEARED, _T.LOST})


class TransitionError(ValueError):
    """A status move the model forbids; the caller raced with another change or has a bug."""


def _check(kind: str, moves: dict[Any, frozenset[Any]], current: Any, target: Any) -> None:
    if target not in moves[current]:
        raise TransitionError(f"{kind} cannot move from {current} to {target}")


def check_job_move(current: JobStatus, target: JobStatus) -> None:
    _check("job", _JOB_MOVES, current, target)


def check_step_move(current: StepStatus, target: StepStatus) -> None:
    _check("step", _STEP_MOVES, current, target)


def check_command_move(current: CommandStatus, target: CommandStatus) -> None:
    _check("command", _COMMAND_MOVES, current, target)


def check_task_move(current: TaskStatus, target: TaskStatus) -> None:
    _check("task", _TASK_MOVES, current, target)


# Random bytes for 256 ids at a time: `os.urandom` is a system call (20 - 25 µs each on this
# project's machine), and a simple job makes five ids. Same source, same randomness; a forked
# child starts with none, so it never repeats its parent's ids.
_random_ids: list[bytes] = []
os.register_at_fork(after_in_child=_random_ids.clear)


def new_id() -> str:
    """A random (version 4) UUID in its canonical text form, as `str(uuid.uuid4())` gives it.

    Built from the same 16 random bytes without a `uuid.UUID` object: ids are made for every
    job, step, command and task, and this is about three times cheaper.
    """
    if not _random_ids:
        block = os.urandom(16 * 256)
        _random_ids.extend(block[i : i + 16] for i in range(0, len(block), 16))
    b = bytearray(_random_ids.pop())
    b[6] = (b[6] & 0x0F) | 0x40  # version 4
    b[8] = (b[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = b.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def now() -> float:
    return time.time()


@dataclass(slots=True)
class CancelRecord:
    """A cancel intent and what came of it; written and committed before any verb is sent."""

    mode: CancelMode
    requested_by: int  # uid of the requester (peer credentials)
    requested_at: float
    reason: str = ""
    force: bool = False
    outcome: str = ""  # empty while in progress; then aborted, too_late, failed, ...
    late: bool = False  # work had completed before the stop arrived (kept or reverted)
    actions: list[dict[str, Any]] = field(default_factory=list)  # per-task and per-child actions
    ended_at: float | None = None


@dataclass(slots=True)
class Job:
    id: str
    action: str
    params: dict[str, Any]
    owner: int  # uid of the submitter
    correlation_id: str
    description: str = ""
    status: JobStatus = JobStatus.STARTED
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    ended_at: float | None = None
    result: dict[str, Any] | None = None
    error: str = ""
    cancel: CancelRecord | None = None


@dataclass(slots=True)
class Step:
    id: str
    job_id: str
    type: StepType
    description: str
    number: int
    parent_id: str | None = None
    status: StepStatus = StepStatus.STARTED
    started_at: float = field(default_factory=now)
    ended_at: float | None = None
    external_id: str | None = None  # the VDSM task id of a task step
    external_type: str | None = None  # "VDSM"
    host: str | None = None
    progress: int | None = None


@dataclass(slots=True)
class Command:
    id: str
    job_id: str
    action: str
    params: dict[str, Any]
    root_id: str
    parent_id: str | None = None
    status: CommandStatus = CommandStatus.NOT_STARTED
    hidden: bool = True  # internal children show no steps of their own unless they ask
    data: dict[str, Any] = field(default_factory=dict)  # what execute recorded for end/compensation
    created_at: float = field(default_factory=now)
    sequence: int = 0  # order among siblings (compensation runs in reverse)


@dataclass(slots=True)
class Task:
    """A VDSM task owned by a command; `id` is ours, `vdsm_id` VDSM's once the verb answered."""

    id: str
    job_id: str
    command_id: str
    host: str
    pool: str
    verb: str
    status: TaskStatus = TaskStatus.SUBMITTING
    vdsm_id: str | None = None
    step_id: str | None = None
    vdsm_state: str = ""  # taskState as VDSM reports it
    vdsm_result: str = ""  # taskResult as VDSM reports it
    code: int = 0
    message: str = ""
    created_at: float = field(default_factory=now)
    updated_at: float = field(default_factory=now)
    stop_sent: bool = False
    revert_sent: bool = False


@dataclass(slots=True)
class Lock:
    entity: str  # "vm:<uuid>", "disk:<uuid>", "host:<name>"
    kind: LockKind
    job_id: str
    acquired_at: float = field(default_factory=now)


@dataclass(slots=True)
class Host:
    name: str
    address: str
    port: int
    pool: str
    transport: str = "stomp"
    tls: bool = False
    status: HostStatus = HostStatus.UP
    spm: bool = False
    last_seen: float | None = None
    failures: int = 0


# -- documents: how records are written to the store and read back -----------------------------

Record = Job | Step | Command | Task | Lock | Host


_GETTERS: dict[type, tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]] = {}


def _getter(cls: type) -> tuple[tuple[str, ...], Callable[[Any], tuple[Any, ...]]]:
    """The slot names of a record class and one attrgetter reading them all (cached)."""
    got = _GETTERS.get(cls)
    if got is None:
        names: tuple[str, ...] = cls.__slots__  # type: ignore[attr-defined]
        got = _GETTERS[cls] = (names, operator.attrgetter(*names))
    return got


def to_doc(record: Record) -> dict[str, Any]:
    """A JSON-ready dict of a record (enums are str subclasses and serialize as their value)."""
    names, get = _getter(type(record))
    doc = dict(zip(names, get(record), strict=True))
    if type(record) is Command:
        # A copy: the executor keeps writing the command's phase and results into `data`, and
        # the document is this change's (an event a subscriber reads later, a row committed
        # later); with the live dict both showed whatever the command held by then.
        doc["data"] = dict(record.data)
    elif type(record) is Job and record.cancel is not None:
        cnames, cget = _getter(CancelRecord)
        doc["cancel"] = dict(zip(cnames, cget(record.cancel), strict=True))
    return doc


E = TypeVar("E", bound=StrEnum)


def _enum(cls: type[E], value: Any) -> E:
    """`cls(value)` through the enum's own value map (one dict lookup instead of a call)."""
    try:
        return cls._value2member_map_[value]  # type: ignore[return-value]
    except (KeyError, TypeError):
        return cls(value)  # the usual ValueError for a value the enum does not know


def job_from_doc(doc: dict[str, Any]) -> Job:
    job = Job(**doc)
    job.status = _enum(JobStatus, job.status)
    cancel = doc.get("cancel")
    if cancel is not None:
        job.cancel = cancel_from_doc(cancel)
    return job


def cancel_from_doc(doc: dict[str, Any]) -> CancelRecord:
    record = CancelRecord(**doc)
    record.mode = _enum(CancelMode, record.mode)
    return record


def step_from_doc(doc: dict[str, Any]) -> Step:
    step = Step(**doc)
    step.type = _enum(StepType, step.type)
    step.status = _enum(StepStatus, step.status)
    return step


def command_from_doc(doc: dict[str, Any]) -> Command:
    command = Command(**doc)
    command.status = _enum(CommandStatus, command.status)
    return command


def task_from_doc(doc: dict[str, Any]) -> Task:
    task = Task(**doc)
    task.status = _enum(TaskStatus, task.status)
    return task


def lock_from_doc(doc: dict[str, Any]) -> Lock:
    lock = Lock(**doc)
    lock.kind = _enum(LockKind, lock.kind)
    return lock


def host_from_doc(doc: dict[str, Any]) -> Host:
    host = Host(**doc)
    host.status = _enum(HostStatus, host.status)
    return host

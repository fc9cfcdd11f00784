"""The in-memory job trees: the one writer of model state.

Every change to a job, step, command, task or lock goes through a method here that checks the
transition (model.py), applies it in memory, queues the record for SQLite and publishes an event,
in that order and without an `await` in between, so no other coroutine ever sees a change that
is not also queued for disk. Methods that acknowledge something to a client (`create_job`,
`record_cancel`, `record_task_id`) return only after the commit: those are the durable points.

A start does not read everything back. Jobs that had not ended come back whole; an ended
("stored") job comes back as its summary columns only, without its params and result, and with
only those of its tasks that still need something (not CLEARED or LOST). Its steps, commands,
settled tasks, params and result are read from the store on first use (`job_view`, a look-up
in `steps` / `commands` / `tasks_by_job`, a write of the job) and stay in memory from then on.
An ended job changes only through this class, which loads it before any write, so what is read
is what was last committed.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import itertools
import json
import logging
import sys
from collections.abc import Callable, Iterable, ValuesView
from typing import Any, TypeVar, overload

from daemon import model
from daemon.events import EventHub
from daemon.model import (
    CancelRecord,
    Command,
    CommandStatus,
    Host,
    Job,
    JobStatus,
    Lock,
    LockKind,
    Step,
    StepStatus,
    StepType,
    Task,
    TaskStatus,
)
from daemon.store import Kind, Store

log = logging.getLogger(__name__)
intern = sys.intern

V = TypeVar("V")
D = TypeVar("D")

_ACTIVE = tuple(s.value for s in JobStatus if s not in model.JOB_TERMINAL)
_ENDED = tuple(s.value for s in JobStatus if s in model.JOB_TERMINAL)
_SETTLED = tuple(s.value for s in TaskStatus if s in model.TASK_SETTLED)
_UNSETTLED = tuple(s.value for s in TaskStatus if s not in model.TASK_SETTLED)
_FREEZE_AT = 10_000  # jobs loaded at start from which their records are frozen (see `load`)


class PerJob(dict[str, V]):
    """Job id -> that job's records; a look-up of a stored job's first reads it from the store.

    Like a `defaultdict` (a missing job gets an empty value), except that a job whose records
    were left on disk at start is loaded before the answer, so readers elsewhere (executor,
    cancel, API) always see a whole tree. The registry itself fills it with `dict` methods,
    which never load.
    """

    __slots__ = ("_empty", "_load")

    def __init__(self, load: Callable[[str], None], empty: Callable[[], V]) -> None:
        super().__init__()
        self._load = load
        self._empty = empty

    def __missing__(self, job_id: str) -> V:
        self._load(job_id)
        value = dict.get(self, job_id)
        if value is None:
            value = self._empty()
            dict.__setitem__(self, job_id, value)
        return value

    def __contains__(self, job_id: object) -> bool:
        if isinstance(job_id, str) and not dict.__contains__(self, job_id):
            self._load(job_id)
        return dict.__contains__(self, job_id)

    @overload
    def get(self, job_id: str, default: None = None, /) -> V | None: ...

    @overload
    def get(self, job_id: str, default: V, /) -> V: ...

    @overload
    def get(self, job_id: str, default: D, /) -> V | D: ...

    def get(self, job_id: str, default: Any = None, /) -> Any:
        if not dict.__contains__(self, job_id):
            self._load(job_id)
        return dict.get(self, job_id, default)


class LockConflict(Exception):
    """An entity is locked by another job; the message names it and the holder."""


class Registry:
    def __init__(self, store: Store, events: EventHub | None = None) -> None:
        self.store = store
        self.events = events or EventHub()
        self.jobs: dict[str, Job] = {}
        self.steps: PerJob[dict[str, Step]] = PerJob(self._load_stored, dict)
        self.commands: PerJob[dict[str, Command]] = PerJob(self._load_stored, dict)
        self.tasks: dict[str, Task] = {}  # every task of a loaded job, and every unsettled one
        self.tasks_by_job: PerJob[set[str]] = PerJob(self._load_stored, set)
        self.tasks_by_host: dict[str, set[str]] = collections.defaultdict(set)
        self.by_vdsm_id: dict[tuple[str, str], str] = {}  # (host, vdsm task id) -> task id
        self.by_correlation: dict[str, set[str]] = collections.defaultdict(set)
        self.by_status: dict[JobStatus, set[str]] = collections.defaultdict(set)
        # entity -> its holders (read-only views of `_holding`, in the order they were taken)
        self.locks: dict[str, ValuesView[Lock]] = {}
        # entity -> holding job -> its lock: acquiring and releasing cost the same whether an
        # entity has one holder or the thousands of shared ones a host gets in a burst of jobs
        # (a list made both a scan of every holder: quadratic in the burst).
        self._holding: dict[str, dict[str, Lock]] = {}
        self._exclusive: dict[str, str] = {}  # entity -> the job holding it exclusively
        self._locks_by_job: dict[str, list[Lock]] = {}  # job -> its locks (release without scans)
        self._entity_seq: dict[str, int] = {}  # entity -> when it entered `locks` (its order)
        self._seq = itertools.count()
        self.hosts: dict[str, Host] = {}
        self._changed: dict[str, list[asyncio.Future[None]]] = {}  # job -> who waits for it
        self._stored: set[str] = set()  # ended jobs whose tree is still only on disk

    # -- plumbing ----------------------------------------------------------------------------

    def _emit(
        self,
        kind: Kind,
        key: str,
        record: model.Record | None,
        job_id: str | None,
        op: str,
        urgent: bool = False,
    ) -> asyncio.Future[None]:
        """Apply, persist and publish one change. `urgent`: an API request is answered once it
        is committed (a job accepted, a cancel intent, a host): commit it at once rather than
        with the next paced group commit (`Store.commit_interval`)."""
        if kind == "job" and key in self._stored:
            self._load_stored(key)  # its document must not be written without params, result
        doc = model.to_doc(record) if record is not None else None
        done = self.store.put_nowait(kind, key, doc, urgent=urgent)
        self._publish(kind, key, doc or {}, job_id, op)
        return done

    def _publish(
        self, kind: Kind, key: str, doc: dict[str, Any], job_id: str | None, op: str
    ) -> None:
        """Tell subscribers of a change and wake whoever waits for the job to change."""
        self.events.publish(kind, op, key, job_id, doc)
        if job_id is not None:
            waiters = self._changed.pop(job_id, None)
            if waiters is not None:
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)

    async def wait_changed(self, job_id: str) -> None:
        """Wait until anything of the job changes (commands waiting for their tasks, a cancel,
        `cancel --wait`, tests).

        A future per waiter, as `asyncio.Event` has (a cancelled waiter leaves the others
        waiting), made on the store's loop: `Event.wait` asks asyncio for the running loop on
        every call, a getpid system call on 3.11, and a burst of a thousand cancels waits on
        its jobs tens of thousands of times. A cancelled waiter is forgotten at once (an
        Event stayed in the table until the job changed again, for good if it never did)."""
        loop = self.store.loop or asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        waiters = self._changed.setdefault(job_id, [])
        waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if self._changed.get(job_id) is waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._changed[job_id]
            raise

    # -- jobs ----------------------------------------------------------------------------------

    async def create_job(self, job: Job) -> None:
        """Add a job and wait until it is committed: after this the job survives a crash."""
        self.jobs[job.id] = job
        self.by_correlation[job.correlation_id].add(job.id)
        self.by_status[job.status].add(job.id)
        await self._emit("job", job.id, job, job.id, "created", urgent=True)

    async def create_jobs(self, jobs: list[Job]) -> None:
        """Add several jobs and wait until all are committed, in one group commit.

        For the multiple-action runner: awaiting `create_job` once per entry costs one commit
        (one fsync with synchronous=FULL) per job; this queues them all, then waits once.
        """
        waits = []
        for job in jobs:
            self.jobs[job.id] = job
            self.by_correlation[job.correlation_id].add(job.id)
            self.by_status[job.status].add(job.id)
            waits.append(self._emit("job", job.id, job, job.id, "created", urgent=True))
        if waits:
            await asyncio.gather(*waits)

    def set_job_status(
        self, job: Job, status: JobStatus, *, error: str = "", result: dict[str, Any] | None = None
    ) -> asyncio.Future[None]:
        model.check_job_move(job.status, status)
        self.by_status[job.status].discard(job.id)
        job.status = status
        self.by_status[status].add(job.id)
        job.updated_at = model.now()
        if status in model.JOB_TERMINAL:
            job.ended_at = job.updated_at
        if error:
            job.error = error
        if result is not None:
            job.result = result
        return self._emit("job", job.id, job, job.id, "updated")

    def touch_job(self, job: Job, *, urgent: bool = False) -> asyncio.Future[None]:
        """Persist a change made to a job's fields other than its status (result, cancel)."""
        job.updated_at = model.now()
        return self._emit("job", job.id, job, job.id, "updated", urgent)

    async def record_cancel(self, job: Job, cancel: CancelRecord) -> None:
        """The cancel intent: committed before any verb is sent (DESIGN.md rule 1)."""
        job.cancel = cancel
        if job.status is JobStatus.STARTED:
            model.check_job_move(job.status, JobStatus.CANCELLING)
            self.by_status[job.status].discard(job.id)
            job.status = JobStatus.CANCELLING
            self.by_status[job.status].add(job.id)
        await self.touch_job(job, urgent=True)

    def forget_job(self, job_id: str) -> None:
        """Drop a terminal job from memory (after purge or clear)."""
        job = self.jobs.pop(job_id, None)
        if job is None:
            return
        self._stored.discard(job_id)
        self.by_correlation[job.correlation_id].discard(job_id)
        self.by_status[job.status].discard(job_id)
        self.steps.pop(job_id, None)
        self.commands.pop(job_id, None)
        for task_id in self.tasks_by_job.pop(job_id, set()):
            task = self.tasks.pop(task_id, None)
            if task is not None:
                self.tasks_by_host[task.host].discard(task_id)
                if task.vdsm_id:
                    self.by_vdsm_id.pop((task.host, task.vdsm_id), None)
        self.events.publish("job", "deleted", job_id, job_id, {})

    # -- steps -------------------------------------------------------------------------------

    def add_step(
        self,
        job: Job,
        type_: StepType,
        description: str,
        *,
        parent_id: str | None = None,
        external_id: str | None = None,
        host: str | None = None,
    ) -> Step:
        steps = self.steps[job.id]
        step = Step(
            model.new_id(),
            job.id,
            type_,
            description,
            len(steps) + 1,
            parent_id,
            external_id=external_id,
            external_type="VDSM" if external_id else None,
            host=host,
        )
        steps[step.id] = step
        self._emit("step", step.id, step, job.id, "created")
        return step

    def end_step(self, step: Step, status: StepStatus) -> None:
        if step.status is status:
            return
        model.check_step_move(step.status, status)
        step.status = status
        step.ended_at = model.now()
        self._emit("step", step.id, step, step.job_id, "updated")

    def update_step(self, step: Step, **changes: Any) -> None:
        for key, value in changes.items():
            setattr(step, key, value)
        self._emit("step", step.id, step, step.job_id, "updated")

    # -- commands ----------------------------------------------------------------------------

    def add_command(self, command: Command) -> asyncio.Future[None]:
        self.commands[command.job_id][command.id] = command
        return self._emit("command", command.id, command, command.job_id, "created")

    def set_command_status(
        self, command: Command, status: CommandStatus, *, data: dict[str, Any] | None = None
    ) -> asyncio.Future[None]:
        """Move a command; `data` (its next phase, say) is merged into its data in the same
        change: one record change, one event, one row instead of two of each."""
        model.check_command_move(command.status, status)
        command.status = status
        if data:
            command.data.update(data)
        return self._emit("command", command.id, command, command.job_id, "updated")

    def save_command(self, command: Command) -> asyncio.Future[None]:
        """Persist `data` a command recorded (what end_action or compensation will need)."""
        return self._emit("command", command.id, command, command.job_id, "updated")

    # -- tasks -------------------------------------------------------------------------------

    async def add_task(self, task: Task) -> None:
        """The placeholder written before the creating verb is sent (committed first)."""
        self._index_task(task)
        await self._emit("task", task.id, task, task.job_id, "created")

    async def record_task_id(self, task: Task, vdsm_id: str) -> None:
        """VDSM's id for the task, committed before anything else is done with it."""
        model.check_task_move(task.status, TaskStatus.POLLING)
        task.vdsm_id = vdsm_id
        task.status = TaskStatus.POLLING
        task.updated_at = model.now()
        self.by_vdsm_id[(task.host, vdsm_id)] = task.id
        await self._emit("task", task.id, task, task.job_id, "updated")

    def set_task_status(
        self, task: Task, status: TaskStatus, **changes: Any
    ) -> asyncio.Future[None]:
        if status is not task.status:
            model.check_task_move(task.status, status)
            task.status = status
        for key, value in changes.items():
            setattr(task, key, value)
        task.updated_at = model.now()
        done = self._emit("task", task.id, task, task.job_id, "updated")
        if task.status is TaskStatus.ENDED and task.step_id is not None:
            self._end_task_step(task)
        return done

    def start_clearing(self, job_id: str) -> list[Task]:
        """The job's tasks to clear (ended, or their clear begun, with a VDSM id), each one
        CLEARING from here: written before its Task.clear goes out, so a restart knows that
        one may have."""
        tasks = [
            t
            for t in self.job_tasks(job_id)
            if t.status in (TaskStatus.ENDED, TaskStatus.CLEARING) and t.vdsm_id
        ]
        for task in tasks:
            if task.status is TaskStatus.ENDED:
                self.set_task_status(task, TaskStatus.CLEARING)
        return tasks

    def note_task(self, task: Task, **changes: Any) -> None:
        """Change a task in memory and publish it, without a store write of its own: only for
        facts a restart learns again at no risk. The task's next written change carries them
        (a record is always written whole).

        The two facts that made a third of the task writes of a cancel burst: a VDSM state
        short of finished (the next poll reports it again) and a stop VDSM answered (sent
        again after a restart; VDSM takes the repeat as done, task_verbs.py). Neither is an
        acknowledgement, and nothing decided on them goes unwritten: a task's status moves
        only through `set_task_status`."""
        for key, value in changes.items():
            setattr(task, key, value)
        task.updated_at = model.now()
        self._publish("task", task.id, model.to_doc(task), task.job_id, "updated")

    def _end_task_step(self, task: Task) -> None:
        """A task's step ends with its task, as the engine's does: success FINISHED, a task we
        stopped ABORTED, any other result FAILED. Without this a finished job kept its task
        steps STARTED for good."""
        step = self.steps.get(task.job_id, {}).get(task.step_id or "")
        if step is None or step.status is not StepStatus.STARTED:
            return
        if task.vdsm_result == "success":
            self.end_step(step, StepStatus.FINISHED)
        elif task.stop_sent:
            self.end_step(step, StepStatus.ABORTED)
        else:
            self.end_step(step, StepStatus.FAILED)

    def report_task(self, task: Task, report: dict[str, Any]) -> bool:
        """Apply one VDSM TaskStatus; returns True when it changed anything."""
        state = str(report.get("taskState", ""))
        result = str(report.get("taskResult", ""))
        code = int(report.get("code", 0) or 0)
        message = str(report.get("message", ""))
        if (state, result, code, message) == (
            task.vdsm_state,
            task.vdsm_result,
            task.code,
            task.message,
        ):
            return False
        if state != "finished":  # the next poll reports it again after a restart
            self.note_task(task, vdsm_state=state, vdsm_result=result, code=code, message=message)
            return True
        task.vdsm_state, task.vdsm_result, task.code, task.message = state, result, code, message
        self.set_task_status(task, TaskStatus.ENDED)
        return True

    def _index_task(self, task: Task) -> None:
        self.tasks[task.id] = task
        dict.setdefault(self.tasks_by_job, task.job_id, set()).add(task.id)
        self.tasks_by_host[task.host].add(task.id)
        if task.vdsm_id:
            self.by_vdsm_id[(task.host, task.vdsm_id)] = task.id

    def job_tasks(self, job_id: str) -> list[Task]:
        """The job's tasks in memory: all of them, except for an ended job still on disk, whose
        settled (CLEARED, LOST) ones are left there (`job_view` shows them). Every task that
        still needs anything is always here, so "are all its tasks settled" needs no read."""
        return [self.tasks[t] for t in dict.get(self.tasks_by_job, job_id, ())]

    def task_count(self, job_id: str) -> int:
        """How many tasks the job has, without reading a stored job's tree (one indexed count)."""
        if job_id in self._stored:
            return self.store.count_tasks(job_id)
        return len(dict.get(self.tasks_by_job, job_id, ()))

    def untracked_vdsm_ids(self, vdsm_ids: list[str]) -> list[str]:
        """The VDSM task ids no task record has, in memory or in the store.

        A pool's poller only knows the tasks in memory; an ended job's settled tasks stay on
        disk, and one of those reported again by its SPM is not an orphan to reap.
        """
        if not vdsm_ids:
            return []
        stored = self.store.stored_vdsm_ids(vdsm_ids)
        return [i for i in vdsm_ids if i not in stored]

    def host_tasks(self, host: str) -> list[Task]:
        return [self.tasks[t] for t in self.tasks_by_host.get(host, ())]

    # -- locks -------------------------------------------------------------------------------

    def acquire_locks(self, job: Job, wanted: Iterable[tuple[str, LockKind]]) -> None:
        """Take every lock or none; the caller persists with the job's next commit."""
        wanted = list(wanted)
        for entity, kind in wanted:
            holding = self._holding.get(entity)
            if not holding:
                continue
            if kind is LockKind.EXCLUSIVE:
                other = next((h for j, h in holding.items() if j != job.id), None)
            else:
                exclusive = self._exclusive.get(entity)
                other = holding[exclusive] if exclusive not in (None, job.id) else None
            if other is not None:
                raise LockConflict(f"{entity} is locked by job {other.job_id} ({other.kind})")
        for entity, kind in wanted:
            holders = self._holders(entity)
            if job.id in holders:
                continue
            lock = Lock(entity, kind, job.id)
            self._hold(holders, lock)
            self._emit("lock", f"{entity}|{job.id}", lock, job.id, "created")

    def _holders(self, entity: str) -> dict[str, Lock]:
        holders = self._holding.get(entity)
        if holders is None:
            holders = self._holding[entity] = {}
            self.locks[entity] = holders.values()
            self._entity_seq[entity] = next(self._seq)
        return holders

    def _hold(self, holders: dict[str, Lock], lock: Lock) -> None:
        holders[lock.job_id] = lock
        if lock.kind is LockKind.EXCLUSIVE:
            self._exclusive[lock.entity] = lock.job_id
        self._locks_by_job.setdefault(lock.job_id, []).append(lock)

    def release_locks(self, job_id: str) -> None:
        # In the order of `locks` (entities), as a scan of every entity would release them.
        for lock in self.job_locks(job_id):
            holders = self._holding[lock.entity]
            del holders[job_id]
            if self._exclusive.get(lock.entity) == job_id:
                del self._exclusive[lock.entity]
            self._emit("lock", f"{lock.entity}|{job_id}", None, job_id, "deleted")
            if not holders:
                del self._holding[lock.entity]
                del self.locks[lock.entity]
                del self._entity_seq[lock.entity]
        self._locks_by_job.pop(job_id, None)

    def job_locks(self, job_id: str) -> list[Lock]:
        mine = self._locks_by_job.get(job_id)
        if not mine:
            return []
        seq = self._entity_seq
        return sorted(mine, key=lambda lock: seq[lock.entity])

    # -- hosts -------------------------------------------------------------------------------

    async def put_host(self, host: Host) -> None:
        self.hosts[host.name] = host
        await self._emit("host", host.name, host, None, "updated", urgent=True)

    def update_host(self, host: Host) -> None:
        self._emit("host", host.name, host, None, "updated")

    async def delete_host(self, name: str) -> None:
        self.hosts.pop(name, None)
        await self._emit("host", name, None, None, "deleted", urgent=True)

    # -- loading -------------------------------------------------------------------------------

    async def load(self) -> None:
        """Rebuild the trees from the store (start-up): whole for the jobs that had not ended,
        the summary columns and unsettled tasks for the others (see the module docstring).

        Records are read a chunk at a time, and the strings they repeat (their job's id, host,
        pool, action names) are shared with the first copy instead of kept once per record.

        The cyclic garbage collector is off meanwhile: loading only adds live objects, and with
        it on, each of its full passes re-walks every record loaded so far (a fifth of the
        load's time at 100,000 jobs). After a large load, what is in memory is moved out of
        its reach (`gc.freeze`): records live until their job is purged, form no cycles and
        are freed by reference counting, so later full passes need not walk them either (a
        small load is left alone: the walk is cheap and test processes load many times).
        """
        enabled = gc.isenabled()
        gc.disable()
        try:
            await self._load()
        finally:
            if enabled:
                gc.enable()
        if len(self.jobs) >= _FREEZE_AT:
            gc.freeze()

    async def _load(self) -> None:
        jobs = self.jobs
        store = self.store
        step_from_doc, command_from_doc = model.step_from_doc, model.command_from_doc
        steps, commands = self.steps, self.commands

        def job_id_of(job_id: str) -> str:
            job = jobs.get(job_id)
            return job.id if job is not None else job_id

        async for docs in store.jobs_in(_ACTIVE):
            for doc in docs:
                job = model.job_from_doc(doc)
                job.action = intern(job.action)
                self._index_job(job)
        await self._load_summaries()
        # The records of the active jobs, with `_add_step` / `_add_command` written out: a call
        # per record is a measurable part of a 100,000-job start.
        async for docs in store.records_of_jobs_in("step", _ACTIVE):
            for doc in docs:
                step = step_from_doc(doc)
                step.job_id = job_id_of(step.job_id)
                if step.host is not None:
                    step.host = intern(step.host)
                dict.setdefault(steps, step.job_id, {})[step.id] = step
        async for docs in store.records_of_jobs_in("command", _ACTIVE):
            for doc in docs:
                command = command_from_doc(doc)
                command.job_id = job_id_of(command.job_id)
                command.action = intern(command.action)
                dict.setdefault(commands, command.job_id, {})[command.id] = command
        async for docs in store.tasks_in(_UNSETTLED):
            for doc in docs:
                self._add_task(model.task_from_doc(doc), job_id_of)
        async for docs in store.tasks_in(_SETTLED, job_statuses=_ACTIVE):
            for doc in docs:
                self._add_task(model.task_from_doc(doc), job_id_of)
        async for doc in store.iter_load("lock"):
            lock = model.lock_from_doc(doc)
            lock.job_id = job_id_of(lock.job_id)
            self._hold(self._holders(lock.entity), lock)
        async for doc in store.iter_load("host"):
            host = model.host_from_doc(doc)
            self.hosts[host.name] = host

    async def _load_summaries(self) -> None:
        """The ended jobs as their summary columns, a chunk of rows at a time.

        Nine rows in ten of a large start: each chunk becomes Jobs in one comprehension from
        rows already in `Job`'s field order, and the indexes take the chunk's ids in bulk
        (`update`), which halves the Python work per row of a loop doing it one job at a time.
        """
        jobs, stored, by_correlation = self.jobs, self._stored, self.by_correlation
        owners: dict[int, int] = {}  # one int object per uid, not one per job
        owner_of = owners.setdefault

        def cancel_of(text: str) -> CancelRecord:
            return model.cancel_from_doc(json.loads(text))

        for status in model.JOB_TERMINAL:
            with_status = self.by_status[status]
            async for rows in self.store.job_summaries(status.value):
                chunk = [
                    Job(
                        job_id,
                        intern(action),
                        {},  # read on first use, with the result
                        owner_of(owner, owner),
                        correlation,
                        intern(description),
                        status,
                        created,
                        updated,
                        ended,
                        None,
                        error,
                        None if cancel is None else cancel_of(cancel),
                    )
                    for (
                        job_id,
                        action,
                        owner,
                        correlation,
                        description,
                        created,
                        updated,
                        ended,
                        error,
                        cancel,
                    ) in rows
                ]
                ids = [row[0] for row in rows]
                jobs.update(zip(ids, chunk, strict=True))
                with_status.update(ids)
                stored.update(ids)
                for job in chunk:
                    by_correlation[job.correlation_id].add(job.id)

    def _index_job(self, job: Job) -> None:
        self.jobs[job.id] = job
        self.by_correlation[job.correlation_id].add(job.id)
        self.by_status[job.status].add(job.id)

    def _add_step(self, step: Step, job_id_of: Callable[[str], str]) -> None:
        step.job_id = job_id_of(step.job_id)
        if step.host is not None:
            step.host = intern(step.host)
        dict.setdefault(self.steps, step.job_id, {})[step.id] = step

    def _add_command(self, command: Command, job_id_of: Callable[[str], str]) -> None:
        command.job_id = job_id_of(command.job_id)
        command.action = intern(command.action)
        dict.setdefault(self.commands, command.job_id, {})[command.id] = command

    def _add_task(self, task: Task, job_id_of: Callable[[str], str]) -> None:
        if task.id in self.tasks:
            return  # already in memory (an unsettled task of a stored job): that copy is live
        task.job_id = job_id_of(task.job_id)
        task.host, task.pool, task.verb = intern(task.host), intern(task.pool), intern(task.verb)
        self._index_task(task)

    def _load_stored(self, job_id: str) -> None:
        """Read an ended job's tree from the store into memory, the first time it is used."""
        if job_id not in self._stored:
            return
        tree = self.store.read_job_tree(job_id)
        job = self.jobs.get(job_id)
        if job is not None and tree.job is not None:
            job.params = tree.job.get("params", {})
            job.result = tree.job.get("result")

        def own(_: str) -> str:
            return job.id if job is not None else job_id

        for doc in tree.steps:
            self._add_step(model.step_from_doc(doc), own)
        for doc in tree.commands:
            self._add_command(model.command_from_doc(doc), own)
        for doc in tree.tasks:
            self._add_task(model.task_from_doc(doc), own)
        self._stored.discard(job_id)
        log.debug(
            "job %s [%s]: tree read from the store on first use",
            job_id,
            job.correlation_id if job is not None else "",
        )

    # -- views -------------------------------------------------------------------------------

    def job_view(self, job_id: str) -> dict[str, Any]:
        """The whole job as the API shows it: steps as a tree, commands, tasks, cancel, locks."""
        job = self.jobs[job_id]
        self._load_stored(job_id)
        view = model.to_doc(job)
        steps = sorted(self.steps.get(job_id, {}).values(), key=lambda s: s.number)
        children: dict[str | None, list[dict[str, Any]]] = collections.defaultdict(list)
        for step in steps:
            children[step.parent_id].append(model.to_doc(step))
        for step_doc in [d for docs in children.values() for d in docs]:
            step_doc["steps"] = children.get(step_doc["id"], [])
        view["steps"] = children.get(None, [])
        view["commands"] = [
            model.to_doc(c)
            for c in sorted(self.commands.get(job_id, {}).values(), key=lambda c: c.created_at)
        ]
        view["tasks"] = [
            model.to_doc(t) for t in sorted(self.job_tasks(job_id), key=lambda t: t.created_at)
        ]
        view["locks"] = [model.to_doc(lock) for lock in self.job_locks(job_id)]
        return view

"""The storage task engine of one simulated host: VDSM's TaskManager and its worker pool.

Public names of the engine are re-exported here (State, Recovery, JobContext, ...), so users
import everything from `vdsm_simulator.tasks`.

Sized for a thousand managers in one process: the queue and the workers are created on first
use and a worker exits when it finds the queue empty, so an idle manager is a few dicts.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import AddTaskError, InvalidParameterException, UnknownTask
from vdsm_simulator.task import JobContext, JobFn, Task
from vdsm_simulator.taskstate import (
    ALLOWED_FROM,
    DONE,
    LEGACY_RESULT,
    LEGACY_STATE,
    State,
    check_move,
)
from vdsm_simulator.taskstore import JobRecord, Recovery, TaskStore

__all__ = [
    "ALLOWED_FROM",
    "DONE",
    "LEGACY_RESULT",
    "LEGACY_STATE",
    "JobContext",
    "JobFn",
    "Recovery",
    "State",
    "Task",
    "TaskManager",
    "TaskStore",
    "check_move",
]

log = logging.getLogger(__name__)

_Item = tuple[Task, Literal["commit", "recover"]]


class TaskManager:
    """One per simulated host, as VDSM has one per HSM."""

    def __init__(
        self,
        clock: SimClock,
        *,
        workers: int = 10,
        queue_size: int = 500,
        recovery_actions: Mapping[str, Callable[..., None]] | None = None,
        store: TaskStore | None = None,
    ) -> None:
        self.clock = clock
        self.store = store
        self.max_workers = workers
        self.queue_size = queue_size
        # Rollback steps by action key; add to it at any time. Called as action(*args).
        self.recovery_actions: dict[str, Callable[..., None]] = dict(recovery_actions or {})
        self._tasks: dict[str, Task] = {}
        self._queue: asyncio.Queue[_Item] | None = None
        self._workers: set[asyncio.Task[None]] = set()
        self._running: dict[str, asyncio.Task[None]] = {}  # task id -> worker running its job
        self._busy = 0
        self._closed = False
        # all_statuses / all_info results by tag; dropped on any change. Published dicts are
        # never mutated afterwards, so a caller may keep one as a snapshot.
        self._statuses: dict[str, dict[str, dict[str, Any]]] = {}
        self._infos: dict[str, dict[str, dict[str, Any]]] = {}

    def __len__(self) -> int:
        return len(self._tasks)

    def __contains__(self, task_id: object) -> bool:
        return task_id in self._tasks

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tasks))

    def ids(self, tag: str = "") -> list[str]:
        return [tid for tid, t in self._tasks.items() if not tag or tag in t.tag]

    @property
    def busy_workers(self) -> int:
        return self._busy

    @property
    def queued(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    def _invalidate(self) -> None:
        if self._statuses:
            self._statuses = {}
        if self._infos:
            self._infos = {}

    # -- creating tasks ------------------------------------------------------------------------

    async def schedule(
        self,
        verb: str,
        job: JobFn,
        *,
        job_name: str | None = None,
        tag: str = "spm",
        persist: bool = True,
        store: TaskStore | None = None,
    ) -> str:
        """Create a task running `job` and return its id once it is queued.

        Mirrors the dispatcher's prepare plus scheduleJob. Waits while the queue is full, as
        VDSM's enqueue blocks; the task is already listed (queued) while it waits.
        """
        task = Task(self, verb, tag)
        task.refs += 1  # prepare holds the task
        try:
            task._update_state(State.preparing)
            task.recovery_policy = "auto"
            if persist:
                task.set_persistence(store if store is not None else self.store)
            task.job = job
            task.jobs = [JobRecord(job_name or verb, f"{job!r} (args: () kwargs: {{}})")]
            task._update_state(State.acquiring)  # -> queued
            if task.state is State.queued:
                try:
                    await self._enqueue(task, "commit")
                except Exception as e:
                    task.error = e
                    task.stop()
            if task.aborting():
                raise task.error
            return task.id
        finally:
            task._decref()

    async def _enqueue(self, task: Task, method: Literal["commit", "recover"]) -> None:
        if self._closed:
            raise AddTaskError()
        if task.id in self._tasks:
            raise AddTaskError(f"Task id already in use: {task.id}")
        self._tasks[task.id] = task
        self._invalidate()
        if self._queue is None:
            self._queue = asyncio.Queue(self.queue_size)
        item: _Item = (task, method)
        if self._queue.full():
            # Shielded so a caller that gives up still leaves the task queued, as in VDSM
            # where the put cannot be interrupted.
            await asyncio.shield(self._queue.put(item))
        else:
            self._queue.put_nowait(item)
        if len(self._workers) < self.max_workers and not self._closed:
            worker = asyncio.get_running_loop().create_task(self._worker())
            self._workers.add(worker)

    async def _worker(self) -> None:
        assert self._queue is not None
        me = asyncio.current_task()
        try:
            while not self._closed:
                if self._queue.empty():  # asked, not raised: QueueEmpty was 3 % of a cancel burst
                    return
                task, method = self._queue.get_nowait()
                if self._tasks.get(task.id) is not task:
                    continue  # dropped while queued (SPM lost): its job never starts
                self._busy += 1
                if me is not None:
                    self._running[task.id] = me
                try:
                    if method == "commit":
                        await task.commit()
                    else:
                        task.recover_loaded()
                except Exception:
                    log.exception("task %s: %s failed", task.id, method)
                finally:
                    self._busy -= 1
                    self._running.pop(task.id, None)
        finally:
            if me is not None:
                self._workers.discard(me)

    # -- the Task.* and Host.*Tasks* verbs -----------------------------------------------------

    def get(self, task_id: str) -> Task:
        """The task, or VDSM's errors: 1000 for an empty id or one containing '.', else 401."""
        if not task_id or "." in task_id:
            raise InvalidParameterException("taskID", task_id)
        task = self._tasks.get(task_id)
        if task is None:
            raise UnknownTask(task_id)
        return task

    def get_status(self, task_id: str) -> dict[str, Any]:
        return dict(self.get(task_id).legacy_status())

    def get_info(self, task_id: str) -> dict[str, Any]:
        return self.get(task_id).info()

    def all_statuses(self, tag: str = "spm") -> dict[str, dict[str, Any]]:
        """Hot path (polled per host): a cached snapshot; do not mutate it."""
        cached = self._statuses.get(tag)
        if cached is None:
            cached = {
                tid: t.legacy_status()
                for tid, t in self._tasks.items()
                if not tag or tag in t.tag  # VDSM matches the tag as a substring
            }
            self._statuses[tag] = cached
        return cached

    def all_info(self, tag: str = "spm") -> dict[str, dict[str, Any]]:
        cached = self._infos.get(tag)
        if cached is None:
            cached = {tid: t.info() for tid, t in self._tasks.items() if not tag or tag in t.tag}
            self._infos[tag] = cached
        return cached

    def all_tasks(self) -> dict[str, dict[str, Any]]:
        return {tid: t.details() for tid, t in self._tasks.items()}

    def stop(self, task_id: str) -> None:
        self.get(task_id).stop(force=False)

    def revert(self, task_id: str) -> None:
        self.get(task_id).rollback()

    def clear(self, task_id: str) -> None:
        self.get(task_id).clean()
        if self._tasks.pop(task_id, None) is not None:
            self._invalidate()

    # -- host life cycle -----------------------------------------------------------------------

    def hold_ref(self, task_id: str) -> Callable[[], None]:
        """Test hook: keep a reference as a concurrent VDSM operation would (revert -> 442)."""
        task = self.get(task_id)
        task.refs += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                task._decref()

        return release

    async def load_persisted(self, store: TaskStore, *, skip_known: bool = False) -> list[str]:
        """spmStart: read the dumped tasks of `store` and queue their recovery.

        Like VDSM's loadDumpedTasks + recoverDumpedTasks: unreadable tasks are skipped, each
        loaded task is saved again, and a task id already known here raises 405 (VDSM never
        unloads tasks on spmStop, so this happens when a host regains SPM). `skip_known`
        leaves such tasks as they are instead (the control API's SPM moves).
        """
        loaded = []
        for snap in store.load_all():
            if skip_known and snap.id in self._tasks:
                continue
            try:
                task = Task.from_snapshot(self, snap)
                task.persistent = True
                task.store = store
                store.create(task.id)
                task.persist()
            except Exception:
                log.exception("skipping dumped task %s", snap.id)
                continue
            loaded.append(task)
        for task in loaded:
            await self._enqueue(task, "recover")
        return [t.id for t in loaded]

    def drop_tag(self, tag: str, *, kill: bool = False) -> list[str]:
        """Forget the in-memory tasks of a tag (VDSM's unloadTasks); running jobs carry on.

        With `kill`, as when an SPM loses its lease and VDSM dies with it, the jobs of those
        tasks are cancelled where they are (nothing more is saved) and queued ones never start.
        """
        dropped = self.ids(tag) if tag else []
        for tid in dropped:
            del self._tasks[tid]
        if dropped:
            self._invalidate()
        if kill:
            for tid in dropped:
                worker = self._running.pop(tid, None)
                if worker is not None:
                    worker.cancel()
                    self._workers.discard(worker)
            self._refill_workers()
        return dropped

    def _refill_workers(self) -> None:
        """Start workers for what is queued after some were cancelled."""
        if self._queue is None or self._closed:
            return
        loop = asyncio.get_running_loop()
        while len(self._workers) < min(self.max_workers, self._queue.qsize()):
            self._workers.add(loop.create_task(self._worker()))

    async def wait_done(self, task_id: str) -> None:
        await self.get(task_id).wait_done()

    async def close(self) -> None:
        """Stop the pool like a dying process: running jobs are cancelled where they are.

        Queued items are dropped (which also releases callers waiting on a full queue);
        task states are left as they were, for load_persisted to find.
        """
        self._closed = True
        workers = list(self._workers)
        for w in workers:
            w.cancel()
        if workers:
            await asyncio.gather(*workers, return_exceptions=True)
        self._workers.clear()
        if self._queue is not None:
            while not self._queue.empty():
                self._queue.get_nowait()

    def raw_table(self) -> list[dict[str, Any]]:
        """Control API view: every task with its internals."""
        return [
            t.details()
            | {
                "aborting": t.aborting(),
                "refs": t.refs,
                "njobs": len(t.jobs),
                "jobs": [j.name for j in t.jobs],
                "recoveries": [
                    {"name": r.name, "action": r.action, "args": list(r.args)} for r in t.recoveries
                ],
                "recoveryPolicy": t.recovery_policy,
                "persistPolicy": t.persist_policy,
                "cleanPolicy": t.clean_policy,
                "persistent": t.persistent,
                "store": str(t.store.directory) if t.store else None,
                "done": t.state in DONE,
            }
            for t in self._tasks.values()
        ]

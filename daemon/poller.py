"""The task poller of one storage pool: one `Host.getAllTasksStatuses` on its SPM per tick.

Never one call per task: a pool with 5,000 tasks costs the SPM the same one call per tick as a
pool with one. The pace adapts (the engine polls every 10 s whatever happens):
- `cancel_interval` while a cancel is pending on the pool (`boost`): someone waits for it, and
  its stopped tasks are settled as soon as they are seen;
- `fast_interval` while a watched task is younger than `young_seconds`, so a finished task is
  noticed within one fast tick;
- otherwise the interval doubles after every tick up to `idle_interval`;
- a failed tick (no SPM, 654, timeout) backs off the same way;
- `poke` (a task started or changed hands) cuts the current wait short only when the poller is
  backed off (waiting longer than `fast_interval`): a poller already on the fast pace polls
  within `fast_interval` anyway, and waking it on every task start polled busy pools several
  times per fast tick. It never polls sooner than its fast pace after the previous poll.
The poller ends when its pool has no task in POLLING; `HostManager.watch` starts it again.

Cost per tick is kept to the pool's watched tasks: the poller keeps them (`tracked`) instead of
scanning every task record of the pool's hosts (which includes every finished job's tasks until
they are purged) three times per tick. A task enters a watched state only through paths that
call `HostManager.watch` (a verb's task id recorded, a revert, a cancel, a restart), which marks
the set for a rescan before the next tick; a rescan also runs every `RESCAN_SECONDS` as a net.
A report that says what the task already says is skipped before any dict is built.

What a good report means for each watched task of the pool (POLLING or ENDED, with a VDSM id):
its status is applied with `Registry.report_task` (`on_task_report` hears of every change). A
POLLING task that is missing from `missing_grace` consecutive good reports becomes LOST, VDSM
state "unknown", and is handled as failed, as the engine does (spec engine-job-model §5); only
reports whose call was sent after the task was known count, so a poll racing the verb that
created the task never counts as a miss. Task ids the SPM lists that no record of the pool owns go
to `on_unknown_tasks` (the orphan reaper decides what they are).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import TYPE_CHECKING

from daemon.model import Task, TaskStatus
from daemon.spm import NoSpm
from daemon.vdsm.errors import NotSpm, VdsmCallError
from daemon.vdsm.verbs import TaskStatusReport

if TYPE_CHECKING:
    from daemon.hosts import HostManager

log = logging.getLogger(__name__)

_WATCHED = (TaskStatus.POLLING, TaskStatus.ENDED)
RESCAN_SECONDS = 30.0  # the longest a watched task can go unseen if a path forgot `watch`


class PoolPoller:
    """Polling state of one pool; it outlives its asyncio task so counters survive a restart."""

    def __init__(self, manager: HostManager, pool: str) -> None:
        self.manager = manager
        self.pool = pool
        self.wake = asyncio.Event()
        self.boost_until = 0.0  # monotonic time until which the pool is polled fast
        self.misses: dict[str, int] = {}  # task id -> consecutive good reports without it
        self.interval = manager.settings.fast_interval
        self.polls = 0  # successful getAllTasksStatuses calls
        self.failures = 0  # consecutive failed ticks
        self.last_poll = 0.0  # monotonic start of the previous call
        self.last_tick = 0.0  # monotonic start of the previous tick (the pace counts from it)
        self.last_poll_seconds = 0.0  # how long the previous good call took
        self.last_spm: str | None = None  # the host the previous good report came from
        self.tracked: dict[str, Task] = {}  # task id -> watched task (POLLING or ENDED, VDSM id)
        self.rescan = True  # `tracked` may miss a task: rebuild it before the next tick
        self.rescanned_at = 0.0  # monotonic time of the last rebuild

    def poke(self) -> None:
        """A task started or changed hands: include it, and poll soon if backed off."""
        self.rescan = True
        if self.interval > self.manager.settings.fast_interval:
            self.wake.set()

    def watched(self) -> list[Task]:
        """The pool's watched tasks, rebuilt from the registry when marked (or as a net)."""
        now = time.monotonic()
        if self.rescan or now - self.rescanned_at > RESCAN_SECONDS:
            self.rescan = False
            self.rescanned_at = now
            self.tracked = {
                t.id: t
                for t in self.manager.pool_tasks(self.pool)
                if t.status in _WATCHED and t.vdsm_id is not None
            }
        else:
            tasks = self.manager.registry.tasks
            for task_id, task in list(self.tracked.items()):
                if task.status not in _WATCHED or tasks.get(task_id) is not task:
                    del self.tracked[task_id]  # settled (or purged) since
        return list(self.tracked.values())

    def boost(self, seconds: float) -> None:
        self.boost_until = max(self.boost_until, time.monotonic() + seconds)
        self.interval = self._fastest()
        self.wake.set()

    async def run(self) -> None:
        while True:
            settings = self.manager.settings  # read each round: a reload may replace them
            self.wake.clear()  # a poke from now on asks for one more poll after this one
            self.last_tick = time.monotonic()
            try:
                ok = await self.poll_once()
            except Exception:  # a bug in a callback or the registry must not end polling
                log.exception("pool %s: task poll failed unexpectedly", self.pool)
                ok = False
            self.failures = 0 if ok else self.failures + 1
            active = [t for t in self.watched() if t.status is TaskStatus.POLLING]
            if ok and not active:
                log.debug("pool %s: no task to poll; poller stops", self.pool)
                return
            now = time.time()
            young = any(now - t.created_at < settings.young_seconds for t in active)
            if ok and self.boost_until > time.monotonic():
                self.interval = self._fastest()
            elif ok and young:
                self.interval = settings.fast_interval
            else:
                self.interval = min(self.interval * 2, settings.idle_interval)
            await self._pause(self.interval)

    def _fastest(self) -> float:
        """The shortest pace allowed now: the cancel pace while boosted, else the fast one."""
        settings = self.manager.settings
        if self.boost_until > time.monotonic():
            return min(settings.cancel_interval, settings.fast_interval)
        return settings.fast_interval

    async def _pause(self, interval: float) -> None:
        """Wait until `interval` after the previous tick started (a steady pace whatever its
        round trip took), or less when poked, but never sooner than the fast pace allows."""
        wait = self.last_tick + interval - time.monotonic()
        if wait > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self.wake.wait()
        floor = self.last_tick + self._fastest() - time.monotonic()
        if floor > 0:
            await asyncio.sleep(floor)

    async def poll_once(self) -> bool:
        """One tick; False when no good report was had (the tick is then retried with backoff)."""
        manager, pool = self.manager, self.pool
        try:
            spm = await manager.spm(pool)
        except NoSpm as e:
            log.warning("pool %s: task poll skipped: %s", pool, e)
            return False
        expected = {t.id for t in self.watched() if t.status is TaskStatus.POLLING}
        self.last_poll = time.monotonic()
        try:
            reports = await manager.vdsm(spm).task_statuses()
        except NotSpm:
            manager.polled(spm, time.monotonic() - self.last_poll, False)
            log.info("pool %s host %s: not SPM any more (654); rediscovering", pool, spm)
            manager.forget_spm(pool)
            return False
        except VdsmCallError as e:
            manager.polled(spm, time.monotonic() - self.last_poll, False)
            log.warning("pool %s host %s: getAllTasksStatuses failed: %s", pool, spm, e)
            return False
        self.last_poll_seconds = time.monotonic() - self.last_poll
        manager.polled(spm, self.last_poll_seconds, True)
        self.polls += 1
        manager.polls[pool] = manager.polls.get(pool, 0) + 1
        if spm != self.last_spm:
            self.misses.clear()  # a new SPM: misses seen on the old one prove nothing here
            self.last_spm = spm
        self.apply(spm, reports, expected)
        return True

    def apply(self, spm: str, reports: dict[str, TaskStatusReport], expected: set[str]) -> None:
        manager, pool = self.manager, self.pool
        registry = manager.registry
        grace = manager.settings.missing_grace
        known: set[str] = set()
        for task in self.watched():
            vdsm_id = task.vdsm_id
            if vdsm_id is None or task.status not in _WATCHED:
                continue  # changed by a callback earlier in this loop
            known.add(vdsm_id)
            report = reports.get(vdsm_id)
            if report is not None:
                self.misses.pop(task.id, None)
                if (report.state, report.result, report.code, report.message) == (
                    task.vdsm_state,
                    task.vdsm_result,
                    task.code,
                    task.message,
                ):
                    continue  # what the task already says (`report_task` would do nothing)
                if registry.report_task(task, report.as_dict()):
                    manager.notify_task(task)
                continue
            if task.status is not TaskStatus.POLLING or task.id not in expected:
                continue  # an ENDED task is settled by its command; a new one gets a fair chance
            misses = self.misses.get(task.id, 0) + 1
            if misses < grace:
                self.misses[task.id] = misses
                continue
            self.misses.pop(task.id, None)
            log.warning(
                "pool %s host %s: job %s task %s missing from %d good reports; LOST",
                pool,
                spm,
                task.job_id,
                vdsm_id,
                misses,
            )
            registry.set_task_status(
                task,
                TaskStatus.LOST,
                vdsm_state="unknown",
                message="missing from the SPM's task list",
            )
            manager.notify_task(task)
        for task_id in [t for t in self.misses if t not in expected]:
            del self.misses[task_id]  # settled or forgotten meanwhile
        unknown = sorted(manager.unowned(pool, [i for i in reports if i not in known]))
        if unknown:
            manager.notify_unknown(pool, spm, unknown)

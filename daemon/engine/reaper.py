"""The orphan reaper: stops and clears VDSM tasks that no running job owns.

Two kinds of orphans exist: tasks an SPM reports that the daemon has no record of (a verb whose
reply was lost in a crash), and tasks of jobs that ended without clearing them (forced cancels,
hosts that never came back). Both would otherwise sit on the SPM forever — the engine's
"taskcleaner.sh" problem. An unknown task is only touched after `grace` seconds, and never while a
creating verb is still in flight on its pool, so a task whose id is about to be recorded is safe.

Its verbs follow task_verbs.py: a 401 means "gone" only from a host that is still the pool's SPM
(one that just lost the role knows none of the pool's tasks, which live on with the next SPM),
and a stop repeated on a task already aborting (411) counts as sent.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from daemon.engine.task_verbs import Refusal, TaskVerb, confirm_still_spm, send_to_spm
from daemon.errors import DaemonError
from daemon.model import TaskStatus
from daemon.registry import Registry
from daemon.vdsm.errors import NotSpm, UnknownTask, VdsmCallError

if TYPE_CHECKING:
    from daemon.hosts import HostManager

log = logging.getLogger(__name__)


@dataclass
class ReapRecord:
    pool: str
    host: str  # the host taken for the pool's SPM when the task was seen (or resolved)
    vdsm_id: str
    first_seen: float
    stop_sent: bool = False
    actions: list[str] = field(default_factory=list)


class Reaper:
    def __init__(self, registry: Registry, hosts: HostManager, *, grace: float = 30.0) -> None:
        self.registry = registry
        self.hosts = hosts
        self.grace = grace
        self.unknown: dict[tuple[str, str], ReapRecord] = {}
        self.reaped: list[ReapRecord] = []  # what it did, for the API and tests

    async def on_unknown_tasks(self, pool: str, host: str, ids: list[str]) -> None:
        """Called by a pool's poller with the ids its SPM reports that no record owns."""
        ids = self.registry.untracked_vdsm_ids(ids)  # an ended job's tasks stay on disk
        now = time.monotonic()
        current = {(host, i) for i in ids}
        for key in list(self.unknown):
            if key[0] == host and key not in current:
                del self.unknown[key]  # gone on its own (cleared elsewhere)
        in_flight = any(
            t.pool == pool and t.status is TaskStatus.SUBMITTING
            for t in self.registry.tasks.values()
        )
        for vdsm_id in ids:
            record = self.unknown.setdefault((host, vdsm_id), ReapRecord(pool, host, vdsm_id, now))
            if in_flight or now - record.first_seen < self.grace:
                continue
            await self._reap(record)

    async def reap_orphans(self) -> None:
        """Tasks of ended jobs marked ORPHAN: stop and clear them once their host answers."""
        for task in list(self.registry.tasks.values()):
            if task.status is not TaskStatus.ORPHAN or not task.vdsm_id:
                continue
            try:
                host = await self.hosts.spm(task.pool)  # SPM tasks move with the role
            except DaemonError as e:
                log.info(
                    "reaper: task %s of pool %s waits for an SPM: %s", task.vdsm_id, task.pool, e
                )
                continue
            record = ReapRecord(task.pool, host, task.vdsm_id, time.monotonic(), task.stop_sent)
            if await self._reap(record):
                self.registry.set_task_status(task, TaskStatus.CLEARED)
            elif record.stop_sent and not task.stop_sent:
                # remembered, so the next round waits for the rollback instead of stopping again
                self.registry.set_task_status(task, TaskStatus.ORPHAN, stop_sent=True)

    async def _reap(self, record: ReapRecord) -> bool:
        """Stop then clear one task; returns True once it is gone from the pool's SPM. A host
        that lost the role meanwhile is forgotten and the task is left for the next round,
        which finds it on the new SPM."""
        try:
            gone = await self._stop_or_clear(record)
        except NotSpm as e:
            log.info(
                "reaper: task %s of pool %s: %s; retried on the new SPM",
                record.vdsm_id,
                record.pool,
                e,
            )
            self.unknown.pop((record.host, record.vdsm_id), None)  # the new SPM reports it
            return False
        except VdsmCallError as e:
            log.warning("reaper: task %s on %s: %s", record.vdsm_id, record.host, e)
            return False
        if not gone:
            return False
        self.unknown.pop((record.host, record.vdsm_id), None)
        self.reaped.append(record)
        log.info("reaper: task %s on %s %s", record.vdsm_id, record.host, ", ".join(record.actions))
        return True

    async def _stop_or_clear(self, record: ReapRecord) -> bool:
        """One step of a task's end: stop it while it runs, clear it once finished."""
        vdsm = self.hosts.vdsm(record.host)
        try:
            status = await vdsm.task_status(record.vdsm_id)
        except UnknownTask as e:
            await confirm_still_spm(self.hosts, record.host, record.pool, e)
            record.actions.append("already gone")
            return True
        if status.state != "finished":
            if not record.stop_sent:
                refused = await self._send(record, TaskVerb.STOP)
                record.stop_sent = True
                record.actions.append("stopped" if refused is None else "already aborting")
            return False
        refused = await self._send(record, TaskVerb.CLEAR)
        record.actions.append("cleared" if refused is None else "already gone")
        return True

    async def _send(self, record: ReapRecord, verb: TaskVerb) -> Refusal | None:
        return await send_to_spm(
            self.hosts, record.host, record.pool, record.vdsm_id, verb, about="reaper"
        )

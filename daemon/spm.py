"""SPM discovery per storage pool, and spmStart when a pool has none.

Every SPM-only verb (task creation, `Host.getAllTasksStatuses`) needs the pool's SPM host. The
answer is cached per pool; a miss, or a caller that got 654 and called `forget`, makes the next
`spm(pool)` ask every reachable host of the pool for `StoragePool.getSpmStatus`. When none is
SPM and none is contending, `StoragePool.spmStart` is sent to one reachable host (prevID and
prevLver from the statuses, as the engine does), its task is followed with `Task.getStatus` until
it finishes and then cleared, and the pool is asked again. All of it is bounded by
`spm_start_timeout`; `NoSpm` says why it failed. One discovery per pool runs at a time, so a burst
of callers after an SPM loss sends one round of calls and at most one spmStart.

Not done (see the report of issue 3): fencing. A pool whose SPM is unreachable gets a new SPM on
another host as soon as the monitor has marked the old one NON_RESPONSIVE; real VDSM's lease
(sanlock) is what keeps two SPMs apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING

from daemon.errors import Unavailable
from daemon.model import Host, HostStatus
from daemon.registry import Registry
from daemon.vdsm.errors import IsSpm, VdsmCallError
from daemon.vdsm.verbs import VdsmHost

if TYPE_CHECKING:
    from daemon.hosts import HostSettings

log = logging.getLogger(__name__)

REACHABLE = (HostStatus.UP, HostStatus.PREPARING_FOR_MAINTENANCE)


class NoSpm(Unavailable):
    """The pool has no SPM and none could be started (the message says why)."""

    code = "no_spm"


class SpmFinder:
    def __init__(
        self, registry: Registry, settings: HostSettings, vdsm: Callable[[str], VdsmHost]
    ) -> None:
        self.registry = registry
        self.settings = settings
        self._vdsm = vdsm
        self._spm: dict[str, str] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.starts = 0  # spmStart calls sent (metrics, tests)

    def cached(self, pool: str) -> str | None:
        return self._spm.get(pool)

    def forget(self, pool: str) -> None:
        """Drop the cached SPM of a pool (a caller got 654 Not SPM from it)."""
        name = self._spm.pop(pool, None)
        if name is not None:
            log.info("pool %s: forgetting SPM %s", pool, name)

    def forget_host(self, name: str) -> None:
        """Drop every pool's cached SPM that is this host (it became unreachable or was removed)."""
        for pool, spm in list(self._spm.items()):
            if spm == name:
                self.forget(pool)

    async def spm(self, pool: str) -> str:
        """The pool's SPM host name, discovered (and started on a chosen host) when not cached."""
        found = self._spm.get(pool)
        if found is not None:
            return found
        lock = self._locks.setdefault(pool, asyncio.Lock())
        async with lock:
            found = self._spm.get(pool)
            if found is not None:
                return found
            try:
                async with asyncio.timeout(self.settings.spm_start_timeout):
                    found = await self._find(pool)
            except TimeoutError:
                raise NoSpm(
                    f"pool {pool}: no SPM after {self.settings.spm_start_timeout:g} s "
                    "of discovery and spmStart"
                ) from None
            self._spm[pool] = found
            self._mark(pool, found)
            log.info("pool %s: SPM is %s", pool, found)
            return found

    async def _find(self, pool: str) -> str:
        attempt = 0
        while True:
            members = sorted(
                (h for h in self.registry.hosts.values() if h.pool == pool), key=lambda h: h.name
            )
            reachable = [h for h in members if h.status in REACHABLE]
            if not reachable:
                raise NoSpm(
                    f"pool {pool}: no reachable host to ask for the SPM "
                    f"({len(members)} registered, none UP)"
                )
            found = await self._discover(pool, reachable, attempt)
            if found is not None:
                return found
            attempt += 1
            await asyncio.sleep(max(self.settings.fast_interval, 0.05))

    async def _discover(self, pool: str, reachable: list[Host], attempt: int) -> str | None:
        """One round: the SPM if a host says so; else spmStart on one candidate."""
        statuses = await asyncio.gather(*(self._status(pool, h) for h in reachable))
        answered = [(h, s) for h, s in zip(reachable, statuses, strict=True) if s is not None]
        for host, (role, _, _) in answered:
            if role == "SPM":
                return host.name
        if not answered:
            log.warning("pool %s: no host answered getSpmStatus", pool)
            return None
        if any(role == "Contend" for _, (role, _, _) in answered):
            log.info("pool %s: an SPM start is in progress; waiting", pool)
            return None
        prev_id = max(spm_id for _, (_, spm_id, _) in answered)
        prev_lver = max(lver for _, (_, _, lver) in answered)
        chosen = answered[attempt % len(answered)][0]  # rotate when a start failed
        return await self._start(pool, chosen, prev_id, prev_lver)

    async def _status(self, pool: str, host: Host) -> tuple[str, int, int] | None:
        try:
            return await self._vdsm(host.name).spm_status(pool)
        except VdsmCallError as e:
            log.warning("pool %s host %s: getSpmStatus failed: %s", pool, host.name, e)
            return None

    async def _start(self, pool: str, host: Host, prev_id: int, prev_lver: int) -> str | None:
        vdsm = self._vdsm(host.name)
        log.info(
            "pool %s host %s: no SPM in the pool; spmStart (prevID %d, prevLver %d)",
            pool,
            host.name,
            prev_id,
            prev_lver,
        )
        self.starts += 1
        try:
            task_id = await vdsm.spm_start(pool, prev_id, prev_lver)
        except IsSpm:
            task_id = None  # it became SPM meanwhile: check below
        except VdsmCallError as e:
            log.warning("pool %s host %s: spmStart refused: %s", pool, host.name, e)
            return None
        if task_id is not None:
            try:
                while (status := await vdsm.task_status(task_id)).state != "finished":  # noqa: ASYNC110 - remote state
                    await asyncio.sleep(self.settings.fast_interval)
            except VdsmCallError as e:
                log.warning("pool %s host %s: spmStart task %s: %s", pool, host.name, task_id, e)
                return None
            with contextlib.suppress(VdsmCallError):  # unpersisted: VDSM drops it in any state
                await vdsm.clear_task(task_id)
            if status.code:
                log.warning(
                    "pool %s host %s: spmStart task %s failed: [%d] %s",
                    pool,
                    host.name,
                    task_id,
                    status.code,
                    status.message,
                )
                return None
        try:
            role, _, _ = await vdsm.spm_status(pool)
        except VdsmCallError as e:
            log.warning("pool %s host %s: getSpmStatus after spmStart: %s", pool, host.name, e)
            return None
        return host.name if role == "SPM" else None

    def _mark(self, pool: str, name: str) -> None:
        """Record the role on the hosts of the pool (shown by the API)."""
        for host in self.registry.hosts.values():
            if host.pool == pool and host.spm != (host.name == name):
                host.spm = host.name == name
                self.registry.update_host(host)

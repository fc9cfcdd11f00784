"""Hosts: the host registry, a monitor per host, SPM discovery per pool, a task poller per pool.

Polling follows the engine's shape but not its pace: one `Host.getAllTasksStatuses` per pool per
tick on the pool's SPM, never one call per task; fast while the pool has young tasks or a cancel
is pending (`boost`), backing off to `idle_interval` otherwise, and backing off on failures. A task
that a good report stops listing is given `missing_grace` seconds, then marked LOST and treated
as failed (the engine deletes such rows without end logic; we end them). Tasks an SPM lists that
no record owns go to `on_unknown_tasks` (the orphan reaper).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import Conflict, InvalidParams, NotFound, Unavailable
from daemon.model import Host, HostStatus, Task, TaskStatus
from daemon.registry import Registry
from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import NotSpm, VdsmCallError
from daemon.vdsm.http_client import HttpRpcClient
from daemon.vdsm.verbs import RpcClient, VdsmHost

log = logging.getLogger(__name__)

_UUID_LEN = 36
_REACHABLE = (HostStatus.UP, HostStatus.PREPARING_FOR_MAINTENANCE)


class NoSpm(Unavailable):
    code = "no_spm"


@dataclass(frozen=True)
class HostSettings:
    fast_interval: float = 0.2  # task polls while a pool has young tasks or a cancel
    idle_interval: float = 5.0  # the slowest task poll
    young_seconds: float = 30.0  # a task is polled fast for this long after it starts
    missing_grace: float = 10.0  # seconds a task may be missing from good reports
    monitor_interval: float = 2.0  # seconds between monitor calls per host
    failures_before_non_responsive: int = 3  # missed monitor calls before NON_RESPONSIVE
    call_timeout: float = 180.0  # the engine's vdsTimeout
    spm_start_timeout: float = 60.0  # how long to wait for an SPM to appear or start
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


VmReport = Callable[[str, list[dict[str, Any]]], None]
VmEvent = Callable[[str, str, dict[str, Any]], None]
UnknownTasks = Callable[[str, str, list[str]], None]
TaskReport = Callable[[Task], None]


class HostManager:
    def __init__(
        self,
        registry: Registry,
        *,
        settings: HostSettings | None = None,
        client_factory: Callable[[Host], RpcClient] | None = None,
    ) -> None:
        self.registry = registry
        self.settings = settings or HostSettings()
        self._client_factory = client_factory or self._default_client
        self._vdsm: dict[str, VdsmHost] = {}
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._poll_wake: dict[str, asyncio.Event] = {}
        self._boost_until: dict[str, float] = {}
        self._spm: dict[str, str] = {}
        self._spm_locks: dict[str, asyncio.Lock] = {}
        self._missing_since: dict[str, float] = {}
        self.on_vm_report: list[VmReport] = []
        self.on_vm_event: list[VmEvent] = []
        self.on_unknown_tasks: list[UnknownTasks] = []
        self.on_task_report: list[TaskReport] = []
        self.polls: dict[str, int] = {}  # getAllTasksStatuses calls per pool (metrics, tests)

    # -- registry of hosts -------------------------------------------------------------------

    async def start(self) -> None:
        for host in self.registry.hosts.values():
            self._connect(host)

    async def add_host(
        self,
        name: str,
        address: str,
        port: int,
        pool: str,
        *,
        transport: str = "stomp",
        tls: bool = False,
        status: HostStatus | None = None,
    ) -> Host:
        if name in self.registry.hosts:
            raise Conflict(f"a host named {name!r} already exists")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            raise InvalidParams(f"port must be 1..65535, got {port!r}")
        if not isinstance(pool, str) or len(pool) != _UUID_LEN:
            raise InvalidParams(f"pool must be a storage pool UUID, got {pool!r}")
        if transport not in ("stomp", "http"):
            raise InvalidParams(f"transport must be stomp or http, got {transport!r}")
        host = Host(
            name, address, port, pool, transport, tls, status=status or HostStatus.NON_RESPONSIVE
        )
        await self.registry.put_host(host)
        self._connect(host)
        if status is None:
            await self._check(host)  # reachable hosts are UP before the call returns
        return host

    async def remove_host(self, name: str) -> None:
        if name not in self.registry.hosts:
            raise NotFound(f"no host named {name!r}")
        busy = [
            t
            for t in self.registry.host_tasks(name)
            if t.status not in (TaskStatus.CLEARED, TaskStatus.LOST)
        ]
        if busy:
            raise Conflict(
                f"host {name} still has {len(busy)} tasks of jobs "
                f"{sorted({t.job_id for t in busy})}"
            )
        monitor = self._monitors.pop(name, None)
        if monitor is not None:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
        vdsm = self._vdsm.pop(name, None)
        if vdsm is not None:
            await vdsm.client.close()
        for pool, spm in list(self._spm.items()):
            if spm == name:
                del self._spm[pool]
        await self.registry.delete_host(name)

    def vdsm(self, name: str) -> VdsmHost:
        try:
            return self._vdsm[name]
        except KeyError:
            raise NotFound(f"no host named {name!r}") from None

    def _default_client(self, host: Host) -> RpcClient:
        ctx = self._ssl_context() if host.tls else None
        if host.transport == "http":
            return HttpRpcClient(
                host.address,
                host.port,
                host.name,
                ssl_context=ctx,
                timeout=self.settings.call_timeout,
            )
        return StompRpcClient(
            host.address,
            host.port,
            host_header=host.name,
            ssl_context=ctx,
            timeout=self.settings.call_timeout,
        )

    def _ssl_context(self) -> ssl.SSLContext:
        s = self.settings
        ctx = ssl.create_default_context(cafile=str(s.tls_ca) if s.tls_ca else None)
        if s.tls_cert and s.tls_key:
            ctx.load_cert_chain(s.tls_cert, s.tls_key)
        return ctx

    def _connect(self, host: Host) -> None:
        client = self._client_factory(host)
        name = host.name
        client.on_event(lambda method, params: self._event(name, method, params))
        self._vdsm[name] = VdsmHost(name, client, timeout=self.settings.call_timeout)
        self._monitors[name] = asyncio.create_task(self._monitor(name), name=f"monitor-{name}")

    def _event(self, host: str, method: str, params: dict[str, Any]) -> None:
        for callback in list(self.on_vm_event):
            callback(host, method, params)

    # -- monitor -------------------------------------------------------------------------------

    async def _monitor(self, name: str) -> None:
        while True:
            host = self.registry.hosts.get(name)
            if host is None:
                return
            await self._check(host)
            delay = self.settings.monitor_interval
            if host.failures >= self.settings.failures_before_non_responsive:
                delay = min(delay * 2 ** min(host.failures - 2, 4), 30.0)
            await asyncio.sleep(delay)

    async def _check(self, host: Host) -> None:
        vdsm = self._vdsm[host.name]
        try:
            async with asyncio.timeout(max(self.settings.monitor_interval * 2, 1.0)):
                await vdsm.ping()
                vms = await vdsm.vm_stats()
        except (VdsmCallError, TimeoutError) as e:
            host.failures += 1
            if (
                host.failures >= self.settings.failures_before_non_responsive
                and host.status is HostStatus.UP
            ):
                log.warning(
                    "host %s (pool %s): NON_RESPONSIVE after %d failures: %s",
                    host.name,
                    host.pool,
                    host.failures,
                    e,
                )
                host.status = HostStatus.NON_RESPONSIVE
                self._forget_spm_host(host.name)
                self.registry.update_host(host)
            return
        host.failures = 0
        host.last_seen = time.time()
        if host.status is HostStatus.NON_RESPONSIVE:
            log.info("host %s (pool %s): UP", host.name, host.pool)
            host.status = HostStatus.UP
            self.registry.update_host(host)
        for callback in list(self.on_vm_report):
            callback(host.name, vms)

    # -- SPM -----------------------------------------------------------------------------------

    def forget_spm(self, pool: str) -> None:
        self._spm.pop(pool, None)

    def _forget_spm_host(self, name: str) -> None:
        for pool, spm in list(self._spm.items()):
            if spm == name:
                del self._spm[pool]

    async def spm(self, pool: str) -> str:
        """The pool's SPM host, discovered (and started on a chosen host when there is none)."""
        if pool in self._spm:
            return self._spm[pool]
        lock = self._spm_locks.setdefault(pool, asyncio.Lock())
        async with lock:
            if pool in self._spm:
                return self._spm[pool]
            deadline = time.monotonic() + self.settings.spm_start_timeout
            while True:
                found = await self._discover(pool, start=time.monotonic() < deadline)
                if found is not None:
                    self._spm[pool] = found
                    log.info("pool %s: SPM is %s", pool, found)
                    return found
                if time.monotonic() >= deadline:
                    raise NoSpm(f"pool {pool} has no SPM and none could be started")
                await asyncio.sleep(min(1.0, self.settings.fast_interval * 5))

    async def _discover(self, pool: str, *, start: bool) -> str | None:
        members = [h for h in self.registry.hosts.values() if h.pool == pool]
        candidates: list[Host] = []
        prev_id, prev_lver, contending = -1, -1, False
        for host in members:
            if host.status not in _REACHABLE:
                continue
            try:
                role, spm_id, lver = await self._vdsm[host.name].spm_status(pool)
            except VdsmCallError as e:
                log.warning("pool %s: SPM status of %s: %s", pool, host.name, e)
                continue
            prev_id, prev_lver = max(prev_id, spm_id), max(prev_lver, lver)
            if role == "SPM":
                self._mark_spm(pool, host.name)
                return host.name
            contending |= role == "Contend"
            candidates.append(host)
        if not start or contending or not candidates:
            return None
        chosen = candidates[0]
        vdsm = self._vdsm[chosen.name]
        log.info("pool %s: no SPM; starting one on %s", pool, chosen.name)
        try:
            task_id = await vdsm.spm_start(pool, prev_id, prev_lver)
            while (status := await vdsm.task_status(task_id)).state != "finished":  # noqa: ASYNC110 - remote state
                await asyncio.sleep(self.settings.fast_interval)
            with contextlib.suppress(VdsmCallError):
                await vdsm.clear_task(task_id)
            if status.code:
                log.warning(
                    "pool %s: spmStart on %s failed: [%d] %s",
                    pool,
                    chosen.name,
                    status.code,
                    status.message,
                )
                return None
            role, _, _ = await vdsm.spm_status(pool)
        except VdsmCallError as e:
            log.warning("pool %s: spmStart on %s: %s", pool, chosen.name, e)
            return None
        if role == "SPM":
            self._mark_spm(pool, chosen.name)
            return chosen.name
        return None

    def _mark_spm(self, pool: str, name: str) -> None:
        for host in self.registry.hosts.values():
            if host.pool == pool and host.spm != (host.name == name):
                host.spm = host.name == name
                self.registry.update_host(host)

    # -- task polling ----------------------------------------------------------------------------

    def watch(self, pool: str) -> None:
        """Make sure the pool is polled (now): called whenever a task starts or changes hands."""
        poller = self._pollers.get(pool)
        if poller is None or poller.done():
            self._poll_wake[pool] = asyncio.Event()
            self._pollers[pool] = asyncio.create_task(self._poll(pool), name=f"poller-{pool}")
        else:
            self._poll_wake[pool].set()

    def boost(self, pool: str, seconds: float = 60.0) -> None:
        """Poll fast for a while (a cancel is pending on this pool)."""
        self._boost_until[pool] = time.monotonic() + seconds
        self.watch(pool)

    def pool_tasks(self, pool: str) -> list[Task]:
        members = [h.name for h in self.registry.hosts.values() if h.pool == pool]
        return [t for name in members for t in self.registry.host_tasks(name) if t.pool == pool]

    async def _poll(self, pool: str) -> None:
        interval = self.settings.fast_interval
        while True:
            ok = await self._poll_once(pool)
            tasks = self.pool_tasks(pool)
            active = [t for t in tasks if t.status is TaskStatus.POLLING]
            if ok and not active:
                return  # nothing to watch; the next watch() starts a poller again
            now = time.time()
            young = any(now - t.created_at < self.settings.young_seconds for t in active)
            boosted = self._boost_until.get(pool, 0.0) > time.monotonic()
            if ok and (young or boosted):
                interval = self.settings.fast_interval
            else:
                interval = min(interval * 2, self.settings.idle_interval)
            wake = self._poll_wake[pool]
            wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(interval):
                    await wake.wait()

    async def _poll_once(self, pool: str) -> bool:
        try:
            spm = await self.spm(pool)
            started = time.perf_counter()
            reports = await self._vdsm[spm].task_statuses()
        except NotSpm:
            self.forget_spm(pool)
            return False
        except (VdsmCallError, NoSpm) as e:
            log.warning("pool %s: task poll failed: %s", pool, e)
            self.forget_spm(pool)
            return False
        self.last_poll_seconds = time.perf_counter() - started
        self.polls[pool] = self.polls.get(pool, 0) + 1
        now = time.monotonic()
        known: set[str] = set()
        for task in self.pool_tasks(pool):
            if task.vdsm_id is None:
                continue
            known.add(task.vdsm_id)
            if task.status is not TaskStatus.POLLING:
                continue
            report = reports.get(task.vdsm_id)
            if report is None:
                since = self._missing_since.setdefault(task.id, now)
                if now - since >= self.settings.missing_grace:
                    log.warning(
                        "job %s: task %s missing from %s's reports; LOST",
                        task.job_id,
                        task.vdsm_id,
                        spm,
                    )
                    self.registry.set_task_status(
                        task,
                        TaskStatus.LOST,
                        vdsm_state="unknown",
                        message="missing from the SPM's task list",
                    )
                    self._missing_since.pop(task.id, None)
                    self._notify(task)
                continue
            self._missing_since.pop(task.id, None)
            if self.registry.report_task(task, report.as_dict()):
                self._notify(task)
        unknown = sorted(set(reports) - known)
        if unknown:
            for callback in list(self.on_unknown_tasks):
                callback(pool, spm, unknown)
        return True

    def _notify(self, task: Task) -> None:
        for callback in list(self.on_task_report):
            callback(task)

    def sweep(self) -> None:
        """Poll every pool once (housekeeping: finds orphans on pools with nothing watched)."""
        for pool in {h.pool for h in self.registry.hosts.values()}:
            self.watch(pool)

    async def close(self) -> None:
        tasks = [*self._monitors.values(), *self._pollers.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._monitors.clear()
        self._pollers.clear()
        for vdsm in self._vdsm.values():
            await vdsm.client.close()
        self._vdsm.clear()


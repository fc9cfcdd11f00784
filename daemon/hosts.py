"""Hosts: the host registry, a monitor per host, and the wiring of SPM discovery and task polling.

`HostManager` owns one persistent JSON-RPC client per host (STOMP, or HTTP for tools), wrapped
in `VdsmHost` for typed verbs. It runs:
- a monitor per host: `Host.ping2` and `Host.getAllVmStats` every `monitor_interval`; a host is
  NON_RESPONSIVE after `failures_before_non_responsive` consecutive failures (then retried with
  backoff) and UP again at its first good answer. VM lists go to `on_vm_report`, and the host's
  events (`|virt|VM_status|`, `|virt|VM_migration_status|`, `|jobs|status|`, ...) to `on_vm_event`;
- SPM discovery per pool (`daemon.spm`);
- one task poller per pool with watched tasks (`daemon.poller`).
State changes go through the `Registry`; callbacks are plain functions, and one that raises is
logged and does not stop the monitor or the poller that called it.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from daemon.errors import Conflict, InvalidParams, NotFound
from daemon.model import TASK_SETTLED, Host, HostStatus, Task
from daemon.poller import PoolPoller
from daemon.registry import Registry
from daemon.spm import NoSpm, SpmFinder
from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import VdsmCallError
from daemon.vdsm.http_client import HttpRpcClient
from daemon.vdsm.verbs import RpcClient, VdsmHost

__all__ = ["HostManager", "HostSettings", "NoSpm"]

log = logging.getLogger(__name__)

TRANSPORTS = ("stomp", "http")


@dataclass(frozen=True)
class HostSettings:
    """Monitoring and polling knobs; `daemon.config` fills them from [polling] and [tls]."""

    fast_interval: float = 0.5  # s between task polls while a pool has young tasks
    cancel_interval: float = 0.2  # s between task polls while a cancel is pending on the pool
    idle_interval: float = 5.0  # s: the slowest task poll (the engine polls every 10 s)
    young_seconds: float = 30.0  # s a task counts as young (polled fast) after it starts
    missing_grace: int = 3  # consecutive good reports a POLLING task may be missing from
    monitor_interval: float = 2.0  # s between monitor calls per host
    failures_before_non_responsive: int = 3  # consecutive monitor failures before NON_RESPONSIVE
    call_timeout: float = 180.0  # s per VDSM call (the engine's vdsTimeout)
    spm_start_timeout: float = 60.0  # s to find an SPM, spmStart included
    monitor_backoff_max: float = 30.0  # s: the slowest retry of a NON_RESPONSIVE host
    tls_cert: Path | None = None
    tls_key: Path | None = None
    tls_ca: Path | None = None


VmReport = Callable[[str, list[dict[str, Any]]], None]  # (host, Host.getAllVmStats)
VmEvent = Callable[[str, str, dict[str, Any]], None]  # (host, event method, params)
UnknownTasks = Callable[[str, str, list[str]], None]  # (pool, SPM host, VDSM task ids)
TaskReport = Callable[[Task], None]  # a task whose VDSM status changed (or became LOST)
PollTimed = Callable[[str, float, bool], None]  # (host, getAllTasksStatuses round trip s, ok)


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
        self._pollers: dict[str, asyncio.Task[None]] = {}  # pool -> running poller
        self._poll_state: dict[str, PoolPoller] = {}
        self._spm = SpmFinder(registry, self.settings, self.vdsm)
        self.on_vm_report: list[VmReport] = []
        self.on_vm_event: list[VmEvent] = []
        self.on_unknown_tasks: list[UnknownTasks] = []
        self.on_task_report: list[TaskReport] = []
        self.polls: dict[str, int] = {}  # good getAllTasksStatuses calls per pool (metrics, tests)
        self.on_poll: PollTimed | None = None  # after every task poll (a latency histogram)

    # -- registry of hosts -------------------------------------------------------------------

    async def start(self) -> None:
        """Connect to every host already in the registry (loaded from the store)."""
        for host in list(self.registry.hosts.values()):
            if host.name not in self._vdsm:
                self._connect(host)

    def update_settings(self, settings: HostSettings) -> None:
        """A reload: monitors, pollers and SPM discovery use the new values from their next
        round; call_timeout and [tls] apply to connections made from then on."""
        self.settings = settings
        self._spm.settings = settings

    def hosts(self) -> list[Host]:
        return sorted(self.registry.hosts.values(), key=lambda h: h.name)

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
        """Register, connect and start monitoring a host.

        Without `status` the host is checked once before this returns, so a reachable host is
        UP at once; AddHost passes INSTALLING, which the monitor leaves alone.
        """
        _validate(name, address, port, pool, transport, tls)
        if name in self.registry.hosts:
            raise Conflict(f"a host named {name!r} already exists")
        host = Host(
            name, address, port, pool, transport, tls, status=status or HostStatus.NON_RESPONSIVE
        )
        await self.registry.put_host(host)
        self._connect(host)
        log.info("host %s (pool %s): added, %s to %s:%d", name, pool, transport, address, port)
        if status is None:
            await self._check(host)
        return host

    async def remove_host(self, name: str) -> None:
        """Unregister a host; refused while it has tasks that are not settled."""
        host = self.registry.hosts.get(name)
        if host is None:
            raise NotFound(f"no host named {name!r}")
        busy = [t for t in self.registry.host_tasks(name) if t.status not in TASK_SETTLED]
        if busy:
            raise Conflict(
                f"host {name!r} still has {len(busy)} task(s) not settled "
                f"(jobs {', '.join(sorted({t.job_id for t in busy})[:5])})"
            )
        await _stop([t for t in [self._monitors.pop(name, None)] if t is not None])
        vdsm = self._vdsm.pop(name, None)
        if vdsm is not None:
            await vdsm.client.close()
        self._spm.forget_host(name)
        await self.registry.delete_host(name)
        log.info("host %s (pool %s): removed", name, host.pool)

    def vdsm(self, name: str) -> VdsmHost:
        """The typed verbs of a host, over its one persistent client."""
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
        _call_all(self.on_vm_event, f"host {host}: event {method}", host, method, params)

    # -- monitor -------------------------------------------------------------------------------

    async def _monitor(self, name: str) -> None:
        while True:
            host = self.registry.hosts.get(name)
            if host is None:
                return
            await self._check(host)
            settings = self.settings  # read each round: a reload may have replaced them
            delay = settings.monitor_interval
            over = host.failures - settings.failures_before_non_responsive
            if over >= 0:  # NON_RESPONSIVE: retry less and less often
                delay = min(delay * 2 ** min(over + 1, 10), settings.monitor_backoff_max)
            await asyncio.sleep(delay)

    async def _check(self, host: Host) -> None:
        """One monitor round: ping2 and the VM list, then UP / NON_RESPONSIVE as they went."""
        vdsm = self._vdsm.get(host.name)
        if vdsm is None:
            return
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
                    "host %s (pool %s): NON_RESPONSIVE after %d failed checks: %s",
                    host.name,
                    host.pool,
                    host.failures,
                    e,
                )
                host.status = HostStatus.NON_RESPONSIVE
                self._spm.forget_host(host.name)
                self.registry.update_host(host)
            else:
                log.debug("host %s (pool %s): check failed: %s", host.name, host.pool, e)
            return
        host.failures = 0
        host.last_seen = time.time()
        if host.status is HostStatus.NON_RESPONSIVE:
            log.info("host %s (pool %s): UP", host.name, host.pool)
            host.status = HostStatus.UP
            self.registry.update_host(host)
        _call_all(self.on_vm_report, f"host {host.name}: VM report", host.name, vms)

    # -- SPM -----------------------------------------------------------------------------------

    async def spm(self, pool: str) -> str:
        """The pool's SPM host name; discovered, or started, when not known (`NoSpm` if not)."""
        return await self._spm.spm(pool)

    def forget_spm(self, pool: str) -> None:
        """A caller got 654 Not SPM: the next `spm(pool)` asks the pool's hosts again."""
        self._spm.forget(pool)

    @property
    def spm_starts(self) -> int:
        return self._spm.starts

    # -- task polling ----------------------------------------------------------------------------

    def watch(self, pool: str) -> None:
        """Make sure the pool is polled soon: called whenever a task starts or changes hands."""
        state = self._poll_state.get(pool)
        if state is None:
            state = self._poll_state[pool] = PoolPoller(self, pool)
        poller = self._pollers.get(pool)
        if poller is None or poller.done():
            state.interval = self.settings.fast_interval
            state.rescan = True
            self._pollers[pool] = asyncio.create_task(state.run(), name=f"poller-{pool}")
        else:
            state.poke()

    def boost(self, pool: str, seconds: float = 60.0) -> None:
        """Poll the pool fast for a while: a cancel is pending on it."""
        self.watch(pool)
        self._poll_state[pool].boost(seconds)

    def pool_tasks(self, pool: str) -> list[Task]:
        """Every task record of the pool, whatever its status (through the hosts' index)."""
        members = [h.name for h in self.registry.hosts.values() if h.pool == pool]
        return [t for name in members for t in self.registry.host_tasks(name) if t.pool == pool]

    def unowned(self, pool: str, vdsm_ids: Iterable[str]) -> list[str]:
        """The VDSM ids no task record of the pool (any status, on any of its hosts) has."""
        by_vdsm_id, tasks = self.registry.by_vdsm_id, self.registry.tasks
        members = [h.name for h in self.registry.hosts.values() if h.pool == pool]

        def owned(vdsm_id: str) -> bool:
            for host in members:
                task_id = by_vdsm_id.get((host, vdsm_id))
                task = tasks.get(task_id) if task_id is not None else None
                if task is not None and task.pool == pool:
                    return True
            return False

        return [i for i in vdsm_ids if not owned(i)]

    def polled(self, host: str, seconds: float, ok: bool) -> None:
        if self.on_poll is not None:
            try:
                self.on_poll(host, seconds, ok)
            except Exception:
                log.exception("host %s: on_poll callback failed", host)

    def sweep(self) -> None:
        """Poll every pool once (housekeeping: finds orphans on pools with nothing watched)."""
        for pool in {h.pool for h in self.registry.hosts.values()}:
            self.watch(pool)

    def notify_task(self, task: Task) -> None:
        _call_all(self.on_task_report, f"pool {task.pool}: task report", task)

    def notify_unknown(self, pool: str, host: str, ids: list[str]) -> None:
        _call_all(self.on_unknown_tasks, f"pool {pool}: unknown tasks", pool, host, ids)

    # -- shutdown --------------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop every monitor and poller and close every client; nothing is left running."""
        tasks = [*self._monitors.values(), *self._pollers.values()]
        self._monitors.clear()
        self._pollers.clear()
        await _stop(tasks)
        clients, self._vdsm = list(self._vdsm.values()), {}
        for vdsm in clients:
            await vdsm.client.close()


def _validate(name: str, address: str, port: int, pool: str, transport: str, tls: bool) -> None:
    if not isinstance(name, str) or not name or len(name) > 255 or not name.isprintable():
        raise InvalidParams(f"host name must be a non-empty printable string, got {name!r}")
    if not isinstance(address, str) or not address or any(c.isspace() for c in address):
        raise InvalidParams(f"host {name}: address must be a host name or IP, got {address!r}")
    if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
        raise InvalidParams(f"host {name}: port must be 1..65535, got {port!r}")
    try:
        valid_pool = isinstance(pool, str) and str(uuid.UUID(pool)) == pool  # VDSM: lower case
    except ValueError:
        valid_pool = False
    if not valid_pool:
        raise InvalidParams(f"host {name}: pool must be a storage pool UUID, got {pool!r}")
    if transport not in TRANSPORTS:
        raise InvalidParams(f"host {name}: transport must be stomp or http, got {transport!r}")
    if not isinstance(tls, bool):
        raise InvalidParams(f"host {name}: tls must be true or false, got {tls!r}")


def _call_all(callbacks: Iterable[Callable[..., None]], what: str, *args: Any) -> None:
    """Run every callback; one that raises is logged and the others still run."""
    for callback in list(callbacks):
        try:
            callback(*args)
        except Exception:
            log.exception("%s: callback %r failed", what, callback)


async def _stop(tasks: list[asyncio.Task[None]]) -> None:
    """Cancel and await tasks; their CancelledError is theirs, ours still propagates."""
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    for task in tasks:
        if not task.cancelled() and task.exception() is not None:
            log.error("%s ended with %r", task.get_name(), task.exception())

"""One simulated VDSM host: its verbs, its task manager, its faults and events.

The host is what the wire layer talks to (`call`); storage and VMs are shared across the cluster
and reached through it. A host answers every verb with 99 while it is "recovering" (just
restarted, or by fault), as VDSM does before its storage subsystem is ready.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import CodedError, MethodNotFound, RecoveryInProgress
from vdsm_simulator.events import EventBus
from vdsm_simulator.faults import HostFaults, host_rng
from vdsm_simulator.hostjobs import HostJobs
from vdsm_simulator.tasks import TaskManager
from vdsm_simulator.verbs import Param, VerbTable

if TYPE_CHECKING:
    from vdsm_simulator.cluster import Cluster

log = logging.getLogger(__name__)

VDSM_VERSION = "4.50.5.1"
CLUSTER_LEVELS = ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"]


class JobGate:
    """Holds storage jobs at their end until a test releases them.

    Race tests need a task to stay "running" for exactly as long as they say, without depending
    on how long simulated work takes; while the gate is closed every job that reaches its end
    waits here. A stop of an abortable job does not wait for the gate (the job's own abort wins).
    """

    def __init__(self) -> None:
        self.closed = False
        self._waiting: dict[str, asyncio.Event] = {}

    def hold(self) -> None:
        self.closed = True

    def open(self) -> None:
        """Stop holding new jobs and release every held one."""
        self.closed = False
        for event in self._waiting.values():
            event.set()

    def release(self, task_id: str) -> bool:
        event = self._waiting.get(task_id)
        if event is None:
            return False
        event.set()
        return True

    def held(self) -> list[str]:
        return [t for t, e in self._waiting.items() if not e.is_set()]

    async def pass_through(self, task_id: str) -> None:
        if not self.closed:
            return
        event = self._waiting.setdefault(task_id, asyncio.Event())
        try:
            await event.wait()
        finally:
            self._waiting.pop(task_id, None)


class SimHost:
    def __init__(
        self,
        cluster: Cluster,
        name: str,
        host_id: int,
        *,
        seed: int,
        workers: int = 10,
        queue_size: int = 500,
    ) -> None:
        self.cluster = cluster
        self.name = name
        self.host_id = host_id  # VDSM's host id in its pool (spm_id when SPM)
        self.clock: SimClock = cluster.clock
        self._workers = workers
        self._queue_size = queue_size
        self.faults = HostFaults(seed, name)
        self.durations = host_rng(seed, name + "/durations")
        self.events = EventBus()
        self.gate = JobGate()
        self.recovering_until = 0.0  # loop time before which every verb answers 99
        self.tasks = TaskManager(
            self.clock,
            workers=workers,
            queue_size=queue_size,
            recovery_actions=self._recovery_actions(),
        )
        self.jobs = HostJobs(self.clock, self.events)
        self.verbs = VerbTable()
        self.calls = 0
        self._register()

    # -- what the wire layer uses -----------------------------------------------------------

    @property
    def up(self) -> bool:
        return not self.faults.settings.down

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        self.calls += 1
        if self.is_recovering():  # VDSM answers 99 before it even looks the verb up
            raise RecoveryInProgress()
        verb = self.verbs.get(method)
        if verb is None:
            raise MethodNotFound(
                f"The method does not exist or is not available: {{'method': {method!r}}}"
            )
        injected = self.faults.error_for(method)
        if injected is not None:
            raise CodedError(*injected)
        kwargs = verb.bind(params)
        return await verb.handler(**kwargs)

    def is_recovering(self) -> bool:
        if self.faults.settings.recovering:
            return True
        return self.recovering_until > asyncio.get_running_loop().time()

    # -- duration and failure draws ---------------------------------------------------------

    def draw_duration(self, factor: float = 1.0) -> float:
        """Simulated seconds of one storage job, from the configured distribution."""
        mean = self.cluster.config.task_seconds * factor
        match self.cluster.config.task_distribution:
            case "fixed":
                return mean
            case "uniform":
                return self.durations.uniform(0.5 * mean, 1.5 * mean)
            case _:
                return self.durations.expovariate(1.0 / mean) if mean > 0 else 0.0

    def _recovery_actions(self) -> dict[str, Callable[..., None]]:
        def guarded(action: Callable[..., None]) -> Callable[..., None]:
            def run(*args: str) -> None:
                if self.faults.settings.recovery_failure:
                    raise RuntimeError("injected recovery failure")
                action(*args)

            return run

        storage = self.cluster.storage
        return {
            "remove_volume": guarded(
                lambda pool, sd, vol: void(storage.remove_volume(pool, sd, vol))
            ),
            "restore_volume": guarded(storage.restore_volume),
        }

    # -- verbs -------------------------------------------------------------------------------

    def _register(self) -> None:
        t = self.verbs
        tid = Param("taskID", "str")
        t.add("Task.getStatus", self._sync(lambda taskID: self.tasks.get_status(taskID)), tid)
        t.add("Task.getInfo", self._sync(lambda taskID: self.tasks.get_info(taskID)), tid)
        t.add("Task.stop", self._void(lambda taskID: self.tasks.stop(taskID)), tid)
        t.add("Task.revert", self._void(lambda taskID: self.tasks.revert(taskID)), tid)
        t.add("Task.clear", self._void(lambda taskID: self.tasks.clear(taskID)), tid)
        t.add(
            "Host.getAllTasksStatuses", self._sync(lambda: self._spm_only(self.tasks.all_statuses))
        )
        t.add("Host.getAllTasksInfo", self._sync(lambda: self._spm_only(self.tasks.all_info)))
        t.add("Host.getAllTasks", self._sync(lambda: self.tasks.all_tasks()))
        t.add("Host.ping2", self._sync(lambda: True))
        t.add("Host.ping", self._sync(lambda: True))
        t.add("Host.getCapabilities", self._sync(self.capabilities))
        t.add("Host.getStats", self._sync(self.stats))
        t.add(
            "Host.getJobs",
            self._sync(lambda job_type, job_ids: self.jobs.get_jobs(job_type, job_ids)),
            Param("job_type", "str", None),
            Param("job_ids", "list", None),
        )
        from vdsm_simulator.storage_verbs import register_storage_verbs
        from vdsm_simulator.vm_verbs import register_vm_verbs

        register_storage_verbs(self)
        register_vm_verbs(self)

    @staticmethod
    def _sync(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        async def handler(**kwargs: Any) -> Any:
            return fn(**kwargs)

        return handler

    @staticmethod
    def _void(fn: Callable[..., Any]) -> Callable[..., Awaitable[Any]]:
        """VDSM answers a verb without a return value with `true`."""

        async def handler(**kwargs: Any) -> Any:
            fn(**kwargs)
            return True

        return handler

    def is_spm(self) -> bool:
        pool = self.cluster.storage.pool_of_host(self.name)
        return pool is not None and pool.spm_host == self.name

    def _spm_only(self, fn: Callable[[], Any]) -> Any:
        """Secured pool methods raise SecureError, which VDSM maps to (654, "Not SPM")."""
        if not self.is_spm():
            raise CodedError(654, "Not SPM")
        return fn()

    def capabilities(self) -> dict[str, Any]:
        return {
            "HBAInventory": {"iSCSI": [{"InitiatorName": f"iqn.1994-05.com.redhat:{self.name}"}]},
            "vdsmVersion": VDSM_VERSION,
            "software_version": VDSM_VERSION.rsplit(".", 1)[0],
            "software_revision": "1",
            "clusterLevels": CLUSTER_LEVELS,
            "supportedENGINEs": CLUSTER_LEVELS,
            "version_name": "Snow Man",
            "hostname": self.name,
            "cpuCores": "8",
            "cpuSockets": "2",
            "cpuThreads": "16",
            "memSize": "65536",
            "operatingSystem": {"name": "RHEL", "release": "1.el9", "version": "9"},
            "kvmEnabled": "true",
        }

    def stats(self) -> dict[str, Any]:
        vms = self.cluster.fleet.vms_on(self.name)
        return {
            "cpuIdle": "97.5",
            "cpuSys": "1.2",
            "cpuUser": "1.3",
            "cpuLoad": "0.20",
            "memAvailable": 60000,
            "memFree": 61000,
            "memShared": 0,
            "memUsed": "7",
            "vmCount": len(vms),
            "vmActive": sum(1 for v in vms if v.status == "Up"),
            "vmMigrating": sum(1 for v in vms if "Migration" in v.status),
            "incomingVmMigrations": 0,
            "outgoingVmMigrations": 0,
            "haScore": 0,
            "storageDomains": {},
            "elapsedTime": str(int(asyncio.get_running_loop().time())),
        }

    async def restart(self, recovering_seconds: float) -> None:
        """A VDSM restart: memory is lost, the SPM role too, and verbs answer 99 for a while."""
        pool = self.cluster.storage.pool_of_host(self.name)
        if pool is not None and pool.spm_host == self.name:
            self.cluster.storage.set_spm(pool, None)
        await self.tasks.close()
        self.tasks = TaskManager(
            self.clock,
            workers=self._workers,
            queue_size=self._queue_size,
            recovery_actions=self._recovery_actions(),
        )
        self.gate = JobGate()
        self.recovering_until = asyncio.get_running_loop().time() + self.clock.real(
            recovering_seconds
        )

    async def close(self) -> None:
        await self.tasks.close()
        await self.jobs.close()


def void(_: object) -> None:
    """Drop a value; recovery actions return nothing."""

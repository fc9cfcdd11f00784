"""One simulated VDSM host: its verbs, its task manager, its faults and events.

The host is what the wire layer talks to (`call`); storage and VMs are shared across the cluster
and reached through it. A host answers every verb with 99 while it is "recovering" (just
restarted, or by fault), as VDSM does before its storage subsystem is ready.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import CodedError, MethodNotFound, RecoveryInProgress, SpmStatusError
from vdsm_simulator.events import EventBus
from vdsm_simulator.faults import HostFaults, host_rng
from vdsm_simulator.hostjobs import HostJobs
from vdsm_simulator.jsonrpc import NOT_NOW
from vdsm_simulator.tasks import JobContext, TaskManager
from vdsm_simulator.verbs import Param, Verb, VerbTable

if TYPE_CHECKING:
    from vdsm_simulator.cluster import Cluster

log = logging.getLogger(__name__)

VDSM_VERSION = "4.50.5.1"
CLUSTER_LEVELS = ["4.2", "4.3", "4.4", "4.5", "4.6", "4.7"]
CPU_FLAGS = (
    "fpu,vme,de,pse,tsc,msr,pae,mce,cx8,apic,sep,mtrr,pge,mca,cmov,pat,pse36,clflush,mmx,fxsr,"
    "sse,sse2,ss,ht,syscall,nx,pdpe1gb,rdtscp,lm,constant_tsc,nopl,xtopology,pni,pclmulqdq,"
    "vmx,ssse3,fma,cx16,pcid,sse4_1,sse4_2,x2apic,movbe,popcnt,aes,xsave,avx,f16c,rdrand,"
    "hypervisor,lahf_lm,abm,3dnowprefetch,avx2,smep,bmi2,erms,invpcid,avx512f,avx512dq,"
    "rdseed,adx,smap,clflushopt,clwb,avx512cd,avx512bw,avx512vl,xsaveopt,xsavec,pku,ospke,"
    "avx512_vnni,md_clear,arch_capabilities,"
    "model_Cascadelake-Server-noTSX,model_Skylake-Server-noTSX-IBRS,model_Broadwell-noTSX,"
    "model_Haswell-noTSX,model_IvyBridge,model_SandyBridge,model_Westmere,model_Nehalem"
)
EMULATED_MACHINES = ["pc-q35-rhel9.2.0", "pc-q35-rhel8.6.0", "pc-i440fx-rhel7.6.0", "q35", "pc"]
ADDITIONAL_FEATURES = [
    "libgfapi_supported",
    "GLUSTER_SNAPSHOT",
    "GLUSTER_GEO_REPLICATION",
    "GLUSTER_BRICK_MANAGEMENT",
]


def _packages() -> dict[str, dict[str, str]]:
    """packages2: SoftwarePackageInfo by package."""
    versions = {
        "kernel": ("5.14.0", "284.11.1.el9_2.x86_64"),
        "qemu-kvm": ("7.2.0", "14.el9_2"),
        "qemu-img": ("7.2.0", "14.el9_2"),
        "libvirt": ("9.0.0", "10.el9_2"),
        "vdsm": (VDSM_VERSION, "1.el9"),
        "spice-server": ("0.15.1", "1.el9"),
        "mom": ("0.6.5", "1.el9"),
    }
    return {name: {"version": v, "release": r} for name, (v, r) in versions.items()}


def _numa_nodes() -> dict[str, dict[str, Any]]:
    return {
        str(n): {"cpus": list(range(n * 8, n * 8 + 8)), "totalMemory": "32768", "hugepages": {}}
        for n in range(2)
    }


def _network_caps(host_id: int) -> dict[str, Any]:
    """nics, bondings, bridges, vlans and networks: one NIC under the management bridge."""
    addr = f"192.0.2.{10 + host_id}"
    ip = {"addr": addr, "netmask": "255.255.255.0", "gateway": "192.0.2.1", "mtu": "1500"}
    return {
        "nics": {
            "eth0": {
                "hwaddr": f"52:54:00:00:00:{host_id:02x}",
                "speed": 10000,
                **ip,
                "addr": "",
                "ipv4addrs": [],
            }
        },
        "bondings": {},
        "vlans": {},
        "bridges": {
            "ovirtmgmt": {"ports": ["eth0"], "stp": "off", **ip, "ipv4addrs": [f"{addr}/24"]}
        },
        "networks": {
            "ovirtmgmt": {
                "iface": "ovirtmgmt",
                "bridged": True,
                "ports": ["eth0"],
                "switch": "legacy",
                **ip,
                "ipv4addrs": [f"{addr}/24"],
            }
        },
    }


def _network_stats(sample_time: float) -> dict[str, dict[str, Any]]:
    """HostNetworkInterfaceStats by interface."""
    return {
        name: {
            "name": name,
            "state": "up",
            "speed": "10000",
            "rx": "1000000",
            "tx": "1000000",
            "rxDropped": "0",
            "txDropped": "0",
            "rxErrors": "0",
            "txErrors": "0",
            "sampleTime": sample_time,
        }
        for name in ("eth0", "ovirtmgmt")
    }


def _cpu_statistics(cpus: int) -> dict[str, dict[str, Any]]:
    """CpuCoreStats by cpu number."""
    return {
        str(i): {"cpuIdle": "97.50", "cpuSys": "1.20", "cpuUser": "1.30", "nodeIndex": i // 8}
        for i in range(cpus)
    }


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
        # This host's view of SPM starts: pools whose startSpm runs here ("Contend"), and the
        # per-pool exclusive lock spmStart and spmStop take (VDSM's resource manager).
        self.spm_contending: set[str] = set()
        self.pool_locks: dict[str, asyncio.Lock] = {}
        self._watchers: set[asyncio.Task[None]] = set()
        self.jobs = HostJobs(self.clock, self.events, scheduler=self._schedule_sdm)
        self.verbs = VerbTable()
        self.calls = 0
        self._register()

    # -- what the wire layer uses -----------------------------------------------------------

    @property
    def up(self) -> bool:
        return not self.faults.settings.down

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        verb, kwargs = self._bind(method, params)
        return await verb.handler(**kwargs)

    def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """`call` of a verb that never waits, synchronously; `NOT_NOW` (and nothing done) for
        any other method: the caller then `call`s it from a task."""
        verb = self.verbs.get(method)
        now = None if verb is None else verb.now
        if now is None:
            return NOT_NOW
        _, kwargs = self._bind(method, params)
        return now(**kwargs)

    def _bind(self, method: str, params: dict[str, Any] | list[Any]) -> tuple[Verb, dict[str, Any]]:
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
        return verb, verb.bind(params)

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

    async def _schedule_sdm(self, description: str, run: Callable[[], Awaitable[None]]) -> None:
        """HSM.sdm_schedule: the job runs in an unpersisted `sdm` task on one of the workers.

        The task's verb is the HSM method (sdm_copy_data), its job the job's description; the
        host job catches its own errors, so the task itself ends finished.
        """

        async def job(ctx: JobContext) -> Any:
            await run()
            return None

        await self.tasks.schedule(
            f"sdm_{description}", job, job_name=description, tag="sdm", persist=False
        )

    def release_when_done(self, task_id: str, release: Callable[[], None]) -> None:
        """Release a resource lock a task holds once the task is done, whatever ends it."""
        task = self.tasks.get(task_id)

        async def watch() -> None:
            try:
                await task.wait_done()
            finally:
                release()

        watcher = asyncio.ensure_future(watch())
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    # -- verbs -------------------------------------------------------------------------------

    def _register(self) -> None:
        t = self.verbs
        tid = Param("taskID", "str")
        t.add_now("Task.getStatus", lambda taskID: self.tasks.get_status(taskID), tid)
        t.add_now("Task.getInfo", lambda taskID: self.tasks.get_info(taskID), tid)
        t.add_now("Task.stop", self._void(lambda taskID: self.tasks.stop(taskID)), tid)
        t.add_now("Task.revert", self._void(lambda taskID: self.tasks.revert(taskID)), tid)
        t.add_now("Task.clear", self._void(lambda taskID: self.tasks.clear(taskID)), tid)
        t.add_now("Host.getAllTasksStatuses", lambda: self._spm_only(self.tasks.all_statuses))
        t.add_now("Host.getAllTasksInfo", lambda: self._spm_only(self.tasks.all_info))
        t.add_now("Host.getAllTasks", lambda: self.tasks.all_tasks())
        t.add_now("Host.ping2", lambda: True)
        t.add_now("Host.ping", lambda: True)
        t.add_now("Host.getCapabilities", self.capabilities)
        t.add_now("Host.getStats", self.stats)
        t.add_now(
            "Host.getJobs",
            lambda job_type, job_ids: self.jobs.get_jobs(job_type, job_ids),
            Param("job_type", "str", None),
            Param("job_ids", "list", None),
        )
        from vdsm_simulator.storage_verbs import register_storage_verbs
        from vdsm_simulator.vm_verbs import register_vm_verbs

        register_storage_verbs(self)
        register_vm_verbs(self)

    @staticmethod
    def _void(fn: Callable[..., Any]) -> Callable[..., Any]:
        """VDSM answers a verb without a return value with `true`."""

        def run(**kwargs: Any) -> Any:
            fn(**kwargs)
            return True

        return run

    def is_spm(self) -> bool:
        pool = self.cluster.storage.pool_of_host(self.name)
        return pool is not None and pool.spm_host == self.name

    def _spm_only(self, fn: Callable[[], Any]) -> Any:
        """HSM.getAllTasksStatuses/Info turn a missing pool or SecureError into SpmStatusError()
        with no value: (654, "Not SPM: ()")."""
        if not self.is_spm():
            raise SpmStatusError()
        return fn()

    def capabilities(self) -> dict[str, Any]:
        """Host.getCapabilities: VdsmCapabilities, with the fields the engine reads."""
        return {
            "uuid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.vdsm-sim")),
            "HBAInventory": {"iSCSI": [{"InitiatorName": self._iqn()}], "FC": []},
            "ISCSIInitiatorName": self._iqn(),
            "vdsmVersion": VDSM_VERSION,
            "software_version": VDSM_VERSION.rsplit(".", 1)[0],
            "software_revision": "1",
            "clusterLevels": CLUSTER_LEVELS,
            "supportedENGINEs": CLUSTER_LEVELS,
            "version_name": "Snow Man",
            "hostname": self.name,
            "cpuModel": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz",
            "cpuSpeed": "2100.000",
            "cpuCores": "8",
            "cpuSockets": "2",
            "cpuThreads": "16",
            "onlineCpus": ",".join(str(i) for i in range(16)),
            "cpuFlags": CPU_FLAGS,
            "emulatedMachines": EMULATED_MACHINES,
            "memSize": "65536",
            "reservedMem": "321",
            "guestOverhead": "65",
            "swapTotal": 8192,
            "operatingSystem": {
                "name": "RHEL",
                "release": "1.el9",
                "version": "9",
                "pretty_name": "Red Hat Enterprise Linux 9",
            },
            "kvmEnabled": "true",
            "selinux": {"mode": "1"},
            "kdumpStatus": 0,
            "autoNumaBalancing": 1,
            "numaNodes": _numa_nodes(),
            "numaNodeDistance": {"0": [10, 21], "1": [21, 10]},
            "packages2": _packages(),
            "additionalFeatures": ADDITIONAL_FEATURES,
            "liveSnapshot": "true",
            "liveMerge": "true",
            "hostdevPassthrough": "false",
            "supportsIPv6": True,
            "nestedVirtualization": False,
            "hostedEngineDeployed": False,
            "backupEnabled": True,
            "fipsEnabled": False,
            "realtimeKernel": False,
            "kernelArgs": "BOOT_IMAGE=/vmlinuz root=/dev/mapper/rhel-root ro",
            "hugepages": [1048576, 2048],
            "rngSources": ["random", "hwrng"],
            "vmTypes": ["kvm"],
            "domain_versions": [0, 2, 3, 4, 5],
            "supported_block_size": {
                "FCP": [512],
                "GLUSTERFS": [0, 512, 4096],
                "ISCSI": [512],
                "LOCALFS": [0, 512, 4096],
                "NFS": [512],
                "POSIXFS": [512],
            },
            **_network_caps(self.host_id),
            "lastClientIface": "ovirtmgmt",
            "nameservers": ["192.0.2.1"],
            "netConfigDirty": "False",
            "hooks": {},
            "vncEncrypted": "false",
            "connector_info": {},
            "tscFrequency": "2100000000",
            "tscScaling": False,
            "ovnConfigured": False,
            "zerocopy_migrations": True,
        }

    def _iqn(self) -> str:
        return f"iqn.1994-05.com.redhat:{self.name}"

    def stats(self) -> dict[str, Any]:
        """Host.getStats: HostStats."""
        vms = self.cluster.fleet.vms_on(self.name)
        now = asyncio.get_running_loop().time()
        return {
            "cpuIdle": "97.5",
            "cpuSys": "1.2",
            "cpuUser": "1.3",
            "cpuSysVdsmd": "0.3",
            "cpuUserVdsmd": "0.5",
            "cpuLoad": "0.20",
            "cpuStatistics": _cpu_statistics(16),
            "memAvailable": 60000,
            "memFree": 61000,
            "memShared": 0,
            "memUsed": "7",
            "memCommitted": sum(v.memory_mb for v in vms),
            "swapTotal": 8192,
            "swapFree": 8192,
            "ksmState": False,
            "ksmPages": 100,
            "ksmCpu": 0,
            "ksmMergeAcrossNodes": True,
            "anonHugePages": "0",
            "thpState": "always",
            "numaNodeMemFree": {
                "0": {"memFree": "30000", "memPercent": 8},
                "1": {"memFree": "31000", "memPercent": 6},
            },
            "vmCount": len(vms),
            "vmActive": sum(1 for v in vms if v.status == "Up"),
            "vmMigrating": sum(1 for v in vms if "Migration" in v.status),
            "incomingVmMigrations": 0,
            "outgoingVmMigrations": 0,
            "network": _network_stats(now),
            "rxDropped": "0",
            "txDropped": "0",
            "haScore": 0,
            "haStats": {
                "configured": False,
                "active": False,
                "score": 0,
                "globalMaintenance": False,
                "localMaintenance": False,
            },
            "storageDomains": self._domain_vitals(),
            "diskStats": {"/var/log": {"free": "10000"}, "/tmp": {"free": "10000"}},
            "momStatus": "active",
            "v2vJobs": {},
            "multipathHealth": {},
            "netConfigDirty": "False",
            "dateTime": time.strftime("%Y-%m-%dT%H:%M:%S GMT", time.gmtime()),
            "bootTime": str(int(time.time() - now)),
            "elapsedTime": str(int(now)),
        }

    def _domain_vitals(self) -> dict[str, Any]:
        """StorageDomainVitals of the domains of this host's pool (all valid)."""
        pool = self.cluster.storage.pool_of_host(self.name)
        if pool is None:
            return {}
        return {
            sd: {
                "code": 0,
                "lastCheck": "1.0",
                "delay": "0.001",
                "valid": True,
                "version": 5,
                "acquired": True,
                "actual": True,
            }
            for sd in pool.domains
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
        self.spm_contending.clear()
        self.pool_locks = {}
        self.recovering_until = asyncio.get_running_loop().time() + self.clock.real(
            recovering_seconds
        )

    async def close(self) -> None:
        await self.tasks.close()
        await self.jobs.close()
        watchers = list(self._watchers)
        for w in watchers:
            w.cancel()
        await asyncio.gather(*watchers, return_exceptions=True)


def void(_: object) -> None:
    """Drop a value; recovery actions return nothing."""

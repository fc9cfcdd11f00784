"""The VMs of the whole simulated cluster, and live migration between its hosts.

Each host keeps its own container of VMs, as each VDSM does: during a migration the same VM id
lives on two hosts (the source as "Migration Source", the destination as "Migration
Destination"), and after a successful migration the source keeps a "Down" VM until the engine
destroys it there. Verbs take the name of the host the call arrived on; a VM that is not in that
host's container is NoSuchVM, whatever other hosts hold.

Migration follows `lib/vdsm/virt/migration.py` (SourceThread) in simulated time:
VM.migrate answers at once; in the background the source resolves the destination, waits for an
outgoing slot, creates the destination VM (migrationCreate), transfers memory at the migration
bandwidth with a `|virt|VM_migration_status|` progress event per monitor interval, then the
destination goes Up and the source Down (exit reason "Migration succeeded"). Any failure,
including an unknown destination, is reported the way VDSM reports it: asynchronously, the
source VM back to Up (with a status event) and the error in VM.getMigrationStatus.

Hibernation is a migration to a file, as VDSM's VM.hibernate (API.hibernate calls migrate with
mode "file"): the VM goes "Saving State" at once, waits for an outgoing slot like any migration,
then libvirt saves its memory into the state volume the `hibernationVolHandle` names, at
`save_mbps`; the metadata volume gets the VM's parameters, both volumes are marked as used by the
VM, and the VM goes Down with exit reason 5 "SaveState succeeded". VM.migrateCancel aborts the
save (libvirt's abortJob): the VM is resumed, Up again, and VM.getMigrationStatus says
47 "Migration canceled". A missing memory volume fails the save asynchronously with migrateErr (12),
as VDSM's prepareVolumePath does in the source thread. The job gate of the VM's host holds a save
at its end, under the VM's id, until a test releases it; a migrateCancel still aborts it there.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    CodedError,
    GeneralException,
    MigrationCancelationFailed,
    MigrationError,
    MigrationInProgress,
    NoSuchVM,
    PlainError,
    VMExists,
)
from vdsm_simulator.events import EventBus
from vdsm_simulator.storage import Storage, Volume

log = logging.getLogger(__name__)


class MethodNotImplemented(PlainError):  # TODO: move to errors.py (VDSM exception.py code 44)
    code = 44
    msg = "Not implemented"


class VmStatus(StrEnum):
    WAIT_FOR_LAUNCH = "WaitForLaunch"  # created, the domain is starting
    POWERING_UP = "Powering up"  # running, the guest has not reported Up yet
    UP = "Up"  # running
    MIGRATION_SOURCE = "Migration Source"  # migrating away from this host
    MIGRATION_DESTINATION = "Migration Destination"  # migrating to this host
    SAVING_STATE = "Saving State"  # hibernating: VM.hibernate is saving its memory
    RESTORING_STATE = "Restoring state"  # waking from hibernation (not simulated yet)
    PAUSED = "Paused"  # paused (not simulated yet)
    POWERING_DOWN = "Powering down"  # shutting down (not simulated yet)
    DOWN = "Down"  # stopped; stays listed until VM.destroy


# lib/vdsm/virt/vmexitreason.py
ADMIN_SHUTDOWN = 6
MIGRATION_SUCCEEDED = 4
SAVE_STATE_SUCCEEDED = 5
EXIT_MESSAGES = {
    ADMIN_SHUTDOWN: "Admin shut down from the engine",
    MIGRATION_SUCCEEDED: "Migration succeeded",
    SAVE_STATE_SUCCEEDED: "SaveState succeeded",
}

DEFAULT_BANDWIDTH_MBPS = 52.0  # VDSM vars/migration_max_bandwidth, MiB/s
DEFAULT_MONITOR_INTERVAL = 10.0  # VDSM vars/migration_monitor_interval, s
DEFAULT_MAX_OUTGOING = 2  # VDSM vars/max_outgoing_migrations
MIGRATION_CANCELED = (47, "Migration canceled")  # migCancelErr with VDSM's message override
MIGRATE_ERR = (MigrationError.code, MigrationError.msg)  # errCode['migrateErr']
DEFAULT_SAVE_MBPS = 100.0  # MiB/s libvirt's save writes a hibernating VM's memory at (the sim's)
HIBERNATION_STARTING = "Hibernation process starting"  # API.hibernate rewrites the status text
MIGRATION_PROCESS_CANCELLED = "Migration process cancelled"  # Vm.migrateCancel's rewrite


class SaveGate(Protocol):
    """The host's job gate as a hibernation uses it (host.JobGate)."""

    async def pass_through(self, task_id: str) -> None: ...


@dataclass(frozen=True)
class HibernationVolume:
    """One PDIV of a hibernationVolHandle, as API._getHibernationPathsFromString splits it."""

    pool: str
    domain: str
    image: str
    volume: str


def parse_hibernation_handle(handle: str) -> tuple[HibernationVolume, HibernationVolume]:
    """`<domain>,<pool>,<stateImage>,<stateVolume>,<metaImage>,<metaVolume>` (vdsm-api.yml
    HibernationVolumeHandle): the state (memory) volume and the metadata volume.

    VDSM unpacks the split into six names, so a wrong count fails with Python's own text inside
    a GeneralException (code 100), before anything starts.
    """
    parts = handle.split(",")
    if len(parts) < 6:
        raise GeneralException(f"not enough values to unpack (expected 6, got {len(parts)})")
    if len(parts) > 6:
        raise GeneralException("too many values to unpack (expected 6)")
    domain, pool, state_image, state_volume, meta_image, meta_volume = parts
    return (
        HibernationVolume(pool, domain, state_image, state_volume),
        HibernationVolume(pool, domain, meta_image, meta_volume),
    )


@dataclass(eq=False)
class OutgoingMigration:
    """VDSM's SourceThread as the verbs see it. Every VM has one; a fresh VM's was never run.

    `status` and `progress` are what VM.getMigrationStatus reports, even for a VM that never
    migrated (VDSM answers from the unstarted thread: code 0 "Migration in progress").
    """

    dst: str = ""
    status: tuple[int, str] = (0, "Migration in progress")
    progress: int = 0
    downtime: int | None = None  # ms, once the migration completed
    running: bool = False  # the background coroutine manages a migration (isMigrating)
    transfer_started: bool = False  # past migrateToURI3: a later migrateCancel has nothing to abort
    stop_reason: tuple[int, str] | None = None  # set by migrateCancel or a lost destination
    hibernating: bool = False  # mode "file": VM.hibernate saving to memory volumes
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    dest_host: str | None = None  # where the destination VM was created
    task: asyncio.Task[None] | None = None

    def stats(self) -> dict[str, Any]:
        code, message = self.status
        ret: dict[str, Any] = {"status": {"code": code, "message": message}}
        ret["progress"] = self.progress
        if self.downtime is not None:
            ret["downtime"] = self.downtime
            ret["progress"] = 100
        return ret


@dataclass(eq=False)
class SimVm:
    vm_id: str
    name: str
    host: str
    memory_mb: int
    status: VmStatus
    xml: str
    started: float  # time.monotonic() when the VM started on this host, for elapsedTime
    time_offset: str | None = None
    exit_info: dict[str, Any] | None = None  # exitCode/exitMessage/exitReason once Down
    migration: OutgoingMigration = field(default_factory=OutgoingMigration)
    incoming: bool = False  # created by an incoming migration, not yet Up
    launching: asyncio.Task[None] | None = None

    @property
    def migrating(self) -> bool:
        return self.migration.running


@dataclass
class MigrationFault:
    """A failure injected into the next migration of one VM."""

    code: int = MigrationError.code
    message: str = MigrationError.msg
    phase: str = "transfer"  # "transfer": at `at_progress`; "destination": migrationCreate fails
    at_progress: int = 50


class VmFleet:
    """Every VM of the cluster, by host; the verbs are VDSM's, the host is the caller's."""

    def __init__(
        self,
        clock: SimClock,
        events_for: Callable[[str], EventBus],
        resolve_host: Callable[[str], str | None],
        *,
        bandwidth_mbps: float = DEFAULT_BANDWIDTH_MBPS,
        monitor_interval: float = DEFAULT_MONITOR_INTERVAL,
        dest_create_seconds: float = 1.0,
        launch_seconds: float = 1.0,
        boot_seconds: float = 10.0,
        downtime_ms: int = 100,
        max_outgoing: int = DEFAULT_MAX_OUTGOING,
        save_mbps: float = DEFAULT_SAVE_MBPS,
        storage: Storage | None = None,
        gate_for: Callable[[str], SaveGate] | None = None,
    ) -> None:
        self._clock = clock
        self._events_for = events_for
        self._resolve_host = resolve_host
        self.bandwidth_mbps = bandwidth_mbps
        self.monitor_interval = monitor_interval
        self.dest_create_seconds = dest_create_seconds
        self.launch_seconds = launch_seconds
        self.boot_seconds = boot_seconds
        self.downtime_ms = downtime_ms
        self.max_outgoing = max_outgoing
        self.save_mbps = save_mbps
        self._storage = storage  # where memory volumes live; None: every volume is missing
        self._gate_for = gate_for  # the job gate of a host, holding saves at their end
        self._hosts: dict[str, dict[str, SimVm]] = {}
        self._faults: dict[str, MigrationFault] = {}
        self._outgoing: dict[str, int] = {}  # host -> migrations holding a slot
        self._outgoing_limit: dict[str, int] = {}  # host -> bound set by outgoingLimit
        self._slot_freed: dict[str, asyncio.Condition] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- inventory (tests, control API, host stats) ------------------------------------------

    def add_vm(
        self,
        vm_id: str,
        name: str,
        host: str,
        *,
        memory_mb: int = 1024,
        status: str = "Up",
    ) -> SimVm:
        """Seed a VM that is already running: no launch, no events."""
        if vm_id in self._container(host):
            raise VMExists()
        vm = self._new_vm(
            vm_id, name, host, memory_mb, VmStatus(status), _domain_xml(vm_id, name, memory_mb)
        )
        self._container(host)[vm_id] = vm
        return vm

    def vms_on(self, host: str) -> list[SimVm]:
        return list(self._hosts.get(host, {}).values())

    def get(self, vm_id: str, host: str | None = None) -> SimVm | None:
        """The VM on `host`, or else where it "is": running first, then arriving, then Down."""
        if host is not None:
            return self._hosts.get(host, {}).get(vm_id)
        found = [c[vm_id] for c in self._hosts.values() if vm_id in c]
        rank = {VmStatus.DOWN: 2, VmStatus.MIGRATION_DESTINATION: 1}
        return min(found, key=lambda v: rank.get(v.status, 0), default=None)

    def topology(self) -> list[dict[str, Any]]:
        return [
            {
                "vmId": vm.vm_id,
                "name": vm.name,
                "host": host,
                "status": vm.status.value,
                "memory_mb": vm.memory_mb,
                "migrating_to": vm.migration.dest_host if vm.migrating else None,
            }
            for host, container in sorted(self._hosts.items())
            for vm in container.values()
        ]

    def fail_next_migration(
        self,
        vm_id: str,
        code: int = MigrationError.code,
        message: str | None = None,
        *,
        phase: str = "transfer",
        at_progress: int = 50,
    ) -> None:
        """Make the next migration of `vm_id` fail: during the transfer once `at_progress` is
        reached (a libvirt error; VDSM reports 12 unless told 102 with libvirt's text), or at
        migrationCreate on the destination (`phase="destination"`, the destination's error)."""
        if phase not in ("transfer", "destination"):
            raise ValueError(f"unknown migration failure phase {phase!r}")
        if message is None:
            message = MigrationError.msg if code == MigrationError.code else "Injected failure"
        self._faults[vm_id] = MigrationFault(code, message, phase, at_progress)

    async def close(self) -> None:
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- VM verbs -------------------------------------------------------------------------

    def create(
        self, host: str, vm_params: dict[str, Any], vm_id: str | None = None
    ) -> dict[str, Any]:
        """VM.create: the result is the Bridge's `vmList`, the VM in WaitForLaunch.

        VDSM takes the id, name and memory from the domain XML (`xml`, or `_srcDomXML`); the
        simulator also accepts the pre-4.2 keys vmId/vmName/memSize when no XML is given.
        """
        if not isinstance(vm_params, dict):
            raise GeneralException(f"{type(vm_params).__name__!r} object has no attribute 'get'")
        vm_id, name, memory_mb, xml = _parse_vm_params(vm_params, vm_id)
        if vm_id in self._container(host):
            raise VMExists()
        vm = self._new_vm(vm_id, name, host, memory_mb, VmStatus.WAIT_FOR_LAUNCH, xml)
        vm.time_offset = _opt_str(vm_params.get("timeOffset"))
        self._container(host)[vm_id] = vm
        vm.launching = self._spawn(self._launch(vm))
        return {**self._status_info(vm), "xml": vm.xml}

    def destroy(self, host: str, vm_id: str) -> None:
        """VM.destroy: the VM goes Down ("Admin shut down from the engine") and is forgotten.

        A VM already Down (e.g. a migration source) is just removed, without a second event.
        Destroying a migration source aborts its migration and tears the destination down.
        """
        vm = self._vm(host, vm_id)
        if vm.launching is not None:
            vm.launching.cancel()
        mig = vm.migration
        if mig.running and mig.task is not None:
            mig.task.cancel()
            self._teardown_destination(vm)
        elif vm.incoming:
            self._lose_destination(vm)
        self._set_down(vm, ADMIN_SHUTDOWN)
        del self._container(host)[vm_id]

    def get_stats(self, host: str, vm_id: str) -> list[dict[str, Any]]:
        """VM.getStats: the Bridge's `statsList`, a list with this VM's stats only."""
        return [self._stats(self._vm(host, vm_id))]

    def get_vm_list(
        self, host: str, full_status: bool = False, vm_list: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Host.getVMList (and getVMFullList): VDSM answers `{vmId, status, statusTime}` per VM
        whatever `fullStatus`/`onlyUUID` say (both are ignored in current VDSM)."""
        del full_status
        wanted = set(vm_list or ())
        return [
            self._status_info(vm) for vm in self.vms_on(host) if not wanted or vm.vm_id in wanted
        ]

    def get_all_vm_stats(self, host: str) -> list[dict[str, Any]]:
        return [self._stats(vm) for vm in self.vms_on(host)]

    async def migrate(self, host: str, vm_id: str, params: dict[str, Any]) -> None:
        """VM.migrate: start the migration and return at once (`true` on the wire).

        Only what VDSM checks synchronously fails here; everything else, including an unknown
        or identical destination, fails in the background as in VDSM.
        """
        vm = self._vm(host, vm_id)
        if not isinstance(params, dict):
            raise GeneralException(
                f"{type(params).__name__!r} object does not support item assignment"
            )
        if params.get("mode") == "file":
            if "dst" in params:
                raise MethodNotImplemented()  # saving to a plain file path is not simulated
            handle = params.get("hiberVolHandle")
            if not isinstance(handle, str):
                # API._getHibernationPaths found neither volume description: None unpacked
                raise GeneralException("cannot unpack non-iterable NoneType object")
            self.hibernate(host, vm_id, handle)
            return
        self._check_can_leave(vm)
        if params.get("outgoingLimit"):
            self._outgoing_limit[host] = int(params["outgoingLimit"])
        bandwidth = float(params.get("maxBandwidth") or self.bandwidth_mbps)
        mig = OutgoingMigration(dst=str(params.get("dst", "")), running=True)
        vm.migration = mig
        vm.status = VmStatus.MIGRATION_SOURCE
        self._send_status(vm)
        mig.task = self._spawn(
            self._run_migration(vm, mig, bandwidth, self._faults.pop(vm_id, None))
        )

    def hibernate(self, host: str, vm_id: str, handle: str) -> None:
        """VM.hibernate: start saving the VM to its memory volumes and return at once.

        As API.hibernate: the handle is split first (a malformed one fails with code 100), then
        the migration checks apply; the volumes themselves are only prepared by the background
        save, so a missing one fails it asynchronously (VM back Up, migrateErr).
        """
        vm = self._vm(host, vm_id)
        state, meta = parse_hibernation_handle(handle)
        self._check_can_leave(vm)
        mig = OutgoingMigration(
            dst=handle, running=True, hibernating=True, status=(0, HIBERNATION_STARTING)
        )
        vm.migration = mig
        vm.status = VmStatus.SAVING_STATE
        self._send_status(vm)
        mig.task = self._spawn(self._run_hibernation(vm, mig, state, meta))

    def _check_can_leave(self, vm: SimVm) -> None:
        """What VDSM checks before a migration (or hibernation) thread starts."""
        if vm.migrating or vm.status == VmStatus.MIGRATION_DESTINATION:
            # VDSM guards the source only; a VM still arriving here is refused the same way.
            raise MigrationInProgress(vmId=vm.vm_id)
        if vm.status in (VmStatus.WAIT_FOR_LAUNCH, VmStatus.DOWN):
            raise NoSuchVM()

    def migrate_cancel(self, host: str, vm_id: str) -> None:
        """VM.migrateCancel: the running migration stops, the VM stays Up on the source.

        As VDSM: with no migration running, the cancel succeeds quietly unless a previous
        migration had reached the transfer (libvirt then has no job to abort): code 47, as for
        a VM Down. After a save that failed or was aborted (VM Up) it answers that save's error
        code with the text "Migration process cancelled".
        """
        vm = self._vm(host, vm_id)
        mig = vm.migration
        if mig.running:
            if mig.stop_reason is None:
                mig.stop_reason = MIGRATION_CANCELED
            mig.stop.set()
            self._spawn(self._wake_slot_waiters(host))
        elif vm.status == VmStatus.DOWN:
            raise MigrationCancelationFailed()  # the domain is only Defined: NotConnectedError
        elif mig.transfer_started and not mig.hibernating:
            raise MigrationCancelationFailed()  # libvirt's "no job" once migrateToURI3 ran
        # VDSM answers the source thread's status with its message rewritten. A save never
        # clears _preparingMigrationEvt, so libvirt's "no job" after a save that failed or was
        # aborted is swallowed too: the answer is that save's own error (47, 12, ...).
        code = mig.status[0]
        mig.status = (code, MIGRATION_PROCESS_CANCELLED)
        if code != 0:
            raise CodedError(code, MIGRATION_PROCESS_CANCELLED)

    def get_migration_status(self, host: str, vm_id: str) -> dict[str, Any]:
        """VM.getMigrationStatus: the Bridge's `migrationStats`."""
        vm = self._hosts.get(host, {}).get(vm_id)
        if vm is None:
            raise NoSuchVM()  # errCode['noVM']: no context in the message
        return vm.migration.stats()

    # -- migration ------------------------------------------------------------------------

    async def _run_migration(
        self, vm: SimVm, mig: OutgoingMigration, bandwidth: float, fault: MigrationFault | None
    ) -> None:
        src = vm.host
        holding_slot = False
        try:
            dst = self._resolve_host(mig.dst) if mig.dst else None
            if dst is None:
                # VDSM cannot connect to the destination: the thread fails with migrateErr.
                self._recover(vm, mig, MIGRATE_ERR)
                return
            holding_slot = await self._acquire_slot(src, mig)
            if not holding_slot:
                self._recover(vm, mig, mig.stop_reason or MIGRATION_CANCELED)
                return
            # migrationCreate on the destination.
            if vm.vm_id in self._container(dst):
                self._recover(vm, mig, (VMExists.code, VMExists.msg))
                return
            if fault is not None and fault.phase == "destination":
                self._recover(vm, mig, (fault.code, fault.message))
                return
            dest = self._new_vm(
                vm.vm_id, vm.name, dst, vm.memory_mb, VmStatus.MIGRATION_DESTINATION, vm.xml
            )
            dest.incoming = True
            dest.time_offset = vm.time_offset
            self._container(dst)[vm.vm_id] = dest
            mig.dest_host = dst
            await self._clock.sleep(self.dest_create_seconds)
            if mig.stop.is_set():
                self._recover(vm, mig, mig.stop_reason or MIGRATION_CANCELED)
                return
            # migrateToURI3: from here a cancel aborts a libvirt job.
            mig.transfer_started = True
            duration = vm.memory_mb / bandwidth if bandwidth > 0 else 0.0
            elapsed = 0.0
            while elapsed < duration:
                step = min(self.monitor_interval, duration - elapsed)
                if await self._sleep_or_stop(step, mig):
                    self._recover(vm, mig, mig.stop_reason or MIGRATION_CANCELED)
                    return
                elapsed += step
                if elapsed >= duration:
                    break
                mig.progress = max(mig.progress, min(99, math.floor(100 * elapsed / duration)))
                if fault is not None and mig.progress >= fault.at_progress:
                    self._recover(vm, mig, (fault.code, fault.message))
                    return
                self._send_migration_status(vm)
            if fault is not None:  # a migration too short to reach the failure point still fails
                self._recover(vm, mig, (fault.code, fault.message))
                return
            self._finish_successfully(vm, mig, dest)
        finally:
            mig.running = False
            if holding_slot:
                await self._release_slot(src)

    async def _run_hibernation(
        self,
        vm: SimVm,
        mig: OutgoingMigration,
        state: HibernationVolume,
        meta: HibernationVolume,
    ) -> None:
        """SourceThread in mode "file": slot, prepare the volumes, libvirt's save, then Down."""
        src = vm.host
        holding_slot = False
        try:
            holding_slot = await self._acquire_slot(src, mig)
            if not holding_slot:
                self._recover(vm, mig, mig.stop_reason or MIGRATION_CANCELED)
                return
            volumes = [self._memory_volume(v) for v in (state, meta)]
            if None in volumes:
                # prepareVolumePath failed in the thread: VDSM reports migrateErr
                self._recover(vm, mig, MIGRATE_ERR)
                return
            mig.transfer_started = True  # libvirt's save job runs: migrateCancel aborts it
            duration = vm.memory_mb / self.save_mbps if self.save_mbps > 0 else 0.0
            if await self._sleep_or_stop(duration, mig) or await self._gate_or_stop(vm, mig):
                self._recover(vm, mig, mig.stop_reason or MIGRATION_CANCELED)
                return
            self._finish_hibernation(vm, mig, [v for v in volumes if v is not None])
        finally:
            mig.running = False
            if holding_slot:
                await self._release_slot(src)

    def _memory_volume(self, where: HibernationVolume) -> Volume | None:
        if self._storage is None:
            return None
        pool = self._storage.pools.get(where.pool)
        domain = pool.domains.get(where.domain) if pool is not None else None
        vol = domain.volumes.get(where.volume) if domain is not None else None
        if vol is None or vol.image != where.image or vol.removing:
            return None
        return vol

    async def _gate_or_stop(self, vm: SimVm, mig: OutgoingMigration) -> bool:
        """Wait at the host's job gate (key: the VM id) unless a cancel aborts the save first;
        True if stopped."""
        if self._gate_for is None or mig.stop.is_set():
            return mig.stop.is_set()
        passing = asyncio.ensure_future(self._gate_for(vm.host).pass_through(vm.vm_id))
        stopping = asyncio.ensure_future(mig.stop.wait())
        try:
            await asyncio.wait({passing, stopping}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in (passing, stopping):
                waiter.cancel()
            await asyncio.gather(passing, stopping, return_exceptions=True)
        return mig.stop.is_set()

    def _finish_hibernation(self, vm: SimVm, mig: OutgoingMigration, volumes: list[Volume]) -> None:
        """The memory is on the state volume and the VM's parameters on the metadata volume;
        the domain stops (Down, exit reason 5) and the source thread says "SaveState done"."""
        mig.progress = 100
        for vol in volumes:
            vol.used_by = vm.vm_id
        if self._storage is not None:
            self._storage.save()
        mig.status = (0, "SaveState done")
        self._set_down(vm, SAVE_STATE_SUCCEEDED)

    def _finish_successfully(self, vm: SimVm, mig: OutgoingMigration, dest: SimVm) -> None:
        """libvirt's order: the job completes on the source (downtime known), the destination
        resumes (Up), then the source domain stops (Down, "Migration succeeded")."""
        mig.progress = 100
        mig.downtime = self.downtime_ms
        self._send_migration_status(vm)
        dest.incoming = False
        dest.status = VmStatus.UP
        self._send_status(dest, **self._running_stats(dest))
        mig.status = (0, "Migration done")
        self._set_down(vm, MIGRATION_SUCCEEDED)

    def _recover(self, vm: SimVm, mig: OutgoingMigration, error: tuple[int, str]) -> None:
        """SourceThread._recover: record the error, destroy the destination, source back Up."""
        if mig.status[0] == 0:
            mig.status = error
        log.info("migration of %s from %s failed: %s", vm.vm_id, vm.host, mig.status)
        self._teardown_destination(vm)
        mig.running = False
        vm.status = VmStatus.UP
        self._send_status(vm)

    def _teardown_destination(self, vm: SimVm) -> None:
        mig = vm.migration
        if mig.dest_host is None:
            return
        dest = self._container(mig.dest_host).get(vm.vm_id)
        if dest is not None and dest.incoming:
            self._set_down(dest, ADMIN_SHUTDOWN)
            del self._container(mig.dest_host)[vm.vm_id]
        mig.dest_host = None

    def _lose_destination(self, dest: SimVm) -> None:
        """The destination VM was destroyed under a running migration: the source fails."""
        for source in self._hosts.values():
            vm = source.get(dest.vm_id)
            if vm is not None and vm.migrating and vm.migration.dest_host == dest.host:
                vm.migration.dest_host = None  # already gone; do not tear it down again
                vm.migration.stop_reason = MIGRATE_ERR
                vm.migration.stop.set()

    async def _sleep_or_stop(self, sim_seconds: float, mig: OutgoingMigration) -> bool:
        """Sleep, but wake at once when the migration is told to stop; True if stopped."""
        try:
            async with asyncio.timeout(self._clock.real(sim_seconds)):
                await mig.stop.wait()
        except TimeoutError:
            return mig.stop.is_set()
        return True

    async def _acquire_slot(self, host: str, mig: OutgoingMigration) -> bool:
        """VDSM's ongoingMigrations semaphore; False when cancelled while waiting."""
        cond = self._slot_freed.setdefault(host, asyncio.Condition())

        def free() -> bool:  # the limit is read at each wake-up: it may have been raised
            limit = self._outgoing_limit.get(host, self.max_outgoing)
            return self._outgoing.get(host, 0) < limit

        async with cond:
            await cond.wait_for(lambda: mig.stop.is_set() or free())
            if mig.stop.is_set():
                return False
            self._outgoing[host] = self._outgoing.get(host, 0) + 1
            return True

    async def _release_slot(self, host: str) -> None:
        cond = self._slot_freed.setdefault(host, asyncio.Condition())
        async with cond:
            self._outgoing[host] -= 1
            cond.notify_all()

    async def raise_outgoing_limit(self, host: str, limit: int) -> None:
        """Let `limit` migrations (or saves) leave `host` at once, waking those waiting."""
        self._outgoing_limit[host] = limit
        await self._wake_slot_waiters(host)

    async def _wake_slot_waiters(self, host: str) -> None:
        cond = self._slot_freed.setdefault(host, asyncio.Condition())
        async with cond:
            cond.notify_all()

    # -- launch, status and events ----------------------------------------------------------

    async def _launch(self, vm: SimVm) -> None:
        """WaitForLaunch -> "Powering up" when the domain runs -> Up when the guest reports."""
        await self._clock.sleep(self.launch_seconds)
        vm.status = VmStatus.POWERING_UP
        vm.started = time.monotonic()
        self._send_status(vm, **self._running_stats(vm))
        await self._clock.sleep(self.boot_seconds)
        vm.status = VmStatus.UP
        self._send_status(vm, **self._running_stats(vm))
        vm.launching = None

    def _set_down(self, vm: SimVm, reason: int) -> None:
        if vm.status == VmStatus.DOWN:
            return  # VDSM's DoubleDownError: no second Down event
        vm.status = VmStatus.DOWN
        vm.exit_info = {"exitCode": 0, "exitMessage": EXIT_MESSAGES[reason], "exitReason": reason}
        self._send_status(vm, **self._down_stats(vm))

    def _send_status(self, vm: SimVm, **details: Any) -> None:
        """`|virt|VM_status|<id>`: {vmId: {status, ...}}, as Vm.send_status_event."""
        payload = {"status": vm.status.value, **details}
        self._events_for(vm.host).publish(f"|virt|VM_status|{vm.vm_id}", {vm.vm_id: payload})

    def _send_migration_status(self, vm: SimVm) -> None:
        stats = vm.migration.stats()
        payload: dict[str, Any] = {"progress": stats["progress"], "postcopy": False}
        if "downtime" in stats:
            payload["downtime"] = stats["downtime"]
        self._events_for(vm.host).publish(
            f"|virt|VM_migration_status|{vm.vm_id}", {vm.vm_id: payload}
        )

    def _status_info(self, vm: SimVm) -> dict[str, Any]:
        return {"vmId": vm.vm_id, "status": vm.status.value, "statusTime": _status_time()}

    def _stats(self, vm: SimVm) -> dict[str, Any]:
        """Vm.getStats: the exit information once Down, else config and running figures."""
        stats: dict[str, Any] = {"statusTime": _status_time(), "status": vm.status.value}
        if vm.status == VmStatus.DOWN:
            stats.update(self._down_stats(vm))
            return stats
        stats.update(
            {
                "vmId": vm.vm_id,
                "vmName": vm.name,
                "vmType": "kvm",
                "kvmEnable": "true",
                "acpiEnable": "true",
            }
        )
        stats.update(self._running_stats(vm))
        stats.update({"memUsage": "0", "cpuUser": "0.00", "cpuSys": "0.00", "session": "Unknown"})
        memory_kib = str(vm.memory_mb * 1024)  # vmstats.balloon: KiB, as strings
        stats["balloonInfo"] = {
            "balloon_max": memory_kib,
            "balloon_min": memory_kib,
            "balloon_cur": memory_kib,
            "balloon_target": memory_kib,
            "ballooning_enabled": True,
        }
        if vm.migrating:
            stats["migrationProgress"] = vm.migration.progress
        return stats

    def _running_stats(self, vm: SimVm) -> dict[str, Any]:
        elapsed = (time.monotonic() - vm.started) / self._clock.time_scale
        return {
            "elapsedTime": str(int(max(0.0, elapsed))),
            "monitorResponse": "0",
            "clientIp": "",
            "timeOffset": vm.time_offset or "0",
            "displayInfo": [],
        }

    def _down_stats(self, vm: SimVm) -> dict[str, Any]:
        stats: dict[str, Any] = {
            "vmId": vm.vm_id,
            "status": vm.status.value,
            **(vm.exit_info or {}),
        }
        if vm.time_offset is not None:
            stats["timeOffset"] = vm.time_offset
        return stats

    # -- helpers -----------------------------------------------------------------------------

    def _container(self, host: str) -> dict[str, SimVm]:
        return self._hosts.setdefault(host, {})

    def _vm(self, host: str, vm_id: str) -> SimVm:
        vm = self._hosts.get(host, {}).get(vm_id)
        if vm is None:
            raise NoSuchVM(vmId=vm_id)
        return vm

    def _new_vm(
        self, vm_id: str, name: str, host: str, memory_mb: int, status: VmStatus, xml: str
    ) -> SimVm:
        return SimVm(vm_id, name, host, memory_mb, status, xml, started=time.monotonic())

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task


def _status_time() -> str:
    """VDSM's statusTime: its monotonic event time in ms, as a string."""
    return str(SimClock.monotonic_ms())


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _parse_vm_params(params: dict[str, Any], vm_id: str | None) -> tuple[str, str, int, str]:
    xml = params.get("_srcDomXML") or params.get("xml")
    if xml:
        try:
            root = ET.fromstring(xml)
        except ET.ParseError as e:
            raise GeneralException(str(e)) from None
        uuid = root.findtext("uuid")
        if not uuid:
            raise GeneralException("domain XML has no <uuid>")
        return uuid, root.findtext("name") or uuid, _xml_memory_mb(root), xml
    if "vmId" not in params and vm_id is None:
        raise GeneralException("'xml'")  # VDSM reads vmParams['xml']: a KeyError
    the_id = str(params.get("vmId") or vm_id)
    name = str(params.get("vmName") or the_id)
    memory_mb = int(params.get("memSize", 1024))
    return the_id, name, memory_mb, _domain_xml(the_id, name, memory_mb)


def _xml_memory_mb(root: ET.Element) -> int:
    memory = root.find("memory")
    if memory is None or not (memory.text or "").strip():
        return 1024
    factor = {"b": 1 / 2**20, "bytes": 1 / 2**20, "k": 1 / 1024, "kib": 1 / 1024, "m": 1, "mib": 1}
    unit = memory.get("unit", "KiB").lower()
    return max(1, int(int(memory.text or "0") * factor.get(unit, 1 / 1024)))


def _domain_xml(vm_id: str, name: str, memory_mb: int) -> str:
    return (
        f"<domain type='kvm'><name>{name}</name><uuid>{vm_id}</uuid>"
        f"<memory unit='KiB'>{memory_mb * 1024}</memory></domain>"
    )

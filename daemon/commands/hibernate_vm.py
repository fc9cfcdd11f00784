"""HibernateVm: two memory volumes as VDSM tasks, then VM.hibernate, ended by the host monitor.

As the engine's HibernateVmCommand: the memory dump and metadata volumes are created on the
pool's SPM (scenario 2); once both tasks finished, VM.hibernate goes to the VM's host with a
hibernationVolHandle naming them, and the job waits (scenario 4) until the host reports the VM
Down with its state saved (exit reason 5, "SaveState succeeded"). The commit then removes the
Down VM from the host, as the engine does once its monitor saw it saved.

Cancel: while the volumes are being created the coordinator stops (and under revert reverts)
their tasks; while the VM saves, VM.migrateCancel aborts the save and the VM is Up again on its
host, and under revert the memory volumes are removed with their tasks. A VM whose state is
saved is the point of no return: the hibernation stands (see `on_cancel`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from enum import StrEnum
from typing import Any, ClassVar

from daemon import model
from daemon.commands.migrate_vm import locate_vm
from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.engine.vmwatch import SAVE_STATE_SUCCEEDED, VmState
from daemon.errors import Conflict, NotFound
from daemon.model import CancelMode, LockKind, Step, StepStatus, StepType, TaskStatus, new_id
from daemon.vdsm.errors import (
    ClientTimeout,
    ConnectionLost,
    RecoveryInProgress,
    UnknownTask,
    VdsmCallError,
)
from daemon.vdsm.verbs import VdsmHost

MIB = 1024 * 1024
MIGRATION_IN_PROGRESS = 51  # VDSM's migInProgress: a migration (or save) of the VM runs
NO_VM = 1  # VDSM's noVM: the VM is not on the host, or Down
DUMP_OVERHEAD_MB = 200  # the engine sizes the dump as the VM's memory + 200 MiB (+ video RAM)
METADATA_BYTES = 10 * 1024  # MemoryUtils.METADATA_SIZE_IN_BYTES


class SaveOutcome(StrEnum):
    """Where a save stands once VM.migrateCancel was sent (or the save ended on its own)."""

    NOT_STARTED = "not_started"  # VM.hibernate never reached the host: nothing to stop
    RESUMED = "resumed"  # the save was aborted or failed: the VM runs Up again
    SAVED = "saved"  # the VM is Down with its state saved: the hibernation completed
    DOWN = "down"  # the VM is Down for another reason (destroyed, crashed)


class TooLateToRevert(Conflict):
    """A revert reached a VM whose state was already saved."""

    code = "too_late"


class HibernateVm(CommandBase):
    revert_on_failure = True  # a failed hibernation leaves no memory volumes behind
    poll_seconds: ClassVar[float] = 1.0  # VM.getMigrationStatus between monitor reports

    spec = ActionSpec(
        "HibernateVm",
        "Suspend a running VM to disk: save its memory to new volumes and stop it",
        {
            "vm": Param("uuid"),
            "domain": Param(
                "uuid",
                required=False,
                description="storage domain for the memory volumes (default: the pool's master)",
            ),
        },
        CancelPolicy(
            notes="while the memory volumes are created their tasks are stopped (revert: "
            "rolled back); while the VM saves its state VM.migrateCancel resumes it Up on its "
            "host (revert: the memory volumes are removed); once the VM is down with its state "
            "saved the hibernation stands",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"vm:{self.params['vm']}", LockKind.EXCLUSIVE)]

    async def validate(self) -> None:
        vm = self.params["vm"]
        host = await locate_vm(self, vm)
        if host is None:
            raise NotFound(f"VM {vm} is not running Up on any UP host")
        memory_mb = _memory_mb(await self.vdsm(host).vm_info(vm))
        if memory_mb is None:
            raise Conflict(
                f"VM {vm} on {host} reports no memory size (balloonInfo.balloon_max): "
                "its memory volume cannot be sized"
            )
        pool = self.registry.hosts[host].pool
        domain = self.params.get("domain")
        if domain is None:
            domain = await self.vdsm(await self.ctx.hosts.spm(pool)).master_domain(pool)
        d = self.record.data
        d.update(host=host, pool=pool, domain=domain, memory_mb=memory_mb)
        for key in ("dump_image", "dump_volume", "meta_image", "meta_volume"):
            d.setdefault(key, new_id())  # kept with the command: a restart reuses them

    # -- execute: the memory volumes ---------------------------------------------------------

    async def execute(self) -> None:
        d = self.record.data
        pool, domain, vm = d["pool"], d["domain"], self.params["vm"]
        dump_size = (int(d["memory_mb"]) + DUMP_OVERHEAD_MB) * MIB

        # As MemoryUtils: the dump is RAW, sparse on file domains (the engine preallocates it on
        # block ones; every simulated pool is NFS); the small metadata volume is preallocated.
        def dump(host: VdsmHost) -> Awaitable[str]:
            return host.create_volume(
                pool, domain, d["dump_image"], d["dump_volume"], dump_size,
                fmt="RAW", prealloc="SPARSE", disk_type="MEMD",
                desc=f"memory dump for hibernation of VM {vm}",
            )  # fmt: skip

        def metadata(host: VdsmHost) -> Awaitable[str]:
            return host.create_volume(
                pool, domain, d["meta_image"], d["meta_volume"], METADATA_BYTES,
                fmt="RAW", prealloc="PREALLOCATED", disk_type="MEMM",
                desc=f"metadata for hibernation of VM {vm}",
            )  # fmt: skip

        await self.start_task("createVolume", pool, StepType.CREATE_VOLUME, "memory dump", dump)
        await self.start_task("createVolume", pool, StepType.CREATE_VOLUME, "metadata", metadata)

    # -- wait: the volumes, then the save -------------------------------------------------------

    def handle(self) -> str:
        """VDSM's HibernationVolumeHandle for this command's two volumes."""
        d = self.record.data
        keys = ("domain", "pool", "dump_image", "dump_volume", "meta_image", "meta_volume")
        return ",".join(d[key] for key in keys)

    async def wait(self) -> None:
        await self.wait_tasks()
        vm, host = self.params["vm"], self.data("host")
        if self._step() is None:
            step = self.registry.add_step(
                self.job, StepType.SAVING_STATE, f"Saving the state of VM {vm} on {host}", host=host
            )
            await self.remember(step=step.id)
        if not self.data("hibernate_sent") and not await self._save_under_way():
            await self.remember(hibernating=True)  # from here a cancel sends VM.migrateCancel
            try:
                await _critical(self.vdsm(host).hibernate_vm(vm, self.handle()))
            except VdsmCallError as e:
                resent = self.data("hibernate_resent")
                if e.vdsm_code not in (MIGRATION_IN_PROGRESS, NO_VM) or not resent:
                    raise
                # The first VM.hibernate's save had not left Up when we asked and now runs (51)
                # or is over, the VM Down or gone (1): `_wait_saved` reads which.
            await self.remember(hibernate_sent=True)
        await self._wait_saved()
        self._end_step(StepStatus.FINISHED)

    async def _save_under_way(self) -> bool:
        """After a restart mid-send: did VM.hibernate reach the host? A VM no longer Up tells
        it did; `_wait_saved` then reads the outcome.

        A VM Up gets VM.hibernate again. Its migration status cannot tell whether our verb
        reached it: VDSM keeps the last migration's status on the VM, so an earlier save that
        was cancelled or failed (another job's) reads as ours. Sending again is safe either
        way: a save of ours that failed left the VM Up and is simply retried, one that was
        cancelled was cancelled by a committed cancel, which the coordinator resumes instead of
        this wait, and one still starting refuses the second verb (MIGRATION_IN_PROGRESS,
        or NO_VM once it is over).
        """
        if not self.data("hibernating"):
            return False
        stats = await self.vdsm(self.data("host")).vm_info(self.params["vm"])
        if stats.get("status") != "Up":
            return True
        await self.remember(hibernate_resent=True)
        return False

    async def _wait_saved(self) -> None:
        vm, host = self.params["vm"], self.data("host")
        watch = self.ctx.executor.vms
        while True:
            state = watch.where(vm).get(host)
            if _saved(state):
                return
            if state is not None and state.status == "Down":
                reason = state.extra.get("exitMessage", f"exit reason {state.exit_reason}")
                raise CommandFailed(f"VM {vm} went down on {host} without saving: {reason}")
            try:
                status = await self.vdsm(host).migration_status(vm)
            except (ClientTimeout, ConnectionLost, RecoveryInProgress):
                status = {}  # the host cannot answer now; the save goes on without us: wait
            except VdsmCallError as e:
                if e.vdsm_code != 1:
                    raise
                raise CommandFailed(f"VM {vm} disappeared from {host} while saving") from e
            code = int(status.get("status", {}).get("code", 0) or 0)
            message = str(status.get("status", {}).get("message", ""))
            if code:
                raise CommandFailed(f"hibernation of VM {vm} on {host} failed: [{code}] {message}")
            if message == "SaveState done":
                return  # VDSM's own word; the monitor's Down report may still be on its way
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_seconds):
                    await watch.wait_for(vm, lambda copies: _saved(copies.get(host)))

    # -- end ------------------------------------------------------------------------------------

    async def end_action(self) -> dict[str, Any]:
        vm, host = self.params["vm"], self.data("host")
        with contextlib.suppress(VdsmCallError):
            await self.vdsm(host).destroy_vm(vm)  # VDSM keeps the Down VM until then
        self._end_step(StepStatus.FINISHED)
        return self._result()

    async def end_with_failure(self) -> None:
        """Stop a save still under way before the volumes it writes are rolled back; a VM that
        did get saved keeps its volumes (its state lives there)."""
        if self.data("hibernating") and await self._stop_saving() is SaveOutcome.SAVED:
            self._end_step(StepStatus.FINISHED)
            return
        self._end_step(StepStatus.FAILED)
        await self.revert_tasks()

    def _result(self) -> dict[str, Any]:
        d = self.record.data
        return {
            "vm": self.params["vm"],
            "host": d["host"],
            "hibernation_vol_handle": self.handle(),
            "memory_dump": {"image": d["dump_image"], "volume": d["dump_volume"]},
            "metadata": {"image": d["meta_image"], "volume": d["meta_volume"]},
            "pool": d["pool"],
            "domain": d["domain"],
        }

    # -- cancel ---------------------------------------------------------------------------------

    async def on_cancel(self, mode: CancelMode) -> list[str]:
        """VM.migrateCancel while the VM saves; the volume tasks are the coordinator's.

        A VM found already saved means VDSM finished before the cancel reached it: the
        hibernation stands, and its memory volumes hold the VM's only state. Their tasks are
        cleared here, before the coordinator could revert them (a cleared task cannot be
        reverted, so not even a stop escalated to revert later can take the state away); the
        Down VM goes from its host as at the end. Under stop that is completed work kept
        (`late`); a revert is refused as too late and the job fails with that reason.
        """
        if not self.data("hibernating"):
            return []  # VM.hibernate was never sent
        vm, host = self.params["vm"], self.data("host")
        # A repeated call (the coordinator retries an unreachable host) must not mistake the
        # VM this path already removed for one that went down unsaved.
        if self.data("saved_before_cancel"):
            outcome = SaveOutcome.SAVED
        else:
            outcome = await self._stop_saving()
        if outcome is SaveOutcome.SAVED:
            self._end_step(StepStatus.FINISHED)
            await self.remember(saved_before_cancel=True, completed_before_cancel=True)
            await self._keep_volumes()
            with contextlib.suppress(VdsmCallError):
                await self.vdsm(host).destroy_vm(vm)  # as end_action: the Down VM goes
            if mode is CancelMode.REVERT:
                self._record({"action": "too_late", "command": self.record.id, "late": True})
                raise TooLateToRevert(
                    f"VM {vm} was already down with its state saved when the cancel reached "
                    f"{host}: past the point of no return, the hibernation stands and its memory "
                    "volumes are kept"
                )
            return [f"VM {vm} was already saved on {host}: the hibernation stands"]
        self._end_step(StepStatus.ABORTED)
        if outcome is SaveOutcome.RESUMED:
            return [f"VM.migrateCancel on {host}: VM {vm} resumed, Up"]
        if outcome is SaveOutcome.DOWN:
            return [f"VM {vm} is down on {host} without a saved state"]
        return []

    async def _keep_volumes(self) -> None:
        """Task.clear the memory volumes' finished tasks on the pool's SPM, now."""
        for task in self.tasks():
            if task.status not in (TaskStatus.ENDED, TaskStatus.CLEARING) or not task.vdsm_id:
                continue
            self.registry.set_task_status(task, TaskStatus.CLEARING)
            spm = await self.ctx.hosts.spm(task.pool)
            with contextlib.suppress(UnknownTask):  # cleared by an attempt whose reply was lost
                await self.vdsm(spm).clear_task(task.vdsm_id)
            self.registry.set_task_status(task, TaskStatus.CLEARED)
            self._record({"action": "cleared", "task": task.vdsm_id, "host": spm})

    def _record(self, action: dict[str, Any]) -> None:
        """An entry in the job's cancel record, shaped as the coordinator's own."""
        cancel = self.job.cancel
        if cancel is not None:
            cancel.late = cancel.late or bool(action.pop("late", False))
            cancel.actions.append({**action, "at": model.now()})

    async def _stop_saving(self) -> SaveOutcome:
        """VM.migrateCancel, then wait until the save is over one way or the other."""
        vm, host = self.params["vm"], self.data("host")
        try:
            await self.vdsm(host).migrate_cancel(vm)
        except (ClientTimeout, ConnectionLost, RecoveryInProgress):
            raise  # the host did not answer: the coordinator retries
        except VdsmCallError as e:
            # 1: gone; 47: nothing to abort (saved, or never started). Any other code is, as
            # VDSM answers once a save failed by itself, that save's own error: the VM's
            # status below tells; only a VM still saving makes the refusal stand.
            if e.vdsm_code not in (1, 47) and await self._still_saving():
                raise
        while True:
            try:
                stats = await self.vdsm(host).vm_info(vm)
            except VdsmCallError as e:
                if e.vdsm_code != 1:
                    raise
                return SaveOutcome.DOWN  # destroyed meanwhile
            status = stats.get("status")
            if status == "Down":
                saved = int(stats.get("exitReason", 0) or 0) == SAVE_STATE_SUCCEEDED
                return SaveOutcome.SAVED if saved else SaveOutcome.DOWN
            if status == "Up":
                resumed = await self._migration_code() != 0
                return SaveOutcome.RESUMED if resumed else SaveOutcome.NOT_STARTED
            with contextlib.suppress(TimeoutError):  # still "Saving State"
                async with asyncio.timeout(0.5):
                    await self.ctx.executor.vms.wait_for(
                        vm, lambda copies: _settled(copies.get(host))
                    )

    async def _still_saving(self) -> bool:
        try:
            stats = await self.vdsm(self.data("host")).vm_info(self.params["vm"])
        except VdsmCallError as e:
            if e.vdsm_code != NO_VM:
                raise
            return False  # gone: the loop in `_stop_saving` reports it down
        return stats.get("status") == "Saving State"

    async def _migration_code(self) -> int:
        status = await self.vdsm(self.data("host")).migration_status(self.params["vm"])
        return int(status.get("status", {}).get("code", 0) or 0)

    # -- steps ------------------------------------------------------------------------------------

    def _step(self) -> Step | None:
        return self.registry.steps.get(self.job.id, {}).get(self.data("step", ""))

    def _end_step(self, status: StepStatus) -> None:
        step = self._step()
        if step is not None and step.status is StepStatus.STARTED:
            self.registry.end_step(step, status)


async def _critical(verb: Awaitable[None]) -> None:
    """Send a verb whose effect must be known even if a cancel lands while it is in flight
    (cancellation rule 3): the reply is awaited before the cancel proceeds, so the canceller
    finds the save started (and aborts it) or never started."""
    sending = asyncio.ensure_future(verb)
    try:
        await asyncio.shield(sending)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await sending
        raise


def _memory_mb(stats: dict[str, Any]) -> int | None:
    """The VM's memory from VM.getStats' balloonInfo (KiB, as a string); None if absent."""
    balloon = stats.get("balloonInfo")
    raw = balloon.get("balloon_max") if isinstance(balloon, dict) else None
    try:
        kib = int(raw) if raw is not None else 0
    except (TypeError, ValueError):
        return None
    return -(-kib // 1024) if kib > 0 else None


def _saved(state: VmState | None) -> bool:
    return (
        state is not None and state.status == "Down" and state.exit_reason == SAVE_STATE_SUCCEEDED
    )


def _settled(state: VmState | None) -> bool:
    return state is not None and state.status in ("Up", "Down")

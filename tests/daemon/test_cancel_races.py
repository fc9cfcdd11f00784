"""The deterministic race suite of cancellation (issue 4): a cancel at every phase boundary.

Every interleaving is forced with a hook, never with a sleep: the simulator's job gate holds storage
jobs at their end, its `latency`/`down`/error faults hold verbs, and a few daemon-side hooks hold a
poll, an end_action or the moment a committed cancel reaches the job's coroutine. Each test then
checks the simulator's own state: task tables empty, volumes as the mode says, VMs where they
must be, locks released, and the job terminal with a cancel outcome.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from daemon.commands.create_disk import CreateDisk
from daemon.engine.cancel import CancelRefused
from daemon.model import CancelMode, Job, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack, start_sim
from tests.daemon.test_cancel import spm_host, until, until_sim

STOP, REVERT = CancelMode.STOP, CancelMode.REVERT


def disk(s: Stack, **extra: Any) -> dict[str, Any]:
    return {"pool": s.pool, "domain": s.domains[0], "size": 4096, **extra}


async def cancel(s: Stack, job: Job, mode: CancelMode | None = None, **kw: Any) -> Any:
    kw.setdefault("requester", 1000)
    return await s.daemon.cancels.cancel(job.id, mode=mode, reason="race test", **kw)


def polling(s: Stack, job: Job) -> Callable[[], bool]:
    reg = s.daemon.registry
    return lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))


async def ended(s: Stack, job: Job, status: JobStatus, outcome: str | None) -> Job:
    """The job's end, and every invariant a settled job keeps on both sides."""
    job = await s.wait_job(job)
    assert job.status is status, (job.status, job.error, job.cancel)
    if outcome is None:
        assert job.cancel is None or job.cancel.outcome in ("", "too_late")
    else:
        assert job.cancel is not None and job.cancel.outcome == outcome, job.cancel
    reg = s.daemon.registry
    await until(
        s,
        job.id,
        lambda: all(
            t.status in (TaskStatus.CLEARED, TaskStatus.LOST) for t in reg.job_tasks(job.id)
        ),
    )
    mine = set(sent(s, job))
    left = [t for table in s.sim_tasks().values() for t in table if t["id"] in mine]
    assert left == [], left  # every task of the job is gone from every host
    assert reg.job_locks(job.id) == []
    return job


def all_clear(s: Stack) -> None:
    assert all(table == [] for table in s.sim_tasks().values()), s.sim_tasks()


def sent(s: Stack, job: Job) -> list[str]:
    """VDSM ids of the tasks the job made on a host."""
    return [t.vdsm_id for t in s.daemon.registry.job_tasks(job.id) if t.vdsm_id]


# -- before and during validation ------------------------------------------------------------------


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_cancel_before_the_job_ran(tmp_path: Path, mode: CancelMode) -> None:
    async with running_stack(tmp_path) as s:
        before = s.volumes()
        job = await s.submit("CreateDisk", disk(s))
        decision = await cancel(s, job, mode)  # no await between: the coroutine never ran
        assert decision.status == 202
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert sent(s, job) == [] and s.volumes() == before  # nothing reached a host


@pytest.mark.parametrize("action", ["CreateDisk", "DeleteDisk", "CreateVm"])
async def test_nothing_new_starts_once_the_intent_is_committed(tmp_path: Path, action: str) -> None:
    """The worst interleaving: the job's coroutine keeps running after the intent committed
    and before the coordinator cancels it. It must start nothing new (rule 1, policy)."""
    async with running_stack(tmp_path) as s:
        image = str(uuid.uuid4())
        if action == "DeleteDisk":
            made = await s.wait_job(await s.submit("CreateDisk", disk(s, image=image)))
            assert made.status is JobStatus.FINISHED
        before = s.volumes()
        params = {
            "CreateDisk": disk(s),
            "DeleteDisk": {"pool": s.pool, "domain": s.domains[0], "image": image},
            "CreateVm": {"name": "vmx", "host": "host2", "disks": [disk(s), disk(s)]},
        }[action]
        coordinator = s.daemon.cancels
        launch = coordinator._launch
        held: list[asyncio.Task[None]] = []

        def late_launch(job: Job) -> None:
            async def later() -> None:
                executor = s.daemon.executor
                running = executor.running_task(job.id)
                # let the job run on its own until it holds for the cancel or starts a task
                async with asyncio.timeout(10):
                    while (  # noqa: ASYNC110 - nothing signals a coroutine blocking
                        running is not None
                        and not running.done()
                        and not sent(s, job)
                        and job.id not in executor.holding
                    ):
                        await asyncio.sleep(0.001)  # the job's own pace
                launch(job)

            held.append(asyncio.create_task(later()))

        coordinator._launch = late_launch  # type: ignore[method-assign]
        job = await s.submit(action, params)
        await cancel(s, job, STOP)
        await asyncio.gather(*held)
        coordinator._launch = launch  # type: ignore[method-assign]
        job = await ended(s, job, JobStatus.ABORTED, "stopped")
        assert sent(s, job) == [], "a verb was sent after the cancel was committed"
        assert s.volumes() == before


async def test_cancel_during_validation(tmp_path: Path) -> None:
    """MigrateVm's validation asks the hosts where the VM runs; those calls are held."""
    async with running_stack(tmp_path) as s:
        vm = str(uuid.uuid4())
        for h in s.sim.cluster.hosts.values():
            h.faults.settings.update({"latency": 2000.0})  # 10 s real: held until cancelled
        s.sim.cluster.fleet.add_vm(vm, "v1", "host3")
        job = await s.submit("MigrateVm", {"vm": vm, "dst_host": "host2"})
        reg = s.daemon.registry
        await until(s, job.id, lambda: bool(reg.steps.get(job.id)))  # VALIDATING has begun
        await cancel(s, job, STOP)
        for h in s.sim.cluster.hosts.values():
            h.faults.clear()
        job = await ended(s, job, JobStatus.ABORTED, "stopped")
        assert [v.vm_id for v in s.sim.cluster.fleet.vms_on("host3")] == [vm]
        assert s.sim.cluster.fleet.vms_on("host2") == []


# -- the task-creating verb, queued, running, finished ------------------------------------------


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_cancel_with_the_creating_verb_in_flight(tmp_path: Path, mode: CancelMode) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        spm.faults.settings.update({"latency": 100.0})  # 0.5 s real before each reply
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        reg = s.daemon.registry
        await until_sim(lambda: len(spm.tasks.raw_table()) == 1)  # VDSM made it, reply held
        assert [t.status for t in reg.job_tasks(job.id)] == [TaskStatus.SUBMITTING]
        await cancel(s, job, mode)
        spm.faults.clear()
        await until(s, job.id, lambda: bool(sent(s, job)))  # the reply's id is still recorded
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert volume not in s.volumes()
        assert reg.job_tasks(job.id)[0].vdsm_result == "cleanSuccess"


async def test_cancel_a_queued_task(tmp_path: Path) -> None:
    async with running_stack(tmp_path, workers=1) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        first_vol, second_vol = str(uuid.uuid4()), str(uuid.uuid4())
        first = await s.submit("CreateDisk", disk(s, volume=first_vol))
        await until_sim(lambda: len(spm.gate.held()) == 1)
        second = await s.submit("CreateDisk", disk(s, volume=second_vol))
        await until(s, second.id, polling(s, second))
        queued = sent(s, second)[0]
        assert {t["id"]: t for t in spm.tasks.raw_table()}[queued]["state"] == "queued"
        await cancel(s, second, STOP)
        second = await ended(s, second, JobStatus.ABORTED, "stopped")
        assert second.cancel is not None and not second.cancel.late
        spm.gate.open()
        await ended(s, first, JobStatus.FINISHED, None)
        assert first_vol in s.volumes() and second_vol not in s.volumes()
        all_clear(s)


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_cancel_a_running_task(tmp_path: Path, mode: CancelMode) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        await cancel(s, job, mode)
        reg = s.daemon.registry
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert job.cancel is not None and not job.cancel.late
        assert volume not in s.volumes()


class PollGate:
    """Holds the daemon's task polls of one host (daemon side) so VDSM can finish a task unseen."""

    def __init__(self, s: Stack, host: str) -> None:
        self.open = asyncio.Event()
        self.open.set()
        self.waiting = 0
        vdsm = s.daemon.hosts.vdsm(host)
        orig = vdsm.task_statuses

        async def task_statuses(*a: Any, **kw: Any) -> Any:
            self.waiting += 1
            try:
                await self.open.wait()
            finally:
                self.waiting -= 1
            return await orig(*a, **kw)

        vdsm.task_statuses = task_statuses  # type: ignore[method-assign]


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_task_finished_before_the_stop_and_before_the_poll(
    tmp_path: Path, mode: CancelMode
) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        polls = PollGate(s, spm.name)
        polls.open.clear()
        await until_sim(lambda: polls.waiting > 0 and len(spm.gate.held()) == 1)
        spm.gate.open()  # VDSM finishes the task; the daemon does not know yet
        await until_sim(lambda: all(t["state"] == "finished" for t in spm.tasks.raw_table()))
        await cancel(s, job, mode)
        polls.open.set()
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert job.cancel is not None and job.cancel.late  # the work had completed
        assert (volume in s.volumes()) is (mode is STOP)  # kept under stop, undone under revert


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_task_finished_and_polled_before_the_cancel(tmp_path: Path, mode: CancelMode) -> None:
    """The poll has seen the end: the job is either still before its commit (the cancel wins,
    late) or in it (409 too_late and the job finishes). Both are checked whichever happens."""
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        spm.gate.open()
        reg = s.daemon.registry
        await until(
            s,
            job.id,
            lambda: any(t.status is not TaskStatus.POLLING for t in reg.job_tasks(job.id)),
        )
        try:
            await cancel(s, job, mode)
        except CancelRefused as e:
            assert e.code in ("too_late", "job_ended")
            await ended(s, job, JobStatus.FINISHED, None)
            assert volume in s.volumes()
            return
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert job.cancel is not None and job.cancel.late
        assert (volume in s.volumes()) is (mode is STOP)


# -- end_action and after the end ---------------------------------------------------------------


class HeldEnd(CreateDisk):
    release: asyncio.Event
    entered: asyncio.Event

    async def end_action(self) -> dict[str, Any]:
        HeldEnd.entered.set()
        await HeldEnd.release.wait()
        return await super().end_action()


async def test_cancel_during_end_action_is_too_late(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        HeldEnd.release, HeldEnd.entered = asyncio.Event(), asyncio.Event()
        s.daemon.executor.actions["CreateDisk"] = HeldEnd
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        async with asyncio.timeout(20):
            await HeldEnd.entered.wait()
        for mode in (STOP, REVERT):
            with pytest.raises(CancelRefused) as refused:
                await cancel(s, job, mode)
            assert (refused.value.status, refused.value.code) == (409, "too_late")
        with pytest.raises(CancelRefused) as forced:
            await cancel(s, job, STOP, force=True, privileged=False)
        assert forced.value.status == 403
        HeldEnd.release.set()
        job = await ended(s, job, JobStatus.FINISHED, None)
        assert job.cancel is None and volume in s.volumes()


async def test_cancel_after_the_job_ended_changes_nothing(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        volume = str(uuid.uuid4())
        job = await ended(
            s, await s.submit("CreateDisk", disk(s, volume=volume)), JobStatus.FINISHED, None
        )
        updated = job.updated_at
        for mode in (STOP, REVERT, None):
            with pytest.raises(CancelRefused) as refused:
                await cancel(s, job, mode, force=True, privileged=True)
            assert (refused.value.status, refused.value.code) == (409, "job_ended")
        assert job.cancel is None and job.updated_at == updated and volume in s.volumes()


# -- duplicates, concurrency, escalation ---------------------------------------------------------


async def test_concurrent_identical_cancels(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        job = await s.submit("CreateDisk", disk(s))
        await until(s, job.id, polling(s, job))
        a, b = await asyncio.gather(cancel(s, job, STOP), cancel(s, job, STOP))
        assert sorted((a.status, b.status)) == [200, 202]
        again = await cancel(s, job)
        assert (again.status, again.accept) == (200, False)
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "stopped")
        assert job.cancel is not None
        assert [a["action"] for a in job.cancel.actions].count("stopped") == 1


async def test_concurrent_stop_and_revert_end_reverted(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        before = s.volumes()
        job = await s.submit("CreateVm", {"name": "vmr", "host": "host2", "disks": [disk(s)] * 2})
        await until_sim(lambda: len(spm.gate.held()) == 2)
        spm.gate.release(spm.gate.held()[0])
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
        )
        a, b = await asyncio.gather(cancel(s, job, STOP), cancel(s, job, REVERT))
        assert (a.status, b.status) == (202, 202) and b.reason == "escalated"
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "reverted")
        assert s.volumes() == before
        with pytest.raises(CancelRefused):
            await cancel(s, job, STOP)


async def test_stop_escalated_to_revert_while_the_stop_waits(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        before = s.volumes()
        job = await s.submit("CreateVm", {"name": "vme", "host": "host2", "disks": [disk(s)] * 2})
        await until_sim(lambda: len(spm.gate.held()) == 2)
        spm.gate.release(spm.gate.held()[0])
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
        )
        await cancel(s, job, STOP)
        await until(s, job.id, lambda: any(t.stop_sent for t in reg.job_tasks(job.id)))
        up = await cancel(s, job, REVERT)
        assert up.accept and up.reason == "escalated"
        with pytest.raises(CancelRefused) as down:
            await cancel(s, job, STOP)
        assert down.value.code == "no_downgrade"
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "reverted")
        assert s.volumes() == before
        assert job.cancel is not None
        assert [a["action"] for a in job.cancel.actions].count("escalated") == 1


async def test_escalation_once_the_stop_clears_is_refused(tmp_path: Path) -> None:
    """Once a stop has begun clearing its tasks, finished work can no longer be reverted with
    Task.revert: the escalation is refused (409 too_late) and the stop's result stands."""
    async with running_stack(tmp_path) as s:
        s.daemon.cancels.retry = 0.01
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        job = await s.submit("CreateVm", {"name": "vmk", "host": "host2", "disks": [disk(s)] * 2})
        await until_sim(lambda: len(spm.gate.held()) == 2)
        spm.gate.release(spm.gate.held()[0])
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
        )
        finished = next(t for t in reg.job_tasks(job.id) if t.status is TaskStatus.ENDED)
        spm.faults.settings.update({"error_code": 99, "error_methods": ["Task.clear"]})
        await cancel(s, job, STOP)
        spm.gate.open()
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.CLEARING for t in reg.job_tasks(job.id))
        )
        with pytest.raises(CancelRefused) as late:
            await cancel(s, job, REVERT)
        assert (late.value.status, late.value.code) == (409, "too_late")
        spm.faults.clear()
        job = await ended(s, job, JobStatus.ABORTED, "stopped")
        assert job.cancel is not None and job.cancel.mode is STOP and job.cancel.late
        assert finished.vdsm_result == "success"  # the finished disk was kept, as stop says


async def test_escalation_after_a_restart_mid_clear_is_refused(tmp_path: Path) -> None:
    """The same refusal survives a restart: the stop had begun clearing when the daemon
    stopped, and an escalation that reaches the restarted daemon before the resumed stop gets
    back to its clear is refused too. Accepted, it would skip the task already CLEARING (only
    ENDED tasks are reverted) and end "reverted" with that task's finished work kept."""
    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            s.daemon.cancels.retry = 0.01
            spm = s.sim.cluster.hosts[spm_host(s)]
            spm.gate.hold()
            job = await s.submit(
                "CreateVm", {"name": "vmr", "host": "host2", "disks": [disk(s)] * 2}
            )
            await until_sim(lambda: len(spm.gate.held()) == 2)
            spm.gate.release(spm.gate.held()[0])  # one disk finishes before the stop
            reg = s.daemon.registry
            await until(
                s, job.id, lambda: any(t.status is TaskStatus.ENDED for t in reg.job_tasks(job.id))
            )
            spm.faults.settings.update({"error_code": 99, "error_methods": ["Task.clear"]})
            await cancel(s, job, STOP)
            spm.gate.open()
            await until(
                s,
                job.id,
                lambda: any(t.status is TaskStatus.CLEARING for t in reg.job_tasks(job.id)),
            )
        async with running_stack(tmp_path, sim=sim) as s:  # the same database, restarted
            s.daemon.cancels.retry = 0.01
            job = s.daemon.registry.jobs[job.id]
            assert job.status is JobStatus.CANCELLING, (job.status, job.error, job.cancel)
            with pytest.raises(CancelRefused) as late:
                await cancel(s, job, REVERT)
            assert (late.value.status, late.value.code) == (409, "too_late")
            spm = s.sim.cluster.hosts[spm_host(s)]
            spm.faults.clear()
            job = await ended(s, job, JobStatus.ABORTED, "stopped")
            assert job.cancel is not None and job.cancel.mode is STOP
    finally:
        await sim.stop()


# -- unreachable hosts, a moving SPM, force ------------------------------------------------------


class Attempts:
    """Counts calls of one VDSM verb of one host (daemon side)."""

    def __init__(self, s: Stack, host: str, verb: str) -> None:
        self.count = 0
        vdsm = s.daemon.hosts.vdsm(host)
        orig: Callable[..., Awaitable[Any]] = getattr(vdsm, verb)

        async def counted(*a: Any, **kw: Any) -> Any:
            self.count += 1
            return await orig(*a, **kw)

        setattr(vdsm, verb, counted)


async def test_spm_down_during_cancel_then_back(tmp_path: Path) -> None:
    """One host in the pool, so the SPM cannot move: the job stays CANCELLING while the stop is
    retried, and completes once the host answers again."""
    async with running_stack(tmp_path, hosts=1) as s:
        s.daemon.cancels.retry = 0.01
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        stops = Attempts(s, spm.name, "stop_task")
        spm.faults.settings.update({"down": True})
        await cancel(s, job, STOP)
        await until_sim(lambda: stops.count >= 3)
        assert s.daemon.registry.jobs[job.id].status is JobStatus.CANCELLING
        spm.faults.clear()
        await until(
            s, job.id, lambda: all(t.stop_sent for t in s.daemon.registry.job_tasks(job.id))
        )
        spm.gate.open()
        await ended(s, job, JobStatus.ABORTED, "stopped")
        assert volume not in s.volumes()


async def test_migration_source_down_during_cancel_then_back(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        s.daemon.cancels.retry = 0.01
        vm = s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "big", "host3", memory_mb=65536)
        job = await s.submit("MigrateVm", {"vm": vm.vm_id, "dst_host": "host2"})
        await until_sim(
            lambda: (
                getattr(s.sim.cluster.fleet.get(vm.vm_id, "host3"), "status", "")
                == "Migration Source"
            )
        )
        calls = Attempts(s, "host3", "migrate_cancel")
        s.sim.cluster.hosts["host3"].faults.settings.update({"down": True})
        await cancel(s, job, STOP)
        await until_sim(lambda: calls.count >= 3)
        assert s.daemon.registry.jobs[job.id].status is JobStatus.CANCELLING
        s.sim.cluster.hosts["host3"].faults.clear()
        await ended(s, job, JobStatus.ABORTED, "stopped")
        assert [v.vm_id for v in s.sim.cluster.fleet.vms_on("host3")] == [vm.vm_id]
        assert s.sim.cluster.fleet.vms_on("host2") == []


def held_spm_and_another(s: Stack) -> tuple[Any, str]:
    """For the SPM-move races: fast cancel retries, the SPM's jobs held at the gate, and the
    host the role moves to."""
    s.daemon.cancels.retry = 0.01
    old = spm_host(s)
    spm = s.sim.cluster.hosts[old]
    spm.gate.hold()
    return spm, next(h for h in s.sim.cluster.hosts if h != old)


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_spm_moves_during_cancel(tmp_path: Path, mode: CancelMode) -> None:
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        _, other = held_spm_and_another(s)
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        pool = s.sim.cluster.storage.pools[s.pool]
        await s.sim.cluster.drop_spm(pool)
        await cancel(s, job, mode)
        await s.sim.cluster.elect_spm(pool, other)
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        assert volume not in s.volumes()  # the interrupted task was rolled back by the new SPM


async def test_spm_moves_between_the_task_end_and_its_clear(tmp_path: Path) -> None:
    """The stopped task ended on the old SPM; the role moves before Task.clear goes out, so the
    clear reaches a host that no longer knows the pool's tasks (401). That is not "already
    cleared": the new SPM recovered the task from storage, and the clear is retried there."""
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        spm, other = held_spm_and_another(s)
        job = await s.submit("CreateDisk", disk(s))
        await until(s, job.id, polling(s, job))
        coordinator = s.daemon.cancels
        clear = coordinator._clear

        async def move_then_clear(job: Job, give_up: float) -> None:
            pool = s.sim.cluster.storage.pools[s.pool]
            await s.sim.cluster.elect_spm(pool, other)  # the daemon still thinks `old` is SPM
            await clear(job, give_up)

        coordinator._clear = move_then_clear  # type: ignore[method-assign]
        await cancel(s, job, STOP)
        await until(
            s, job.id, lambda: all(t.stop_sent for t in s.daemon.registry.job_tasks(job.id))
        )
        spm.gate.open()
        await ended(s, job, JobStatus.ABORTED, "stopped")
        all_clear(s)


async def test_force_with_the_host_down_then_the_reaper(tmp_path: Path) -> None:
    async with running_stack(tmp_path, hosts=1) as s:
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        volume = str(uuid.uuid4())
        job = await s.submit("CreateDisk", disk(s, volume=volume))
        await until(s, job.id, polling(s, job))
        spm.faults.settings.update({"down": True})
        with pytest.raises(CancelRefused) as forbidden:
            await cancel(s, job, force=True, privileged=False)
        assert forbidden.value.status == 403
        await cancel(s, job, force=True, privileged=True)
        job = await s.wait_job(job)
        reg = s.daemon.registry
        assert job.status is JobStatus.ABORTED and job.cancel is not None
        assert job.cancel.outcome == "forced"
        assert [t.status for t in reg.job_tasks(job.id)] == [TaskStatus.ORPHAN]
        assert reg.job_locks(job.id) == []
        spm.faults.clear()
        reaper = s.daemon.reaper
        async with asyncio.timeout(20):
            while not reg.job_tasks(job.id)[0].stop_sent:
                await reaper.reap_orphans()  # the host answers again: the reaper stops it
                await asyncio.sleep(0.01)
        spm.gate.open()
        async with asyncio.timeout(20):
            while reg.job_tasks(job.id)[0].status is TaskStatus.ORPHAN:
                await reaper.reap_orphans()  # VDSM rolls the task back in its own time
                await asyncio.sleep(0.01)
        assert reg.job_tasks(job.id)[0].status is TaskStatus.CLEARED
        all_clear(s)
        assert volume not in s.volumes()  # the stop the reaper sent rolled it back


async def test_force_escalates_a_cancel_stuck_on_a_down_host(tmp_path: Path) -> None:
    async with running_stack(tmp_path, hosts=1) as s:
        s.daemon.cancels.retry = 0.01
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        job = await s.submit("CreateDisk", disk(s))
        await until(s, job.id, polling(s, job))
        stops = Attempts(s, spm.name, "stop_task")
        spm.faults.settings.update({"down": True})
        await cancel(s, job, STOP)
        await until_sim(lambda: stops.count >= 2)
        runner = s.daemon.cancels._runners[job.id]
        decision = await cancel(s, job, force=True, privileged=True)
        assert decision.reason == "escalated"
        job = await s.wait_job(job)
        assert job.status is JobStatus.ABORTED and job.cancel is not None
        assert job.cancel.outcome == "forced"
        assert [t.status for t in s.daemon.registry.job_tasks(job.id)] == [TaskStatus.ORPHAN]
        assert s.daemon.registry.job_locks(job.id) == []
        # one runner carried the escalation to the end; nothing of it is left behind
        await asyncio.wait({runner}, timeout=10)
        assert runner.done() and not runner.cancelled()
        assert s.daemon.cancels._runners == {} and s.daemon.cancels._cleanups == {}
        spm.faults.clear()
        spm.gate.open()


@pytest.mark.parametrize("mode", [STOP, REVERT])
async def test_copy_committed_just_before_the_stop(tmp_path: Path, mode: CancelMode) -> None:
    """The copy's work is done (held at the gate) when Task.stop arrives: image.move commits it
    and the task still ends cleanSuccess/411. Stop keeps it; revert must delete it — Task.revert
    cannot (image.move dropped its rollbacks), so CopyDisk compensates with Image.delete."""
    async with running_stack(tmp_path) as s:
        image = str(uuid.uuid4())
        made = await s.wait_job(await s.submit("CreateDisk", disk(s, image=image)))
        assert made.status is JobStatus.FINISHED
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.gate.hold()
        job = await s.submit(
            "CopyDisk",
            {"pool": s.pool, "domain": s.domains[0], "image": image, "dst_domain": s.domains[1]},
        )
        await until_sim(lambda: len(spm.gate.held()) == 1)
        await cancel(s, job, mode)
        reg = s.daemon.registry
        await until(s, job.id, lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
        spm.gate.open()
        job = await ended(s, job, JobStatus.ABORTED, "reverted" if mode is REVERT else "stopped")
        dst = s.sim.cluster.storage.pools[s.pool].domains[s.domains[1]]
        copies = [v for v in dst.volumes.values() if v.image == image and not v.removing]
        assert bool(copies) is (mode is STOP), copies
        all_clear(s)


async def test_revert_of_a_completed_migration(tmp_path: Path) -> None:
    """A migration that completed before the revert reached it: revert promises every VM where
    it started, so the VM is migrated back to its source.

    Deterministic: the destination is cut off from the daemon while the migration finishes, so
    the daemon cannot have seen the completion when the cancel is accepted."""
    async with running_stack(tmp_path) as s:
        vm = s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "small", "host3", memory_mb=512)
        job = await s.submit("MigrateVm", {"vm": vm.vm_id, "dst_host": "host2"})
        await until_sim(
            lambda: (
                getattr(s.sim.cluster.fleet.get(vm.vm_id, "host3"), "status", "")
                == "Migration Source"
            )
        )
        dst = s.sim.cluster.hosts["host2"]
        dst.faults.settings.update({"down": True})
        assert s.sim.server is not None
        s.sim.server.disconnect_host("host2")
        await until_sim(
            lambda: getattr(s.sim.cluster.fleet.get(vm.vm_id, "host2"), "status", "") == "Up"
        )
        await cancel(s, job, REVERT)  # accepted: the daemon has not seen the VM on host2
        dst.faults.clear()  # the daemon now learns the migration had completed
        job = await ended(s, job, JobStatus.ABORTED, "reverted")
        assert job.cancel is not None and job.cancel.late
        assert any("migrated back" in a["action"] for a in job.cancel.actions)
        assert getattr(s.sim.cluster.fleet.get(vm.vm_id, "host3"), "status", "") == "Up"
        assert getattr(s.sim.cluster.fleet.get(vm.vm_id, "host2"), "status", "") != "Up"

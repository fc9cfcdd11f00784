"""Restart recovery (issue 3, spec engine-job-model §6 and §11.6), in process.

The daemon is stopped while a job is in each phase (validate, execute, wait, end, settle), and a
new Daemon is started on the same database against the same simulator. After the restart no job
stays STARTED, waiting jobs resume and finish, execute-interrupted jobs end FAILED with their
tasks stopped and cleared, a task whose creating verb's reply was lost is reaped, and locks come
back with their jobs and are released at the end.

Tasks are kept running with the simulator's job gate (`gate.hold()` / `gate.open()`); phases
that pass too quickly to catch are held with a command or executor method that waits on an event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from daemon import model
from daemon.commands.create_disk import CreateDisk
from daemon.config import Config
from daemon.model import JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack, start_sim
from tests.sim.conftest import wait_until
from vdsm_simulator.app import Simulator


@asynccontextmanager
async def simulator(**options: Any) -> AsyncIterator[Simulator]:
    sim = await start_sim(**options)
    try:
        yield sim
    finally:
        await sim.stop()


async def until(check: Callable[[], bool], deadline: float = 10.0, step: float = 0.01) -> None:
    """Wait for a condition on state outside the daemon's registry (deadline, no luck)."""
    await wait_until(check, deadline, step)


def spm_of(sim: Simulator) -> str:
    pool = next(iter(sim.cluster.storage.pools.values()))
    assert pool.spm_host is not None
    return pool.spm_host


def sim_clean(s: Stack) -> bool:
    return all(table == [] for table in s.sim_tasks().values())


def disk(s: Stack, **extra: Any) -> dict[str, Any]:
    return {"pool": s.pool, "domain": s.domains[0], "size": 4096, **extra}


def restarted(s: Stack, job: model.Job) -> model.Job:
    return s.daemon.registry.jobs[job.id]


async def test_a_job_ends_as_soon_as_its_last_task_is_cleared(tmp_path: Path) -> None:
    """Regression: settle slept `settle_retry` once more after clearing the last task."""
    async with running_stack(tmp_path) as s:
        s.daemon.executor.settle_retry = 60.0
        job = await s.wait_job(await s.submit("CreateDisk", disk(s)), deadline=10)
        assert job.status is JobStatus.FINISHED, job.error
        assert sim_clean(s)


async def test_restart_while_waiting_resumes_and_finishes(tmp_path: Path) -> None:
    async with simulator() as sim:
        gate = sim.cluster.hosts[spm_of(sim)].gate
        gate.hold()
        volume = str(uuid.uuid4())
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.submit("CreateDisk", disk(s, volume=volume))
            # the task reaches the gate before the daemon has read createVolume's reply and
            # committed the wait phase: wait for both
            await until(
                lambda: len(gate.held()) == 1
                and s.daemon.executor.root_of(job).data["phase"] == "wait"
            )
            locks = [lock.entity for lock in s.daemon.registry.job_locks(job.id)]
            assert locks
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            assert job.status is JobStatus.STARTED
            assert [lock.entity for lock in s.daemon.registry.job_locks(job.id)] == locks
            gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FINISHED, job.error
            assert volume in s.volumes()
            assert [t.status for t in s.daemon.registry.job_tasks(job.id)] == [TaskStatus.CLEARED]
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


async def test_restart_during_execute_fails_the_job_and_cleans_its_tasks(tmp_path: Path) -> None:
    """CreateVm executes its CreateDisk children: interrupted, the job ends FAILED, the running
    tasks are stopped (VDSM rolls them back) and every task is cleared; the locks are freed."""
    async with simulator() as sim:
        gate = sim.cluster.hosts[spm_of(sim)].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            before = s.volumes()
            disks = [disk(s) for _ in range(2)]
            job = await s.submit("CreateVm", {"name": "vmx", "host": "host2", "disks": disks})
            await until(lambda: len(gate.held()) == 2)
            assert s.daemon.executor.root_of(job).data["phase"] == "execute"
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            assert s.daemon.registry.job_locks(job.id) != []  # back with the job
            await until(lambda: all(t.stop_sent for t in s.daemon.registry.job_tasks(job.id)))
            gate.open()  # createVolume is not abortable: it ends, then rolls back
            job = await s.wait_job(job)
            assert job.status is JobStatus.FAILED
            assert "interrupted by a daemon restart" in job.error
            tasks = s.daemon.registry.job_tasks(job.id)
            assert len(tasks) == 2 and all(t.status is TaskStatus.CLEARED for t in tasks)
            assert s.volumes() == before
            assert s.daemon.registry.job_locks(job.id) == []
            assert all(
                c.status in model.COMMAND_TERMINAL
                for c in s.daemon.registry.commands[job.id].values()
            )
            assert sim_clean(s)


async def test_restart_before_execute_fails_the_job_having_sent_nothing(tmp_path: Path) -> None:
    async with simulator() as sim:
        async with running_stack(tmp_path, sim=sim) as s:
            s.daemon.executor.start_job = lambda job: None  # type: ignore[method-assign]
            job = await s.submit("CreateDisk", disk(s))
            assert s.daemon.executor.root_of(job).data["phase"] == "validate"
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            assert job.status is JobStatus.FAILED
            assert "before execution" in job.error
            assert s.daemon.registry.job_tasks(job.id) == []
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


class _HeldEnd(CreateDisk):
    entered: asyncio.Event
    release: asyncio.Event

    async def end_action(self) -> dict[str, Any]:
        self.entered.set()
        await self.release.wait()
        return await super().end_action()


async def test_restart_during_end_reruns_the_end(tmp_path: Path) -> None:
    async with simulator() as sim:
        async with running_stack(tmp_path, sim=sim) as s:
            held: type[_HeldEnd] = type("HeldEnd", (_HeldEnd,), {})
            held.entered, held.release = asyncio.Event(), asyncio.Event()
            s.daemon.executor.actions["CreateDisk"] = held
            job = await s.submit("CreateDisk", disk(s))
            async with asyncio.timeout(10):
                await held.entered.wait()
            assert s.daemon.executor.root_of(job).data["phase"] == "end"
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.wait_job(restarted(s, job))
            assert job.status is JobStatus.FINISHED, job.error
            assert job.result is not None and job.result["volume"] in s.volumes()
            assert [t.status for t in s.daemon.registry.job_tasks(job.id)] == [TaskStatus.CLEARED]
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


async def test_restart_while_clearing_clears_and_ends(tmp_path: Path) -> None:
    async with simulator() as sim:
        async with running_stack(tmp_path, sim=sim) as s:
            entered = asyncio.Event()

            async def stuck(*args: Any) -> None:
                entered.set()
                await asyncio.Event().wait()

            s.daemon.executor._settle_on = stuck  # type: ignore[method-assign,assignment]
            job = await s.submit("CreateDisk", disk(s))
            async with asyncio.timeout(10):
                await entered.wait()
            assert s.daemon.executor.root_of(job).data["phase"] == "done"
            assert job.status is JobStatus.STARTED
            assert any(table for table in s.sim_tasks().values())  # not cleared yet
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.wait_job(restarted(s, job))
            assert job.status is JobStatus.FINISHED, job.error
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


def _fast_reaper(config: Config) -> Config:
    retention = dataclasses.replace(
        config.retention, housekeeping_seconds=0.05, orphan_grace_seconds=0.2
    )
    polling = dataclasses.replace(config.polling, call_timeout=1.0)
    return dataclasses.replace(config, retention=retention, polling=polling)


async def test_a_task_whose_reply_was_lost_is_reaped_after_restart(tmp_path: Path) -> None:
    """Volume.create reached the SPM but its reply never came back before the daemon stopped:
    the task is unknown to the new daemon; the reaper stops and clears it after its grace."""
    async with simulator() as sim:
        spm = sim.cluster.hosts[spm_of(sim)]
        async with running_stack(tmp_path, sim=sim, configure=_fast_reaper) as s:
            await s.daemon.hosts.spm(s.pool)  # known before the replies stop
            spm.faults.settings.update({"drop_replies": 1.0})
            job = await s.submit("CreateDisk", disk(s))
            await until(lambda: any(s.sim_tasks().values()))
            spm.faults.clear()
            [task] = s.daemon.registry.job_tasks(job.id)
            assert task.vdsm_id is None  # the reply never came
        async with running_stack(tmp_path, sim=sim, configure=_fast_reaper) as s:
            job = await s.wait_job(restarted(s, job))
            assert job.status is JobStatus.FAILED
            assert s.daemon.registry.job_locks(job.id) == []
            await until(lambda: sim_clean(s))
            # the clear's reply may still be on its way when the simulator is clean: wait for
            # the reaper to record it (a bare check here failed now and then on a loaded machine)
            await until(lambda: len(s.daemon.reaper.reaped) >= 1)
            reaped = [r.vdsm_id for r in s.daemon.reaper.reaped]
            assert len(reaped) == 1


async def test_restart_mid_cancel_carries_the_cancel_to_its_end(tmp_path: Path) -> None:
    """DESIGN.md rule 6: a committed cancel is reloaded and finished; nothing is re-decided."""
    async with simulator() as sim:
        gate = sim.cluster.hosts[spm_of(sim)].gate
        gate.hold()
        volume = str(uuid.uuid4())
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.submit("CreateDisk", disk(s, volume=volume))
            await until(lambda: len(gate.held()) == 1)
            reg = s.daemon.registry
            await until(lambda: any(t.vdsm_id for t in reg.job_tasks(job.id)))
            await s.daemon.cancels.cancel(job.id, reason="restart test", requester=1000)
            await until(lambda: all(t.stop_sent for t in reg.job_tasks(job.id)))
            assert reg.jobs[job.id].status is JobStatus.CANCELLING
        async with running_stack(tmp_path, sim=sim) as s:
            job = restarted(s, job)
            assert job.status is JobStatus.CANCELLING
            assert job.cancel is not None and job.cancel.reason == "restart test"
            gate.open()  # the stopped job ends on the host; VDSM rolls it back
            job = await s.wait_job(job)
            assert job.status is JobStatus.ABORTED, job.error
            assert job.cancel is not None and job.cancel.outcome == "stopped"
            stops = [a for a in job.cancel.actions if a["action"] == "stopped"]
            assert len(stops) == 1  # not re-sent after the restart
            assert volume not in s.volumes()
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)

"""The fast path of a cancel's stops and clears: one attempt for all of a job's tasks at once
(`try_each_on_spm`), and every task whose attempt VDSM did not simply accept handed to the full
path (`send_on_spm`, with its retries and its reading of VDSM's refusals). Against the simulator.
"""

from __future__ import annotations

import dataclasses
import uuid
from pathlib import Path

from daemon.engine.task_verbs import TaskVerb, try_each_on_spm
from daemon.model import CancelMode, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_cancel import spm_host, until, until_sim


async def _held_disk(s: Stack) -> tuple[str, object]:
    """A CreateDisk job whose one task runs on the SPM until the gate opens."""
    s.sim.cluster.hosts[spm_host(s)].gate.hold()
    job = await s.submit(
        "CreateDisk",
        {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
    )
    reg = s.daemon.registry
    await until(
        s,
        job.id,
        lambda: any(t.status is TaskStatus.POLLING and t.vdsm_id for t in reg.job_tasks(job.id)),
    )
    (task,) = reg.job_tasks(job.id)
    return job.id, task


async def test_only_the_tasks_vdsm_refused_are_left_for_the_full_path(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        _, task = await _held_disk(s)
        ghost = dataclasses.replace(task, id=str(uuid.uuid4()), vdsm_id=str(uuid.uuid4()))
        unsent = dataclasses.replace(task, id=str(uuid.uuid4()), vdsm_id=None)
        left = await try_each_on_spm(s.daemon.hosts, [ghost, unsent, task], TaskVerb.STOP)  # type: ignore[list-item]
        # 401: whether it is gone is for the full path to decide; no id: nothing was sent
        assert {t.id for t in left} == {ghost.id, unsent.id}
        spm = s.sim.cluster.hosts[spm_host(s)]
        raw = {t["id"]: t for t in spm.tasks.raw_table()}
        assert raw[task.vdsm_id]["aborting"]  # type: ignore[attr-defined]  # the stop arrived


async def test_an_unreachable_spm_leaves_every_task_to_the_full_path(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        _, task = await _held_disk(s)
        spm = s.sim.cluster.hosts[spm_host(s)]
        spm.faults.settings.update({"down": True})
        await s.daemon.hosts.vdsm(spm.name).client.close()  # the next call reconnects: refused
        left = await try_each_on_spm(s.daemon.hosts, [task], TaskVerb.STOP)  # type: ignore[list-item]
        assert left == [task]
        spm.faults.clear()
        raw = {t["id"]: t for t in spm.tasks.raw_table()}
        assert not raw[task.vdsm_id]["aborting"]  # type: ignore[attr-defined]  # none arrived


async def test_a_stop_vdsm_refuses_as_a_repeat_counts_once_as_stopped(tmp_path: Path) -> None:
    """As after a restart: the stop reached VDSM before (here sent behind the daemon's back),
    the fast attempt gets 411, and the full path reads it as a repeat: the job still ends
    ABORTED with its task stopped and cleared, and the record names the stop once."""
    async with running_stack(tmp_path) as s:
        job_id, task = await _held_disk(s)
        spm = s.sim.cluster.hosts[spm_host(s)]
        await s.daemon.hosts.vdsm(spm.name).stop_task(task.vdsm_id)  # type: ignore[attr-defined]
        await until_sim(
            lambda: {t["id"]: t for t in spm.tasks.raw_table()}[task.vdsm_id]["aborting"]  # type: ignore[attr-defined]
        )
        await s.daemon.cancels.cancel(job_id, mode=CancelMode.STOP, requester=0)
        spm.gate.open()
        job = await s.wait_job(s.daemon.registry.jobs[job_id])
        assert job.status is JobStatus.ABORTED
        assert job.cancel is not None
        actions = [a["action"] for a in job.cancel.actions]
        assert actions.count("stopped") == 1 and actions.count("cleared") == 1
        assert task.status is TaskStatus.CLEARED  # type: ignore[attr-defined]
        assert s.sim_tasks()[spm.name] == []


async def test_a_finished_job_clears_its_tasks_in_one_attempt(tmp_path: Path) -> None:
    """A job's own settling (no cancel): its ended tasks are cleared with one `each_task` for
    them all, not one verb after another."""
    async with running_stack(tmp_path) as s:
        spm = spm_host(s)
        vdsm = s.daemon.hosts.vdsm(spm)
        sent: list[tuple[str, int]] = []
        each, single = vdsm.each_task, vdsm.clear_task

        async def counted_each(method: str, task_ids: list[str]) -> list[object]:
            sent.append((method, len(task_ids)))
            return await each(method, task_ids)  # type: ignore[return-value]

        async def counted_single(task_id: str) -> None:
            sent.append(("clear_task", 1))
            await single(task_id)

        vdsm.each_task = counted_each  # type: ignore[method-assign,assignment]
        vdsm.clear_task = counted_single  # type: ignore[method-assign]
        disk = {"pool": s.pool, "domain": s.domains[0], "size": 4096}
        job = await s.submit("CreateVm", {"name": "vm-each", "host": spm, "disks": [disk] * 3})
        job = await s.wait_job(job)
        assert job.status is JobStatus.FINISHED, job.error
        tasks = s.daemon.registry.job_tasks(job.id)
        assert len(tasks) == 3 and all(t.status is TaskStatus.CLEARED for t in tasks)
        assert sent == [("Task.clear", 3)]
        assert s.sim_tasks()[spm] == []

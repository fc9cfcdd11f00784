"""The randomized cancel suite (issue 4): seeded schedules of jobs, cancels and task releases.

Each schedule draws, from `random.Random(seed)`, a mix of jobs (CreateDisk, CopyDisk, CreateVm
with child disks, MigrateVm, DeleteDisk), the order in which their held storage tasks are let
finish (the simulator's job gate), when each cancel lands, its mode, and now and then a duplicate
or a stop escalated to revert. The invariants are then checked against the simulator's own state.

One stack serves a batch of `BATCH` schedules, several running at once on disjoint entities, so
500 schedules stay well within CI time. `CANCEL_SCHEDULES=5000` runs more (soak).
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon.engine.cancel import CancelRefused
from daemon.model import CancelMode, Job, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack

SCHEDULES = int(os.environ.get("CANCEL_SCHEDULES", "500"))
BATCH = 50
AT_ONCE = 5  # schedules of a batch running side by side on the same stack
ACTIONS = ("CreateDisk", "CopyDisk", "CreateVm", "MigrateVm", "DeleteDisk")


@dataclass
class Planned:
    job: Job
    mode: CancelMode | None = None  # the mode finally accepted, None when never accepted
    refused: str = ""  # the refusal's code when the cancel was refused
    volumes: set[str] = field(default_factory=set)  # volumes it creates (known as it goes)
    vm: str = ""  # MigrateVm: the VM and where it started
    src: str = ""
    image: str = ""  # DeleteDisk / CopyDisk: the image it works on


async def make_disk(s: Stack, domain: str) -> tuple[str, str]:
    image, volume = str(uuid.uuid4()), str(uuid.uuid4())
    job = await s.submit(
        "CreateDisk",
        {"pool": s.pool, "domain": domain, "size": 4096, "image": image, "volume": volume},
    )
    # the gate is closed for the batch: let this one through
    spm = s.sim.cluster.hosts[s.sim.cluster.storage.pools[s.pool].spm_host or ""]
    reg = s.daemon.registry
    async with asyncio.timeout(20):
        while reg.jobs[job.id].status not in (JobStatus.FINISHED, JobStatus.FAILED):
            for t in reg.job_tasks(job.id):
                if t.vdsm_id:
                    spm.gate.release(t.vdsm_id)
            await wait_any(s, [job.id])
    assert reg.jobs[job.id].status is JobStatus.FINISHED, reg.jobs[job.id].error
    return image, volume


async def wait_any(s: Stack, job_ids: list[str], deadline: float = 0.05) -> None:
    """Wait until one of the jobs changes, or a short while (gated tasks reach the gate unseen)."""
    reg = s.daemon.registry
    waits = [asyncio.ensure_future(reg.wait_changed(j)) for j in job_ids]
    try:
        await asyncio.wait(waits, timeout=deadline, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for w in waits:
            w.cancel()


async def schedule(s: Stack, seed: int) -> None:
    rng = random.Random(seed)
    reg = s.daemon.registry
    spm_name = s.sim.cluster.storage.pools[s.pool].spm_host
    assert spm_name is not None
    spm = s.sim.cluster.hosts[spm_name]
    planned: list[Planned] = []
    for i in range(rng.randint(1, 3)):
        action = rng.choice(ACTIONS)
        p: Planned
        if action == "CreateDisk":
            volume = str(uuid.uuid4())
            params = {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": volume}
            p = Planned(await s.submit(action, params), volumes={volume})
        elif action == "CopyDisk":
            image, _ = await make_disk(s, s.domains[0])
            params = {
                "pool": s.pool,
                "domain": s.domains[0],
                "image": image,
                "dst_domain": s.domains[1],
            }
            p = Planned(await s.submit(action, params), image=image)
        elif action == "CreateVm":
            disks = [
                {"pool": s.pool, "domain": s.domains[0], "size": 4096}
                for _ in range(rng.randint(1, 3))
            ]
            params = {"name": f"vm-{seed}-{i}", "host": "host2", "disks": disks}
            p = Planned(await s.submit(action, params), vm="")
        elif action == "MigrateVm":
            vm = s.sim.cluster.fleet.add_vm(
                str(uuid.uuid4()), f"m-{seed}-{i}", "host3", memory_mb=rng.choice([512, 65536])
            )
            params = {"vm": vm.vm_id, "dst_host": "host2"}
            p = Planned(await s.submit(action, params), vm=vm.vm_id, src="host3")
        else:
            image, volume = await make_disk(s, s.domains[0])
            params = {"pool": s.pool, "domain": s.domains[0], "image": image}
            p = Planned(await s.submit(action, params), image=image, volumes={volume})
        planned.append(p)

    # the events: one cancel per job (sometimes two), and releases of held tasks
    events: list[tuple[str, Planned | None]] = []
    for p in planned:
        events.append(("cancel", p))
        if rng.random() < 0.25:
            events.append(("again", p))  # a duplicate, or a stop escalated to revert
    events += [("release", None)] * rng.randint(0, 4)
    rng.shuffle(events)
    ids = [p.job.id for p in planned]

    def mine() -> list[str]:
        return [t.vdsm_id for j in ids for t in reg.job_tasks(j) if t.vdsm_id]

    async def do_cancel(p: Planned, mode: CancelMode) -> None:
        try:
            decision = await s.daemon.cancels.cancel(
                p.job.id, mode=mode, reason=f"seed {seed}", requester=1000
            )
        except CancelRefused as e:
            if p.mode is None:
                p.refused = e.code
            assert e.code in ("too_late", "job_ended", "mode_not_allowed", "no_downgrade"), e
            return
        if decision.accept:
            p.mode = decision.mode

    for kind, event_job in events:
        p = event_job  # type: ignore[assignment]
        for _ in range(rng.randint(0, 3)):
            await wait_any(s, ids, deadline=rng.choice([0.0, 0.005, 0.02]))
        if kind == "release":
            held = sorted(set(spm.gate.held()) & set(mine()))
            if held:
                spm.gate.release(rng.choice(held))
            continue
        assert p is not None
        policy = s.daemon.executor.actions[p.job.action].spec.policy
        mode = rng.choice(sorted(policy.modes, key=lambda m: m.value))
        if kind == "cancel":
            if rng.random() < 0.3:
                await asyncio.gather(do_cancel(p, mode), do_cancel(p, mode))  # concurrent twins
            else:
                await do_cancel(p, mode)
        else:
            await do_cancel(p, CancelMode.REVERT if CancelMode.REVERT in policy.modes else mode)

    # let everything finish: release this schedule's held tasks until every job has ended
    try:
        await finish(s, ids, spm, mine)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed}: jobs did not settle: "
            + "; ".join(
                f"{reg.jobs[j].action} {reg.jobs[j].status} {reg.jobs[j].cancel} "
                f"tasks={[(t.verb, t.status, t.vdsm_result) for t in reg.job_tasks(j)]} "
                f"commands={[(c.action, c.status) for c in reg.commands[j].values()]}"
                for j in ids
            )
        ) from None
    check(s, seed, planned)


async def finish(s: Stack, ids: list[str], spm: Any, mine: Any) -> None:
    reg = s.daemon.registry
    async with asyncio.timeout(30):
        while any(
            reg.jobs[j].status not in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED)
            for j in ids
        ):
            known = {t.vdsm_id for t in reg.tasks.values()}
            for t in set(spm.gate.held()) - (known - set(mine())):
                spm.gate.release(t)  # ours, or a compensation's own task (Image.delete)
            await wait_any(s, ids)
        # tasks of ended jobs are cleared before the end; wait for the settled states anyway
        while any(
            t.status not in (TaskStatus.CLEARED, TaskStatus.LOST)
            for j in ids
            for t in reg.job_tasks(j)
        ):
            await wait_any(s, ids)


def aborted_as_asked(job: Job, mode: CancelMode | None, refused: str, where: str) -> bool:
    """The outcome a cancel must leave: a job whose cancel was refused ran its course; an
    accepted one ended ABORTED in its mode (True: the caller checks the effects) or completed
    with its cancel recorded as too late."""
    if mode is None:  # never accepted: the job ran its course
        assert job.status in (JobStatus.FINISHED, JobStatus.FAILED), where
        assert refused or job.cancel is None, where
        return False
    assert job.cancel is not None, where
    if job.status is JobStatus.FINISHED:
        assert job.cancel.outcome == "too_late", where
        return False
    assert job.status is JobStatus.ABORTED, where
    want = "reverted" if mode is CancelMode.REVERT else "stopped"
    assert job.cancel.outcome == want, where
    return True


def check(s: Stack, seed: int, planned: list[Planned]) -> None:
    reg = s.daemon.registry
    volumes = s.volumes()
    on_hosts = {t["id"] for table in s.sim_tasks().values() for t in table}
    for p in planned:
        job = reg.jobs[p.job.id]
        where = f"seed {seed} {job.action} {job.id}: {job.status} {job.error!r} {job.cancel}"
        tasks = reg.job_tasks(job.id)
        assert not {t.vdsm_id for t in tasks} & on_hosts, where  # nothing left on any host
        assert reg.job_locks(job.id) == [], where
        if job.action == "CreateDisk":
            p.volumes = {c.data["volume"] for c in reg.commands[job.id].values()}
        elif job.action == "CreateVm":
            p.volumes = {
                c.data["volume"]
                for c in reg.commands[job.id].values()
                if c.action == "CreateDisk" and "volume" in c.data
            }
        if not aborted_as_asked(job, p.mode, p.refused, where):
            continue
        assert job.cancel is not None
        succeeded = {t.command_id for t in tasks if t.vdsm_result == "success"}
        if p.mode is CancelMode.REVERT:
            # as if it never ran: nothing it created remains, every VM where it started
            if job.action in ("CreateDisk", "CreateVm"):
                assert not p.volumes & volumes, where
            if job.action == "CopyDisk":
                dst = s.sim.cluster.storage.pools[s.pool].domains[s.domains[1]]
                assert not [v for v in dst.volumes.values() if v.image == p.image], where
            if job.action == "CreateVm":
                assert s.sim.cluster.fleet.vms_on("host2") == [] or all(
                    v.name != job.params["name"] for v in s.sim.cluster.fleet.vms_on("host2")
                ), where
        else:
            # stop: work that completed is intact (volumes of finished tasks exist)
            for c in reg.commands[job.id].values():
                if c.id in succeeded and c.action == "CreateDisk":
                    assert c.data["volume"] in volumes, where
        if job.action == "MigrateVm":
            up = [
                h
                for h in ("host2", "host3")
                if getattr(s.sim.cluster.fleet.get(p.vm, h), "status", "") == "Up"
            ]
            assert len(up) == 1, (where, up)
            reverted = p.mode is CancelMode.REVERT and job.cancel.outcome == "reverted"
            if not job.cancel.late or reverted:
                # cut short: the VM stays on its source; reverted: it was migrated back
                assert up == [p.src], where
        if job.action == "DeleteDisk":
            assert p.volumes <= volumes, where  # accepted only before anything was sent


async def run_batch(tmp_path: Path, seeds: range) -> None:
    async with running_stack(tmp_path) as s:
        s.daemon.cancels.retry = 0.02
        pool = s.sim.cluster.storage.pools[s.pool]
        assert pool.spm_host is not None
        s.sim.cluster.hosts[pool.spm_host].gate.hold()
        queue = list(seeds)

        async def worker() -> None:
            while queue:
                await schedule(s, queue.pop(0))

        await asyncio.gather(*(worker() for _ in range(AT_ONCE)))
        s.sim.cluster.hosts[pool.spm_host].gate.open()
        assert all(table == [] for table in s.sim_tasks().values()), s.sim_tasks()
        assert not [lk for holders in s.daemon.registry.locks.values() for lk in holders]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("batch", range((SCHEDULES + BATCH - 1) // BATCH))
async def test_random_cancel_schedules(tmp_path: Path, batch: int) -> None:
    first = batch * BATCH
    await run_batch(tmp_path, range(first, min(first + BATCH, SCHEDULES)))

"""Randomized cancels under host faults and SPM moves (issue 4): seeded schedules checked
against the simulator's own state.

Each schedule draws from `random.Random(seed)`: one or two storage jobs (CreateDisk, CreateVm
with child disks, CopyDisk), which held tasks finish before the cancel (the simulator's job gate,
closed on every host), the cancel's mode, one fault and when it strikes (before the cancel, right
after its intent, or once its stops are recorded):
- `down`: the SPM refuses connections until the daemon has noticed (its host leaves UP);
- `recovering`: the SPM answers 99 to every verb for a few of the daemon's calls;
- `latency`: every reply of the SPM comes late (0.1 s real) for the rest of the schedule;
- `spm_move`: the SPM loses its lease (its running jobs die with it) and another host is elected
  and recovers the pool's tasks from storage.
Waits are on conditions (the daemon's registry, the simulator's counters), never on time, so a
seed replays the same choices; only the interleaving of sockets differs.

Invariants: every job ends with a recorded cancel outcome (ABORTED stopped/reverted, or FINISHED
too late), or ran its course when the cancel was refused; no task of it is left on any host; no
lock held; under revert no volume it created remains; under stop a disk whose task succeeded
exists. `CANCEL_FAULT_SCHEDULES=N` (default 60) runs more for a soak.
"""

from __future__ import annotations

import asyncio
import os
import random
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from daemon.engine.cancel import CancelRefused
from daemon.model import JOB_TERMINAL, CancelMode, HostStatus, Job, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_cancel_random import aborted_as_asked, make_disk, wait_any
from tests.sim.conftest import wait_until

SCHEDULES = int(os.environ.get("CANCEL_FAULT_SCHEDULES", "60"))
BATCH = 15  # schedules per stack, one after the other (a fault hits the whole pool)
FAULTS = ("down", "recovering", "latency", "spm_move")
WHEN = ("before", "after_intent", "after_stops")


@dataclass
class Planned:
    job: Job
    mode: CancelMode | None = None  # the mode accepted, None when refused
    refused: str = ""
    volumes: set[str] = field(default_factory=set)
    image: str = ""


def spm_name(s: Stack) -> str:
    name = s.sim.cluster.storage.pools[s.pool].spm_host
    assert name is not None
    return name


def held(s: Stack) -> set[str]:
    return {t for h in s.sim.cluster.hosts.values() for t in h.gate.held()}


def release(s: Stack, task_id: str) -> None:
    for h in s.sim.cluster.hosts.values():
        h.gate.release(task_id)


async def submit(s: Stack, rng: random.Random, seed: int, i: int) -> Planned:
    action = rng.choice(("CreateDisk", "CreateVm", "CopyDisk"))
    alloc = rng.choice(("SPARSE", "PREALLOCATED"))
    if action == "CreateDisk":
        volume = str(uuid.uuid4())
        params = {
            "pool": s.pool,
            "domain": s.domains[0],
            "size": 4096,
            "volume": volume,
            "preallocate": alloc,
        }
        return Planned(await s.submit(action, params), volumes={volume})
    if action == "CreateVm":
        disks = [
            {"pool": s.pool, "domain": s.domains[0], "size": 4096, "preallocate": alloc}
            for _ in range(rng.randint(1, 2))
        ]
        params = {"name": f"fvm-{seed}-{i}", "host": "host2", "disks": disks}
        return Planned(await s.submit(action, params))
    image, _ = await make_disk(s, s.domains[0])
    params = {"pool": s.pool, "domain": s.domains[0], "image": image, "dst_domain": s.domains[1]}
    return Planned(await s.submit(action, params), image=image)


class Fault:
    """One fault of a schedule; `strike` starts it, `heal` ends it (both idempotent)."""

    def __init__(self, s: Stack, kind: str, rng: random.Random) -> None:
        self.s, self.kind = s, kind
        self.host = spm_name(s)
        self.calls = rng.randint(1, 4)  # recovering: the daemon's calls answered 99
        self.other = rng.choice(sorted(h for h in s.sim.cluster.hosts if h != self.host))
        self.struck = self.healed = False

    async def strike(self) -> None:
        if self.struck:
            return
        self.struck = True
        host = self.s.sim.cluster.hosts[self.host]
        if self.kind == "down":
            host.faults.settings.update({"down": True})
        elif self.kind == "recovering":
            self.calls += host.calls
            host.faults.settings.update({"recovering": True})
        elif self.kind == "latency":
            host.faults.settings.update({"latency": 20.0})  # simulated s: 0.1 s real
        else:
            pool = self.s.sim.cluster.storage.pools[self.s.pool]
            await self.s.sim.cluster.drop_spm(pool)
            await self.s.sim.cluster.elect_spm(pool, self.other)

    async def heal(self) -> None:
        """Wait until the fault has been felt, then end it."""
        if not self.struck or self.healed:
            return
        self.healed = True
        host = self.s.sim.cluster.hosts[self.host]
        reg = self.s.daemon.registry
        if self.kind == "down":
            await wait_until(lambda: reg.hosts[self.host].status is not HostStatus.UP, 20, 0.01)
        elif self.kind == "recovering":
            await wait_until(lambda: host.calls >= self.calls, 20, 0.01)
        host.faults.clear()


async def schedule(s: Stack, seed: int) -> None:
    rng = random.Random(seed)
    reg = s.daemon.registry
    planned = [await submit(s, rng, seed, i) for i in range(rng.randint(1, 2))]
    ids = [p.job.id for p in planned]

    def mine() -> set[str]:
        return {t.vdsm_id for j in ids for t in reg.job_tasks(j) if t.vdsm_id}

    def left_on_hosts() -> list[tuple[str, str, str]]:
        ours = mine()
        return [
            (host, t["id"], t["state"])
            for host, table in s.sim_tasks().items()
            for t in table
            if t["id"] in ours
        ]

    def running() -> bool:
        # every task made and reported running (or already ended)
        tasks = [t for j in ids for t in reg.job_tasks(j)]
        return bool(tasks) and all(
            t.vdsm_id and t.status is not TaskStatus.SUBMITTING for t in tasks
        )

    await wait_until(lambda: running() or all(reg.jobs[j].status in JOB_TERMINAL for j in ids), 20)
    for task_id in sorted(held(s) & mine()):
        if rng.random() < 0.3:
            release(s, task_id)  # this one finishes before the cancel
    fault = Fault(s, rng.choice(FAULTS), rng)
    when = rng.choice(WHEN)
    if when == "before":
        await fault.strike()

    async def do_cancel(p: Planned) -> None:
        policy = s.daemon.executor.actions[p.job.action].spec.policy
        mode = rng.choice(sorted(policy.modes, key=lambda m: m.value))
        try:
            decision = await s.daemon.cancels.cancel(
                p.job.id, mode=mode, reason=f"fault seed {seed}", requester=1000
            )
        except CancelRefused as e:
            assert e.code in ("too_late", "job_ended"), e
            p.refused = e.code
            return
        if decision.accept:
            p.mode = decision.mode

    for p in planned:
        await do_cancel(p)
    if when == "after_intent":
        await fault.strike()
    elif when == "after_stops":
        await wait_until(
            lambda: (
                all(
                    t.stop_sent or t.status is not TaskStatus.POLLING
                    for j in ids
                    for t in reg.job_tasks(j)
                )
                or all(reg.jobs[j].status in JOB_TERMINAL for j in ids)
            ),
            20,
        )
        await fault.strike()
    await fault.heal()
    try:
        async with asyncio.timeout(60):
            while any(reg.jobs[j].status not in JOB_TERMINAL for j in ids):
                known = {t.vdsm_id for t in reg.tasks.values()}
                for task_id in held(s) - (known - mine()):
                    release(s, task_id)  # ours, or a compensation's own task (Image.delete)
                await wait_any(s, ids)
        async with asyncio.timeout(20):  # tasks orphaned by a fault are the reaper's
            while left_on_hosts():  # noqa: ASYNC110 - the simulator publishes no events
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(
            f"seed {seed} ({fault.kind} {when}): did not settle: "
            + "; ".join(
                f"{reg.jobs[j].action} {reg.jobs[j].status} {reg.jobs[j].cancel} "
                f"tasks={[(t.vdsm_id, t.verb, t.status, t.vdsm_result) for t in reg.job_tasks(j)]}"
                for j in ids
            )
            + f"; left on hosts: {left_on_hosts()}"
        ) from None
    check(s, f"seed {seed} ({fault.kind} {when})", planned)
    outcomes = []
    for p in planned:
        job = reg.jobs[p.job.id]
        asked = p.mode.value if p.mode else p.refused
        outcomes.append(f"{job.action} {asked} -> {job.status} {job.cancel and job.cancel.outcome}")
    print(f"seed {seed}: {fault.kind} {when}: {', '.join(outcomes)}")  # shown on a failure


def check(s: Stack, where: str, planned: list[Planned]) -> None:
    reg = s.daemon.registry
    volumes = s.volumes()
    for p in planned:
        job = reg.jobs[p.job.id]
        at = f"{where} {job.action} {job.id}: {job.status} {job.error!r} {job.cancel}"
        assert reg.job_locks(job.id) == [], at
        if job.action in ("CreateDisk", "CreateVm"):
            p.volumes = {
                c.data["volume"]
                for c in reg.commands[job.id].values()
                if c.action == "CreateDisk" and "volume" in c.data
            }
        if p.mode is None:
            assert p.refused, at  # every job was asked to cancel: accepted or refused
        if not aborted_as_asked(job, p.mode, p.refused, at):
            continue
        if p.mode is CancelMode.REVERT:
            assert not p.volumes & volumes, at
            if job.action == "CopyDisk":
                dst = s.sim.cluster.storage.pools[s.pool].domains[s.domains[1]]
                assert not [v for v in dst.volumes.values() if v.image == p.image], at
        else:
            succeeded = {t.command_id for t in reg.job_tasks(job.id) if t.vdsm_result == "success"}
            for c in reg.commands[job.id].values():
                if c.id in succeeded and c.action == "CreateDisk":
                    assert c.data["volume"] in volumes, at


async def run_batch(tmp_path: Path, seeds: range) -> None:
    async with running_stack(tmp_path, state_dir=tmp_path / "sim") as s:
        s.daemon.cancels.retry = 0.02
        for host in s.sim.cluster.hosts.values():
            host.gate.hold()
        for seed in seeds:
            await schedule(s, seed)
        for host in s.sim.cluster.hosts.values():
            host.gate.open()
        assert not [lk for holders in s.daemon.registry.locks.values() for lk in holders]


@pytest.mark.timeout(300)
@pytest.mark.parametrize("batch", range((SCHEDULES + BATCH - 1) // BATCH))
async def test_random_cancels_under_faults(tmp_path: Path, batch: int) -> None:
    first = 10_000 + batch * BATCH  # seeds apart from the plain suite's
    await run_batch(tmp_path, range(first, min(first + BATCH, SCHEDULES + 10_000)))

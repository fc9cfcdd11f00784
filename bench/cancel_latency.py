"""Cancel latency (issue 4): 1,000 running jobs of three VDSM tasks each over 50 pools, all
cancelled at once; how long from the cancel request to the job ABORTED, under stop and revert,
against a baseline of the same jobs left to finish on their own (all the engine offers).

Set-up, per phase (stop, revert, baseline; each on a fresh simulator and database):

1. ``vdsm-sim --hosts P --pools P --time-scale 1 --task-seconds T --task-distribution fixed`` in
   its own process (every host SPM of its own pool; enough storage workers that every task runs
   at once instead of queueing behind VDSM's default 10).
2. A ``Daemon`` (daemon.service) in this process on a temp SQLite (synchronous=FULL, the
   default), the P hosts from its config, default polling.
3. N ``CreateVm`` jobs, round-robin over the pools, each with three disks in its pool and its VM
   on the pool's SPM host: three ``CreateDisk`` children, three ``Volume.create`` tasks, by
   default PREALLOCATED (``--preallocate``): VDSM allocates those through an abortable
   operation, so Task.stop interrupts them; a SPARSE create cannot be interrupted and a stop
   waits for its work to end (``--preallocate SPARSE`` measures that). They are
   submitted as one batch (``executor.submit_batch``); the phase waits until all 3N tasks are
   POLLING in the daemon (and checks that none has finished yet: T is long), then until the
   jobs have settled: every CreateDisk child has recorded its phase ``wait`` and every change
   is committed, as a job spends its 60 s. At the last task's start about two children in
   three are still recording their execute phase, and a thousand changes are queued;
   ``--at-ramp-end`` starts the clock there instead (the cancel then also pays for that tail).
4. stop / revert: every job is cancelled at once (``Daemon.cancels.cancel(job_id, mode=...)``,
   N concurrent calls). Latency = the job's ``ended_at`` (set when it becomes ABORTED) minus the
   wall time its cancel request started (both ``time.time()``). Also reported: the time until
   the request was acknowledged (the intent committed, as the API would answer).
   baseline: nothing is cancelled; latency = the job's ``ended_at`` (FINISHED) minus the moment
   all tasks were running, i.e. the remaining task duration plus completion.
5. Checked, not assumed: every job ABORTED (FINISHED for the baseline) with its three tasks
   CLEARED; the simulator's own task tables (``/_control/tasks``) empty on every host; under
   revert no volume left in any pool beyond those it started with.

Prints p50/p90/p99/max per phase and PASS/FAIL against p99 <= 1 s for stop and revert; exits
non-zero only with ``--check`` (or when a correctness check fails).

    python bench/cancel_latency.py            # 50 pools, 1,000 jobs x 3 tasks of 60 s
    python bench/cancel_latency.py --quick    # 10 pools, 100 jobs x 3 tasks of 5 s
    python bench/cancel_latency.py --preallocate SPARSE   # tasks VDSM cannot abort
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gc
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from benchlib import (
    ADDRESS,
    SimProcess,
    add_gc_flag,
    control,
    cpu_seconds,
    fill_defaults,
    machine,
    percentile,
    run_loop,
    set_gc,
)

from daemon import model
from daemon.config import HostEntry, PollingSection, load_config
from daemon.model import CancelMode, Job, JobStatus, TaskStatus
from daemon.service import Daemon

TARGET_P99_S = 1.0
TASKS_PER_JOB = 3
RAMP_TIMEOUT = 300.0
END_TIMEOUT = 300.0
# the simulator's createVolume takes its --task-seconds x this (preallocating writes the whole
# volume); the simulator is given task_seconds / factor so every task lasts task_seconds
ALLOCATION_FACTOR = {"SPARSE": 1.0, "PREALLOCATED": 2.0}


class Collector:
    """Counts this process's cyclic garbage collections and their time (`gc.callbacks`): a
    young collection in a burst walks every container the burst keeps alive at once."""

    def __init__(self) -> None:
        self.count = 0
        self.seconds = 0.0
        self._started = 0.0
        gc.callbacks.append(self._observe)

    def _observe(self, phase: str, info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.count += 1
            self.seconds += time.perf_counter() - self._started

    def snapshot(self) -> tuple[int, float]:
        return self.count, self.seconds

    def since(self, before: tuple[int, float]) -> tuple[int, float]:
        return self.count - before[0], self.seconds - before[1]


COLLECTOR = Collector()


@dataclass
class PhaseResult:
    name: str
    jobs: int
    pools: int
    task_seconds: float
    preallocate: str  # the disks' allocation: PREALLOCATED (abortable) or SPARSE
    ramp_s: float  # submit -> all tasks POLLING (and the jobs settled, unless at_ramp_end)
    remaining_s: float  # task duration left when the phase's clock started
    ended_ok: int
    wrong: int
    p50_s: float
    p90_s: float
    p99_s: float
    max_s: float
    # at the moment every task was POLLING: children not yet in phase "wait", changes queued
    # for the store, and how long until all had settled (0 under --at-ramp-end)
    unsettled_children: int = 0
    queued_changes: int = 0
    settle_s: float = 0.0
    ack_p50_s: float = float("nan")  # cancel request -> intent committed (the API's answer)
    ack_p99_s: float = float("nan")
    # the daemon's own share: the job's end minus the moment VDSM had ended its last task
    # (simulator hook, sim_finish_times.py): the poll that sees it, Task.clear, the commits
    after_vdsm_p50_s: float = float("nan")
    after_vdsm_p99_s: float = float("nan")
    # cancel request -> the job's last Task.stop answered (its "stopped" action in the record)
    stopped_p50_s: float = float("nan")
    stopped_p99_s: float = float("nan")
    # the job's last Task.stop answered -> VDSM had ended its last task (the abort and rollback)
    vdsm_p50_s: float = float("nan")
    vdsm_p99_s: float = float("nan")
    daemon_cpu_s: float = 0.0  # CPU seconds of this process from the clock's start to the end
    gc_collections: int = 0  # cyclic garbage collections in this process over the same span
    gc_s: float = 0.0  # the time they took
    sim_cpu_s: float = 0.0  # CPU seconds of the simulator (VDSM's side) over the same span
    # record changes the daemon committed over the same span, per job (each one serialized and
    # written to SQLite: the larger part of the daemon's CPU in a burst), and its commits
    writes_per_job: float = 0.0
    commits: int = 0
    sim_tasks_left: int = 0
    volumes_left: int = 0  # revert: volumes beyond those the pools started with
    errors: list[str] = field(default_factory=list)


def daemon_config(db: Path, port: int, topology: dict[str, Any]) -> Any:
    entries = [
        HostEntry(p["spm"], ADDRESS, port, p["id"])
        for p in sorted(topology["pools"], key=lambda p: int(p["spm"].removeprefix("host")))
    ]
    config = load_config(None).with_overrides(db=db, socket=db.parent / "api.sock")
    return dataclasses.replace(config, polling=PollingSection(), hosts=tuple(entries))


async def volume_count(port: int, pools: list[str]) -> int:
    counts = await asyncio.gather(
        *(control(port, "GET", f"/_control/pools/{p}/volumes") for p in pools)
    )
    return sum(len(c) for c in counts)


async def wait_until(daemon: Daemon, done: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if done():
            return True
        await asyncio.sleep(0.05)
    return bool(done())


async def run_phase(
    name: str,
    *,
    pools: int,
    jobs: int,
    task_seconds: float,
    preallocate: str,
    workdir: Path,
    at_ramp_end: bool = False,
) -> PhaseResult:
    per_host = math.ceil(jobs / pools) * TASKS_PER_JOB
    sim = SimProcess(
        [
            "--hosts",
            str(pools),
            "--pools",
            str(pools),
            "--time-scale",
            "1",
            "--task-seconds",
            str(task_seconds / ALLOCATION_FACTOR[preallocate]),
            "--task-distribution",
            "fixed",
        ],
        workdir,
        workers=per_host + 10,
    )
    errors: list[str] = []
    try:
        topology = await control(sim.port, "GET", "/_control/topology")
        targets = [(p["id"], p["master_domain"], p["spm"]) for p in topology["pools"]]
        pool_ids = [t[0] for t in targets]
        volumes_before = await volume_count(sim.port, pool_ids)
        daemon = Daemon(daemon_config(workdir / "taskmgrd.db", sim.port, topology))
        await daemon.start(api=False)
        try:
            reg = daemon.registry
            ok = await wait_until(
                daemon,
                lambda: all(
                    (h := reg.hosts.get(spm)) is not None and h.status is model.HostStatus.UP
                    for _, _, spm in targets
                ),
                60.0,
            )
            if not ok:
                raise RuntimeError("hosts did not come UP in the daemon")
            entries = []
            for i in range(jobs):
                pool, domain, spm = targets[i % len(targets)]
                disk = {
                    "pool": pool,
                    "domain": domain,
                    "size": 1 << 30,
                    "preallocate": preallocate,
                }
                entries.append(
                    {
                        "action": "CreateVm",
                        "params": {
                            "name": f"bench-{name}-{i}",
                            "host": spm,
                            "disks": [dict(disk) for _ in range(TASKS_PER_JOB)],
                        },
                    }
                )
            t_submit = time.time()
            batch = await daemon.executor.submit_batch(entries, owner=0)

            def polling() -> int:
                return sum(
                    1
                    for job in batch
                    for t in reg.job_tasks(job.id)
                    if t.status is TaskStatus.POLLING and t.vdsm_id
                )

            want = jobs * TASKS_PER_JOB
            if not await wait_until(
                daemon,
                lambda: polling() >= want or any(j.status in model.JOB_TERMINAL for j in batch),
                RAMP_TIMEOUT,
            ):
                raise RuntimeError(f"only {polling()} of {want} tasks running after the ramp")
            children = [
                r for job in batch for r in reg.commands.get(job.id, {}).values() if r.parent_id
            ]
            unsettled = sum(1 for r in children if r.data.get("phase") != "wait")
            queued = daemon.store.queued
            t_polling = time.time()
            if not at_ramp_end:
                # running jobs, settled: every CreateDisk child has recorded its phase "wait"
                # and every change the submission made is committed (a job with a 60-s task
                # spends all but its first moments like this). `--at-ramp-end` cancels at once
                # instead, while most children are still recording their execute phase.
                def settled() -> bool:
                    return all(r.data.get("phase") == "wait" for r in children)

                if not await wait_until(daemon, settled, RAMP_TIMEOUT):
                    raise RuntimeError("the jobs' children did not all reach their wait phase")
                await daemon.store.flush()
            early = [j for j in batch if j.status in model.JOB_TERMINAL]
            if early:
                raise RuntimeError(
                    f"{len(early)} jobs ended before the cancel: {early[0].status} {early[0].error}"
                )
            t_running = time.time()
            ramp = t_running - t_submit
            settle = 0.0 if at_ramp_end else t_running - t_polling
            # the oldest task started right after t_submit: this is the least time any has left
            remaining = task_seconds - ramp
            cpu0, sim_cpu0 = cpu_seconds(), cpu_seconds(sim.pid)
            gc0 = COLLECTOR.snapshot()
            ops0, commits0 = daemon.store.stats.ops, daemon.store.stats.commits
            requested: dict[str, float] = {}
            acked: dict[str, float] = {}
            expect = JobStatus.FINISHED
            if name != "baseline":
                mode = CancelMode.STOP if name == "stop" else CancelMode.REVERT
                expect = JobStatus.ABORTED

                async def cancel_one(job: Job) -> None:
                    requested[job.id] = time.time()
                    try:
                        await daemon.cancels.cancel(job.id, mode=mode, requester=0)
                        acked[job.id] = time.time()
                    except Exception as e:  # counted, never hidden
                        errors.append(f"cancel {job.id}: {e!r}")

                await asyncio.gather(*(cancel_one(j) for j in batch))
            await wait_until(
                daemon,
                lambda: all(j.status in model.JOB_TERMINAL for j in batch),
                END_TIMEOUT if name != "baseline" else END_TIMEOUT + task_seconds,
            )
            cpu, sim_cpu = cpu_seconds() - cpu0, cpu_seconds(sim.pid) - sim_cpu0
            collections, collecting = COLLECTOR.since(gc0)
            await daemon.store.flush()  # the last jobs' ends are committed: count them
            ops = daemon.store.stats.ops - ops0 - 1  # not the flush's own barrier
            commits = daemon.store.stats.commits - commits0
            latencies: list[float] = []
            vdsm_ids: dict[str, tuple[list[str], float]] = {}
            stopped_at: dict[str, float] = {}
            wrong = 0
            for job in batch:
                tasks = reg.job_tasks(job.id)
                uncleared = [t for t in tasks if t.status is not TaskStatus.CLEARED]
                if (
                    job.status is not expect
                    or job.ended_at is None
                    or len(tasks) != TASKS_PER_JOB
                    or uncleared
                ):
                    wrong += 1
                    if len(errors) < 5:
                        errors.append(
                            f"job {job.id}: {job.status} {job.error!r}, {len(tasks)} tasks, "
                            f"{[t.status.value for t in uncleared]} not cleared"
                        )
                    continue
                start = requested.get(job.id, t_running)
                latencies.append(job.ended_at - start)
                vdsm_ids[job.id] = ([v for t in tasks if (v := t.vdsm_id)], job.ended_at)
                stops = [
                    a["at"]
                    for a in (job.cancel.actions if job.cancel else [])
                    if a["action"] == "stopped"
                ]
                if stops:
                    stopped_at[job.id] = max(stops)
            ack = [acked[j] - requested[j] for j in acked]
        finally:
            await daemon.stop()
        sim_tasks = await control(sim.port, "GET", "/_control/tasks")
        left = sum(len(t) for t in sim_tasks.values())
        volumes_left = 0
        if name == "revert":
            volumes_left = max(0, await volume_count(sim.port, pool_ids) - volumes_before)
    finally:
        sim.stop()
    finished_at = sim.finish_times()
    vdsm_end = {
        job_id: max(finished_at[i] for i in ids)
        for job_id, (ids, _) in vdsm_ids.items()
        if ids and all(i in finished_at for i in ids)
    }
    after_vdsm = [vdsm_ids[job_id][1] - end for job_id, end in vdsm_end.items()]
    stopped = [at - requested[job_id] for job_id, at in stopped_at.items()]
    aborted = [end - stopped_at[job_id] for job_id, end in vdsm_end.items() if job_id in stopped_at]
    if len(after_vdsm) != len(vdsm_ids):
        errors.append(f"{len(vdsm_ids) - len(after_vdsm)} jobs without a simulator end time")
    return PhaseResult(
        name=name,
        jobs=jobs,
        pools=pools,
        task_seconds=task_seconds,
        preallocate=preallocate,
        ramp_s=round(ramp, 2),
        unsettled_children=unsettled,
        queued_changes=queued,
        settle_s=round(settle, 3),
        remaining_s=round(remaining, 2),
        ended_ok=len(latencies),
        wrong=wrong,
        p50_s=round(percentile(latencies, 0.50), 3),
        p90_s=round(percentile(latencies, 0.90), 3),
        p99_s=round(percentile(latencies, 0.99), 3),
        max_s=round(max(latencies), 3) if latencies else float("nan"),
        ack_p50_s=round(percentile(ack, 0.50), 3),
        ack_p99_s=round(percentile(ack, 0.99), 3),
        after_vdsm_p50_s=round(percentile(after_vdsm, 0.50), 3),
        after_vdsm_p99_s=round(percentile(after_vdsm, 0.99), 3),
        stopped_p50_s=round(percentile(stopped, 0.50), 3),
        stopped_p99_s=round(percentile(stopped, 0.99), 3),
        vdsm_p50_s=round(percentile(aborted, 0.50), 3),
        vdsm_p99_s=round(percentile(aborted, 0.99), 3),
        daemon_cpu_s=round(cpu, 2),
        gc_collections=collections,
        gc_s=round(collecting, 3),
        sim_cpu_s=round(sim_cpu, 2),
        writes_per_job=round(ops / jobs, 1),
        commits=commits,
        sim_tasks_left=left,
        volumes_left=volumes_left,
        errors=errors[:5],
    )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pools", type=int, help="pools, one SPM host each (50)")
    p.add_argument("--jobs", type=int, help="CreateVm jobs of three disks each (1000)")
    p.add_argument("--task-seconds", type=float, help="duration of every task, fixed (60)")
    p.add_argument(
        "--preallocate",
        choices=("PREALLOCATED", "SPARSE"),
        default="PREALLOCATED",
        help="the disks' allocation (VDSM can abort only PREALLOCATED creation; default)",
    )
    p.add_argument("--no-baseline", action="store_true", help="skip the finish-on-its-own phase")
    p.add_argument(
        "--at-ramp-end",
        action="store_true",
        help="cancel as soon as every task runs, before the jobs settled (children still "
        "recording their execute phase, changes still queued): the cancel competes with the "
        "submission's tail",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 10 pools, 100 jobs, 5 s tasks")
    p.add_argument("--check", action="store_true", help="exit 1 when the target is missed")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    add_gc_flag(p)
    args = p.parse_args(argv)
    fill_defaults(args, ("pools", "jobs", "task_seconds"), (10, 100, 5.0), (50, 1000, 60.0))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    set_gc(args.python_gc, args.gc_threshold)
    print(
        f"load: {args.pools} pools (one SPM host each), {args.jobs} CreateVm jobs of "
        f"{TASKS_PER_JOB} {args.preallocate} disks = {args.jobs * TASKS_PER_JOB} Volume.create "
        "tasks of "
        f"{args.task_seconds:g} s (fixed), all running before the clock starts"
        + (
            " (the clock starts as the last task runs, before the jobs settled)"
            if args.at_ramp_end
            else " and every job settled (children in phase wait, every change committed)"
        )
    )
    print(
        "method: stop/revert latency = job ended_at (ABORTED) - wall time its cancel request "
        "started, all jobs cancelled at once; baseline = job ended_at (FINISHED) - the moment "
        "all tasks were running, nothing cancelled"
    )
    phases = ["stop", "revert"] + ([] if args.no_baseline else ["baseline"])
    results: list[PhaseResult] = []
    with tempfile.TemporaryDirectory(prefix="bench-cancel-") as tmp:
        for name in phases:
            workdir = Path(tmp) / name
            workdir.mkdir()
            print(f"phase {name} ...", flush=True)
            results.append(
                run_loop(
                    run_phase(
                        name,
                        pools=args.pools,
                        jobs=args.jobs,
                        task_seconds=args.task_seconds,
                        preallocate=args.preallocate,
                        workdir=workdir,
                        at_ramp_end=args.at_ramp_end,
                    )
                )
            )
    print(
        f"\n{'phase':<10}{'jobs':>6}{'ok':>6}{'wrong':>6}{'ramp s':>8}{'left s':>8}"
        f"{'p50 s':>9}{'p90 s':>9}{'p99 s':>9}{'max s':>9}{'ack p50/p99 s':>16}"
        f"{'stops p50/p99':>16}{'VDSM p50/p99':>16}{'after VDSM p50/p99':>20}{'CPU s':>7}"
        f"{'sim CPU':>8}{'GC n/s':>11}{'writes/job':>11}{'sim tasks':>10}{'vols':>5}"
    )
    for r in results:
        print(
            f"{r.name:<10}{r.jobs:>6}{r.ended_ok:>6}{r.wrong:>6}{r.ramp_s:>8.1f}"
            f"{r.remaining_s:>8.1f}{r.p50_s:>9.3f}{r.p90_s:>9.3f}{r.p99_s:>9.3f}{r.max_s:>9.3f}"
            f"{r.ack_p50_s:>9.3f}/{r.ack_p99_s:<6.3f}"
            f"{r.stopped_p50_s:>9.3f}/{r.stopped_p99_s:<6.3f}"
            f"{r.vdsm_p50_s:>9.3f}/{r.vdsm_p99_s:<6.3f}"
            f"{r.after_vdsm_p50_s:>13.3f}/{r.after_vdsm_p99_s:<6.3f}"
            f"{r.daemon_cpu_s:>7.1f}{r.sim_cpu_s:>8.1f}"
            f"{r.gc_collections:>5}/{r.gc_s:<5.2f}{r.writes_per_job:>11.1f}"
            f"{r.sim_tasks_left:>10}{r.volumes_left:>5}"
        )
        print(
            f"    when every task ran: {r.unsettled_children} of {r.jobs * TASKS_PER_JOB} "
            f"children not yet in phase wait, {r.queued_changes} changes queued; "
            + (f"settled {r.settle_s:.3f} s later" if r.settle_s else "not waited for")
        )
        for e in r.errors:
            print(f"    error ({r.name}): {e}")
    print(
        f"collector over the whole run (ramps included): {COLLECTOR.count} collections, "
        f"{COLLECTOR.seconds:.2f} s"
    )
    bad = any(
        r.wrong or r.ended_ok != r.jobs or r.sim_tasks_left or r.volumes_left or r.errors
        for r in results
    )
    cancelled = [r for r in results if r.name != "baseline"]
    met = all(r.p99_s <= TARGET_P99_S for r in cancelled)
    if not args.no_baseline:
        base = results[-1]
        print(
            f"\nbaseline (no cancel, tasks had {base.remaining_s:.1f} s left): p50 {base.p50_s:.3f}"
            f" s, p99 {base.p99_s:.3f} s to FINISHED"
        )
    verdict = "PASS" if met and not bad else "FAIL"
    print(
        f"{verdict}: target p99 <= {TARGET_P99_S:g} s request -> ABORTED ("
        + ", ".join(f"{r.name} {r.p99_s:.3f}" for r in cancelled)
        + f"); correctness {'FAILED' if bad else 'ok'}: every job ended as expected with its "
        "tasks cleared, simulator task tables empty, revert left no volume"
    )
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "verdict": verdict}))
    if bad:
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU milliseconds per job in the daemon alone (issue 3, benchmarks a and b, explained).

`throughput.py` and `completion_latency.py` measure the whole daemon with its API and clients
on a shared machine, where a loaded box moves every rate. This measures the figure they are
bound by: a daemon in this process (no API), `vdsm-sim` in its own process, `--jobs` jobs run
until every one is FINISHED. Prints the process's CPU time per job (utime + stime, all threads:
SQLite's writer thread and its fsyncs included, and that thread's share apart), record changes,
store rows and commits per job. Two shapes of load:

* batches (default): `--batch` RefreshHost jobs at a time through `Executor.submit_batch`, one
  host (benchmark b's shape);
* a trickle (`--rate R`): one `Executor.submit` every 1/R s, round-robin over `--pools` pools
  (benchmark a's shape: each job is acknowledged on its own, so per-commit costs show).

`--action CreateDisk` runs disks (one Volume.create task of `--task-seconds` each) instead of
RefreshHost. The import path decides which daemon is measured, so the same script measures an
older checkout (`PYTHONPATH=/path/to/checkout`); `--python-gc` keeps Python's collector settings.

    python bench/job_cost.py                                    # 3,000 RefreshHost, batches of 100
    python bench/job_cost.py --rate 80 --pools 10 --jobs 1600   # a trickle of RefreshHost
    python bench/job_cost.py --rate 80 --pools 10 --jobs 1600 --action CreateDisk
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchlib import (
    ADDRESS,
    SimProcess,
    add_gc_flag,
    control,
    cpu_seconds,
    machine,
    run_loop,
    set_gc,
)

from daemon import model
from daemon.config import HostEntry, load_config
from daemon.service import Daemon


@dataclasses.dataclass
class Run:
    cpu_ms_per_job: float
    writer_ms_per_job: float  # the part spent on threads other than the loop's (SQLite's)
    jobs_per_second: float  # wall: says how loaded the machine was more than anything
    changes_per_job: float
    rows_per_job: float
    commits_per_job: float


def thread_cpu() -> dict[str, float]:
    """CPU seconds of each of this process's threads, by thread id."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[str, float] = {}
    for tid in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{tid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        out[tid] = (int(fields[11]) + int(fields[12])) / tick
    return out


async def wait_idle(daemon: Daemon) -> None:
    while daemon.registry.by_status.get(model.JobStatus.STARTED):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


def entry(action: str, pool: dict[str, Any]) -> dict[str, Any]:
    if action == "CreateDisk":
        params = {"pool": pool["id"], "domain": pool["master_domain"], "size": 1 << 30}
        return {"action": action, "params": params}
    return {"action": action, "params": {"host": pool["spm"]}}


async def submit(daemon: Daemon, args: argparse.Namespace, pools: list[dict[str, Any]]) -> int:
    """Submit the run's jobs in its shape; returns how many."""
    if not args.rate:
        entries = [entry(args.action, pools[0])] * args.batch
        for _ in range(args.jobs // args.batch):
            await daemon.executor.submit_batch(entries, owner=0)
            await asyncio.sleep(0)
        return args.jobs // args.batch * args.batch
    loop = asyncio.get_running_loop()
    start = loop.time()
    pending = []
    for i in range(args.jobs):
        delay = start + i / args.rate - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        e = entry(args.action, pools[i % len(pools)])
        pending.append(asyncio.ensure_future(daemon.executor.submit(**e, owner=0)))
    await asyncio.gather(*pending)
    return args.jobs


async def one_run(args: argparse.Namespace, workdir: Path) -> Run:
    n = args.pools if args.rate else 1
    sim_args = ["--hosts", str(n), "--pools", str(n), "--time-scale", "1"]
    sim_args += ["--task-seconds", str(args.task_seconds), "--task-distribution", "fixed"]
    sim = SimProcess(sim_args, workdir, workers=60)
    try:
        pools = (await control(sim.port, "GET", "/_control/topology"))["pools"]
        config = load_config(None).with_overrides(db=workdir / "d.db", socket=workdir / "a.sock")
        hosts = tuple(HostEntry(p["spm"], ADDRESS, sim.port, p["id"]) for p in pools)
        daemon = Daemon(dataclasses.replace(config, hosts=hosts))
        await daemon.start(api=False)
        try:
            await daemon.executor.submit_batch([entry(args.action, pools[0])] * 10, owner=0)
            await wait_idle(daemon)  # warm-up
            me = str(os.getpid())
            c0, th0, t0 = cpu_seconds(), thread_cpu(), time.monotonic()
            e0, r0, k0 = daemon.events.seq, daemon.store.stats.ops, daemon.store.stats.commits
            done = await submit(daemon, args, pools)
            await wait_idle(daemon)
            th1 = thread_cpu()
            writer = sum(v - th0.get(k, 0.0) for k, v in th1.items() if k != me)
            return Run(
                (cpu_seconds() - c0) * 1e3 / done,
                writer * 1e3 / done,
                done / (time.monotonic() - t0),
                (daemon.events.seq - e0) / done,
                (daemon.store.stats.ops - r0) / done,
                (daemon.store.stats.commits - k0) / done,
            )
        finally:
            await daemon.stop()
    finally:
        sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--batch", type=int, default=100, help="jobs per submit_batch (no --rate)")
    p.add_argument("--rate", type=float, default=0.0, help="jobs/s submitted one at a time")
    p.add_argument("--pools", type=int, default=10, help="pools (and SPM hosts) with --rate")
    p.add_argument("--action", choices=("RefreshHost", "CreateDisk"), default="RefreshHost")
    p.add_argument("--task-seconds", type=float, default=2.0, help="CreateDisk's task duration")
    p.add_argument("--runs", type=int, default=3)
    add_gc_flag(p)
    args = p.parse_args()
    print(f"machine: {machine()}")
    set_gc(args.python_gc)
    shape = f"one every {1 / args.rate * 1e3:.1f} ms" if args.rate else f"batches of {args.batch}"
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-job-cost-") as tmp:
            run = run_loop(one_run(args, Path(tmp)))
        runs.append(run)
        print(
            f"{args.jobs} {args.action} jobs, {shape}: {run.cpu_ms_per_job:.2f} CPU ms/job "
            f"({run.writer_ms_per_job:.2f} on SQLite's thread), {run.jobs_per_second:.0f} "
            f"jobs/s wall, {run.changes_per_job:.1f} record changes, {run.rows_per_job:.1f} "
            f"store rows and {run.commits_per_job:.2f} commits per job"
        )
    print(f"median: {statistics.median(r.cpu_ms_per_job for r in runs):.2f} CPU ms/job")


if __name__ == "__main__":
    main()

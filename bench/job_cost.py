"""CPU milliseconds per simple job in the daemon alone (issue 3, benchmarks a and b, explained).

`throughput.py` and `completion_latency.py` measure the whole daemon with its API and clients
on a shared machine, where a loaded box moves every rate. This measures the figure they are
bound by: a daemon in this process (no API), one `vdsm-sim` host in its own process, `--jobs`
RefreshHost jobs submitted through `Executor.submit_batch` in batches of `--batch`, run until
every one is FINISHED. Prints the process's CPU time per job (utime + stime, all threads:
SQLite's writer thread and its fsyncs included), record changes per job and store rows per job.
The import path decides which daemon is measured, so the same script measures an older
checkout (`PYTHONPATH=/path/to/checkout`); `--python-gc` keeps Python's collector settings.

    python bench/job_cost.py                 # 3,000 jobs in batches of 100, 3 runs
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from benchlib import ADDRESS, SimProcess, control, cpu_seconds, machine, run_loop

from daemon import model
from daemon.config import HostEntry, load_config
from daemon.service import Daemon


@dataclasses.dataclass
class Run:
    cpu_ms_per_job: float
    jobs_per_second: float  # wall: says how loaded the machine was more than anything
    changes_per_job: float
    rows_per_job: float


async def wait_idle(daemon: Daemon) -> None:
    while daemon.registry.by_status.get(model.JobStatus.STARTED):  # noqa: ASYNC110
        await asyncio.sleep(0.01)


async def one_run(jobs: int, batch: int, workdir: Path) -> Run:
    sim = SimProcess(["--hosts", "1", "--pools", "1"], workdir)
    try:
        pool = (await control(sim.port, "GET", "/_control/topology"))["pools"][0]
        config = load_config(None).with_overrides(db=workdir / "d.db", socket=workdir / "a.sock")
        config = dataclasses.replace(
            config, hosts=(HostEntry(pool["spm"], ADDRESS, sim.port, pool["id"]),)
        )
        daemon = Daemon(config)
        await daemon.start(api=False)
        try:
            entries = [{"action": "RefreshHost", "params": {"host": pool["spm"]}}] * batch
            await daemon.executor.submit_batch(entries, owner=0)  # warm-up
            await wait_idle(daemon)
            c0, t0 = cpu_seconds(), time.monotonic()
            e0, r0 = daemon.events.seq, daemon.store.stats.ops
            for _ in range(jobs // batch):
                await daemon.executor.submit_batch(entries, owner=0)
                await asyncio.sleep(0)
            await wait_idle(daemon)
            done = jobs // batch * batch
            return Run(
                (cpu_seconds() - c0) * 1e3 / done,
                done / (time.monotonic() - t0),
                (daemon.events.seq - e0) / done,
                (daemon.store.stats.ops - r0) / done,
            )
        finally:
            await daemon.stop()
    finally:
        sim.stop()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, default=3000)
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--python-gc", action="store_true", help="keep Python's collector settings")
    args = p.parse_args()
    print(f"machine: {machine()}")
    if not args.python_gc:
        try:
            from daemon.service import tune_gc
        except ImportError:  # an older checkout: it had none
            print("gc: Python's settings (this daemon has no tune_gc)")
        else:
            tune_gc()
    runs = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-job-cost-") as tmp:
            run = run_loop(one_run(args.jobs, args.batch, Path(tmp)))
        runs.append(run)
        print(
            f"{args.jobs} RefreshHost jobs: {run.cpu_ms_per_job:.2f} CPU ms/job, "
            f"{run.jobs_per_second:.0f} jobs/s wall, {run.changes_per_job:.1f} record changes "
            f"and {run.rows_per_job:.1f} store rows per job"
        )
    print(f"median: {statistics.median(r.cpu_ms_per_job for r in runs):.2f} CPU ms/job")


if __name__ == "__main__":
    main()

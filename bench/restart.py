"""Restart with 100,000 stored jobs, 10,000 of them active (issue 3, benchmark c): how long
until the daemon is ready, i.e. `Daemon.start()` returned and the API answers.

1. ``vdsm-sim --hosts 10 --pools 10`` in its own process: the stored hosts point at it, so the
   restarted daemon reconnects its monitors and its pollers find real SPMs.
2. The database is generated once through the daemon's own `Store` (bench/jobgen.py): N
   CreateDisk jobs, A of them STARTED and waiting for their VDSM task (command in phase
   ``wait``, task POLLING, disk lock held), the rest FINISHED with their whole tree.
3. Each start is a cold start in a fresh process (multiprocessing spawn) on a fresh copy of that
   file: the child builds the `Daemon` from the config, awaits ``start()`` (migrations, loading
   the jobs: running ones whole, ended ones as their summary, see daemon/registry.py; hosts,
   recovery of the A active jobs, the API socket), then ``GET /api/v1/health`` over the unix
   socket. Ready = that answer; the time is from just before ``Daemon(config)`` (imports
   excluded, reported apart). It also reports the process's CPU time over that span (what a
   shared machine disturbs least), and the resident memory once every job resumed. The active
   jobs (all in phase wait) take their first step after the API is up, a chunk per loop pass
   (Executor.recover): "resumed" is the time until the last of them had its turn, reported
   apart, not part of readiness.
4. Baseline: the same cold start on an empty database (same hosts).

Prints the median of ``--repeat`` starts of each and PASS/FAIL against 3 s; exits non-zero
only with ``--check`` (or when a start loaded the wrong number of jobs).

    python bench/restart.py            # 100,000 jobs, 10,000 active, 3 starts each
    python bench/restart.py --quick    # 5,000 jobs, 500 active, 1 start each: a smoke run
    python bench/restart.py --keep-db /tmp/100k.db     # then, for A/B runs of two checkouts:
    PYTHONPATH=/other/checkout python bench/restart.py --db /tmp/100k.db
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import shutil
import sqlite3
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from benchlib import (
    ADDRESS,
    SimProcess,
    control,
    cpu_seconds,
    fill_defaults,
    machine,
    median,
    rss_mb,
    run_loop,
)
from jobgen import PoolInfo, generate

TARGET_S = 3.0


@dataclass
class StartResult:
    db: str  # "N jobs" or "empty"
    ready_s: float  # Daemon(config) .. health answered
    start_s: float  # Daemon.start() alone
    cpu_s: float  # the process's CPU time (user + system) over ready_s: the figure a shared
    # machine disturbs least (wall time there includes waiting for a core)
    resumed_s: float  # Daemon(config) .. every resumed job took its first step (after ready)
    resumed_cpu_s: float  # CPU time over resumed_s
    import_s: float  # importing daemon.service and aiohttp in the fresh process
    jobs_loaded: int
    active_loaded: int
    rss_mb: float
    db_mb: float


def child(out: Any, db: str, sock: str, pools: list[tuple[str, str, str]], port: int) -> None:
    """A cold start in this fresh process; sends back its figures."""
    try:
        t0 = time.perf_counter()
        import aiohttp

        from daemon.config import HostEntry, load_config
        from daemon.model import JobStatus
        from daemon.service import Daemon

        imported = time.perf_counter() - t0

        async def run() -> dict[str, Any]:
            config = load_config(None).with_overrides(db=Path(db), socket=Path(sock))
            hosts = tuple(HostEntry(h, ADDRESS, port, p) for p, _, h in pools)
            # The generated tasks exist in no simulator: with the default grace the pollers
            # would declare all 10,000 LOST while the jobs resume, and "resumed" would time
            # that settling too. Readiness is unaffected (no poll completes before it).
            polling = dataclasses.replace(config.polling, missing_grace=1000)
            config = dataclasses.replace(config, hosts=hosts, polling=polling)
            t1, c1 = time.perf_counter(), cpu_seconds()
            daemon = Daemon(config)
            await daemon.start(api=True)
            t2 = time.perf_counter()
            connector = aiohttp.UnixConnector(path=sock)
            async with (
                aiohttp.ClientSession(connector=connector) as http,
                http.get("http://taskmgrd/api/v1/health") as resp,
            ):
                health = await resp.json()
            t3, c3 = time.perf_counter(), cpu_seconds()
            assert resp.status == 200 and health["status"] == "ok", health
            resumed = getattr(daemon.executor, "resumed", None)  # absent in older checkouts
            if resumed is not None:
                await resumed.wait()
            t4, c4 = time.perf_counter(), cpu_seconds()
            figures = {
                "resumed_s": t4 - t1,
                "resumed_cpu_s": c4 - c1,
                "ready_s": t3 - t1,
                "start_s": t2 - t1,
                "cpu_s": c3 - c1,
                "import_s": imported,
                "jobs_loaded": len(daemon.registry.jobs),
                "active_loaded": len(daemon.registry.by_status.get(JobStatus.STARTED, ())),
                "rss_mb": rss_mb(),
            }
            await daemon.stop()
            return figures

        out.send(run_loop(run()))
    except BaseException as e:
        out.send(f"{type(e).__name__}: {e}")
        raise


def cold_start(db: Path, sock: Path, pools: list[PoolInfo], port: int) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    recv, send = ctx.Pipe(duplex=False)
    pool_args = [(p.pool, p.domain, p.spm) for p in pools]
    proc = ctx.Process(target=child, args=(send, str(db), str(sock), pool_args, port))
    proc.start()
    send.close()
    try:
        if not recv.poll(300):
            raise RuntimeError("the daemon did not start within 300 s")
        result = recv.recv()
    finally:
        proc.join(60)
        if proc.is_alive():
            proc.kill()
    if isinstance(result, str):
        raise RuntimeError(f"cold start failed: {result}")
    return dict(result)


async def topology(port: int) -> list[PoolInfo]:
    topo = await control(port, "GET", "/_control/topology")
    return [PoolInfo(p["id"], p["master_domain"], p["spm"]) for p in topo["pools"]]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, help="stored jobs (100000)")
    p.add_argument("--active", type=int, help="of which active (10000)")
    p.add_argument("--pools", type=int, default=10, help="pools, one SPM host each")
    p.add_argument("--repeat", type=int, help="cold starts of each kind (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5,000 jobs, 500 active")
    p.add_argument(
        "--db",
        type=Path,
        help="reuse this database (generated by an earlier run with the same --jobs and "
        "--active, kept with --keep-db) instead of generating one: saves ~100 s a run",
    )
    p.add_argument("--keep-db", type=Path, help="copy the generated database here")
    p.add_argument("--check", action="store_true", help="exit 1 above the target")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, ("jobs", "active", "repeat"), (5000, 500, 1), (100_000, 10_000, 3))
    if not 0 <= args.active <= args.jobs:
        p.error("need 0 <= --active <= --jobs")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    results: list[StartResult] = []
    wrong = 0
    with tempfile.TemporaryDirectory(prefix="bench-restart-") as tmp_name:
        tmp = Path(tmp_name)
        sim = SimProcess(["--hosts", str(args.pools), "--pools", str(args.pools)], tmp)
        try:
            pools = run_loop(topology(sim.port))
            source = tmp / "source.db"
            t0 = time.perf_counter()
            if args.db is not None:
                shutil.copyfile(args.db, source)
                with sqlite3.connect(source) as db:  # its hosts point at this run's simulator
                    db.execute("UPDATE hosts SET doc = json_set(doc, '$.port', ?)", (sim.port,))
                print(f"reusing {args.db} ({source.stat().st_size / 1e6:.0f} MB)")
            else:
                counts = run_loop(
                    generate(source, pools, ADDRESS, sim.port, jobs=args.jobs, active=args.active)
                )
                print(
                    f"generated {counts['jobs']} jobs ({counts['active']} active, "
                    f"{counts['rows']} rows, {source.stat().st_size / 1e6:.0f} MB) through "
                    f"Store in {time.perf_counter() - t0:.1f} s"
                )
                if args.keep_db is not None:
                    shutil.copyfile(source, args.keep_db)
            empty = tmp / "empty.db"
            for i in range(args.repeat):
                for kind, src in ((f"{args.jobs} jobs", source), ("empty", None)):
                    db = tmp / f"run{i}.db"
                    for suffix in ("", "-wal", "-shm"):
                        Path(f"{db}{suffix}").unlink(missing_ok=True)
                    if src is not None:
                        shutil.copyfile(src, db)
                    r = cold_start(db, tmp / "api.sock", pools, sim.port)
                    want = (args.jobs, args.active) if src is not None else (0, 0)
                    if (r["jobs_loaded"], r["active_loaded"]) != want:
                        wrong += 1
                        print(f"    wrong: loaded {r['jobs_loaded']} / {r['active_loaded']}")
                    size = db.stat().st_size / 1e6 if src is not None else 0.0
                    results.append(StartResult(kind, db_mb=round(size, 1), **r))
                    print(
                        f"  start {i + 1} ({kind}): ready in {r['ready_s']:.2f} s "
                        f"(start() {r['start_s']:.2f} s), RSS {r['rss_mb']:.0f} MB"
                    )
            del empty
        finally:
            sim.stop()
    full = [r for r in results if r.db != "empty"]
    base = [r for r in results if r.db == "empty"]
    ready = median([r.ready_s for r in full])
    print(
        f"\n{'database':<14}{'ready s':>9}{'start() s':>11}{'CPU s':>8}{'imports s':>11}"
        f"{'jobs':>8}{'active':>8}{'RSS MB':>8}{'resumed s':>11}{'CPU s':>8}"
    )
    for r in results:
        print(
            f"{r.db:<14}{r.ready_s:>9.3f}{r.start_s:>11.3f}{r.cpu_s:>8.3f}{r.import_s:>11.3f}"
            f"{r.jobs_loaded:>8}{r.active_loaded:>8}{r.rss_mb:>8.0f}"
            f"{r.resumed_s:>11.3f}{r.resumed_cpu_s:>8.3f}"
        )
    print(
        f"\nready with {args.jobs} jobs ({args.active} active): median {ready:.2f} s "
        f"(spread {min(r.ready_s for r in full):.2f} - {max(r.ready_s for r in full):.2f}), "
        f"CPU {median([r.cpu_s for r in full]):.2f} s; every active job resumed: "
        f"{median([r.resumed_s for r in full]):.2f} s (CPU "
        f"{median([r.resumed_cpu_s for r in full]):.2f} s); "
        f"empty database: {median([r.ready_s for r in base]):.2f} s"
    )
    verdict = "PASS" if ready < TARGET_S and not wrong else "FAIL"
    print(f"{verdict}: target ready in under {TARGET_S:g} s; {wrong} starts loaded wrong counts")
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "verdict": verdict}))
    if wrong:
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())

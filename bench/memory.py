"""Resident memory with 100,000 live jobs (issue 3, benchmark d): the RSS of a daemon process
that holds them, against an empty daemon's.

The jobs are the restart benchmark's (bench/jobgen.py, written through the daemon's `Store`):
N CreateDisk jobs with their whole trees (root command, four steps, the VDSM task), A of them
STARTED and waiting for their task with the disk lock held, the rest FINISHED. A fresh process
(multiprocessing spawn) starts a `Daemon` on that database, which loads every job into its
registry (running ones whole, ended ones as their summary; their trees are read on first use)
and resumes the active ones, with the API up, and reads its own VmRSS from
/proc/self/status once the API answered and every resumed job took its first step. The
baseline is the same start on an empty database.
RSS is what the kernel charges the process, including the allocator's free-but-kept pages
(the peak of loading stays resident: Python rarely gives arenas back), so it is the honest
figure for an operator.

    python bench/memory.py            # 100,000 jobs (10,000 active), 3 starts each
    python bench/memory.py --quick    # 5,000 jobs: a smoke run
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

from benchlib import ADDRESS, SimProcess, fill_defaults, machine, median, run_loop
from jobgen import generate
from restart import cold_start, topology

TARGET_MB = 500.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--jobs", type=int, help="live jobs (100000)")
    p.add_argument("--active", type=int, help="of which active (10% of --jobs)")
    p.add_argument("--pools", type=int, default=10, help="pools, one SPM host each")
    p.add_argument("--repeat", type=int, help="starts of each kind (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 5,000 jobs, 1 start")
    p.add_argument("--check", action="store_true", help="exit 1 above the target")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = p.parse_args(argv)
    fill_defaults(args, ("jobs", "repeat"), (5000, 1), (100_000, 3))
    if args.active is None:
        args.active = args.jobs // 10
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    loaded: list[float] = []
    empty: list[float] = []
    wrong = 0
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp_name:
        tmp = Path(tmp_name)
        sim = SimProcess(["--hosts", str(args.pools), "--pools", str(args.pools)], tmp)
        try:
            pools = run_loop(topology(sim.port))
            source = tmp / "source.db"
            t0 = time.perf_counter()
            run_loop(generate(source, pools, ADDRESS, sim.port, jobs=args.jobs, active=args.active))
            print(
                f"generated {args.jobs} jobs ({args.active} active) in "
                f"{time.perf_counter() - t0:.1f} s"
            )
            for i in range(args.repeat):
                for src, into in ((source, loaded), (None, empty)):
                    db = tmp / f"run{i}-{'full' if src else 'empty'}.db"
                    if src is not None:
                        shutil.copyfile(src, db)
                    r = cold_start(db, tmp / "api.sock", pools, sim.port)
                    want = args.jobs if src is not None else 0
                    if r["jobs_loaded"] != want:
                        wrong += 1
                    into.append(r["rss_mb"])
                    print(
                        f"  start {i + 1}: {r['jobs_loaded']} jobs live, RSS {r['rss_mb']:.0f} MB"
                    )
        finally:
            sim.stop()
    rss, base = median(loaded), median(empty)
    per_job = (rss - base) * 1e6 / max(args.jobs, 1)
    print(
        f"\nRSS with {args.jobs} live jobs ({args.active} active): {rss:.0f} MB "
        f"(spread {min(loaded):.0f} - {max(loaded):.0f}); empty daemon: {base:.0f} MB; "
        f"{per_job / 1000:.1f} KB per job"
    )
    verdict = "PASS" if rss < TARGET_MB and not wrong else "FAIL"
    print(f"{verdict}: target under {TARGET_MB:.0f} MB; {wrong} starts loaded a wrong count")
    if args.json:
        print(
            json.dumps(
                {
                    "jobs": args.jobs,
                    "active": args.active,
                    "rss_mb": loaded,
                    "empty_rss_mb": empty,
                    "per_job_bytes": round(per_job),
                    "verdict": verdict,
                }
            )
        )
    if wrong:
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())

"""API throughput of simple jobs (issue 3, benchmark b): jobs acknowledged per second over the
real unix socket, durable (synchronous=FULL, the default), one request per job and in batches.

Set-up, per phase (FULL, then the baseline synchronous=OFF, each on a fresh database):

1. ``vdsm-sim --hosts 1`` in its own process: RefreshHost (the simple action, scenario 1: no
   VDSM task, two verbs) needs a host to ask.
2. A ``Daemon`` in this process with its API on a unix socket in a temp directory.
3. A separate client process (multiprocessing, uvloop, aiohttp over the unix socket) runs
   C concurrent clients, each a closed loop of ``POST /api/v1/jobs``: first ``{"action":
   "RefreshHost", ...}`` one job per request, then ``{"batch": [...]}`` with B jobs per request.
   "jobs/s" = jobs acknowledged with 201 per second inside the measured window (after a warm-up);
   any other answer is counted as an error.
4. Acknowledging is not running: the daemon runs the jobs while it acknowledges more, and may
   fall behind. So each mode also reports, from the jobs' own times: "executed/s", the jobs
   that reached FINISHED inside the same window; the backlog (acknowledged by the window's end,
   not finished by then); the drain (clients stopped → the mode's last job finished); and the
   sustained end-to-end rate, every job of the mode over its first creation → its last finish.
   Every acknowledged job must reach FINISHED before the next mode starts; the benchmark waits
   for that and checks.

The baseline is the same daemon with ``synchronous=OFF`` (SQLite does not fsync): the difference
is what durability costs. Prints jobs/s, request latency p50/p99 and the daemon's CPU, and
PASS/FAIL against 1,000 jobs/s in batches and 300 jobs/s one request each (FULL).

    python bench/throughput.py            # 8 clients, batches of 100, 10 s per mode
    python bench/throughput.py --quick    # 4 clients, 2 s per mode: a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
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
from daemon.config import HostEntry, load_config
from daemon.service import Daemon

TARGET_BATCH = 1000.0
TARGET_SINGLE = 300.0
FINISH_TIMEOUT = 120.0


@dataclass
class ModeResult:
    synchronous: str
    mode: str  # single | batch
    clients: int
    batch: int
    seconds: float
    requests: int
    jobs: int
    jobs_per_s: float
    errors: int
    p50_ms: float
    p99_ms: float
    daemon_cpu_cores: float
    executed_per_s: float  # jobs that reached FINISHED inside the same window
    backlog_at_end: int  # acknowledged by the window's end but not finished by then
    drain_s: float  # after the clients stopped, until the last job of the mode finished
    sustained_per_s: float  # every job of the mode / (its first created -> its last finished)
    cpu_ms_per_job: float  # daemon CPU of the mode and its drain, per job of the mode
    commits_per_s: float  # the store's group commits during the mode and its drain
    changes_per_commit: float
    commit_p50_ms: float  # of the store's last 1,000 commits at the mode's end
    commit_p99_ms: float


# -- the clients (a separate process) ----------------------------------------------------------


async def drive(
    sock: str, host: str, mode: str, clients: int, batch: int, seconds: float, warmup: float
) -> dict[str, Any]:
    import aiohttp

    entry = {"action": "RefreshHost", "params": {"host": host}}
    body = json.dumps({"batch": [entry] * batch} if mode == "batch" else entry).encode()
    per_request = batch if mode == "batch" else 1
    loop = asyncio.get_running_loop()
    start = loop.time() + warmup
    end = start + seconds
    wall_start = time.time() + warmup
    latencies: list[float] = []
    counts = {"requests": 0, "jobs": 0, "errors": 0}
    examples: list[str] = []

    async def client(http: aiohttp.ClientSession) -> None:
        while loop.time() < end:
            sent = loop.time()
            async with http.post(
                "http://taskmgrd/api/v1/jobs",
                data=body,
                headers={"Content-Type": "application/json"},
            ) as resp:
                payload = await resp.read()
            now = loop.time()
            ok = resp.status == 201
            if ok and mode == "batch":
                ok = len(json.loads(payload)["jobs"]) == batch
            if not ok:
                counts["errors"] += 1
                if len(examples) < 3:
                    examples.append(f"{resp.status} {payload[:200]!r}")
                continue
            if start <= now <= end:
                counts["requests"] += 1
                counts["jobs"] += per_request
                if sent >= start:
                    latencies.append(now - sent)

    connector = aiohttp.UnixConnector(path=sock, limit=clients)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return {
        **counts,
        "latencies": latencies,
        "examples": examples,
        "wall_window": (wall_start, wall_start + seconds),
    }


def client_process(out: Any, sock: str, host: str, plan: list[tuple[str, int]], args: Any) -> None:
    try:
        results = []
        for mode, batch in plan:
            r = run_loop(drive(sock, host, mode, args[0], batch, args[1], args[2]))
            results.append(r)
            out.send(("mode-done", mode))
            out.recv()  # the parent lets the daemon drain between modes
        out.send(("results", results))
    except BaseException as e:
        out.send(("error", f"{type(e).__name__}: {e}"))
        raise


# -- the daemon side ---------------------------------------------------------------------------


async def run_phase(synchronous: str, args: argparse.Namespace, workdir: Path) -> list[ModeResult]:
    sim = SimProcess(["--hosts", "1", "--pools", "1"], workdir)
    try:
        topology = await control(sim.port, "GET", "/_control/topology")
        pool = topology["pools"][0]
        config = load_config(None).with_overrides(
            db=workdir / "taskmgrd.db", socket=workdir / "api.sock"
        )
        config = dataclasses.replace(
            config,
            daemon=dataclasses.replace(config.daemon, synchronous=synchronous),
            hosts=(HostEntry(pool["spm"], ADDRESS, sim.port, pool["id"]),),
        )
        daemon = Daemon(config)
        await daemon.start(api=True)
        try:
            return await measure(daemon, synchronous, pool["spm"], args, workdir)
        finally:
            await daemon.stop()
    finally:
        sim.stop()


async def wait_idle(daemon: Daemon, deadline: float) -> None:
    """Until no job is STARTED: the jobs acknowledged in one mode must not load the next."""
    reg = daemon.registry
    async with asyncio.timeout(deadline):
        while reg.by_status.get(model.JobStatus.STARTED):  # noqa: ASYNC110 - polled state
            await asyncio.sleep(0.05)


async def measure(
    daemon: Daemon, synchronous: str, host: str, args: argparse.Namespace, workdir: Path
) -> list[ModeResult]:
    plan = [("single", 1), ("batch", args.batch)]
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(
        target=client_process,
        args=(
            child,
            str(workdir / "api.sock"),
            host,
            plan,
            (args.clients, args.seconds, args.warmup),
        ),
        name="bench-api-clients",
    )
    loop = asyncio.get_running_loop()
    proc.start()
    cpu: list[float] = []
    cpu_total: list[float] = []  # CPU seconds of the mode and its drain
    mode_jobs: list[list[model.Job]] = []
    drained_at: list[float] = []
    store_use: list[tuple[float, float, float, float]] = []
    reg = daemon.registry
    try:
        for _mode, _ in plan:
            # CPU over the mode's run (warm-up included: the client decides the window)
            before = set(reg.jobs)
            stats = daemon.store.stats
            s0 = (stats.commits, stats.ops)
            c0, t0 = cpu_seconds(), time.monotonic()
            msg = await loop.run_in_executor(None, _recv, parent, 120 + args.seconds * 3)
            cpu.append((cpu_seconds() - c0) / (time.monotonic() - t0))
            if msg[0] == "error":
                raise RuntimeError(f"clients failed: {msg[1]}")
            clients_done = time.time()
            await wait_idle(daemon, FINISH_TIMEOUT)
            cpu_total.append(cpu_seconds() - c0)
            elapsed = time.monotonic() - t0
            commits = stats.commits - s0[0]
            store_use.append(
                (
                    commits / elapsed,
                    (stats.ops - s0[1]) / commits if commits else 0.0,
                    percentile(stats.commit_seconds, 0.5) * 1e3,
                    percentile(stats.commit_seconds, 0.99) * 1e3,
                )
            )
            mode_jobs.append([j for i, j in reg.jobs.items() if i not in before])
            drained_at.append(clients_done)
            parent.send("go")
        kind, payload = await loop.run_in_executor(None, _recv, parent, 60)
        if kind != "results":
            raise RuntimeError(f"clients failed: {payload}")
    finally:
        await loop.run_in_executor(None, proc.join, 10)
        if proc.is_alive():
            proc.kill()
    results = []
    for (mode, batch), r, c, c_all, jobs, done_at, use in zip(
        plan, payload, cpu, cpu_total, mode_jobs, drained_at, store_use, strict=True
    ):
        for ex in r["examples"]:
            print(f"    {synchronous} {mode}: error answer {ex}")
        ws, we = r["wall_window"]
        ends = [j.ended_at for j in jobs if j.ended_at is not None]
        first = min((j.created_at for j in jobs), default=ws)
        last = max(ends, default=we)
        results.append(
            ModeResult(
                synchronous=synchronous,
                mode=mode,
                clients=args.clients,
                batch=batch,
                seconds=args.seconds,
                requests=r["requests"],
                jobs=r["jobs"],
                jobs_per_s=round(r["jobs"] / args.seconds, 1),
                errors=r["errors"],
                p50_ms=round(percentile(r["latencies"], 0.5) * 1000, 2),
                p99_ms=round(percentile(r["latencies"], 0.99) * 1000, 2),
                daemon_cpu_cores=round(c, 2),
                executed_per_s=round(sum(1 for e in ends if ws <= e <= we) / args.seconds, 1),
                backlog_at_end=sum(1 for j in jobs if j.created_at <= we)
                - sum(1 for e in ends if e <= we),
                drain_s=round(max(0.0, last - done_at), 2),
                sustained_per_s=round(len(jobs) / (last - first), 1) if last > first else 0.0,
                cpu_ms_per_job=round(1000 * c_all / len(jobs), 2) if jobs else 0.0,
                commits_per_s=round(use[0], 1),
                changes_per_commit=round(use[1], 1),
                commit_p50_ms=round(use[2], 1),
                commit_p99_ms=round(use[3], 1),
            )
        )
    statuses: dict[str, int] = {}
    for job in reg.jobs.values():
        statuses[job.status.value] = statuses.get(job.status.value, 0) + 1
    print(f"    {synchronous}: every job acknowledged ran: {statuses}")
    if set(statuses) != {"FINISHED"}:
        raise RuntimeError(f"jobs did not all finish: {statuses}")
    return results


def _recv(conn: Any, timeout: float) -> Any:
    if not conn.poll(timeout):
        raise RuntimeError("client process did not answer in time")
    return conn.recv()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, help="concurrent clients (8)")
    p.add_argument("--batch", type=int, help="jobs per batch request (100)")
    p.add_argument("--seconds", type=float, help="measured seconds per mode (10)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each mode (1)")
    p.add_argument("--no-baseline", action="store_true", help="skip synchronous=OFF")
    p.add_argument("--quick", action="store_true", help="smoke run: 4 clients, 2 s per mode")
    p.add_argument("--check", action="store_true", help="exit 1 below a target")
    p.add_argument("--json", action="store_true", help="also print the results as JSON")
    add_gc_flag(p)
    args = p.parse_args(argv)
    fill_defaults(
        args, ("clients", "batch", "seconds", "warmup"), (4, 50, 2.0, 0.5), (8, 100, 10.0, 1.0)
    )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    print(f"machine: {machine()}")
    set_gc(args.python_gc)
    print(
        f"load: {args.clients} concurrent clients (a separate process) over the unix socket, "
        f"RefreshHost jobs, {args.warmup:g} s warm-up + {args.seconds:g} s per mode; "
        f"batches of {args.batch}"
    )
    results: list[ModeResult] = []
    phases = ["FULL"] if args.no_baseline else ["FULL", "OFF"]
    with tempfile.TemporaryDirectory(prefix="bench-throughput-") as tmp:
        for synchronous in phases:
            workdir = Path(tmp) / synchronous
            workdir.mkdir()
            print(f"phase synchronous={synchronous} ...")
            results.extend(run_loop(run_phase(synchronous, args, workdir)))
    print(
        f"\n{'synchronous':<12}{'mode':<8}{'acked/s':>9}{'requests':>10}{'errors':>8}"
        f"{'p50 ms':>9}{'p99 ms':>9}{'daemon CPU':>12}{'executed/s':>12}{'backlog':>9}"
        f"{'drain s':>9}{'sustained/s':>13}{'CPU ms/job':>12}"
    )
    for r in results:
        print(
            f"{r.synchronous:<12}{r.mode:<8}{r.jobs_per_s:>9.0f}{r.requests:>10}{r.errors:>8}"
            f"{r.p50_ms:>9.1f}{r.p99_ms:>9.1f}{r.daemon_cpu_cores:>11.2f}c"
            f"{r.executed_per_s:>12.0f}{r.backlog_at_end:>9}{r.drain_s:>9.2f}"
            f"{r.sustained_per_s:>13.0f}{r.cpu_ms_per_job:>12.2f}"
        )
    full = {r.mode: r for r in results if r.synchronous == "FULL"}
    off = {r.mode: r for r in results if r.synchronous == "OFF"}
    for mode in ("single", "batch"):
        if mode in off:
            print(
                f"{mode}: FULL {full[mode].jobs_per_s:.0f} jobs/s vs {off[mode].jobs_per_s:.0f} "
                f"with synchronous=OFF ({100 * full[mode].jobs_per_s / off[mode].jobs_per_s:.0f}%)"
            )
    errors = sum(r.errors for r in results)
    ok = full["batch"].jobs_per_s >= TARGET_BATCH and full["single"].jobs_per_s >= TARGET_SINGLE
    verdict = "PASS" if ok and not errors else "FAIL"
    print(
        f"{verdict}: targets {TARGET_BATCH:.0f} jobs/s in batches (got "
        f"{full['batch'].jobs_per_s:.0f}) and {TARGET_SINGLE:.0f} jobs/s one request each (got "
        f"{full['single'].jobs_per_s:.0f}), synchronous=FULL, acknowledged; {errors} error answers"
    )
    for r in results:
        print(
            f"{r.synchronous} {r.mode}: store {r.commits_per_s:.0f} commits/s of "
            f"{r.changes_per_commit:.0f} changes, commit p50/p99 {r.commit_p50_ms:.1f}/"
            f"{r.commit_p99_ms:.1f} ms"
        )
    for mode in ("single", "batch"):
        r = full[mode]
        print(
            f"{mode}: executed {r.executed_per_s:.0f} jobs/s in the window, sustained end to end "
            f"{r.sustained_per_s:.0f} jobs/s; {r.backlog_at_end} acknowledged jobs were still to "
            f"run at the window's end ({r.drain_s:.1f} s to drain)"
        )
    if args.json:
        print(json.dumps({"results": [asdict(r) for r in results], "verdict": verdict}))
    if errors:
        return 1
    return 1 if args.check and verdict == "FAIL" else 0


if __name__ == "__main__":
    sys.exit(main())

"""Shared pieces of the daemon benchmarks (issue 3): the machine line, /proc readings,
percentiles, and a `vdsm-sim` subprocess that records when each task finished.

Imported by the scripts in this directory (their own directory is on `sys.path` when they run).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ADDRESS = "127.0.0.1"
LISTEN_RE = re.compile(r"vdsm-sim listening on [^:]+:(\d+)")
START_TIMEOUT = 120.0
HERE = Path(__file__).resolve().parent


def machine() -> str:
    model = "?"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    try:
        import uvloop

        loop = f"uvloop {uvloop.__version__}"
    except ImportError:
        loop = "asyncio (no uvloop)"
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}, {loop}"


def cpu_seconds(pid: int | None = None) -> float:
    """utime + stime of a process (all its threads) from /proc (Linux)."""
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int | None = None) -> float:
    """Resident set size (VmRSS) of a process, in MB (10^6 bytes)."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024 / 1e6
    raise RuntimeError("no VmRSS in /proc/self/status")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile of unsorted values (nan when empty)."""
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def median(values: list[float]) -> float:
    s = sorted(values)
    if not s:
        return float("nan")
    mid = len(s) // 2
    return s[mid] if len(s) % 2 else (s[mid - 1] + s[mid]) / 2


def run_loop(coro: Any) -> Any:
    """Run on uvloop as `taskmgrd run` does (falls back to asyncio)."""
    try:
        import uvloop
    except ImportError:
        import asyncio

        return asyncio.run(coro)
    return uvloop.run(coro)


def wait_listening(proc: subprocess.Popen[str], stop: Callable[[], None]) -> int:
    """The port from vdsm-sim's `listening on` line; `stop` it if that line never comes."""
    assert proc.stdout is not None
    deadline = time.monotonic() + START_TIMEOUT
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or proc.poll() is not None or not sel.select(left):
                stop()
                raise RuntimeError(f"vdsm-sim did not start (exit {proc.returncode})")
            match = LISTEN_RE.search(proc.stdout.readline())
            if match:
                return int(match.group(1))


class SimProcess:
    """`vdsm-sim` in its own process, through `sim_finish_times.py`: the real simulator CLI
    with one hook that notes the wall-clock time (time.time(), the clock the daemon stamps
    `ended_at` with) at which each task reached a done state. `finish_times()` reads them after
    `stop()`."""

    def __init__(self, args: list[str], workdir: Path, *, workers: int = 10) -> None:
        self.finish_file = workdir / "sim-finish-times.json"
        config = workdir / "vdsm-sim.toml"
        config.write_text(f"[cluster]\nworkers = {workers}\nqueue_size = {max(500, workers)}\n")
        cmd = [
            sys.executable,
            str(HERE / "sim_finish_times.py"),
            str(self.finish_file),
            "--config",
            str(config),
            "--port",
            "0",
            *args,
        ]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        self.port = self._wait_listening()

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _wait_listening(self) -> int:
        return wait_listening(self.proc, self.stop)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()

    def finish_times(self) -> dict[str, float]:
        """{vdsm task id: wall time it reached finished/failed}, written by the simulator."""
        data: dict[str, float] = json.loads(self.finish_file.read_text())
        return data


async def control(port: int, method: str, path: str) -> Any:
    """A one-shot HTTP/1.0 request to the simulator's control API."""
    import asyncio

    reader, writer = await asyncio.open_connection(ADDRESS, port)
    try:
        writer.write(f"{method} {path} HTTP/1.0\r\nContent-Length: 0\r\n\r\n".encode())
        raw = await reader.read()
    finally:
        writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    if not head.split(b" ", 2)[1].startswith(b"2"):
        raise RuntimeError(f"{method} {path}: {head[:100]!r} {body[:200]!r}")
    return json.loads(body)


def add_gc_flag(p: argparse.ArgumentParser) -> None:
    """The collector what-ifs shared by the daemon benchmarks: `--python-gc` and
    `--gc-threshold`."""
    p.add_argument(
        "--python-gc",
        action="store_true",
        help="what-if: keep Python's garbage collector settings instead of taskmgrd run's",
    )
    p.add_argument(
        "--gc-threshold",
        help="what-if: gc.set_threshold(A,B,C) for this process (default: taskmgrd run's)",
    )


def set_gc(python_gc: bool, threshold: str | None = None) -> None:
    """Collector settings as `taskmgrd run` has them, unless `--python-gc` asked otherwise;
    then `--gc-threshold`'s, if given."""
    from daemon.service import GC_THRESHOLDS, tune_gc

    if python_gc:
        print("what-if: Python's garbage collector settings (taskmgrd run: tune_gc)")
    else:
        tune_gc()
        print(f"gc: as taskmgrd run, frozen after imports, thresholds {GC_THRESHOLDS}")
    if threshold:
        a, b, c = (int(x) for x in threshold.split(","))
        gc.set_threshold(a, b, c)
        print(f"what-if: gc.set_threshold({a}, {b}, {c}) (shipped: {GC_THRESHOLDS})")


def fill_defaults(
    args: argparse.Namespace, keys: tuple[str, ...], quick: tuple[Any, ...], full: tuple[Any, ...]
) -> None:
    """Options left unset take the `--quick` or the full run's value, in `keys` order."""
    for key, default in zip(keys, quick if args.quick else full, strict=True):
        if getattr(args, key) is None:
            setattr(args, key, default)

"""`vdsm-sim`: run a simulated VDSM data centre until interrupted.

Prints one line `vdsm-sim listening on ADDRESS:PORT` (and one per host port) once it accepts
connections, so scripts and benchmarks can wait for it and read the port when it was 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from vdsm_simulator.app import Simulator
from vdsm_simulator.config import ConfigError, Settings, load


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="vdsm-sim", description=__doc__.split("\n\n")[0])
    p.add_argument("--config", type=Path, help="TOML file (see config/vdsm-sim.toml)")
    p.add_argument("--address", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port for STOMP and HTTP (default 54321; 0: any)")
    p.add_argument(
        "--port-per-host",
        action="store_true",
        default=None,
        help="also give every host a port of its own",
    )
    p.add_argument("--hosts", type=int, help="number of hosts host1..hostN")
    p.add_argument("--pools", type=int, help="number of storage pools")
    p.add_argument("--seed", type=int, help="seed of every random draw")
    p.add_argument("--time-scale", type=float, help="real seconds per simulated second")
    p.add_argument("--task-seconds", type=float, help="mean simulated seconds of a storage job")
    p.add_argument("--task-distribution", choices=["exponential", "uniform", "fixed"])
    p.add_argument("--no-spm", action="store_true", help="start pools without an SPM")
    p.add_argument("--vms-per-host", type=int, help="VMs started Up on every host")
    p.add_argument("--state-dir", type=Path, help="persist storage and SPM tasks here")
    p.add_argument("--tls-cert", type=Path, help="PEM certificate (TLS on)")
    p.add_argument("--tls-key", type=Path, help="PEM private key")
    p.add_argument("--tls-ca", type=Path, help="CA that client certificates must be signed by")
    p.add_argument("--log-level", default="WARNING", help="DEBUG, INFO, WARNING or ERROR")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    settings = load(args.config)
    server, cluster = settings.server, settings.cluster
    for flag, target, key in (
        ("address", server, "address"),
        ("port", server, "port"),
        ("port_per_host", server, "port_per_host"),
        ("tls_cert", server, "tls_cert"),
        ("tls_key", server, "tls_key"),
        ("tls_ca", server, "tls_ca"),
        ("hosts", cluster, "hosts"),
        ("pools", cluster, "pools"),
        ("seed", cluster, "seed"),
        ("time_scale", cluster, "time_scale"),
        ("task_seconds", cluster, "task_seconds"),
        ("task_distribution", cluster, "task_distribution"),
        ("vms_per_host", cluster, "vms_per_host"),
        ("state_dir", cluster, "state_dir"),
    ):
        value = getattr(args, flag)
        if value is not None:
            setattr(target, key, value)
    if args.no_spm:
        cluster.elect_spm = False
    try:
        cluster.validate()
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if not 0 <= server.port <= 65535:
        raise ConfigError(f"port must be 0..65535, got {server.port}")
    return settings


# Generation thresholds of the cyclic garbage collector in a `vdsm-sim` process (Python's default
# is 700, 10, 10). Every request allocates a few dozen short-lived objects (frames, dicts, an
# asyncio task), so with the defaults a 1,000-job cancel burst (6,000 requests) ran ~90 young
# collections and a full one that re-walked every host, pool, volume and task: 0.13 - 0.15 of the
# burst's 0.6 - 0.7 CPU seconds (bench/cancel_latency.py). Requests and task records form no
# cycles and are freed by reference counting; the collector is left for the rare cycle.
GC_THRESHOLDS = (50_000, 20, 100)


def tune_gc() -> None:
    """Move what the started simulator keeps for its whole run (hosts, pools, verb tables,
    modules) out of the collector's reach and make collections rarer. Only the process does
    this: a simulator embedded in a test keeps its host's settings."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def serve(settings: Settings) -> None:
    sim = Simulator(settings)
    await sim.start()
    tune_gc()
    print(f"vdsm-sim listening on {settings.server.address}:{sim.port}", flush=True)
    for name, port in sim.host_ports.items():
        print(f"vdsm-sim host {name} on {settings.server.address}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await sim.stop()


def run(coro: Coroutine[Any, Any, None]) -> None:
    """Run on uvloop where it is installed (it is a dependency on Linux), else on asyncio."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        settings = settings_from(args)
    except (ConfigError, ValueError) as e:
        print(f"vdsm-sim: {e}", file=sys.stderr)
        return 2
    with contextlib.suppress(KeyboardInterrupt):
        try:
            run(serve(settings))
        except OSError as e:
            print(f"vdsm-sim: cannot listen: {e}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

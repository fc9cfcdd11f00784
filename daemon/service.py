"""`taskmgrd`: wiring of the daemon, its lifecycle, and the command line.

One process, one event loop: store → registry → hosts → executor → API. Start-up loads every job
from SQLite, reconnects to the hosts, resumes what was running (jobs that were waiting for their
tasks take their first step just after the API opens), and only then opens the API; a
stop closes the API first, lets the store write what it holds, and leaves running jobs to resume
on the next start. Life as a systemd service (sd_notify, watchdog, SIGHUP reload, the bounded
stop) is `daemon.lifecycle`; logging is `daemon.logs`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import logging
import sys
import time
from pathlib import Path
from typing import Any

from daemon import model
from daemon.commands import ACTIONS
from daemon.config import Config, ConfigError, HostEntry, default_config_path, load_config
from daemon.engine.cancel import CancelCoordinator
from daemon.engine.executor import Executor
from daemon.engine.reaper import Reaper
from daemon.events import EventHub
from daemon.hosts import HostManager
from daemon.registry import Registry
from daemon.sdnotify import Inherited
from daemon.store import Store

log = logging.getLogger("taskmgrd")

VERSION = "0.1.0"


class Daemon:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.settings = config
        self.started_at = time.time()
        self.store = Store(
            config.daemon.db,
            synchronous=config.daemon.synchronous,
            commit_interval=config.daemon.commit_interval,
        )
        self.events = EventHub()
        self.registry = Registry(self.store, self.events)
        self.hosts = HostManager(self.registry, settings=config.host_settings())
        self.executor = Executor(self.registry, self.hosts, dict(ACTIONS))
        self.reaper = Reaper(self.registry, self.hosts, grace=config.retention.orphan_grace_seconds)
        self.cancels = CancelCoordinator(self.registry, self.hosts, self.executor)
        self.executor.cancels = self.cancels  # the CancelJob action submits through it
        self._api: Any = None
        self._background: list[asyncio.Task[None]] = []

    async def start(self, *, api: bool = True, inherited: Inherited | None = None) -> None:
        """Load, reconnect, resume, then serve the API (on `inherited`, systemd's socket, if
        given)."""
        await self.store.open()
        await self.registry.load()
        self.hosts.on_vm_report.append(self.executor.vms.host_snapshot)
        self.hosts.on_vm_event.append(self._vm_event)
        self.hosts.on_unknown_tasks.append(self._unknown_tasks)
        await self.hosts.start()
        for entry in self.config.hosts:
            if entry.name not in self.registry.hosts:
                await self.add_configured_host(entry)
        resumed = await self.executor.recover() + await self.cancels.recover()
        if resumed:
            log.info("resumed %d jobs after restart", len(resumed))
        self._background.append(asyncio.create_task(self._housekeeping(), name="housekeeping"))
        if api:
            from daemon.api.app import build_app
            from daemon.api.server import start_api

            self._api = await start_api(
                build_app(self),
                inherited.path if inherited else self.config.daemon.socket,
                mode=self.config.daemon.socket_mode,
                group=self.config.daemon.socket_group,
                inherited=inherited.sock if inherited else None,
            )
        # Only now do the resumed jobs that were waiting for their tasks take their first steps
        # (a chunk per loop pass, see Executor.recover): readiness does not wait for them.
        self.executor.release_resumed()

    async def add_configured_host(self, entry: HostEntry) -> None:
        """A [[hosts]] entry, through the same path as POST /api/v1/hosts (start and reload)."""
        await self.hosts.add_host(
            entry.name,
            entry.address,
            entry.port,
            entry.pool,
            transport=entry.transport,
            tls=entry.tls,
        )

    async def stop(self) -> None:
        if self._api is not None:
            from daemon.api.server import stop_api

            await stop_api(self._api)
            self._api = None
        for task in self._background:
            task.cancel()
        for task in self._background:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._background.clear()
        await self.cancels.close()
        await self.executor.close()
        await self.hosts.close()
        await self.store.close()

    # -- callbacks from the hosts ------------------------------------------------------------

    def _vm_event(self, host: str, method: str, params: dict[str, Any]) -> None:
        """`|virt|VM_status|<vm>` events carry {vm_id: {status, ...}}: feed the VM watch."""
        if not method.startswith("|virt|VM_status|"):
            return
        for vm_id, info in params.items():
            if isinstance(info, dict) and "status" in info:
                self.executor.vms.report(host, vm_id, str(info["status"]), info)

    def _unknown_tasks(self, pool: str, host: str, ids: list[str]) -> None:
        task = asyncio.create_task(self.reaper.on_unknown_tasks(pool, host, ids))
        self._background.append(task)
        task.add_done_callback(self._background_done)

    def _background_done(self, task: asyncio.Task[None]) -> None:
        if task in self._background:
            self._background.remove(task)

    # -- housekeeping: purge and orphan reaping ------------------------------------------------

    async def _housekeeping(self) -> None:
        while True:
            await asyncio.sleep(self.config.housekeeping_seconds)
            try:
                await self.purge()
                await self.reaper.reap_orphans()
                # One poll of every pool, even with nothing watched: tasks no record owns (a
                # verb whose reply died with the previous process) reach the reaper this way.
                self.hosts.sweep()
            except Exception:  # housekeeping must never take the daemon down
                log.exception("housekeeping failed")

    async def purge(self, now: float | None = None) -> list[str]:
        """Drop terminal jobs older than their retention (FINISHED and the rest differ)."""
        now = now if now is not None else time.time()
        keep = {
            model.JobStatus.FINISHED: self.config.retention.finished_minutes * 60,
            model.JobStatus.FAILED: self.config.retention.failed_minutes * 60,
            model.JobStatus.ABORTED: self.config.retention.failed_minutes * 60,
        }
        old = [
            job.id
            for job in self.registry.jobs.values()
            if job.status in keep
            and job.ended_at is not None
            and now - job.ended_at > keep[job.status]
            and all(t.status in model.TASK_SETTLED for t in self.registry.job_tasks(job.id))
        ]
        for job_id in old:
            self.registry.forget_job(job_id)
        await self.store.purge_jobs(old)
        return old


# -- command line -----------------------------------------------------------------------------

# Generation thresholds of the cyclic garbage collector while the daemon runs (Python's default
# is 700, 10, 10). The daemon allocates a few hundred objects per record change and keeps its
# records for hours, so with the defaults every few seconds a full collection re-walked every
# live job record and stopped the loop for 260 - 800 ms (bench/completion_latency.py: p99
# 0.56 s, 0.28 s with these). Records form no cycles and are freed by reference counting; the
# collector is left for the rare cycle (exceptions with tracebacks, closures).
# A young collection walks every container allocated since the last one that is still alive,
# and a burst keeps tens of thousands alive at once (each verb in flight holds a chain of
# coroutines, futures and timers): at 50,000 a cancel of 1,000 jobs ran three collections of
# 25-85 ms each, and the whole bench/cancel_latency.py run spent 0.46 s in 17 of them. At
# 200,000 most of those objects are freed before any collection sees them: 5 collections,
# 0.18 s in all, the longest 0.11 s (completion_latency's p99 unchanged, 0.51 s).
GC_THRESHOLDS = (200_000, 20, 100)


def tune_gc() -> None:
    """Move what is alive now (modules, classes, configuration) out of the collector's reach and
    make collections rarer: called once by `taskmgrd run` before the daemon starts, and by the
    benchmarks that run a daemon in-process, so that they measure what the service does."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def _run(coro: Any) -> Any:
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="taskmgrd", description="task manager for VDSM hosts")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("demo", help="run a bundled simulator and show tasks stopped and reverted")
    run = sub.add_parser("run", help="run the daemon in the foreground")
    check = sub.add_parser("check-config", help="validate a configuration file and exit")
    for p in (run, check):
        p.add_argument(
            "--config",
            type=Path,
            help="TOML file (see config/taskmgrd.toml); default: /etc/taskmgrd/taskmgrd.toml "
            "if it exists, else the built-in defaults",
        )
        p.add_argument("--socket", type=Path, help="unix socket of the API")
        p.add_argument("--db", type=Path, help="SQLite file")
    args = parser.parse_args(argv)
    if args.command == "demo":
        from daemon.demo import run_demo  # the demo alone pulls in the simulator

        return run_demo()

    path = args.config if args.config is not None else default_config_path()

    def load() -> Config:
        return load_config(path).with_overrides(socket=args.socket, db=args.db)

    try:
        config = load()
    except ConfigError as e:
        print(f"taskmgrd: {e}", file=sys.stderr)
        return 2
    if args.command == "check-config":
        print(f"taskmgrd: configuration OK ({path or 'built-in defaults'})")
        return 0
    from daemon import lifecycle, logs

    logs.setup(config.daemon.log_level)
    tune_gc()
    return int(_run(lifecycle.serve(config, load)))


if __name__ == "__main__":
    sys.exit(main())

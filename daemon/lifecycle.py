"""The daemon's life as a service: readiness, watchdog, reload and graceful stop.

systemd (Type=notify) learns from sd_notify when the API is ready (READY=1, only after every job
has been loaded and resumed), what the daemon is doing (STATUS=), that it is reloading
(RELOADING=1) or stopping (STOPPING=1), and that its event loop still turns (WATCHDOG=1 every
half WatchdogSec). Outside systemd the same code runs and the messages go nowhere.

SIGTERM (and SIGINT) stop it: the API closes first, so no new work is accepted; job and cancel
coroutines stop where they are, with every step already committed to SQLite; host connections
close; the process exits. A running job resumes after the next start. The stop is bounded by
STOP_DEADLINE, well inside the unit's TimeoutStopSec, so systemd never has to SIGKILL it.
SIGHUP rereads the configuration file and applies it in place (`daemon.reload`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from daemon import logs, model
from daemon.api.server import ApiStartError
from daemon.config import Config, ConfigError
from daemon.reload import apply_reload
from daemon.sdnotify import ActivationError, Notifier, inherited_api_socket
from daemon.service import VERSION, Daemon
from daemon.store import StoreError

log = logging.getLogger("taskmgrd")

STOP_DEADLINE = 20.0  # s; systemd/taskmgrd.service has TimeoutStopSec=30


def status_line(daemon: Daemon) -> str:
    """STATUS= for `systemctl status`: what the daemon holds right now."""
    jobs = daemon.registry.jobs.values()
    running = sum(1 for job in jobs if job.status not in model.JOB_TERMINAL)
    hosts = daemon.registry.hosts.values()
    up = sum(1 for host in hosts if host.status is model.HostStatus.UP)
    return f"jobs running: {running}; hosts up: {up}/{len(daemon.registry.hosts)}"


STATUS_SECONDS = 5.0  # how often `systemctl status` is brought up to date


async def _heartbeat(daemon: Daemon, notifier: Notifier) -> None:
    """WATCHDOG=1 from the event loop itself at half WatchdogSec (a loop blocked that long gets
    restarted), and STATUS= whenever what the daemon holds has changed."""
    watchdog = notifier.watchdog_seconds
    interval = min(watchdog / 2, STATUS_SECONDS) if watchdog else STATUS_SECONDS
    shown = status_line(daemon)
    while True:
        await asyncio.sleep(interval)
        if watchdog:
            notifier.send(WATCHDOG=1)
        if (status := status_line(daemon)) != shown:
            notifier.send(STATUS=status)
            shown = status


async def _reload(daemon: Daemon, notifier: Notifier, load: Callable[[], Config]) -> None:
    monotonic_usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    notifier.send(RELOADING=1, MONOTONIC_USEC=monotonic_usec, STATUS="reloading configuration")
    try:
        new = load()
    except ConfigError as e:
        # The file is wrong: keep running on the configuration in force, and say why.
        log.error("reload refused, configuration unchanged: %s", e)
        notifier.send(READY=1, STATUS=f"reload refused: {e}; {status_line(daemon)}")
        return
    try:
        result = await apply_reload(daemon, new)
    except Exception as e:  # a bug in a reload must not take the running jobs down with it
        log.exception("reload failed")
        notifier.send(READY=1, STATUS=f"reload failed: {e}; {status_line(daemon)}")
        return
    notifier.send(READY=1, STATUS=f"{result.summary()}; {status_line(daemon)}")


async def _failed_start(daemon: Daemon, notifier: Notifier, reason: str) -> int:
    log.error("cannot start: %s", reason)
    notifier.send(STATUS=f"cannot start: {reason}")
    await daemon.stop()
    return 1


async def serve(config: Config, load: Callable[[], Config]) -> int:
    """Run until SIGTERM/SIGINT; `load` rereads the configuration for a reload. Exit status:
    0 after a clean stop, 1 when the daemon could not start."""
    notifier = Notifier()
    try:
        inherited = inherited_api_socket()
    except ActivationError as e:
        log.error("cannot start: %s", e)
        return 1
    loop = asyncio.get_running_loop()
    stop, reload = asyncio.Event(), asyncio.Event()
    # Installed before the (possibly long) start, so that a SIGTERM then still stops cleanly.
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)
    daemon = Daemon(config)
    jobs = daemon.registry.jobs

    def correlation_of(job_id: str) -> str | None:
        job = jobs.get(job_id)
        return None if job is None else job.correlation_id

    logs.tag_jobs_with(correlation_of)
    notifier.send(STATUS="starting: loading jobs, connecting to hosts")
    try:
        await daemon.start(inherited=inherited)
    # The state file or the socket cannot be used: say which and why and exit 1, no traceback.
    except sqlite3.Error as e:
        return await _failed_start(daemon, notifier, f"state file {config.daemon.db}: {e}")
    except (ApiStartError, StoreError, OSError) as e:
        return await _failed_start(daemon, notifier, str(e))
    socket = inherited.path if inherited else config.daemon.socket
    if inherited and Path(inherited.path) != config.daemon.socket:
        # Served all the same; but `taskmgr` looks for [daemon] socket and will not find it.
        log.warning(
            "systemd passed %s but [daemon] socket is %s; make them equal",
            inherited.path,
            config.daemon.socket,
        )
    log.info("taskmgrd %s ready on %s (db %s)", VERSION, socket, config.daemon.db)
    notifier.send(READY=1, STATUS=status_line(daemon))
    heartbeat = None
    if notifier.enabled:
        heartbeat = asyncio.create_task(_heartbeat(daemon, notifier), name="heartbeat")
    try:
        while not stop.is_set():
            waiters = [asyncio.create_task(stop.wait()), asyncio.create_task(reload.wait())]
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            for waiter in waiters:
                waiter.cancel()
            if reload.is_set() and not stop.is_set():
                reload.clear()
                await _reload(daemon, notifier, load)
        log.info("stopping: closing the API to new work; running jobs resume at the next start")
        notifier.send(STOPPING=1, STATUS=f"stopping; {status_line(daemon)}")
        try:
            async with asyncio.timeout(STOP_DEADLINE):
                await daemon.stop()
        except TimeoutError:
            # Every committed step is in SQLite already; what did not finish resumes at start.
            log.error("stop took longer than %g s; exiting anyway", STOP_DEADLINE)
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await heartbeat
        notifier.close()
    log.info("stopped")
    return 0

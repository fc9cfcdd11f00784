"""Reloading the configuration (SIGHUP, `systemctl reload taskmgrd`) without dropping jobs.

What can change in place: the [[hosts]] list, the log level, [polling] and [retention]. Hosts go
through the same `HostManager.add_host` / `remove_host` paths as POST/DELETE /api/v1/hosts, so a
host with tasks not settled is refused removal exactly as the API refuses it, and running jobs
never notice a reload. Only hosts that the previous file named are removed: a host added through
the API is the operator's, not the file's. Keys that only take effect at a start (the socket, the
state file, [tls], ...) are reported, not applied.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from daemon import logs
from daemon.config import Config, DaemonSection, HostEntry
from daemon.errors import DaemonError

if TYPE_CHECKING:
    from daemon.service import Daemon

log = logging.getLogger(__name__)

# [daemon] keys a reload applies; the others need a restart.
RELOADABLE_DAEMON_KEYS = ("log_level",)


@dataclass(frozen=True)
class ReloadPlan:
    """What a new configuration changes compared with the one in force (pure, no I/O)."""

    add: tuple[HostEntry, ...]  # hosts the new file names and the old did not
    remove: tuple[str, ...]  # hosts the old file named and the new does not
    replace: tuple[HostEntry, ...]  # same name, another address/port/pool/transport/tls
    log_level: str | None  # the new level; None when unchanged
    polling: bool  # [polling] changed
    retention: bool  # [retention] changed
    needs_restart: tuple[str, ...]  # changed keys that only a restart applies

    @property
    def empty(self) -> bool:
        return not (
            self.add or self.remove or self.replace or self.log_level or self.polling
        ) and not (self.retention or self.needs_restart)


def plan_reload(old: Config, new: Config) -> ReloadPlan:
    before = {h.name: h for h in old.hosts}
    after = {h.name: h for h in new.hosts}
    restart = [
        f"[daemon] {f.name}"
        for f in dataclasses.fields(DaemonSection)
        if f.name not in RELOADABLE_DAEMON_KEYS
        and getattr(old.daemon, f.name) != getattr(new.daemon, f.name)
    ]
    if old.tls != new.tls:
        restart.append("[tls]")
    return ReloadPlan(
        add=tuple(h for name, h in after.items() if name not in before),
        remove=tuple(name for name in before if name not in after),
        replace=tuple(h for name, h in after.items() if name in before and before[name] != h),
        log_level=new.daemon.log_level if new.daemon.log_level != old.daemon.log_level else None,
        polling=old.polling != new.polling,
        retention=old.retention != new.retention,
        needs_restart=tuple(restart),
    )


@dataclass(frozen=True)
class ReloadResult:
    config: Config  # the configuration now in force
    problems: tuple[str, ...]  # what could not be applied, one sentence each

    def summary(self) -> str:
        if not self.problems:
            return f"configuration reloaded from {self.config.source}"
        return f"configuration reloaded from {self.config.source} with problems: " + "; ".join(
            self.problems
        )


async def apply_reload(daemon: Daemon, new: Config) -> ReloadResult:
    """Apply what can change in place; the result is what is in force afterwards, so that a
    host whose removal was refused is tried again at the next reload."""
    old = daemon.config
    plan = plan_reload(old, new)
    problems: list[str] = [
        f"{key} changed; it takes effect at the next restart" for key in (plan.needs_restart)
    ]
    kept: list[HostEntry] = []  # hosts the new file dropped that could not be removed
    dropped: set[str] = set()  # hosts the new file names that could not be (re)added
    for name in (*plan.remove, *(h.name for h in plan.replace)):
        try:
            await daemon.hosts.remove_host(name)
        except DaemonError as e:
            problems.append(f"host {name} not removed: {e}")
            kept.append(next(h for h in old.hosts if h.name == name))
    replaced = {h.name for h in plan.replace} - {h.name for h in kept}
    for entry in (*plan.add, *(h for h in plan.replace if h.name in replaced)):
        if entry.name in daemon.registry.hosts:
            problems.append(f"host {entry.name} not added: a host of that name is registered")
            dropped.add(entry.name)
            continue
        try:
            await daemon.add_configured_host(entry)
        except DaemonError as e:
            problems.append(f"host {entry.name} not added: {e}")
            dropped.add(entry.name)
    gone = dropped | {h.name for h in kept}
    in_force = dataclasses.replace(
        new,
        # keys that need a restart keep the values the daemon runs with
        daemon=dataclasses.replace(old.daemon, log_level=new.daemon.log_level),
        tls=old.tls,
        hosts=(
            *(h for h in new.hosts if h.name not in gone),
            *kept,
        ),
    )
    if plan.log_level is not None:
        logs.set_level(plan.log_level)
    if plan.polling:
        daemon.hosts.update_settings(in_force.host_settings())
    daemon.reaper.grace = in_force.retention.orphan_grace_seconds
    daemon.config = daemon.settings = in_force
    result = ReloadResult(in_force, tuple(problems))
    log.log(logging.WARNING if problems else logging.INFO, "%s", result.summary())
    return result

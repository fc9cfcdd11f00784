"""Reloading the configuration in place: what a new file changes (pure), and that a host with a
running task is refused removal exactly as the API refuses it, kept in force, and removed by a
later reload once its tasks have settled."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

from daemon import logs
from daemon.config import Config, DaemonSection, HostEntry, PollingSection, TlsSection
from daemon.reload import apply_reload, plan_reload
from tests.daemon.stack import running_stack
from tests.sim.conftest import wait_until

POOL = "5849b030-626e-47cb-ad90-3ce782d831b3"
H1 = HostEntry("host1", "10.0.0.1", 54321, POOL)
H2 = HostEntry("host2", "10.0.0.2", 54321, POOL)
H3 = HostEntry("host3", "10.0.0.3", 54321, POOL)


def test_nothing_changed_is_an_empty_plan() -> None:
    config = Config(hosts=(H1, H2))
    assert plan_reload(config, dataclasses.replace(config, source="other.toml")).empty


def test_plan_sorts_hosts_and_settings() -> None:
    old = Config(hosts=(H1, H2))
    moved = dataclasses.replace(H2, port=54322)
    new = Config(
        daemon=DaemonSection(log_level="DEBUG"),
        polling=PollingSection(fast_interval=0.3),
        hosts=(moved, H3),
    )
    plan = plan_reload(old, new)
    assert (plan.add, plan.remove, plan.replace) == ((H3,), ("host1",), (moved,))
    assert plan.log_level == "DEBUG" and plan.polling and not plan.retention
    assert plan.needs_restart == ()


def test_keys_only_a_start_applies_are_reported() -> None:
    new = Config(
        daemon=DaemonSection(socket=Path("/run/x.sock"), synchronous="NORMAL"),
        tls=TlsSection(ca=Path("/etc/ca.pem")),
    )
    plan = plan_reload(Config(), new)
    assert plan.needs_restart == ("[daemon] socket", "[daemon] synchronous", "[tls]")
    assert plan.log_level is None and not plan.polling


async def test_busy_host_is_kept_until_its_tasks_settle(tmp_path: Path) -> None:
    async with running_stack(tmp_path, hosts=2) as stack:
        daemon = stack.daemon
        pool = stack.sim.cluster.storage.pools[stack.pool]
        assert pool.spm_host is not None
        gate = stack.sim.cluster.hosts[pool.spm_host].gate
        gate.hold()  # the task stays running until the gate opens
        first = daemon.config
        job = await stack.submit(
            "CreateDisk", {"pool": stack.pool, "domain": stack.domains[0], "size": 4096}
        )
        tasks = daemon.registry.job_tasks
        await wait_until(lambda: any(t.vdsm_id for t in tasks(job.id)), timeout=10)
        spm = tasks(job.id)[0].host
        without_spm = dataclasses.replace(
            first, hosts=tuple(h for h in first.hosts if h.name != spm), source="new.toml"
        )

        result = await apply_reload(daemon, without_spm)
        assert len(result.problems) == 1
        assert result.problems[0].startswith(f"host {spm} not removed: host {spm!r} still has 1")
        assert spm in daemon.registry.hosts
        assert set(daemon.config.hosts) == set(first.hosts)
        assert daemon.registry.jobs[job.id].status == "STARTED"

        gate.open()
        done = await stack.wait_job(job)
        assert done.status == "FINISHED"
        again = await apply_reload(daemon, without_spm)
        assert again.problems == ()
        assert spm not in daemon.registry.hosts
        assert daemon.config.hosts == without_spm.hosts


async def test_polling_retention_and_log_level_apply_in_place(tmp_path: Path) -> None:
    async with running_stack(tmp_path, hosts=1) as stack:
        daemon = stack.daemon
        old = daemon.config
        new = dataclasses.replace(
            old,
            daemon=dataclasses.replace(old.daemon, log_level="ERROR", db=tmp_path / "other.db"),
            polling=dataclasses.replace(old.polling, idle_interval=1.5, monitor_interval=0.3),
            retention=dataclasses.replace(old.retention, orphan_grace_seconds=7.0),
        )
        levels = {name: logging.getLogger(name).level for name in ("", *logs.OWN_LOGGERS)}
        try:
            result = await apply_reload(daemon, new)
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
        assert result.problems == ("[daemon] db changed; it takes effect at the next restart",)
        assert daemon.hosts.settings == new.host_settings()
        assert daemon.hosts.settings.idle_interval == 1.5
        assert daemon.reaper.grace == 7.0
        # what needs a restart keeps the value in force, so the next reload reports it again
        assert daemon.config.daemon.db == old.daemon.db
        assert daemon.config.daemon.log_level == "ERROR"

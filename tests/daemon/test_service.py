"""taskmgrd as a systemd service (issue 5), each test a real `taskmgrd run` process against a
real simulator over real sockets:
- sd_notify: STATUS while starting, READY only once the API answers, WATCHDOG at half
  WatchdogSec, RELOADING/READY around a SIGHUP, STOPPING at SIGTERM, all read from a real
  NOTIFY_SOCKET datagram socket;
- socket activation: a listening socket passed as fd 3 with LISTEN_FDS/LISTEN_PID is served as
  it is, survives the daemon, and a client that connects while the daemon is down is answered
  by the next one;
- SIGTERM while a VDSM task runs: a clean exit, and after the restart the same task (not a
  second one) completes the job;
- SIGHUP adds a host from the file without disturbing a running job; a bad file is refused
  with the file, key and expectation, and changes nothing; a host dropped from the file is
  removed; job log lines carry the job and correlation ids.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sqlite3
import stat
from pathlib import Path
from typing import Any

import pytest

from tests.daemon.service_support import (
    TERMINAL,
    DaemonProc,
    NotifyListener,
    config_text,
    spawn,
    tcp_listeners,
)
from tests.daemon.stack import start_sim
from tests.sim.conftest import wait_until
from vdsm_simulator.app import Simulator
from vdsm_simulator.host import JobGate

pytestmark = pytest.mark.timeout(90)


def pool_of(sim: Simulator) -> tuple[str, list[str]]:
    pool = next(iter(sim.cluster.storage.pools.values()))
    return pool.uuid, list(pool.domains)


async def submit_disk(daemon: DaemonProc, sim: Simulator) -> dict[str, Any]:
    pool, domains = pool_of(sim)
    body = {"action": "CreateDisk", "params": {"pool": pool, "domain": domains[0], "size": 4096}}
    status, view = await daemon.request("POST", "/jobs", body)
    assert status == 201, view
    return dict(view)


async def running_task(daemon: DaemonProc, job_id: str) -> str:
    """The VDSM id of the job's task, once VDSM has accepted it."""
    async with asyncio.timeout(15):
        while True:
            view = await daemon.get(f"/jobs/{job_id}")
            assert view["status"] not in TERMINAL, view
            ids = [t["vdsm_id"] for t in view["tasks"] if t["vdsm_id"]]
            if ids:
                return str(ids[0])
            await asyncio.sleep(0.02)  # polling the API for a condition, deadline above


def hold_tasks(sim: Simulator) -> JobGate:
    """Storage tasks on the SPM stay "running" until the gate opens: the stop or reload is
    sure to come mid-task, however loaded the machine."""
    pool = next(iter(sim.cluster.storage.pools.values()))
    assert pool.spm_host is not None
    gate = sim.cluster.hosts[pool.spm_host].gate
    gate.hold()
    return gate


def sim_task_state(sim: Simulator, vdsm_id: str) -> str | None:
    for host in sim.cluster.hosts.values():
        for row in host.tasks.raw_table():
            if row["id"] == vdsm_id:
                return str(row["state"])
    return None


async def test_sd_notify_ready_watchdog_reload_stopping(tmp_path: Path) -> None:
    sim = await start_sim(1)
    notify = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "taskmgrd.toml"
    pool, _ = pool_of(sim)
    config.write_text(config_text(pool, sim.host_ports))
    daemon = await spawn(tmp_path, config, notify=notify, env={"WATCHDOG_USEC": "200000"})
    try:
        first = await notify.next()
        assert first["STATUS"].startswith("starting"), first
        assert "READY" not in first
        ready = await notify.until("READY")
        assert ready["READY"] == "1"
        assert ready["STATUS"] == "jobs running: 0; hosts up: 1/1", ready
        # READY means ready: the API answers at once, no retry.
        status, health = await daemon.request("GET", "/health")
        assert status == 200, health
        assert tcp_listeners(daemon.proc.pid) == [], "the API is a unix socket only"

        # WATCHDOG=1 every 0.1 s (half of WATCHDOG_USEC): at least two in a row.
        for _ in range(2):
            await notify.until("WATCHDOG", deadline=5)

        daemon.proc.send_signal(signal.SIGHUP)
        reloading = await notify.until("RELOADING")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        reloaded = await notify.until("READY")
        assert reloaded["STATUS"].startswith(f"configuration reloaded from {config}"), reloaded

        daemon.proc.send_signal(signal.SIGTERM)
        stopping = await notify.until("STOPPING")
        assert stopping["STOPPING"] == "1"
        async with asyncio.timeout(25):
            assert await daemon.proc.wait() == 0
        assert not daemon.socket.exists(), "a socket the daemon bound itself is removed at stop"
    finally:
        await daemon.close()
        notify.close()
        await sim.stop()


async def test_socket_activation_serves_the_inherited_socket(tmp_path: Path) -> None:
    sim = await start_sim(1)
    config = tmp_path / "taskmgrd.toml"
    pool, _ = pool_of(sim)
    config.write_text(config_text(pool, sim.host_ports))
    # What taskmgrd.socket does: bind, set SocketMode, listen, and keep the socket.
    path = tmp_path / "systemd.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    os.chmod(path, 0o600)
    listener.listen(16)
    inode = os.stat(path).st_ino
    daemon = await spawn(tmp_path, config, inherited=listener)
    later: DaemonProc | None = None
    try:
        await daemon.wait_api()
        assert daemon.socket == path
        assert not (tmp_path / "api.sock").exists(), "the daemon bound a socket of its own"
        st = os.stat(path)
        assert (st.st_ino, stat.S_IMODE(st.st_mode)) == (inode, 0o600), "socket was replaced"
        assert "socket passed by systemd" in daemon.log.read_text()

        assert await daemon.stop() == 0
        assert path.exists(), "the socket is systemd's: it stays when the daemon stops"
        # A client connecting while no daemon runs waits in the listen queue ...
        pending = asyncio.create_task(daemon.request("GET", "/health"))
        await asyncio.sleep(0)
        later = await spawn(tmp_path, config, name="taskmgrd.2", inherited=listener)
        # ... and the next daemon, started on the same socket, answers it.
        async with asyncio.timeout(20):
            status, health = await pending
        assert status == 200, health
    finally:
        await daemon.close()
        if later is not None:
            await later.close()
        listener.close()
        await sim.stop()


async def test_sigterm_mid_job_then_restart_completes_the_job(tmp_path: Path) -> None:
    sim = await start_sim(1)
    gate = hold_tasks(sim)
    config = tmp_path / "taskmgrd.toml"
    pool, _ = pool_of(sim)
    config.write_text(config_text(pool, sim.host_ports))
    daemon = await spawn(tmp_path, config)
    again: DaemonProc | None = None
    try:
        await daemon.wait_api()
        job = await submit_disk(daemon, sim)
        vdsm_id = await running_task(daemon, job["id"])
        await wait_until(lambda: gate.held() == [vdsm_id], timeout=10)

        assert await daemon.stop(signal.SIGTERM) == 0
        assert sim_task_state(sim, vdsm_id) == "running", "the stop must come mid-task"
        with sqlite3.connect(tmp_path / "taskmgrd.db") as db:
            (stored,) = db.execute("SELECT status FROM jobs WHERE id = ?", (job["id"],)).fetchone()
        assert stored not in TERMINAL
        assert "stopped" in daemon.log.read_text()

        again = await spawn(tmp_path, config, name="taskmgrd.2")
        await again.wait_api()
        gate.open()
        done = await again.wait_job(job["id"], TERMINAL)
        assert done["status"] == "FINISHED", done
        assert [t["vdsm_id"] for t in done["tasks"]] == [vdsm_id], "the verb ran twice"
        await wait_until(lambda: sim_task_state(sim, vdsm_id) is None, timeout=10)
    finally:
        await daemon.close()
        if again is not None:
            await again.close()
        await sim.stop()


async def test_sighup_reload_adds_and_removes_hosts_without_disturbing_a_job(
    tmp_path: Path,
) -> None:
    sim = await start_sim(2)
    gate = hold_tasks(sim)
    notify = NotifyListener(tmp_path / "notify.sock")
    config = tmp_path / "taskmgrd.toml"
    pool, _ = pool_of(sim)
    host1 = {"host1": sim.host_ports["host1"]}
    config.write_text(config_text(pool, host1))
    daemon = await spawn(tmp_path, config, notify=notify, env={"WATCHDOG_USEC": "400000"})

    async def reload() -> dict[str, str]:
        daemon.proc.send_signal(signal.SIGHUP)
        await notify.until("RELOADING")
        return await notify.until("READY")

    async def host_statuses() -> dict[str, str]:
        return {h["name"]: h["status"] for h in (await daemon.get("/hosts"))["hosts"]}

    try:
        await notify.until("READY")
        job = await submit_disk(daemon, sim)
        vdsm_id = await running_task(daemon, job["id"])
        # `systemctl status` follows what the daemon holds.
        async with asyncio.timeout(10):
            while (await notify.until("STATUS"))["STATUS"] != "jobs running: 1; hosts up: 1/1":
                pass

        config.write_text(config_text(pool, sim.host_ports, log_level="DEBUG"))
        reloaded = await reload()
        assert "with problems" not in reloaded["STATUS"], reloaded
        assert await host_statuses() == {"host1": "UP", "host2": "UP"}
        view = await daemon.get(f"/jobs/{job['id']}")
        assert view["status"] == "STARTED", view
        assert sim_task_state(sim, vdsm_id) == "running", "the reload must come mid-task"

        # A wrong file is refused as a whole, with the file, the key and what was expected.
        good = config.read_text()
        config.write_text(good.replace("fast_interval = 0.02", "fast_interval = -1"))
        refused = await reload()
        assert refused["STATUS"].startswith(
            f"reload refused: {config}: [polling] fast_interval: expected a positive number, got -1"
        ), refused
        assert await host_statuses() == {"host1": "UP", "host2": "UP"}

        gate.open()
        done = await daemon.wait_job(job["id"], TERMINAL)
        assert done["status"] == "FINISHED", done
        assert [t["vdsm_id"] for t in done["tasks"]] == [vdsm_id]

        # A host the file no longer names is removed (the DELETE /api/v1/hosts path).
        config.write_text(config_text(pool, host1))
        await reload()
        assert await host_statuses() == {"host1": "UP"}
        assert await daemon.stop() == 0

        log = daemon.log.read_text()
        assert " DEBUG " in log, "the reloaded log level is in force"
        about_job = [line for line in log.splitlines() if job["id"] in line]
        assert len(about_job) >= 2, log
        untagged = [
            line
            for line in about_job
            if f"job={job['id']} correlation={job['correlation_id']}" not in line
        ]
        assert untagged == [], "job lines without the job and correlation ids"
    finally:
        await daemon.close()
        notify.close()
        await sim.stop()


async def test_an_unusable_inherited_socket_stops_the_start_with_the_reason(
    tmp_path: Path,
) -> None:
    config = tmp_path / "taskmgrd.toml"
    config.write_text("")
    left, right = socket.socketpair()  # a connected stream socket: not one to listen on
    daemon = await spawn(tmp_path, config, inherited=left)
    try:
        async with asyncio.timeout(20):
            assert await daemon.proc.wait() == 1
        assert "must be a listening AF_UNIX stream socket" in daemon.log.read_text()
        assert not (tmp_path / "taskmgrd.db").exists(), "nothing is started"
    finally:
        await daemon.close()
        left.close()
        right.close()


async def test_an_unusable_state_file_stops_the_start_with_the_reason(tmp_path: Path) -> None:
    config = tmp_path / "taskmgrd.toml"
    config.write_text("")
    (tmp_path / "taskmgrd.db").mkdir()  # a directory where the SQLite file should be
    daemon = await spawn(tmp_path, config)
    try:
        async with asyncio.timeout(20):
            assert await daemon.proc.wait() == 1
        first = daemon.log.read_text().splitlines()[0]
        assert f"ERROR taskmgrd: cannot start: state file {tmp_path / 'taskmgrd.db'}: " in first
    finally:
        await daemon.close()

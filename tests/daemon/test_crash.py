"""Crash test (issue 3): `taskmgrd` killed with SIGKILL at a seeded random moment while jobs of
every scenario run against `vdsm-sim`, then restarted on the same database.

Both run as real processes over real sockets; the jobs go through the API's unix socket. After
the restart, for every run:
- every job the API acknowledged (201) reaches a terminal state, and so does every other job the
  database holds (one committed just before the kill, whose 201 never left);
- the simulator holds no task that is not cleared (its own raw tables, every host);
- no lock is held: every job shows `locks: []`, and the `locks` table is empty after a clean stop.

`TASKMGR_CRASH_RUNS=N` (default 20) sets the number of seeded runs; `TASKMGR_CRASH_SEED0`
shifts the seeds, so a soak can run e.g. 500 different ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

RUNS = int(os.environ.get("TASKMGR_CRASH_RUNS", "20"))
SEED0 = int(os.environ.get("TASKMGR_CRASH_SEED0", "0"))
ROOT = Path(__file__).resolve().parents[2]
TERMINAL = {"FINISHED", "FAILED", "ABORTED"}
API = "http://taskmgrd/api/v1"

pytestmark = pytest.mark.timeout(60)


@dataclass
class Sim:
    proc: asyncio.subprocess.Process
    port: int
    host_ports: dict[str, int]
    http: aiohttp.ClientSession

    @property
    def control(self) -> str:
        return f"http://127.0.0.1:{self.port}/_control"

    async def get(self, path: str) -> Any:
        async with self.http.get(self.control + path) as r:
            assert r.status == 200, await r.text()
            return await r.json()

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        async with self.http.post(self.control + path, json=body) as r:
            assert r.status in (200, 201), await r.text()
            return await r.json()

    async def uncleared(self) -> dict[str, list[str]]:
        """Task ids each host still lists, but for unpersisted hsm/sdm tasks (spmStart, ...)."""
        tables = await self.get("/tasks")
        left = {
            host: [
                f"{t['id']} {t['verb']} {t['state']}"
                for t in rows
                if t.get("tag") not in ("hsm", "sdm")
            ]
            for host, rows in tables.items()
        }
        return {host: ids for host, ids in left.items() if ids}


@dataclass
class DaemonProc:
    proc: asyncio.subprocess.Process
    socket: Path
    log: Path
    http: aiohttp.ClientSession = field(init=False)

    def __post_init__(self) -> None:
        self.http = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.socket)))

    async def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, API + path, json=body) as r:
            return r.status, await r.json()

    async def close(self) -> None:
        await self.http.close()


async def start_sim(tmp_path: Path, seed: int) -> Sim:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vdsm_simulator.cli",
        "--port",
        "0",
        "--port-per-host",
        "--hosts",
        "3",
        "--seed",
        str(seed),
        "--time-scale",
        "0.02",
        "--task-seconds",
        "4",
        "--task-distribution",
        "exponential",
        "--log-level",
        "ERROR",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=(tmp_path / "sim.log").open("wb"),
    )
    assert proc.stdout is not None
    port = 0
    hosts: dict[str, int] = {}
    async with asyncio.timeout(15):
        while len(hosts) < 3:
            line = (await proc.stdout.readline()).decode()
            assert line, f"vdsm-sim ended: {(tmp_path / 'sim.log').read_text()}"
            words = line.split()
            if line.startswith("vdsm-sim listening on"):
                port = int(words[-1].rsplit(":", 1)[1])
            elif line.startswith("vdsm-sim host"):
                hosts[words[2]] = int(words[-1].rsplit(":", 1)[1])
    return Sim(proc, port, hosts, aiohttp.ClientSession())


def write_config(tmp_path: Path, pool: str, host_ports: dict[str, int]) -> Path:
    hosts = "".join(
        f'[[hosts]]\nname = "{name}"\naddress = "127.0.0.1"\nport = {port}\npool = "{pool}"\n\n'
        for name, port in sorted(host_ports.items())
    )
    path = tmp_path / "taskmgrd.toml"
    path.write_text(
        f"""
[daemon]
synchronous = "NORMAL"
log_level = "INFO"

[retention]
housekeeping_seconds = 0.2
orphan_grace_seconds = 0.5

[polling]
fast_interval = 0.02
idle_interval = 0.2
young_seconds = 30.0
missing_grace = 3
monitor_interval = 0.1
failures_before_non_responsive = 2
call_timeout = 5.0
spm_start_timeout = 10.0

{hosts}"""
    )
    return path


async def start_daemon(
    tmp_path: Path, config: Path, run: int | str, *, module: tuple[str, ...] = ("daemon.service",)
) -> DaemonProc:
    """taskmgrd (`python -m *module run ...`) on tmp_path's database, once its API answers."""
    socket = tmp_path / "api.sock"
    log = tmp_path / f"taskmgrd.{run}.log"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        *module,
        "run",
        "--config",
        str(config),
        "--socket",
        str(socket),
        "--db",
        str(tmp_path / "taskmgrd.db"),
        cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=log.open("wb"),
    )
    daemon = DaemonProc(proc, socket, log)
    async with asyncio.timeout(20):
        while True:
            assert proc.returncode is None, f"taskmgrd exited: {log.read_text()}"
            with contextlib.suppress(aiohttp.ClientError, OSError):
                status, _ = await daemon.request("GET", "/health")
                if status == 200:
                    return daemon
            await asyncio.sleep(0.05)  # polling a condition (the socket answering), deadline above


@contextlib.asynccontextmanager
async def processes(tmp_path: Path, seed: int) -> AsyncIterator[Sim]:
    sim = await start_sim(tmp_path, seed)
    try:
        yield sim
    finally:
        await sim.http.close()
        if sim.proc.returncode is None:
            sim.proc.terminate()
            await sim.proc.wait()


def scenario_jobs(
    pool: str, domains: list[str], images: list[str], extra: dict[str, Any]
) -> list[dict[str, Any]]:
    """One request per scenario (a batch is one request with several jobs)."""
    d0, d1 = domains[0], domains[1]
    return [
        {"action": "CreateDisk", "params": {"pool": pool, "domain": d0, "size": 1 << 20}},
        {"action": "RefreshHost", "params": {"host": "host1"}},
        {
            "action": "CreateVm",
            "params": {
                "name": "crashvm",
                "host": "host3",
                "disks": [{"pool": pool, "domain": d0, "size": 4096}] * 2,
            },
        },
        {
            "action": "CopyDisk",
            "params": {"pool": pool, "domain": d0, "image": images[0], "dst_domain": d1},
        },
        {"action": "MigrateVm", "params": {"vm": extra["vm"], "dst_host": "host3"}},
        {"action": "DeleteDisk", "params": {"pool": pool, "domain": d0, "image": images[1]}},
        {"action": "SetHostMaintenance", "params": {"host": "host2"}},
        {
            "action": "AddHost",
            "params": {
                "name": extra["new_host"],
                "address": "127.0.0.1",
                "port": extra["main_port"],
                "pool": pool,
            },
        },
        {
            "batch": [{"action": "RefreshHost", "params": {"host": h}} for h in ("host1", "host3")]
            + [{"action": "CreateDisk", "params": {"pool": pool, "domain": d1, "size": 4096}}]
        },
        {"action": "CreateDisk", "params": {"pool": pool, "domain": d1, "size": 1 << 20}},
    ]


async def wait_terminal(daemon: DaemonProc, job_id: str, deadline: float) -> dict[str, Any]:
    async with asyncio.timeout(deadline):
        while True:
            status, view = await daemon.request("GET", f"/jobs/{job_id}")
            assert status == 200, view
            if view["status"] in TERMINAL:
                return dict(view)
            await asyncio.sleep(0.05)  # polling the API for a condition, deadline above


async def crash_run(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    async with processes(tmp_path, seed) as sim:
        topology = await sim.get("/topology")
        pool = topology["pools"][0]
        pool_id, domains = pool["id"], [d["id"] for d in pool["domains"]]
        config = write_config(tmp_path, pool_id, sim.host_ports)
        vm = await sim.post("/vms", {"host": "host1", "memory_mb": 64})
        await sim.post("/vms", {"host": "host2", "memory_mb": 64})
        new_host = (await sim.post("/hosts", {"pool": pool_id}))["name"]
        daemon = await start_daemon(tmp_path, config, 0)
        acked: list[str] = []
        try:
            # Two disks to copy and delete, made before the chaos starts.
            images = [str(uuid.uuid4()) for _ in range(2)]
            batch = [
                {
                    "action": "CreateDisk",
                    "params": {"pool": pool_id, "domain": domains[0], "size": 4096, "image": image},
                }
                for image in images
            ]
            status, view = await daemon.request("POST", "/jobs", {"batch": batch})
            assert status == 201, view
            for job in view["jobs"]:
                assert (await wait_terminal(daemon, job["id"], 10))["status"] == "FINISHED"
            requests = scenario_jobs(
                pool_id,
                domains,
                images,
                {"vm": vm["id"], "new_host": new_host, "main_port": sim.port},
            )
            rng.shuffle(requests)
            kill_after = rng.uniform(0.0, 0.5)

            async def submit_all() -> None:
                for body in requests:
                    status, view = await daemon.request("POST", "/jobs", body)
                    assert status == 201, (body, view)
                    acked.extend(j["id"] for j in (view["jobs"] if "jobs" in view else [view]))
                    await asyncio.sleep(rng.uniform(0.0, 0.05))

            submitting = asyncio.create_task(submit_all())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(kill_after):
                    await asyncio.shield(submitting)
            daemon.proc.send_signal(signal.SIGKILL)
            await daemon.proc.wait()
            with contextlib.suppress(aiohttp.ClientError, OSError):
                await submitting  # a request cut by the kill was never acknowledged
        finally:
            await daemon.close()
            if daemon.proc.returncode is None:
                daemon.proc.kill()
                await daemon.proc.wait()

        daemon = await start_daemon(tmp_path, config, 1)
        try:
            status, listing = await daemon.request("GET", "/jobs")
            assert status == 200, listing
            every = {j["id"] for j in listing["jobs"]} | set(acked)
            assert set(acked) <= every
            views = [await wait_terminal(daemon, job_id, 30) for job_id in sorted(every)]
            held = {v["id"]: (v["action"], v["locks"]) for v in views if v["locks"]}
            assert held == {}, f"locks still held after the jobs ended: {held}"
            stuck = {
                v["id"]: [(t["verb"], t["status"]) for t in v["tasks"]]
                for v in views
                if any(t["status"] not in ("CLEARED", "LOST", "ORPHAN") for t in v["tasks"])
            }
            assert stuck == {}, f"terminal jobs with tasks not settled: {stuck}"
            left: dict[str, list[str]] = {}
            async with asyncio.timeout(15):
                while left := await sim.uncleared():  # noqa: ASYNC110 - another process's state
                    await asyncio.sleep(0.1)  # the reaper's grace, then its sweep
            assert left == {}
            outcome = sorted(f"{v['action']}:{v['status']}:{v['error'][:90]}" for v in views)
            print(f"seed {seed}: killed after {kill_after:.2f}s, {len(acked)} acked: {outcome}")
        except BaseException:
            print(f"seed {seed}: acked {acked}", file=sys.stderr)
            for log in sorted(tmp_path.glob("taskmgrd.*.log")):  # noqa: ASYNC240 - failing
                print(f"--- {log.name}\n{log.read_text()[-6000:]}", file=sys.stderr)
            with contextlib.suppress(Exception):
                print(json.dumps(await sim.get("/tasks"), indent=1)[-4000:], file=sys.stderr)
            raise
        finally:
            await daemon.close()
            daemon.proc.terminate()
            await daemon.proc.wait()
    with contextlib.closing(sqlite3.connect(tmp_path / "taskmgrd.db")) as db:
        assert db.execute("SELECT count(*) FROM locks").fetchone() == (0,)
        open_jobs = db.execute(
            "SELECT id, action, status FROM jobs WHERE status NOT IN "
            "('FINISHED', 'FAILED', 'ABORTED')"
        ).fetchall()
        assert open_jobs == []


@pytest.mark.parametrize("seed", range(SEED0, SEED0 + RUNS))
async def test_sigkill_at_a_random_moment_loses_nothing(tmp_path: Path, seed: int) -> None:
    await crash_run(tmp_path, seed)

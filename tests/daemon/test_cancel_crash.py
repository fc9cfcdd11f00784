"""SIGKILL after each persisted step of a cancel, then restart (issue 4 race suite).

taskmgrd runs as a process (tests/daemon/crash_at_step.py: the real daemon plus a hook that
kills it right after the Nth committed change of a job under cancel); the simulator runs in this
process, so no task ends unless the test or the cancel ends it: under stop the disks are
PREALLOCATED and their allocation takes an hour (only an abort ends it); under revert the job gate
holds storage jobs at their end, one disk is released before the cancel and the other once its
stop was recorded (or the daemon died). For N = 1, 2, ... until a run completes without being
killed, each run submits the same job, cancels it, lets the daemon die after step N, restarts a
plain taskmgrd on the same database and checks:
- the job ends with a recorded cancel outcome (ABORTED: stopped or reverted) and every task of
  it settled (CLEARED, or LOST/ORPHAN and then reaped);
- no task left in the simulator's own tables, on any host;
- no lock held (job view and the database after a clean stop);
- under revert, no volume the job created remains.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.daemon.stack import start_sim
from tests.daemon.test_crash import TERMINAL, DaemonProc, start_daemon, write_config
from tests.sim.conftest import wait_until
from vdsm_simulator.app import Simulator
from vdsm_simulator.storage import Volume

MAX_STEPS = 40  # a guard: every scenario here completes in fewer steps

pytestmark = pytest.mark.timeout(600)


@dataclass
class Scenario:
    name: str
    mode: str
    job: Callable[[Simulator, str, list[str]], dict[str, Any]]  # (sim, pool, domains) -> body
    # before the cancel: let the job reach the state to cancel (gate releases); returns when there
    prepare: Callable[[Simulator, DaemonProc, str], Awaitable[None]]
    outcome: str
    sim_options: dict[str, Any]
    gated: bool  # the gate holds jobs; opened once the running tasks' stops are recorded


def _disk(pool: str, domain: str, preallocate: str = "PREALLOCATED") -> dict[str, Any]:
    return {"pool": pool, "domain": domain, "size": 4096, "preallocate": preallocate}


async def _view(daemon: DaemonProc, job_id: str) -> dict[str, Any]:
    status, view = await daemon.request("GET", f"/jobs/{job_id}")
    assert status == 200, view
    return dict(view)


async def _until_view(
    daemon: DaemonProc, job_id: str, check: Callable[[dict[str, Any]], bool]
) -> None:
    async with asyncio.timeout(20):
        while not check(await _view(daemon, job_id)):  # noqa: ASYNC110 - another process
            await asyncio.sleep(0.02)  # polling its API for a condition, deadline above


def _held(sim: Simulator) -> list[str]:
    return [t for h in sim.cluster.hosts.values() for t in h.gate.held()]


def release(sim: Simulator, task_id: str) -> None:
    for host in sim.cluster.hosts.values():
        host.gate.release(task_id)


def _sim_running(sim: Simulator) -> int:
    return sum(
        t["state"] == "running" for h in sim.cluster.hosts.values() for t in h.tasks.raw_table()
    )


async def _both_running(sim: Simulator, daemon: DaemonProc, job_id: str) -> None:
    await wait_until(lambda: _sim_running(sim) == 2, 20, 0.01)
    await _until_view(
        daemon,
        job_id,
        lambda v: sum(t["status"] == "POLLING" and bool(t["vdsm_id"]) for t in v["tasks"]) == 2,
    )


def _vm_job(name: str, preallocate: str) -> Callable[[Simulator, str, list[str]], dict[str, Any]]:
    """CreateVm of two disks in the pool's first domain."""

    def job(_: Simulator, pool: str, domains: list[str]) -> dict[str, Any]:
        disks = [_disk(pool, domains[0], preallocate) for _ in range(2)]
        return {"action": "CreateVm", "params": {"name": name, "host": "host2", "disks": disks}}

    return job


def _copy_job(sim: Simulator, pool: str, domains: list[str]) -> dict[str, Any]:
    """CopyDisk of an image made in the simulator's storage (LEGAL, as a finished creation)."""
    image = str(uuid.uuid4())
    sim.cluster.storage.add_volume(
        Volume(str(uuid.uuid4()), image, domains[0], pool, 1 << 20, legality="LEGAL")
    )
    params = {"pool": pool, "domain": domains[0], "image": image, "dst_domain": domains[1]}
    return {"action": "CopyDisk", "params": params}


async def _copy_held(sim: Simulator, daemon: DaemonProc, job_id: str) -> None:
    """The copy's work is done and held at the gate: the stop finds image.move committing, so
    VDSM keeps the copy (cleanSuccess, 411) and the revert deletes it with Image.delete."""
    await wait_until(lambda: len(_held(sim)) == 1, 20, 0.01)
    await _until_view(
        daemon, job_id, lambda v: [t["status"] for t in v["tasks"] if t["vdsm_id"]] == ["POLLING"]
    )


async def _both_held(sim: Simulator, daemon: DaemonProc, job_id: str) -> None:
    await wait_until(lambda: len(_held(sim)) == 2, 20, 0.01)
    await _both_running(sim, daemon, job_id)


async def _one_finished(sim: Simulator, daemon: DaemonProc, job_id: str) -> None:
    await _both_held(sim, daemon, job_id)
    release(sim, sorted(_held(sim))[0])
    await _until_view(
        daemon,
        job_id,
        lambda v: any(t["status"] == "ENDED" and t["vdsm_result"] == "success" for t in v["tasks"]),
    )


SCENARIOS = [
    Scenario(
        "stop two SPARSE disk creations (not abortable: the stop waits for the gate)",
        "stop",
        _vm_job("crashsparse", "SPARSE"),
        _both_held,
        "stopped",
        {},
        True,
    ),
    Scenario(
        "stop two running disk creations",
        "stop",
        _vm_job("crashstop", "PREALLOCATED"),
        _both_running,
        "stopped",
        {"time_scale": 1.0, "task_seconds": 3600.0},
        False,
    ),
    Scenario(
        "revert: one disk created, one running",
        "revert",
        _vm_job("crashrevert", "PREALLOCATED"),
        _one_finished,
        "reverted",
        {},
        True,
    ),
    Scenario(
        "revert a copy committed as the stop came: compensation deletes it (a task of its own)",
        "revert",
        _copy_job,
        _copy_held,
        "reverted",
        {},
        True,
    ),
]


async def _start(tmp_path: Path, config: Path, run: str, kill_after: int | None) -> DaemonProc:
    if kill_after is None:
        return await start_daemon(tmp_path, config, run)
    module = ("tests.daemon.crash_at_step", str(kill_after))
    return await start_daemon(tmp_path, config, run, module=module)


@contextlib.asynccontextmanager
async def _running(daemon: DaemonProc) -> AsyncIterator[DaemonProc]:
    try:
        yield daemon
    finally:
        await daemon.close()
        if daemon.proc.returncode is None:
            daemon.proc.terminate()
            await daemon.proc.wait()


async def _drive(daemon: DaemonProc, sim: Simulator, job_id: str) -> dict[str, Any]:
    """Until the job ends or the daemon dies: open the gates once every running task's stop is
    recorded (only then: a stop that reached VDSM unrecorded must meet a task still aborting
    after the restart). Returns the last view."""
    view: dict[str, Any] = {}
    async with asyncio.timeout(30):
        while daemon.proc.returncode is None:
            with contextlib.suppress(aiohttp.ClientError, OSError):
                view = await _view(daemon, job_id)
                if view["status"] in TERMINAL:
                    return view
                if all(t["stop_sent"] or t["status"] != "POLLING" for t in view["tasks"]):
                    for host in sim.cluster.hosts.values():
                        host.gate.open()
            await asyncio.sleep(0.02)  # polling another process for a condition, deadline above
    return view


def _sim_clean(sim: Simulator) -> bool:
    return all(h.tasks.raw_table() == [] for h in sim.cluster.hosts.values())


async def crash_at(tmp_path: Path, scenario: Scenario, step: int) -> bool:
    """One run; True when the daemon was killed (step N exists), False when it completed."""
    sim = await start_sim(3, **scenario.sim_options)
    try:
        for host in sim.cluster.hosts.values():
            if scenario.gated:
                host.gate.hold()
        pool = next(iter(sim.cluster.storage.pools.values()))
        body = scenario.job(sim, pool.uuid, list(pool.domains))
        volumes_before = {v for d in pool.domains.values() for v in d.volumes}
        config = write_config(tmp_path, pool.uuid, sim.host_ports)
        async with _running(await _start(tmp_path, config, f"{step}.0", step)) as daemon:
            status, view = await daemon.request("POST", "/jobs", body)
            assert status == 201, view
            job_id = view["id"]
            await scenario.prepare(sim, daemon, job_id)
            try:
                status, answer = await daemon.request(
                    "POST", f"/jobs/{job_id}/cancel", {"mode": scenario.mode, "reason": "crash"}
                )
                assert status == 202, answer
            except aiohttp.ClientError:
                await daemon.proc.wait()  # killed once the intent committed: 202 never left
            view = await _drive(daemon, sim, job_id)
            # the job may show its end before the commit holding step N lands: once the hook
            # has counted step N, the kill is on its way
            killed = f"cancel step {step}:" in daemon.log.read_text()
            if killed:
                async with asyncio.timeout(20):
                    await daemon.proc.wait()
                assert daemon.proc.returncode == -9, daemon.log.read_text()[-3000:]
        # restarted whether killed or not: a completed cancel must also survive a restart
        async with _running(await _start(tmp_path, config, f"{step}.1", None)) as daemon:
            try:
                view = await _drive(daemon, sim, job_id)
                assert view["status"] == "ABORTED", view["error"]
                assert view["cancel"]["outcome"] == scenario.outcome, view["cancel"]
                assert view["locks"] == []
                unsettled = [
                    (t["verb"], t["status"])
                    for t in view["tasks"]
                    if t["status"] not in ("CLEARED", "LOST", "ORPHAN")
                ]
                assert unsettled == []
                await wait_until(lambda: _sim_clean(sim), 15, 0.05)  # orphans: the reaper
                if scenario.mode == "revert":
                    after = {v for d in pool.domains.values() for v in d.volumes}
                    assert after == volumes_before
            except BaseException:
                for log in sorted(tmp_path.glob("taskmgrd.*.log")):  # noqa: ASYNC240 - failing
                    print(f"--- {log.name}\n{log.read_text()[-5000:]}", file=sys.stderr)
                raise
    finally:
        await sim.stop()
    with contextlib.closing(sqlite3.connect(tmp_path / "taskmgrd.db")) as db:
        assert db.execute("SELECT count(*) FROM locks").fetchone() == (0,)
    return killed


@pytest.mark.parametrize(
    "scenario", SCENARIOS, ids=["stop-sparse", "stop-prealloc", "revert", "revert-copy"]
)
async def test_sigkill_after_each_persisted_cancel_step(tmp_path: Path, scenario: Scenario) -> None:
    steps = 0
    for step in range(1, MAX_STEPS + 1):
        run_dir = tmp_path / f"step{step}"
        run_dir.mkdir()
        if not await crash_at(run_dir, scenario, step):
            break
        steps = step
    else:
        pytest.fail(f"the cancel still had steps after {MAX_STEPS}")
    assert steps >= 5, f"only {steps} persisted steps: the hook is not counting"
    print(f"{scenario.name}: killed after each of {steps} steps, every restart completed")

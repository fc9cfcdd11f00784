"""`vdsm-sim` as a process: restart recovery from --state-dir after SIGKILL, config and flags."""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.vdsm.client import StompRpcClient
from tests.conftest import BLANK, wait_for_async, wait_task
from vdsm_simulator.cli import GC_THRESHOLDS, main, parse_args, settings_from, tune_gc

REPO = Path(__file__).resolve().parents[2]


@asynccontextmanager
async def vdsm_sim(*args: str) -> AsyncIterator[tuple[asyncio.subprocess.Process, int]]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vdsm_simulator.cli",
        "--port",
        "0",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(20):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("vdsm-sim listening on 127.0.0.1:"), line
        yield proc, int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def control(port: int, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession() as s,
        s.request(method, f"http://127.0.0.1:{port}/_control{path}", json=body) as r,
    ):
        assert r.status == 200, await r.text()
        return await r.json()


def create_params(pool: str, sd: str) -> dict[str, Any]:
    import uuid

    return {
        "volumeID": str(uuid.uuid4()),
        "storagepoolID": pool,
        "storagedomainID": sd,
        "imageID": str(uuid.uuid4()),
        "size": "1048576",
        "volFormat": 4,
        "preallocate": 2,
        "diskType": "DATA",
        "desc": "",
        "srcImgUUID": BLANK,
        "srcVolUUID": BLANK,
    }


SIM_ARGS = (
    *("--hosts", "2", "--time-scale", "0.005"),
    *("--task-seconds", "1", "--task-distribution", "fixed"),
)


async def test_sigkill_and_restart_rolls_back_running_tasks(tmp_path: Path) -> None:
    state = tmp_path / "state"
    async with vdsm_sim(*SIM_ARGS, "--state-dir", str(state)) as (proc, port):
        topo = await control(port, "GET", "/topology")
        pool, sd = topo["pools"][0]["id"], topo["pools"][0]["master_domain"]
        c = StompRpcClient("127.0.0.1", port, host_header="host1", timeout=5.0)
        done_p = create_params(pool, sd)
        done = await c.call("Volume.create", done_p)
        await wait_task(c, done)
        await control(port, "POST", "/hosts/host1/hold")
        running_p = [create_params(pool, sd) for _ in range(2)]
        running = [await c.call("Volume.create", p) for p in running_p]

        async def both_held() -> bool:
            held = (await control(port, "GET", "/hosts/host1/held"))["held"]
            return set(running) <= set(held)

        await wait_for_async(both_held)
        before = {v["uuid"] for v in await control(port, "GET", f"/pools/{pool}/volumes")}
        assert {done_p["volumeID"], *(p["volumeID"] for p in running_p)} == before
        await c.close()
        os.kill(proc.pid, signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL

    async with vdsm_sim(*SIM_ARGS, "--state-dir", str(state)) as (proc, port):
        c = StompRpcClient("127.0.0.1", port, host_header="host1", timeout=5.0)
        try:

            async def recovered() -> bool:
                statuses = await c.call("Host.getAllTasksStatuses")
                return all(statuses.get(t, {}).get("taskState") == "finished" for t in running)

            await wait_for_async(recovered)
            statuses = await c.call("Host.getAllTasksStatuses")
            assert set(statuses) == {done, *running}
            assert statuses[done]["taskResult"] == "success"
            for t in running:
                assert statuses[t]["taskResult"] == "cleanSuccess"  # rolled back, not resumed
            raw = await c.call("Host.getAllTasks")
            assert {t: raw[t]["state"] for t in running} == dict.fromkeys(running, "recovered")
            assert raw[done]["verb"] == "createVolume"
            vols = {v["uuid"] for v in await control(port, "GET", f"/pools/{pool}/volumes")}
            assert vols == {done_p["volumeID"]}
            info = await c.call(
                "Volume.getInfo",
                {k: done_p[k] for k in ("volumeID", "storagepoolID", "storagedomainID", "imageID")},
            )
            assert info["legality"] == "LEGAL"
            for t in (done, *running):
                assert await c.call("Task.clear", {"taskID": t}) is True
            assert await c.call("Host.getAllTasks") == {}
            assert not list((state / "pools" / pool / "tasks").iterdir())
        finally:
            await c.close()
        proc.send_signal(signal.SIGTERM)
        assert await proc.wait() == 0


def test_tune_gc_freezes_and_raises_thresholds() -> None:
    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_shipped_config_loads() -> None:
    settings = settings_from(parse_args(["--config", str(REPO / "config/vdsm-sim.toml")]))
    assert settings.server.port == 54321
    assert settings.cluster.hosts == 1 and settings.cluster.task_seconds == 2.0


def test_flags_override_the_file(tmp_path: Path) -> None:
    cfg = tmp_path / "sim.toml"
    cfg.write_text("[server]\nport = 1234\n[cluster]\nhosts = 4\nseed = 9\ntime_scale = 0.5\n")
    s = settings_from(parse_args(["--config", str(cfg), "--hosts", "6", "--port", "0"]))
    assert (s.server.port, s.cluster.hosts, s.cluster.seed, s.cluster.time_scale) == (0, 6, 9, 0.5)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[cluster]\nhosts = 'two'\n", "[cluster] hosts: expected an integer, got 'two'"),
        ("[cluster]\nhostz = 2\n", "[cluster] unknown key 'hostz'"),
        ("[clusterz]\nhosts = 2\n", "unknown section [clusterz]"),
        ("[server]\nport_per_host = 1\n", "[server] port_per_host: expected true or false"),
        ("[cluster]\nhosts = 0\n", "[cluster] hosts must be at least 1"),
        ("[cluster\n", "not valid TOML"),
    ],
)
def test_bad_config_exits_2_naming_file_and_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    assert main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vdsm-sim: {cfg}: "), err
    assert expected in err


def test_bad_flag_values_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--hosts", "0"]) == 2
    assert "hosts must be at least 1" in capsys.readouterr().err
    assert main(["--port", "70000"]) == 2
    assert "port must be 0..65535" in capsys.readouterr().err
    assert main(["--config", "/nonexistent/x.toml"]) == 2
    assert "/nonexistent/x.toml: no such file" in capsys.readouterr().err


async def test_process_bad_config_exit_code(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text("[cluster]\ntime_scale = 'fast'\n")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "vdsm_simulator.cli",
        "--config",
        str(cfg),
        stderr=asyncio.subprocess.PIPE,
        cwd=REPO,
    )
    _, err = await proc.communicate()
    assert proc.returncode == 2
    assert f"{cfg}: [cluster] time_scale: expected a number" in err.decode()

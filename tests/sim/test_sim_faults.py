"""Every fault kind of the control API against the real cluster, over STOMP and HTTP.

Timing assertions are lower bounds only (a sleep never returns early) or use deadlines far
beyond the injected delay, so they cannot depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import aiohttp
import pytest

from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import ClientTimeout, ConnectionLost, VdsmCallError
from daemon.vdsm.stomp import Frame
from tests.conftest import (
    TIME_SCALE,
    Control,
    DataCenter,
    RawFactory,
    RpcFactory,
    wait_for_async,
    wait_task,
)
from tests.sim.stomp_client import StompClient
from vdsm_simulator.app import Simulator
from vdsm_simulator.cluster import SimConfig
from vdsm_simulator.config import ServerConfig, Settings


async def call_error(client: StompRpcClient, method: str, params: Any = None) -> VdsmCallError:
    with pytest.raises(VdsmCallError) as info:
        await client.call(method, params)
    return info.value


async def test_latency_delays_every_reply(rpc: RpcFactory, control: Control) -> None:
    c = await rpc("host1")
    await control.faults("host1", latency=100.0)  # 0.5 s real
    start = time.monotonic()
    assert await c.call("Host.ping2") is True
    assert time.monotonic() - start >= 100.0 * TIME_SCALE
    with pytest.raises(ClientTimeout):
        await c.call("Host.ping2", timeout=0.05)
    await control.delete("/hosts/host1/faults")
    assert await c.call("Host.ping2") is True


async def test_dropped_reply_times_out_but_the_verb_ran(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    c = await rpc("host1")
    await control.faults("host1", drop_replies=1.0)
    p = dc.create_params()
    with pytest.raises(ClientTimeout) as info:
        await c.call("Volume.create", p, timeout=0.3)
    assert info.value.vdsm_code == 5022
    await control.delete("/hosts/host1/faults")
    tasks = await c.call("Host.getAllTasks")
    assert [t["verb"] for t in tasks.values()] == ["createVolume"]
    await wait_task(c, next(iter(tasks)))
    assert p["volumeID"] in await control.volumes(dc.pool)


async def test_late_reply_arrives_after_the_delay(rpc: RpcFactory, control: Control) -> None:
    c = await rpc("host1")
    await control.faults("host1", late_replies=1.0, late_delay=60.0)  # 0.3 s real
    start = time.monotonic()
    assert await c.call("Host.ping2") is True
    assert time.monotonic() - start >= 60.0 * TIME_SCALE
    await control.faults("host1", late_delay=4000.0)  # 20 s: the engine would give up
    with pytest.raises(ClientTimeout):
        await c.call("Host.ping2", timeout=0.2)


async def test_reset_connections_only_hits_that_host(rpc: RpcFactory, control: Control) -> None:
    c1, c2 = await rpc("host1"), await rpc("host2")
    await control.faults("host1", reset_connections=1.0)
    with pytest.raises(ConnectionLost) as info:
        await c1.call("Host.ping2")
    assert info.value.vdsm_code == 5022
    assert await c2.call("Host.ping2") is True
    await control.delete("/hosts/host1/faults")
    assert await c1.call("Host.ping2") is True  # lazy reconnect
    assert c1.connects == 2


async def test_missed_heartbeats(raw: RawFactory, control: Control) -> None:
    await control.faults("host1", missed_heartbeats=True)
    c = await raw("host1", heart_beat=(0, 1000))
    assert c.connected is not None and c.connected.headers["heart-beat"] == "1000,0"
    await asyncio.sleep(1.2)  # a window in which a heart-beat was due and must not come
    assert c.heartbeats == 0
    await control.delete("/hosts/host1/faults")
    await wait_for_async(lambda: _true_after(c.heartbeats > 0), timeout=3.0)
    assert (await c.call("Host.ping2")) is True


async def _true_after(value: bool) -> bool:
    return value


async def test_error_code_for_chosen_methods(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    c = await rpc("host1")
    await control.faults(
        "host1", error_code=851, error_message="Resource timeout", error_methods=["Volume.create"]
    )
    e = await call_error(c, "Volume.create", dc.create_params())
    assert (e.vdsm_code, e.message) == (851, "Resource timeout")
    assert await c.call("Host.getAllTasks") == {}  # nothing ran
    assert await c.call("Host.ping2") is True
    await control.faults("host1", error_methods=[])  # every verb
    assert (await call_error(c, "Host.ping2")).vdsm_code == 851
    await control.delete("/hosts/host1/faults")
    assert await c.call("Host.ping2") is True


async def test_recovering_fault_answers_99_to_everything(rpc: RpcFactory, control: Control) -> None:
    c = await rpc("host1")
    await control.faults("host1", recovering=True)
    for method in ("Host.ping2", "Host.getAllTasks", "No.such"):
        e = await call_error(c, method)
        assert (e.vdsm_code, e.message) == (99, "Recovering from crash or Initializing")
    assert await (await rpc("host2")).call("Host.ping2") is True
    await control.faults("host1", recovering=False)
    assert await c.call("Host.ping2") is True


async def test_restart_loses_memory_and_answers_99_for_a_while(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    c = await rpc("host1")
    tid = await c.call("Volume.create", dc.create_params())
    await wait_task(c, tid)
    reply = await control.post("/hosts/host1/restart", {"recovering_seconds": 100.0})
    assert reply == {"name": "host1", "recovering_seconds": 100.0}
    # The connection went down with VDSM; the client reconnects on its next call.
    e = await call_error(c, "Host.ping2")
    assert e.vdsm_code in (99, 5022)
    topo = await control.get("/topology")
    assert topo["pools"][0]["spm"] is None
    assert topo["hosts"][0]["recovering"] is True

    async def ready() -> bool:
        try:
            return bool(await c.call("Host.ping2"))
        except VdsmCallError as err:
            assert err.vdsm_code in (99, 5022)
            return False

    await wait_for_async(ready, timeout=5.0)
    assert await c.call("Host.getAllTasks") == {}  # memory lost
    assert (await call_error(c, "Host.getAllTasksStatuses")).vdsm_code == 654


async def test_down_closes_and_refuses_then_up(
    rpc: RpcFactory, raw: RawFactory, control: Control
) -> None:
    watcher = await raw("host1")
    other = await rpc("host2")
    c = await rpc("host1")
    await control.faults("host1", down=True)
    await watcher.wait_closed()
    with pytest.raises(ConnectionLost):
        await c.call("Host.ping2")
    probe = await StompClient.open(control.port)  # new connections are refused
    probe.send_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "host1"}))
    await probe.wait_closed()
    assert probe.frames.empty()  # no CONNECTED
    await probe.close()
    reply = await control.http_call_status("host1", "Host.ping2")
    assert reply[0] == 503
    assert await other.call("Host.ping2") is True
    assert (await control.get("/topology"))["hosts"][0]["up"] is False
    await control.faults("host1", down=False)
    assert await c.call("Host.ping2") is True


async def http_outcomes(port: int, n: int) -> list[str]:
    outcomes = []
    async with aiohttp.ClientSession() as session:
        for i in range(n):
            try:
                async with session.post(
                    f"http://127.0.0.1:{port}/hosts/host1/jsonrpc",
                    json={"jsonrpc": "2.0", "id": str(i), "method": "Host.ping2"},
                ) as r:
                    outcomes.append("ok" if (await r.json())["result"] is True else "bad")
            except aiohttp.ClientError:
                outcomes.append("reset")
    return outcomes


async def run_seeded(seed: int) -> tuple[list[str], list[str], list[float]]:
    config = SimConfig(
        hosts=1,
        seed=seed,
        time_scale=0.001,
        task_seconds=1.0,
        task_distribution="exponential",
    )
    async with Simulator(Settings(ServerConfig(port=0), config)) as sim:
        host = sim.cluster.hosts["host1"]
        host.faults.settings.update({"drop_replies": 0.5})
        outcomes = await http_outcomes(sim.port, 16)
        host.faults.clear()
        host.faults.settings.update({"task_failure_rate": 0.5})
        c = StompRpcClient("127.0.0.1", sim.port, host_header="host1", timeout=5.0)
        pool = next(iter(sim.cluster.storage.pools.values()))
        dc = DataCenter(pool.uuid, pool.master_domain, list(pool.domains), "host1", ["host1"])
        results = []
        try:
            for _ in range(8):
                p = dc.create_params()
                tid = await c.call("Volume.create", p)
                results.append((await wait_task(c, tid))["taskResult"])
        finally:
            await c.close()
        durations = [host.draw_duration() for _ in range(5)]
    return outcomes, results, durations


async def test_same_seed_same_faults_and_durations() -> None:
    first = await run_seeded(42)
    second = await run_seeded(42)
    assert first == second
    outcomes, results, _ = first
    assert {"ok", "reset"} == set(outcomes)  # both happen at p=0.5 over 16 draws
    assert {"success", "cleanSuccess"} == set(results)
    assert (await run_seeded(43))[0] != outcomes


async def test_bad_fault_input_changes_nothing(control: Control) -> None:
    before = await control.get("/hosts/host1/faults")
    for body in (
        {"drop_replies": 2},
        {"latency": -1},
        {"error_code": "x"},
        {"nonsense": 1},
        {"latency": 1.0, "down": "yes"},
        {"error_methods": [1]},
    ):
        status, data = await control.request("POST", "/hosts/host1/faults", body)
        assert status == 400, body
        assert data["error"]["code"] == "bad_fault"
    assert await control.get("/hosts/host1/faults") == before
    status, data = await control.request("POST", "/hosts/nohost/faults", {"latency": 1})
    assert (status, data["error"]["code"]) == (404, "no_such_host")

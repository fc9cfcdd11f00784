"""The control API against the real cluster, and malformed input that must hurt nobody else."""

from __future__ import annotations

import asyncio
import json

from daemon.vdsm.stomp import DEFAULT_MAX_FRAME_SIZE, Frame
from tests.conftest import Control, DataCenter, RawFactory, RpcFactory, wait_task
from tests.sim.stomp_client import RESPONSES, StompClient


async def test_topology_shape(control: Control) -> None:
    topo = await control.get("/topology")
    assert set(topo) == {"pools", "hosts", "vms"}
    (pool,) = topo["pools"]
    assert set(pool) == {"id", "name", "master_domain", "spm", "spm_id", "lver", "hosts", "domains"}
    assert (pool["name"], pool["spm"], pool["spm_id"], pool["hosts"]) == (
        "pool1",
        "host1",
        1,
        ["host1", "host2"],
    )
    assert pool["master_domain"] == pool["domains"][0]["id"]
    assert [h["name"] for h in topo["hosts"]] == ["host1", "host2"]
    assert topo["hosts"][0] == {
        "name": "host1",
        "host_id": 1,
        "pool": pool["id"],
        "spm": True,
        "up": True,
        "recovering": False,
        "aliases": [],
    }


async def test_add_host_with_alias_is_reachable(control: Control, rpc: RpcFactory) -> None:
    added = await control.post("/hosts", {"aliases": ["10.0.0.3"]}, expect=201)
    assert added == {"name": "host3", "host_id": 3}
    for name in ("host3", "10.0.0.3"):
        c = await rpc(name)
        assert (await c.call("Host.getCapabilities"))["hostname"] == "host3"
    await control.post("/aliases", {"alias": "h2.example", "host": "host2"})
    c = await rpc("h2.example")
    assert (await c.call("Host.getCapabilities"))["hostname"] == "host2"
    topo = await control.get("/topology")
    assert topo["pools"][0]["hosts"] == ["host1", "host2", "host3"]
    assert topo["hosts"][1]["aliases"] == ["h2.example"]


async def test_bad_input_is_400_or_404_and_changes_nothing(control: Control) -> None:
    before = await control.get("/topology")
    cases = [
        ("POST", "/hosts", {"pool": "nope"}, 404, "no_such_pool"),
        ("POST", "/hosts", {"aliases": [1]}, 400, "bad_request"),
        ("POST", "/hosts", {"aliases": "host9"}, 400, "bad_request"),
        ("POST", "/aliases", {"alias": "x"}, 400, "bad_request"),
        ("POST", "/aliases", {"alias": "x", "host": "host9"}, 400, "bad_request"),
        ("POST", "/vms", {"host": "host9"}, 400, "bad_request"),
        ("POST", "/vms", {"host": "host1", "memory_mb": 0}, 400, "bad_request"),
        ("POST", "/vms", {"host": "host1", "id": 5}, 400, "bad_request"),
        ("POST", "/pools/nope/spm", {"host": "host1"}, 404, "no_such_pool"),
        ("POST", "/hosts/host9/restart", {}, 404, "no_such_host"),
        ("POST", "/hosts/host1/restart", {"recovering_seconds": -1}, 400, "bad_request"),
        ("POST", "/hosts/host1/release", {"task": "t"}, 404, "not_held"),
        ("GET", "/hosts/host9/tasks", None, 404, "no_such_host"),
        ("DELETE", "/pools/nope/spm", None, 404, "no_such_pool"),
        ("GET", "/nothing-here", None, 404, "http_error"),
    ]
    for method, path, body, status, code in cases:
        got, data = await control.request(method, path, body)
        assert (got, data["error"]["code"]) == (status, code), (method, path, body, data)
        assert isinstance(data["error"]["message"], str)
    pool = before["pools"][0]["id"]
    got, data = await control.request("POST", f"/pools/{pool}/spm", {"host": "host9"})
    assert (got, data["error"]["code"]) == (400, "bad_request")
    got, data = await control.request("POST", "/vms", data=b"{not json", headers={})
    assert (got, data["error"]["code"]) == (400, "bad_json")
    got, data = await control.request("POST", "/vms", [1, 2])
    assert (got, data["error"]["code"]) == (400, "bad_request")
    assert await control.get("/topology") == before


async def test_raw_task_table_and_hold_release(
    control: Control, rpc: RpcFactory, dc: DataCenter
) -> None:
    c = await rpc("host1")
    assert await control.post("/hosts/host1/hold") == {"holding": True, "held": []}
    tid = await c.call("Volume.create", dc.create_params())

    async def is_held() -> bool:
        return tid in (await control.get("/hosts/host1/held"))["held"]

    from tests.conftest import wait_for_async

    await wait_for_async(is_held)
    row = (await control.tasks("host1"))[tid]
    assert row["state"] == "running" and row["verb"] == "createVolume"
    assert row["recoveries"][0]["action"] == "remove_volume"
    assert (row["persistent"], row["cleanPolicy"], row["recoveryPolicy"]) == (
        True,
        "manual",
        "auto",
    )
    table = await control.get("/tasks")
    assert set(table) == {"host1", "host2"} and table["host2"] == []
    await control.post("/hosts/host1/release", {"task": tid})
    assert (await wait_task(c, tid))["taskResult"] == "success"
    assert (await control.tasks("host1"))[tid]["done"] is True
    assert await control.post("/hosts/host1/release") == {"holding": False, "held": []}


# -- malformed input -------------------------------------------------------------------------


async def assert_others_fine(raw: RawFactory, rpc: RpcFactory, *clients: StompClient) -> None:
    for c in clients:
        assert await c.call("Host.ping2") is True
    assert await (await rpc("host2")).call("Host.ping2") is True
    assert await (await raw("host1")).call("Host.ping2") is True


async def test_bad_frame_drops_only_that_connection(raw: RawFactory, rpc: RpcFactory) -> None:
    bystander = await raw("host1")
    bad = await raw("host1")
    bad.send_raw(b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:zz\n\n\x00")
    await bad.wait_closed()
    await assert_others_fine(raw, rpc, bystander)


async def test_oversized_body_drops_only_that_connection(raw: RawFactory, rpc: RpcFactory) -> None:
    bystander = await raw("host1")
    big = await raw("host1")
    size = DEFAULT_MAX_FRAME_SIZE + 1
    big.send_raw(
        b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:%d\n\n" % size + b"x" * 1024
    )
    await big.wait_closed()
    await assert_others_fine(raw, rpc, bystander)


async def test_bad_json_and_bad_requests_get_protocol_errors(
    raw: RawFactory, rpc: RpcFactory
) -> None:
    c = await raw("host1")
    fut = c.expect(None)
    c.send_request(b"{not json")
    async with asyncio.timeout(5):
        reply = await fut
    assert reply["error"]["code"] == -32700 and reply["id"] is None
    assert json.loads(c.messages[-1].body) == reply
    assert c.messages[-1].headers["destination"] == RESPONSES
    for payload, code in (
        ({"jsonrpc": "2.0", "id": "a", "method": 5}, -32601),  # VDSM checks presence only
        ({"jsonrpc": "2.0", "id": "b", "method": "Host.nope"}, -32601),
        ({"jsonrpc": "2.0", "id": "c", "method": "Task.getStatus", "params": 7}, -32600),
        ({"jsonrpc": "2.0", "id": "d", "method": "Task.getStatus", "params": [1]}, -32602),
    ):
        # VDSM answers an invalid request with a null id, whatever id it had.
        fut = c.expect(None if code == -32600 else payload["id"])
        c.send_request(payload)
        async with asyncio.timeout(5):
            assert (await fut)["error"]["code"] == code, payload
    await assert_others_fine(raw, rpc, c)


async def test_unknown_protocol_is_closed(
    raw: RawFactory, rpc: RpcFactory, control: Control
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", control.port)
    writer.write(b"\x16\x03\x01 garbage that is no protocol at all\r\n")
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()
    await assert_others_fine(raw, rpc)


async def test_frames_to_unknown_host_and_bad_version(control: Control) -> None:
    c = await StompClient.open(control.port)
    c.send_frame(Frame("CONNECT", {"accept-version": "1.0"}))
    assert (await c.next_frame()).body.decode().startswith("Version unsupported")
    c.send_frame(Frame("CONNECT", {"accept-version": "1.2", "host": "host99"}))
    frame = await c.next_frame()
    assert frame.command == "ERROR" and "Unknown host: 'host99'" in frame.body.decode()
    await c.wait_closed()
    await c.close()

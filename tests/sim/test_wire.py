"""The simulator's wire over real sockets: STOMP, reply routing, JSON-RPC, HTTP, TLS, faults.

Hosts are a small double implementing `RpcHost`, so these tests pin the wire behaviour alone.
Expected texts and layouts are VDSM's (oVirt/vdsm lib/yajsonrpc/{stompserver,__init__}.py).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import trustme

from daemon.vdsm.stomp import Frame, encode_frame
from tests.sim.conftest import wait_until
from tests.sim.stomp_client import EVENTS, IRS_REQUESTS, RESPONSES, RpcError, StompClient
from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import InvalidParams, MethodNotFound, VdsmError
from vdsm_simulator.events import EventBus
from vdsm_simulator.faults import HostFaults
from vdsm_simulator.jsonrpc import NOT_NOW
from vdsm_simulator.server import SimServer, WireOptions

# -- doubles ---------------------------------------------------------------------------------


class UnknownTask(VdsmError):
    code = 401
    msg = "Task id unknown"


class FakeHost:
    """Answers a handful of verbs and records every call it got."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.faults = HostFaults(7, name)
        self.events = EventBus()
        self.calls: list[tuple[str, Any]] = []
        self.gate = asyncio.Event()

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        if method == "Test.wait":
            self.calls.append((method, params))
            await self.gate.wait()
            return "released"
        return self.call_now(method, params)

    def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """Every verb but Test.wait answers without waiting, as most of VDSM's task verbs."""
        if method == "Test.wait":
            return NOT_NOW
        self.calls.append((method, params))
        if method == "Host.ping2":
            return True
        if method == "Test.echo":
            return params
        if method == "Test.whoami":
            return self.name
        if method == "Test.void":
            return None
        if method == "Task.getStatus":
            raise UnknownTask("T")
        if method == "Test.badParams":
            raise InvalidParams("Test.badParams: missing parameter x")
        if method == "Test.crash":
            raise RuntimeError("kaboom")
        if method == "Test.unencodable":
            return {1, 2}
        if method == "Test.publish":
            self.events.publish("|virt|VM_status|vm1", {"vm1": {"status": "Up"}})
            return None
        if method == "Test.blob":
            size = params["size"] if isinstance(params, dict) else 0
            return "x" * size
        raise MethodNotFound(f"no {method}")

    def called(self, method: str) -> int:
        return sum(1 for m, _ in self.calls if m == method)


class FakeCluster:
    def __init__(self, *names: str) -> None:
        self.hosts = {n: FakeHost(n) for n in names}

    def get_host(self, name: str | None) -> FakeHost | None:
        return self.hosts.get("host1" if name is None else name)


@pytest.fixture
def cluster() -> FakeCluster:
    return FakeCluster("host1", "host2")


@pytest.fixture
async def server(cluster: FakeCluster) -> AsyncIterator[SimServer]:
    async with SimServer(cluster, SimClock(0.001), port_per_host=["host2"]) as srv:
        yield srv


@pytest.fixture
async def client(server: SimServer) -> AsyncIterator[StompClient]:
    c = await StompClient.connect(server.port)
    yield c
    await c.close()


async def raw_connect(port: int, frame: Frame) -> StompClient:
    c = await StompClient.open(port)
    c.send_frame(frame)
    return c


async def settle(c: StompClient, reply_to: str = RESPONSES) -> None:
    """Round trip one request so everything sent before it has been handled (tasks run FIFO)."""
    assert await c.call("Host.ping2", reply_to=reply_to) is True


# -- CONNECT ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("client_hb", "server_hb"),
    [
        ("0,0", "0,0"),
        ("500,2000", "2000,1000"),
        ("5000,0", "0,5000"),
        ("x,7", "1000,0"),
        ("abc", "0,0"),
    ],
)
async def test_connected_frame_and_heartbeat_negotiation(
    server: SimServer, client_hb: str, server_hb: str
) -> None:
    c = await StompClient.open(server.port)
    c.send_frame(Frame("CONNECT", {"accept-version": "1.2", "heart-beat": client_hb}))
    frame = await c.next_frame()
    assert frame == Frame("CONNECTED", {"version": "1.2", "heart-beat": server_hb})
    await c.close()


async def test_connected_bytes_exactly(server: SimServer) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"CONNECT\naccept-version:1.2\nhost:host2\n\n\0")
    async with asyncio.timeout(5):
        data = await reader.readuntil(b"\0")
    assert data == b"CONNECTED\nversion:1.2\nheart-beat:0,0\n\n\0"
    writer.close()


@pytest.mark.parametrize("versions", [None, "1.1", "1.1,1.2"])
async def test_version_refused_but_connection_kept(server: SimServer, versions: str | None) -> None:
    # (A bare "CONNECT\n\n\0" is 10 bytes, fewer than VDSM's detector waits for.)
    headers = {"heart-beat": "0,0"} if versions is None else {"accept-version": versions}
    c = await raw_connect(server.port, Frame("CONNECT", headers))
    assert await c.next_frame() == Frame("ERROR", {"content-length": "19"}, b"Version unsupported")
    c.send_frame(Frame("CONNECT", {"accept-version": "1.2"}))
    assert (await c.next_frame()).command == "CONNECTED"
    await c.close()


async def test_host_header_selects_host(server: SimServer, cluster: FakeCluster) -> None:
    default = await StompClient.connect(server.port)
    second = await StompClient.connect(server.port, host="host2")
    assert await default.call("Test.whoami") == "host1"
    assert await second.call("Test.whoami") == "host2"
    await default.close()
    await second.close()


async def test_unknown_host_gets_error_and_close(server: SimServer) -> None:
    c = await raw_connect(server.port, Frame("CONNECT", {"accept-version": "1.2", "host": "nope"}))
    frame = await c.next_frame()
    assert frame.command == "ERROR"
    assert frame.body == b"Unknown host: 'nope'"
    await c.wait_closed()
    await c.close()


async def test_port_per_host_ignores_host_header(server: SimServer) -> None:
    assert set(server.host_ports) == {"host2"}
    c = await StompClient.connect(server.host_ports["host2"], host="host1")
    assert await c.call("Test.whoami") == "host2"
    await c.close()


async def test_frames_before_connect_use_default_host(server: SimServer) -> None:
    # VDSM does not insist on CONNECT first.
    c = await StompClient.open(server.port)
    c.subscribe(RESPONSES)
    assert await c.call("Test.whoami") == "host1"
    await c.close()


# -- subscriptions ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "text"),
    [
        ({"destination": "a"}, b"Missing destination or subscription id header"),
        ({"id": "s"}, b"Missing destination or subscription id header"),
        ({"destination": "", "id": "s"}, b"Missing destination or subscription id header"),
    ],
)
async def test_subscribe_missing_headers(
    client: StompClient, headers: dict[str, str], text: bytes
) -> None:
    client.send_frame(Frame("SUBSCRIBE", headers))
    frame = await client.next_frame()
    assert (frame.command, frame.body) == ("ERROR", text)
    await settle(client)  # the connection survives


async def test_duplicate_subscription_and_unsubscribe_errors(client: StompClient) -> None:
    client.subscribe("x.y", "dup")
    client.subscribe("x.z", "dup")
    assert (await client.next_frame()).body == b"Subscription id already exists"
    client.send_frame(Frame("UNSUBSCRIBE", {}))
    assert (await client.next_frame()).body == b"Missing id header"
    client.unsubscribe("never-subscribed")  # ignored, as VDSM does
    client.unsubscribe("dup")
    client.subscribe("x.z", "dup")  # free again
    await settle(client)
    assert client.frames.empty()


async def test_send_to_unsubscribed_destination(client: StompClient) -> None:
    client.send_frame(Frame("SEND", {"destination": "nobody.listens"}, b"hi"))
    frame = await client.next_frame()
    assert (frame.command, frame.body) == ("ERROR", b"Subscription not available")


async def test_send_is_forwarded_to_subscribers_and_parents(server: SimServer) -> None:
    a = await StompClient.connect(server.port, subscribe_replies=False)
    b = await StompClient.connect(server.port, subscribe_replies=False)
    a.subscribe("app.chat", "a-sub")
    b.subscribe("app", "b-sub")
    a.subscribe("a.replies")
    b.subscribe("b.replies")
    await settle(a, "a.replies")
    await settle(b, "b.replies")
    b.send_frame(Frame("SEND", {"destination": "app.chat", "x-extra": "1"}, b"hello"))
    for c, sub in ((a, "a-sub"), (b, "b-sub")):
        frame = await c.next_frame()
        assert frame == Frame(
            "MESSAGE",
            {"subscription": sub, "destination": "app.chat", "x-extra": "1", "content-length": "5"},
            b"hello",
        )
    await a.close()
    await b.close()


async def test_unsubscribed_destination_no_longer_receives(server: SimServer) -> None:
    c = await StompClient.connect(server.port, subscribe_replies=False)
    sub = c.subscribe(RESPONSES)
    assert await c.call("Host.ping2") is True
    c.unsubscribe(sub)
    c.subscribe("mine")
    assert await c.call("Host.ping2", reply_to="mine") is True
    c.send_request({"jsonrpc": "2.0", "id": "lost", "method": "Host.ping2"})
    assert await c.call("Host.ping2", reply_to="mine") is True
    assert all(json.loads(m.body)["id"] != "lost" for m in c.messages)
    await c.close()


# -- reply routing ---------------------------------------------------------------------------


async def test_reply_goes_to_every_subscriber_of_reply_to_on_that_host(server: SimServer) -> None:
    a = await StompClient.connect(server.port)
    b = await StompClient.connect(server.port)
    other_host = await StompClient.connect(server.port, host="host2")
    await settle(b)
    await settle(other_host)
    reply = await a.request("Test.echo", {"k": "v"}, req_id="r-1")
    assert reply == {"jsonrpc": "2.0", "id": "r-1", "result": {"k": "v"}}
    await wait_until(lambda: any(b"r-1" in m.body for m in b.messages))
    (message,) = [m for m in b.messages if b"r-1" in m.body]
    assert message.headers == {
        "destination": RESPONSES,
        "content-type": "application/json",
        "subscription": "sub-1",
        "content-length": str(len(message.body)),
    }
    assert message.body == b'{"jsonrpc": "2.0", "id": "r-1", "result": {"k": "v"}}'
    await settle(other_host)
    assert not any(b"r-1" in m.body for m in other_host.messages)
    for c in (a, b, other_host):
        await c.close()


async def test_reply_to_custom_destination_and_request_queues(client: StompClient) -> None:
    client.subscribe("my.replies", "mine")
    assert await client.call("Test.void", destination=IRS_REQUESTS, reply_to="my.replies") is True
    assert client.messages[-1].headers["subscription"] == "mine"
    # "<queue>.<anything>" is a request queue too.
    assert await client.call("Host.ping2", destination="jms.topic.vdsm_requests.x") is True


async def test_send_without_reply_to_gets_no_reply(
    client: StompClient, cluster: FakeCluster
) -> None:
    client.send_request({"jsonrpc": "2.0", "id": "quiet", "method": "Host.ping2"}, reply_to=None)
    await settle(client)
    assert cluster.hosts["host1"].called("Host.ping2") == 2
    assert not any(b"quiet" in m.body for m in client.messages)


async def test_duplicate_ids_are_all_answered(client: StompClient, cluster: FakeCluster) -> None:
    host = cluster.hosts["host1"]
    first = client.expect("dup")
    client.send_request({"jsonrpc": "2.0", "id": "dup", "method": "Test.wait"})
    client.send_request({"jsonrpc": "2.0", "id": "dup", "method": "Test.wait"})
    await wait_until(lambda: host.called("Test.wait") == 2)
    host.gate.set()
    async with asyncio.timeout(5):
        assert (await first)["result"] == "released"
    await wait_until(lambda: sum(b'"dup"' in m.body for m in client.messages) == 2)


# -- JSON-RPC --------------------------------------------------------------------------------


async def test_results_and_vdsm_errors(client: StompClient) -> None:
    assert await client.call("Test.echo", [1, "a"]) == [1, "a"]
    assert await client.call("Test.void") is True
    with pytest.raises(RpcError) as err:
        await client.call("Task.getStatus", {"taskID": "T"})
    assert (err.value.code, err.value.message) == (401, "Task id unknown: ('T',)")


@pytest.mark.parametrize(
    ("method", "code", "message"),
    [
        ("No.such", -32601, "The method does not exist or is not available: {'method': 'No.such'}"),
        ("Test.badParams", -32602, "Test.badParams: missing parameter x"),
        ("Test.crash", -32603, "Internal JSON-RPC error: {'reason': 'kaboom'}"),
        ("Test.unencodable", -32603, "Internal JSON-RPC error"),
    ],
)
async def test_protocol_errors_from_calls(
    client: StompClient, method: str, code: int, message: str
) -> None:
    reply = await client.request(method, {}, req_id="e1")
    assert reply == {"jsonrpc": "2.0", "id": "e1", "error": {"code": code, "message": message}}


async def test_parse_error(client: StompClient) -> None:
    fut = client.expect(None)
    client.send_request(b"{not json")
    async with asyncio.timeout(5):
        reply = await fut
    assert reply == {
        "jsonrpc": "2.0",
        "id": None,
        "error": {
            "code": -32700,
            "message": "Invalid JSON was received by the server. An error occurred on the "
            "server while parsing the JSON text.",
        },
    }


@pytest.mark.parametrize(
    ("request_obj", "code", "message"),
    [
        (
            {"id": 1, "method": "Host.ping2"},
            -32600,
            "Invalid request: {'request': {'id': 1, 'method': 'Host.ping2'}, "
            "'reason': 'Wrong protocol version'}",
        ),
        (
            {"jsonrpc": "2.0", "id": 1},
            -32600,
            "Invalid request: {'request': {'jsonrpc': '2.0', 'id': 1}, "
            "'reason': 'missing method header in method'}",
        ),
        (
            {"jsonrpc": "2.0", "id": 1, "method": "Host.ping2", "params": 3},
            -32600,
            "Invalid request: {'request': {'jsonrpc': '2.0', 'id': 1, 'method': 'Host.ping2', "
            "'params': 3}, 'reason': 'wrong params type'}",
        ),
        ([], -32600, "Invalid request: {'request': [], 'reason': 'request batch is empty'}"),
        (42, -32603, "Internal JSON-RPC error"),
    ],
)
async def test_invalid_requests(
    client: StompClient, request_obj: Any, code: int, message: str
) -> None:
    fut = client.expect(None)
    client.send_request(request_obj)
    async with asyncio.timeout(5):
        reply = await fut
    # VDSM answers invalid requests with a null id, whatever id they had.
    assert reply == {"jsonrpc": "2.0", "id": None, "error": {"code": code, "message": message}}


async def test_batch_answered_as_one_array(client: StompClient, cluster: FakeCluster) -> None:
    reply_fut = client.expect("b1")
    client.send_request(
        [
            {"jsonrpc": "2.0", "id": "b1", "method": "Host.ping2"},
            {"jsonrpc": "2.0", "method": "Test.void"},  # notification: runs, no answer
            {"jsonrpc": "1.0", "id": "bad", "method": "Host.ping2"},
            {"jsonrpc": "2.0", "id": "b2", "method": "Task.getStatus", "params": ["T"]},
        ]
    )
    async with asyncio.timeout(5):
        await reply_fut
    body = client.messages[-1].body
    assert body == (
        b'[{"jsonrpc": "2.0", "id": null, "error": {"code": -32600, "message": "Invalid request: '
        b"{'request': {'jsonrpc': '1.0', 'id': 'bad', 'method': 'Host.ping2'}, "
        b"'reason': 'Wrong protocol version'}\"}},"
        b'{"jsonrpc": "2.0", "id": "b1", "result": true},'
        b'{"jsonrpc": "2.0", "id": "b2", "error": {"code": 401, "message": "Task id unknown: '
        b"('T',)\"}}]"
    )
    assert cluster.hosts["host1"].called("Test.void") == 1


async def test_single_answer_batch_is_a_bare_object(client: StompClient) -> None:
    reply = await client.batch([{"jsonrpc": "2.0", "id": "only", "method": "Host.ping2"}])
    assert reply == {"jsonrpc": "2.0", "id": "only", "result": True}


async def test_notifications_get_no_reply(client: StompClient, cluster: FakeCluster) -> None:
    client.notify("Test.echo", {"a": 1})
    client.notify("No.such")
    client.send_request([{"jsonrpc": "2.0", "method": "Host.ping2"}])
    await settle(client)
    host = cluster.hosts["host1"]
    assert host.called("Test.echo") == 1
    assert host.called("Host.ping2") == 2
    assert len(client.messages) == 1
    assert client.frames.empty()


async def test_strict_vdsm_batches_drops_array_replies(cluster: FakeCluster) -> None:
    options = WireOptions(strict_vdsm_batches=True)
    async with SimServer(cluster, SimClock(0.001), options=options) as srv:
        c = await StompClient.connect(srv.port)
        c.send_request(
            [
                {"jsonrpc": "2.0", "id": "x1", "method": "Host.ping2"},
                {"jsonrpc": "2.0", "id": "x2", "method": "Host.ping2"},
            ]
        )
        await wait_until(lambda: cluster.hosts["host1"].called("Host.ping2") == 2)
        await settle(c)
        assert not any(b"x1" in m.body for m in c.messages)
        await c.close()


# -- events ----------------------------------------------------------------------------------


async def test_events_reach_event_subscribers_of_that_host(
    server: SimServer, cluster: FakeCluster
) -> None:
    listener = await StompClient.connect(server.port, subscribe_events=True)
    other = await StompClient.connect(server.port, host="host2", subscribe_events=True)
    await settle(listener)
    await settle(other)
    trigger = await StompClient.connect(server.port)
    assert await trigger.call("Test.publish") is True
    method, params = await listener.next_event()
    assert method == "|virt|VM_status|vm1"
    assert params["vm1"] == {"status": "Up"} and isinstance(params["notify_time"], int)
    (frame,) = [m for m in listener.messages if m.headers["destination"] == EVENTS]
    assert frame.headers["subscription"] == listener.events_sub
    assert json.loads(frame.body) == {"jsonrpc": "2.0", "method": method, "params": params}
    assert b'"id"' not in frame.body
    await settle(other)
    assert other.events.empty()
    for c in (listener, other, trigger):
        await c.close()


# -- closing and malformed input -------------------------------------------------------------


async def test_disconnect_with_and_without_receipt(server: SimServer) -> None:
    c = await StompClient.connect(server.port)
    c.send_frame(Frame("DISCONNECT", {"receipt": "bye-1"}))
    assert await c.next_frame() == Frame("RECEIPT", {"receipt-id": "bye-1"})
    await settle(c)  # VDSM leaves closing to the client
    c.send_frame(Frame("DISCONNECT", {}))
    await c.wait_closed()
    await c.close()


@pytest.mark.parametrize(
    "garbage",
    [
        b"SEND\nbad header line\n\n\0",
        b"SEND\ndestination:a:b\n\n\0",
        b"SEND\ncontent-length:3\n\nabcd\0",
        b"ACK\nid:1\n\n\0",
        b"SEND\n\n{}\0",  # no destination
        b"BEGIN\ntransaction:t\n\n\0",
    ],
)
async def test_malformed_frames_close_only_that_connection(
    server: SimServer, client: StompClient, garbage: bytes
) -> None:
    bad = await StompClient.connect(server.port)
    bad.send_raw(garbage)
    await bad.wait_closed()
    assert bad.frames.empty()  # VDSM closes without an ERROR frame
    await bad.close()
    await settle(client)


@pytest.mark.parametrize(
    "opening",
    [b"STOMP\naccept-version:1.2\n\n\0", b"HELLO WORLD\r\n\r\n", b"\n\n\n\n\n\n\n\n\n\n\n\n"],
)
async def test_unrecognized_protocol_is_closed(server: SimServer, opening: bytes) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(opening)
    async with asyncio.timeout(5):
        assert await reader.read() == b""
    writer.close()


async def test_short_opening_waits_for_detection_then_times_out(cluster: FakeCluster) -> None:
    # VDSM's detector peeks for 11 bytes (len("UNSUBSCRIBE")) and gives up after its timeout.
    async with SimServer(cluster, detect_timeout=0.2) as srv:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(b"CONNECT\n\n\0")
        start = time.monotonic()
        async with asyncio.timeout(5):
            assert await reader.read() == b""
        assert time.monotonic() - start >= 0.15
        writer.close()


async def test_oversized_body_is_refused(cluster: FakeCluster) -> None:
    options = WireOptions(max_frame_size=64 * 1024)
    async with SimServer(cluster, SimClock(0.001), options=options) as srv:
        c = await StompClient.connect(srv.port)
        c.send_raw(b"SEND\ndestination:jms.topic.vdsm_requests\ncontent-length:1048576\n\n")
        await c.wait_closed()
        await c.close()
        ok = await StompClient.connect(srv.port)
        body = json.dumps(
            {"jsonrpc": "2.0", "id": "big", "method": "Test.echo", "params": ["x" * 60000]}
        )
        fut = ok.expect("big")
        ok.send_request(body.encode())
        async with asyncio.timeout(5):
            assert (await fut)["result"] == ["x" * 60000]
        await ok.close()


class WriteCounter:
    """The session's real transport, with every `write` recorded on its way through."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))
        self.transport.write(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.transport, name)


async def test_replies_of_one_read_go_out_in_one_write(server: SimServer) -> None:
    """Requests that arrive together are answered by one socket write: the same frames, in the
    same order, as one reply per write used to send."""
    client = await StompClient.connect(server.port)
    await settle(client)
    (session,) = server.broker.wires["host1"].sessions
    assert session.transport is not None
    counter = WriteCounter(session.transport)
    session.transport = counter  # type: ignore[assignment]
    before = len(client.messages)
    ids = [f"r{i}" for i in range(20)]
    futures = [client.expect(i) for i in ids]
    client.send_raw(
        b"".join(
            encode_frame(
                Frame(
                    "SEND",
                    {"destination": "jms.topic.vdsm_requests", "reply-to": RESPONSES},
                    json.dumps({"jsonrpc": "2.0", "id": i, "method": "Host.ping2"}).encode(),
                )
            )
            for i in ids
        )
    )
    async with asyncio.timeout(5):
        await asyncio.gather(*futures)
    frames = client.messages[before:]
    assert [json.loads(f.body)["id"] for f in frames] == ids
    assert b"".join(counter.writes) == b"".join(encode_frame(f) for f in frames)
    assert len(counter.writes) <= 2  # one per read of the requests (one read here, as a rule)
    await client.close()


def _sends(*calls: tuple[str, str], reply_to: str = RESPONSES) -> bytes:
    """SEND frames of (id, method) requests, as one buffer for one socket write."""
    return b"".join(
        encode_frame(
            Frame(
                "SEND",
                {"destination": "jms.topic.vdsm_requests", "reply-to": reply_to},
                json.dumps({"jsonrpc": "2.0", "id": i, "method": m}).encode(),
            )
        )
        for i, m in calls
    )


async def test_requests_that_never_wait_run_without_a_task(
    server: SimServer, cluster: FakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verbs that never wait are answered in the read; once one request of a read needs a
    task, the rest of that read follows it in tasks, so requests still start in order."""
    spawned: list[str] = []
    spawn = server.broker.spawn

    def counting_spawn(coro: Any) -> None:
        spawned.append(coro.cr_frame.f_locals["message"]["method"])
        spawn(coro)

    monkeypatch.setattr(server.broker, "spawn", counting_spawn)
    client = await StompClient.connect(server.port)
    host = cluster.hosts["host1"]
    futures = [client.expect(i) for i in ("a", "b")]
    client.send_raw(_sends(("a", "Host.ping2"), ("b", "Test.whoami")))
    async with asyncio.timeout(5):
        assert [r["result"] for r in await asyncio.gather(*futures)] == [True, "host1"]
    assert spawned == []
    waiting, after = client.expect("w"), client.expect("p")
    client.send_raw(_sends(("w", "Test.wait"), ("p", "Host.ping2")))
    await wait_until(lambda: host.called("Host.ping2") == 2)
    assert [m for m, _ in host.calls[-2:]] == ["Test.wait", "Host.ping2"]
    assert spawned == ["Test.wait", "Host.ping2"]
    host.gate.set()
    async with asyncio.timeout(5):
        assert (await waiting)["result"] == "released"
        assert (await after)["result"] is True
    await client.close()


async def test_reply_reaches_a_subscription_made_later_in_the_same_read(
    server: SimServer,
) -> None:
    """A request answered at once is still answered after the rest of its read is handled."""
    client = await StompClient.connect(server.port, subscribe_replies=False)
    reply = client.expect("s")
    client.send_raw(
        _sends(("s", "Host.ping2"), reply_to="late.replies")
        + encode_frame(Frame("SUBSCRIBE", {"destination": "late.replies", "id": "L"}))
    )
    async with asyncio.timeout(5):
        assert (await reply)["result"] is True
    assert client.messages[-1].headers["subscription"] == "L"
    await client.close()


async def test_slow_reader_is_dropped_without_stalling_others(cluster: FakeCluster) -> None:
    options = WireOptions(max_outbound_buffer=256 * 1024)
    async with SimServer(cluster, SimClock(0.001), options=options) as srv:
        stalled = await StompClient.connect(srv.port)
        stalled.subscribe("stuff", "s")
        await settle(stalled)
        (session,) = srv.broker.wires["host1"].sessions
        stalled._reader_task.cancel()  # stop reading: kernel buffers fill, then ours
        live = await StompClient.connect(srv.port)
        payload = b"y" * 65536
        for _ in range(1000):  # up to 65 MB towards a client that reads nothing
            live.send_frame(Frame("SEND", {"destination": "stuff"}, payload))
            await live.writer.drain()
            if session.closed:
                break
        assert session.closed
        await settle(live)
        await live.close()
        await stalled.close()


# -- HTTP and TLS on the same port -----------------------------------------------------------


async def test_http_jsonrpc_on_the_stomp_port(server: SimServer, cluster: FakeCluster) -> None:
    url = f"http://127.0.0.1:{server.port}/hosts/host2/jsonrpc"
    async with aiohttp.ClientSession() as session:
        async with session.post(url, data=b'{"jsonrpc":"2.0","id":1,"method":"Test.whoami"}') as r:
            assert r.status == 200
            assert r.content_type == "application/json"
            assert await r.read() == b'{"jsonrpc": "2.0", "id": 1, "result": "host2"}'
        async with session.post(url, data=b'[{"jsonrpc":"2.0","method":"Test.void"}]') as r:
            assert r.status == 204
        async with session.post(url, data=b"nope") as r:
            assert (await r.json())["error"]["code"] == -32700
        async with session.post(url.replace("host2", "host9"), data=b"{}") as r:
            assert r.status == 404
            assert (await r.json())["error"]["code"] == "unknown_host"
        cluster.hosts["host2"].faults.settings.down = True
        async with session.post(url, data=b"{}") as r:
            assert r.status == 503


async def test_control_app_is_mounted(cluster: FakeCluster) -> None:
    from aiohttp import web

    control = web.Application()

    async def hello(request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    control.router.add_get("/hello", hello)
    async with SimServer(cluster, control_app=control) as srv:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"http://127.0.0.1:{srv.port}/_control/hello") as r:
                assert await r.json() == {"ok": True}


async def test_tls_stomp_and_https_share_the_port(cluster: FakeCluster) -> None:
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)
    async with SimServer(cluster, ssl=server_ctx) as srv:
        c = await StompClient.connect(srv.port, ssl=client_ctx, server_hostname="localhost")
        assert await c.call("Test.whoami") == "host1"
        await c.close()
        url = f"https://localhost:{srv.port}/hosts/host1/jsonrpc"
        connector = aiohttp.TCPConnector(ssl=client_ctx)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.post(
                url, data=b'{"jsonrpc":"2.0","id":1,"method":"Host.ping2"}'
            ) as r:
                assert (await r.json())["result"] is True
        # A plain-text client on the TLS port gets nothing.
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        writer.write(encode_frame(Frame("CONNECT", {"accept-version": "1.2"})))
        async with asyncio.timeout(5):
            assert b"CONNECTED" not in await reader.read()
        writer.close()


# -- wire faults -----------------------------------------------------------------------------


async def test_latency(server: SimServer, client: StompClient, cluster: FakeCluster) -> None:
    cluster.hosts["host1"].faults.settings.latency = 200.0  # x 0.001 = 0.2 s real
    start = time.monotonic()
    await settle(client)
    assert time.monotonic() - start >= 0.2


async def test_dropped_reply_still_executes(
    server: SimServer, client: StompClient, cluster: FakeCluster
) -> None:
    host = cluster.hosts["host1"]
    host.faults.settings.drop_replies = 1.0
    client.send_request({"jsonrpc": "2.0", "id": "gone", "method": "Test.echo", "params": [1]})
    await wait_until(lambda: host.called("Test.echo") == 1)
    host.faults.clear()
    await settle(client)
    assert not any(b"gone" in m.body for m in client.messages)
    assert "gone" not in server.broker.wires["host1"].reply_to  # consumed as if sent


async def test_late_reply_arrives_after_later_requests(
    client: StompClient, cluster: FakeCluster
) -> None:
    host = cluster.hosts["host1"]
    host.faults.settings.late_replies = 1.0
    host.faults.settings.late_delay = 300.0  # 0.3 s real
    late = client.expect("late")
    client.send_request({"jsonrpc": "2.0", "id": "late", "method": "Host.ping2"})
    await wait_until(lambda: host.called("Host.ping2") == 1)
    host.faults.clear()
    await settle(client)
    assert not late.done()
    async with asyncio.timeout(5):
        assert (await late)["result"] is True


async def test_reset_closes_connection_after_the_request_ran(
    server: SimServer, cluster: FakeCluster
) -> None:
    host = cluster.hosts["host1"]
    c = await StompClient.connect(server.port)
    host.faults.settings.reset_connections = 1.0
    c.send_request({"jsonrpc": "2.0", "id": "r", "method": "Test.echo", "params": [1]})
    await c.wait_closed()
    await wait_until(lambda: host.called("Test.echo") == 1)
    host.faults.clear()
    await c.close()
    again = await StompClient.connect(server.port)
    await settle(again)
    await again.close()


async def test_heartbeats_sent_missed_and_silent_client_dropped(cluster: FakeCluster) -> None:
    options = WireOptions(heartbeat_grace=1.0)
    async with SimServer(cluster, SimClock(0.001), options=options) as srv:
        cluster.hosts["host2"].faults.settings.missed_heartbeats = True
        beating = await StompClient.connect(srv.port, heart_beat=(1000, 1000))
        muted = await StompClient.connect(srv.port, host="host2", heart_beat=(0, 1000))
        silent = await StompClient.open(srv.port)
        silent.send_frame(Frame("CONNECT", {"accept-version": "1.2", "heart-beat": "1000,0"}))
        assert (await silent.next_frame()).headers["heart-beat"] == "0,1000"
        start = time.monotonic()
        await silent.wait_closed(within=5)  # expected a beat every 1000 ms, got none
        assert time.monotonic() - start >= 0.9
        await wait_until(lambda: beating.heartbeats >= 1, timeout=5)
        assert muted.heartbeats == 0
        assert not beating.closed.done()  # it sends its own beats, so it is kept
        await settle(beating)
        await settle(muted)
        for c in (beating, muted, silent):
            await c.close()


async def test_down_host_refuses_and_drops_connections(
    server: SimServer, cluster: FakeCluster
) -> None:
    host = cluster.hosts["host1"]
    existing = await StompClient.connect(server.port)
    bystander = await StompClient.connect(server.port, host="host2")
    host.faults.settings.down = True
    assert len(server.broker.wires["host1"].sessions) == 1
    server.disconnect_host("host1")
    assert "host1" not in server.broker.wires  # its tables are gone, as after a restart
    await existing.wait_closed()
    refused = await raw_connect(server.port, Frame("CONNECT", {"accept-version": "1.2"}))
    await refused.wait_closed()
    assert refused.frames.empty()
    await settle(bystander)
    host.faults.settings.down = False
    back = await StompClient.connect(server.port)
    await settle(back)
    for c in (existing, bystander, refused, back):
        await c.close()


async def test_down_without_disconnect_call_still_drops_on_next_frame(
    client: StompClient, cluster: FakeCluster
) -> None:
    cluster.hosts["host1"].faults.settings.down = True
    client.send_request({"jsonrpc": "2.0", "id": "x", "method": "Host.ping2"})
    await client.wait_closed()
    assert cluster.hosts["host1"].called("Host.ping2") == 0


# -- scale -----------------------------------------------------------------------------------


async def test_thousand_concurrent_connections(server: SimServer, cluster: FakeCluster) -> None:
    # Each client replies to a destination of its own: with the shared response topic every reply
    # would go to all 500 connections of the host (VDSM's fan-out), 500,000 frames in all.
    async def one(i: int) -> StompClient:
        c = await StompClient.connect(
            server.port, host="host2" if i % 2 else None, subscribe_replies=False
        )
        c.subscribe(f"replies.{i}")
        assert await c.call("Test.echo", [i], reply_to=f"replies.{i}") == [i]
        return c

    start = time.monotonic()
    async with asyncio.timeout(30):
        clients = await asyncio.gather(*(one(i) for i in range(1000)))
    assert len(server.broker.wires["host1"].sessions) == 500
    assert len(server.broker.wires["host2"].sessions) == 500
    await asyncio.gather(*(c.close() for c in clients))
    await wait_until(lambda: not server.broker.wires["host1"].sessions)
    assert time.monotonic() - start < 15


async def test_http_faults(server: SimServer, cluster: FakeCluster) -> None:
    host = cluster.hosts["host1"]
    url = f"http://127.0.0.1:{server.port}/hosts/host1/jsonrpc"
    ping = b'{"jsonrpc":"2.0","id":1,"method":"Host.ping2"}'
    async with aiohttp.ClientSession() as session:
        for fault in ("reset_connections", "drop_replies"):
            setattr(host.faults.settings, fault, 1.0)
            with pytest.raises(aiohttp.ServerDisconnectedError):
                await session.post(url, data=ping)
            host.faults.clear()
        assert host.called("Host.ping2") == 2  # executed, only the answer was lost
        host.faults.settings.latency = 200.0
        start = time.monotonic()
        async with session.post(url, data=ping) as r:
            assert (await r.json())["result"] is True
        assert time.monotonic() - start >= 0.2


def test_uvloop_transports(cluster: FakeCluster) -> None:
    """The hand-over from the detector relies on set_protocol; uvloop must support it too."""
    import uvloop

    ca = trustme.CA()
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ctx)
    client_ctx = ssl.create_default_context()
    ca.configure_trust(client_ctx)

    async def scenario() -> None:
        async with SimServer(cluster) as plain, SimServer(cluster, ssl=server_ctx) as tls:
            c = await StompClient.connect(plain.port, host="host2")
            assert await c.call("Test.whoami") == "host2"
            await c.close()
            c = await StompClient.connect(tls.port, ssl=client_ctx, server_hostname="localhost")
            assert await c.call("Test.whoami") == "host1"
            await c.close()
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{plain.port}/hosts/host1/jsonrpc"
                async with session.post(
                    url, data=b'{"jsonrpc":"2.0","id":1,"method":"Host.ping2"}'
                ) as r:
                    assert (await r.json())["result"] is True

    uvloop.run(scenario())

"""The polling hot path's shortcuts give exactly the bytes and errors of the plain code paths.

Each shortcut (a pre-encoded MESSAGE head, a one-shot header decode, a cached snapshot JSON) was
added for bench/sim_load.py; these tests pin them to the reference behaviour they replace.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from daemon.vdsm.stomp import (
    Frame,
    StompError,
    _fast_head,
    _slow_head,
    encode_frame,
    encode_head,
    encode_with_head,
)
from vdsm_simulator import jsonrpc
from vdsm_simulator.cluster import Cluster, SimConfig
from vdsm_simulator.errors import MethodNotFound, UnknownTask, VolumeDoesNotExist
from vdsm_simulator.events import EventBus
from vdsm_simulator.faults import HostFaults
from vdsm_simulator.stomp_server import (
    Subscription,
    destination_and_parents,
    is_request_destination,
)

_text = st.text(
    alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\0"), max_size=20
)


@given(
    command=st.sampled_from(["MESSAGE", "SEND", "ERROR", "A:B", "X\\Y"]),
    headers=st.dictionaries(_text.filter(bool), _text, max_size=5),
    body=st.binary(min_size=1, max_size=200),
)
def test_encode_with_head_equals_encode_frame(
    command: str, headers: dict[str, str], body: bytes
) -> None:
    headers.pop("content-length", None)
    frame = Frame(command, headers, body)
    assert encode_with_head(encode_head(command, headers), body) == encode_frame(frame)


def test_encode_head_refuses_content_length() -> None:
    with pytest.raises(ValueError):
        encode_head("MESSAGE", {"content-length": "3"})


def test_subscription_message_is_the_frame_deliver_always_sent() -> None:
    sub = Subscription(None, "jms.topic.vdsm_responses", "sub:1\\x", "auto")  # type: ignore[arg-type]
    headers = {
        "destination": "jms.topic.vdsm_responses",
        "content-type": "application/json",
        "subscription": "sub:1\\x",
    }
    for body in (b'{"jsonrpc": "2.0", "id": "a", "result": true}', b"", b"x" * 5000):
        assert sub.message(body) == encode_frame(Frame("MESSAGE", headers, body))


# Header blocks as the parser hands them over: lines ending in EOL, anything inside.
_line = st.lists(
    st.sampled_from([b"a", b"b", b":", b"\\", b"\\c", b"\\n", b"\r", b"\xc3\xa9", b"\xff", b" "]),
    max_size=8,
).map(b"".join)
_block = st.lists(_line, min_size=1, max_size=5).map(lambda lines: b"\n".join(lines) + b"\n")


def _slow(block: bytes) -> Frame | str:
    try:
        return _slow_head(block)
    except StompError as e:
        return f"error: {e}"


@given(block=_block)
def test_fast_header_decoding_agrees_with_slow(block: bytes) -> None:
    fast = _fast_head(block)
    if fast is not None:
        assert fast == _slow(block)  # same frame; and never accepts what the slow path refuses


@pytest.mark.parametrize(
    "block",
    [
        b"SEND\ndestination:jms.topic.vdsm_requests\nreply-to:r\ncontent-length:12\n",
        b"SEND\r\ndestination:q\r\nkey:v\r\nkey:second\r\n",
        b"CONNECT\naccept-version:1.2\nhost:h\xc3\xa9\n",
        b"MESSAGE\nempty:\n",
    ],
)
def test_fast_header_decoding_takes_the_common_frames(block: bytes) -> None:
    assert _fast_head(block) is not None
    assert _fast_head(block) == _slow_head(block)


def test_request_destinations() -> None:
    assert is_request_destination("jms.topic.vdsm_requests")
    assert is_request_destination("jms.topic.vdsm_irs_requests")
    assert is_request_destination("jms.topic.vdsm_requests.abc")
    assert not is_request_destination("jms.topic.vdsm_requestsX")
    assert not is_request_destination("jms.topic")
    assert destination_and_parents("a.b.c") == ("a", "a.b", "a.b.c")
    assert destination_and_parents("a") == ("a",)
    assert destination_and_parents("a..b") == ("a", "a.", "a..b")


class SnapshotHost:
    """Hands out the same published snapshot until told to publish another."""

    def __init__(self) -> None:
        self.name = "host1"
        self.faults = HostFaults(1, "host1")
        self.events = EventBus()
        self.snapshot: Any = {"t1": {"taskID": "t1", "taskState": "running", "message": "é"}}

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        return self.snapshot

    def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        return self.snapshot


def _reference(req_id: Any, result: Any) -> bytes:
    return json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result}).encode()


@pytest.mark.parametrize("method", [*sorted(jsonrpc.SNAPSHOT_METHODS), "Host.other"])
async def test_snapshot_replies_are_byte_identical_and_never_stale(method: str) -> None:
    host = SnapshotHost()
    for req_id in ("a", 7, 'ü"x', 1.5):
        reply = await jsonrpc.handle_message(
            host, {"jsonrpc": "2.0", "method": method, "id": req_id}
        )
        assert reply is not None and reply.id == req_id
        assert reply.data == _reference(req_id, host.snapshot)
    host.snapshot = {"t2": {"taskID": "t2", "taskState": "finished"}}  # a new publication
    reply = await jsonrpc.handle_message(host, {"jsonrpc": "2.0", "method": method, "id": "b"})
    assert reply is not None and reply.data == _reference("b", host.snapshot)


async def test_unencodable_snapshot_is_an_internal_error() -> None:
    host = SnapshotHost()
    host.snapshot = {"t": object()}
    reply = await jsonrpc.handle_message(
        host, {"jsonrpc": "2.0", "method": "Host.getAllTasksStatuses", "id": "x"}
    )
    assert reply is not None
    assert json.loads(reply.data) == {
        "jsonrpc": "2.0",
        "id": "x",
        "error": {"code": -32603, "message": "Internal JSON-RPC error"},
    }


@given(req_id=st.text() | st.integers() | st.none() | st.floats(allow_nan=False))
def test_void_answer_is_the_json_dumps_text(req_id: Any) -> None:
    """The shortcut for `true` results writes what `json.dumps` of the response writes."""
    assert jsonrpc._response(req_id, result=True) == _reference(req_id, True).decode()


def _loads_or_failed(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return jsonrpc.PARSE_FAILED


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types all the way down (1 == 1.0 == True would hide a change)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and a != a:
        return bool(b != b)
    return bool(a == b)


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(min_value=-(10**30), max_value=10**30)
    | st.floats()
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@given(value=_json_values, ensure_ascii=st.booleans())
def test_parse_agrees_with_json_loads_on_documents(value: Any, ensure_ascii: bool) -> None:
    payload = json.dumps(value, ensure_ascii=ensure_ascii).encode("utf-8", "surrogatepass")
    assert _same(jsonrpc.parse(payload), _loads_or_failed(payload))


@given(
    payload=st.binary(max_size=40)
    | st.sampled_from(
        [
            b"123456789012345678901234567890",
            b'{"id": 18446744073709551616}',
            b"1e400",
            b"NaN",
            b"-0",
            b'"\\ud800"',
            b"\xef\xbb\xbf{}",
            "{}".encode("utf-16"),
            b"[" * 2000 + b"]" * 2000,
            b'{"a": 1, "a": 2}',
        ]
    )
)
def test_parse_agrees_with_json_loads_on_any_bytes(payload: bytes) -> None:
    parsed, reference = jsonrpc.parse(payload), _loads_or_failed(payload)
    if reference is jsonrpc.PARSE_FAILED:
        assert parsed is jsonrpc.PARSE_FAILED
    else:
        assert _same(parsed, reference)


def test_request_ids_of_one_request() -> None:
    assert list(jsonrpc.request_ids({"id": "a"})) == ["a"]
    assert list(jsonrpc.request_ids({"id": 3})) == [3]
    assert list(jsonrpc.request_ids({"id": ["unhashable"]})) == []
    assert list(jsonrpc.request_ids({})) == [None]


class SyncHost:
    """Verbs that never wait, each ending one way an answer can end."""

    def __init__(self) -> None:
        self.name = "host1"
        self.faults = HostFaults(1, "host1")
        self.events = EventBus()

    def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        match method:
            case "Ok.value":
                return {"a": [1, "é"], "params": params}
            case "Ok.void":
                return None
            case "Err.vdsm":
                raise VolumeDoesNotExist("V")
            case "Err.crash":
                raise RuntimeError("kaboom")
            case "Later":
                return jsonrpc.NOT_NOW
        raise MethodNotFound(method)

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        if method == "Later":
            return "later"
        return self.call_now(method, params)


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": "i", "method": "Ok.value", "params": {"x": 1}},
        {"jsonrpc": "2.0", "id": 7, "method": "Ok.void"},
        {"jsonrpc": "2.0", "method": "Ok.void"},  # a notification: no answer
        {"jsonrpc": "2.0", "id": "e", "method": "Err.vdsm"},
        {"jsonrpc": "2.0", "id": "c", "method": "Err.crash"},
        {"jsonrpc": "2.0", "id": "n", "method": "No.such"},
        {"jsonrpc": "1.0", "id": "v", "method": "Ok.void"},
        {"jsonrpc": "2.0", "id": "p", "method": "Ok.void", "params": 3},
    ],
)
async def test_answer_now_is_handle_message(message: dict[str, Any]) -> None:
    host = SyncHost()
    now = jsonrpc.answer_now(host, message)
    later = await jsonrpc.handle_message(host, message)
    assert not isinstance(now, type(jsonrpc.NOT_NOW))
    assert now == later


@pytest.mark.parametrize(
    "message",
    [
        {"jsonrpc": "2.0", "id": "l", "method": "Later"},
        {"jsonrpc": "2.0", "id": "m", "method": 5},
        [{"jsonrpc": "2.0", "id": "b", "method": "Ok.void"}],
        jsonrpc.PARSE_FAILED,
    ],
)
def test_answer_now_leaves_what_may_wait_to_a_task(message: Any) -> None:
    assert jsonrpc.answer_now(SyncHost(), message) is jsonrpc.NOT_NOW


async def test_sim_host_runs_only_verbs_that_never_wait_now() -> None:
    cluster = Cluster(SimConfig(hosts=1, pools=1))
    await cluster.start()
    try:
        host = cluster.hosts["host1"]
        calls = host.calls
        assert host.call_now("Host.ping2", {}) is True
        assert host.call_now("Host.getAllTasksStatuses", {}) == {}
        with pytest.raises(UnknownTask):
            host.call_now("Task.stop", {"taskID": "T"})
        assert host.calls == calls + 3
        # a verb that may wait, or none at all: nothing run, nothing counted
        assert host.call_now("Volume.create", {}) is jsonrpc.NOT_NOW
        assert host.call_now("No.such", {}) is jsonrpc.NOT_NOW
        assert host.calls == calls + 3
    finally:
        await cluster.close()

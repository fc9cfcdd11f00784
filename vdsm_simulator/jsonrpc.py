"""JSON-RPC 2.0 request handling, as VDSM's `yajsonrpc.JsonRpcServer` answers it.

`jsonrpcclient` only builds and parses the client's side, so the server side is hand-written here
to reproduce VDSM's own behaviour and texts (oVirt/vdsm `lib/yajsonrpc/__init__.py`,
`exception.py`, `lib/vdsm/common/exception.py`):

* undecodable JSON: -32700 with VDSM's long text and ``id: null``;
* an array is a batch answered by one array; an empty array is -32600 "request batch is empty";
* an element that is not an object: -32603 (VDSM fails on ``.get`` and reports an internal error);
* ``jsonrpc`` other than "2.0", no ``method``, ``params`` neither array nor object: -32600 with
  ``id: null`` and VDSM's ``Invalid request: {'request': ..., 'reason': ...}`` text;
* a request without ``id`` (or with ``id: null``) is a notification: it runs, nothing is answered;
* a void verb answers ``true``; a `VdsmError` answers its own code; any other exception -32603;
* duplicate ids are not checked.

Responses are written with ``json.dumps`` defaults (``", "`` and ``": "`` separators, keys in
the order jsonrpc, id, result|error) and a batch is ``"[" + ",".join(...) + "]"``, byte for byte
what VDSM sends.

Where VDSM differs from the JSON-RPC spec in ways a simulator should not copy: VDSM's STOMP
reply path (`StompServer.send`) refuses anything but a JSON object, so real VDSM never answers a
batch over STOMP and an all-notification message raises in its server thread. The STOMP layer
can reproduce the first (`strict_vdsm_batches`); the second is not reproduced.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Any, Final, Protocol

import orjson

from vdsm_simulator.errors import JsonRpcError, MethodNotFound, VdsmError
from vdsm_simulator.events import EventBus
from vdsm_simulator.faults import HostFaults

log = logging.getLogger(__name__)

PARSE_ERROR_TEXT: Final = (
    "Invalid JSON was received by the server. "
    "An error occurred on the server while parsing the JSON text."
)
INVALID_REQUEST_TEXT: Final = "Invalid request"
METHOD_NOT_FOUND_TEXT: Final = "The method does not exist or is not available"
INTERNAL_ERROR_TEXT: Final = "Internal JSON-RPC error"


class RpcHost(Protocol):
    """What the wire layer needs from one simulated host."""

    @property
    def name(self) -> str: ...

    @property
    def faults(self) -> HostFaults: ...

    @property
    def events(self) -> EventBus: ...

    async def call(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """Run one verb; raise `VdsmError` / `JsonRpcError` subclasses for coded failures."""
        ...

    def call_now(self, method: str, params: dict[str, Any] | list[Any]) -> Any:
        """`call` run synchronously when the verb never waits; else `NOT_NOW`, having done
        nothing (the wire then `call`s it from a task)."""
        ...


class _NotNow:
    """Marks a call that has to run in a task (its verb may wait)."""


NOT_NOW: Final = _NotNow()


class HostDirectory(Protocol):
    """How the servers find hosts; the simulator's `Cluster` implements it."""

    def get_host(self, name: str | None) -> RpcHost | None:
        """The host called `name`; `None` asks for the default host (``host1``)."""
        ...


def _context_text(msg: str, context: dict[str, Any]) -> str:
    """VDSM's `ContextException.__str__`: the message, then the context dict's Python repr."""
    return f"{msg}: {context!r}" if context else msg


def _error(code: int, message: str) -> dict[str, Any]:
    return {"code": code, "message": message}


def _invalid(request: Any, reason: str) -> dict[str, Any]:
    return _error(
        -32600, _context_text(INVALID_REQUEST_TEXT, {"request": request, "reason": reason})
    )


def _response(req_id: Any, *, result: Any = None, error: dict[str, Any] | None = None) -> str:
    if result is True and error is None and type(req_id) is str:
        # A void verb's answer (Task.stop, Task.clear: most of a cancel burst). `json.dumps` of
        # the whole dict builds an encoder per call, 7 % of the simulator's CPU in the burst;
        # with default separators its text is exactly this.
        return '{"jsonrpc": "2.0", "id": ' + json.dumps(req_id) + ', "result": true}'
    if error is not None:
        return json.dumps({"jsonrpc": "2.0", "id": req_id, "error": error})
    try:
        return json.dumps({"jsonrpc": "2.0", "id": req_id, "result": result})
    except (TypeError, ValueError):
        log.exception("result of request %r cannot be encoded", req_id)
        return json.dumps(
            {"jsonrpc": "2.0", "id": req_id, "error": _error(-32603, INTERNAL_ERROR_TEXT)}
        )


# Every digit as "0", anything else as " ": a run of 19 digits is then a plain substring search
# (the equivalent regex cost three times orjson's whole decode).
_DIGITS_AS_ZEROS: Final = bytes(0x30 if 0x30 <= b <= 0x39 else 0x20 for b in range(256))
_LONG_DIGIT_RUN: Final = b"0" * 19


class _ParseFailed:
    """Marks a payload that is not JSON (distinct from a payload that decodes to ``null``)."""


PARSE_FAILED: Final = _ParseFailed()


def parse(payload: bytes) -> Any:
    """Decode a message body, or `PARSE_FAILED`. Kept apart so STOMP can read ids first.

    orjson decodes a request 5x faster (the stdlib decoder was 7 % of the simulator's CPU in a
    cancel burst) but refuses more: only UTF-8, no NaN, no lone surrogates, no nesting past
    1,024; whatever it refuses goes to `json.loads`, whose answer (a value or a parse error) is
    the one VDSM gives. It also reads an integer beyond 64 bits as a float where `json.loads`
    keeps it exact, so a body with 19 digits in a row (anywhere, strings included) skips it.
    """
    if _LONG_DIGIT_RUN not in payload.translate(_DIGITS_AS_ZEROS):
        try:
            return orjson.loads(payload)
        except orjson.JSONDecodeError:
            pass
    try:
        return json.loads(payload)
    except (ValueError, RecursionError):
        return PARSE_FAILED


def request_ids(message: Any) -> Iterator[Hashable]:
    """The ids VDSM's STOMP adapter maps to a SEND's reply-to, in its order.

    Like VDSM it walks nested arrays and stops at the first element that is not an object
    (where VDSM's ``.get`` raises); an unhashable id also stops the walk.
    """
    if isinstance(message, dict):  # the common case first: one request
        req_id = message.get("id")
        # str first: the ABC check alone was 3 % of the simulator's CPU in a cancel burst
        if type(req_id) is str or isinstance(req_id, Hashable):
            yield req_id
    elif isinstance(message, list):
        for item in message:
            if not isinstance(item, list | dict):
                return
            yield from request_ids(item)


@dataclass(slots=True)
class _Request:
    id: Any
    method: Any
    params: dict[str, Any] | list[Any]


def _check_request(raw: Any) -> _Request | dict[str, Any]:
    """A runnable request, or the error object VDSM answers (with ``id: null``)."""
    if not isinstance(raw, dict):
        return _error(-32603, INTERNAL_ERROR_TEXT)
    if raw.get("jsonrpc") != "2.0":
        return _invalid(raw, "Wrong protocol version")
    method = raw.get("method")
    if method is None:
        return _invalid(raw, "missing method header in method")
    params = raw.get("params", [])
    if not isinstance(params, list | dict):
        return _invalid(raw, "wrong params type")
    return _Request(raw.get("id"), method, params)


async def _run(host: RpcHost, request: _Request) -> tuple[bool, Any]:
    """Call the host: ``(True, result)`` or ``(False, error object)``."""
    if not isinstance(request.method, str):
        return False, _error(
            -32601, _context_text(METHOD_NOT_FOUND_TEXT, {"method": request.method})
        )
    try:
        result = await host.call(request.method, request.params)
    except Exception as e:
        return False, _failure(host, request.method, e)
    return True, (True if result is None else result)


def _failure(host: RpcHost, method: str, e: Exception) -> dict[str, Any]:
    """The error object a verb's exception is answered with."""
    if isinstance(e, VdsmError):
        return e.info()
    if isinstance(e, MethodNotFound):
        # VDSM's bridge words it this way whatever the host said.
        return _error(-32601, _context_text(METHOD_NOT_FOUND_TEXT, {"method": method}))
    if isinstance(e, JsonRpcError):
        return e.info()
    log.error("host %s: %s failed", host.name, method, exc_info=e)
    return _error(-32603, _context_text(INTERNAL_ERROR_TEXT, {"reason": str(e)}))


# Verbs whose result is a snapshot that the host publishes and never mutates (the task engine's
# `all_statuses` / `all_info` caches: "do not mutate it"). Polled by every client of every host,
# they are the hot path; their JSON text is cached per host and reused while the host hands out
# the very same object. A new snapshot is a new object, so a change is never served stale.
SNAPSHOT_METHODS: Final = frozenset({"Host.getAllTasksStatuses", "Host.getAllTasksInfo"})
_SNAPSHOT_CACHE_LIMIT: Final = 65536
# (id(host), method) -> (the snapshot, its JSON). Holding the snapshot keeps its id from being
# reused by another object while the entry lives.
_snapshot_texts: dict[tuple[int, str], tuple[Any, str]] = {}


def _result_response(host: RpcHost, method: str, req_id: Any, result: Any) -> str:
    """`_response(req_id, result=result)`, byte for byte, reusing a snapshot's cached JSON.

    ``json.dumps`` of ``{"jsonrpc", "id", "result"}`` with default separators is exactly the
    concatenation below, so splicing a cached result text changes nothing on the wire.
    """
    if method not in SNAPSHOT_METHODS:
        return _response(req_id, result=result)
    key = (id(host), method)
    cached = _snapshot_texts.get(key)
    if cached is not None and cached[0] is result:
        text = cached[1]
    else:
        try:
            text = json.dumps(result)
        except (TypeError, ValueError):
            return _response(req_id, result=result)  # logs and answers -32603
        if len(_snapshot_texts) >= _SNAPSHOT_CACHE_LIMIT:
            _snapshot_texts.clear()
        _snapshot_texts[key] = (result, text)
    try:
        id_text = json.dumps(req_id)
    except (TypeError, ValueError):
        return _response(req_id, result=result)
    return '{"jsonrpc": "2.0", "id": ' + id_text + ', "result": ' + text + "}"


async def _answer(host: RpcHost, request: _Request) -> tuple[Any, str] | None:
    ok, value = await _run(host, request)
    return _answer_text(host, request, ok, value)


def _answer_text(host: RpcHost, request: _Request, ok: bool, value: Any) -> tuple[Any, str] | None:
    if request.id is None:
        return None
    if ok:
        return request.id, _result_response(host, request.method, request.id, value)
    return request.id, _response(request.id, error=value)


@dataclass(slots=True)
class Reply:
    """What to send back for one message, and the id VDSM would route a single reply by."""

    data: bytes
    id: Any = None
    batch: bool = False


async def handle_message(host: RpcHost, message: Any) -> Reply | None:
    """Answer one decoded message (`parse` result); None when nothing is to be sent."""
    if isinstance(message, _ParseFailed):
        return Reply(_response(None, error=_error(-32700, PARSE_ERROR_TEXT)).encode())
    if isinstance(message, list):
        if not message:
            return Reply(
                _response(None, error=_invalid(message, "request batch is empty")).encode()
            )
        return await _handle_batch(host, message)
    checked = _check_request(message)
    if isinstance(checked, dict):
        return Reply(_response(None, error=checked).encode())
    return _reply(await _answer(host, checked))


def answer_now(host: RpcHost, message: Any) -> Reply | _NotNow | None:
    """`handle_message` without a task, for one request whose verb never waits; `NOT_NOW`
    (nothing run) for anything else. Most of a cancel burst (Task.stop, Task.clear, the task
    listings) is answered this way: an asyncio task per request was a tenth of the
    simulator's CPU."""
    if not isinstance(message, dict):
        return NOT_NOW
    checked = _check_request(message)
    if isinstance(checked, dict):
        return Reply(_response(None, error=checked).encode())
    if not isinstance(checked.method, str):
        return NOT_NOW
    try:
        result = host.call_now(checked.method, checked.params)
    except Exception as e:
        return _reply(_answer_text(host, checked, False, _failure(host, checked.method, e)))
    if isinstance(result, _NotNow):
        return result
    return _reply(_answer_text(host, checked, True, True if result is None else result))


def _reply(answer: tuple[Any, str] | None) -> Reply | None:
    return None if answer is None else Reply(answer[1].encode(), answer[0])


async def _handle_batch(host: RpcHost, batch: list[Any]) -> Reply | None:
    # VDSM answers validation errors first, then the requests as they complete; a batch left
    # with one answer is sent as that bare object.
    answers: list[tuple[Any, str] | None] = []
    runnable: list[_Request] = []
    for raw in batch:
        checked = _check_request(raw)
        if isinstance(checked, dict):
            answers.append((None, _response(None, error=checked)))
        else:
            runnable.append(checked)
    if len(runnable) == 1:
        answers.append(await _answer(host, runnable[0]))
    elif runnable:
        answers += await asyncio.gather(*(_answer(host, r) for r in runnable))
    sent = [a for a in answers if a is not None]
    if not sent:
        return None
    if len(sent) == 1:
        return Reply(sent[0][1].encode(), sent[0][0])
    return Reply(("[" + ",".join(text for _, text in sent) + "]").encode(), batch=True)


async def handle_payload(host: RpcHost, payload: bytes) -> bytes | None:
    """Answer one JSON-RPC message body (HTTP, or STOMP without reply routing)."""
    reply = await handle_message(host, parse(payload))
    return None if reply is None else reply.data


def encode_notification(method: str, params: dict[str, Any]) -> bytes:
    """An event as VDSM's `Notification.emit` writes it (no id, no reply expected)."""
    return json.dumps({"jsonrpc": "2.0", "method": method, "params": params}).encode()

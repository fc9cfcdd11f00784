"""JSON-RPC 2.0 over STOMP 1.2 to one VDSM host: one persistent connection, calls multiplexed by id.

Behaves like the engine's client where that matters to the daemon: UUID request ids, a per-call
timeout that fails the call with 5022, every pending call failed at once when the connection
breaks or the peer's heart-beats stop, and a lazy reconnect on the next call. Requests and
responses are built and read with `jsonrpcclient`; STOMP framing is `daemon.vdsm.stomp`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from jsonrpcclient import Error, Ok, notification, parse, request

from daemon.model import new_id
from daemon.vdsm.errors import ClientTimeout, ConnectionLost, VdsmCallError, error_for
from daemon.vdsm.stomp import (
    HEARTBEAT,
    Frame,
    FrameParser,
    StompError,
    encode_frame,
    encode_head,
    encode_with_head,
)

log = logging.getLogger(__name__)

REQUESTS = "jms.topic.vdsm_requests"
IRS_REQUESTS = "jms.topic.vdsm_irs_requests"
RESPONSES = "jms.topic.vdsm_responses"
EVENTS = "jms.queue.events"
DEFAULT_TIMEOUT = 180.0  # the engine's vdsTimeout

EventCallback = Callable[[str, dict[str, Any]], None]


class StompRpcClient:
    def __init__(
        self,
        address: str,
        port: int,
        *,
        host_header: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        heartbeat_ms: int = 10_000,
        request_destination: str = REQUESTS,
        response_destination: str = RESPONSES,
        connect_timeout: float = 10.0,
    ) -> None:
        self.address = address
        self.port = port
        self.host_header = host_header
        self.ssl_context = ssl_context
        self.timeout = timeout
        self.heartbeat_ms = heartbeat_ms
        self.request_destination = request_destination
        self.response_destination = response_destination
        self.connect_timeout = connect_timeout
        self.label = host_header or f"{address}:{port}"
        self._writer: asyncio.StreamWriter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._pending: dict[str, asyncio.Future[Any]] = {}
        self._connecting: asyncio.Lock | None = None
        self._listeners: list[EventCallback] = []
        self._outgoing: list[bytes] = []  # frames to send at the end of this loop iteration
        # A request's SEND frame up to its content-length: the same for every call without
        # extra headers, so escaped and joined once instead of once per call.
        self._send_head = encode_head(
            "SEND", {"destination": request_destination, "reply-to": response_destination}
        )
        self.connects = 0

    @property
    def connected(self) -> bool:
        return self._writer is not None and not self._writer.is_closing()

    def on_event(self, callback: EventCallback) -> None:
        """Events (id-less messages on jms.queue.events) go to every registered callback."""
        self._listeners.append(callback)

    # -- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.Lock()
        async with self._connecting:
            if self.connected:
                return
            try:
                async with asyncio.timeout(self.connect_timeout):
                    await self._open()
            except (OSError, TimeoutError, StompError) as e:
                await self._teardown(ConnectionLost(5022, f"cannot connect: {e}", "", self.label))
                raise ConnectionLost(5022, f"cannot connect: {e}", "CONNECT", self.label) from e

    async def _open(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.address, self.port, ssl=self.ssl_context, limit=2**20
        )
        headers = {
            "accept-version": "1.2",
            "heart-beat": f"{self.heartbeat_ms},{self.heartbeat_ms}",
        }
        if self.host_header:
            headers["host"] = self.host_header
        writer.write(encode_frame(Frame("CONNECT", headers)))
        parser = FrameParser()
        connected: Frame | None = None
        while connected is None:
            data = await reader.read(65536)
            if not data:
                raise StompError("connection closed before CONNECTED")
            for frame in parser.feed(data):
                if frame.command == "ERROR":
                    raise StompError(
                        frame.headers.get("message", frame.body.decode(errors="replace"))
                    )
                if frame.command == "CONNECTED":
                    connected = frame
        server_beat = connected.headers.get("heart-beat", "0,0").split(",")
        sx, sy = (int(server_beat[0]), int(server_beat[1])) if len(server_beat) == 2 else (0, 0)
        send_every = max(self.heartbeat_ms, sy) / 1000 if self.heartbeat_ms and sy else 0.0
        expect_every = max(sx, self.heartbeat_ms) / 1000 if sx and self.heartbeat_ms else 0.0
        for dest in (self.response_destination, EVENTS):
            writer.write(
                encode_frame(
                    Frame(
                        "SUBSCRIBE", {"destination": dest, "id": str(uuid.uuid4()), "ack": "auto"}
                    )
                )
            )
        await writer.drain()
        self._writer = writer
        self.connects += 1
        self._tasks = [asyncio.create_task(self._read(reader, parser, expect_every))]
        if send_every:
            self._tasks.append(asyncio.create_task(self._beat(writer, send_every)))

    async def _read(
        self, reader: asyncio.StreamReader, parser: FrameParser, expect_every: float
    ) -> None:
        """Route replies to their calls; silence longer than 3 peer heart-beats is a dead link."""
        reason: VdsmCallError = ConnectionLost(5022, "connection closed by peer", "", self.label)
        try:
            while True:
                try:
                    if expect_every:
                        async with asyncio.timeout(expect_every * 3):
                            data = await reader.read(2**20)
                    else:
                        data = await reader.read(2**20)
                except TimeoutError:
                    reason = ConnectionLost(5022, "heart-beat missed", "", self.label)
                    break
                if not data:
                    break
                for frame in parser.feed(data):
                    if frame.command == "MESSAGE":
                        self._deliver(frame.body)
                    elif frame.command == "ERROR":
                        message = frame.headers.get("message", "") or frame.body.decode(
                            errors="replace"
                        )
                        reason = ConnectionLost(5022, f"STOMP ERROR: {message}", "", self.label)
        except (OSError, StompError) as e:
            reason = ConnectionLost(5022, f"connection failed: {e}", "", self.label)
        finally:
            await self._teardown(reason, from_reader=True)

    async def _beat(self, writer: asyncio.StreamWriter, every: float) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while not writer.is_closing():
                await asyncio.sleep(every)
                writer.write(HEARTBEAT)

    def _deliver(self, body: bytes) -> None:
        try:
            message = orjson.loads(body)
        except ValueError:
            log.warning("host %s sent a body that is not JSON: %.200r", self.label, body)
            return
        for item in message if isinstance(message, list) else [message]:
            if not isinstance(item, dict):
                continue
            if "id" not in item and "method" in item:
                raw = item.get("params")
                params: dict[str, Any] = raw if isinstance(raw, dict) else {}
                for listener in list(self._listeners):
                    try:
                        listener(str(item["method"]), params)
                    except Exception:  # a broken listener must not take the connection down
                        log.exception("host %s: event listener failed", self.label)
                continue
            future = self._pending.get(str(item.get("id")))
            if future is not None and not future.done():
                future.set_result(item)

    async def _teardown(self, reason: VdsmCallError, *, from_reader: bool = False) -> None:
        writer, self._writer = self._writer, None
        self._outgoing = []  # their calls fail below
        current = asyncio.current_task()
        for task in self._tasks:
            if task is not current:
                task.cancel()
        self._tasks = []
        pending, self._pending = self._pending, {}
        for call_id, future in pending.items():
            if not future.done():
                future.set_exception(
                    type(reason)(reason.vdsm_code, reason.message, call_id, self.label)
                )
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def close(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(OSError):
                self._writer.write(encode_frame(Frame("DISCONNECT", {})))
        await self._teardown(ConnectionLost(5022, "client closed", "", self.label))

    # -- calls -------------------------------------------------------------------------------

    def _send(self, payload: Any, headers: dict[str, str] | None = None) -> None:
        if self._writer is None:
            raise ConnectionLost(5022, "not connected", "", self.label)
        body = _encode(payload)
        if headers:
            frame_headers = {
                "destination": self.request_destination,
                "reply-to": self.response_destination,
                **headers,
            }
            frame = encode_frame(Frame("SEND", frame_headers, body))
        else:
            frame = encode_with_head(self._send_head, body)
        if not self._outgoing:
            asyncio.get_running_loop().call_soon(self._flush, self._writer)
        self._outgoing.append(frame)

    def _flush(self, writer: asyncio.StreamWriter) -> None:
        """Send the frames queued in one loop iteration with one write (one `send` system
        call): a batch of a hundred jobs calls a host a hundred times at once, and a system
        call per frame was a tenth of the daemon's CPU per simple job. A frame waits at most
        for the callbacks already scheduled; the order of the frames is kept."""
        frames, self._outgoing = self._outgoing, []
        if writer is self._writer and not writer.is_closing():
            writer.write(b"".join(frames))
        # else: the connection broke meanwhile; `_teardown` failed every call these carried

    async def call(
        self,
        method: str,
        params: dict[str, Any] | Sequence[Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline, as the engine has
        correlation_id: str | None = None,
    ) -> Any:
        """One call; returns the (unwrapped) result or raises the VDSM error as an exception."""
        if not self.connected:
            await self.connect()
        call_id = new_id()  # batched randomness: uuid4 is a system call per request
        params_arg: dict[str, Any] | tuple[Any, ...] | None = (
            params if params is None or isinstance(params, dict) else tuple(params)
        )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._pending[call_id] = future
        headers = {"ovirtCorrelationId": correlation_id} if correlation_id else None
        # The deadline fails the reply's future instead of cancelling this coroutine: a timer
        # handle per call rather than an `asyncio.timeout` (its context object, task look-up,
        # reschedule and uncancel bookkeeping cost ~8 us of the ~25 us an awaited reply costs
        # the loop; a cancel burst makes 6,000 calls). Nothing is cancelled by the deadline, so
        # a cancellation of the caller still arrives as itself.
        expiry = loop.call_at(
            loop.time() + (self.timeout if timeout is None else timeout), _expire, future
        )
        try:
            self._send(request(method, params=params_arg, id=call_id), headers)
            reply = await future
        except (_Expired, ConnectionLost) as e:
            raise self._unanswered(method, e) from None
        finally:
            expiry.cancel()
            self._pending.pop(call_id, None)
        return self._result(method, reply)

    async def call_each(
        self,
        calls: Sequence[tuple[str, dict[str, Any] | None]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline, as the engine has
    ) -> list[Any]:
        """Several calls at once, each in a message of its own (VDSM answers one request per
        message, see `batch`); each entry of the answer is the call's result or the
        VdsmCallError it raised. They share one coroutine and one deadline: a cancel burst
        stops and clears three tasks per job for a thousand jobs, and an asyncio task per
        verb (to await them together) was a tenth of the daemon's CPU in it."""
        if not self.connected:
            try:
                await self.connect()
            except ConnectionLost as e:  # every call fails as it, as over HTTP
                return [self._unanswered(method, e) for method, _ in calls]
        loop = asyncio.get_running_loop()
        futures: list[asyncio.Future[Any]] = []
        ids = []
        for _ in calls:
            call_id = new_id()
            future: asyncio.Future[Any] = loop.create_future()
            self._pending[call_id] = future
            ids.append(call_id)
            futures.append(future)
        expiry = loop.call_at(
            loop.time() + (self.timeout if timeout is None else timeout), _expire_each, futures
        )
        try:
            try:
                for (method, params), call_id in zip(calls, ids, strict=True):
                    self._send(request(method, params=params, id=call_id))
            except ConnectionLost as e:  # not connected: the calls not sent fail as it
                for future in futures:
                    if not future.done():
                        future.set_exception(e)
            replies = await asyncio.gather(*futures, return_exceptions=True)
        finally:
            expiry.cancel()
            for call_id in ids:
                self._pending.pop(call_id, None)
        results: list[Any] = []
        for (method, _), reply in zip(calls, replies, strict=True):
            if isinstance(reply, _Expired | ConnectionLost):
                results.append(self._unanswered(method, reply))
            elif isinstance(reply, BaseException):
                raise reply
            else:
                try:
                    results.append(self._result(method, reply))
                except VdsmCallError as e:
                    results.append(e)
        return results

    def _unanswered(self, method: str, error: _Expired | ConnectionLost) -> VdsmCallError:
        """What a call without a reply fails with: its deadline passed, or its link was lost
        (named after the call, not the connection)."""
        if isinstance(error, _Expired):
            return ClientTimeout.of_call(method, self.label)
        return ConnectionLost(error.vdsm_code, error.message, method, self.label)

    def _result(self, method: str, reply: dict[str, Any]) -> Any:
        try:
            parsed = parse(reply)
        except (KeyError, TypeError, ValueError) as e:
            raise VdsmCallError(
                -32603, f"malformed reply {reply!r}: {e}", method, self.label
            ) from None
        if isinstance(parsed, Ok):
            return parsed.result
        if isinstance(parsed, Error):
            raise error_for(int(parsed.code), str(parsed.message), method, self.label)
        raise VdsmCallError(-32603, f"unexpected reply {reply!r}", method, self.label)

    async def notify(self, method: str, params: dict[str, Any] | None = None) -> None:
        """A request without id: VDSM runs it and sends nothing back."""
        if not self.connected:
            await self.connect()
        self._send(notification(method, params=params))

    async def batch(
        self,
        calls: Sequence[tuple[str, dict[str, Any] | None]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109 - a per-call deadline, as the engine has
    ) -> list[Any]:
        """Several calls in one message; each entry is a result or the exception it raised.

        For the simulator and tools only: real VDSM never answers a batch sent over STOMP (its
        reply path takes one JSON object), so the daemon itself sends one request per message.
        """
        if not self.connected:
            await self.connect()
        loop = asyncio.get_running_loop()
        ids = [new_id() for _ in calls]
        futures = {i: loop.create_future() for i in ids}
        self._pending.update(futures)
        try:
            self._send([request(m, params=p, id=i) for (m, p), i in zip(calls, ids, strict=True)])
            async with asyncio.timeout(self.timeout if timeout is None else timeout):
                replies = [await futures[i] for i in ids]
        except TimeoutError:
            raise ClientTimeout.of_call("batch", self.label) from None
        finally:
            for i in ids:
                self._pending.pop(i, None)
        results: list[Any] = []
        for (method, _), reply in zip(calls, replies, strict=True):
            try:
                results.append(self._result(method, reply))
            except VdsmCallError as e:
                results.append(e)
        return results


class _Expired(Exception):
    """A call's deadline passed before its reply came (set on the reply's future)."""


def _expire(future: asyncio.Future[Any]) -> None:
    if not future.done():
        future.set_exception(_Expired())


def _expire_each(futures: list[asyncio.Future[Any]]) -> None:
    for future in futures:
        _expire(future)


def _encode(payload: Any) -> bytes:
    """orjson: every call and every poll encodes a request and decodes a reply, and the
    standard library's json was a tenth of the daemon's CPU per simple job (replies of
    `Host.getAllVmStats` and `getAllTasksStatuses` run to kilobytes). A value orjson refuses
    (an integer beyond 64 bits in caller-supplied parameters) falls back to the standard
    library, which writes any JSON value."""
    try:
        return orjson.dumps(payload, option=orjson.OPT_NON_STR_KEYS)
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(payload).encode()

"""A small STOMP 1.2 + JSON-RPC client for tests and benchmarks, speaking as the engine does.

It is deliberately independent of the daemon's transport so simulator tests do not depend on
daemon code beyond the shared frame codec. One reader task parses frames and routes them:
JSON-RPC replies resolve the pending call with that id, event notifications go to `events`,
and every other frame (CONNECTED, ERROR, RECEIPT, unmatched MESSAGE) goes to `frames`.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import ssl as ssl_module
import uuid
from collections.abc import AsyncIterator
from typing import Any

from daemon.vdsm.stomp import HEARTBEAT, Frame, FrameParser, encode_frame

REQUESTS = "jms.topic.vdsm_requests"
IRS_REQUESTS = "jms.topic.vdsm_irs_requests"
RESPONSES = "jms.topic.vdsm_responses"
EVENTS = "jms.queue.events"


class RpcError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


class StompClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.parser = FrameParser()
        self.frames: asyncio.Queue[Frame] = asyncio.Queue()
        self.events: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self.messages: list[Frame] = []  # every MESSAGE, in arrival order
        self.connected: Frame | None = None
        self.closed = asyncio.get_running_loop().create_future()
        self._pending: dict[Any, asyncio.Future[Any]] = {}
        self._subs = itertools.count(1)
        self._reader_task = asyncio.create_task(self._read())
        self._beat_task: asyncio.Task[None] | None = None
        self.events_sub: str | None = None

    # -- connecting ------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        port: int,
        *,
        address: str = "127.0.0.1",
        ssl: ssl_module.SSLContext | None = None,
        server_hostname: str | None = None,
    ) -> StompClient:
        """A raw connection, nothing sent yet."""
        reader, writer = await asyncio.open_connection(
            address, port, ssl=ssl, server_hostname=server_hostname if ssl else None
        )
        return cls(reader, writer)

    @classmethod
    async def connect(
        cls,
        port: int,
        *,
        host: str | None = None,
        heart_beat: tuple[int, int] = (0, 0),
        subscribe_replies: bool = True,
        subscribe_events: bool = False,
        within: float = 5.0,
        **open_args: Any,
    ) -> StompClient:
        """CONNECT (as the engine: accept-version 1.2, optional host) and subscribe."""
        client = await cls.open(port, **open_args)
        headers = {"accept-version": "1.2", "heart-beat": f"{heart_beat[0]},{heart_beat[1]}"}
        if host is not None:
            headers["host"] = host
        client.send_frame(Frame("CONNECT", headers))
        frame = await client.next_frame(within)
        if frame.command != "CONNECTED":
            await client.close()
            raise ConnectionError(f"{frame.command}: {frame.body.decode(errors='replace')}")
        client.connected = frame
        send_ms, _ = (int(v) for v in frame.headers["heart-beat"].split(","))
        if heart_beat[0] and send_ms >= 0:
            client.start_heartbeats(max(heart_beat[0], 1000) / 1000)
        if subscribe_replies:
            client.subscribe(RESPONSES)
            client.subscribe("jms.topic.vdsm_irs_responses")
        if subscribe_events:
            client.events_sub = client.subscribe(EVENTS)
        return client

    # -- frames ----------------------------------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        self.writer.write(encode_frame(frame))

    def send_raw(self, data: bytes) -> None:
        self.writer.write(data)

    async def next_frame(self, within: float = 5.0) -> Frame:
        async with asyncio.timeout(within):
            return await self.frames.get()

    def subscribe(self, destination: str, sub_id: str | None = None, ack: str = "auto") -> str:
        sub_id = sub_id or f"sub-{next(self._subs)}"
        self.send_frame(Frame("SUBSCRIBE", {"destination": destination, "id": sub_id, "ack": ack}))
        return sub_id

    def unsubscribe(self, sub_id: str) -> None:
        self.send_frame(Frame("UNSUBSCRIBE", {"id": sub_id}))

    def start_heartbeats(self, every: float) -> None:
        async def beat() -> None:
            while True:
                await asyncio.sleep(every / 2)
                self.writer.write(HEARTBEAT)

        self._beat_task = asyncio.create_task(beat())

    @property
    def heartbeats(self) -> int:
        return self.parser.heartbeats

    # -- JSON-RPC --------------------------------------------------------------------------

    def new_id(self) -> str:
        return str(uuid.uuid4())

    def send_request(
        self,
        payload: Any,
        *,
        destination: str = REQUESTS,
        reply_to: str | None = RESPONSES,
        flow_id: str | None = None,
    ) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        headers = {"destination": destination}
        if reply_to is not None:
            headers["reply-to"] = reply_to
        if flow_id is not None:
            headers["ovirtCorrelationId"] = flow_id
        self.send_frame(Frame("SEND", headers, body))

    def expect(self, req_id: Any) -> asyncio.Future[Any]:
        """A future for the raw reply (object or array) that carries this id."""
        fut = self._pending.get(req_id)
        if fut is None:
            fut = self._pending[req_id] = asyncio.get_running_loop().create_future()
        return fut

    async def request(
        self,
        method: str,
        params: dict[str, Any] | list[Any] | None = None,
        *,
        req_id: Any = None,
        within: float = 5.0,
        **send_args: Any,
    ) -> dict[str, Any]:
        """Send one request and return the whole response object."""
        req_id = self.new_id() if req_id is None else req_id
        fut = self.expect(req_id)
        message = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            message["params"] = params
        self.send_request(message, **send_args)
        async with asyncio.timeout(within):
            reply: dict[str, Any] = await fut
        return reply

    async def call(
        self, method: str, params: dict[str, Any] | list[Any] | None = None, **kwargs: Any
    ) -> Any:
        """The result, or `RpcError` with the VDSM code."""
        reply = await self.request(method, params, **kwargs)
        if "error" in reply:
            raise RpcError(reply["error"]["code"], reply["error"]["message"])
        return reply["result"]

    async def batch(
        self, calls: list[dict[str, Any]], *, within: float = 5.0, **send_args: Any
    ) -> Any:
        """Send raw request objects as one batch; resolves on the reply carrying the first id."""
        first = next(c["id"] for c in calls if c.get("id") is not None)
        fut = self.expect(first)
        self.send_request(calls, **send_args)
        async with asyncio.timeout(within):
            return await fut

    def notify(self, method: str, params: dict[str, Any] | list[Any] | None = None) -> None:
        message: dict[str, Any] = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            message["params"] = params
        self.send_request(message)

    async def next_event(self, within: float = 5.0) -> tuple[str, dict[str, Any]]:
        async with asyncio.timeout(within):
            return await self.events.get()

    async def iter_events(self, within: float = 5.0) -> AsyncIterator[tuple[str, dict[str, Any]]]:
        while True:
            yield await self.next_event(within)

    # -- reading ---------------------------------------------------------------------------

    async def _read(self) -> None:
        error: BaseException | None = None
        try:
            while data := await self.reader.read(65536):
                for frame in self.parser.feed(data):
                    self._route(frame)
        except (ConnectionError, OSError) as e:
            error = e
        except Exception as e:  # a malformed frame from the server is a test failure
            error = e
        finally:
            if not self.closed.done():
                self.closed.set_result(error)
            for fut in self._pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("connection closed"))

    def _route(self, frame: Frame) -> None:
        if frame.command != "MESSAGE":
            self.frames.put_nowait(frame)
            return
        self.messages.append(frame)
        try:
            message = json.loads(frame.body)
        except ValueError:
            self.frames.put_nowait(frame)
            return
        if isinstance(message, dict) and "method" in message and "id" not in message:
            if frame.headers.get("subscription") == self.events_sub or self.events_sub is None:
                self.events.put_nowait((message["method"], message.get("params", {})))
                return
        reply_id = _reply_id(message)
        fut = self._pending.pop(reply_id, None) if _hashable(reply_id) else None
        if fut is not None and not fut.done():
            fut.set_result(message)
        elif not _is_response(message):
            self.frames.put_nowait(frame)
        # else: a reply to someone else's request (VDSM fans replies out to every subscriber of
        # the reply-to destination on the host); it stays in `messages` only.

    async def wait_closed(self, within: float = 5.0) -> BaseException | None:
        """Wait for the server to close the connection; the read error, if any."""
        async with asyncio.timeout(within):
            result: BaseException | None = await asyncio.shield(self.closed)
            return result

    async def close(self) -> None:
        if self._beat_task is not None:
            self._beat_task.cancel()
        self.writer.close()
        try:
            await self.writer.wait_closed()
        except (ConnectionError, OSError):
            pass
        self._reader_task.cancel()
        await asyncio.gather(self._reader_task, return_exceptions=True)


def _reply_id(message: Any) -> Any:
    if isinstance(message, dict):
        return message.get("id")
    if isinstance(message, list):
        for item in message:
            if isinstance(item, dict) and item.get("id") is not None:
                return item["id"]
    return None


def _is_response(message: Any) -> bool:
    if isinstance(message, list):
        return bool(message) and all(_is_response(m) for m in message)
    return isinstance(message, dict) and "jsonrpc" in message and "id" in message


def _hashable(value: Any) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True

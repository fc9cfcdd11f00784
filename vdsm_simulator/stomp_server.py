"""The STOMP side of a simulated VDSM: one session per connection, as `yajsonrpc.stompserver`.

What is reproduced from VDSM (oVirt/vdsm `lib/yajsonrpc/stompserver.py`, `stomp.py`):

* CONNECT must carry ``accept-version`` exactly ``1.2``, else ERROR "Version unsupported" (the
  connection stays open). CONNECTED carries ``version:1.2`` and ``heart-beat:<cy>,<cx>``: the
  client's pair swapped, each non-zero value raised to at least 1000 ms. The server then sends
  ``\\n`` when it wrote nothing for cy ms and drops a client it heard nothing from for cx ms.
* Subscriptions and the request-id -> reply-to table belong to the VDSM process, i.e. to one
  simulated host, and are shared by all its connections: a reply goes as MESSAGE to *every*
  subscriber of the reply-to destination on that host, whichever connection asked. A reply whose
  id is not in the table goes to ``jms.topic.vdsm_responses``; events go to ``jms.queue.events``.
* SEND to a request queue (``jms.topic.vdsm_requests``, ``jms.topic.vdsm_irs_requests`` or
  ``<queue>.<anything>``) is executed; SEND to any destination is also copied to its subscribers
  and to subscribers of its dot-separated parents; SEND elsewhere with no subscriber is an ERROR.
* ERROR texts: "Missing destination or subscription id header", "Subscription id already exists",
  "Missing id header", "Subscription not available". ERROR frames carry only ``content-length``.
* What VDSM answers by dropping the connection (no ERROR): a malformed frame, an unknown command
  (including STOMP, ACK, NACK, BEGIN...), SEND without destination, DISCONNECT without receipt.
  DISCONNECT with a receipt gets RECEIPT and the client closes.

Simulator additions: the CONNECT ``host`` header picks the host (absent: the default host; unknown:
ERROR "Unknown host: '<name>'" and close) unless the listener is bound to one host; wire faults
from `FaultSettings`; a frame size limit; an outbound buffer limit so a client that stops reading
is dropped instead of growing memory; and a grace factor on the client heart-beat (VDSM's is 1).
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Coroutine, Hashable
from dataclasses import dataclass
from typing import Any, Final, cast

from daemon.vdsm.stomp import (
    DEFAULT_MAX_FRAME_SIZE,
    HEARTBEAT,
    Frame,
    FrameParser,
    StompError,
    encode_frame,
    encode_head,
    encode_with_head,
)
from vdsm_simulator import jsonrpc
from vdsm_simulator.clock import SimClock
from vdsm_simulator.jsonrpc import HostDirectory, Reply, RpcHost

log = logging.getLogger(__name__)

REQUEST_QUEUES: Final = ("jms.topic.vdsm_requests", "jms.topic.vdsm_irs_requests")
DEFAULT_REPLY_DESTINATION: Final = "jms.topic.vdsm_responses"
EVENT_QUEUE: Final = "jms.queue.events"
MIN_HEARTBEAT_MS: Final = 1000
_REQUEST_PREFIXES: Final = tuple(q + "." for q in REQUEST_QUEUES)


@dataclass
class WireOptions:
    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    heartbeat_grace: float = 2.0  # factor on the client's heart-beat before dropping it
    max_outbound_buffer: int = 64 * 1024 * 1024  # bytes queued for a client that stopped reading
    strict_vdsm_batches: bool = False  # drop batch replies over STOMP, as real VDSM does


def parse_heartbeat(value: str) -> tuple[int, int]:
    """VDSM's lenient parser: anything unparsable counts as 0."""
    first, sep, second = value.partition(",")
    if not sep:
        return 0, 0

    def as_int(text: str) -> int:
        try:
            return int(text)
        except ValueError:
            return 0

    return as_int(first), as_int(second)


def negotiate_heartbeat(client_value: str) -> tuple[int, int]:
    """(server sends every, server expects every) in ms, as written back in CONNECTED."""
    cx, cy = parse_heartbeat(client_value)
    if cx:
        cx = max(cx, MIN_HEARTBEAT_MS)
    if cy:
        cy = max(cy, MIN_HEARTBEAT_MS)
    return cy, cx


def is_request_destination(destination: str) -> bool:
    """A request queue or a sub-destination of one (checked on every SEND, hence no loop)."""
    return destination in REQUEST_QUEUES or destination.startswith(_REQUEST_PREFIXES)


@functools.lru_cache(maxsize=1024)
def destination_and_parents(destination: str) -> tuple[str, ...]:
    """``a``, ``a.b``, ``a.b.c`` for ``a.b.c``: where VDSM looks for subscribers of a SEND.

    Clients use a handful of destinations, so the split is cached instead of redone per frame.
    """
    parts = destination.split(".")
    return tuple(".".join(parts[:n]) for n in range(1, len(parts) + 1))


def error_frame(text: str) -> Frame:
    return Frame("ERROR", {}, text.encode())


class Subscription:
    __slots__ = ("_message_head", "ack", "destination", "id", "session")

    def __init__(self, session: StompSession, destination: str, sub_id: str, ack: str) -> None:
        self.session = session
        self.destination = destination
        self.id = sub_id
        self.ack = ack
        self._message_head: bytes | None = None

    def message(self, body: bytes) -> bytes:
        """The MESSAGE frame carrying `body` to this subscriber, as `HostWire.deliver` sends it.

        Its headers (destination, content-type, subscription) are the same for every reply, so
        they are encoded once; the bytes equal ``encode_frame`` of the same frame.
        """
        if not body:
            return encode_frame(Frame("MESSAGE", self._message_headers(), body))
        head = self._message_head
        if head is None:
            head = self._message_head = encode_head("MESSAGE", self._message_headers())
        return encode_with_head(head, body)

    def _message_headers(self) -> dict[str, str]:
        return {
            "destination": self.destination,
            "content-type": "application/json",
            "subscription": self.id,
        }


class HostWire:
    """The STOMP state VDSM keeps per process, shared by every connection to one host."""

    def __init__(self, host: RpcHost, options: WireOptions) -> None:
        self.host = host
        self.options = options
        self.subscriptions: dict[str, list[Subscription]] = {}
        self.reply_to: dict[Hashable, str | None] = {}
        self.sessions: set[StompSession] = set()
        self._stop_events = host.events.subscribe(self._on_event)

    def close(self) -> None:
        self._stop_events()

    def add(self, sub: Subscription) -> None:
        self.subscriptions.setdefault(sub.destination, []).append(sub)

    def remove(self, sub: Subscription) -> None:
        subs = self.subscriptions.get(sub.destination)
        if subs and sub in subs:
            subs.remove(sub)
            if not subs:
                del self.subscriptions[sub.destination]

    def find_subscribers(self, destination: str) -> list[Subscription]:
        """Subscribers of the destination or of any dot-separated parent, as VDSM forwards."""
        found: list[Subscription] = []
        subscriptions = self.subscriptions
        if subscriptions:
            for name in destination_and_parents(destination):
                subs = subscriptions.get(name)
                if subs:
                    found += subs
        return found

    def deliver(self, destination: str | None, body: bytes) -> int:
        """MESSAGE to every subscriber of exactly this destination; how many got it."""
        subs = None if destination is None else self.subscriptions.get(destination)
        if destination is None or not subs:
            log.warning(
                "%s: attempt to reply to unknown destination %s", self.host.name, destination
            )
            return 0
        for sub in list(subs):  # sub.destination == destination: subscribed to exactly it
            sub.session._write(sub.message(body))
        return len(subs)

    def send_reply(
        self, reply: Reply, reply_to: str | None, ids: list[Hashable], *, lost: bool = False
    ) -> None:
        """Route one answer as VDSM's `StompServer.send` does: by its id through the table.

        A `lost` reply (injected drop) still consumes its table entry, as if it had been sent.
        """
        if reply.batch:
            for req_id in ids:
                self.reply_to.pop(req_id, None)
            if lost:
                return
            if self.options.strict_vdsm_batches:
                log.warning(
                    "%s: batch reply dropped (VDSM sends only JSON objects)", self.host.name
                )
                return
            self.deliver(reply_to, reply.data)
            return
        destination: str | None = DEFAULT_REPLY_DESTINATION
        try:
            destination = self.reply_to.pop(reply.id)
        except KeyError:
            pass
        except TypeError:  # an unhashable id: VDSM fails here and sends nothing
            return
        if not lost:
            self.deliver(destination, reply.data)

    def _on_event(self, method: str, params: dict[str, Any]) -> None:
        if EVENT_QUEUE in self.subscriptions:
            self.deliver(EVENT_QUEUE, jsonrpc.encode_notification(method, params))


class StompBroker:
    """Every host's `HostWire` plus the request tasks still running, for one `SimServer`."""

    def __init__(
        self, directory: HostDirectory, clock: SimClock, options: WireOptions | None = None
    ) -> None:
        self.directory = directory
        self.clock = clock
        self.options = options or WireOptions()
        self.wires: dict[str, HostWire] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def session(self, fixed_host: str | None = None) -> StompSession:
        return StompSession(self, fixed_host)

    def wire_for(self, host: RpcHost) -> HostWire:
        wire = self.wires.get(host.name)
        if wire is None or wire.host is not host:
            if wire is not None:
                wire.close()
            wire = self.wires[host.name] = HostWire(host, self.options)
        return wire

    def spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("request task failed", exc_info=task.exception())

    def disconnect_host(self, name: str) -> int:
        """Drop every connection to the host (down or restarted); returns how many.

        The host's STOMP state goes with them: replies of requests still running have no one
        left to reach, and whoever connects next starts with fresh tables, as after a restart.
        """
        wire = self.wires.pop(name, None)
        if wire is None:
            return 0
        sessions = list(wire.sessions)
        for session in sessions:
            session.abort(f"host {name} is down")
        wire.close()
        return len(sessions)

    async def close(self) -> None:
        for wire in self.wires.values():
            for session in list(wire.sessions):
                session.abort("server stopping")
            wire.close()
        self.wires.clear()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class StompSession(asyncio.Protocol):
    """One client connection. Requests run as tasks so a slow verb never stalls the reader."""

    def __init__(self, broker: StompBroker, fixed_host: str | None = None) -> None:
        self.broker = broker
        self.fixed_host = fixed_host
        self.wire: HostWire | None = None
        self.sub_ids: dict[str, Subscription] = {}
        self.parser = FrameParser(broker.options.max_frame_size)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.send_every = 0.0  # seconds; 0: no heart-beats
        self.expect_every = 0.0
        self.last_read = self.last_write = 0.0
        self._outbox: list[bytes] = []  # written by _flush, once per loop iteration
        # requests of the read being handled: (wire, message, reply-to, ids), run at its end
        self._requests: list[tuple[HostWire, Any, str | None, list[Hashable]]] = []
        self._timer: asyncio.TimerHandle | None = None
        self._loop = asyncio.get_running_loop()
        self.peer: Any = None

    # -- asyncio.Protocol ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not inherit from asyncio.Transport; they only behave like one.
        self.transport = cast(asyncio.Transport, transport)
        self.peer = transport.get_extra_info("peername")
        self.last_read = self.last_write = self._loop.time()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self.last_read = self._loop.time()
        try:
            frames = self.parser.feed(data)
        except StompError as e:
            self.abort(f"malformed frame: {e}")
            return
        try:
            for frame in frames:
                if self.closed:
                    break
                self._handle(frame)
        finally:
            if self._requests:
                self._run_requests()

    def connection_lost(self, exc: Exception | None) -> None:
        self._shutdown()

    # -- frames in -------------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        command = frame.command
        if command == "CONNECT":
            self._connect(frame)
            return
        if self.wire is None and not self._bind(self.fixed_host):
            return
        assert self.wire is not None
        if self.wire.host.faults.settings.down:
            self.abort(f"host {self.wire.host.name} is down")
        elif command == "SEND":
            self._send(frame)
        elif command == "SUBSCRIBE":
            self._subscribe(frame)
        elif command == "UNSUBSCRIBE":
            self._unsubscribe(frame)
        elif command == "DISCONNECT":
            self._disconnect(frame)
        else:
            self.abort(f"unknown command {command!r}")

    def _bind(self, name: str | None) -> bool:
        host = self.broker.directory.get_host(name)
        if host is None:
            self.send_frame(error_frame(f"Unknown host: {name!r}"))
            self.close(f"unknown host {name!r}")
            return False
        if host.faults.settings.down:
            self.abort(f"host {host.name} is down")
            return False
        wire = self.broker.wire_for(host)
        if wire is not self.wire:
            self._leave()
            self.wire = wire
            wire.sessions.add(self)
        return True

    def _connect(self, frame: Frame) -> None:
        if frame.headers.get("accept-version") != "1.2":
            self.send_frame(error_frame("Version unsupported"))
            return
        name = self.fixed_host if self.fixed_host is not None else frame.headers.get("host")
        if not self._bind(name):
            return
        send_ms, expect_ms = negotiate_heartbeat(frame.headers.get("heart-beat", "0,0"))
        self.send_frame(
            Frame("CONNECTED", {"version": "1.2", "heart-beat": f"{send_ms},{expect_ms}"})
        )
        self.send_every = send_ms / 1000
        self.expect_every = expect_ms / 1000 * self.broker.options.heartbeat_grace
        self.last_read = self._loop.time()
        self._schedule()

    def _subscribe(self, frame: Frame) -> None:
        assert self.wire is not None
        destination = frame.headers.get("destination")
        sub_id = frame.headers.get("id")
        if not destination or not sub_id:
            self.send_frame(error_frame("Missing destination or subscription id header"))
            return
        if sub_id in self.sub_ids:
            self.send_frame(error_frame("Subscription id already exists"))
            return
        sub = Subscription(self, destination, sub_id, frame.headers.get("ack", "auto"))
        self.sub_ids[sub_id] = sub
        self.wire.add(sub)

    def _unsubscribe(self, frame: Frame) -> None:
        assert self.wire is not None
        sub_id = frame.headers.get("id")
        if not sub_id:
            self.send_frame(error_frame("Missing id header"))
            return
        sub = self.sub_ids.pop(sub_id, None)
        if sub is not None:
            self.wire.remove(sub)

    def _disconnect(self, frame: Frame) -> None:
        if "receipt" not in frame.headers:
            self.close("DISCONNECT without receipt")
            return
        if frame.headers["receipt"]:
            self.send_frame(Frame("RECEIPT", {"receipt-id": frame.headers["receipt"]}))

    def _send(self, frame: Frame) -> None:
        wire = self.wire
        assert wire is not None
        destination = frame.headers.get("destination")
        if destination is None:
            self.abort("SEND without destination")
            return
        subs = wire.find_subscribers(destination)
        for sub in subs:
            headers = {"subscription": sub.id} | frame.headers
            sub.session.send_frame(Frame("MESSAGE", headers, frame.body))
        if is_request_destination(destination):
            self._request(wire, frame)
        elif not subs:
            self.send_frame(error_frame("Subscription not available"))

    def _request(self, wire: HostWire, frame: Frame) -> None:
        reply_to = frame.headers.get("reply-to")
        message = jsonrpc.parse(frame.body)
        ids: list[Hashable] = []
        for req_id in jsonrpc.request_ids(message):
            wire.reply_to[req_id] = reply_to
            ids.append(req_id)
        flow_id = frame.headers.get("ovirtCorrelationId")
        if flow_id:
            log.debug("%s: request with flow_id %s", wire.host.name, flow_id)
        faults = wire.host.faults
        if faults.chance(faults.settings.reset_connections):
            # The request reached VDSM, the connection died before its answer.
            self.abort("injected connection reset")
        self._requests.append((wire, message, reply_to, ids))

    def _run_requests(self) -> None:
        """Run the requests of one read, in order, once all its frames are handled (so that a
        SUBSCRIBE sent right after a request still gets the reply, as when each ran in a task).

        A request whose verb never waits is answered here; the first that may wait, and every
        one after it, runs in a task as before, so the requests still start in arrival order.
        Injected reply delays or drops always take the task path, with their random draws.
        """
        requests, self._requests = self._requests, []
        now = True
        for wire, message, reply_to, ids in requests:
            settings = wire.host.faults.settings
            if now and not (settings.latency or settings.drop_replies or settings.late_replies):
                try:
                    reply = jsonrpc.answer_now(wire.host, message)
                    if reply is None:
                        continue
                    if isinstance(reply, Reply):
                        wire.send_reply(reply, reply_to, ids)
                        continue
                except Exception:
                    log.exception("request failed")
                    continue
            now = False
            self.broker.spawn(self._serve(wire, message, reply_to, ids))

    async def _serve(
        self, wire: HostWire, message: Any, reply_to: str | None, ids: list[Hashable]
    ) -> None:
        reply = await jsonrpc.handle_message(wire.host, message)
        if reply is None:
            return
        faults = wire.host.faults
        settings = faults.settings
        if settings.latency:
            await self.broker.clock.sleep(settings.latency)
        if faults.chance(settings.drop_replies):
            log.info("%s: reply dropped (injected)", wire.host.name)
            wire.send_reply(reply, reply_to, ids, lost=True)
            return
        if faults.chance(settings.late_replies):
            await self.broker.clock.sleep(settings.late_delay)
        wire.send_reply(reply, reply_to, ids)

    # -- frames out, heart-beats, closing --------------------------------------------------

    def send_frame(self, frame: Frame) -> None:
        self._write(encode_frame(frame))

    def _write(self, data: bytes) -> None:
        """Queue `data` for the one socket write this connection makes per loop iteration.

        Requests arrive many to a read and are answered together, so a cancel burst wrote ~25
        replies per connection at a time, one `send` each; joined, the bytes and their order
        are the same and both ends make a fraction of the system calls.
        """
        if self.closed or self.transport is None:
            return
        outbox = self._outbox
        outbox.append(data)
        self.last_write = self._loop.time()
        if len(outbox) == 1:
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        outbox = self._outbox
        if not outbox:
            return
        self._outbox = []
        transport = self.transport
        if self.closed or transport is None:
            return
        transport.write(outbox[0] if len(outbox) == 1 else b"".join(outbox))
        if transport.get_write_buffer_size() > self.broker.options.max_outbound_buffer:
            self.abort("client does not read its replies")

    def _schedule(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadlines = []
        if self.send_every:
            deadlines.append(self.last_write + self.send_every)
        if self.expect_every:
            deadlines.append(self.last_read + self.expect_every)
        if deadlines and not self.closed:
            self._timer = self._loop.call_at(min(deadlines), self._tick)

    def _tick(self) -> None:
        self._timer = None
        if self.closed:
            return
        now = self._loop.time()
        wire = self.wire
        if wire is not None and wire.host.faults.settings.down:
            self.abort(f"host {wire.host.name} is down")
            return
        if self.expect_every and now - self.last_read >= self.expect_every:
            self.abort("no heart-beat from client")
            return
        if self.send_every and now - self.last_write >= self.send_every:
            if wire is not None and wire.host.faults.settings.missed_heartbeats:
                self.last_write = now  # pretend, so the timer does not spin
            else:
                self._write(HEARTBEAT)
        self._schedule()

    def close(self, reason: str) -> None:
        """Close after flushing what is queued (e.g. an ERROR frame)."""
        log.debug("closing STOMP connection from %s: %s", self.peer, reason)
        if self.transport is not None and not self.closed:
            self._flush()
            if not self.closed:  # the flush may have dropped a client that does not read
                self.transport.close()
        self._shutdown()

    def abort(self, reason: str) -> None:
        """Drop the connection now, discarding anything the socket did not take.

        What this iteration queued is handed to the socket first, as each write used to be
        at once: only the transport's backlog is lost, never a reply already answered.
        """
        log.info("dropping STOMP connection from %s: %s", self.peer, reason)
        if self.transport is not None and not self.closed:
            self._flush()
            if not self.closed:
                self.transport.abort()
        self._shutdown()

    def _leave(self) -> None:
        if self.wire is not None:
            for sub in self.sub_ids.values():
                self.wire.remove(sub)
            self.wire.sessions.discard(self)
        self.sub_ids.clear()

    def _shutdown(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._outbox = []
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._leave()

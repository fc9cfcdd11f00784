"""`GET /api/v1/events`: the registry's change events as server-sent events (issue 5, item 4).

Each change is a `message` event whose id is `EPOCH:SEQ` and whose data is one JSON object
`{"seq", "kind", "op", "id", "job_id", "data"}`. `data` is the record as the API shows it (empty
on delete), as of sending rather than a frozen copy: freezing every change would cost the
registry a JSON encoding per change (~12 us) on the throughput path, and clients re-read state.

A new stream starts with `event: ready` once it is subscribed: state read after it misses
nothing the stream will not also deliver. A client reconnecting with `Last-Event-ID` (the header
EventSource sends, or the `last_event_id` query parameter) gets every event it missed, in
order, then the live ones. When the daemon cannot replay them (it restarted, or they left its
buffer) the stream starts with an `event: reset` instead: the client re-reads the state it shows
(GET /jobs/...), then carries on.

Keep-alive comments go out every `heartbeat` seconds (default 15) with the current id, so a
filtered stream's position stays fresh even while nothing it wants happens. A client gone is
noticed within a second (GONE_CHECK) and its stream slot freed. A subscriber too slow to keep up
is cut off; it reconnects with its last id and loses nothing that is still buffered.
"""

from __future__ import annotations

import asyncio
import json
import weakref
from typing import Any

from aiohttp import web

from daemon.api.app import API, DAEMON_KEY, check_query
from daemon.api.limits import StreamSlot
from daemon.errors import BadRequest
from daemon.events import Event, EventHub, ReplayGap, Subscription, format_id, parse_id

KINDS = ("job", "step", "command", "task", "lock", "host")
DEFAULT_HEARTBEAT = 15.0
GONE_CHECK = 1.0  # seconds between checks that the client is still connected
STREAMS_KEY = web.AppKey("event_subscriptions", weakref.WeakSet[Subscription])  # ended at shutdown


def hub_of(request: web.Request) -> EventHub:
    hub: EventHub = request.app[DAEMON_KEY].registry.events
    return hub


def _filters(request: web.Request) -> tuple[str | None, frozenset[str] | None, float]:
    q = request.query
    job = q.get("job")
    if job is not None and not 0 < len(job) <= 64:
        raise BadRequest("job must be a job id")
    kinds = None
    if "kind" in q:
        wanted = frozenset(k.strip() for k in q["kind"].split(",") if k.strip())
        unknown = sorted(wanted - set(KINDS))
        if unknown or not wanted:
            raise BadRequest(f"kind {q['kind']!r}: each must be one of {', '.join(KINDS)}")
        kinds = wanted
    heartbeat = DEFAULT_HEARTBEAT
    if "heartbeat" in q:
        try:
            heartbeat = float(q["heartbeat"])
        except ValueError:
            heartbeat = -1.0
        if not 0.05 <= heartbeat <= 300:
            raise BadRequest(f"heartbeat must be 0.05..300 seconds, got {q['heartbeat']!r}")
    return job, kinds, heartbeat


def _last_event_id(request: web.Request) -> str | None:
    last = request.headers.get("Last-Event-ID") or request.query.get("last_event_id")
    if not last:
        return None
    try:
        parse_id(last)
    except ValueError as e:
        raise BadRequest(f"Last-Event-ID: {e}") from None
    return last


def frame(event_id: str, data: dict[str, Any], kind: str | None = None) -> bytes:
    """One SSE event; the JSON has no newlines, so `data:` is a single line."""
    head = f"event: {kind}\n" if kind else ""
    return f"{head}id: {event_id}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


def event_doc(event: Event) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "kind": event.kind,
        "op": event.op,
        "id": event.id,
        "job_id": event.job_id,
        "data": event.data,
    }


async def stream_events(request: web.Request) -> web.StreamResponse:
    check_query(request, ("job", "kind", "heartbeat", "last_event_id"))
    job, kinds, heartbeat = _filters(request)
    last = _last_event_id(request)
    hub = hub_of(request)
    with StreamSlot(request):
        reset = None
        if last is None:
            sub = hub.subscribe()
        else:
            try:
                sub = hub.resume(last)
            except ReplayGap as e:
                sub, reset = hub.subscribe(), str(e)
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-cache",
                "X-Accel-Buffering": "no",
            }
        )
        try:
            request.app[STREAMS_KEY].add(sub)
            await response.prepare(request)
            await response.write(b"retry: 1000\n\n")
            current = format_id(hub.epoch, hub.seq)
            if reset is not None:
                await response.write(
                    frame(current, {"reason": reset, "epoch": hub.epoch}, kind="reset")
                )
            elif last is None:
                await response.write(frame(current, {"epoch": hub.epoch}, kind="ready"))
            await _pump(request, response, sub, hub, job, kinds, heartbeat)
        except ConnectionError:
            pass  # the client went away
        finally:
            sub.close()
    return response


def _gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


async def _pump(
    request: web.Request,
    response: web.StreamResponse,
    sub: Subscription,
    hub: EventHub,
    job: str | None,
    kinds: frozenset[str] | None,
    heartbeat: float,
) -> None:
    loop = asyncio.get_running_loop()
    quiet_since = loop.time()
    while True:
        try:
            event = await asyncio.wait_for(sub.get(), min(heartbeat, GONE_CHECK))
        except TimeoutError:
            if _gone(request):  # noticed without a write: the stream slot frees promptly
                return
            if loop.time() - quiet_since >= heartbeat:
                # the queue is empty, so every published event was sent or filtered out
                current = format_id(hub.epoch, hub.seq)
                await response.write(f"id: {current}\n: keep-alive\n\n".encode())
                quiet_since = loop.time()
            continue
        quiet_since = loop.time()
        if event is None:  # dropped for falling behind, or the daemon is stopping
            return
        if (job is None or event.job_id == job) and (kinds is None or event.kind in kinds):
            await response.write(frame(hub.event_id(event), event_doc(event)))


async def _end_streams(app: web.Application) -> None:
    """On shutdown: end every stream, or stopping the API would wait for them to time out."""
    subscriptions = app[STREAMS_KEY]
    for sub in list(subscriptions):
        sub.end()


def add_events_routes(app: web.Application) -> None:
    subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
    app[STREAMS_KEY] = subscriptions
    app.on_shutdown.append(_end_streams)
    app.router.add_get(f"{API}/events", stream_events)

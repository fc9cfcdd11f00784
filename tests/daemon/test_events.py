"""Change events: EventHub's numbering and replay, and GET /api/v1/events over the real socket
(ready, changes in order, resumption by Last-Event-ID, reset after a restart, keep-alives,
limits, and streams ended when the API stops)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api.limits import ApiLimits
from daemon.events import EventHub, ReplayGap, parse_id
from daemon.sse import SseEvent, SseParser, read_events
from tests.daemon.api_support import POOL, ApiDaemon, serve, shutdown, sse_stream
from tests.daemon.test_api import HOST, add_host, call

# -- EventHub -----------------------------------------------------------------------------------


def publish(hub: EventHub, n: int) -> None:
    for i in range(n):
        hub.publish("job", "updated", f"j{i}", f"j{i}", {"n": i})


def drain(sub: Any) -> list[int]:
    seqs = []
    while not sub.queue.empty():
        event = sub.queue.get_nowait()
        seqs.append(event.seq if event is not None else -1)
    return seqs


def test_resume_replays_exactly_the_missed_events() -> None:
    hub = EventHub(replay=10)
    publish(hub, 6)
    sub = hub.resume(f"{hub.epoch}:4")
    publish(hub, 1)
    assert drain(sub) == [5, 6, 7]
    assert drain(hub.subscribe(after=7)) == []


def test_resume_refuses_what_it_cannot_replay() -> None:
    hub = EventHub(replay=3)
    publish(hub, 6)  # 4, 5, 6 are buffered
    assert drain(hub.subscribe(after=3)) == [4, 5, 6]
    with pytest.raises(ReplayGap, match="no longer buffered"):
        hub.subscribe(after=2)
    with pytest.raises(ReplayGap, match="never published"):
        hub.subscribe(after=7)
    with pytest.raises(ReplayGap, match="restarted"):
        EventHub(replay=3).resume(f"{hub.epoch}:1")  # another daemon's epoch
    assert EventHub().epoch != EventHub().epoch


@pytest.mark.parametrize(
    "text", ["", "12", "abc", "e:", ":3", "e:-1", "e:1.5", "e:٣", "e:" + "9" * 19]
)
def test_event_ids_are_epoch_colon_seq(text: str) -> None:
    with pytest.raises(ValueError):
        parse_id(text)
    assert parse_id("a1b2:17") == ("a1b2", 17)


def test_a_subscriber_that_falls_behind_is_ended_not_waited_for() -> None:
    hub = EventHub()
    slow = hub.subscribe(maxsize=3)
    publish(hub, 5)
    assert slow.dropped and hub.subscribers == 0
    assert drain(slow)[-1] == -1  # the end marker, after what it had room for


def test_a_failing_listener_does_not_stop_publishing() -> None:
    hub = EventHub()
    seen: list[int] = []

    def broken(event: Any) -> None:
        raise RuntimeError("metrics bug")

    hub.listeners += [broken, lambda e: seen.append(e.seq)]
    publish(hub, 2)
    assert seen == [1, 2]


def test_sse_parser_follows_the_event_stream_rules() -> None:
    parser = SseParser()
    lines = [
        "retry: 1000",
        "",
        "event: ready",
        "id: e:0",
        'data: {"a":1}',
        "",
        ": keep-alive",
        "id: e:5",
        "",
        "data: x",
        "data: y",
        "",
    ]
    events = [e for e in (parser.feed(line) for line in lines) if e is not None]
    assert events == [SseEvent("ready", "e:0", '{"a":1}'), SseEvent("message", "e:5", "x\ny")]
    assert parser.last_id == "e:5"  # an id-only block (a keep-alive) still moves the position


# -- GET /api/v1/events -------------------------------------------------------------------------


async def next_event(events: AsyncIterator[SseEvent]) -> SseEvent:
    async with asyncio.timeout(10):
        return await anext(events)


async def submit_refresh(http: aiohttp.ClientSession) -> str:
    status, job = await call(
        http, "POST", "/jobs", {"action": "RefreshHost", "params": {"host": "host1"}}
    )
    assert status == 201, job
    return str(job["id"])


async def until_job_ends(events: AsyncIterator[SseEvent], job_id: str) -> list[SseEvent]:
    seen = []
    while True:
        event = await next_event(events)
        seen.append(event)
        doc = json.loads(event.data)
        if (
            doc["kind"] == "job"
            and doc["id"] == job_id
            and doc["data"]["status"] in ("FINISHED", "FAILED", "ABORTED")
        ):
            return seen


def seqs(events: list[SseEvent]) -> list[int]:
    return [parse_id(e.id)[1] for e in events]


async def test_stream_starts_ready_then_sends_every_change_in_order(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    async with await sse_stream(http) as response:
        events = read_events(response)
        ready = await next_event(events)
        assert ready.event == "ready"
        epoch, _ = parse_id(ready.id)
        assert json.loads(ready.data) == {"epoch": epoch} == {"epoch": api.registry.events.epoch}
        await add_host(http)
        job_id = await submit_refresh(http)
        changes = await until_job_ends(events, job_id)
    assert all(e.event == "message" and parse_id(e.id)[0] == epoch for e in changes)
    numbers = seqs(changes)
    assert numbers == list(range(numbers[0], numbers[0] + len(numbers)))  # none lost, in order
    docs = [json.loads(e.data) for e in changes]
    assert docs[0]["kind"] == "host" and docs[0]["data"]["name"] == "host1"
    assert {"seq", "kind", "op", "id", "job_id", "data"} == set(docs[1])
    assert ("job", "created") in {(d["kind"], d["op"]) for d in docs}
    assert {d["kind"] for d in docs} >= {"job", "step"}


async def test_last_event_id_resumes_with_nothing_lost_or_repeated(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    await add_host(http)
    async with await sse_stream(http) as response:
        events = read_events(response)
        await next_event(events)  # ready
        first = await until_job_ends(events, await submit_refresh(http))
    # disconnected: more happens meanwhile
    missed_job = await submit_refresh(http)
    cut = first[1]
    async with await sse_stream(http, headers={"Last-Event-ID": cut.id}) as response:
        resumed = await until_job_ends(read_events(response), missed_job)
    assert resumed[0].event == "message"  # no ready, no reset: a plain continuation
    assert seqs(resumed) == list(range(seqs([cut])[0] + 1, seqs(resumed)[-1] + 1))

    def what(events: list[SseEvent]) -> list[tuple[Any, ...]]:
        docs = [json.loads(e.data) for e in events]
        return [(d["seq"], d["kind"], d["op"], d["id"], d["job_id"]) for d in docs]

    # the same changes (their data is the record as of sending: nested fields may be newer)
    assert what(resumed[: len(first) - 2]) == what(first[2:])
    # the query parameter does the same for clients that cannot set headers
    async with await sse_stream(http, f"?last_event_id={cut.id}") as response:
        again = await next_event(read_events(response))
    assert again == resumed[0]


async def test_filters_by_job_and_kind(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    other = await submit_refresh(http)
    mine = await submit_refresh(http)
    await until_quiet(api, {other, mine})
    start = api.registry.events.seq - 200 if api.registry.events.seq > 200 else 0
    query = f"?job={mine}&kind=job,task&last_event_id={api.registry.events.epoch}:{start}"
    async with await sse_stream(http, query) as response:
        got = await until_job_ends(read_events(response), mine)
    docs = [json.loads(e.data) for e in got]
    assert docs and all(d["job_id"] == mine and d["kind"] in ("job", "task") for d in docs)


async def until_quiet(api: ApiDaemon, job_ids: set[str]) -> None:
    from tests.daemon.api_support import settle

    await settle(api)
    assert job_ids <= set(api.registry.jobs)


async def test_keep_alives_carry_the_current_id(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    await add_host(http)  # one event, so the current id is not the start
    async with await sse_stream(http, "?heartbeat=0.05&job=none-such") as response:
        lines: list[str] = []
        async with asyncio.timeout(10):
            while ": keep-alive" not in lines:
                lines.append((await response.content.readline()).decode().rstrip("\n"))
    keep_alive = lines.index(": keep-alive")
    assert lines[keep_alive - 1] == f"id: {api.registry.events.epoch}:{api.registry.events.seq}"


@pytest.mark.parametrize(
    ("query", "headers", "fragment"),
    [
        ("?kind=jobs", {}, "kind"),
        ("?heartbeat=0", {}, "heartbeat"),
        ("?heartbeat=nan", {}, "heartbeat"),
        ("?since=3", {}, "unknown query"),
        ("", {"Last-Event-ID": "17"}, "EPOCH:SEQ"),
        ("?last_event_id=x:y", {}, "EPOCH:SEQ"),
    ],
)
async def test_bad_stream_requests_are_refused_before_streaming(
    http: aiohttp.ClientSession, query: str, headers: dict[str, str], fragment: str
) -> None:
    async with http.get(f"/api/v1/events{query}", headers=headers) as response:
        assert response.status == 400
        assert fragment in (await response.json())["error"]["message"]


async def test_resuming_across_a_restart_gets_a_reset_then_live_events(tmp_path: Path) -> None:
    db = tmp_path / "taskmgrd.db"
    daemon, server = await serve(db)
    old_id = f"{daemon.registry.events.epoch}:{daemon.registry.events.seq}"
    await shutdown(daemon, server)
    daemon, server = await serve(db)  # sequence numbers start over; the epoch differs
    try:
        connector = aiohttp.UnixConnector(path=str(daemon.socket))
        async with aiohttp.ClientSession(base_url="http://taskmgrd", connector=connector) as http:
            async with await sse_stream(http, headers={"Last-Event-ID": old_id}) as response:
                events = read_events(response)
                reset = await next_event(events)
                assert reset.event == "reset"
                assert parse_id(reset.id)[0] == daemon.registry.events.epoch
                assert "restarted" in json.loads(reset.data)["reason"]
                status, _ = await call(http, "POST", "/hosts", {**HOST, "pool": POOL})
                assert status == 201
                live = await next_event(events)
                assert json.loads(live.data)["kind"] == "host"
                assert parse_id(live.id)[1] == parse_id(reset.id)[1] + 1
    finally:
        await shutdown(daemon, server)


async def test_stopping_the_api_ends_open_streams(tmp_path: Path) -> None:
    daemon, server = await serve(tmp_path / "taskmgrd.db")
    connector = aiohttp.UnixConnector(path=str(daemon.socket))
    async with aiohttp.ClientSession(base_url="http://taskmgrd", connector=connector) as http:
        response = await sse_stream(http)
        events = read_events(response)
        await next_event(events)  # ready: subscribed
        async with asyncio.timeout(10):  # not the 60 s aiohttp would wait for the handler
            await shutdown(daemon, server)
        with pytest.raises(StopAsyncIteration):
            await next_event(events)
        response.close()


async def test_open_streams_per_uid_are_limited(tmp_path: Path) -> None:
    daemon, server = await serve(tmp_path / "taskmgrd.db", limits=ApiLimits(max_streams=2))
    try:
        connector = aiohttp.UnixConnector(path=str(daemon.socket))
        async with aiohttp.ClientSession(base_url="http://taskmgrd", connector=connector) as http:
            first, second = await sse_stream(http), await sse_stream(http)
            status, doc = await call(http, "GET", "/events")
            assert status == 429 and doc["error"]["code"] == "rate_limited"
            first.close()
            async with asyncio.timeout(10):
                while True:  # the slot frees once the daemon notices (within GONE_CHECK)
                    async with http.get("/api/v1/events?heartbeat=0.05") as third:
                        if third.status == 200:
                            break
                    await asyncio.sleep(0.05)
            second.close()
    finally:
        await shutdown(daemon, server)

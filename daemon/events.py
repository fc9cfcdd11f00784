"""Change events: every change the registry makes is numbered and published here.

Subscribers (the SSE endpoint, tests) get events through a bounded queue each; one that falls
behind is dropped rather than slowing the daemon, and can resume from its last event id while that
is still in the replay buffer. Listeners (metrics) are plain callbacks run inside `publish`.

Sequence numbers live in memory and restart at 1 with every daemon start, so an event id is
`EPOCH:SEQ`, the epoch being a random token drawn at start: a client resuming with an id from
another epoch (the daemon restarted) or one older than the buffer cannot be given what it missed,
and is told so (`ReplayGap`, which the SSE endpoint turns into a `reset` event: re-read the state).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import uuid
from collections.abc import Callable
from typing import Any, NamedTuple

log = logging.getLogger(__name__)


class Event(NamedTuple):
    """One change. A named tuple rather than a frozen dataclass: every record change makes one,
    and a frozen dataclass's `__init__` sets each field through `object.__setattr__` (three
    times the cost)."""

    seq: int
    kind: str  # job, step, command, task, lock, host
    op: str  # created, updated, deleted
    id: str
    job_id: str | None
    data: dict[str, Any]


class ReplayGap(Exception):
    """Events after the client's id are no longer (or were never) in this daemon's buffer."""


def format_id(epoch: str, seq: int) -> str:
    return f"{epoch}:{seq}"


def parse_id(text: str) -> tuple[str, int]:
    """`EPOCH:SEQ` as (epoch, seq); ValueError for anything else."""
    epoch, sep, seq = text.strip().rpartition(":")
    if not sep or not epoch or not seq.isascii() or not seq.isdigit() or len(seq) > 18:
        raise ValueError(f"event id {text[:80]!r} is not EPOCH:SEQ")
    return epoch, int(seq)


class Subscription:
    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._hub = hub
        self.dropped = False

    async def get(self) -> Event | None:
        """The next event, or None once the subscription was dropped or ended."""
        return await self.queue.get()

    def end(self) -> None:
        """Stop the subscription; its reader gets None after what is already queued (or now,
        when the queue is full: a reader that far behind resumes by event id anyway)."""
        self._hub.unsubscribe(self)
        if self.queue.full():
            self.queue.get_nowait()
        self.queue.put_nowait(None)

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self, replay: int = 10_000, epoch: str | None = None) -> None:
        self.seq = 0
        self.epoch = epoch or uuid.uuid4().hex[:12]
        self._recent: collections.deque[Event] = collections.deque(maxlen=replay)
        self._subs: set[Subscription] = set()
        self.listeners: list[Callable[[Event], None]] = []

    def event_id(self, event: Event) -> str:
        return format_id(self.epoch, event.seq)

    def publish(
        self, kind: str, op: str, id: str, job_id: str | None, data: dict[str, Any]
    ) -> Event:
        self.seq += 1
        event = Event(self.seq, kind, op, id, job_id, data)
        self._recent.append(event)
        if self._subs:  # most changes have no subscriber: no copy of the empty set for them
            for sub in list(self._subs):
                try:
                    sub.queue.put_nowait(event)
                except asyncio.QueueFull:
                    sub.dropped = True
                    sub.end()
        for listener in self.listeners:
            try:
                listener(event)
            except Exception:  # a listener (metrics) must never break the registry's change
                log.exception("event listener %r failed", listener)
        return event

    def subscribe(self, after: int | None = None, maxsize: int = 10_000) -> Subscription:
        """Subscribe; with `after`, first replay the events newer than that number.

        Raises ReplayGap when some of them are gone (older than the buffer) or when `after` is
        a number this daemon never gave out. Replay and registration happen with no await in
        between, so nothing published meanwhile can slip through.
        """
        sub = Subscription(self, maxsize)
        if after is not None:
            if after > self.seq or after < 0:
                raise ReplayGap(f"event {after} was never published by this daemon")
            oldest = self._recent[0].seq if self._recent else self.seq + 1
            if after < oldest - 1:
                raise ReplayGap(f"events after {after} are no longer buffered (oldest {oldest})")
            missed = [e for e in self._recent if e.seq > after]
            if len(missed) > maxsize:
                raise ReplayGap(f"{len(missed)} missed events exceed one subscription's queue")
            for event in missed:
                sub.queue.put_nowait(event)
        self._subs.add(sub)
        return sub

    def resume(self, last_id: str, maxsize: int = 10_000) -> Subscription:
        """Subscribe after a client's `Last-Event-ID`; ReplayGap if this daemon cannot."""
        epoch, seq = parse_id(last_id)
        if epoch != self.epoch:
            raise ReplayGap("the daemon restarted since that event (its sequence started over)")
        return self.subscribe(after=seq, maxsize=maxsize)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

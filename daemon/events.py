"""Change events: every change the registry makes is numbered and published here.

Subscribers (the SSE endpoint, metrics, tests) get events through a bounded queue each; one that
falls behind is dropped rather than slowing the daemon, and can resume from its last sequence
number while that is still in the replay buffer.
"""

from __future__ import annotations

import asyncio
import collections
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class Event:
    seq: int
    kind: str  # job, step, command, task, lock, host
    op: str  # created, updated, deleted
    id: str
    job_id: str | None
    data: dict[str, Any]


class Subscription:
    def __init__(self, hub: EventHub, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event | None] = asyncio.Queue(maxsize)
        self._hub = hub
        self.dropped = False

    async def get(self) -> Event | None:
        """The next event, or None once the subscription was dropped for falling behind."""
        return await self.queue.get()

    def close(self) -> None:
        self._hub.unsubscribe(self)


class EventHub:
    def __init__(self, replay: int = 10_000) -> None:
        self.seq = 0
        self._recent: collections.deque[Event] = collections.deque(maxlen=replay)
        self._subs: set[Subscription] = set()

    def publish(
        self, kind: str, op: str, id: str, job_id: str | None, data: dict[str, Any]
    ) -> Event:
        self.seq += 1
        event = Event(self.seq, kind, op, id, job_id, data)
        self._recent.append(event)
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.dropped = True
                self._subs.discard(sub)
                sub.queue.get_nowait()  # make room for the end marker
                sub.queue.put_nowait(None)
        return event

    def subscribe(self, after: int | None = None, maxsize: int = 10_000) -> Subscription:
        """Subscribe; with `after`, first replay the buffered events newer than that number."""
        sub = Subscription(self, maxsize)
        if after is not None:
            missed = [e for e in self._recent if e.seq > after][-maxsize:]
            for event in missed:
                sub.queue.put_nowait(event)
        self._subs.add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

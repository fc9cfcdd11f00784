"""Per-host event fan-out: VDSM pushes id-less JSON-RPC notifications to `jms.queue.events`.

A host publishes `(method, params)`; every connection that subscribed to the events queue of that
host registers a listener. Listeners must not block: the STOMP layer queues the frame and returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vdsm_simulator.clock import SimClock

EventListener = Callable[[str, dict[str, Any]], None]


class EventBus:
    def __init__(self) -> None:
        self._listeners: list[EventListener] = []
        self.published = 0

    def subscribe(self, listener: EventListener) -> Callable[[], None]:
        """Register a listener; returns the function that removes it."""
        self._listeners.append(listener)

        def unsubscribe() -> None:
            if listener in self._listeners:
                self._listeners.remove(listener)

        return unsubscribe

    def publish(self, method: str, params: dict[str, Any]) -> None:
        """Send one event; VDSM adds `notify_time` (monotonic ms) to every event's params."""
        params = {**params, "notify_time": SimClock.monotonic_ms()}
        self.published += 1
        for listener in list(self._listeners):
            listener(method, params)

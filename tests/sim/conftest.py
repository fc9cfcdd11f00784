"""Shared helpers for simulator tests: wait on conditions with deadlines, never on bare sleeps."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from vdsm_simulator.events import EventBus


async def wait_until(
    predicate: Callable[[], bool],
    timeout: float = 5.0,  # noqa: ASYNC109 - the deadline is this helper's whole contract
    interval: float = 0.001,
) -> None:
    """Poll `predicate` until it holds; fail the test with a clear message at the deadline.

    Polling is deliberate: the conditions are plain state of simulator objects, with no event
    to wait on, and the deadline keeps a broken condition from hanging the suite.
    """
    try:
        async with asyncio.timeout(timeout):
            while not predicate():  # noqa: ASYNC110 - see the docstring
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s: {predicate}") from None


class EventRecorder:
    """Records every event one or more buses publish, tagged with the bus name."""

    def __init__(self, **buses: EventBus) -> None:
        self.events: list[tuple[str, str, dict[str, Any]]] = []
        for name, bus in buses.items():
            bus.subscribe(self._listener(name))

    def _listener(self, bus_name: str) -> Callable[[str, dict[str, Any]], None]:
        def record(method: str, params: dict[str, Any]) -> None:
            self.events.append((bus_name, method, params))

        return record

    def methods(self, prefix: str = "") -> list[tuple[str, str]]:
        return [(bus, method) for bus, method, _ in self.events if method.startswith(prefix)]

    def matching(self, method: str, bus: str | None = None) -> list[dict[str, Any]]:
        return [p for b, m, p in self.events if m == method and (bus is None or b == bus)]

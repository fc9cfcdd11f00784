"""Reading server-sent events (the client side of GET /api/v1/events), for `taskmgr` and tests.

The parser follows the WHATWG event-stream rules that matter here: `field: value` lines, blank
line ends an event, `:` starts a comment, an `id:` line sets the last event id even when the
block has no data (the daemon's keep-alives carry the current id that way). Written out (forty
lines) because the SSE client packages for aiohttp are unmaintained; parsing is pure, the
network loop is `read_events`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True, slots=True)
class SseEvent:
    event: str  # "message" for a change, "reset" when the client must re-read the state
    id: str
    data: str


@dataclass
class SseParser:
    last_id: str = ""
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        """One line without its end of line; returns the event a blank line completes."""
        if not line:
            data, event = self._data, self._event or "message"
            self._data, self._event = [], ""
            if not data:
                return None
            return SseEvent(event, self.last_id, "\n".join(data))
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self.last_id = value
        return None


async def read_events(response: Any, parser: SseParser | None = None) -> AsyncIterator[SseEvent]:
    """The events of an aiohttp response, until the server ends the stream."""
    parser = parser or SseParser()
    async for raw in response.content:
        event = parser.feed(raw.decode("utf-8", "replace").rstrip("\r\n"))
        if event is not None:
            yield event

"""Per-caller limits on the API: a request rate and a number of open event streams per uid.

The body size limit lives in `read_json` (and aiohttp's client_max_size); header and URL sizes
are aiohttp's (8 KiB a line). The rate is a token bucket per caller, refusing with 429 and a
Retry-After rather than queueing: a client in a loop must not hold requests (and their memory)
inside the daemon. Hand-written (a dozen lines) because the libraries around (aiolimiter) wait
for capacity instead of refusing.

Settings: `[daemon] api_rate_per_second`, `api_rate_burst`, `api_max_streams` (the defaults
below stand for a settings object without them); tests may pass an ApiLimits to build_app.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from daemon.api.auth import PEER_KEY
from daemon.errors import RateLimited

DEFAULT_RATE = 1000.0  # requests per second per uid, sustained (the throughput bench: ~300/s)
DEFAULT_BURST = 2000.0  # requests a uid may send at once before the rate applies
DEFAULT_STREAMS = 32  # open GET /events streams per uid
IDLE_BUCKETS = 10_000  # callers remembered; full buckets are forgotten beyond this


@dataclass(frozen=True, slots=True)
class ApiLimits:
    rate_per_second: float = DEFAULT_RATE
    burst: float = DEFAULT_BURST
    max_streams: int = DEFAULT_STREAMS

    @classmethod
    def from_settings(cls, settings: Any) -> ApiLimits:
        section = getattr(settings, "daemon", None)
        return cls(
            rate_per_second=float(getattr(section, "api_rate_per_second", DEFAULT_RATE)),
            burst=float(getattr(section, "api_rate_burst", DEFAULT_BURST)),
            max_streams=int(getattr(section, "api_max_streams", DEFAULT_STREAMS)),
        )


@dataclass(slots=True)
class Bucket:
    tokens: float
    at: float


@dataclass
class RateLimiter:
    """Token buckets by caller key; pure logic, the clock is passed in."""

    rate: float
    burst: float
    buckets: dict[str, Bucket] = field(default_factory=dict)

    def take(self, key: str, now: float) -> float:
        """0.0 when the request may go ahead, else the seconds until it could."""
        bucket = self.buckets.get(key)
        if bucket is None:
            if len(self.buckets) >= IDLE_BUCKETS:
                self._forget_full(now)
            bucket = self.buckets[key] = Bucket(self.burst, now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.at) * self.rate)
        bucket.at = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def _forget_full(self, now: float) -> None:
        for key, b in list(self.buckets.items()):
            if b.tokens + (now - b.at) * self.rate >= self.burst:
                del self.buckets[key]


LIMITS_KEY = web.AppKey("limits", ApiLimits)
LIMITER_KEY = web.AppKey("rate_limiter", RateLimiter)
STREAMS_KEY = web.AppKey("open_streams", dict)  # caller key -> open event streams


def caller_key(request: web.Request) -> str:
    peer = request.get(PEER_KEY)
    if peer is not None:
        return f"uid:{peer.uid}"
    return f"addr:{request.remote or '?'}"


def setup_limits(app: web.Application, limits: ApiLimits) -> None:
    app[LIMITS_KEY] = limits
    app[LIMITER_KEY] = RateLimiter(limits.rate_per_second, limits.burst)
    app[STREAMS_KEY] = {}


@web.middleware
async def rate_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    wait = request.app[LIMITER_KEY].take(caller_key(request), time.monotonic())
    if wait > 0:
        error = RateLimited(
            f"more than {request.app[LIMITS_KEY].rate_per_second:g} requests per second; "
            f"retry in {wait:.2f}s"
        )
        response = web.json_response(
            {"error": {"code": error.code, "message": error.message}}, status=error.status
        )
        response.headers["Retry-After"] = str(max(1, math.ceil(wait)))
        return response
    return await handler(request)


class StreamSlot:
    """One open event stream counted against its caller (context manager)."""

    def __init__(self, request: web.Request) -> None:
        self._open: dict[str, int] = request.app[STREAMS_KEY]
        self._key = caller_key(request)
        limit = request.app[LIMITS_KEY].max_streams
        if self._open.get(self._key, 0) >= limit:
            raise RateLimited(f"{limit} event streams already open for this caller")

    def __enter__(self) -> StreamSlot:
        self._open[self._key] = self._open.get(self._key, 0) + 1
        return self

    def __exit__(self, *exc: object) -> None:
        left = self._open[self._key] - 1
        if left:
            self._open[self._key] = left
        else:
            del self._open[self._key]

"""Per-caller limits: the token bucket on its own (a clock passed in), and 429 with Retry-After
on the real socket, with the refused request changing nothing."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from daemon.api.limits import IDLE_BUCKETS, ApiLimits, RateLimiter
from tests.daemon.api_support import serve, shutdown, snapshot


def test_bucket_allows_the_burst_then_the_rate() -> None:
    limiter = RateLimiter(rate=10.0, burst=3.0)
    assert [limiter.take("uid:1", 0.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    wait = limiter.take("uid:1", 0.0)
    assert abs(wait - 0.1) < 1e-9  # one token comes back every 1/rate seconds
    assert limiter.take("uid:2", 0.0) == 0.0  # callers do not share a bucket
    assert limiter.take("uid:1", 0.1) == 0.0
    assert limiter.take("uid:1", 10.0) == 0.0  # refilled, but never beyond the burst
    assert limiter.buckets["uid:1"].tokens == 2.0


def test_idle_callers_are_forgotten() -> None:
    limiter = RateLimiter(rate=1.0, burst=1.0)
    for n in range(IDLE_BUCKETS):
        limiter.take(f"uid:{n}", 0.0)
    limiter.take("uid:new", 5.0)  # the others are full again by then
    assert set(limiter.buckets) == {"uid:new"}


async def test_over_the_rate_is_429_with_retry_after(tmp_path: Path) -> None:
    daemon, server = await serve(
        tmp_path / "taskmgrd.db", limits=ApiLimits(rate_per_second=0.5, burst=2)
    )
    try:
        connector = aiohttp.UnixConnector(path=str(daemon.socket))
        async with aiohttp.ClientSession(base_url="http://taskmgrd", connector=connector) as http:
            for _ in range(2):
                async with http.get("/api/v1/health") as response:
                    assert response.status == 200
            before = await snapshot(daemon)
            body = {"name": "h1", "address": "127.0.0.1", "port": 1, "pool": "p"}
            async with http.post("/api/v1/hosts", json=body) as response:
                assert response.status == 429
                assert int(response.headers["Retry-After"]) >= 1
                doc = await response.json()
            assert doc["error"]["code"] == "rate_limited"
            assert await snapshot(daemon) == before
    finally:
        await shutdown(daemon, server)


def test_limits_and_admin_group_come_from_the_config_file(tmp_path: Path) -> None:
    from daemon.api.access import admin_gid
    from daemon.config import ConfigError, load_config

    path = tmp_path / "t.toml"
    path.write_text(
        '[daemon]\nadmin_group = "0"\napi_rate_per_second = 5\napi_rate_burst = 1\n'
        "api_max_streams = 2\n"
    )
    config = load_config(path)
    assert ApiLimits.from_settings(config) == ApiLimits(5.0, 1.0, 2)
    assert admin_gid(config) == 0
    assert admin_gid(load_config(None)) is None
    path.write_text("[daemon]\napi_rate_per_second = 0\n")
    with pytest.raises(ConfigError, match=r"\[daemon\] api_rate_per_second: expected"):
        load_config(path)
    path.write_text('[daemon]\napi_max_streams = "many"\n')
    with pytest.raises(ConfigError, match=r"\[daemon\] api_max_streams: expected"):
        load_config(path)

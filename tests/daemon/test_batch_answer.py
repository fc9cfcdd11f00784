"""The batch answer of `POST /api/v1/jobs`: a summary per job (issue 3, throughput), the full
trees only with `?view=full`, and a bad `view` refused with nothing created."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from tests.daemon.api_support import POOL, ApiDaemon, snapshot

HOST = {"name": "host1", "address": "127.0.0.1", "port": 54321, "pool": POOL}
ENTRY = {"action": "RefreshHost", "params": {"host": "host1"}}
SUMMARY_KEYS = {
    "id",
    "action",
    "status",
    "correlation_id",
    "owner",
    "description",
    "created_at",
    "updated_at",
    "ended_at",
    "error",
    "tasks",
    "cancel",
    "href",
}


async def call(
    http: aiohttp.ClientSession, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with http.request(method, f"/api/v1{path}", data=data, headers=headers) as response:
        return response.status, await response.json()


async def test_batch_answers_one_summary_per_job(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "POST", "/hosts", HOST)
    assert status == 201, doc
    status, doc = await call(http, "POST", "/jobs", {"batch": [ENTRY] * 3, "correlation_id": "b"})
    assert status == 201, doc
    assert [set(j) for j in doc["jobs"]] == [SUMMARY_KEYS] * 3  # no step tree, no commands
    for job in doc["jobs"]:
        assert (job["action"], job["correlation_id"]) == ("RefreshHost", "b")
        assert job["href"] == f"/api/v1/jobs/{job['id']}"
        status, shown = await call(http, "GET", f"/jobs/{job['id']}")
        assert status == 200 and shown["id"] == job["id"] and "steps" in shown


async def test_batch_view_full_answers_the_whole_jobs(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "POST", "/hosts", HOST)
    assert status == 201, doc
    status, doc = await call(http, "POST", "/jobs?view=full", {"batch": [ENTRY] * 2})
    assert status == 201, doc
    assert all({"steps", "commands", "tasks", "locks"} <= set(j) for j in doc["jobs"])


async def test_bad_view_is_refused_and_creates_nothing(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "POST", "/hosts", HOST)
    assert status == 201, doc
    before = await snapshot(api)
    for query in ("?view=tree", "?view=", "?views=full"):
        status, doc = await call(http, "POST", f"/jobs{query}", {"batch": [ENTRY]})
        assert status == 400, (query, doc)
        assert doc["error"]["code"] == "bad_request"
    assert await snapshot(api) == before

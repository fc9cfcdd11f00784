"""The local API over a real unix socket: every route's shape, and every bad input answered with
the right 4xx while nothing changes (registry and database compared before and after)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import stat
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.api.app import build_app
from daemon.api.auth import Peer, read_groups
from daemon.api.server import ApiStartError, start_api, stop_api
from daemon.commands import public_actions
from daemon.model import LockKind
from tests.daemon.api_support import POOL, ApiDaemon, settle, short_dir, snapshot
from tests.sim.conftest import wait_until

HOST = {"name": "host1", "address": "127.0.0.1", "port": 54321, "pool": POOL}


async def call(
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
) -> tuple[int, Any]:
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    headers = {"Content-Type": "application/json"} if data is not None else {}
    async with http.request(method, f"/api/v1{path}", data=data, headers=headers) as response:
        return response.status, await response.json()


def assert_error(status: int, doc: Any, expected_status: int, code: str | None = None) -> None:
    assert status == expected_status, doc
    assert set(doc) == {"error"} and set(doc["error"]) == {"code", "message"}, doc
    assert doc["error"]["message"]
    if code is not None:
        assert doc["error"]["code"] == code, doc


async def add_host(http: aiohttp.ClientSession, **changes: Any) -> None:
    status, doc = await call(http, "POST", "/hosts", {**HOST, **changes})
    assert status == 201, doc


# -- shapes ---------------------------------------------------------------------------------------


async def test_health(http: aiohttp.ClientSession) -> None:
    status, doc = await call(http, "GET", "/health")
    assert status == 200
    assert doc["status"] == "ok" and doc["version"]
    assert doc["uptime_seconds"] >= 0
    assert set(doc["jobs"]) == {"STARTED", "CANCELLING", "FINISHED", "FAILED", "ABORTED", "UNKNOWN"}
    assert doc["hosts"] == 0


async def test_actions_list_public_actions_with_schema_and_policy(
    http: aiohttp.ClientSession,
) -> None:
    status, doc = await call(http, "GET", "/actions")
    assert status == 200
    names = [a["name"] for a in doc["actions"]]
    assert names == sorted(public_actions())
    assert "InstallHost" not in names  # internal: runs only as AddHost's child
    for action in doc["actions"]:
        assert action["description"]
        assert action["params"]["type"] == "object" and "properties" in action["params"]
        assert {"cancellable", "modes", "default_mode", "point_of_no_return"} <= set(
            action["cancel"]
        )
    create = next(a for a in doc["actions"] if a["name"] == "CreateDisk")
    assert {"pool", "domain", "size"} <= set(create["params"]["required"])


async def test_hosts_add_list_remove(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    assert await call(http, "GET", "/hosts") == (200, {"hosts": []})
    status, host = await call(http, "POST", "/hosts", {**HOST, "transport": "http", "tls": True})
    assert status == 201
    assert {k: host[k] for k in ("name", "address", "port", "pool", "transport", "tls")} == {
        **HOST,
        "transport": "http",
        "tls": True,
    }
    assert host["status"] == "UP"
    status, doc = await call(http, "GET", "/hosts")
    assert status == 200 and [h["name"] for h in doc["hosts"]] == ["host1"]
    status, health = await call(http, "GET", "/health")
    assert health["hosts"] == 1 and health["hosts_by_status"] == {"UP": 1}
    assert await call(http, "DELETE", "/hosts/host1") == (200, {"removed": "host1"})
    assert api.registry.hosts == {}


async def test_submit_one_job_owned_by_the_peer(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    await add_host(http)
    status, job = await call(
        http,
        "POST",
        "/jobs",
        {
            "action": "RefreshHost",
            "params": {"host": "host1"},
            "correlation_id": "corr-1",
            "description": "refresh it",
        },
    )
    assert status == 201, job
    assert job["action"] == "RefreshHost" and job["params"] == {"host": "host1"}
    assert job["owner"] == os.getuid()
    assert job["correlation_id"] == "corr-1" and job["description"] == "refresh it"
    assert {"id", "status", "steps", "tasks", "cancel", "result", "commands"} <= set(job)
    assert job["cancel"] is None
    assert api.registry.jobs[job["id"]].owner == os.getuid()

    await settle(api)
    status, shown = await call(http, "GET", f"/jobs/{job['id']}")
    assert status == 200
    assert shown["status"] == "FINISHED", shown
    assert [s["type"] for s in shown["steps"]] == ["VALIDATING", "EXECUTING", "FINALIZING"]
    assert all("steps" in s for s in shown["steps"])
    assert shown["result"]["host"] == "host1"


async def test_submit_batch_one_job_per_entry(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    entries = [{"action": "RefreshHost", "params": {"host": "host1"}} for _ in range(3)]
    status, doc = await call(http, "POST", "/jobs", {"batch": entries, "correlation_id": "b-1"})
    assert status == 201, doc
    assert doc["correlation_id"] == "b-1"
    assert len(doc["jobs"]) == 3 and len({j["id"] for j in doc["jobs"]}) == 3
    assert all(j["owner"] == os.getuid() and j["correlation_id"] == "b-1" for j in doc["jobs"])
    status, listed = await call(http, "GET", "/jobs?correlation_id=b-1")
    assert status == 200 and listed["total"] == 3
    assert {j["id"] for j in listed["jobs"]} == {j["id"] for j in doc["jobs"]}

    status, doc = await call(http, "POST", "/jobs", {"batch": entries[:1]})
    assert status == 201 and doc["correlation_id"]  # one is made up when none is given


async def test_list_jobs_filters_newest_first(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    ids = []
    for host in ("host1", "nowhere", "host1"):
        status, job = await call(
            http, "POST", "/jobs", {"action": "RefreshHost", "params": {"host": host}}
        )
        assert status == 201
        ids.append(job["id"])
    await settle(api)

    status, doc = await call(http, "GET", "/jobs")
    assert status == 200
    assert [j["id"] for j in doc["jobs"]] == ids[::-1]
    assert doc["count"] == doc["total"] == 3
    summary = doc["jobs"][0]
    assert {"id", "action", "status", "correlation_id", "owner", "created_at", "error"} <= set(
        summary
    )
    assert "steps" not in summary

    status, doc = await call(http, "GET", "/jobs?status=FAILED")
    assert [j["id"] for j in doc["jobs"]] == [ids[1]]
    assert "no host named" in doc["jobs"][0]["error"]
    status, doc = await call(http, "GET", "/jobs?status=finished,failed&action=RefreshHost&limit=2")
    assert [j["id"] for j in doc["jobs"]] == ids[:0:-1] and doc["total"] == 3
    status, doc = await call(http, "GET", "/jobs?action=CreateDisk")
    assert doc == {"jobs": [], "count": 0, "total": 0}


# -- bad input: the right 4xx, and nothing changed ------------------------------------------------

VALID = {"action": "RefreshHost", "params": {"host": "host1"}}
VALID_ENTRY = {"action": "RefreshHost", "params": {"host": "host1"}}

BAD_JOBS: list[tuple[str, Any, str]] = [
    ("not json", b"{nope", "bad_json"),
    ("empty body", b"", "bad_json"),
    ("NaN", b'{"action": "RefreshHost", "params": {"host": NaN}}', "bad_json"),
    ("not an object", [VALID], "bad_request"),
    ("unknown field", {**VALID, "priority": 1}, "bad_request"),
    ("missing action", {"params": {"host": "host1"}}, "invalid_params"),
    ("action not a string", {"action": 7, "params": {}}, "invalid_params"),
    ("unknown action", {"action": "FormatEverything", "params": {}}, "unknown_action"),
    ("internal action", {"action": "InstallHost", "params": {"host": "host1"}}, "unknown_action"),
    ("params not an object", {"action": "RefreshHost", "params": ["host1"]}, "invalid_params"),
    ("missing param", {"action": "RefreshHost", "params": {}}, "invalid_params"),
    ("unknown param", {"action": "RefreshHost", "params": {"host": "h", "x": 1}}, "invalid_params"),
    ("bad param value", {"action": "RefreshHost", "params": {"host": "a b"}}, "invalid_params"),
    (
        "bad size",
        {"action": "CreateDisk", "params": {"pool": POOL, "domain": POOL, "size": -1}},
        "invalid_params",
    ),
    ("correlation too long", {**VALID, "correlation_id": "x" * 51}, "invalid_params"),
    ("correlation not a string", {**VALID, "correlation_id": 5}, "invalid_params"),
    ("description not a string", {**VALID, "description": ["x"]}, "invalid_params"),
    ("empty batch", {"batch": []}, "invalid_params"),
    ("batch not a list", {"batch": VALID_ENTRY}, "invalid_params"),
    ("batch and action", {"batch": [VALID_ENTRY], **VALID}, "bad_request"),
    ("batch with description", {"batch": [VALID_ENTRY], "description": "d"}, "bad_request"),
    (
        "batch entry with an extra field",
        {"batch": [VALID_ENTRY, {**VALID_ENTRY, "owner": 0}]},
        "invalid_params",
    ),
    (
        "batch with one invalid entry",
        {"batch": [VALID_ENTRY, {"action": "RefreshHost", "params": {}}, VALID_ENTRY]},
        "invalid_params",
    ),
    (
        "batch with an internal action",
        {"batch": [VALID_ENTRY, {"action": "InstallHost", "params": {"host": "host1"}}]},
        "unknown_action",
    ),
    (
        "batch correlation too long",
        {"batch": [VALID_ENTRY], "correlation_id": "x" * 51},
        "invalid_params",
    ),
]


@pytest.mark.parametrize(
    ("body", "code"), [(b, c) for _, b, c in BAD_JOBS], ids=[n for n, _, _ in BAD_JOBS]
)
async def test_bad_job_requests_change_nothing(
    api: ApiDaemon, http: aiohttp.ClientSession, body: Any, code: str
) -> None:
    await add_host(http)
    status, _ = await call(http, "POST", "/jobs", VALID)
    assert status == 201
    before = await snapshot(api)
    raw = body if isinstance(body, bytes) else None
    status, doc = await call(http, "POST", "/jobs", None if raw is not None else body, raw=raw)
    assert_error(status, doc, 400, code)
    assert await snapshot(api) == before


async def test_batch_error_names_the_entry(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    body = {"batch": [VALID_ENTRY, {"action": "RefreshHost", "params": {"host": 5}}]}
    status, doc = await call(http, "POST", "/jobs", body)
    assert_error(status, doc, 400, "invalid_params")
    assert doc["error"]["message"].startswith("batch[1]")
    assert api.registry.jobs == {}


BAD_HOSTS: list[tuple[str, Any, int, str]] = [
    ("not json", b"[", 400, "bad_json"),
    ("not an object", ["host1"], 400, "bad_request"),
    ("unknown field", {**HOST, "spm": True}, 400, "bad_request"),
    ("missing pool", {k: v for k, v in HOST.items() if k != "pool"}, 400, "invalid_params"),
    ("bad name", {**HOST, "name": "../etc"}, 400, "invalid_params"),
    ("bad address", {**HOST, "address": "a b"}, 400, "invalid_params"),
    ("port too big", {**HOST, "port": 70000}, 400, "invalid_params"),
    ("port a string", {**HOST, "port": "54321"}, 400, "invalid_params"),
    ("port a bool", {**HOST, "port": True}, 400, "invalid_params"),
    ("pool not a UUID", {**HOST, "pool": "pool1"}, 400, "invalid_params"),
    ("bad transport", {**HOST, "transport": "ssh"}, 400, "invalid_params"),
    ("tls a string", {**HOST, "tls": "yes"}, 400, "invalid_params"),
    ("duplicate", {**HOST, "name": "existing"}, 409, "conflict"),
]


@pytest.mark.parametrize(
    ("body", "status_", "code"),
    [(b, s, c) for _, b, s, c in BAD_HOSTS],
    ids=[n for n, *_ in BAD_HOSTS],
)
async def test_bad_host_requests_change_nothing(
    api: ApiDaemon, http: aiohttp.ClientSession, body: Any, status_: int, code: str
) -> None:
    await add_host(http, name="existing")
    before = await snapshot(api)
    raw = body if isinstance(body, bytes) else None
    status, doc = await call(http, "POST", "/hosts", None if raw is not None else body, raw=raw)
    assert_error(status, doc, status_, code)
    assert await snapshot(api) == before


async def test_remove_unknown_or_busy_host(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    status, created = await call(http, "POST", "/jobs", VALID)
    assert status == 201
    await settle(api)
    # a host locked by a job (as a running RefreshHost holds it) cannot go away under it
    job = api.registry.jobs[created["id"]]
    api.registry.acquire_locks(job, [("host:host1", LockKind.SHARED)])
    before = await snapshot(api)
    status, doc = await call(http, "DELETE", "/hosts/nowhere")
    assert_error(status, doc, 404, "not_found")
    status, doc = await call(http, "DELETE", "/hosts/host1")
    assert_error(status, doc, 409, "conflict")
    assert job.id in doc["error"]["message"]
    assert await snapshot(api) == before
    api.registry.release_locks(job.id)
    assert (await call(http, "DELETE", "/hosts/host1"))[0] == 200


BAD_QUERIES = [
    ("/jobs?status=DONE", "STARTED, CANCELLING, FINISHED, FAILED, ABORTED, UNKNOWN"),
    ("/jobs?status=", "STARTED"),
    ("/jobs?action=Nope", "RefreshHost"),
    ("/jobs?limit=0", "limit"),
    ("/jobs?limit=many", "limit"),
    ("/jobs?owner=0", "allowed: status, action, correlation_id, limit"),
    ("/jobs?status=FAILED&status=FINISHED", "more than once"),
    ("/jobs?correlation_id=" + "x" * 51, "correlation_id"),
]


@pytest.mark.parametrize(("path", "says"), BAD_QUERIES, ids=[p for p, _ in BAD_QUERIES])
async def test_bad_job_filters(http: aiohttp.ClientSession, path: str, says: str) -> None:
    status, doc = await call(http, "GET", path)
    assert_error(status, doc, 400, "bad_request")
    assert says in doc["error"]["message"]


async def test_unknown_job_route_and_method(http: aiohttp.ClientSession) -> None:
    status, doc = await call(http, "GET", "/jobs/4b5b9a4e-0000-0000-0000-000000000000")
    assert_error(status, doc, 404, "not_found")
    status, doc = await call(http, "GET", "/nothing/here")
    assert_error(status, doc, 404, "not_found")
    status, doc = await call(http, "PUT", "/jobs")
    assert_error(status, doc, 405, "method_not_allowed")


async def test_oversized_body_is_refused_and_changes_nothing(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    await add_host(http)
    before = await snapshot(api)
    big = {**VALID, "description": "x" * (1 << 20)}
    status, doc = await call(http, "POST", "/jobs", big)
    assert_error(status, doc, 413, "too_large")

    async def chunks() -> Any:  # no Content-Length: the limit holds while reading
        yield b'{"action": "RefreshHost", "description": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}'

    async with http.post("/api/v1/jobs", data=chunks()) as response:
        assert response.status == 413
        assert (await response.json())["error"]["code"] == "too_large"
    assert await snapshot(api) == before
    assert (await call(http, "GET", "/health"))[0] == 200


async def test_unexpected_errors_are_500_and_the_daemon_lives_on(
    api: ApiDaemon, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture
) -> None:
    api.hosts.fail_next_add = RuntimeError("boom")
    status, doc = await call(http, "POST", "/hosts", HOST)
    assert_error(status, doc, 500, "internal")
    assert "boom" not in doc["error"]["message"]  # details go to the log, not the client
    assert any("boom" in (r.exc_text or "") for r in caplog.records)
    assert (await call(http, "GET", "/health"))[0] == 200
    assert api.registry.hosts == {}


# -- peer credentials -----------------------------------------------------------------------------


def test_peer_groups_come_from_proc() -> None:
    assert read_groups(os.getpid()) == frozenset(os.getgroups())
    assert read_groups(2**22 + 12345) == frozenset()  # gone: no groups, never an error
    peer = Peer(1, 1000, 1000, frozenset({10}))
    assert peer.in_group(10) and peer.in_group(1000) and not peer.in_group(0)
    assert not peer.is_root


# -- the socket ---------------------------------------------------------------------------------


async def test_socket_mode_and_cleanup(api: ApiDaemon) -> None:
    assert stat.S_IMODE(os.stat(api.socket).st_mode) == 0o660
    assert stat.S_ISSOCK(os.stat(api.socket).st_mode)


async def test_refuses_to_steal_a_live_socket(api: ApiDaemon) -> None:
    with pytest.raises(ApiStartError, match="already running"):
        await start_api(build_app(api), api.socket)
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(api.socket))) as s:
        async with s.get("http://taskmgrd/api/v1/health") as response:
            assert response.status == 200  # the first one still serves


async def test_stale_socket_is_replaced_and_removed_at_stop(api: ApiDaemon) -> None:
    path = short_dir() / "api.sock"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()  # the file stays, nobody listens: a crashed daemon's leftover
    server = await start_api(build_app(api), path, mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        reader, writer = await asyncio.open_unix_connection(str(path))
        writer.write(b"GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert (await reader.readline()).startswith(b"HTTP/1.1 200")
        writer.close()
    finally:
        await stop_api(server)
    assert not path.exists()
    path.parent.rmdir()


async def test_refuses_a_path_that_is_not_a_socket(api: ApiDaemon, tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    path.write_text("precious")
    with pytest.raises(ApiStartError, match="not a socket"):
        await start_api(build_app(api), path)
    assert path.read_text() == "precious"


async def test_unknown_socket_group_is_refused(api: ApiDaemon) -> None:
    path = short_dir() / "api.sock"
    with pytest.raises(ApiStartError, match="does not exist"):
        await start_api(build_app(api), path, group="no-such-group-xyz")
    assert not path.exists()
    path.parent.rmdir()


async def test_jobs_keep_running_after_the_client_goes(api: ApiDaemon) -> None:
    await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(api.socket))) as s:
        async with s.post("http://taskmgrd/api/v1/jobs", json=VALID) as response:
            job = await response.json()
    await wait_until(lambda: api.registry.jobs[job["id"]].status.value == "FINISHED")

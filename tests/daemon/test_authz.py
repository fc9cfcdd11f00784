"""Who may do what, with real processes of other uids (setpriv) on the real socket: a member of
the socket's group reads everything but cannot cancel or clear another uid's job (403, nothing
changed); jobs belong to their submitter; a uid outside the group is kept out twice over (the
socket's permissions, and the daemon's own check should the socket be opened up)."""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import shutil
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from daemon.api.access import admin_gid, is_privileged, may_read, require_manager
from daemon.api.auth import Peer
from daemon.errors import Forbidden
from tests.daemon.api_support import ApiDaemon, serve, settle, short_dir, shutdown, snapshot
from tests.daemon.test_api import HOST
from tests.daemon.test_cli import ROOT

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("setpriv") is None,
    reason="running clients as other uids needs root and setpriv (util-linux)",
)

CLIENT = """
import asyncio, json, sys, aiohttp
async def main():
    out = []
    async with aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=sys.argv[1])) as s:
        for method, path, body in json.loads(sys.argv[2]):
            try:
                async with s.request(method, "http://taskmgrd" + path, json=body) as r:
                    text = await r.text()
                    is_json = r.content_type == "application/json"
                    out.append([r.status, json.loads(text) if is_json else text])
            except aiohttp.ClientConnectorError as e:
                out.append([0, str(e.os_error)])
    print(json.dumps(out))
asyncio.run(main())
"""


def unused_id(start: int) -> int:
    """A uid that no user has whose number no group has either (used as both)."""
    for n in range(start, start + 1000):
        try:
            pwd.getpwuid(n)
            continue
        except KeyError:
            pass
        try:
            grp.getgrgid(n)
            continue
        except KeyError:
            return n
    raise AssertionError("no free id")


async def run_as(uid: int, groups: list[int], *argv: str) -> tuple[int, str, str]:
    group_opt = [f"--groups={','.join(map(str, groups))}"] if groups else ["--clear-groups"]
    proc = await asyncio.create_subprocess_exec(
        "setpriv",
        f"--reuid={uid}",
        f"--regid={uid}",
        *group_opt,
        sys.executable,
        *argv,
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", ""), "HOME": "/tmp", "COLUMNS": "200"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def requests_as(
    uid: int, groups: list[int], socket: Path, calls: list[tuple[str, str, Any]]
) -> list[tuple[int, Any]]:
    code, out, err = await run_as(uid, groups, "-c", CLIENT, str(socket), json.dumps(calls))
    assert code == 0, err
    return [(status, doc) for status, doc in json.loads(out)]


@pytest.fixture
async def shared(tmp_path: Path) -> AsyncIterator[tuple[ApiDaemon, int]]:
    """A daemon whose socket (0660) belongs to a fresh group, as a deployment would set it."""
    group = unused_id(64000)
    socket_dir = short_dir()
    os.chown(socket_dir, -1, group)
    socket_dir.chmod(0o750)  # the group may reach the socket; others may not even see it
    daemon, server = await serve(tmp_path / "taskmgrd.db", group=group, socket_dir=socket_dir)
    try:
        assert os.stat(daemon.socket).st_gid == group
        yield daemon, group
    finally:
        await shutdown(daemon, server)


async def root_job(api: ApiDaemon) -> str:
    await api.hosts.add_host(HOST["name"], HOST["address"], HOST["port"], HOST["pool"])
    job = await api.executor.submit("RefreshHost", {"host": "host1"}, owner=0)
    await settle(api)
    return job.id


@needs_root
async def test_a_group_member_reads_but_may_not_cancel_or_clear_anothers_job(
    shared: tuple[ApiDaemon, int],
) -> None:
    api, group = shared
    other = unused_id(group + 1)
    job_id = await root_job(api)
    before = await snapshot(api)
    answers = await requests_as(
        other,
        [group],
        api.socket,
        [
            ("GET", f"/api/v1/jobs/{job_id}", None),
            ("GET", "/api/v1/jobs", None),
            ("GET", "/api/v1/hosts", None),
            ("GET", "/metrics", None),
            ("POST", f"/api/v1/jobs/{job_id}/cancel", {"mode": "stop"}),
            ("POST", f"/api/v1/jobs/{job_id}/clear", None),
            (
                "POST",
                "/api/v1/cancel",
                {"correlation_id": api.registry.jobs[job_id].correlation_id},
            ),
        ],
    )
    statuses = [status for status, _ in answers]
    assert statuses == [200, 200, 200, 200, 403, 403, 403], answers
    assert answers[0][1]["id"] == job_id and answers[0][1]["owner"] == 0
    assert "belongs to uid 0" in answers[4][1]["error"]["message"]
    assert f"you are uid {other}" in answers[4][1]["error"]["message"]
    assert await snapshot(api) == before  # refused: nothing changed, in memory or on disk

    # the CLI says the same, with its exit codes: 0 for the read, 1 for the refusal
    socket = ["-m", "daemon.cli", "--socket", str(api.socket)]
    code, out, err = await run_as(other, [group], *socket, "--json", "show", job_id)
    assert code == 0 and json.loads(out)["id"] == job_id, err
    code, out, err = await run_as(other, [group], *socket, "cancel", "--no-wait", job_id)
    assert code == 1 and err.startswith("error: forbidden: "), (out, err)


@needs_root
async def test_jobs_belong_to_their_submitter_who_may_clear_them(
    shared: tuple[ApiDaemon, int],
) -> None:
    api, group = shared
    other = unused_id(group + 1)
    await root_job(api)
    [(status, job)] = await requests_as(
        other,
        [group],
        api.socket,
        [("POST", "/api/v1/jobs", {"action": "RefreshHost", "params": {"host": "host1"}})],
    )
    assert status == 201 and job["owner"] == other
    await settle(api)
    [(status, doc)] = await requests_as(
        other, [group], api.socket, [("POST", f"/api/v1/jobs/{job['id']}/clear", None)]
    )
    assert (status, doc) == (200, {"cleared": job["id"]})
    assert job["id"] not in api.registry.jobs


@needs_root
async def test_the_admin_group_may_clear_anyones_job(tmp_path: Path) -> None:
    group, admin = unused_id(64000), unused_id(65000)
    socket_dir = short_dir()
    os.chown(socket_dir, -1, group)
    socket_dir.chmod(0o750)
    api, server = await serve(
        tmp_path / "taskmgrd.db", group=group, socket_dir=socket_dir, admin_group=str(admin)
    )
    try:
        job_id = await root_job(api)
        operator = unused_id(admin + 1)
        [(status, doc)] = await requests_as(
            operator, [group, admin], api.socket, [("POST", f"/api/v1/jobs/{job_id}/clear", None)]
        )
        assert (status, doc) == (200, {"cleared": job_id})
        assert job_id not in api.registry.jobs
    finally:
        await shutdown(api, server)


@needs_root
async def test_a_uid_outside_the_group_is_kept_out(shared: tuple[ApiDaemon, int]) -> None:
    api, group = shared
    stranger = unused_id(group + 2)
    # the directory and the socket's mode stop it before the daemon hears of it
    [(status, reason)] = await requests_as(
        stranger, [], api.socket, [("GET", "/api/v1/health", None)]
    )
    assert status == 0 and "Permission denied" in reason
    code, _, err = await run_as(
        stranger, [], "-m", "daemon.cli", "--socket", str(api.socket), "jobs"
    )
    assert code == 3 and "permission denied" in err
    # opened up by mistake (mode 0666): the daemon still refuses it
    api.socket.parent.chmod(0o755)
    api.socket.chmod(0o666)
    [(status, doc)] = await requests_as(stranger, [], api.socket, [("GET", "/api/v1/jobs", None)])
    assert status == 403 and "socket's group" in doc["error"]["message"]


# -- the rules themselves ------------------------------------------------------------------------


def settings(admin: object = None) -> Any:
    return SimpleNamespace(daemon=SimpleNamespace(admin_group=admin))


def test_the_rules() -> None:
    alice = Peer(pid=1, uid=1000, gid=1000, groups=frozenset({50}))
    admin = Peer(pid=2, uid=1001, gid=1001, groups=frozenset({10}))
    root = Peer(pid=3, uid=0, gid=0, groups=frozenset())
    rules = settings(10)
    assert admin_gid(rules) == 10 and admin_gid(settings("10")) == 10
    assert admin_gid(settings("root")) == 0 and admin_gid(settings("no-such-group")) is None
    assert admin_gid(settings()) is None
    assert is_privileged(admin, rules) and is_privileged(root, rules)
    assert not is_privileged(alice, rules) and not is_privileged(admin, settings())
    assert may_read(alice, rules, sock_gid=50) and not may_read(alice, rules, sock_gid=51)
    assert may_read(admin, rules, sock_gid=51)  # the admin group reads everything
    assert require_manager(alice, rules, 1000, "job j") is False  # own job, not privileged
    assert require_manager(admin, rules, 1000, "job j") is True
    with pytest.raises(Forbidden, match="belongs to uid 1001"):
        require_manager(alice, rules, 1000 + 1, "job j")

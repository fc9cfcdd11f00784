"""`taskmgr` as a user runs it: a subprocess talking to a served API over its unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from daemon.cli import parse_params
from tests.daemon.api_support import POOL, ApiDaemon, settle

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Run:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


async def taskmgr(*args: str, socket: Path | None, env: dict[str, str] | None = None) -> Run:
    argv = [sys.executable, "-m", "daemon.cli"]
    if socket is not None:
        argv += ["--socket", str(socket)]
    full_env = {k: v for k, v in os.environ.items() if k != "TASKMGR_SOCKET"}
    full_env.update({"COLUMNS": "200", **(env or {})})
    proc = await asyncio.create_subprocess_exec(
        *argv,
        *args,
        cwd=ROOT,
        env=full_env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return Run(proc.returncode, out.decode(), err.decode())


async def test_actions_human_and_json(api: ApiDaemon) -> None:
    run = await taskmgr("actions", socket=api.socket)
    assert run.code == 0, run.err
    assert "CreateDisk" in run.out and "RefreshHost" in run.out
    run = await taskmgr("actions", "--json", socket=api.socket)  # --json after the command too
    assert run.code == 0
    assert "CreateDisk" in [a["name"] for a in run.json()["actions"]]


async def test_hosts_add_list_remove(api: ApiDaemon) -> None:
    run = await taskmgr("hosts", "add", "host1", "127.0.0.1", "54321", POOL, socket=api.socket)
    assert run.code == 0, run.err
    assert "host1" in api.registry.hosts
    run = await taskmgr("--json", "hosts", socket=api.socket)
    assert run.code == 0 and [h["name"] for h in run.json()["hosts"]] == ["host1"]
    run = await taskmgr("hosts", socket=api.socket)
    assert run.code == 0 and "host1" in run.out
    run = await taskmgr(
        "hosts",
        "add",
        "host1",
        "127.0.0.1",
        "54321",
        POOL,
        "--transport",
        "http",
        socket=api.socket,
    )
    assert run.code == 1 and run.err.startswith("error: conflict: ")
    run = await taskmgr("hosts", "remove", "host1", socket=api.socket)
    assert run.code == 0 and api.registry.hosts == {}
    run = await taskmgr("hosts", "remove", "host1", socket=api.socket)
    assert run.code == 1 and run.err.startswith("error: not_found: ")


async def test_submit_wait_show_and_jobs(api: ApiDaemon) -> None:
    await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    run = await taskmgr(
        "submit", "RefreshHost", "host=host1", "--correlation-id", "c1", "--wait", socket=api.socket
    )
    assert run.code == 0, run.out + run.err
    assert "FINISHED" in run.out and "Finalizing" in run.out

    run = await taskmgr("--json", "submit", "RefreshHost", "host=host1", socket=api.socket)
    assert run.code == 0
    job = run.json()
    assert job["owner"] == os.getuid() and job["params"] == {"host": "host1"}
    await settle(api)

    run = await taskmgr("show", job["id"], socket=api.socket)
    assert run.code == 0 and job["id"] in run.out and "Executing" in run.out
    run = await taskmgr("show", job["id"], "--json", socket=api.socket)
    assert run.code == 0 and run.json()["status"] == "FINISHED"

    run = await taskmgr("jobs", "--json", "--correlation-id", "c1", socket=api.socket)
    assert run.code == 0 and run.json()["total"] == 1
    run = await taskmgr("jobs", "--status", "FINISHED", socket=api.socket)
    assert run.code == 0 and "RefreshHost" in run.out
    run = await taskmgr("jobs", "--status", "DONE", socket=api.socket)
    assert run.code == 1 and "error: bad_request: " in run.err and "FINISHED" in run.err


async def test_a_waited_job_that_fails_exits_1(api: ApiDaemon) -> None:
    run = await taskmgr("submit", "RefreshHost", "host=nowhere", "--wait", socket=api.socket)
    assert run.code == 1, run.out + run.err
    assert "FAILED" in run.out and "no host named" in run.out
    run = await taskmgr(
        "--json", "submit", "RefreshHost", "host=nowhere", "--wait", socket=api.socket
    )
    assert run.code == 1 and run.json()["status"] == "FAILED"


async def test_daemon_errors_exit_1(api: ApiDaemon) -> None:
    run = await taskmgr("submit", "FormatEverything", socket=api.socket)
    assert run.code == 1 and run.err.startswith("error: unknown_action: ")
    run = await taskmgr("--json", "submit", "RefreshHost", "host=a b", socket=api.socket)
    assert run.code == 1 and run.json()["error"]["code"] == "invalid_params"
    run = await taskmgr("show", "no-such-job", socket=api.socket)
    assert run.code == 1 and run.err.startswith("error: not_found: ")
    assert api.registry.jobs == {}


@pytest.mark.parametrize(
    "args",
    [
        (),
        ("frobnicate",),
        ("submit",),
        ("submit", "RefreshHost", "host"),
        ("submit", "RefreshHost", "--params", "[1]"),
        ("submit", "RefreshHost", "--params", "{nope"),
        ("hosts", "add", "h", "addr", "not-a-port", POOL),
    ],
    ids=["nothing", "unknown command", "no action", "no =", "params list", "params bad", "port"],
)
async def test_usage_errors_exit_2(api: ApiDaemon, args: tuple[str, ...]) -> None:
    run = await taskmgr(*args, socket=api.socket)
    assert run.code == 2, run.err
    assert run.err
    assert api.registry.jobs == {} and api.registry.hosts == {}


async def test_unreachable_daemon_exits_3(tmp_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    run = await taskmgr("jobs", socket=missing)
    assert run.code == 3 and str(missing) in run.err
    run = await taskmgr("health", socket=None, env={"TASKMGR_SOCKET": str(missing)})
    assert run.code == 3 and str(missing) in run.err


async def test_json_failures_print_an_error_document_too(api: ApiDaemon, tmp_path: Path) -> None:
    """A script reading --json output gets JSON on every exit path, shaped as the API's errors."""
    run = await taskmgr("--json", "jobs", socket=tmp_path / "nothing.sock")
    assert run.code == 3 and run.json()["error"]["code"] == "unreachable"
    run = await taskmgr("--json", "submit", "RefreshHost", "host", socket=api.socket)
    assert run.code == 2 and run.json()["error"]["code"] == "usage"
    assert "key=value" in run.json()["error"]["message"]
    assert api.registry.jobs == {}


async def test_a_wait_that_times_out_still_names_the_job_in_json(api: ApiDaemon) -> None:
    """--wait --json prints one document; when the wait gives up, a script must still learn
    which job it submitted (it keeps running)."""
    await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    argv = ("--json", "submit", "RefreshHost", "host=host1", "--wait", "--timeout", "0")
    run = await taskmgr(*argv, socket=api.socket)
    assert run.code == 1, run.out + run.err
    error = run.json()["error"]
    assert error["code"] == "timeout" and list(api.registry.jobs) == [error["job"]]
    assert "did not end within 0s" in error["message"]


async def test_env_socket_is_used(api: ApiDaemon) -> None:
    run = await taskmgr("--json", "health", socket=None, env={"TASKMGR_SOCKET": str(api.socket)})
    assert run.code == 0 and run.json()["status"] == "ok"


def test_key_value_params_parse_as_json_when_they_can() -> None:
    params = parse_params(
        ["size=1073741824", "sparse=true", "name=vm-1", "disks=[1, 2]", "empty=", "uuid=" + POOL],
        '{"size": 1, "pool": "p"}',
    )
    assert params == {
        "size": 1073741824,
        "sparse": True,
        "name": "vm-1",
        "disks": [1, 2],
        "empty": "",
        "uuid": POOL,
        "pool": "p",
    }


# -- live view: events, watch, clear ------------------------------------------------------------


async def refresh_job(api: ApiDaemon, host: str = "host1") -> str:
    if "host1" not in api.registry.hosts:
        await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    job = await api.executor.submit("RefreshHost", {"host": host}, owner=os.getuid())
    await settle(api)
    return job.id


async def test_cancelling_a_batch_that_already_ended_exits_1_with_the_refusals(
    api: ApiDaemon,
) -> None:
    """Every job of the batch refused (ended already): nothing was cancelled, so not 0, and
    --json still says why for each job."""
    await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    for _ in range(2):
        await api.executor.submit(
            "RefreshHost", {"host": "host1"}, owner=os.getuid(), correlation_id="b1"
        )
    await settle(api)
    run = await taskmgr("cancel", "--correlation-id", "b1", socket=api.socket)
    assert run.code == 1 and run.out.count("already ended") == 2, run.out + run.err
    run = await taskmgr("--json", "cancel", "--correlation-id", "b1", socket=api.socket)
    assert run.code == 1
    doc = run.json()
    assert doc["correlation_id"] == "b1" and doc["ended"] == []
    assert [j["code"] for j in doc["jobs"]] == ["job_ended", "job_ended"]


async def test_events_streams_json_lines_from_ready_on(api: ApiDaemon) -> None:
    argv = [sys.executable, "-m", "daemon.cli", "--socket", str(api.socket)]
    proc = await asyncio.create_subprocess_exec(
        *argv,
        "--json",
        "events",
        "--kind",
        "host",
        "--count",
        "2",
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        ready = json.loads(await proc.stdout.readline())  # subscribed: changes from now are seen
        assert ready["event"] == "ready" and ready["epoch"] == api.registry.events.epoch
        await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
        await api.hosts.add_host("host2", "127.0.0.1", 54322, POOL)
        out, err = await proc.communicate()
    assert proc.returncode == 0, err.decode()
    lines = [json.loads(line) for line in out.decode().splitlines()]
    assert [(e["kind"], e["id"]) for e in lines] == [("host", "host1"), ("host", "host2")]
    assert lines[0]["event"] == "message" and lines[0]["event_id"].endswith(f":{lines[0]['seq']}")


async def test_events_usage_and_daemon_errors(api: ApiDaemon, tmp_path: Path) -> None:
    run = await taskmgr("events", "--since", "garbage", socket=api.socket)
    assert run.code == 1 and "EPOCH:SEQ" in run.err
    run = await taskmgr("events", "--count", "0", socket=api.socket)
    assert run.code == 2
    run = await taskmgr("events", socket=tmp_path / "none.sock")
    assert run.code == 3 and "no such socket" in run.err


async def test_watch_a_job_to_its_end(api: ApiDaemon) -> None:
    finished = await refresh_job(api)
    run = await taskmgr("--json", "watch", finished, socket=api.socket)
    assert run.code == 0, run.err
    assert json.loads(run.out.splitlines()[-1])["status"] == "FINISHED"
    run = await taskmgr("watch", finished, socket=api.socket)
    assert run.code == 0 and finished in run.out and "RefreshHost" in run.out
    assert run.out.endswith("\n")  # not a terminal: the last view is a whole line too
    failed = await refresh_job(api, host="no-such-host")
    run = await taskmgr("watch", failed, socket=api.socket)
    assert run.code == 1 and "FAILED" in run.out
    run = await taskmgr("watch", "no-such-job", socket=api.socket)
    assert run.code == 1 and run.err.startswith("error: not_found: ")


async def test_watch_follows_a_running_job(api: ApiDaemon) -> None:
    """The job starts after the watch does: the view must follow it from events, not luck."""
    await api.hosts.add_host("host1", "127.0.0.1", 54321, POOL)
    job = await api.executor.submit("RefreshHost", {"host": "host1"}, owner=os.getuid())
    run = await taskmgr("--json", "watch", job.id, socket=api.socket)
    assert run.code == 0, run.err
    views = [json.loads(line) for line in run.out.splitlines()]
    assert views[-1]["status"] == "FINISHED" and views[-1]["id"] == job.id


async def test_clear_an_ended_job(api: ApiDaemon) -> None:
    job_id = await refresh_job(api)
    run = await taskmgr("--json", "clear", job_id, socket=api.socket)
    assert run.code == 0 and run.json() == {"cleared": job_id}
    assert job_id not in api.registry.jobs
    await api.store.flush()
    assert job_id not in {d["id"] for d in await api.store.load("job")}
    run = await taskmgr("clear", job_id, socket=api.socket)
    assert run.code == 1 and run.err.startswith("error: not_found: ")


async def test_watch_without_a_job_redraws_the_newest_jobs_until_interrupted(
    api: ApiDaemon,
) -> None:
    argv = [sys.executable, "-m", "daemon.cli", "--socket", str(api.socket), "--json", "watch"]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            first = json.loads(await proc.stdout.readline())
            assert first["jobs"] == []
            job_id = await refresh_job(api)
            while True:  # redrawn as the job changes, until it shows the ended job
                view = json.loads(await proc.stdout.readline())
                if [(j["id"], j["status"]) for j in view["jobs"]] == [(job_id, "FINISHED")]:
                    break
            proc.send_signal(signal.SIGINT)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130


async def test_watch_into_a_pipe_prints_each_changed_view_as_it_comes(api: ApiDaemon) -> None:
    """Not a terminal (a pipe, a log): no live redraw, but each view that differs is printed
    when it comes, not only at the end (without JOB there is no end but Ctrl-C)."""
    argv = [sys.executable, "-m", "daemon.cli", "--socket", str(api.socket), "watch"]
    env = {**os.environ, "COLUMNS": "200"}
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=ROOT, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(60):
            assert (await proc.stdout.readline()).startswith(b"jobs (0 of 0)")
            job_id = await refresh_job(api)
            while job_id.encode() not in (line := await proc.stdout.readline()):
                assert line, "watch ended"
            proc.send_signal(signal.SIGINT)
            await proc.wait()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130


def test_the_live_views_render_steps_tasks_and_progress() -> None:
    from rich.console import Console

    from daemon.watch import job_view, jobs_view

    job = {
        "id": "j1",
        "action": "CopyDisk",
        "status": "STARTED",
        "steps": [
            {
                "id": "s1",
                "description": "Executing",
                "status": "STARTED",
                "progress": 40,
                "steps": [
                    {
                        "id": "s2",
                        "description": "Copying",
                        "status": "STARTED",
                        "progress": None,
                        "steps": [],
                    }
                ],
            },
        ],
        "tasks": [
            {
                "step_id": "s2",
                "vdsm_id": "t-1",
                "host": "host1",
                "status": "POLLING",
                "vdsm_state": "running",
                "vdsm_result": "",
            }
        ],
        "cancel": None,
        "error": "",
    }
    console = Console(record=True, width=160, color_system=None)
    console.print(job_view(job))
    console.print(
        jobs_view(
            {
                "count": 1,
                "total": 1,
                "jobs": [
                    {
                        "id": "j1",
                        "action": "CopyDisk",
                        "status": "STARTED",
                        "tasks": 1,
                        "correlation_id": "c",
                        "owner": 0,
                    }
                ],
            }
        )
    )
    text = console.export_text()
    assert "Executing" in text and "40%" in text and "Copying" in text
    assert "task t-1 on host1: POLLING (VDSM running/-)" in text
    assert "━" in text  # the progress bar
    assert "jobs (1 of 1)" in text

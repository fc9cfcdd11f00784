"""`taskmgr`, the command-line client of taskmgrd's local API (a unix socket, JSON).

Human output uses rich tables and trees; `--json` prints the daemon's JSON as it came, for
scripts. Exit codes are stable so scripts can branch on them:
0 ok · 1 the daemon answered with an error (or a waited job did not finish) · 2 usage error ·
3 the daemon cannot be reached.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import sys
import time
from collections.abc import AsyncGenerator, Sequence
from typing import Any

import aiohttp
from rich.console import Console
from rich.table import Table
from rich.tree import Tree

from daemon.sse import SseEvent, SseParser, read_events

DEFAULT_SOCKET = "/run/taskmgrd/api.sock"
API = "http://taskmgrd/api/v1"
TERMINAL = ("FINISHED", "FAILED", "ABORTED")

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3
RECONNECTS = 20  # event streams: attempts, half a second apart, before giving up

STATUS_STYLE = {
    "STARTED": "cyan",
    "CANCELLING": "yellow",
    "FINISHED": "green",
    "FAILED": "red",
    "ABORTED": "magenta",
    "UNKNOWN": "bright_black",
    "UP": "green",
    "NON_RESPONSIVE": "red",
    "MAINTENANCE": "yellow",
    "PREPARING_FOR_MAINTENANCE": "yellow",
    "INSTALLING": "cyan",
}


class Unreachable(Exception):
    """The socket could not be used; the message names it."""


class ApiError(Exception):
    """The daemon answered with `{"error": {...}}`."""

    def __init__(self, status: int, doc: Any) -> None:
        error = doc.get("error", {}) if isinstance(doc, dict) else {}
        self.status = status
        self.doc = doc
        self.code = str(error.get("code", f"http_{status}"))
        self.message = str(error.get("message", doc))
        super().__init__(f"{self.code}: {self.message}")


class Client:
    """One connection pool to the daemon's socket for the life of a command."""

    def __init__(self, socket_path: str, *, timeout: float = 30.0) -> None:
        self.socket_path = socket_path
        self.session = aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=socket_path),
            timeout=aiohttp.ClientTimeout(total=timeout),
        )

    async def close(self) -> None:
        await self.session.close()
        if "stream_session" in self.__dict__:
            await self.stream_session.close()

    async def call(self, method: str, path: str, *, body: Any = None, **query: Any) -> Any:
        params = {k: str(v) for k, v in query.items() if v is not None}
        try:
            async with self.session.request(
                method, f"{API}{path}", json=body, params=params
            ) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientConnectionError, OSError, TimeoutError) as e:
            raise Unreachable(f"cannot reach taskmgrd at {self.socket_path}: {_reason(e)}") from e
        try:
            doc = json.loads(text)
        except ValueError:
            raise Unreachable(
                f"{self.socket_path} answered HTTP {status} without JSON; is it taskmgrd?"
            ) from None
        if status >= 400:
            raise ApiError(status, doc)
        return doc

    async def events(
        self, *, job: str | None = None, kind: str | None = None, since: str | None = None
    ) -> AsyncGenerator[SseEvent, None]:
        """GET /events, reconnecting after a dropped stream with the last id seen (so nothing
        is missed while the daemon still has it; otherwise the daemon sends a reset)."""
        parser = SseParser(last_id=since or "")
        params = {k: v for k, v in (("job", job), ("kind", kind)) if v is not None}
        failures, connected = 0, False
        while True:
            headers = {"Last-Event-ID": parser.last_id} if parser.last_id else {}
            try:
                async with self.stream_session.get(
                    f"{API}/events", params=params, headers=headers
                ) as response:
                    if response.status >= 400:
                        text = await response.text()
                        raise ApiError(response.status, _json_or_text(text))
                    failures, connected = 0, True
                    async for event in read_events(response, parser):
                        yield event
            except (aiohttp.ClientConnectionError, OSError) as e:
                failures += 1
                if not connected or failures > RECONNECTS:
                    raise Unreachable(
                        f"cannot reach taskmgrd at {self.socket_path}: {_reason(e)}"
                    ) from e
            await asyncio.sleep(0.5)  # the stream ended (daemon restarting?): reconnect

    @functools.cached_property
    def stream_session(self) -> aiohttp.ClientSession:
        """A second session without the total timeout: an event stream lasts."""
        return aiohttp.ClientSession(
            connector=aiohttp.UnixConnector(path=self.socket_path),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )


def _json_or_text(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return {"error": {"code": "bad_answer", "message": text[:200]}}


def _reason(e: BaseException) -> str:
    if isinstance(e, TimeoutError):
        return "no answer in time"
    cause = getattr(e, "os_error", None) or e.__cause__ or e
    if isinstance(cause, FileNotFoundError):
        return "no such socket (is the daemon running? use --socket or TASKMGR_SOCKET)"
    if isinstance(cause, ConnectionRefusedError):
        return "connection refused (the daemon is not running)"
    if isinstance(cause, PermissionError):
        return "permission denied (are you in the socket's group?)"
    return str(cause) or type(cause).__name__


# -- parsing --------------------------------------------------------------------------------------


class UsageError(Exception):
    pass


def parse_value(text: str) -> Any:
    """`key=value` values: JSON when they parse (numbers, true/false, lists), else the string."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_params(pairs: Sequence[str], params_json: str | None) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if params_json is not None:
        try:
            loaded = json.loads(params_json)
        except ValueError as e:
            raise UsageError(f"--params is not valid JSON: {e}") from None
        if not isinstance(loaded, dict):
            raise UsageError("--params must be a JSON object")
        params.update(loaded)
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"expected key=value, got {pair!r}")
        params[key] = parse_value(value)
    return params


def build_parser() -> argparse.ArgumentParser:
    # --socket and --json are accepted before or after the command
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--socket", default=argparse.SUPPRESS, help="the daemon's socket (env TASKMGR_SOCKET)"
    )
    common.add_argument(
        "--json", action="store_true", default=argparse.SUPPRESS, help="print the raw JSON"
    )
    parser = argparse.ArgumentParser(
        prog="taskmgr", parents=[common], description="client of the taskmgrd daemon"
    )
    sub = parser.add_subparsers(dest="command", required=True)

    submit = sub.add_parser("submit", parents=[common], help="submit a job")
    submit.add_argument("action", help="an action name (see `taskmgr actions`)")
    submit.add_argument("pairs", nargs="*", metavar="key=value", help="parameters")
    submit.add_argument("--params", help="parameters as a JSON object (key=value pairs win)")
    submit.add_argument("--correlation-id", help="tag to find the job by (1-50 characters)")
    submit.add_argument("--description", help="what the job is for")
    submit.add_argument("--wait", action="store_true", help="follow the job until it ends")
    submit.add_argument("--timeout", type=float, help="give up waiting after SECONDS")

    jobs = sub.add_parser("jobs", parents=[common], help="list jobs, newest first")
    jobs.add_argument("--status", help="STARTED, CANCELLING, FINISHED, FAILED, ABORTED, UNKNOWN")
    jobs.add_argument("--action")
    jobs.add_argument("--correlation-id")
    jobs.add_argument("--limit", type=int)

    cancel = sub.add_parser("cancel", parents=[common], help="cancel a job or a batch")
    target = cancel.add_mutually_exclusive_group(required=True)
    target.add_argument("job", nargs="?", help="the job to cancel")
    target.add_argument("--correlation-id", help="cancel every job of a batch")
    cancel.add_argument("--revert", action="store_true", help="undo completed work too")
    cancel.add_argument(
        "--force",
        action="store_true",
        help="operators only: end now, orphan what cannot be reached",
    )
    cancel.add_argument("--reason", default="", help="why (recorded with the cancel)")
    cancel.add_argument("--no-wait", action="store_true", help="return once the cancel is recorded")
    cancel.add_argument("--timeout", type=float, help="give up waiting after SECONDS")

    show = sub.add_parser("show", parents=[common], help="a job with its steps and tasks")
    show.add_argument("job")

    hosts = sub.add_parser("hosts", parents=[common], help="list, add or remove hosts")
    hosts_sub = hosts.add_subparsers(dest="hosts_command")
    add = hosts_sub.add_parser("add", parents=[common], help="register a host")
    add.add_argument("name")
    add.add_argument("address")
    add.add_argument("port", type=int)
    add.add_argument("pool", help="storage pool UUID")
    add.add_argument("--transport", choices=("stomp", "http"), default="stomp")
    add.add_argument("--tls", action="store_true", help="connect with TLS")
    remove = hosts_sub.add_parser("remove", parents=[common], help="unregister a host")
    remove.add_argument("name")

    clear = sub.add_parser("clear", parents=[common], help="drop an ended job now")
    clear.add_argument("job")

    watch = sub.add_parser(
        "watch", parents=[common], help="follow one job (or the newest jobs) live"
    )
    watch.add_argument("job", nargs="?", help="the job to follow; it ends when the job does")
    watch.add_argument("--limit", type=int, default=20, help="jobs shown without JOB (20)")

    events = sub.add_parser("events", parents=[common], help="print change events as they come")
    events.add_argument("--job", help="only this job's events")
    events.add_argument("--kind", help="comma-separated: job, step, command, task, lock, host")
    events.add_argument("--since", help="resume after this event id (EPOCH:SEQ)")
    events.add_argument("--count", type=int, help="stop after this many events")

    sub.add_parser("actions", parents=[common], help="actions, their parameters, cancel policy")
    sub.add_parser("health", parents=[common], help="the daemon's state")
    return parser


# -- commands -------------------------------------------------------------------------------------


async def run(args: argparse.Namespace, console: Console) -> int:
    client = Client(args.socket)
    try:
        return await dispatch(client, args, console)
    finally:
        await client.close()


async def dispatch(client: Client, args: argparse.Namespace, console: Console) -> int:
    as_json: bool = args.json
    cmd = args.command
    if cmd == "submit":
        body: dict[str, Any] = {
            "action": args.action,
            "params": parse_params(args.pairs, args.params),
        }
        if args.correlation_id is not None:
            body["correlation_id"] = args.correlation_id
        if args.description is not None:
            body["description"] = args.description
        job = await client.call("POST", "/jobs", body=body)
        if not args.wait:
            emit(console, as_json, job, lambda: print_submitted(console, job))
            return EXIT_OK
        if not as_json:
            print_submitted(console, job)
        job = await wait_job(client, job["id"], console, args.timeout, quiet=as_json)
        emit(console, as_json, job, lambda: print_job(console, job))
        return EXIT_OK if job["status"] == "FINISHED" else EXIT_ERROR
    if cmd == "jobs":
        doc = await client.call(
            "GET",
            "/jobs",
            status=args.status,
            action=args.action,
            correlation_id=args.correlation_id,
            limit=args.limit,
        )
        emit(console, as_json, doc, lambda: print_jobs(console, doc))
        return EXIT_OK
    if cmd == "cancel":
        return await cancel_jobs(client, args, console)
    if cmd == "show":
        job = await client.call("GET", f"/jobs/{args.job}")
        emit(console, as_json, job, lambda: print_job(console, job))
        return EXIT_OK
    if cmd == "hosts":
        if args.hosts_command == "add":
            host = {
                "name": args.name,
                "address": args.address,
                "port": args.port,
                "pool": args.pool,
                "transport": args.transport,
                "tls": args.tls,
            }
            doc = await client.call("POST", "/hosts", body=host)
            emit(console, as_json, doc, lambda: console.print(f"host {doc['name']} added"))
        elif args.hosts_command == "remove":
            doc = await client.call("DELETE", f"/hosts/{args.name}")
            emit(console, as_json, doc, lambda: console.print(f"host {args.name} removed"))
        else:
            doc = await client.call("GET", "/hosts")
            emit(console, as_json, doc, lambda: print_hosts(console, doc))
        return EXIT_OK
    if cmd == "clear":
        doc = await client.call("POST", f"/jobs/{args.job}/clear")
        emit(console, as_json, doc, lambda: console.print(f"job {args.job} cleared"))
        return EXIT_OK
    if cmd == "events":
        return await print_events(client, args, console)
    if cmd == "watch":
        from daemon.watch import watch  # rich's live display, only for this command

        return await watch(client, args.job, console, as_json=as_json, limit=args.limit)
    if cmd == "actions":
        doc = await client.call("GET", "/actions")
        emit(console, as_json, doc, lambda: print_actions(console, doc))
        return EXIT_OK
    if cmd == "health":
        doc = await client.call("GET", "/health")
        emit(console, as_json, doc, lambda: print_health(console, doc))
        return EXIT_OK
    raise UsageError(f"unknown command {cmd!r}")


async def print_events(client: Client, args: argparse.Namespace, console: Console) -> int:
    """One line per event (a JSON object per line with --json), until --count or Ctrl-C."""
    if args.count is not None and args.count < 1:
        raise UsageError("--count must be at least 1")
    seen = 0
    async for event in client.events(job=args.job, kind=args.kind, since=args.since):
        doc = json.loads(event.data)
        if event.event == "ready":  # subscribed; not a change (shown to scripts, not counted)
            if args.json:
                sys.stdout.write(json.dumps({"event": "ready", "event_id": event.id, **doc}) + "\n")
                sys.stdout.flush()
            continue
        if args.json:
            line = {"event": event.event, "event_id": event.id, **doc}
            sys.stdout.write(json.dumps(line, sort_keys=True) + "\n")
            sys.stdout.flush()
        elif event.event == "reset":
            console.print(f"[yellow]reset[/] {event.id}: {doc.get('reason', '')}")
        else:
            status = doc.get("data", {}).get("status", "")
            console.print(
                f"{event.id} {doc['kind']} {doc['op']} {doc['id']}"
                + (f" job {doc['job_id']}" if doc.get("job_id") not in (None, doc["id"]) else "")
                + (f" {_styled(status)}" if status else "")
            )
        seen += 1
        if args.count is not None and seen >= args.count:
            break
    return EXIT_OK


async def cancel_jobs(client: Client, args: argparse.Namespace, console: Console) -> int:
    """Cancel, then (unless --no-wait) follow each job to its end: 0 when every job was taken
    (a batch's refusals count: the daemon answers 202 with one verdict per job) and all ended
    ABORTED."""
    body: dict[str, Any] = {"mode": "revert" if args.revert else "stop", "reason": args.reason}
    if args.force:
        body["force"] = True
    if args.correlation_id:
        doc = await client.call(
            "POST", "/cancel", body={**body, "correlation_id": args.correlation_id}
        )
        ids = [j["job"] for j in doc["jobs"] if j["accepted"] or j["status"] == 200]
        refused = len(ids) < len(doc["jobs"])
        if not args.json:
            for j in doc["jobs"]:
                console.print(f"job {j['job']}: {j['reason']}")
        if args.no_wait:
            if args.json:
                emit(console, True, doc, lambda: None)
            return EXIT_ERROR if refused else EXIT_OK
        ended = [await wait_job(client, i, console, args.timeout, quiet=args.json) for i in ids]
        if args.json:  # the daemon's verdict per job, and each taken job as it ended
            emit(console, True, {**doc, "ended": ended}, lambda: None)
        else:
            print_cancelled(console, ended)
        aborted = all(j["status"] == "ABORTED" for j in ended)
        return EXIT_OK if aborted and not refused else EXIT_ERROR
    doc = await client.call("POST", f"/jobs/{args.job}/cancel", body=body)
    if not args.json:
        console.print(
            f"job {doc['id']}: {doc['status']} "
            f"({doc.get('cancel_decision', {}).get('reason', '')})"
        )
    if args.no_wait:
        if args.json:
            emit(console, True, doc, lambda: None)
        return EXIT_OK
    job = await wait_job(client, doc["id"], console, args.timeout, quiet=args.json)
    emit(console, args.json, job, lambda: print_cancelled(console, [job]))
    return EXIT_OK if job["status"] == "ABORTED" else EXIT_ERROR


def print_cancelled(console: Console, ended: list[dict[str, Any]]) -> None:
    for job in ended:
        cancel = job.get("cancel") or {}
        console.print(
            f"job {job['id']}: {_styled(job['status'])} "
            f"outcome={cancel.get('outcome', '')} late={cancel.get('late', False)}"
        )


async def wait_job(
    client: Client, job_id: str, console: Console, limit: float | None, *, quiet: bool
) -> Any:
    """Follow the job until it is terminal: read it again whenever its event stream says it
    changed (the stream's first event, ready, comes once subscribed, so no change is missed)."""
    job: Any = None
    spinner = console.status("waiting", spinner="dots") if not quiet else None
    with spinner if spinner is not None else contextlib.nullcontext() as status:
        try:
            async with (
                asyncio.timeout(limit),
                contextlib.aclosing(client.events(job=job_id)) as events,
            ):
                async for _ in events:
                    job = await client.call("GET", f"/jobs/{job_id}")
                    if job["status"] in TERMINAL:
                        return job
                    if status is not None:
                        status.update(
                            f"job {job_id}: {_styled(job['status'])} {_current_step(job)}"
                        )
        except TimeoutError:
            state = f" (still {job['status']})" if job is not None else ""
            raise TimeoutWaiting(
                job_id, f"job {job_id} did not end within {limit:g}s{state}"
            ) from None
    raise Unreachable(f"the event stream of {client.socket_path} ended")  # events() never ends


class TimeoutWaiting(Exception):
    """A waited job did not end in time; it goes on running, so its id is reported."""

    def __init__(self, job_id: str, message: str) -> None:
        super().__init__(message)
        self.job_id = job_id


def _current_step(job: dict[str, Any]) -> str:
    """The deepest step still running, for the spinner line."""
    found = ""
    stack = list(job.get("steps", []))
    while stack:
        step = stack.pop()
        if step.get("status") == "STARTED":
            found = str(step.get("description", ""))
        stack.extend(step.get("steps", []))
    return found


# -- output ---------------------------------------------------------------------------------------


def emit(console: Console, as_json: bool, doc: Any, human: Any) -> None:
    if as_json:
        sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    else:
        human()


def _styled(status: str) -> str:
    style = STATUS_STYLE.get(status)
    return f"[{style}]{status}[/]" if style else status


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts)) if ts else "-"


def _duration(start: float | None, end: float | None) -> str:
    if not start:
        return "-"
    seconds = (end or time.time()) - start
    return f"{seconds:.1f}s" if seconds < 120 else f"{seconds / 60:.1f}m"


def print_submitted(console: Console, job: dict[str, Any]) -> None:
    console.print(
        f"job [bold]{job['id']}[/] {job['action']} {_styled(job['status'])} "
        f"(correlation {job['correlation_id']})"
    )


def print_jobs(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title=f"jobs ({doc['count']} of {doc['total']})", title_justify="left")
    table.add_column("ID", no_wrap=True)  # ids are for copying: never folded
    for col in ("ACTION", "STATUS", "CREATED", "TOOK", "CORRELATION", "OWNER", "ERROR"):
        table.add_column(col, overflow="fold")
    for job in doc["jobs"]:
        table.add_row(
            job["id"],
            job["action"],
            _styled(job["status"]),
            _when(job["created_at"]),
            _duration(job["created_at"], job["ended_at"]),
            job["correlation_id"],
            str(job["owner"]),
            job["error"],
        )
    console.print(table)


def print_job(console: Console, job: dict[str, Any]) -> None:
    tasks_by_step = {t["step_id"]: t for t in job.get("tasks", []) if t.get("step_id")}
    tree = Tree(
        f"[bold]{job['action']}[/] {job['id']}  {_styled(job['status'])}  "
        f"took {_duration(job['created_at'], job['ended_at'])}"
    )

    def add_steps(node: Tree, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            label = f"{step['description']}  {_styled(step['status'])}"
            task = tasks_by_step.get(step["id"])
            if task is not None:
                label += (
                    f"  [dim]task {task.get('vdsm_id') or '?'} on {task['host']}: "
                    f"{task['status']}, VDSM {task.get('vdsm_state') or '-'}"
                    f"/{task.get('vdsm_result') or '-'}[/]"
                )
            elif step.get("external_id"):
                label += f"  [dim]task {step['external_id']}[/]"
            if step.get("progress") is not None:
                label += f"  {step['progress']}%"
            add_steps(node.add(label), step.get("steps", []))

    add_steps(tree, job.get("steps", []))
    console.print(tree)
    console.print(
        f"correlation {job['correlation_id']} · owner {job['owner']} · "
        f"created {_when(job['created_at'])}"
        + (f" · ended {_when(job['ended_at'])}" if job.get("ended_at") else "")
    )
    if job.get("description"):
        console.print(f"description: {job['description']}")
    if job.get("params"):
        console.print(f"params: {json.dumps(job['params'], sort_keys=True)}")
    if job.get("error"):
        console.print(f"[red]error:[/] {job['error']}")
    if job.get("result") is not None:
        console.print(f"result: {json.dumps(job['result'], sort_keys=True)}")
    if job.get("cancel"):
        cancel = job["cancel"]
        console.print(
            f"cancel: {cancel['mode']} by uid {cancel['requested_by']}"
            f" {cancel.get('outcome') or 'in progress'} {cancel.get('reason') or ''}"
        )
    tasks = job.get("tasks", [])
    if tasks:
        table = Table(title="tasks", title_justify="left")
        for col in ("VDSM ID", "HOST", "VERB", "STATUS", "VDSM STATE", "RESULT", "MESSAGE"):
            table.add_column(col, overflow="fold")
        for t in tasks:
            table.add_row(
                t.get("vdsm_id") or "-",
                t["host"],
                t["verb"],
                t["status"],
                t.get("vdsm_state") or "-",
                t.get("vdsm_result") or "-",
                f"{t['code']}: {t['message']}" if t.get("code") else t.get("message", ""),
            )
        console.print(table)
    locks = job.get("locks", [])
    if locks:
        console.print("locks: " + ", ".join(f"{lk['entity']} ({lk['kind']})" for lk in locks))


def print_hosts(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title="hosts", title_justify="left")
    for col in ("NAME", "ADDRESS", "PORT", "POOL", "TRANSPORT", "STATUS", "SPM", "LAST SEEN"):
        table.add_column(col, overflow="fold")
    for h in doc["hosts"]:
        table.add_row(
            h["name"],
            h["address"],
            str(h["port"]),
            h["pool"],
            h["transport"] + (" tls" if h.get("tls") else ""),
            _styled(h["status"]),
            "yes" if h.get("spm") else "",
            _when(h.get("last_seen")),
        )
    console.print(table)


def print_actions(console: Console, doc: dict[str, Any]) -> None:
    table = Table(title="actions", title_justify="left", show_lines=True)
    for col in ("ACTION", "DESCRIPTION", "PARAMETERS", "CANCEL"):
        table.add_column(col, overflow="fold")
    for a in doc["actions"]:
        schema = a["params"]
        required = set(schema.get("required", []))
        params = ", ".join(
            name + ("" if name in required else "?") for name in schema.get("properties", {})
        )
        cancel = a["cancel"]
        if cancel["cancellable"]:
            how = f"{'/'.join(cancel['modes'])} (default {cancel['default_mode']}), "
            how += f"until {cancel['point_of_no_return']}"
        else:
            how = "not cancellable"
        table.add_row(a["name"], a["description"], params, how)
    console.print(table)


def print_health(console: Console, doc: dict[str, Any]) -> None:
    jobs = ", ".join(f"{k} {v}" for k, v in doc["jobs"].items() if v)
    console.print(
        f"taskmgrd {doc['version']} {doc['status']} · up {doc['uptime_seconds']:.0f}s · "
        f"{doc['hosts']} host(s) · jobs: {jobs or 'none'}"
    )


# -- entry point ----------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    args.socket = (
        getattr(args, "socket", None) or os.environ.get("TASKMGR_SOCKET") or (DEFAULT_SOCKET)
    )
    args.json = getattr(args, "json", False)
    console = Console()
    errors = Console(stderr=True)

    def fail(code: str, e: Exception, exit_code: int) -> int:
        """stderr for people; with --json also an API-shaped error document on stdout, so a
        script parsing the output gets JSON on every exit path."""
        if args.json:
            doc: dict[str, Any] = {"error": {"code": code, "message": str(e)}}
            if isinstance(e, TimeoutWaiting):
                doc["error"]["job"] = e.job_id
            sys.stdout.write(json.dumps(doc, indent=2, sort_keys=True) + "\n")
        errors.print(f"taskmgr: {e}", markup=False, highlight=False)
        return exit_code

    try:
        return asyncio.run(run(args, console))
    except UsageError as e:
        return fail("usage", e, EXIT_USAGE)
    except ApiError as e:
        if args.json:
            sys.stdout.write(json.dumps(e.doc, indent=2, sort_keys=True) + "\n")
        errors.print(f"error: {e.code}: {e.message}", markup=False, highlight=False)
        return EXIT_ERROR
    except TimeoutWaiting as e:
        return fail("timeout", e, EXIT_ERROR)
    except Unreachable as e:
        return fail("unreachable", e, EXIT_UNREACHABLE)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

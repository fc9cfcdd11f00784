"""The local API: aiohttp routes on the unix socket (DESIGN.md, "Local API").

Every handler checks its whole input before it touches anything, so a rejected request changes
nothing; every error leaves as `{"error": {"code", "message"}}` with the DaemonError's status, and
anything unexpected is logged and answered 500 without taking the daemon down. Cancel, clear,
events and metrics (issues 4 and 5) are more routes on the same app, behind the same middlewares.
"""

from __future__ import annotations

import heapq
import importlib.metadata
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any, Protocol

from aiohttp import web

from daemon import model
from daemon.api.access import access_middleware, setup_access
from daemon.api.auth import peer_middleware, require_peer
from daemon.api.limits import ApiLimits, rate_middleware, setup_limits
from daemon.engine.cancel import CancelCoordinator
from daemon.engine.policy import ActionSpec
from daemon.errors import BadRequest, Conflict, DaemonError, InvalidParams, NotFound, TooLarge
from daemon.errors import UnknownAction as UnknownActionError
from daemon.model import JobStatus
from daemon.registry import Registry

log = logging.getLogger(__name__)

API = "/api/v1"
DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")
TRANSPORTS = ("stomp", "http")


# -- what the API needs from the daemon ---------------------------------------------------------


class DaemonSettingsLike(Protocol):
    @property
    def max_request_bytes(self) -> int: ...


class SettingsLike(Protocol):
    @property
    def daemon(self) -> DaemonSettingsLike: ...


class HostsLike(Protocol):
    async def add_host(
        self, name: str, address: str, port: int, pool: str, *, transport: str, tls: bool
    ) -> object: ...

    async def remove_host(self, name: str) -> object: ...


class ExecutorLike(Protocol):
    @property
    def actions(self) -> Mapping[str, Any]: ...  # name -> command class (`.spec`, `.internal`?)

    def spec(self, action: str) -> ActionSpec: ...

    async def submit(
        self,
        action: object,
        params: object,
        *,
        owner: int,
        correlation_id: str | None = None,
        description: str | None = None,
    ) -> model.Job: ...

    async def submit_batch(
        self, entries: object, *, owner: int, correlation_id: str | None = None
    ) -> list[model.Job]: ...


class DaemonLike(Protocol):
    """Exactly what the routes use of `daemon.service.Daemon`."""

    @property
    def registry(self) -> Registry: ...
    @property
    def executor(self) -> ExecutorLike: ...
    @property
    def hosts(self) -> HostsLike: ...
    @property
    def settings(self) -> SettingsLike: ...
    @property
    def started_at(self) -> float: ...  # time.time() at start, for the uptime
    @property
    def cancels(self) -> CancelCoordinator: ...


DAEMON_KEY = web.AppKey("daemon", DaemonLike)


class BadJson(BadRequest):
    code = "bad_json"


# -- middlewares ----------------------------------------------------------------------------------


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


@web.middleware
async def error_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """One error shape for everything, and no exception ever reaches aiohttp (or the loop)."""
    try:
        return await handler(request)
    except DaemonError as e:
        return _error(e.status, e.code, e.message)
    except web.HTTPException as e:  # routing: unknown path, wrong method
        if e.status == 404:
            return _error(404, "not_found", f"no route {request.method} {request.path}")
        if e.status == 405:
            return _error(
                405, "method_not_allowed", f"{request.method} not allowed on {request.path}"
            )
        if e.status == 413:
            return _error(413, TooLarge.code, str(e.reason))
        if e.status < 400:
            raise
        return _error(e.status, "http_error", str(e.reason))
    except Exception:
        log.exception("API %s %s: unexpected error", request.method, request.path)
        return _error(500, "internal", "internal error (logged by the daemon)")


# -- input helpers ---------------------------------------------------------------------------------


async def read_json(request: web.Request) -> Any:
    """The body as JSON, refusing more than max_request_bytes before reading it all."""
    limit = request.app[DAEMON_KEY].settings.daemon.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise TooLarge(f"request body of {request.content_length} bytes; the limit is {limit}")
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await request.content.read(65536)
        if not chunk:
            break
        size += len(chunk)
        if size > limit:
            raise TooLarge(f"request body over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    if not body:
        raise BadJson("request body is empty; expected a JSON object")
    try:
        return json.loads(body, parse_constant=_no_constant)
    except (ValueError, RecursionError) as e:
        raise BadJson(f"request body is not valid JSON: {e}") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def expect_object(body: Any, allowed: Iterable[str], what: str) -> dict[str, Any]:
    allowed = tuple(allowed)
    if not isinstance(body, dict):
        raise BadRequest(f"{what} must be a JSON object")
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise BadRequest(
            f"{what}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    return body


def check_query(request: web.Request, allowed: Iterable[str]) -> None:
    allowed = tuple(allowed)
    unknown = sorted(set(request.query) - set(allowed))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(unknown)}; allowed: {', '.join(allowed)}"
        )
    repeated = sorted(k for k in set(request.query) if len(request.query.getall(k)) > 1)
    if repeated:
        raise BadRequest(f"query parameter(s) given more than once: {', '.join(repeated)}")


def _check_correlation(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= 50:
        raise InvalidParams("correlation_id must be a string of 1 to 50 characters")
    return value


# -- routes ---------------------------------------------------------------------------------------


def public_actions(daemon: DaemonLike) -> dict[str, ActionSpec]:
    """Actions a client may submit: internal ones (InstallHost) run only as children."""
    return {
        name: cls.spec
        for name, cls in sorted(daemon.executor.actions.items())
        if not getattr(cls, "internal", False)
    }


def _require_public(daemon: DaemonLike, action: Any, where: str = "") -> None:
    known = public_actions(daemon)
    if isinstance(action, str) and action not in known:
        raise UnknownActionError(f"{where}unknown action {action!r}; known: {', '.join(known)}")


async def health(request: web.Request) -> web.Response:
    daemon = request.app[DAEMON_KEY]
    registry = daemon.registry
    hosts_by_status: dict[str, int] = {}
    for host in registry.hosts.values():
        hosts_by_status[host.status.value] = hosts_by_status.get(host.status.value, 0) + 1
    return web.json_response(
        {
            "status": "ok",
            "version": _version(),
            "uptime_seconds": round(time.time() - daemon.started_at, 3),
            "jobs": {s.value: len(registry.by_status.get(s, ())) for s in JobStatus},
            "hosts": len(registry.hosts),
            "hosts_by_status": hosts_by_status,
        }
    )


def _version() -> str:
    try:
        return importlib.metadata.version("taskmgrd")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


async def list_actions(request: web.Request) -> web.Response:
    actions = [
        {
            "name": name,
            "description": spec.description,
            "params": spec.schema(),
            "cancel": spec.policy.as_dict(),
        }
        for name, spec in public_actions(request.app[DAEMON_KEY]).items()
    ]
    return web.json_response({"actions": actions})


async def list_hosts(request: web.Request) -> web.Response:
    check_query(request, ())
    registry = request.app[DAEMON_KEY].registry
    hosts = [model.to_doc(registry.hosts[name]) for name in sorted(registry.hosts)]
    return web.json_response({"hosts": hosts})


HOST_FIELDS = ("name", "address", "port", "pool", "transport", "tls")


def check_host(body: Any) -> dict[str, Any]:
    """A host registration, checked whole (each error names the field and what it expects)."""
    doc = expect_object(body, HOST_FIELDS, "host")
    missing = [f for f in ("name", "address", "port", "pool") if f not in doc]
    if missing:
        raise InvalidParams(f"host: missing field(s) {', '.join(missing)}")
    name, address, port, pool = doc["name"], doc["address"], doc["port"], doc["pool"]
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidParams(f"host: name must be a name (letters, digits, . _ -), got {name!r}")
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise InvalidParams(f"host: address must be a host name or IP address, got {address!r}")
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise InvalidParams(f"host: port must be an integer 1..65535, got {port!r}")
    if not isinstance(pool, str) or not _UUID.match(pool):
        raise InvalidParams(f"host: pool must be a lower-case storage pool UUID, got {pool!r}")
    transport = doc.get("transport", "stomp")
    if transport not in TRANSPORTS:
        raise InvalidParams(
            f"host: transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}"
        )
    tls = doc.get("tls", False)
    if not isinstance(tls, bool):
        raise InvalidParams(f"host: tls must be true or false, got {tls!r}")
    return {
        "name": name,
        "address": address,
        "port": port,
        "pool": pool,
        "transport": transport,
        "tls": tls,
    }


async def add_host(request: web.Request) -> web.Response:
    check_query(request, ())
    require_peer(request)
    daemon = request.app[DAEMON_KEY]
    host = check_host(await read_json(request))
    if host["name"] in daemon.registry.hosts:
        raise Conflict(f"a host named {host['name']!r} is already registered")
    await daemon.hosts.add_host(
        host["name"],
        host["address"],
        host["port"],
        host["pool"],
        transport=host["transport"],
        tls=host["tls"],
    )
    added = daemon.registry.hosts.get(host["name"])
    return web.json_response(model.to_doc(added) if added else host, status=201)


async def remove_host(request: web.Request) -> web.Response:
    check_query(request, ())
    require_peer(request)
    daemon = request.app[DAEMON_KEY]
    registry = daemon.registry
    name = request.match_info["name"]
    if name not in registry.hosts:
        raise NotFound(f"no host named {name!r}")
    busy = [t for t in registry.host_tasks(name) if t.status not in model.TASK_SETTLED]
    if busy:
        raise Conflict(
            f"host {name!r} still has {len(busy)} task(s) not cleared "
            f"(jobs {', '.join(sorted({t.job_id for t in busy})[:5])})"
        )
    holders = [lock.job_id for lock in registry.locks.get(f"host:{name}", [])]
    if holders:
        raise Conflict(f"host {name!r} is locked by job(s) {', '.join(sorted(set(holders)))}")
    await daemon.hosts.remove_host(name)
    return web.json_response({"removed": name})


SINGLE_FIELDS = ("action", "params", "correlation_id", "description")
BATCH_FIELDS = ("batch", "correlation_id")


async def submit(request: web.Request) -> web.Response:
    """Create one job, or one per entry of `{"batch": [...]}`; answers 201 once committed.

    One job: the whole job (`GET /jobs/{id}`'s shape). A batch: `{"correlation_id", "jobs":
    [...]}` with one summary per job, in entry order: the listing's row (`id`, `action`,
    `status`, `correlation_id`, `owner`, `description`, times, `error`, `tasks`, `cancel`) plus
    `href`, the job's own URL, where its tree is. Rendering a full tree per entry cost more than
    committing the batch; `?view=full` still answers with the full jobs.
    """
    from daemon.api.cancel_routes import check_cancel_jobs  # it imports this module

    check_query(request, ("view",))
    view = request.query.get("view", "summary")
    if view not in ("summary", "full"):
        raise BadRequest(f"view must be summary or full, got {view!r}")
    peer = require_peer(request)
    daemon = request.app[DAEMON_KEY]
    body = await read_json(request)
    if isinstance(body, dict) and "batch" in body:
        doc = expect_object(body, BATCH_FIELDS, "batch request")
        correlation_id = _check_correlation(doc.get("correlation_id"))
        entries = doc["batch"]
        if isinstance(entries, list):
            for i, entry in enumerate(entries):
                if isinstance(entry, dict):
                    _require_public(daemon, entry.get("action"), f"batch[{i}]: ")
            check_cancel_jobs(
                request,
                peer,
                [(e.get("action"), e.get("params")) for e in entries if isinstance(e, dict)],
            )
        jobs = await daemon.executor.submit_batch(
            entries, owner=peer.uid, correlation_id=correlation_id
        )
        registry = daemon.registry
        views = (
            [registry.job_view(job.id) for job in jobs]
            if view == "full"
            else [batch_entry(registry, job) for job in jobs]
        )
        cid = jobs[0].correlation_id if jobs else correlation_id
        return web.json_response({"correlation_id": cid, "jobs": views}, status=201)
    doc = expect_object(body, SINGLE_FIELDS, "job request")
    if "action" not in doc:
        raise InvalidParams('job request: missing field "action" (or "batch")')
    _require_public(daemon, doc["action"])
    check_cancel_jobs(request, peer, [(doc["action"], doc.get("params"))])
    description = doc.get("description")
    if description is not None and (not isinstance(description, str) or len(description) > 4096):
        raise InvalidParams("description must be a string of at most 4096 characters")
    job = await daemon.executor.submit(
        doc["action"],
        doc.get("params"),
        owner=peer.uid,
        correlation_id=_check_correlation(doc.get("correlation_id")),
        description=description,
    )
    return web.json_response(daemon.registry.job_view(job.id), status=201)


def batch_entry(registry: Registry, job: model.Job) -> dict[str, Any]:
    """A job of a batch answer: its listing row and where its tree is."""
    entry = job_summary(registry, job)
    entry["href"] = f"{API}/jobs/{job.id}"
    return entry


def job_summary(registry: Registry, job: model.Job) -> dict[str, Any]:
    """One row of a listing: the job without its tree (`GET /jobs/{id}` has the tree)."""
    cancel = job.cancel
    return {
        "id": job.id,
        "action": job.action,
        "status": job.status.value,
        "correlation_id": job.correlation_id,
        "owner": job.owner,
        "description": job.description,
        "created_at": job.created_at,
        "updated_at": job.updated_at,
        "ended_at": job.ended_at,
        "error": job.error,
        "tasks": registry.task_count(job.id),
        "cancel": None
        if cancel is None
        else {"mode": cancel.mode.value, "outcome": cancel.outcome},
    }


async def list_jobs(request: web.Request) -> web.Response:
    check_query(request, ("status", "action", "correlation_id", "limit"))
    daemon = request.app[DAEMON_KEY]
    registry = daemon.registry
    q = request.query
    statuses: set[JobStatus] | None = None
    if "status" in q:
        allowed = [s.value for s in JobStatus]
        wanted = [s.strip().upper() for s in q["status"].split(",") if s.strip()]
        bad = [s for s in wanted if s not in allowed]
        if bad or not wanted:
            raise BadRequest(f"status {q['status']!r} is not one of {', '.join(allowed)}")
        statuses = {JobStatus(s) for s in wanted}
    action = q.get("action")
    if action is not None and action not in daemon.executor.actions:
        raise BadRequest(
            f"action {action!r} is not one of {', '.join(sorted(daemon.executor.actions))}"
        )
    correlation_id = q.get("correlation_id")
    if correlation_id is not None and not 0 < len(correlation_id) <= 50:
        raise BadRequest("correlation_id must be 1 to 50 characters")
    limit = DEFAULT_LIMIT
    if "limit" in q:
        try:
            limit = int(q["limit"])
        except ValueError:
            limit = 0
        if not 1 <= limit <= MAX_LIMIT:
            raise BadRequest(f"limit must be an integer 1..{MAX_LIMIT}, got {q['limit']!r}")

    ids: Iterable[str]
    if correlation_id is not None:
        ids = registry.by_correlation.get(correlation_id, ())
    elif statuses is not None:
        ids = [i for s in statuses for i in registry.by_status.get(s, ())]
    else:
        ids = registry.jobs.keys()
    matched = [
        job
        for job in (registry.jobs[i] for i in ids if i in registry.jobs)
        if (statuses is None or job.status in statuses) and (action is None or job.action == action)
    ]
    newest = heapq.nlargest(limit, matched, key=lambda j: (j.created_at, j.id))
    return web.json_response(
        {
            "jobs": [job_summary(registry, job) for job in newest],
            "count": len(newest),
            "total": len(matched),
        }
    )


async def show_job(request: web.Request) -> web.Response:
    check_query(request, ())
    registry = request.app[DAEMON_KEY].registry
    job_id = request.match_info["id"]
    if job_id not in registry.jobs:
        raise NotFound(f"no job {job_id!r}")
    return web.json_response(registry.job_view(job_id))


# -- the app ---------------------------------------------------------------------------------------


def build_app(daemon: DaemonLike, *, limits: ApiLimits | None = None) -> web.Application:
    """The API around a daemon; served by `daemon.api.server.start_api`."""
    # these modules import this one
    from daemon.api.cancel_routes import add_cancel_routes
    from daemon.api.clear_routes import add_clear_routes
    from daemon.api.events_routes import add_events_routes
    from daemon.api.metrics_routes import add_metrics_routes, count_requests
    from daemon.api.openapi import add_openapi_route

    limit = daemon.settings.daemon.max_request_bytes
    # aiohttp's own cap backs ours up (read_json answers first, with our error shape)
    app = web.Application(
        middlewares=[
            count_requests,
            error_middleware,
            peer_middleware,
            access_middleware,
            rate_middleware,
        ],
        client_max_size=limit + 1,
    )
    app[DAEMON_KEY] = daemon
    setup_access(app)
    setup_limits(app, limits or ApiLimits.from_settings(daemon.settings))
    app.router.add_get(f"{API}/health", health)
    app.router.add_get(f"{API}/actions", list_actions)
    app.router.add_get(f"{API}/hosts", list_hosts)
    app.router.add_post(f"{API}/hosts", add_host)
    app.router.add_delete(f"{API}/hosts/{{name}}", remove_host)
    app.router.add_post(f"{API}/jobs", submit)
    app.router.add_get(f"{API}/jobs", list_jobs)
    app.router.add_get(f"{API}/jobs/{{id}}", show_job)
    add_cancel_routes(app)
    add_clear_routes(app)
    add_events_routes(app)
    add_metrics_routes(app)
    add_openapi_route(app)
    return app

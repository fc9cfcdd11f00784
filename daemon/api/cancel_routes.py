"""Cancel routes: `POST /api/v1/jobs/{id}/cancel` and `POST /api/v1/cancel` (by correlation id).

The answer comes after the cancel intent is committed (202), or says why nothing changed (200 for
a repeat, 4xx for a refusal). Who may cancel: the job's owner, root, or a member of the configured
admin group (DESIGN.md rule 8); `force` needs root or the admin group.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from daemon.api.access import is_privileged, require_manager
from daemon.api.app import API, DAEMON_KEY, check_query, expect_object, read_json
from daemon.api.auth import Peer, require_peer
from daemon.engine.cancel_rules import CancelDecision
from daemon.errors import DaemonError, Forbidden, InvalidParams, NotFound
from daemon.model import CancelMode

FIELDS = ("mode", "reason", "force")


def _args(doc: dict[str, Any]) -> tuple[CancelMode | None, str, bool]:
    mode = doc.get("mode")
    if mode is not None and mode not in ("stop", "revert"):
        raise InvalidParams(f"mode must be 'stop' or 'revert', got {mode!r}")
    reason = doc.get("reason", "")
    if not isinstance(reason, str) or len(reason) > 1024:
        raise InvalidParams("reason must be a string of at most 1024 characters")
    force = doc.get("force", False)
    if not isinstance(force, bool):
        raise InvalidParams(f"force must be true or false, got {force!r}")
    return (CancelMode(mode) if mode else None), reason, force


def _view(request: web.Request, job_id: str, decision: CancelDecision | None) -> dict[str, Any]:
    view = request.app[DAEMON_KEY].registry.job_view(job_id)
    if decision is not None:
        view["cancel_decision"] = {"accepted": decision.accept, "reason": decision.reason}
    return view


def may_cancel(request: web.Request, peer: Peer, job_id: str, owner: int) -> bool:
    """DESIGN rule 8, for the cancel route and for CancelJob submitted as a job alike: raises
    Forbidden, or says whether the caller is privileged (root or the admin group)."""
    return require_manager(peer, request.app[DAEMON_KEY].settings, owner, f"job {job_id}")


def check_cancel_jobs(request: web.Request, peer: Peer, entries: list[tuple[Any, Any]]) -> None:
    """Refuse a submission whose CancelJob entries name a job the caller may not cancel (403,
    nothing created). An unknown target is left to CancelJob's own check (its job FAILS)."""
    registry = request.app[DAEMON_KEY].registry
    for action, params in entries:
        if action != "CancelJob" or not isinstance(params, dict):
            continue
        target = registry.jobs.get(params["job"]) if isinstance(params.get("job"), str) else None
        if target is not None:
            may_cancel(request, peer, target.id, target.owner)


async def cancel_job(request: web.Request) -> web.Response:
    check_query(request, ())
    peer = require_peer(request)
    daemon = request.app[DAEMON_KEY]
    job_id = request.match_info["id"]
    job = daemon.registry.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    mode, reason, force = _args(expect_object(await read_json(request) or {}, FIELDS, "cancel"))
    privileged = may_cancel(request, peer, job_id, job.owner)
    decision = await daemon.cancels.cancel(
        job_id, mode=mode, reason=reason, force=force, requester=peer.uid, privileged=privileged
    )
    return web.json_response(_view(request, job_id, decision), status=decision.status)


async def cancel_correlated(request: web.Request) -> web.Response:
    check_query(request, ())
    peer = require_peer(request)
    daemon = request.app[DAEMON_KEY]
    doc = expect_object(await read_json(request), (*FIELDS, "correlation_id"), "cancel")
    correlation_id = doc.get("correlation_id")
    if not isinstance(correlation_id, str) or not correlation_id:
        raise InvalidParams("correlation_id is required")
    mode, reason, force = _args(doc)
    privileged = is_privileged(peer, daemon.settings)
    job_ids = daemon.registry.by_correlation.get(correlation_id, set())
    if not job_ids:
        raise NotFound(f"no job with correlation id {correlation_id!r}")
    foreign = [j for j in job_ids if daemon.registry.jobs[j].owner != peer.uid]
    if foreign and not privileged:
        raise Forbidden(f"{len(foreign)} jobs of {correlation_id!r} belong to other users")
    results = []
    for job_id, outcome in await daemon.cancels.cancel_correlated(
        correlation_id,
        mode=mode,
        reason=reason,
        force=force,
        requester=peer.uid,
        privileged=privileged,
    ):
        if isinstance(outcome, DaemonError):
            results.append(
                {
                    "job": job_id,
                    "accepted": False,
                    "status": outcome.status,
                    "code": outcome.code,
                    "reason": outcome.message,
                }
            )
        else:
            results.append(
                {
                    "job": job_id,
                    "accepted": outcome.accept,
                    "status": outcome.status,
                    "reason": outcome.reason,
                }
            )
    return web.json_response({"correlation_id": correlation_id, "jobs": results}, status=202)


def add_cancel_routes(app: web.Application) -> None:
    app.router.add_post(f"{API}/jobs/{{id}}/cancel", cancel_job)
    app.router.add_post(f"{API}/cancel", cancel_correlated)

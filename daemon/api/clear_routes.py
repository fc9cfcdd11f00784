"""`POST /api/v1/jobs/{id}/clear`: drop a terminal job now instead of at its retention's end.

Allowed to the job's owner, root and the admin group, like cancel. Refused (409, nothing
changed) while the job runs, or while any of its VDSM tasks is not yet settled on its host: a job
is only forgotten once nothing of it is left anywhere, as the housekeeping purge requires.
"""

from __future__ import annotations

from aiohttp import web

from daemon import model
from daemon.api.access import require_manager
from daemon.api.app import API, DAEMON_KEY, check_query
from daemon.api.auth import require_peer
from daemon.errors import Conflict, NotFound


async def clear_job(request: web.Request) -> web.Response:
    check_query(request, ())
    peer = require_peer(request)
    daemon = request.app[DAEMON_KEY]
    registry = daemon.registry
    job_id = request.match_info["id"]
    job = registry.jobs.get(job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    require_manager(peer, daemon.settings, job.owner, f"job {job_id}")
    if job.status not in model.JOB_TERMINAL:
        raise Conflict(f"job {job_id} is {job.status.value}; only an ended job can be cleared")
    unsettled = [t for t in registry.job_tasks(job_id) if t.status not in model.TASK_SETTLED]
    if unsettled:
        raise Conflict(
            f"job {job_id} still has {len(unsettled)} task(s) on hosts "
            f"({', '.join(sorted({t.status.value for t in unsettled}))}); clear it later"
        )
    registry.forget_job(job_id)
    await registry.store.purge_jobs([job_id])
    return web.json_response({"cleared": job_id})


def add_clear_routes(app: web.Application) -> None:
    app.router.add_post(f"{API}/jobs/{{id}}/clear", clear_job)

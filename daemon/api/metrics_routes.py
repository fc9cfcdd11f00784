"""`GET /metrics`: Prometheus text format, for the socket's readers (see daemon.metrics)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from daemon.api.app import DAEMON_KEY
from daemon.metrics import CONTENT_TYPE, DaemonMetrics

METRICS_KEY = web.AppKey("metrics", DaemonMetrics)


async def metrics(request: web.Request) -> web.Response:
    body = request.app[METRICS_KEY].render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


@web.middleware
async def count_requests(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Counts every answer, errors included (it sits outside the error middleware's view)."""
    response = await handler(request)
    resource = request.match_info.route.resource
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS_KEY].api_requests.labels(request.method, route, str(response.status)).inc()
    return response


async def _detach(app: web.Application) -> None:
    app[METRICS_KEY].detach(app[DAEMON_KEY].registry.events)


def add_metrics_routes(app: web.Application) -> None:
    daemon = app[DAEMON_KEY]
    metrics_ = DaemonMetrics(daemon.registry)
    store = getattr(daemon, "store", None) or daemon.registry.store
    metrics_.attach(store, daemon.hosts, daemon.registry.events)
    app[METRICS_KEY] = metrics_
    app.on_cleanup.append(_detach)
    app.router.add_get("/metrics", metrics)

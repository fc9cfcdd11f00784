"""GET /api/v1/openapi.json describes exactly the routes the app serves, and each action's
parameters as the executor checks them."""

from __future__ import annotations

import aiohttp

from daemon.api.app import build_app, public_actions
from tests.daemon.api_support import ApiDaemon
from tests.daemon.test_api import call


async def test_every_route_is_described_and_nothing_else(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    status, doc = await call(http, "GET", "/openapi.json")
    assert status == 200 and doc["openapi"].startswith("3.0")
    described = {(m.upper(), path) for path, ops in doc["paths"].items() for m in ops}
    app = build_app(api)
    served = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    assert described == served
    ids = [op["operationId"] for ops in doc["paths"].values() for op in ops.values()]
    assert len(ids) == len(set(ids))


async def test_job_requests_carry_each_actions_own_schema(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    _, doc = await call(http, "GET", "/openapi.json")
    variants = doc["components"]["schemas"]["JobRequest"]["oneOf"]
    by_action = {v["properties"]["action"]["enum"][0]: v["properties"]["params"] for v in variants}
    assert by_action == {name: spec.schema() for name, spec in public_actions(api).items()}
    assert "InstallHost" not in by_action  # internal: runs only as AddHost's child

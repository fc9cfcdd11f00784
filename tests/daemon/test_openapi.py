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


async def test_each_operation_describes_exactly_the_query_parameters_it_accepts(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    """A handler names what it accepts when given an unknown parameter (400, "allowed: ...");
    the description must list the same names, so a client generated from it can use them all."""
    _, doc = await call(http, "GET", "/openapi.json")
    checked = 0
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            url = path.replace("{id}", "no-such-job").replace("{name}", "no-such-host")
            async with http.request(method.upper(), f"{url}?zz_unknown=1") as response:
                if response.status != 400:
                    continue  # a route that takes no query at all ignores it (health, metrics)
                message = (await response.json())["error"]["message"]
            assert "allowed:" in message, (method, path, message)
            allowed = {a.strip() for a in message.split("allowed:")[1].split(",") if a.strip()}
            described = {p["name"] for p in op.get("parameters", []) if p["in"] == "query"}
            assert described == allowed, (method, path)
            checked += 1
    assert checked >= 8


async def test_submit_describes_both_answers_of_a_batch(
    api: ApiDaemon, http: aiohttp.ClientSession
) -> None:
    _, doc = await call(http, "GET", "/openapi.json")
    answer = doc["paths"]["/api/v1/jobs"]["post"]["responses"]["201"]
    schema = answer["content"]["application/json"]["schema"]
    refs = {variant["$ref"].rsplit("/", 1)[1] for variant in schema["oneOf"]}
    assert refs == {"Job", "BatchAnswer"}
    batch = doc["components"]["schemas"]["BatchAnswer"]
    jobs = batch["properties"]["jobs"]["items"]["oneOf"]
    assert {variant["$ref"].rsplit("/", 1)[1] for variant in jobs} == {"BatchEntry", "Job"}

"""The simulator's control API (`/_control/` on the simulator's port), for tests and benchmarks.

It reads the truth a client cannot see through VDSM verbs alone (the raw task table of every
host, where every volume and VM is) and changes the world under the clients' feet: faults, hosts
going down, SPM loss, VDSM restarts, and a gate that holds storage jobs at their end so race
tests decide exactly when a task finishes. Bad input is answered 400/404 and changes nothing.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from vdsm_simulator.cluster import Cluster
from vdsm_simulator.host import SimHost
from vdsm_simulator.storage import Pool

HostDownHook = Callable[[str], Awaitable[None] | None]

CLUSTER_KEY = web.AppKey("cluster", Cluster)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


class ControlError(Exception):
    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    try:
        return await handler(request)
    except ControlError as e:
        return _error(e.status, e.code, e.message)
    except web.HTTPException as e:
        if e.status >= 400:
            return _error(e.status, "http_error", e.reason)
        raise


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = json.loads(await request.read() or b"{}")
    except (ValueError, UnicodeDecodeError) as e:
        raise ControlError(400, "bad_json", f"request body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise ControlError(400, "bad_request", "request body must be a JSON object")
    return data


def _host(cluster: Cluster, request: web.Request) -> SimHost:
    name = request.match_info["name"]
    host = cluster.hosts.get(name)
    if host is None:
        raise ControlError(404, "no_such_host", f"no host named {name!r}")
    return host


def _pool(cluster: Cluster, request: web.Request) -> Pool:
    pool = cluster.storage.pools.get(request.match_info["pool"])
    if pool is None:
        raise ControlError(404, "no_such_pool", f"no pool {request.match_info['pool']!r}")
    return pool


def build_control_app(
    cluster: Cluster, on_host_down: HostDownHook | None = None
) -> web.Application:
    app = web.Application(middlewares=[_errors])
    app[CLUSTER_KEY] = cluster
    routes = web.RouteTableDef()

    @routes.get("/topology")
    async def topology(request: web.Request) -> web.Response:
        return web.json_response(cluster.topology())

    @routes.post("/hosts")
    async def add_host(request: web.Request) -> web.Response:
        body = await _body(request)
        pool = body.get("pool")
        if pool is not None and pool not in cluster.storage.pools:
            raise ControlError(404, "no_such_pool", f"no pool {pool!r}")
        aliases = body.get("aliases", [])
        # Checked before the host exists: bad input changes nothing.
        if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
            raise ControlError(400, "bad_request", "aliases must be a list of strings")
        host = await cluster.add_host(pool)
        for alias in aliases:
            cluster.aliases[alias] = host.name
        return web.json_response({"name": host.name, "host_id": host.host_id}, status=201)

    @routes.post("/aliases")
    async def add_alias(request: web.Request) -> web.Response:
        body = await _body(request)
        alias, name = body.get("alias"), body.get("host")
        if not isinstance(alias, str) or not isinstance(name, str) or name not in cluster.hosts:
            raise ControlError(400, "bad_request", "need {alias: str, host: existing host name}")
        cluster.aliases[alias] = name
        return web.json_response({"alias": alias, "host": name})

    @routes.post("/vms")
    async def add_vm(request: web.Request) -> web.Response:
        body = await _body(request)
        host = body.get("host")
        if not isinstance(host, str) or host not in cluster.hosts:
            raise ControlError(400, "bad_request", "need host: an existing host name")
        memory = body.get("memory_mb", 1024)
        if isinstance(memory, bool) or not isinstance(memory, int) or memory <= 0:
            raise ControlError(400, "bad_request", "memory_mb must be a positive integer")
        vm_id = body.get("id") or str(uuid.uuid4())
        if not isinstance(vm_id, str) or cluster.fleet.get(vm_id) is not None:
            raise ControlError(400, "bad_request", f"VM id {vm_id!r} is taken or not a string")
        name = body.get("name") or f"vm-{vm_id[:8]}"
        vm = cluster.fleet.add_vm(vm_id, str(name), host, memory_mb=memory)
        return web.json_response({"id": vm.vm_id, "name": vm.name, "host": host}, status=201)

    @routes.get("/hosts/{name}/faults")
    async def get_faults(request: web.Request) -> web.Response:
        return web.json_response(_host(cluster, request).faults.settings.as_dict())

    @routes.post("/hosts/{name}/faults")
    async def set_faults(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        body = await _body(request)
        try:
            host.faults.settings.update(body)
        except ValueError as e:
            raise ControlError(400, "bad_fault", str(e)) from None
        if body.get("down") is True and on_host_down is not None:
            result = on_host_down(host.name)
            if result is not None:
                await result
        return web.json_response(host.faults.settings.as_dict())

    @routes.delete("/hosts/{name}/faults")
    async def clear_faults(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        host.faults.clear()
        return web.json_response(host.faults.settings.as_dict())

    @routes.post("/hosts/{name}/restart")
    async def restart(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        body = await _body(request)
        seconds = body.get("recovering_seconds", cluster.config.recovering_seconds)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            raise ControlError(400, "bad_request", "recovering_seconds must be >= 0")
        if on_host_down is not None:
            result = on_host_down(host.name)
            if result is not None:
                await result
        await host.restart(float(seconds))
        return web.json_response({"name": host.name, "recovering_seconds": seconds})

    @routes.get("/hosts/{name}/tasks")
    async def host_tasks(request: web.Request) -> web.Response:
        return web.json_response(_host(cluster, request).tasks.raw_table())

    @routes.get("/tasks")
    async def all_tasks(request: web.Request) -> web.Response:
        return web.json_response({n: h.tasks.raw_table() for n, h in cluster.hosts.items()})

    @routes.post("/hosts/{name}/hold")
    async def hold(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        host.gate.hold()
        return web.json_response({"holding": True, "held": host.gate.held()})

    @routes.post("/hosts/{name}/release")
    async def release(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        body = await _body(request)
        task = body.get("task")
        if task is None:
            host.gate.open()
            return web.json_response({"holding": False, "held": []})
        if not isinstance(task, str) or not host.gate.release(task):
            raise ControlError(404, "not_held", f"task {task!r} is not held on {host.name}")
        return web.json_response({"holding": host.gate.closed, "held": host.gate.held()})

    @routes.get("/hosts/{name}/held")
    async def held(request: web.Request) -> web.Response:
        host = _host(cluster, request)
        return web.json_response({"holding": host.gate.closed, "held": host.gate.held()})

    @routes.post("/pools/{pool}/spm")
    async def set_spm(request: web.Request) -> web.Response:
        pool = _pool(cluster, request)
        body = await _body(request)
        name = body.get("host")
        if not isinstance(name, str) or name not in pool.hosts:
            raise ControlError(400, "bad_request", "host must be a member of the pool")
        await cluster.elect_spm(pool, name)
        return web.json_response({"pool": pool.uuid, "spm": pool.spm_host, "lver": pool.lver})

    @routes.delete("/pools/{pool}/spm")
    async def lose_spm(request: web.Request) -> web.Response:
        pool = _pool(cluster, request)
        dropped = await cluster.drop_spm(pool)
        return web.json_response({"pool": pool.uuid, "spm": None, "dropped_tasks": dropped})

    @routes.get("/pools/{pool}/volumes")
    async def volumes(request: web.Request) -> web.Response:
        pool = _pool(cluster, request)
        return web.json_response(
            [
                v.info() | {"removing": v.removing, "used_by": v.used_by}
                for d in pool.domains.values()
                for v in d.volumes.values()
            ]
        )

    app.add_routes(routes)
    return app

"""A daemon for API and CLI tests: real Store, Registry and Executor with the real actions, the
API served by `start_api` on a real unix socket; only the hosts are a stand-in.

The stand-in hosts answer RefreshHost's verbs from memory, so jobs can finish (or fail) without
a simulator: these tests are about the API layer; the end-to-end tests drive the real HostManager
against vdsm-sim.
"""

from __future__ import annotations

import json
import sqlite3
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon import model
from daemon.api.app import build_app
from daemon.api.limits import ApiLimits
from daemon.api.server import ApiServer, start_api, stop_api
from daemon.commands import ACTIONS
from daemon.config import Config
from daemon.engine.cancel import CancelCoordinator
from daemon.engine.executor import Executor
from daemon.model import Host, HostStatus
from daemon.registry import Registry
from daemon.store import Store
from tests.sim.conftest import wait_until

POOL = "5849b030-626e-47cb-ad90-3ce782d831b3"


class FakeVdsm:
    async def stats(self) -> dict[str, Any]:
        return {"cpuIdle": 99.0, "memFree": 1024, "vmCount": 0}

    async def vm_stats(self) -> list[dict[str, Any]]:
        return []


class FakeHosts:
    """What the routes and RefreshHost call of `daemon.hosts.HostManager`."""

    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.fail_next_add: Exception | None = None

    async def add_host(
        self,
        name: str,
        address: str,
        port: int,
        pool: str,
        *,
        transport: str = "stomp",
        tls: bool = False,
        status: HostStatus = HostStatus.UP,
    ) -> Host:
        if self.fail_next_add is not None:
            error, self.fail_next_add = self.fail_next_add, None
            raise error
        host = Host(name, address, port, pool, transport, tls, status)
        await self.registry.put_host(host)
        return host

    async def remove_host(self, name: str) -> None:
        await self.registry.delete_host(name)

    def vdsm(self, name: str) -> FakeVdsm:
        return FakeVdsm()

    def watch(self, pool: str) -> None:
        pass


@dataclass
class ApiDaemon:
    registry: Registry
    executor: Executor
    hosts: FakeHosts
    settings: Config
    socket: Path
    cancels: CancelCoordinator
    started_at: float = field(default_factory=time.time)

    @property
    def store(self) -> Store:
        return self.registry.store


def short_dir() -> Path:
    """Unix socket paths are limited to 107 bytes; pytest's tmp_path can be longer."""
    return Path(tempfile.mkdtemp(prefix="tm-", dir="/tmp"))


async def serve(
    db: Path,
    *,
    group: int | None = None,
    limits: ApiLimits | None = None,
    socket_dir: Path | None = None,
    **settings: Any,
) -> tuple[ApiDaemon, ApiServer]:
    """A served API on a fresh socket; `group` is the socket's group (mode 0660)."""
    store = Store(db, synchronous="NORMAL")
    await store.open()
    registry = Registry(store)
    await registry.load()
    hosts = FakeHosts(registry)
    executor = Executor(registry, hosts, dict(ACTIONS))  # type: ignore[arg-type,unused-ignore]
    config = Config()
    if settings:
        import dataclasses

        config = dataclasses.replace(config, daemon=dataclasses.replace(config.daemon, **settings))
    socket = (socket_dir or short_dir()) / "api.sock"
    cancels = CancelCoordinator(registry, hosts, executor)  # type: ignore[arg-type,unused-ignore]
    daemon = ApiDaemon(registry, executor, hosts, config, socket, cancels)
    server = await start_api(build_app(daemon, limits=limits), socket, group=group)
    return daemon, server


async def shutdown(daemon: ApiDaemon, server: ApiServer) -> None:
    await stop_api(server)
    await daemon.cancels.close()
    await daemon.executor.close()
    await daemon.store.close()
    socket_dir = daemon.socket.parent
    if socket_dir.exists() and not any(socket_dir.iterdir()):
        socket_dir.rmdir()


@pytest.fixture
async def api(tmp_path: Path) -> AsyncIterator[ApiDaemon]:
    daemon, server = await serve(tmp_path / "taskmgrd.db")
    try:
        yield daemon
    finally:
        await shutdown(daemon, server)


@pytest.fixture
async def http(api: ApiDaemon) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(
        base_url="http://taskmgrd", connector=aiohttp.UnixConnector(path=str(api.socket))
    ) as session:
        yield session


async def settle(daemon: ApiDaemon) -> None:
    """Every job terminal and everything committed: a stable state to compare."""
    await wait_until(
        lambda: (
            all(j.status in model.JOB_TERMINAL for j in daemon.registry.jobs.values())
            and not daemon.executor._running
        ),
        timeout=10,
    )
    await daemon.store.flush()


def registry_state(registry: Registry) -> dict[str, Any]:
    return {
        "jobs": {k: model.to_doc(v) for k, v in registry.jobs.items()},
        "steps": {k: {s: model.to_doc(x) for s, x in v.items()} for k, v in registry.steps.items()},
        "commands": {
            k: {c: model.to_doc(x) for c, x in v.items()} for k, v in registry.commands.items()
        },
        "tasks": {k: model.to_doc(v) for k, v in registry.tasks.items()},
        "locks": {k: [model.to_doc(x) for x in v] for k, v in registry.locks.items()},
        "hosts": {k: model.to_doc(v) for k, v in registry.hosts.items()},
    }


def db_rows(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: sorted(db.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}


async def snapshot(daemon: ApiDaemon) -> tuple[str, dict[str, list[tuple[Any, ...]]]]:
    await settle(daemon)
    state = json.dumps(registry_state(daemon.registry), sort_keys=True, default=str)
    return state, db_rows(daemon.store.path)


async def sse_stream(
    http: aiohttp.ClientSession, query: str = "", headers: dict[str, str] | None = None
) -> aiohttp.ClientResponse:
    """An open GET /events response (close it, or use `async with`)."""
    response = await http.get(f"/api/v1/events{query}", headers=headers or {})
    assert response.status == 200, await response.text()
    assert response.headers["Content-Type"].startswith("text/event-stream")
    return response

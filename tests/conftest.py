"""Fixtures for tests of the whole simulator over real sockets.

* `sim`: a started `vdsm_simulator.app.Simulator` on port 0 with short, fixed job times. Tune it
  per test with ``@pytest.mark.sim(hosts=3, pools=2, state_dir=True, ...)`` (any `SimConfig`
  field; ``state_dir=True`` means a fresh temporary directory).
* `rpc`: a factory of the daemon's `StompRpcClient` (one per host), closed at teardown.
* `raw`: a factory of the test `StompClient` for raw frames and events.
* `control`: the control API over HTTP (`/_control/...`).
* `dc`: ids of the first pool (pool id, domains, SPM) read from the control API, and helpers
  that create volumes over the wire.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from daemon.vdsm.client import StompRpcClient
from tests.sim.conftest import EventRecorder, wait_until
from tests.sim.stomp_client import StompClient
from vdsm_simulator.app import Simulator
from vdsm_simulator.cluster import SimConfig
from vdsm_simulator.config import ServerConfig, Settings

__all__ = ["EventRecorder", "wait_until"]

BLANK = "00000000-0000-0000-0000-000000000000"

# Simulated seconds are this many real seconds in these tests: a 1 s job takes 5 ms.
TIME_SCALE = 0.005


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "sim(**options): SimConfig options of the `sim` fixture")
    config.addinivalue_line(
        "markers", "host_settings(**overrides): HostSettings of tests/daemon/test_hosts.py"
    )


def sim_config(tmp_path: Path, **options: Any) -> SimConfig:
    values: dict[str, Any] = {
        "hosts": 2,
        "time_scale": TIME_SCALE,
        "task_seconds": 1.0,
        "task_distribution": "fixed",
        "spm_start_seconds": 1.0,
        "recovering_seconds": 5.0,
    }
    values.update(options)
    if values.get("state_dir") is True:
        values["state_dir"] = tmp_path / "state"
    return SimConfig(**values)


@pytest.fixture
async def sim(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Simulator]:
    marker = request.node.get_closest_marker("sim")
    options = dict(marker.kwargs) if marker else {}
    settings = Settings(server=ServerConfig(port=0), cluster=sim_config(tmp_path, **options))
    simulator = Simulator(settings)
    await simulator.start()
    try:
        yield simulator
    finally:
        await simulator.stop()


RpcFactory = Callable[..., Awaitable[StompRpcClient]]
RawFactory = Callable[..., Awaitable[StompClient]]


@pytest.fixture
async def rpc(sim: Simulator) -> AsyncIterator[RpcFactory]:
    clients: list[StompRpcClient] = []

    async def make(host: str = "host1", call_timeout: float = 5.0, **kw: Any) -> StompRpcClient:
        c = StompRpcClient("127.0.0.1", sim.port, host_header=host, timeout=call_timeout, **kw)
        await c.connect()
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


@pytest.fixture
async def raw(sim: Simulator) -> AsyncIterator[RawFactory]:
    clients: list[StompClient] = []

    async def make(host: str | None = "host1", **kw: Any) -> StompClient:
        c = await StompClient.connect(sim.port, host=host, **kw)
        clients.append(c)
        return c

    yield make
    for c in clients:
        await c.close()


class Control:
    """The control API; every call returns (HTTP status, decoded JSON)."""

    def __init__(self, session: aiohttp.ClientSession, port: int) -> None:
        self.session = session
        self.base = f"http://127.0.0.1:{port}/_control"
        self.port = port

    async def request(self, method: str, path: str, body: Any = None, **kw: Any) -> tuple[int, Any]:
        if body is not None:
            kw["json"] = body
        async with self.session.request(method, self.base + path, **kw) as r:
            data = await r.json() if r.content_type == "application/json" else await r.text()
            return r.status, data

    async def get(self, path: str) -> Any:
        status, data = await self.request("GET", path)
        assert status == 200, (path, status, data)
        return data

    async def post(self, path: str, body: Any = None, expect: int = 200) -> Any:
        status, data = await self.request("POST", path, body if body is not None else {})
        assert status == expect, (path, status, data)
        return data

    async def delete(self, path: str) -> Any:
        status, data = await self.request("DELETE", path)
        assert status == 200, (path, status, data)
        return data

    async def faults(self, host: str, **faults: Any) -> Any:
        return await self.post(f"/hosts/{host}/faults", faults)

    async def tasks(self, host: str) -> dict[str, dict[str, Any]]:
        return {t["id"]: t for t in await self.get(f"/hosts/{host}/tasks")}

    async def volumes(self, pool: str) -> dict[str, dict[str, Any]]:
        return {v["uuid"]: v for v in await self.get(f"/pools/{pool}/volumes")}

    async def http_call_status(self, host: str, method: str, params: Any = None) -> tuple[int, Any]:
        """One JSON-RPC call over HTTP: (HTTP status, decoded body)."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method}
        if params is not None:
            message["params"] = params
        url = f"http://127.0.0.1:{self.port}/hosts/{host}/jsonrpc"
        async with self.session.post(url, json=message) as r:
            return r.status, await r.json()

    async def http_call(self, host: str, method: str, params: Any = None) -> Any:
        """One JSON-RPC call over HTTP (`POST /hosts/<name>/jsonrpc`): the whole response."""
        message: dict[str, Any] = {"jsonrpc": "2.0", "id": str(uuid.uuid4()), "method": method}
        if params is not None:
            message["params"] = params
        url = f"http://127.0.0.1:{self.port}/hosts/{host}/jsonrpc"
        async with self.session.post(url, json=message) as r:
            assert r.status == 200, (r.status, await r.text())
            return await r.json()


@pytest.fixture
async def control(sim: Simulator) -> AsyncIterator[Control]:
    async with aiohttp.ClientSession() as session:
        yield Control(session, sim.port)


@dataclass
class DataCenter:
    """The first pool of the simulator and helpers to make storage over the wire."""

    pool: str
    master: str
    domains: list[str]
    spm: str | None
    hosts: list[str]

    @property
    def other_domain(self) -> str:
        return self.domains[1]

    def create_params(
        self,
        *,
        vol: str | None = None,
        img: str | None = None,
        sd: str | None = None,
        size: str | int = "1073741824",
        preallocate: int = 2,
        **extra: Any,
    ) -> dict[str, Any]:
        return {
            "volumeID": vol or str(uuid.uuid4()),
            "storagepoolID": self.pool,
            "storagedomainID": sd or self.master,
            "imageID": img or str(uuid.uuid4()),
            "size": size,
            "volFormat": 4,
            "preallocate": preallocate,
            "diskType": "DATA",
            "desc": "test volume",
            "srcImgUUID": BLANK,
            "srcVolUUID": BLANK,
            **extra,
        }

    def vol_params(self, p: dict[str, Any]) -> dict[str, Any]:
        """Volume.getInfo parameters for what create_params described."""
        return {
            "volumeID": p["volumeID"],
            "storagepoolID": p["storagepoolID"],
            "storagedomainID": p["storagedomainID"],
            "imageID": p["imageID"],
        }


@pytest.fixture
async def dc(control: Control) -> DataCenter:
    topo = await control.get("/topology")
    pool = topo["pools"][0]
    return DataCenter(
        pool=pool["id"],
        master=pool["master_domain"],
        domains=[d["id"] for d in pool["domains"]],
        spm=pool["spm"],
        hosts=list(pool["hosts"]),
    )


async def wait_task(client: StompRpcClient, task_id: str, within: float = 5.0) -> dict[str, Any]:
    """Poll Task.getStatus until the task is finished (legacy state); its last status."""
    status: dict[str, Any] = {}

    async def poll() -> bool:
        nonlocal status
        status = await client.call("Task.getStatus", {"taskID": task_id})
        return bool(status["taskState"] == "finished")

    await wait_for_async(poll, within)
    return status


async def wait_for_async(
    predicate: Callable[[], Awaitable[bool]],
    timeout: float = 5.0,  # noqa: ASYNC109 - the deadline is this helper's whole contract
    interval: float = 0.002,
) -> None:
    """`wait_until` for conditions read over the wire."""
    try:
        async with asyncio.timeout(timeout):
            while not await predicate():  # noqa: ASYNC110 - state read over the wire
                await asyncio.sleep(interval)
    except TimeoutError:
        raise AssertionError(f"condition not met within {timeout} s: {predicate}") from None

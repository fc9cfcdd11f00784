"""Typed VDSM verbs (`VdsmHost`) against the simulator, over STOMP and over HTTP.

Every verb runs over real sockets; the HTTP client must give the same results and the same
exceptions as the STOMP one. Malformed replies come from a tiny fake client (the simulator never
sends one) and from a tiny HTTP server that answers garbage.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web

from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import (
    ClientTimeout,
    ConnectionLost,
    GeneralError,
    NotSpm,
    UnknownTask,
    VdsmCallError,
)
from daemon.vdsm.http_client import HttpRpcClient
from daemon.vdsm.verbs import BadReply, RpcClient, TaskStatusReport, VdsmHost
from tests.conftest import Control, DataCenter, wait_for_async
from vdsm_simulator.app import Simulator

GiB = 1 << 30


def _new() -> str:
    return str(uuid.uuid4())


HostFactory = Callable[..., Awaitable[VdsmHost]]


@pytest.fixture(params=["stomp", "http"])
async def vdsm(request: pytest.FixtureRequest, sim: Simulator) -> AsyncIterator[HostFactory]:
    """`VdsmHost` factory over the transport of the test's parameter."""
    made: list[RpcClient] = []

    async def make(host: str = "host1", timeout: float = 5.0) -> VdsmHost:  # noqa: ASYNC109
        client: RpcClient
        if request.param == "http":
            client = HttpRpcClient("127.0.0.1", sim.port, host, timeout=timeout)
        else:
            client = StompRpcClient("127.0.0.1", sim.port, host_header=host, timeout=timeout)
        made.append(client)
        return VdsmHost(host, client, timeout=timeout)

    yield make
    for client in made:
        await client.close()


async def _finished(host: VdsmHost, task_id: str) -> TaskStatusReport:
    last: list[TaskStatusReport] = []

    async def done() -> bool:
        last[:] = [(await host.task_statuses())[task_id]]
        return last[0].state == "finished"

    await wait_for_async(done, 5.0)
    return last[0]


async def test_host_verbs(vdsm: HostFactory) -> None:
    host = await vdsm()
    await host.ping()
    assert isinstance(await host.stats(), dict)
    assert isinstance(await host.capabilities(), dict)
    assert await host.vm_stats() == []
    assert await host.vm_list() == []
    assert await host.task_statuses() == {}
    assert await host.task_info() == {}


async def test_concurrent_calls_share_writes_and_each_gets_its_answer(sim: Simulator) -> None:
    client = StompRpcClient("127.0.0.1", sim.port, host_header="host1", timeout=5.0)
    host = VdsmHost("host1", client, timeout=5.0)
    await host.ping()  # connected: the calls below go out together
    sent: list[int] = []
    writer = client._writer
    assert writer is not None
    write = writer.write

    def counting(data: bytes | bytearray | memoryview) -> None:
        sent.append(len(data))
        write(data)

    writer.write = counting  # type: ignore[method-assign]
    replies = await asyncio.gather(*(host.stats() for _ in range(50)), host.vm_stats())
    assert all(isinstance(r, dict) for r in replies[:50]) and replies[50] == []
    assert 1 <= len(sent) < 5  # queued in one loop iteration: not a system call per frame
    await client.close()
    with pytest.raises(ConnectionLost):
        client._send({"jsonrpc": "2.0", "method": "Host.ping2", "id": "x"})
    await host.ping()  # reconnects; frames of the old connection were dropped with it
    await client.close()


async def test_storage_task_lifecycle(vdsm: HostFactory, dc: DataCenter) -> None:
    assert dc.spm is not None
    spm = await vdsm(dc.spm)
    role, spm_id, lver = await spm.spm_status(dc.pool)
    assert role == "SPM" and spm_id >= 0 and lver >= 0
    image, volume = _new(), _new()
    task_id = await spm.create_volume(dc.pool, dc.master, image, volume, GiB, desc="t")
    assert uuid.UUID(task_id)
    assert set(await spm.task_info()) == {task_id}
    report = await _finished(spm, task_id)
    assert (report.task_id, report.result, report.code) == (task_id, "success", 0)
    assert report.as_dict()["taskState"] == "finished"
    assert (await spm.task_status(task_id)).result == "success"
    info = await spm.volume_info(dc.pool, dc.master, image, volume)
    assert info["uuid"] == volume and info["capacity"] == str(GiB)
    assert volume in await spm.domain_volumes(dc.pool, dc.master)
    await spm.clear_task(task_id)
    assert await spm.task_statuses() == {}
    with pytest.raises(UnknownTask):
        await spm.clear_task(task_id)

    copy_image, copy_volume = _new(), _new()
    copy = await spm.copy_volume(
        dc.pool, dc.master, image, volume, dc.other_domain, copy_image, copy_volume
    )
    assert (await _finished(spm, copy)).code == 0
    assert copy_volume in await spm.domain_volumes(dc.pool, dc.other_domain, copy_image)
    move = await spm.move_image(dc.pool, dc.other_domain, copy_image, dc.master)
    assert (await _finished(spm, move)).code == 0
    delete = await spm.delete_image(dc.pool, dc.master, image)
    assert (await _finished(spm, delete)).code == 0
    for task_id in (copy, move, delete):
        await spm.clear_task(task_id)


async def test_stop_and_revert(vdsm: HostFactory, dc: DataCenter, control: Control) -> None:
    assert dc.spm is not None
    spm = await vdsm(dc.spm)
    await control.post(f"/hosts/{dc.spm}/hold")  # jobs wait at their end until released
    image, volume = _new(), _new()
    stopped = await spm.create_volume(dc.pool, dc.master, image, volume, GiB)
    await spm.stop_task(stopped)
    await control.post(f"/hosts/{dc.spm}/release", {})  # no task: the gate opens
    report = await _finished(spm, stopped)
    assert (report.result, report.code) == ("cleanSuccess", 411)

    done = await spm.create_volume(dc.pool, dc.master, _new(), _new(), GiB)
    assert (await _finished(spm, done)).result == "success"
    await spm.revert_task(done)
    assert (await spm.task_status(done)).result == "cleanSuccess"


async def test_each_task_answers_every_task_on_its_own(
    vdsm: HostFactory, dc: DataCenter, control: Control
) -> None:
    assert dc.spm is not None
    spm = await vdsm(dc.spm)
    await control.post(f"/hosts/{dc.spm}/hold")  # the tasks run until released
    first = await spm.create_volume(dc.pool, dc.master, _new(), _new(), GiB)
    second = await spm.create_volume(dc.pool, dc.master, _new(), _new(), GiB)
    unknown = _new()
    stopped = await spm.each_task("Task.stop", [first, unknown, second])
    assert stopped[0] is None and stopped[2] is None
    assert isinstance(stopped[1], UnknownTask)
    assert (stopped[1].method, stopped[1].host) == ("Task.stop", dc.spm)
    await control.post(f"/hosts/{dc.spm}/release", {})
    for task_id in (first, second):
        assert (await _finished(spm, task_id)).code == 411  # each one was stopped
    assert await spm.each_task("Task.clear", [second, first]) == [None, None]
    assert await spm.task_statuses() == {}
    assert await spm.each_task("Task.clear", []) == []


async def test_each_task_reports_timeouts_and_lost_links_per_task(
    vdsm: HostFactory, control: Control
) -> None:
    host = await vdsm("host1", timeout=0.3)
    await host.ping()
    ids = [_new(), _new()]
    await control.faults("host1", latency=200.0)  # 200 simulated s = 1 real s
    late = await host.each_task("Task.stop", ids)
    assert [type(e) for e in late] == [ClientTimeout, ClientTimeout]
    assert all(e is not None and e.method == "Task.stop" for e in late)
    await control.faults("host1", latency=0.0, down=True)
    lost = await host.each_task("Task.clear", ids)
    assert [type(e) for e in lost] == [ConnectionLost, ConnectionLost]
    assert all(e is not None and e.vdsm_code == 5022 for e in lost)
    await control.faults("host1", down=False)
    assert [type(e) for e in await host.each_task("Task.clear", ids)] == [UnknownTask] * 2


async def test_spm_only_verbs_on_a_non_spm_host(vdsm: HostFactory, dc: DataCenter) -> None:
    other = next(h for h in dc.hosts if h != dc.spm)
    hsm = await vdsm(other)
    with pytest.raises(NotSpm) as caught:
        await hsm.task_statuses()
    assert caught.value.vdsm_code == 654 and caught.value.host == other
    with pytest.raises(NotSpm):
        await hsm.create_volume(dc.pool, dc.master, _new(), _new(), GiB)
    role, _, _ = await hsm.spm_status(dc.pool)
    assert role == "Free"


@pytest.mark.sim(hosts=2, vms_per_host=1)
async def test_vm_verbs(vdsm: HostFactory, control: Control) -> None:
    host1, host2 = await vdsm("host1"), await vdsm("host2")
    (vm,) = await host1.vm_stats()
    assert vm["status"] == "Up"
    listed = await host1.vm_list()
    assert [v["vmId"] for v in listed] == [vm["vmId"]]
    created = _new()
    await host1.create_vm(created, "new-vm", 512, [])
    assert created in {v["vmId"] for v in await host1.vm_list()}
    await host1.destroy_vm(created)

    await host1.migrate_vm(vm["vmId"], "host2")

    async def arrived() -> bool:
        return any(v["vmId"] == vm["vmId"] and v["status"] == "Up" for v in await host2.vm_list())

    await wait_for_async(arrived, 5.0)
    status = await host1.migration_status(vm["vmId"])
    assert status["status"]["code"] == 0
    await host1.destroy_vm(vm["vmId"])  # VDSM keeps the Down source copy until then
    await host2.migrate_cancel(vm["vmId"])  # nothing to cancel: still answers true
    with pytest.raises(VdsmCallError) as caught:
        await host1.migration_status(vm["vmId"])
    assert caught.value.vdsm_code == 1  # noVM


async def test_injected_errors_map_to_classes(
    vdsm: HostFactory, control: Control, dc: DataCenter
) -> None:
    host = await vdsm("host1")
    await control.faults(
        "host1", error_code=100, error_message="boom", error_methods=["Host.ping2"]
    )
    with pytest.raises(GeneralError, match=r"Host\.ping2 on host1: \[100\] boom"):
        await host.ping()
    await control.faults("host1", error_code=0, recovering=True)
    with pytest.raises(VdsmCallError) as caught:
        await host.stats()
    assert caught.value.vdsm_code == 99


async def test_down_host_and_timeouts(vdsm: HostFactory, control: Control) -> None:
    host = await vdsm("host1", timeout=0.3)
    await host.ping()
    await control.faults("host1", latency=200.0)  # 200 simulated s = 1 real s
    with pytest.raises(ClientTimeout) as caught:
        await host.ping()
    assert caught.value.vdsm_code == 5022
    await control.faults("host1", latency=0.0, down=True)
    with pytest.raises(ConnectionLost) as lost:
        await host.ping()
    assert lost.value.vdsm_code == 5022
    await control.faults("host1", down=False)
    await host.ping()  # lazy reconnect


# -- malformed replies -----------------------------------------------------------------------


class FakeClient:
    """Answers every call with a canned value: the replies a broken host could send."""

    label = "fake"

    def __init__(self, replies: dict[str, Any]) -> None:
        self.replies = replies

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        return self.replies[method]

    def on_event(self, callback: Callable[[str, dict[str, Any]], None]) -> None:
        pass

    async def close(self) -> None:
        pass


TASK = "8b6c7a55-3c2e-4e5a-9b1e-6b7c1f0f2a11"


@pytest.mark.parametrize(
    ("method", "reply", "call"),
    [
        ("Host.getAllTasksStatuses", ["not", "a", "dict"], lambda h: h.task_statuses()),
        ("Host.getAllTasksStatuses", {TASK: "running"}, lambda h: h.task_statuses()),
        ("Host.getAllTasksStatuses", {TASK: {"taskID": TASK}}, lambda h: h.task_statuses()),
        (
            "Host.getAllTasksStatuses",
            {TASK: {"taskState": "finished", "code": "x"}},
            lambda h: h.task_statuses(),
        ),
        ("Task.getStatus", None, lambda h: h.task_status(TASK)),
        ("StoragePool.getSpmStatus", {"spmStatus": "SPM"}, lambda h: h.spm_status("p")),
        ("StoragePool.getSpmStatus", {"spmStatus": "SPM", "spmId": "a", "spmLver": 1}, None),
        ("Volume.create", {"uuid": "x"}, None),
        ("Host.getAllVmStats", [{"status": "Up"}], lambda h: h.vm_stats()),
        ("Host.getAllVmStats", {"vmId": "x"}, lambda h: h.vm_stats()),
        ("Host.getVMList", ["x"], lambda h: h.vm_list()),
        ("Volume.getInfo", {"capacity": "1"}, lambda h: h.volume_info("p", "d", "i", "v")),
        ("StorageDomain.getVolumes", "v1", lambda h: h.domain_volumes("p", "d")),
    ],
)
async def test_malformed_replies_raise_bad_reply(
    method: str, reply: Any, call: Callable[[VdsmHost], Awaitable[Any]] | None
) -> None:
    host = VdsmHost("fake", FakeClient({method: reply}))
    if call is None:
        call = {
            "StoragePool.getSpmStatus": lambda h: h.spm_status("p"),
            "Volume.create": lambda h: h.create_volume("p", "d", "i", "v", 1),
        }[method]
    with pytest.raises(BadReply) as caught:
        await call(host)
    assert isinstance(caught.value, VdsmCallError)
    assert caught.value.method == method and caught.value.host == "fake"


async def test_http_garbage_is_bad_reply_and_http_errors_are_5022() -> None:
    async def garbage(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["name"]
        if kind == "text":
            return web.Response(text="<html>not json</html>")
        if kind == "list":
            return web.json_response([1, 2])
        if kind == "noid":
            return web.json_response({"jsonrpc": "2.0", "error": {"code": "x", "message": 1}})
        return web.Response(status=500, text="exploded")

    app = web.Application()
    app.router.add_post("/hosts/{name}/jsonrpc", garbage)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    clients = {k: HttpRpcClient("127.0.0.1", port, k, timeout=2) for k in ("text", "list", "noid")}
    broken = HttpRpcClient("127.0.0.1", port, "http500", timeout=2)
    try:
        for name, client in clients.items():
            with pytest.raises(BadReply, match=rf"Host\.ping2 on {name}"):
                await client.call("Host.ping2")
        with pytest.raises(ConnectionLost, match="HTTP 500"):
            await broken.call("Host.ping2")
        broken.on_event(lambda method, params: None)  # accepted, never called over HTTP
    finally:
        for client in [*clients.values(), broken]:
            await client.close()
        await runner.cleanup()

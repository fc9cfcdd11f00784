"""VM migration and host jobs of the whole simulator over STOMP, with events on jms.queue.events."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import Control, DataCenter, RawFactory, wait_for_async
from tests.sim.stomp_client import RpcError, StompClient


async def events_until(
    c: StompClient, method: str, pred: Any = None, within: float = 5.0
) -> list[tuple[str, dict[str, Any]]]:
    """Every event up to and including the first `method` whose params satisfy `pred`."""
    seen = []
    async for name, params in c.iter_events(within):
        seen.append((name, params))
        if name == method and (pred is None or pred(params)):
            return seen
    raise AssertionError("unreachable")


async def add_vm(control: Control, host: str = "host1", memory_mb: int = 1024) -> str:
    vm = await control.post("/vms", {"host": host, "memory_mb": memory_mb}, expect=201)
    assert vm["host"] == host
    return str(vm["id"])


async def vm_hosts(control: Control, vm_id: str) -> dict[str, str]:
    topo = await control.get("/topology")
    return {v["host"]: v["status"] for v in topo["vms"] if v["vmId"] == vm_id}


async def test_migration_moves_vm_with_events(raw: RawFactory, control: Control) -> None:
    vm = await add_vm(control, memory_mb=2048)
    src = await raw("host1", subscribe_events=True)
    dst = await raw("host2", subscribe_events=True)
    assert await src.call("VM.migrate", {"vmID": vm, "params": {"dst": "host2:54321"}}) is True
    status = f"|virt|VM_status|{vm}"
    progress = f"|virt|VM_migration_status|{vm}"
    seen = await events_until(src, status, lambda p: p[vm]["status"] == "Down")
    names = [n for n, _ in seen]
    assert names[0] == status and seen[0][1][vm]["status"] == "Migration Source"
    assert progress in names
    last_progress = [p for n, p in seen if n == progress][-1]
    assert last_progress[vm]["progress"] == 100 and "downtime" in last_progress[vm]
    assert all("notify_time" in p for _, p in seen)
    down = seen[-1][1][vm]
    assert (down["exitReason"], down["exitMessage"]) == (4, "Migration succeeded")
    seen = await events_until(dst, status, lambda p: p[vm]["status"] == "Up")
    assert await dst.call("VM.getStats", {"vmID": vm})
    assert (await src.call("VM.getMigrationStatus", {"vmID": vm}))["progress"] == 100
    assert (await vm_hosts(control, vm))["host2"] == "Up"
    assert [v["vmId"] for v in await dst.call("Host.getVMList", {})] == [vm]


async def test_cancelled_migration_stays_on_source(raw: RawFactory, control: Control) -> None:
    vm = await add_vm(control)
    src = await raw("host1", subscribe_events=True)
    params = {"dst": "host2", "maxBandwidth": 1}  # 1024 s of transfer unless cancelled
    assert await src.call("VM.migrate", {"vmID": vm, "params": params}) is True
    await events_until(src, f"|virt|VM_migration_status|{vm}")
    e = None
    try:
        await src.call("VM.migrate", {"vmID": vm, "params": params})
    except RpcError as err:
        e = err
    assert e is not None and e.code == 51  # MigrationInProgress
    assert await src.call("VM.migrateCancel", {"vmID": vm}) is True
    await events_until(src, f"|virt|VM_status|{vm}", lambda p: p[vm]["status"] == "Up")
    status = await src.call("VM.getMigrationStatus", {"vmID": vm})
    # migCancelErr is MigrationCancelationFailed (47) with the message overridden.
    assert status["status"] == {"code": 47, "message": "Migration canceled"}

    async def settled() -> bool:
        return await vm_hosts(control, vm) == {"host1": "Up"}

    await wait_for_async(settled)
    with pytest.raises(RpcError) as info:
        await src.call("VM.migrateCancel", {"vmID": vm})
    assert info.value.code == 47  # the transfer had started: no libvirt job to abort


async def test_vm_verbs_errors(raw: RawFactory, control: Control) -> None:
    c = await raw("host2")
    vm = await add_vm(control)  # on host1
    with pytest.raises(RpcError) as info:
        await c.call("VM.getStats", {"vmID": vm})
    assert info.value.code == 1
    with pytest.raises(RpcError) as info:
        await c.call("VM.migrate", {"vmID": vm, "params": "host1"})
    assert info.value.code == -32602


async def test_sdm_copy_data_host_job(raw: RawFactory, dc: DataCenter) -> None:
    c = await raw("host1", subscribe_events=True)
    job = str(uuid.uuid4())
    p = dc.create_params()
    tid = await c.call("Volume.create", p)

    async def created() -> bool:
        return bool((await c.call("Task.getStatus", {"taskID": tid}))["taskState"] == "finished")

    await wait_for_async(created)
    source = {
        "endpoint_type": "div",
        "sd_id": p["storagedomainID"],
        "img_id": p["imageID"],
        "vol_id": p["volumeID"],
    }
    assert (
        await c.call("SDM.copy_data", {"job_id": job, "source": source, "destination": source})
        is True
    )
    jobs = await c.call("Host.getJobs", {"job_type": "storage", "job_ids": [job]})
    assert jobs[job]["status"] in ("pending", "running")
    assert (jobs[job]["description"], jobs[job]["job_type"]) == ("copy_data", "storage")
    _, params = (await events_until(c, f"|jobs|status|{job}"))[-1]
    assert params["id"] == job and params["status"] == "done" and "notify_time" in params
    assert (await c.call("Host.getJobs", {}))[job]["status"] == "done"
    assert await c.call("Host.getJobs", {"job_type": "v2v"}) == {}
    # A job id already in use is refused: jobs.JobExistsError is no VDSM error, so 100.
    with pytest.raises(RpcError) as info:
        await c.call("SDM.copy_data", {"job_id": job, "source": source, "destination": source})
    assert (info.value.code, info.value.message) == (100, f"Job '{job}' exists")
    # SDM jobs run in an unpersisted `sdm` task, listed by getAllTasks only.
    tasks = await c.call("Host.getAllTasks")
    sdm = [t for t in tasks.values() if t["tag"] == "sdm"]
    assert [(t["verb"], t["state"]) for t in sdm] == [("sdm_copy_data", "finished")]
    assert set(await c.call("Host.getAllTasksStatuses")) == {tid}

"""The storage task engine of the whole simulator, driven over STOMP by the daemon's client.

Every transition a client can cause with VDSM verbs, the task views (legacy mapping in
Task.getStatus / Host.getAllTasksStatuses, raw states in Host.getAllTasks) and every task error
code. Tasks are kept "running" with the control API's hold gate, never with sleeps. Texts are
VDSM's (lib/vdsm/storage/task.py, exception.py).
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import VdsmCallError
from tests.conftest import Control, DataCenter, RpcFactory, wait_for_async, wait_task
from vdsm_simulator.app import Simulator


async def call_error(client: StompRpcClient, method: str, params: Any = None) -> VdsmCallError:
    with pytest.raises(VdsmCallError) as info:
        await client.call(method, params)
    return info.value


async def held(control: Control, host: str, task_id: str) -> None:
    """Wait until the task's job sits at the hold gate (it is running, its effects made)."""

    async def check() -> bool:
        return task_id in (await control.get(f"/hosts/{host}/held"))["held"]

    await wait_for_async(check)


@pytest.fixture
async def spm(rpc: RpcFactory) -> StompRpcClient:
    return await rpc("host1")


async def test_create_volume_running_then_finished(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    await control.post("/hosts/host1/hold")
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    uuid.UUID(tid, version=4)  # VDSM generates a uuid4
    await held(control, "host1", tid)

    status = await spm.call("Task.getStatus", {"taskID": tid})
    assert status == {
        "taskID": tid,
        "taskState": "running",
        "taskResult": "",
        "code": 0,
        "message": "running job 1 of 1",
    }
    assert await spm.call("Task.getInfo", {"taskID": tid}) == {"id": tid, "verb": "createVolume"}
    assert (await spm.call("Host.getAllTasksStatuses"))[tid] == status
    assert (await spm.call("Host.getAllTasksInfo"))[tid] == {"id": tid, "verb": "createVolume"}
    raw = (await spm.call("Host.getAllTasks"))[tid]
    assert raw["state"] == "running" and raw["tag"] == "spm" and raw["verb"] == "createVolume"
    # The effect exists already, ILLEGAL while the task works.
    info = await spm.call("Volume.getInfo", dc.vol_params(p))
    assert info["legality"] == "ILLEGAL" and info["capacity"] == p["size"]
    assert p["volumeID"] in await spm.call(
        "StorageDomain.getVolumes", {"storagedomainID": dc.master, "storagepoolID": dc.pool}
    )
    assert await spm.call(
        "Image.getVolumes",
        {"imageID": p["imageID"], "storagepoolID": dc.pool, "storagedomainID": dc.master},
    ) == [p["volumeID"]]

    await control.post("/hosts/host1/release", {"task": tid})
    status = await wait_task(spm, tid)
    assert status == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "success",
        "code": 0,
        "message": "1 jobs completed successfully",
    }
    assert (await spm.call("Host.getAllTasks"))[tid]["state"] == "finished"
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"
    # Done tasks stay listed until cleared; clearing keeps the volume.
    assert tid in await spm.call("Host.getAllTasksStatuses")
    assert await spm.call("Task.clear", {"taskID": tid}) is True
    e = await call_error(spm, "Task.getStatus", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (401, f"Task id unknown: ('{tid}',)")
    assert tid not in await spm.call("Host.getAllTasks")
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"


async def test_stop_running_job_completes_then_rolls_back(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    """A sparse create registers no abort callback: the job ends, then the task rolls back."""
    await control.post("/hosts/host1/hold")
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    await held(control, "host1", tid)
    assert await spm.call("Task.stop", {"taskID": tid}) is True
    # The abort flag is set; the state only moves when the job reaches its next check.
    assert (await spm.call("Task.getStatus", {"taskID": tid}))["taskState"] == "running"
    e = await call_error(spm, "Task.stop", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (411, f"Task is aborted: 'value={tid} abortedcode=411'")

    await control.post("/hosts/host1/release")
    status = await wait_task(spm, tid)
    assert status["taskResult"] == "cleanSuccess"
    assert status["code"] == 411
    assert status["message"] == "value=shutting down abortedcode=411"
    assert (await spm.call("Host.getAllTasks"))[tid]["state"] == "recovered"
    e = await call_error(spm, "Volume.getInfo", dc.vol_params(p))
    assert e.vdsm_code == 201
    assert p["volumeID"] not in await spm.call(
        "StorageDomain.getVolumes", {"storagedomainID": dc.master, "storagepoolID": dc.pool}
    )
    # stop of a done task is a no-op; revert of a recovered one is a bad transition.
    assert await spm.call("Task.stop", {"taskID": tid}) is True
    e = await call_error(spm, "Task.revert", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (
        441,
        "cannot move task to requested state: ('from recovered to racquiring',)",
    )
    assert await spm.call("Task.clear", {"taskID": tid}) is True


@pytest.mark.sim(task_seconds=2000.0)  # 10 s of real work unless stopped
async def test_stop_abortable_job_stops_at_once(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    """A preallocated create zeroes with qemu-img, which a stop interrupts (ActionStopped)."""
    p = dc.create_params(preallocate=1)
    tid = await spm.call("Volume.create", p)

    async def running() -> bool:
        return bool((await control.tasks("host1"))[tid]["state"] == "running")

    await wait_for_async(running)
    assert await spm.call("Task.stop", {"taskID": tid}) is True
    status = await wait_task(spm, tid, within=2.0)
    assert status["taskResult"] == "cleanSuccess"
    assert (status["code"], status["message"]) == (411, f"value={tid} abortedcode=411")
    assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201


async def test_revert_finished_create_removes_volume(spm: StompRpcClient, dc: DataCenter) -> None:
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"
    assert await spm.call("Task.revert", {"taskID": tid}) is True  # synchronous
    status = await spm.call("Task.getStatus", {"taskID": tid})
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanSuccess")
    assert (await spm.call("Host.getAllTasks"))[tid]["state"] == "recovered"
    assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201
    assert await spm.call("Task.clear", {"taskID": tid}) is True


async def test_revert_and_clear_refused_while_running(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    await control.post("/hosts/host1/hold")
    tid = await spm.call("Volume.create", dc.create_params())
    await held(control, "host1", tid)
    e = await call_error(spm, "Task.revert", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (
        403,
        'Task not finished: ("can\'t rollback in state running",)',
    )
    e = await call_error(spm, "Task.clear", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (
        410,
        'Operation is not allowed in this task state: ("can\'t clean in state running",)',
    )
    await control.post("/hosts/host1/release")
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert await spm.call("Task.clear", {"taskID": tid}) is True


async def test_revert_with_references_is_442(
    spm: StompRpcClient, sim: Simulator, dc: DataCenter
) -> None:
    """No verb holds a reference across calls; the engine's hook stands for a concurrent one."""
    tid = await spm.call("Volume.create", dc.create_params())
    await wait_task(spm, tid)
    release = sim.cluster.hosts["host1"].tasks.hold_ref(tid)
    e = await call_error(spm, "Task.revert", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (
        442,
        f"operation cannot be performed - task has active references: ('{tid}',)",
    )
    release()
    assert await spm.call("Task.revert", {"taskID": tid}) is True
    assert (await spm.call("Task.getStatus", {"taskID": tid}))["taskResult"] == "cleanSuccess"


@pytest.mark.parametrize("verb", ["getStatus", "getInfo", "stop", "revert", "clear"])
async def test_unknown_and_invalid_task_ids(spm: StompRpcClient, verb: str) -> None:
    tid = str(uuid.uuid4())
    e = await call_error(spm, f"Task.{verb}", {"taskID": tid})
    assert (e.vdsm_code, e.message) == (401, f"Task id unknown: ('{tid}',)")
    e = await call_error(spm, f"Task.{verb}", {"taskID": ""})
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'taskID='")
    e = await call_error(spm, f"Task.{verb}", {"taskID": "a.b"})
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'taskID=a.b'")


@pytest.mark.sim(workers=1)
async def test_queued_task_raw_state_and_stop_rolls_back_at_once(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    await control.post("/hosts/host1/hold")
    first = await spm.call("Volume.create", dc.create_params())
    await held(control, "host1", first)
    p = dc.create_params()
    second = await spm.call("Volume.create", p)  # the only worker is busy
    raw = await spm.call("Host.getAllTasks")
    assert raw[first]["state"] == "running" and raw[second]["state"] == "queued"
    status = await spm.call("Task.getStatus", {"taskID": second})
    assert (status["taskState"], status["message"]) == ("running", "Task is initializing")
    # Nobody holds a queued task: the stop aborts and rolls it back in the call.
    assert await spm.call("Task.stop", {"taskID": second}) is True
    status = await spm.call("Task.getStatus", {"taskID": second})
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanSuccess")
    assert (await spm.call("Host.getAllTasks"))[second]["state"] == "recovered"
    await control.post("/hosts/host1/release")
    assert (await wait_task(spm, first))["taskResult"] == "success"
    # The worker reached the stopped task afterwards and left it alone; no volume was made.
    assert (await spm.call("Host.getAllTasks"))[second]["state"] == "recovered"
    assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201


async def test_failed_job_rolls_back_with_code_and_text(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    await control.faults(
        "host1", task_failure_rate=1.0, task_failure_code=252, task_failure_message="disk on fire"
    )
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    status = await wait_task(spm, tid)
    assert status == {
        "taskID": tid,
        "taskState": "finished",
        "taskResult": "cleanSuccess",
        "code": 252,
        "message": "value=disk on fire abortedcode=252",
    }
    assert (await spm.call("Host.getAllTasks"))[tid]["state"] == "recovered"
    assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201
    # revert of a rolled-back task is refused, clear works.
    assert (await call_error(spm, "Task.revert", {"taskID": tid})).vdsm_code == 441
    assert await spm.call("Task.clear", {"taskID": tid}) is True


async def test_recovery_failure_ends_clean_failure(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    await control.faults("host1", task_failure_rate=1.0, recovery_failure=True)
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    status = await wait_task(spm, tid)
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanFailure")
    assert (await spm.call("Host.getAllTasks"))[tid]["state"] == "failed"
    # The rollback did not happen: the half-made volume is still there, ILLEGAL.
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "ILLEGAL"
    assert (await call_error(spm, "Task.revert", {"taskID": tid})).vdsm_code == 441
    assert await spm.call("Task.clear", {"taskID": tid}) is True


async def test_revert_with_recovery_failure_is_clean_failure(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    p = dc.create_params()
    tid = await spm.call("Volume.create", p)
    await wait_task(spm, tid)
    await control.faults("host1", recovery_failure=True)
    assert await spm.call("Task.revert", {"taskID": tid}) is True
    status = await spm.call("Task.getStatus", {"taskID": tid})
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanFailure")
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"


async def test_task_views_are_filtered_by_tag_and_guarded_by_spm(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    host2 = await rpc("host2")
    for method in ("Host.getAllTasksStatuses", "Host.getAllTasksInfo"):
        e = await call_error(host2, method)
        assert (e.vdsm_code, e.message) == (654, "Not SPM: ()")  # SpmStatusError()
    assert await host2.call("Host.getAllTasks") == {}
    p = dc.create_params()
    e = await call_error(host2, "Volume.create", p)
    assert (e.vdsm_code, e.message) == (654, f"Not SPM: ('{dc.pool}',)")
    assert await host2.call("Host.getAllTasks") == {}  # no task was created
    assert (await control.get("/topology"))["pools"][0]["domains"][0]["volumes"] == 0


async def test_http_jsonrpc_subset(control: Control, dc: DataCenter) -> None:
    await control.post("/hosts/host1/hold")
    p = dc.create_params()
    reply = await control.http_call("host1", "Volume.create", p)
    tid = reply["result"]
    await held(control, "host1", tid)
    reply = await control.http_call("host1", "Task.getStatus", {"taskID": tid})
    assert reply["result"]["taskState"] == "running"
    reply = await control.http_call("host1", "Task.stop", {"taskID": tid})
    assert reply["result"] is True
    await control.post("/hosts/host1/release")

    async def finished() -> bool:
        r = await control.http_call("host1", "Task.getStatus", {"taskID": tid})
        return bool(r["result"]["taskState"] == "finished")

    await wait_for_async(finished)
    reply = await control.http_call("host1", "Host.getAllTasksStatuses")
    assert reply["result"][tid]["taskResult"] == "cleanSuccess"
    reply = await control.http_call("host2", "Host.getAllTasksStatuses")
    assert reply["error"] == {"code": 654, "message": "Not SPM: ()"}
    reply = await control.http_call("host1", "Task.clear", {"taskID": tid})
    assert reply["result"] is True
    reply = await control.http_call("host1", "Task.getStatus", {"taskID": tid})
    assert reply["error"] == {"code": 401, "message": f"Task id unknown: ('{tid}',)"}
    reply = await control.http_call("host1", "No.such")
    assert reply["error"]["code"] == -32601
    assert p["volumeID"] not in await control.volumes(dc.pool)


async def test_concurrent_tasks_all_finish_and_clear(
    spm: StompRpcClient, dc: DataCenter, control: Control
) -> None:
    tids = await asyncio.gather(*(spm.call("Volume.create", dc.create_params()) for _ in range(25)))
    assert len(set(tids)) == 25
    for tid in tids:
        assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert len(await control.volumes(dc.pool)) == 25
    for tid in tids:
        await spm.call("Task.clear", {"taskID": tid})
    assert await spm.call("Host.getAllTasksStatuses") == {}

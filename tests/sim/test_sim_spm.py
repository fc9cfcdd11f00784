"""SPM verbs of the whole simulator over STOMP: status, spmStop/spmStart, 651/654/656, SPM loss.

VDSM facts used (oVirt/vdsm lib/vdsm/storage/{hsm,sp,taskManager}.py):
* spmStart is an `hsm` task (not persisted); 656 IsSpm, synchronously, on the SPM itself.
* spmStop only releases the role: tasks stay in the host's memory (TaskManager.unloadTasks is
  never called), so Host.getAllTasks still lists them while the secured views answer 654.
* A new SPM loads the dumped tasks of the master domain and recovers them: rolled back, never
  resumed. Losing the lease kills the old SPM's VDSM, so its jobs do not carry on.
"""

from __future__ import annotations

from pathlib import Path
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


def spm_start(dc: DataCenter, prev_id: int = -1, lver: int = -1) -> dict[str, Any]:
    return {
        "storagepoolID": dc.pool,
        "prevID": prev_id,
        "prevLver": str(lver),
        "enableScsiFencing": "false",
        "maxHostID": 250,
        "domVersion": "5",
    }


async def held(control: Control, host: str, task_id: str) -> None:
    async def check() -> bool:
        return task_id in (await control.get(f"/hosts/{host}/held"))["held"]

    await wait_for_async(check)


async def test_spm_status_and_pool_info(rpc: RpcFactory, dc: DataCenter) -> None:
    h1, h2 = await rpc("host1"), await rpc("host2")
    pool = {"storagepoolID": dc.pool}
    assert await h1.call("StoragePool.getSpmStatus", pool) == {
        "spmStatus": "SPM",
        "spmLver": 0,
        "spmId": 1,
    }
    assert await h2.call("StoragePool.getSpmStatus", pool) == {
        "spmStatus": "Free",
        "spmLver": 0,
        "spmId": 1,
    }
    info = await h2.call("StoragePool.getInfo", pool)
    assert info["info"]["master_uuid"] == dc.master
    assert (info["info"]["spm_id"], info["info"]["lver"]) == (1, 0)
    assert set(info["dominfo"]) == set(dc.domains)


async def test_spm_start_on_spm_is_656(rpc: RpcFactory, dc: DataCenter) -> None:
    h1 = await rpc("host1")
    e = await call_error(h1, "StoragePool.spmStart", spm_start(dc))
    assert (e.vdsm_code, e.message) == (
        656,
        f"Operation not allowed while SPM is active: ('{dc.pool}',)",
    )
    assert await h1.call("Host.getAllTasks") == {}


async def test_spm_start_while_spm_alive_fails_651(rpc: RpcFactory, dc: DataCenter) -> None:
    h2 = await rpc("host2")
    tid = await h2.call("StoragePool.spmStart", spm_start(dc, 1, 0))
    assert await h2.call("Task.getInfo", {"taskID": tid}) == {"id": tid, "verb": "spmStart"}
    status = await wait_task(h2, tid)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 651)
    assert status["message"].startswith("value=Cannot obtain lock: ")
    assert status["message"].endswith(" abortedcode=651")
    assert (await h2.call("StoragePool.getSpmStatus", {"storagepoolID": dc.pool}))[
        "spmStatus"
    ] == "Free"
    # The hsm task is listed by getAllTasks but not by the SPM-tagged views.
    assert (await h2.call("Host.getAllTasks"))[tid]["tag"] == "hsm"
    assert (await call_error(h2, "Host.getAllTasksStatuses")).vdsm_code == 654
    assert await h2.call("Task.clear", {"taskID": tid}) is True


async def test_spm_stop_then_start_elsewhere(rpc: RpcFactory, dc: DataCenter) -> None:
    h1, h2 = await rpc("host1"), await rpc("host2")
    pool = {"storagepoolID": dc.pool}
    assert await h1.call("StoragePool.spmStop", pool) is True
    assert await h1.call("StoragePool.getSpmStatus", pool) == {
        "spmStatus": "Free",
        "spmLver": 0,
        "spmId": -1,
    }
    assert (await call_error(h1, "Host.getAllTasksStatuses")).message == "Not SPM: ()"
    tid = await h2.call("StoragePool.spmStart", spm_start(dc, -1, 0))
    status = await wait_task(h2, tid)
    assert (status["taskResult"], status["code"]) == ("success", 0)
    assert await h2.call("StoragePool.getSpmStatus", pool) == {
        "spmStatus": "SPM",
        "spmLver": 1,
        "spmId": 2,
    }
    assert await h2.call("Host.getAllTasksStatuses") == {}  # spmStart is not an spm task
    assert await h2.call("Task.clear", {"taskID": tid}) is True
    # The new SPM runs storage verbs; the old one is refused with the pool in the text.
    vol = await h2.call("Volume.create", dc.create_params())
    assert (await wait_task(h2, vol))["taskResult"] == "success"
    e = await call_error(h1, "Volume.create", dc.create_params())
    assert (e.vdsm_code, e.message) == (654, f"Not SPM: ('{dc.pool}',)")


async def test_spm_stop_keeps_tasks_in_memory(rpc: RpcFactory, dc: DataCenter) -> None:
    """VDSM never unloads tasks: after spmStop they are still known to the old SPM."""
    h1 = await rpc("host1")
    tid = await h1.call("Volume.create", dc.create_params())
    await wait_task(h1, tid)
    assert await h1.call("StoragePool.spmStop", {"storagepoolID": dc.pool}) is True
    assert (await h1.call("Host.getAllTasks"))[tid]["state"] == "finished"
    assert (await h1.call("Task.getStatus", {"taskID": tid}))["taskResult"] == "success"
    assert (await call_error(h1, "Host.getAllTasksStatuses")).vdsm_code == 654
    assert await h1.call("Task.clear", {"taskID": tid}) is True


def task_files(state_dir: Path, pool: str) -> dict[str, str]:
    """The state of every task dumped under the pool's master/tasks directory."""
    found = {}
    for task_file in (state_dir / "pools" / pool / "tasks").glob("*/*.task"):
        if task_file.parent.suffix:  # .temp / .backup copies
            continue
        fields = dict(
            line.split(" = ", 1) for line in task_file.read_text().splitlines() if " = " in line
        )
        found[task_file.parent.name] = fields["state"]
    return found


@pytest.mark.sim(state_dir=True)
async def test_spm_loss_then_takeover_rolls_back_persisted_tasks(
    rpc: RpcFactory, control: Control, dc: DataCenter, sim: Simulator
) -> None:
    h1, h2 = await rpc("host1"), await rpc("host2")
    done_params = dc.create_params()
    done = await h1.call("Volume.create", done_params)
    await wait_task(h1, done)
    await control.post("/hosts/host1/hold")
    run_params = dc.create_params()
    running = await h1.call("Volume.create", run_params)
    await held(control, "host1", running)
    state_dir = sim.settings.cluster.state_dir
    assert state_dir is not None
    assert task_files(state_dir, dc.pool) == {done: "finished", running: "running"}

    lost = await control.delete(f"/pools/{dc.pool}/spm")
    assert sorted(lost["dropped_tasks"]) == sorted([done, running])
    assert (await control.get("/topology"))["pools"][0]["spm"] is None

    tid = await h2.call("StoragePool.spmStart", spm_start(dc, 1, 0))
    assert (await wait_task(h2, tid))["taskResult"] == "success"

    async def recovered() -> bool:
        statuses = await h2.call("Host.getAllTasksStatuses")
        return running in statuses and statuses[running]["taskState"] == "finished"

    await wait_for_async(recovered)
    statuses = await h2.call("Host.getAllTasksStatuses")
    assert set(statuses) == {done, running}
    assert statuses[running]["taskResult"] == "cleanSuccess"
    assert statuses[done]["taskResult"] == "success"
    raw = await h2.call("Host.getAllTasks")
    assert (raw[running]["state"], raw[done]["state"]) == ("recovered", "finished")
    assert (await call_error(h2, "Volume.getInfo", dc.vol_params(run_params))).vdsm_code == 201
    assert (await h2.call("Volume.getInfo", dc.vol_params(done_params)))["legality"] == "LEGAL"
    assert task_files(state_dir, dc.pool) == {done: "finished", running: "recovered"}

    # The old SPM's job died with its lease: releasing its gate resumes nothing.
    await control.post("/hosts/host1/release")
    await h1.call("Host.ping2")
    assert (await control.get("/hosts/host1/held"))["held"] == []
    assert task_files(state_dir, dc.pool) == {done: "finished", running: "recovered"}
    assert run_params["volumeID"] not in await control.volumes(dc.pool)

    for t in (done, running, tid):
        assert await h2.call("Task.clear", {"taskID": t}) is True
    assert task_files(state_dir, dc.pool) == {}
    assert await h2.call("Host.getAllTasks") == {}


@pytest.mark.sim(state_dir=True)
async def test_control_spm_move_recovers_on_new_spm(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    h1, h2 = await rpc("host1"), await rpc("host2")
    await control.post("/hosts/host1/hold")
    p = dc.create_params()
    running = await h1.call("Volume.create", p)
    await held(control, "host1", running)
    moved = await control.post(f"/pools/{dc.pool}/spm", {"host": "host2"})
    assert moved["spm"] == "host2"

    async def recovered() -> bool:
        statuses = await h2.call("Host.getAllTasksStatuses")
        return bool(statuses.get(running, {}).get("taskResult") == "cleanSuccess")

    await wait_for_async(recovered)
    assert p["volumeID"] not in await control.volumes(dc.pool)
    assert (await call_error(h1, "Host.getAllTasksStatuses")).vdsm_code == 654


@pytest.mark.sim(state_dir=True)
async def test_spm_restart_on_same_host_with_tasks_in_memory_fails(
    rpc: RpcFactory, control: Control, dc: DataCenter
) -> None:
    """recoverDumpedTasks meets a task id the host still knows: AddTaskError, SPM stopped.

    AddTaskError is a GeneralException, not a StorageException, so Task._run reports 100.
    """
    h1 = await rpc("host1")
    done = await h1.call("Volume.create", dc.create_params())
    await wait_task(h1, done)
    await h1.call("StoragePool.spmStop", {"storagepoolID": dc.pool})
    tid = await h1.call("StoragePool.spmStart", spm_start(dc, -1, 0))
    status = await wait_task(h1, tid)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 100)
    assert status["message"] == (
        f"value=TaskManager error, unable to add task: ('Task id already in use: {done}',)"
        " abortedcode=100"
    )
    pool = {"storagepoolID": dc.pool}
    assert (await h1.call("StoragePool.getSpmStatus", pool))["spmStatus"] == "Free"
    # Once the engine cleared the task, the host can take the role again.
    assert await h1.call("Task.clear", {"taskID": done}) is True
    tid = await h1.call("StoragePool.spmStart", spm_start(dc, -1, 1))
    assert (await wait_task(h1, tid))["taskResult"] == "success"
    assert (await h1.call("StoragePool.getSpmStatus", pool))["spmStatus"] == "SPM"
    # The control API's SPM move tolerates tasks the host still knows.
    kept = await h1.call("Volume.create", dc.create_params())
    await wait_task(h1, kept)
    await h1.call("StoragePool.spmStop", pool)
    moved = await control.post(f"/pools/{dc.pool}/spm", {"host": "host1"})
    assert moved["spm"] == "host1"
    assert (await h1.call("Host.getAllTasksStatuses"))[kept]["taskResult"] == "success"

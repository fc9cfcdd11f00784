"""Corners where the simulator follows VDSM's code rather than the obvious design, over STOMP.

Each test names the VDSM code it follows (oVirt/vdsm lib/vdsm/storage/{hsm,sp,volume,image}.py,
lib/vdsm/storage/sdm/api/*.py): what is checked in the verb and what only in the job, what a
job returns, the SPM start lock, and SDM jobs running inside `sdm` tasks.
"""

from __future__ import annotations

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


async def make_volume(spm: StompRpcClient, dc: DataCenter, **kw: Any) -> dict[str, Any]:
    p = dc.create_params(**kw)
    tid = await spm.call("Volume.create", p)
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    return p


async def failed_with(spm: StompRpcClient, tid: str, code: int, text: str) -> None:
    status = await wait_task(spm, tid)
    assert (status["taskState"], status["taskResult"], status["code"], status["message"]) == (
        "finished",
        "cleanSuccess",
        code,
        f"value={text} abortedcode={code}",
    )


@pytest.fixture
async def spm(rpc: RpcFactory) -> StompRpcClient:
    return await rpc("host1")


# -- D1: Volume.delete looks the volume up in its job ------------------------------------------


async def test_delete_of_missing_volume_is_a_failing_task(
    spm: StompRpcClient, dc: DataCenter
) -> None:
    vol, img = str(uuid.uuid4()), str(uuid.uuid4())
    params = {
        "volumeID": vol,
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "imageID": img,
        "postZero": False,
        "force": False,
    }
    tid = await spm.call("Volume.delete", params)
    assert await spm.call("Task.getInfo", {"taskID": tid}) == {"id": tid, "verb": "deleteVolume"}
    await failed_with(spm, tid, 201, f"Volume does not exist: ('{vol}',)")


# -- D2: existing targets fail in the job, and are left alone -----------------------------------


async def test_create_of_existing_volume_fails_in_job_and_keeps_it(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    p = await make_volume(spm, dc)
    before = await spm.call("Volume.getInfo", dc.vol_params(p))
    again = dc.create_params(vol=p["volumeID"], img=p["imageID"], desc="other")
    tid = await spm.call("Volume.create", again)
    await failed_with(spm, tid, 212, f"Volume already exists: ('{p['volumeID']}',)")
    assert (await spm.call("Host.getAllTasks"))[tid]["result"] == ""
    assert await spm.call("Volume.getInfo", dc.vol_params(p)) == before  # no rollback ran on it
    assert p["volumeID"] in await control.volumes(dc.pool)


async def test_copy_to_existing_volume_and_of_missing_source_fail_in_job(
    spm: StompRpcClient, dc: DataCenter
) -> None:
    src = await make_volume(spm, dc)
    dst = await make_volume(spm, dc, sd=dc.other_domain)
    before = await spm.call("Volume.getInfo", dc.vol_params(dst))
    copy = {
        "volumeID": src["volumeID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "imageID": src["imageID"],
        "dstSdUUID": dc.other_domain,
        "dstImgUUID": dst["imageID"],
        "dstVolUUID": dst["volumeID"],
        "desc": "copy",
        "volType": 6,
        "volFormat": 4,
        "preallocate": 2,
        "postZero": False,
        "force": False,
    }
    tid = await spm.call("Volume.copy", copy)
    await failed_with(spm, tid, 212, f"Volume already exists: ('{dst['volumeID']}',)")
    assert await spm.call("Volume.getInfo", dc.vol_params(dst)) == before
    missing = str(uuid.uuid4())
    tid = await spm.call("Volume.copy", {**copy, "volumeID": missing, "dstVolUUID": missing})
    await failed_with(spm, tid, 201, f"Volume does not exist: ('{missing}',)")


async def test_move_fails_in_job_for_existing_target_unknown_op_and_missing_image(
    spm: StompRpcClient, dc: DataCenter
) -> None:
    p = await make_volume(spm, dc)
    there = await make_volume(spm, dc, sd=dc.other_domain, vol=p["volumeID"])
    move = {
        "imageID": p["imageID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "dstSdUUID": dc.other_domain,
        "operation": "MOVE",
        "postZero": False,
        "force": False,
    }
    tid = await spm.call("Image.move", move)
    await failed_with(spm, tid, 212, f"Volume already exists: ('{p['volumeID']}',)")
    info = await spm.call("Volume.getInfo", dc.vol_params(there))
    assert (info["image"], info["legality"]) == (there["imageID"], "LEGAL")
    assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"
    tid = await spm.call("Image.move", {**move, "operation": "TELEPORT"})
    await failed_with(spm, tid, 253, f"Error moving image: ('{p['imageID']}',)")
    missing = str(uuid.uuid4())
    tid = await spm.call("Image.move", {**move, "imageID": missing})
    await failed_with(
        spm, tid, 268, f"Image does not exist in domain: 'image={missing}, domain={dc.master}'"
    )


# -- D9: task results are what the job returns ---------------------------------------------------


@pytest.mark.sim(state_dir=True)
async def test_task_results_are_the_job_return_values(
    spm: StompRpcClient, control: Control, dc: DataCenter, sim: Simulator
) -> None:
    p = await make_volume(spm, dc)
    tasks = await spm.call("Host.getAllTasks")
    (create,) = [t for t in tasks.values() if t["verb"] == "createVolume"]
    assert create["result"] == {"uuid": p["volumeID"]}
    assert sim.settings.cluster.state_dir is not None
    result_file = (
        sim.settings.cluster.state_dir
        / "pools"
        / dc.pool
        / "tasks"
        / create["id"]
        / f"{create['id']}.result"
    )
    assert f"result = {{'uuid': '{p['volumeID']}'}}" in result_file.read_text()
    dst_img, dst_vol = str(uuid.uuid4()), str(uuid.uuid4())
    copy = await spm.call(
        "Volume.copy",
        {
            **dc.vol_params(p),
            "dstSdUUID": dc.other_domain,
            "dstImgUUID": dst_img,
            "dstVolUUID": dst_vol,
            "desc": "",
            "volType": 6,
            "volFormat": 4,
            "preallocate": 2,
            "postZero": False,
            "force": False,
        },
    )
    move = await spm.call(
        "Image.move",
        {
            "imageID": p["imageID"],
            "storagepoolID": dc.pool,
            "storagedomainID": dc.master,
            "dstSdUUID": dc.other_domain,
            "operation": "COPY",
            "postZero": False,
            "force": False,
        },
    )
    for tid in (copy, move):
        assert (await wait_task(spm, tid))["taskResult"] == "success"
    delete = await spm.call(
        "Image.delete",
        {
            "imageID": dst_img,
            "storagepoolID": dc.pool,
            "storagedomainID": dc.other_domain,
            "postZero": False,
            "force": False,
        },
    )
    assert (await wait_task(spm, delete))["taskResult"] == "success"
    tasks = await spm.call("Host.getAllTasks")
    assert tasks[copy]["result"] == {"uuid": dst_vol}
    assert (tasks[move]["result"], tasks[delete]["result"]) == ("", "")
    jobs = {t["id"]: t["jobs"] for t in await control.get("/hosts/host1/tasks")}
    assert jobs[copy] == [f"copyImage_{dst_img}"]
    assert jobs[move] == [f"moveImage_{p['imageID']}"]
    assert jobs[delete] == [f"purgeImage_{dst_img}"]


# -- D11: Image.delete with postZero renames nothing synchronously -----------------------------


@pytest.mark.sim(workers=1)
async def test_post_zero_delete_marks_in_its_job_plain_delete_at_once(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    zeroed, purged = await make_volume(spm, dc), await make_volume(spm, dc)
    await control.post("/hosts/host1/hold")
    blocker = await spm.call("Volume.create", dc.create_params())  # takes the only worker

    async def held() -> bool:
        return blocker in (await control.get("/hosts/host1/held"))["held"]

    await wait_for_async(held)
    params = {"storagepoolID": dc.pool, "storagedomainID": dc.master, "force": False}
    z = await spm.call("Image.delete", {**params, "imageID": zeroed["imageID"], "postZero": True})
    q = await spm.call("Image.delete", {**params, "imageID": purged["imageID"], "postZero": False})
    volumes = await control.volumes(dc.pool)
    assert volumes[zeroed["volumeID"]]["removing"] is False  # zeroImage marks in the job
    assert volumes[purged["volumeID"]]["removing"] is True  # pool.deleteImage renamed it
    jobs = {t["id"]: t["jobs"] for t in await control.get("/hosts/host1/tasks")}
    assert jobs[z] == [f"zeroImage_{zeroed['imageID']}"]
    assert jobs[q] == [f"purgeImage_{purged['imageID']}"]
    await control.post("/hosts/host1/release")
    for tid in (z, q):
        assert (await wait_task(spm, tid))["taskResult"] == "success"
    volumes = await control.volumes(dc.pool)
    assert zeroed["volumeID"] not in volumes and purged["volumeID"] not in volumes


# -- D6: spmStart holds the pool lock; Contend while it runs; lver + 1 -------------------------


@pytest.mark.sim(spm_start_seconds=200.0)  # 1 s of real time: long enough to look at it
async def test_spm_start_contend_and_second_start_refused(rpc: RpcFactory, dc: DataCenter) -> None:
    h1, h2 = await rpc("host1"), await rpc("host2")
    pool = {"storagepoolID": dc.pool}
    lver = (await h1.call("StoragePool.getSpmStatus", pool))["spmLver"]
    assert await h1.call("StoragePool.spmStop", pool) is True
    start = {"storagepoolID": dc.pool, "prevID": -1, "prevLver": str(lver)}
    start |= {"enableScsiFencing": "false"}
    tid = await h2.call("StoragePool.spmStart", start)

    async def contending() -> bool:
        status = await h2.call("StoragePool.getSpmStatus", pool)
        return bool(status["spmStatus"] == "Contend")

    await wait_for_async(contending)
    e = await call_error(h2, "StoragePool.spmStart", start)
    assert (e.vdsm_code, e.message) == (
        656,
        f"Operation not allowed while SPM is active: ('{dc.pool}',)",
    )
    assert (await h1.call("StoragePool.getSpmStatus", pool))["spmStatus"] == "Free"
    assert (await wait_task(h2, tid))["taskResult"] == "success"
    assert await h2.call("StoragePool.getSpmStatus", pool) == {
        "spmStatus": "SPM",
        "spmLver": lver + 1,
        "spmId": 2,
    }
    assert [t["verb"] for t in (await h2.call("Host.getAllTasks")).values()] == ["spmStart"]


async def test_unknown_pool_is_309_without_uuid_check(rpc: RpcFactory) -> None:
    h1 = await rpc("host1")
    for verb in ("StoragePool.getSpmStatus", "StoragePool.getInfo", "StoragePool.spmStop"):
        e = await call_error(h1, verb, {"storagepoolID": "nope"})
        assert (e.vdsm_code, e.message) == (309, "Unknown pool id, pool not connected: ('nope',)")


# -- D7: SDM jobs run inside `sdm` tasks and act on storage -------------------------------------


def div(p: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "endpoint_type": "div",
        "sd_id": p["storagedomainID"],
        "img_id": p["imageID"],
        "vol_id": p["volumeID"],
        **kw,
    }


async def job_ended(client: StompRpcClient, job_id: str) -> dict[str, Any]:
    info: dict[str, Any] = {}

    async def ended() -> bool:
        nonlocal info
        info = (await client.call("Host.getJobs", {"job_ids": [job_id]}))[job_id]
        return info["status"] in ("done", "failed", "aborted")

    await wait_for_async(ended)
    return info


async def test_copy_data_runs_in_an_sdm_task_and_bumps_destination_generation(
    spm: StompRpcClient, dc: DataCenter
) -> None:
    src, dst = await make_volume(spm, dc), await make_volume(spm, dc, sd=dc.other_domain)
    job = str(uuid.uuid4())
    params = {"job_id": job, "source": div(src), "destination": div(dst, generation=0)}
    assert await spm.call("SDM.copy_data", params) is True
    assert (await job_ended(spm, job))["status"] == "done"
    info = await spm.call("Volume.getInfo", dc.vol_params(dst))
    assert (info["generation"], info["legality"]) == (1, "LEGAL")
    sdm = [t for t in (await spm.call("Host.getAllTasks")).values() if t["tag"] == "sdm"]
    assert [(t["verb"], t["state"], t["message"]) for t in sdm] == [
        ("sdm_copy_data", "finished", "1 jobs completed successfully")
    ]
    assert sdm[0]["id"] not in await spm.call("Host.getAllTasksStatuses")  # tag spm only
    # The generation is checked: the old one is a mismatch now (911).
    again = str(uuid.uuid4())
    await spm.call("SDM.copy_data", {**params, "job_id": again})
    info = await job_ended(spm, again)
    assert (info["status"], info["error"]) == (
        "failed",
        {
            "code": 911,
            "message": "The provided generation does not match the actual generation: "
            "'requested=0, actual=1'",
        },
    )


async def test_sdm_jobs_on_missing_volumes_fail_with_the_error(
    spm: StompRpcClient, dc: DataCenter
) -> None:
    src = await make_volume(spm, dc)
    missing = dc.create_params(sd=dc.other_domain)
    cases = [
        ("SDM.copy_data", {"source": div(src), "destination": div(missing)}, 201, missing),
        ("SDM.copy_data", {"source": div(missing), "destination": div(src)}, 201, missing),
        ("SDM.sparsify_volume", {"vol_info": div(missing)}, 201, missing),
    ]
    for verb, params, code, vol in cases:
        job = str(uuid.uuid4())
        assert await spm.call(verb, {"job_id": job, **params}) is True
        info = await job_ended(spm, job)
        assert (info["status"], info["error"]) == (
            "failed",
            {"code": code, "message": f"Volume does not exist: ('{vol['volumeID']}',)"},
        )
    job, sd = str(uuid.uuid4()), str(uuid.uuid4())
    bad_sd = {**div(src), "sd_id": sd}
    await spm.call("SDM.copy_data", {"job_id": job, "source": div(src), "destination": bad_sd})
    assert (await job_ended(spm, job))["error"] == {
        "code": 358,
        "message": f"Storage domain does not exist: ('{sd}',)",
    }


@pytest.mark.sim(workers=1)
async def test_sdm_job_waits_for_a_worker(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    src, dst = await make_volume(spm, dc), await make_volume(spm, dc)
    await control.post("/hosts/host1/hold")
    blocker = await spm.call("Volume.create", dc.create_params())

    async def held() -> bool:
        return blocker in (await control.get("/hosts/host1/held"))["held"]

    await wait_for_async(held)
    job = str(uuid.uuid4())
    await spm.call("SDM.copy_data", {"job_id": job, "source": div(src), "destination": div(dst)})
    assert (await spm.call("Host.getJobs", {"job_ids": [job]}))[job]["status"] == "pending"
    sdm = [t for t in (await spm.call("Host.getAllTasks")).values() if t["tag"] == "sdm"]
    assert [t["state"] for t in sdm] == ["queued"]
    await control.post("/hosts/host1/release")
    assert (await job_ended(spm, job))["status"] == "done"


# -- capabilities and stats carry the fields the engine reads ------------------------------------


async def test_capabilities_and_stats_shapes(spm: StompRpcClient) -> None:
    caps = await spm.call("Host.getCapabilities")
    for key in ("uuid", "cpuFlags", "emulatedMachines", "packages2", "numaNodes", "nics"):
        assert caps[key], key
    assert caps["packages2"]["vdsm"]["version"] == caps["vdsmVersion"]
    assert set(caps) >= {"networks", "bridges", "bondings", "vlans", "additionalFeatures"}
    stats = await spm.call("Host.getStats")
    assert set(stats) >= {"swapTotal", "swapFree", "ksmState", "network", "dateTime"}
    assert stats["cpuStatistics"]["0"]["nodeIndex"] == 0

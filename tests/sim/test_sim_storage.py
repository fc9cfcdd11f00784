"""Storage verbs of the whole simulator over STOMP: real effects, rollbacks, validation.

Every effect is read back through VDSM verbs (Volume.getInfo, StorageDomain.getVolumes,
Image.getVolumes) and cross-checked with the control API's volume table.
"""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from daemon.vdsm.client import StompRpcClient
from daemon.vdsm.errors import VdsmCallError
from tests.conftest import BLANK, Control, DataCenter, RpcFactory, wait_for_async, wait_task


async def call_error(client: StompRpcClient, method: str, params: Any = None) -> VdsmCallError:
    with pytest.raises(VdsmCallError) as info:
        await client.call(method, params)
    return info.value


@pytest.fixture
async def spm(rpc: RpcFactory) -> StompRpcClient:
    return await rpc("host1")


async def make_volume(spm: StompRpcClient, dc: DataCenter, **kw: Any) -> dict[str, Any]:
    p = dc.create_params(**kw)
    tid = await spm.call("Volume.create", p)
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    await spm.call("Task.clear", {"taskID": tid})
    return p


async def domain_volumes(spm: StompRpcClient, dc: DataCenter, sd: str) -> list[str]:
    result: list[str] = await spm.call(
        "StorageDomain.getVolumes", {"storagedomainID": sd, "storagepoolID": dc.pool}
    )
    return result


async def held(control: Control, host: str, task_id: str) -> None:
    async def check() -> bool:
        return task_id in (await control.get(f"/hosts/{host}/held"))["held"]

    await wait_for_async(check)


def copy_params(dc: DataCenter, src: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {
        "volumeID": src["volumeID"],
        "storagepoolID": dc.pool,
        "storagedomainID": src["storagedomainID"],
        "imageID": src["imageID"],
        "dstSdUUID": dc.other_domain,
        "dstImgUUID": str(uuid.uuid4()),
        "dstVolUUID": str(uuid.uuid4()),
        "desc": "copy",
        "volType": 6,
        "volFormat": 5,
        "preallocate": 2,
        "postZero": False,
        "force": False,
        **kw,
    }


async def test_copy_creates_destination_and_revert_removes_it(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    src = await make_volume(spm, dc)
    cp = copy_params(dc, src)
    dst = {
        "volumeID": cp["dstVolUUID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.other_domain,
        "imageID": cp["dstImgUUID"],
    }
    await control.post("/hosts/host1/hold")
    tid = await spm.call("Volume.copy", cp)
    await held(control, "host1", tid)
    assert await spm.call("Task.getInfo", {"taskID": tid}) == {"id": tid, "verb": "copyImage"}
    info = await spm.call("Volume.getInfo", dst)
    assert (info["legality"], info["format"], info["capacity"]) == ("ILLEGAL", "RAW", src["size"])
    await control.post("/hosts/host1/release")
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert (await spm.call("Volume.getInfo", dst))["legality"] == "LEGAL"
    assert await domain_volumes(spm, dc, dc.other_domain) == [cp["dstVolUUID"]]
    assert (await spm.call("Volume.getInfo", dc.vol_params(src)))["legality"] == "LEGAL"

    assert await spm.call("Task.revert", {"taskID": tid}) is True
    assert (await call_error(spm, "Volume.getInfo", dst)).vdsm_code == 201
    assert await domain_volumes(spm, dc, dc.other_domain) == []
    assert (await spm.call("Volume.getInfo", dc.vol_params(src)))["legality"] == "LEGAL"


async def test_stopped_copy_leaves_no_destination(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    src = await make_volume(spm, dc)
    cp = copy_params(dc, src)
    await control.post("/hosts/host1/hold")
    tid = await spm.call("Volume.copy", cp)
    await held(control, "host1", tid)
    await spm.call("Task.stop", {"taskID": tid})
    await control.post("/hosts/host1/release")
    status = await wait_task(spm, tid)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 411)
    assert cp["dstVolUUID"] not in await control.volumes(dc.pool)


@pytest.mark.parametrize("verb", ["Volume.delete", "Image.delete"])
async def test_delete_removes_and_hides_at_once(
    spm: StompRpcClient, control: Control, dc: DataCenter, verb: str
) -> None:
    p = await make_volume(spm, dc)
    keep = await make_volume(spm, dc)
    params: dict[str, Any] = {
        "imageID": p["imageID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "postZero": False,
        "force": False,
    }
    if verb == "Volume.delete":
        params["volumeID"] = p["volumeID"]
    await control.post("/hosts/host1/hold")
    tid = await spm.call(verb, params)
    await held(control, "host1", tid)
    expected = "deleteVolume" if verb == "Volume.delete" else "deleteImage"
    assert (await spm.call("Task.getInfo", {"taskID": tid}))["verb"] == expected
    # Marked for removal before the job runs: no longer listed, still on storage.
    assert await domain_volumes(spm, dc, dc.master) == [keep["volumeID"]]
    assert (await control.volumes(dc.pool))[p["volumeID"]]["removing"] is True
    await control.post("/hosts/host1/release")
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201
    # getVolumesList lists nothing for an image it does not know (no 268).
    image = {"imageID": p["imageID"], "storagepoolID": dc.pool, "storagedomainID": dc.master}
    assert await spm.call("Image.getVolumes", image) == []
    assert set(await control.volumes(dc.pool)) == {keep["volumeID"]}
    before = set(await spm.call("Host.getAllTasks"))
    if verb == "Image.delete":
        # A second delete of the same image is a synchronous 268 with its ids, no task.
        e = await call_error(spm, verb, params)
        assert (e.vdsm_code, e.message) == (
            268,
            f"Image does not exist in domain: 'image={p['imageID']}, domain={dc.master}'",
        )
        assert set(await spm.call("Host.getAllTasks")) == before
    else:
        # deleteVolume looks the volume up in its job: a task that fails with 201.
        tid = await spm.call(verb, params)
        status = await wait_task(spm, tid)
        assert (status["taskResult"], status["code"], status["message"]) == (
            "cleanSuccess",
            201,
            f"value=Volume does not exist: ('{p['volumeID']}',) abortedcode=201",
        )


@pytest.mark.parametrize("operation", ["COPY", "MOVE", 1, 2])
async def test_image_move(
    spm: StompRpcClient, control: Control, dc: DataCenter, operation: Any
) -> None:
    p = await make_volume(spm, dc)
    params = {
        "imageID": p["imageID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "dstSdUUID": dc.other_domain,
        "operation": operation,
        "postZero": False,
        "force": False,
    }
    moved = {**dc.vol_params(p), "storagedomainID": dc.other_domain}
    tid = await spm.call("Image.move", params)
    assert (await spm.call("Task.getInfo", {"taskID": tid}))["verb"] == "moveImage"
    assert (await wait_task(spm, tid))["taskResult"] == "success"
    assert (await spm.call("Volume.getInfo", moved))["legality"] == "LEGAL"
    is_move = operation in ("MOVE", 2)
    if is_move:
        assert (await call_error(spm, "Volume.getInfo", dc.vol_params(p))).vdsm_code == 201
        assert await domain_volumes(spm, dc, dc.master) == []
    else:
        assert (await spm.call("Volume.getInfo", dc.vol_params(p)))["legality"] == "LEGAL"
    # image.move clears the task's recoveries once the copy is done: a revert changes nothing.
    assert await spm.call("Task.revert", {"taskID": tid}) is True
    status = await spm.call("Task.getStatus", {"taskID": tid})
    assert (status["taskState"], status["taskResult"]) == ("finished", "cleanSuccess")
    assert (await spm.call("Volume.getInfo", moved))["legality"] == "LEGAL"
    assert await domain_volumes(spm, dc, dc.master) == ([] if is_move else [p["volumeID"]])


async def test_failed_move_keeps_source(
    spm: StompRpcClient, control: Control, dc: DataCenter
) -> None:
    p = await make_volume(spm, dc)
    await control.faults("host1", task_failure_rate=1.0, task_failure_code=100)
    tid = await spm.call(
        "Image.move",
        {
            "imageID": p["imageID"],
            "storagepoolID": dc.pool,
            "storagedomainID": dc.master,
            "dstSdUUID": dc.other_domain,
            "operation": "MOVE",
            "postZero": False,
            "force": False,
        },
    )
    status = await wait_task(spm, tid)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 100)
    assert status["message"] == "value=Injected job failure abortedcode=100"
    assert await domain_volumes(spm, dc, dc.master) == [p["volumeID"]]
    assert await domain_volumes(spm, dc, dc.other_domain) == []


# -- validation: synchronous errors, no task ---------------------------------------------------


async def assert_no_task(spm: StompRpcClient, method: str, params: Any) -> VdsmCallError:
    before = await spm.call("Host.getAllTasks")
    e = await call_error(spm, method, params)
    assert await spm.call("Host.getAllTasks") == before
    return e


async def test_create_validation_errors(spm: StompRpcClient, dc: DataCenter) -> None:
    """HSM.createVolume's order and texts: pool, domain, ids and sizes, format, SPM."""
    e = await assert_no_task(spm, "Volume.create", dc.create_params(vol="not-a-uuid"))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'volUUID=not-a-uuid'")
    upper = str(uuid.uuid4()).upper()  # misc.UUID_REGEX takes lower case only
    e = await assert_no_task(spm, "Volume.create", dc.create_params(img=upper))
    assert (e.vdsm_code, e.message) == (1000, f"Invalid parameter: 'imgUUID={upper}'")
    for size in ("abc", "-1", 1073741824):  # validateSize: a string of an integer >= 0
        e = await assert_no_task(spm, "Volume.create", dc.create_params(size=size))
        assert (e.vdsm_code, e.message) == (1000, f"Invalid parameter: 'size={size}'")
    e = await assert_no_task(spm, "Volume.create", dc.create_params(initialSize=5))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'initialSize=5'")
    sd = str(uuid.uuid4())
    e = await assert_no_task(spm, "Volume.create", dc.create_params(sd=sd, vol="bad"))
    assert (e.vdsm_code, e.message) == (358, f"Storage domain does not exist: ('{sd}',)")
    for pool in (str(uuid.uuid4()), "not-a-uuid"):  # getPool first, no UUID check
        params = {**dc.create_params(sd=sd), "storagepoolID": pool}
        e = await assert_no_task(spm, "Volume.create", params)
        assert (e.vdsm_code, e.message) == (
            309,
            f"Unknown pool id, pool not connected: ('{pool}',)",
        )
    e = await assert_no_task(spm, "Volume.create", dc.create_params(volFormat=9))
    assert (e.vdsm_code, e.message) == (202, "Incorrect Volume format: (9,)")
    e = await assert_no_task(spm, "Volume.create", dc.create_params(preallocate=7))
    assert (e.vdsm_code, e.message) == (231, "Incorrect Volume Preallocate Type: (7,)")
    e = await assert_no_task(spm, "Volume.create", dc.create_params(diskType="XXXX"))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'DiskType=XXXX'")


async def test_validation_comes_before_the_spm_check(rpc: RpcFactory, dc: DataCenter) -> None:
    host2 = await rpc("host2")
    e = await assert_no_task(host2, "Volume.create", dc.create_params(img="x"))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'imgUUID=x'")
    e = await assert_no_task(host2, "Volume.create", dc.create_params(volFormat=9))
    assert e.vdsm_code == 202
    e = await assert_no_task(host2, "Volume.create", dc.create_params())
    assert (e.vdsm_code, e.message) == (654, f"Not SPM: ('{dc.pool}',)")


async def test_copy_move_delete_validation(
    spm: StompRpcClient, rpc: RpcFactory, dc: DataCenter
) -> None:
    src = await make_volume(spm, dc)
    missing = str(uuid.uuid4())
    host2 = await rpc("host2")
    # Volume.copy: same image on the same domain, unknown domains, the source image (sync).
    e = await assert_no_task(
        spm, "Volume.copy", copy_params(dc, src, dstSdUUID=dc.master, dstImgUUID=src["imageID"])
    )
    assert (e.vdsm_code, e.message) == (1000, f"Invalid parameter: 'dstImgUUID={src['imageID']}'")
    e = await assert_no_task(spm, "Volume.copy", copy_params(dc, src, dstSdUUID=missing))
    assert e.vdsm_code == 358
    e = await assert_no_task(spm, "Volume.copy", copy_params(dc, src, imageID=missing))
    assert (e.vdsm_code, e.message) == (
        268,
        f"Image does not exist in domain: 'image={missing}, domain={dc.master}'",
    )
    # validateVolumeChain is a secured pool method: SecureError, answered "Not SPM" bare.
    e = await assert_no_task(host2, "Volume.copy", copy_params(dc, src))
    assert (e.vdsm_code, e.message) == (654, "Not SPM")
    # Volume.delete: pool, then the image id, then SPM; nothing else before the job.
    delete = {**dc.vol_params(src), "postZero": False, "force": False}
    e = await assert_no_task(spm, "Volume.delete", {**delete, "imageID": "bad"})
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'imgUUID=bad'")
    e = await assert_no_task(spm, "Volume.delete", {**delete, "storagepoolID": missing})
    assert e.vdsm_code == 309
    e = await assert_no_task(host2, "Volume.delete", delete)
    assert (e.vdsm_code, e.message) == (654, f"Not SPM: ('{dc.pool}',)")
    tid = await spm.call("Volume.delete", {**delete, "storagedomainID": missing})
    status = await wait_task(spm, tid)
    assert (status["taskResult"], status["code"]) == ("cleanSuccess", 358)
    # Image.delete: the image is looked up synchronously, with both ids in the error.
    image = {"storagepoolID": dc.pool, "storagedomainID": dc.master, "force": False}
    e = await assert_no_task(spm, "Image.delete", {**image, "imageID": missing, "postZero": False})
    assert (e.vdsm_code, e.message) == (
        268,
        f"Image does not exist in domain: 'image={missing}, domain={dc.master}'",
    )
    img = {**image, "imageID": src["imageID"]}
    e = await assert_no_task(host2, "Image.delete", {**img, "postZero": False})
    assert (e.vdsm_code, e.message) == (654, "Not SPM")  # pool.deleteImage is secured
    e = await assert_no_task(host2, "Image.delete", {**img, "postZero": True})
    assert (e.vdsm_code, e.message) == (654, f"Not SPM: ('{dc.pool}',)")  # _spmSchedule
    # Image.move: the same domain twice is 1000 "srcDom" with HSM's argument string.
    move = {
        "imageID": src["imageID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "dstSdUUID": dc.master,
        "operation": "MOVE",
        "postZero": False,
        "force": False,
    }
    e = await assert_no_task(spm, "Image.move", move)
    assert e.vdsm_code == 1000
    assert e.message.startswith("Invalid parameter: 'srcDom=must be different from dstDom: ")
    e = await assert_no_task(spm, "Image.move", {**move, "dstSdUUID": missing})
    assert e.vdsm_code == 358
    assert src["volumeID"] in await domain_volumes(spm, dc, dc.master)


@pytest.mark.parametrize(
    ("method", "params", "fragment"),
    [
        ("Volume.create", {"size": True}, "size"),
        ("Task.getStatus", {"taskID": 5}, "taskID"),
        ("Task.getStatus", {}, "missing parameter taskID"),
        ("Task.getStatus", {"taskID": "x", "extra": 1}, "unexpected parameter"),
        ("Host.getJobs", {"job_ids": "notalist"}, "job_ids"),
    ],
)
async def test_wrong_parameter_types_are_32602(
    spm: StompRpcClient, dc: DataCenter, method: str, params: dict[str, Any], fragment: str
) -> None:
    if method == "Volume.create":
        params = dc.create_params(**params)
    e = await assert_no_task(spm, method, params)
    assert e.vdsm_code == -32602
    assert fragment in e.message


async def test_unknown_method_is_32601(spm: StompRpcClient) -> None:
    e = await call_error(spm, "Volume.teleport", {})
    assert e.vdsm_code == -32601
    assert (
        e.message == "The method does not exist or is not available: {'method': 'Volume.teleport'}"
    )


async def test_positional_params_bind_as_the_schema(spm: StompRpcClient, dc: DataCenter) -> None:
    p = await make_volume(spm, dc)
    info = await spm.call("Volume.getInfo", [p["volumeID"], dc.pool, dc.master, p["imageID"]])
    assert info["uuid"] == p["volumeID"]
    assert BLANK == info["parent"]

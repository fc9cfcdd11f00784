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
    e = await call_error(
        spm,
        "Image.getVolumes",
        {"imageID": p["imageID"], "storagepoolID": dc.pool, "storagedomainID": dc.master},
    )
    assert (e.vdsm_code, e.message) == (
        268,
        f"Image does not exist in domain: 'image={p['imageID']}, domain={dc.master}'",
    )
    assert set(await control.volumes(dc.pool)) == {keep["volumeID"]}
    # A second delete of the same image is a synchronous error, no task.
    before = set(await spm.call("Host.getAllTasks"))
    assert (await call_error(spm, verb, params)).vdsm_code in (201, 268)
    assert set(await spm.call("Host.getAllTasks")) == before


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
    # Revert undoes it: the copy goes, a moved source comes back.
    assert await spm.call("Task.revert", {"taskID": tid}) is True
    assert (await call_error(spm, "Volume.getInfo", moved)).vdsm_code == 201
    info = await spm.call("Volume.getInfo", dc.vol_params(p))
    assert (info["legality"], info["domain"]) == ("LEGAL", dc.master)
    assert await domain_volumes(spm, dc, dc.master) == [p["volumeID"]]
    assert await domain_volumes(spm, dc, dc.other_domain) == []


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
    e = await assert_no_task(spm, "Volume.create", dc.create_params(vol="not-a-uuid"))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'volumeID=not-a-uuid'")
    e = await assert_no_task(spm, "Volume.create", dc.create_params(img="x"))
    assert e.vdsm_code == 1000
    e = await assert_no_task(spm, "Volume.create", dc.create_params(size="abc"))
    assert (e.vdsm_code, e.message) == (1000, "Invalid parameter: 'size=abc'")
    sd = str(uuid.uuid4())
    e = await assert_no_task(spm, "Volume.create", dc.create_params(sd=sd))
    assert (e.vdsm_code, e.message) == (358, f"Storage domain does not exist: ('{sd}',)")
    pool = str(uuid.uuid4())
    e = await assert_no_task(spm, "Volume.create", {**dc.create_params(), "storagepoolID": pool})
    assert (e.vdsm_code, e.message) == (309, f"Unknown pool id, pool not connected: ('{pool}',)")
    e = await assert_no_task(spm, "Volume.create", dc.create_params(volFormat=9))
    assert e.vdsm_code == 1000
    existing = await make_volume(spm, dc)
    e = await assert_no_task(spm, "Volume.create", dc.create_params(vol=existing["volumeID"]))
    assert (e.vdsm_code, e.message) == (
        212,
        f"Volume already exists: ('{existing['volumeID']}',)",
    )


async def test_copy_move_delete_validation(spm: StompRpcClient, dc: DataCenter) -> None:
    src = await make_volume(spm, dc)
    missing = str(uuid.uuid4())
    e = await assert_no_task(spm, "Volume.copy", copy_params(dc, src, volumeID=missing))
    assert (e.vdsm_code, e.message) == (201, f"Volume does not exist: ('{missing}',)")
    e = await assert_no_task(spm, "Volume.copy", copy_params(dc, src, dstVolUUID="bad"))
    assert e.vdsm_code == 1000
    e = await assert_no_task(spm, "Volume.copy", copy_params(dc, src, dstSdUUID=missing))
    assert e.vdsm_code == 358
    e = await assert_no_task(
        spm,
        "Volume.delete",
        {**dc.vol_params(src), "volumeID": missing, "postZero": False, "force": False},
    )
    assert e.vdsm_code == 201
    e = await assert_no_task(
        spm,
        "Image.delete",
        {
            "imageID": missing,
            "storagepoolID": dc.pool,
            "storagedomainID": dc.master,
            "postZero": False,
            "force": False,
        },
    )
    assert e.vdsm_code == 268
    move = {
        "imageID": src["imageID"],
        "storagepoolID": dc.pool,
        "storagedomainID": dc.master,
        "dstSdUUID": dc.other_domain,
        "operation": "TELEPORT",
        "postZero": False,
        "force": False,
    }
    assert (await assert_no_task(spm, "Image.move", move)).vdsm_code == 1000


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

"""Typed VDSM verbs over any JSON-RPC client, with replies checked before anyone trusts them.

Parameter names and value forms are VDSM's (see spec/vdsm-task-api.md §2): sizes travel as
strings, formats and allocations as VDSM's enum names. A reply whose shape is not what VDSM sends
raises `BadReply` (a `VdsmCallError`), never a KeyError deep in the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from daemon.vdsm.errors import VdsmCallError

BLANK_UUID = "00000000-0000-0000-0000-000000000000"


class RpcClient(Protocol):
    label: str

    async def call(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any: ...

    async def call_each(
        self,
        calls: Sequence[tuple[str, dict[str, Any] | None]],
        *,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> list[Any]: ...

    def on_event(self, callback: Callable[[str, dict[str, Any]], None]) -> None: ...

    async def close(self) -> None: ...


class BadReply(VdsmCallError):
    """The host answered with something VDSM never sends."""

    code = -32603


@dataclass(frozen=True, slots=True)
class TaskStatusReport:
    task_id: str
    state: str  # taskState: unknown, init, running, finished, aborting, cleaning
    result: str  # taskResult: '', success, cleanSuccess, cleanFailure
    code: int
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {
            "taskID": self.task_id,
            "taskState": self.state,
            "taskResult": self.result,
            "code": self.code,
            "message": self.message,
        }


def _report(method: str, host: str, task_id: str, raw: Any) -> TaskStatusReport:
    if not isinstance(raw, dict):
        raise BadReply(
            -32603, f"task status of {task_id} is not an object: {raw!r:.200}", method, host
        )
    try:
        return TaskStatusReport(
            str(raw.get("taskID", task_id)),
            str(raw["taskState"]),
            str(raw.get("taskResult", "")),
            int(raw.get("code", 0) or 0),
            str(raw.get("message", "")),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise BadReply(
            -32603, f"malformed task status of {task_id}: {e}: {raw!r:.200}", method, host
        ) from None


def _expect(kind: type | tuple[type, ...], value: Any, method: str, host: str) -> Any:
    if not isinstance(value, kind):
        raise BadReply(-32603, f"unexpected reply {value!r:.200}", method, host)
    return value


def _dicts(value: Any, method: str, host: str, required: tuple[str, ...]) -> list[dict[str, Any]]:
    """A list of objects that each carry `required` keys; anything else is a BadReply."""
    items = _expect(list, value, method, host)
    for item in items:
        if not isinstance(item, dict) or any(k not in item for k in required):
            raise BadReply(-32603, f"unexpected list entry {item!r:.200}", method, host)
    return list(items)


class VdsmHost:
    """One host's verbs; `client` is a STOMP or HTTP JSON-RPC client."""

    def __init__(self, name: str, client: RpcClient, *, timeout: float | None = None) -> None:
        self.name = name
        self.client = client
        self.timeout = timeout
        # The previous getAllTasksStatuses, raw and checked: a poller asks several times a second
        # and most entries come back unchanged, so an equal raw entry reuses its checked report.
        self._last_reports: dict[str, tuple[Any, TaskStatusReport]] = {}

    async def _call(self, method: str, params: dict[str, Any] | None = None) -> Any:
        return await self.client.call(method, params, timeout=self.timeout)

    # -- host -----------------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._call("Host.ping2")

    async def capabilities(self) -> dict[str, Any]:
        return dict(
            _expect(
                dict, await self._call("Host.getCapabilities"), "Host.getCapabilities", self.name
            )
        )

    async def stats(self) -> dict[str, Any]:
        return dict(_expect(dict, await self._call("Host.getStats"), "Host.getStats", self.name))

    async def vm_stats(self) -> list[dict[str, Any]]:
        """Host.getAllVmStats: one dict per VM (each with at least `vmId` and `status`)."""
        method = "Host.getAllVmStats"
        return _dicts(await self._call(method), method, self.name, ("vmId",))

    async def vm_list(self) -> list[dict[str, Any]]:
        method = "Host.getVMList"
        return _dicts(await self._call(method, {"fullStatus": False}), method, self.name, ("vmId",))

    # -- tasks ----------------------------------------------------------------------------------

    async def task_statuses(self) -> dict[str, TaskStatusReport]:
        method = "Host.getAllTasksStatuses"
        raw = _expect(dict, await self._call(method), method, self.name)
        last = self._last_reports
        checked: dict[str, tuple[Any, TaskStatusReport]] = {}
        for tid, st in raw.items():
            key = str(tid)
            seen = last.get(key)
            if seen is not None and seen[0] == st:
                checked[key] = seen
            else:
                checked[key] = (st, _report(method, self.name, key, st))
        self._last_reports = checked
        return {key: report for key, (_, report) in checked.items()}

    async def task_status(self, task_id: str) -> TaskStatusReport:
        raw = await self._call("Task.getStatus", {"taskID": task_id})
        return _report("Task.getStatus", self.name, task_id, raw)

    async def task_info(self) -> dict[str, dict[str, Any]]:
        method = "Host.getAllTasksInfo"
        return dict(_expect(dict, await self._call(method), method, self.name))

    async def stop_task(self, task_id: str) -> None:
        await self._call("Task.stop", {"taskID": task_id})

    async def revert_task(self, task_id: str) -> None:
        await self._call("Task.revert", {"taskID": task_id})

    async def clear_task(self, task_id: str) -> None:
        await self._call("Task.clear", {"taskID": task_id})

    async def each_task(self, method: str, task_ids: Sequence[str]) -> list[VdsmCallError | None]:
        """`method` (Task.stop, Task.revert or Task.clear) for several tasks at once: None where
        VDSM accepted it, else the error it answered (or the call's timeout or lost link)."""
        outcomes = await self.client.call_each(
            [(method, {"taskID": task_id}) for task_id in task_ids], timeout=self.timeout
        )
        return [o if isinstance(o, VdsmCallError) else None for o in outcomes]

    # -- SPM ------------------------------------------------------------------------------------

    async def spm_status(self, pool: str) -> tuple[str, int, int]:
        method = "StoragePool.getSpmStatus"
        raw = _expect(dict, await self._call(method, {"storagepoolID": pool}), method, self.name)
        try:
            return str(raw["spmStatus"]), int(raw["spmId"]), int(raw["spmLver"])
        except (KeyError, TypeError, ValueError) as e:
            raise BadReply(-32603, f"malformed SPM status: {e}", method, self.name) from None

    async def spm_start(self, pool: str, prev_id: int, prev_lver: int) -> str:
        params = {
            "storagepoolID": pool,
            "prevID": prev_id,
            "prevLver": str(prev_lver),
            "enableScsiFencing": "false",
        }
        return self._task_id(
            "StoragePool.spmStart", await self._call("StoragePool.spmStart", params)
        )

    async def master_domain(self, pool: str) -> str:
        """The pool's master domain, from StoragePool.getInfo."""
        method = "StoragePool.getInfo"
        raw = _expect(dict, await self._call(method, {"storagepoolID": pool}), method, self.name)
        master = (
            raw.get("info", {}).get("master_uuid") if isinstance(raw.get("info"), dict) else None
        )
        if not isinstance(master, str):
            raise BadReply(
                -32603, f"pool info without master_uuid: {raw!r:.200}", method, self.name
            )
        return master

    def _task_id(self, method: str, value: Any) -> str:
        return str(_expect(str, value, method, self.name))

    # -- storage (task-creating verbs return VDSM's task id) ------------------------------------

    async def create_volume(
        self,
        pool: str,
        domain: str,
        image: str,
        volume: str,
        size: int,
        *,
        fmt: str = "COW",
        prealloc: str = "SPARSE",
        disk_type: str = "DATA",
        desc: str = "",
    ) -> str:
        params = {
            "volumeID": volume,
            "storagepoolID": pool,
            "storagedomainID": domain,
            "imageID": image,
            "size": str(size),
            "volFormat": fmt,
            "preallocate": prealloc,
            "diskType": disk_type,
            "desc": desc,
            "srcImgUUID": BLANK_UUID,
            "srcVolUUID": BLANK_UUID,
        }
        return self._task_id("Volume.create", await self._call("Volume.create", params))

    async def copy_volume(
        self,
        pool: str,
        domain: str,
        image: str,
        volume: str,
        dst_domain: str,
        dst_image: str,
        dst_volume: str,
        *,
        fmt: str = "COW",
        prealloc: str = "SPARSE",
        vol_type: str = "LEAF",
        desc: str = "",
    ) -> str:
        """Volume.copy (copyImage): the collapsed chain of `image` into a new image."""
        params = {
            "volumeID": volume,
            "storagepoolID": pool,
            "storagedomainID": domain,
            "imageID": image,
            "dstSdUUID": dst_domain,
            "dstImgUUID": dst_image,
            "dstVolUUID": dst_volume,
            "desc": desc,
            "volType": vol_type,
            "volFormat": fmt,
            "preallocate": prealloc,
            "postZero": False,
            "force": False,
        }
        return self._task_id("Volume.copy", await self._call("Volume.copy", params))

    async def delete_image(self, pool: str, domain: str, image: str) -> str:
        params = {
            "imageID": image,
            "storagepoolID": pool,
            "storagedomainID": domain,
            "postZero": False,
            "force": False,
        }
        return self._task_id("Image.delete", await self._call("Image.delete", params))

    async def move_image(
        self, pool: str, domain: str, image: str, dst_domain: str, *, operation: str = "COPY"
    ) -> str:
        params = {
            "imageID": image,
            "storagepoolID": pool,
            "storagedomainID": domain,
            "dstSdUUID": dst_domain,
            "operation": operation,
            "postZero": False,
            "force": False,
        }
        return self._task_id("Image.move", await self._call("Image.move", params))

    async def volume_info(self, pool: str, domain: str, image: str, volume: str) -> dict[str, Any]:
        method = "Volume.getInfo"
        params = {
            "volumeID": volume,
            "storagepoolID": pool,
            "storagedomainID": domain,
            "imageID": image,
        }
        raw = _expect(dict, await self._call(method, params), method, self.name)
        if not isinstance(raw.get("uuid"), str):
            raise BadReply(-32603, f"volume info without uuid: {raw!r:.200}", method, self.name)
        return dict(raw)

    async def domain_volumes(self, pool: str, domain: str, image: str = BLANK_UUID) -> list[str]:
        method = "StorageDomain.getVolumes"
        raw = await self._call(
            method, {"storagedomainID": domain, "storagepoolID": pool, "imageID": image}
        )
        return [str(v) for v in _expect(list, raw, method, self.name)]

    # -- VMs ------------------------------------------------------------------------------------

    async def create_vm(
        self, vm: str, name: str, memory_mb: int, drives: list[dict[str, Any]]
    ) -> None:
        params = {
            "vmId": vm,
            "vmName": name,
            "memSize": memory_mb,
            "drives": [
                {
                    "poolID": d["pool"],
                    "domainID": d["domain"],
                    "imageID": d["image"],
                    "volumeID": d["volume"],
                }
                for d in drives
            ],
        }
        await self._call("VM.create", {"vmID": vm, "vmParams": params})

    async def destroy_vm(self, vm: str) -> None:
        await self._call("VM.destroy", {"vmID": vm})

    async def migrate_vm(self, vm: str, dst: str) -> None:
        await self._call("VM.migrate", {"vmID": vm, "params": {"dst": dst, "method": "online"}})

    async def hibernate_vm(self, vm: str, handle: str) -> None:
        """VM.hibernate; `handle` is `<domain>,<pool>,<stateImage>,<stateVolume>,<metaImage>,
        <metaVolume>` (vdsm-api.yml HibernationVolumeHandle)."""
        await self._call("VM.hibernate", {"vmID": vm, "hibernationVolHandle": handle})

    async def vm_info(self, vm: str) -> dict[str, Any]:
        """VM.getStats of one VM (VDSM answers a one-element list)."""
        method = "VM.getStats"
        stats = _dicts(await self._call(method, {"vmID": vm}), method, self.name, ("status",))
        if len(stats) != 1:
            raise BadReply(-32603, f"expected one VM, got {len(stats)}", method, self.name)
        return stats[0]

    async def migrate_cancel(self, vm: str) -> None:
        await self._call("VM.migrateCancel", {"vmID": vm})

    async def migration_status(self, vm: str) -> dict[str, Any]:
        method = "VM.getMigrationStatus"
        return dict(_expect(dict, await self._call(method, {"vmID": vm}), method, self.name))

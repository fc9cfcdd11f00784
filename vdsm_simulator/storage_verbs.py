"""Storage and SPM verbs: the verbs that create VDSM storage tasks, with their real effects.

What each verb does synchronously (validation, VDSM's "prepare") and what its job does later
follows VDSM's HSM: validation errors come back at once and no task is created; volume creation
and copies push a rollback that removes what they made; deletions mark the image at once and
purge it in the job, with no rollback, as VDSM does (a deleted image cannot be brought back).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from vdsm_simulator.errors import (
    AcquireLockFailure,
    InvalidParameterException,
    IsSpm,
    SpmStatusError,
    StorageException,
    VolumeAlreadyExists,
)
from vdsm_simulator.storage import BLANK_UUID, Pool, Volume
from vdsm_simulator.tasks import JobContext, Recovery
from vdsm_simulator.verbs import Param, is_uuid

if TYPE_CHECKING:
    from vdsm_simulator.host import SimHost

FORMATS = {4: "COW", 5: "RAW", "COW": "COW", "RAW": "RAW"}
ALLOCATIONS = {1: "PREALLOCATED", 2: "SPARSE", "PREALLOCATED": "PREALLOCATED", "SPARSE": "SPARSE"}
MOVE_OPERATIONS = {1: "COPY", 2: "MOVE", "COPY": "COPY", "MOVE": "MOVE"}


class InjectedJobError(StorageException):
    """A job failure chosen by fault injection; a storage error, so its code is reported."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code  # type: ignore[misc]  # an instance code, chosen at run time
        self._text = text

    def __str__(self) -> str:
        return self._text


def _uuid(name: str, value: str) -> str:
    if not is_uuid(value):
        raise InvalidParameterException(name, value)
    return value


def _enum(name: str, table: dict[Any, str], value: Any) -> str:
    try:
        return table[value]
    except (KeyError, TypeError):
        raise InvalidParameterException(name, value) from None


def _size(name: str, value: str | int) -> int:
    try:
        size = int(value)
    except ValueError:
        raise InvalidParameterException(name, value) from None
    if size <= 0:
        raise InvalidParameterException(name, value)
    return size


class StorageVerbs:
    """The storage verbs of one host; storage itself is the cluster's."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.storage = host.cluster.storage

    # -- helpers ---------------------------------------------------------------------------

    def _spm_pool(self, pool_id: str) -> Pool:
        pool = self.storage.pool(_uuid("storagepoolID", pool_id))
        if pool.spm_host != self.host.name:
            raise SpmStatusError(pool.uuid)
        return pool

    async def _finish_job(self, ctx: JobContext, duration: float, *, abortable: bool) -> None:
        """Simulated work, then the test gate, then an injected failure if one is drawn."""
        await ctx.work(duration, abortable=abortable)
        await self.host.gate.pass_through(ctx.task_id)
        s = self.host.faults.settings
        if self.host.faults.chance(s.task_failure_rate):
            raise InjectedJobError(s.task_failure_code, s.task_failure_message)

    async def _schedule(self, verb: str, job: Callable[[JobContext], Awaitable[Any]]) -> str:
        return await self.host.tasks.schedule(
            verb, job, job_name=verb, store=self.host.cluster.task_store(self.host.name)
        )

    # -- SPM ------------------------------------------------------------------------------

    async def spm_start(
        self,
        storagepoolID: str,
        prevID: int,
        prevLver: Any,
        enableScsiFencing: Any,
        maxHostID: Any = None,
        domVersion: Any = None,
    ) -> str:
        pool = self.storage.pool(_uuid("storagepoolID", storagepoolID))
        if pool.spm_host == self.host.name:
            raise IsSpm(storagepoolID)
        cluster = self.host.cluster

        async def acquire(ctx: JobContext) -> Any:
            await ctx.work(self.host.cluster.config.spm_start_seconds)
            holder = pool.spm_host
            if holder is not None and holder != self.host.name and cluster.host_alive(holder):
                raise AcquireLockFailure(pool.uuid, 1, [], f"lease held by {holder}")
            if holder is not None and holder != self.host.name:
                await cluster.drop_spm(pool)  # the old SPM is dead: its lease is fenced
            self.storage.set_spm(pool, self.host.name, self.host.host_id)
            store = cluster.pool_task_store(pool)
            if store is not None:
                try:
                    await self.host.tasks.load_persisted(store)
                except BaseException:
                    # VDSM's startSpm stops the SPM again on any error (e.g. 405 for a
                    # dumped task this host still has in memory) and fails the task.
                    if pool.spm_host == self.host.name:
                        self.storage.set_spm(pool, None)
                    raise
            return None

        return await self.host.tasks.schedule(
            "spmStart", acquire, job_name="spmStart", tag="hsm", persist=False
        )

    async def spm_stop(self, storagepoolID: str) -> bool:
        pool = self.storage.pool(_uuid("storagepoolID", storagepoolID))
        if pool.spm_host == self.host.name:
            # VDSM's stopSpm only releases the role and the lease: tasks stay in memory
            # (TaskManager.unloadTasks is never called) and running jobs carry on.
            self.storage.set_spm(pool, None)
        return True

    async def get_spm_status(self, storagepoolID: str) -> dict[str, Any]:
        pool = self.storage.pool(_uuid("storagepoolID", storagepoolID))
        role = "SPM" if pool.spm_host == self.host.name else "Free"
        return {"spmStatus": role, "spmLver": pool.lver, "spmId": pool.spm_id}

    async def pool_info(self, storagepoolID: str) -> dict[str, Any]:
        pool = self.storage.pool(_uuid("storagepoolID", storagepoolID))
        info = {
            "name": pool.name,
            "type": "NFS",
            "master_uuid": pool.master_domain,
            "master_ver": pool.master_version,
            "lver": pool.lver,
            "spm_id": pool.spm_id,
            "version": "5",
            "isoprefix": "",
            "pool_status": "connected",
            "domains": ",".join(f"{sd}:Active" for sd in pool.domains),
        }
        dominfo = {
            sd: {
                "status": "Active",
                "alerts": [],
                "isoprefix": "",
                "version": 5,
                "diskfree": str(1 << 40),
                "disktotal": str(2 << 40),
            }
            for sd in pool.domains
        }
        return {"info": info, "dominfo": dominfo}

    # -- volumes ----------------------------------------------------------------------------

    async def volume_create(
        self,
        volumeID: str,
        storagepoolID: str,
        storagedomainID: str,
        imageID: str,
        size: Any,
        volFormat: Any,
        preallocate: Any,
        diskType: Any,
        desc: str,
        srcImgUUID: str,
        srcVolUUID: str,
        initialSize: Any = None,
        addBitmaps: bool = False,
        legal: bool = True,
        sequence: int = 0,
        bitmap: Any = None,
    ) -> str:
        pool = self._spm_pool(storagepoolID)
        domain = self.storage.domain(pool.uuid, _uuid("storagedomainID", storagedomainID))
        vol = Volume(
            uuid=_uuid("volumeID", volumeID),
            image=_uuid("imageID", imageID),
            domain=domain.uuid,
            pool=pool.uuid,
            capacity=_size("size", size),
            format=_enum("volFormat", FORMATS, volFormat),
            allocation=_enum("preallocate", ALLOCATIONS, preallocate),
            disktype=str(diskType or "DATA"),
            description=desc or "",
            parent=srcVolUUID if srcVolUUID and srcVolUUID != BLANK_UUID else BLANK_UUID,
        )
        if vol.uuid in domain.volumes:
            raise VolumeAlreadyExists(vol.uuid)
        duration = self.host.draw_duration(2.0 if vol.allocation == "PREALLOCATED" else 1.0)

        async def create(ctx: JobContext) -> Any:
            ctx.push_recovery(
                Recovery(
                    f"createVolume rollback: {vol.uuid}",
                    "remove_volume",
                    (vol.pool, vol.domain, vol.uuid),
                )
            )
            self.storage.add_volume(vol)
            await self._finish_job(ctx, duration, abortable=vol.allocation == "PREALLOCATED")
            if legal:
                self.storage.set_legality(vol, "LEGAL")
            return None

        return await self._schedule("createVolume", create)

    async def volume_copy(
        self,
        volumeID: str,
        storagepoolID: str,
        storagedomainID: str,
        imageID: str,
        dstSdUUID: str,
        dstImgUUID: str,
        dstVolUUID: str,
        desc: str,
        volType: Any,
        volFormat: Any,
        preallocate: Any,
        postZero: bool,
        force: bool,
        discard: bool = False,
    ) -> str:
        pool = self._spm_pool(storagepoolID)
        src = self.storage.volume(pool.uuid, storagedomainID, imageID, volumeID)
        dst_domain = self.storage.domain(pool.uuid, _uuid("dstSdUUID", dstSdUUID))
        dst = Volume(
            uuid=_uuid("dstVolUUID", dstVolUUID),
            image=_uuid("dstImgUUID", dstImgUUID),
            domain=dst_domain.uuid,
            pool=pool.uuid,
            capacity=src.capacity,
            format=_enum("volFormat", FORMATS, volFormat),
            allocation=_enum("preallocate", ALLOCATIONS, preallocate),
            disktype=src.disktype,
            description=desc or src.description,
        )
        if dst.uuid in dst_domain.volumes:
            raise VolumeAlreadyExists(dst.uuid)
        duration = self.host.draw_duration(3.0)

        async def copy(ctx: JobContext) -> Any:
            ctx.push_recovery(
                Recovery(
                    f"copyImage rollback: {dst.uuid}",
                    "remove_volume",
                    (dst.pool, dst.domain, dst.uuid),
                )
            )
            self.storage.add_volume(dst)
            await self._finish_job(ctx, duration, abortable=True)  # qemu-img convert
            self.storage.set_legality(dst, "LEGAL")
            return None

        return await self._schedule("copyImage", copy)

    async def volume_delete(
        self,
        volumeID: str,
        storagepoolID: str,
        storagedomainID: str,
        imageID: str,
        postZero: bool,
        force: bool,
        discard: bool = False,
    ) -> str:
        pool = self._spm_pool(storagepoolID)
        vol = self.storage.volume(pool.uuid, storagedomainID, imageID, volumeID)
        self.storage.mark_removing([vol], True)
        return await self._schedule("deleteVolume", self._purge_job([vol], postZero))

    async def volume_info(
        self, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str
    ) -> dict[str, Any]:
        vol = self.storage.volume(storagepoolID, storagedomainID, imageID, volumeID)
        return vol.info()

    # -- images --------------------------------------------------------------------------------

    def _purge_job(
        self, vols: list[Volume], post_zero: bool
    ) -> Callable[[JobContext], Awaitable[Any]]:
        duration = self.host.draw_duration(1.0 if post_zero else 0.25)

        async def purge(ctx: JobContext) -> Any:
            await self._finish_job(ctx, duration, abortable=post_zero)  # zeroing is abortable
            for vol in vols:
                self.storage.remove_volume(vol.pool, vol.domain, vol.uuid)
            return None

        return purge

    async def image_delete(
        self,
        imageID: str,
        storagepoolID: str,
        storagedomainID: str,
        postZero: bool,
        force: bool,
        discard: bool = False,
    ) -> str:
        pool = self._spm_pool(storagepoolID)
        vols = [
            v for v in self.storage.image(pool.uuid, storagedomainID, imageID) if not v.removing
        ]
        if not vols:
            self.storage.image(pool.uuid, storagedomainID, BLANK_UUID)  # raises 268
        self.storage.mark_removing(vols, True)  # VDSM renames the image before the job runs
        return await self._schedule("deleteImage", self._purge_job(vols, postZero))

    async def image_move(
        self,
        imageID: str,
        storagepoolID: str,
        storagedomainID: str,
        dstSdUUID: str,
        operation: Any,
        postZero: bool,
        force: bool,
        discard: bool = False,
    ) -> str:
        pool = self._spm_pool(storagepoolID)
        op = _enum("operation", MOVE_OPERATIONS, operation)
        src_vols = [
            v for v in self.storage.image(pool.uuid, storagedomainID, imageID) if not v.removing
        ]
        dst_domain = self.storage.domain(pool.uuid, _uuid("dstSdUUID", dstSdUUID))
        for v in src_vols:
            if v.uuid in dst_domain.volumes:
                raise VolumeAlreadyExists(v.uuid)
        duration = self.host.draw_duration(3.0)

        async def move(ctx: JobContext) -> Any:
            copies = []
            for v in src_vols:
                copy = Volume(**{**asdict(v), "domain": dst_domain.uuid, "legality": "ILLEGAL"})
                ctx.push_recovery(
                    Recovery(
                        f"moveImage rollback: {copy.uuid}",
                        "remove_volume",
                        (copy.pool, copy.domain, copy.uuid),
                    )
                )
                self.storage.add_volume(copy)
                copies.append(copy)
            await self._finish_job(ctx, duration, abortable=True)
            for copy in copies:
                self.storage.set_legality(copy, "LEGAL")
            if op == "MOVE":
                for v in src_vols:
                    ctx.push_recovery(
                        Recovery(
                            f"moveImage source restore: {v.uuid}",
                            "restore_volume",
                            (v.pool, v.domain, v.uuid),
                        )
                    )
                    self.storage.remove_volume(v.pool, v.domain, v.uuid, keep=True)
            return None

        return await self._schedule("moveImage", move)

    async def domain_volumes(
        self, storagedomainID: str, storagepoolID: str, imageID: str = BLANK_UUID
    ) -> list[str]:
        domain = self.storage.domain(storagepoolID, storagedomainID)
        return [
            v.uuid
            for v in domain.volumes.values()
            if not v.removing and (imageID in (BLANK_UUID, "", None) or v.image == imageID)
        ]

    async def image_volumes(
        self, imageID: str, storagepoolID: str, storagedomainID: str
    ) -> list[str]:
        return [
            v.uuid
            for v in self.storage.image(storagepoolID, storagedomainID, imageID)
            if not v.removing
        ]


def register_storage_verbs(host: SimHost) -> None:
    v = StorageVerbs(host)
    t = host.verbs
    pool = Param("storagepoolID", "str")
    sd = Param("storagedomainID", "str")
    img = Param("imageID", "str")
    vol = Param("volumeID", "str")
    zero, force, discard = (
        Param("postZero", "bool"),
        Param("force", "bool"),
        Param("discard", "bool", False),
    )
    t.add(
        "StoragePool.spmStart",
        v.spm_start,
        pool,
        Param("prevID", "int"),
        Param("prevLver", "intstr"),
        Param("enableScsiFencing", "any"),
        Param("maxHostID", "int", None),
        Param("domVersion", "intstr", None),
    )
    t.add("StoragePool.spmStop", v.spm_stop, pool)
    t.add("StoragePool.getSpmStatus", v.get_spm_status, pool)
    t.add("StoragePool.getInfo", v.pool_info, pool)
    t.add(
        "Volume.create",
        v.volume_create,
        vol,
        pool,
        sd,
        img,
        Param("size", "intstr"),
        Param("volFormat", "enum"),
        Param("preallocate", "enum"),
        Param("diskType", "any"),
        Param("desc", "str"),
        Param("srcImgUUID", "str"),
        Param("srcVolUUID", "str"),
        Param("initialSize", "intstr", None),
        Param("addBitmaps", "bool", False),
        Param("legal", "bool", True),
        Param("sequence", "int", 0),
        Param("bitmap", "str", None),
    )
    t.add(
        "Volume.copy",
        v.volume_copy,
        vol,
        pool,
        sd,
        img,
        Param("dstSdUUID", "str"),
        Param("dstImgUUID", "str"),
        Param("dstVolUUID", "str"),
        Param("desc", "str"),
        Param("volType", "enum"),
        Param("volFormat", "enum"),
        Param("preallocate", "enum"),
        zero,
        force,
        discard,
    )
    t.add("Volume.delete", v.volume_delete, vol, pool, sd, img, zero, force, discard)
    t.add("Volume.getInfo", v.volume_info, vol, pool, sd, img)
    t.add("Image.delete", v.image_delete, img, pool, sd, zero, force, discard)
    t.add(
        "Image.move",
        v.image_move,
        img,
        pool,
        sd,
        Param("dstSdUUID", "str"),
        Param("operation", "enum"),
        zero,
        force,
        discard,
    )
    t.add("Image.getVolumes", v.image_volumes, img, pool, sd)
    t.add(
        "StorageDomain.getVolumes", v.domain_volumes, sd, pool, Param("imageID", "str", BLANK_UUID)
    )

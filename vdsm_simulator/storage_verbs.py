"""Storage and SPM verbs: the verbs that create VDSM storage tasks, with their real effects.

Each verb checks what VDSM's HSM checks synchronously, in HSM's order (lib/vdsm/storage/hsm.py),
and leaves the rest to its job, as VDSM does: a missing volume of Volume.delete or Volume.copy,
an existing target of Volume.create, Volume.copy or Image.move are failures of the job (the task
ends cleanSuccess with the error's code), not synchronous errors. Validation errors come back at
once and create no task. Volume creation and copies push a rollback for what they made (never for
what was already there); a MOVE drops its rollbacks once the copy is done and then deletes the
source, as image.move does; deletions have no rollback.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from vdsm_simulator.errors import (
    AcquireLockFailure,
    GenerationMismatch,
    ImageDoesNotExistInSD,
    ImageIsNotLegalChain,
    IncorrectFormat,
    IncorrectType,
    InvalidParameterException,
    IsSpm,
    MoveImageError,
    NotSpmSecured,
    ResourceTimeout,
    SpmStatusError,
    StorageDomainDoesNotExist,
    StorageException,
    StoragePoolUnknown,
    VolumeAlreadyExists,
    VolumeDoesNotExist,
)
from vdsm_simulator.hostjobs import ProgressCallback
from vdsm_simulator.storage import BLANK_UUID, Domain, Pool, Volume
from vdsm_simulator.tasks import JobContext, Recovery
from vdsm_simulator.verbs import Param

if TYPE_CHECKING:
    from vdsm_simulator.host import SimHost

# VDSM's constants (lib/vdsm/storage/constants.py); the schema's names are accepted as well.
FORMATS = {4: "COW", 5: "RAW", "COW": "COW", "RAW": "RAW"}
ALLOCATIONS = {1: "PREALLOCATED", 2: "SPARSE", "PREALLOCATED": "PREALLOCATED", "SPARSE": "SPARSE"}
MOVE_OPERATIONS = {1: "COPY", 2: "MOVE", "COPY": "COPY", "MOVE": "MOVE"}
DISK_TYPES = frozenset(
    ["DATA", "ISOF", "MEMD", "MEMM", "OVFS", "HEVD", "HESD", "HEMD", "HECI", "SCRD", "2", "1"]
)
BLOCK_SIZE_4K = 4096
RESOURCE_TIMEOUT = 120.0  # simulated seconds a resource lock request waits (VDSM default)
MAX_GENERATION = 999

# misc.UUID_REGEX: lower case only, on purpose (VDSM compares ids with ==).
_UUID_RE = re.compile("^[a-f0-9]{8}-(?:[a-f0-9]{4}-){3}[a-f0-9]{12}$")


class InjectedJobError(StorageException):
    """A job failure chosen by fault injection; a storage error, so its code is reported."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(text)
        self.code = code  # type: ignore[misc]  # an instance code, chosen at run time
        self._text = text

    def __str__(self) -> str:
        return self._text


# -- misc.validate* ---------------------------------------------------------------------------


def validate_uuid(value: Any, name: str) -> str:
    """misc.validateUUID: a lower-case 8-4-4-4-12 string (blank allowed), else 1000."""
    if not isinstance(value, str) or _UUID_RE.match(value) is None:
        raise InvalidParameterException(name, value)
    return value


def validate_size(value: Any, name: str) -> int:
    """misc.validateSize: bytes as a string (an int is refused), an integer >= 0."""
    if not isinstance(value, str):
        raise InvalidParameterException(name, value)
    try:
        size = int(value)
    except ValueError:
        raise InvalidParameterException(name, value) from None
    if size < 0:
        raise InvalidParameterException(name, value)
    return size


def _round_up(value: int, step: int) -> int:
    return (value + step - 1) // step * step


def _blank(value: Any) -> bool:
    """A missing parent. VDSM tests `!= BLANK_UUID`; "" is taken as blank too (a leniency)."""
    return value in (BLANK_UUID, "", None)


class StorageVerbs:
    """The storage verbs of one host; storage itself is the cluster's."""

    def __init__(self, host: SimHost) -> None:
        self.host = host
        self.storage = host.cluster.storage

    # -- HSM helpers -------------------------------------------------------------------------

    def _get_pool(self, pool_id: Any) -> Pool:
        """HSM.getPool: the pool this host is connected to, by id; anything else is 309."""
        pool = self.storage.pools.get(pool_id) if isinstance(pool_id, str) else None
        if pool is None or self.host.name not in pool.hosts:
            raise StoragePoolUnknown(pool_id)
        return pool

    def _produce(self, sd_id: Any) -> Domain:
        """sdCache.produce: a domain this host sees (its pool's), else 358."""
        pool = self.storage.pool_of_host(self.host.name)
        domain = pool.domains.get(sd_id) if pool is not None and isinstance(sd_id, str) else None
        if domain is None:
            raise StorageDomainDoesNotExist(sd_id)
        return domain

    def _produce_volume(self, domain: Domain, img_id: str, vol_id: str) -> Volume:
        vol = domain.volumes.get(vol_id)
        if vol is None or vol.image != img_id or vol.removing:
            raise VolumeDoesNotExist(vol_id)
        return vol

    def _image_volumes(self, domain: Domain, img_id: str) -> list[Volume]:
        return [v for v in domain.image_volumes(img_id) if not v.removing]

    def _validate_spm(self, pool: Pool) -> None:
        """HSM._spmSchedule: pool.validateSPM()."""
        if pool.spm_host != self.host.name:
            raise SpmStatusError(pool.uuid)

    def _secured(self, pool: Pool) -> None:
        """A secured StoragePool method: SecureError on a non-SPM, answered (654, "Not SPM")."""
        if pool.spm_host != self.host.name:
            raise NotSpmSecured()

    def _spm_role(self, pool: Pool) -> str:
        if pool.spm_host == self.host.name:
            return "SPM"
        return "Contend" if pool.uuid in self.host.spm_contending else "Free"

    def _validate_not_spm(self, pool: Pool) -> None:
        if self._spm_role(pool) != "Free":
            raise IsSpm(pool.uuid)

    async def _exclusive_pool_lock(self, pool: Pool) -> Callable[[], None]:
        """vars.task.getExclusiveLock(STORAGE, spUUID): one holder per host and pool."""
        lock = self.host.pool_locks.setdefault(pool.uuid, asyncio.Lock())
        try:
            async with asyncio.timeout(self.host.clock.real(RESOURCE_TIMEOUT)):
                await lock.acquire()
        except TimeoutError:
            raise ResourceTimeout(pool.uuid) from None
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                lock.release()

        return release

    async def _finish_job(self, ctx: JobContext, duration: float, *, abortable: bool) -> None:
        """Simulated work, then the test gate, then an injected failure if one is drawn."""
        await ctx.work(duration, abortable=abortable)
        await self.host.gate.pass_through(ctx.task_id)
        self._maybe_fail()

    def _maybe_fail(self) -> None:
        s = self.host.faults.settings
        if self.host.faults.chance(s.task_failure_rate):
            raise InjectedJobError(s.task_failure_code, s.task_failure_message)

    async def _schedule(
        self, verb: str, job: Callable[[JobContext], Awaitable[Any]], job_name: str | None = None
    ) -> str:
        return await self.host.tasks.schedule(
            verb,
            job,
            job_name=job_name or verb,
            store=self.host.cluster.task_store(self.host.name),
        )

    def _create_volume(self, ctx: JobContext, vol: Volume, verb: str) -> None:
        """volume.create's core: 212 for an existing volume (nothing of it is touched, no
        rollback is left for it); else the volume exists, ILLEGAL, with its rollback."""
        if vol.uuid in self.storage.domain(vol.pool, vol.domain).volumes:
            raise VolumeAlreadyExists(vol.uuid)
        self.storage.add_volume(vol)
        ctx.push_recovery(
            Recovery(
                f"{verb} rollback: {vol.uuid}", "remove_volume", (vol.pool, vol.domain, vol.uuid)
            )
        )

    def _delete_image_now(self, domain: Domain, img_id: str) -> None:
        """image._deleteImage before an overwrite (force, or an illegal target): no rollback."""
        for v in domain.image_volumes(img_id):
            self.storage.remove_volume(v.pool, v.domain, v.uuid)

    def _is_legal(self, domain: Domain, img_id: str) -> bool:
        """image.isLegal: every volume of the image is LEGAL (an empty image is legal)."""
        return all(v.legality == "LEGAL" for v in self._image_volumes(domain, img_id))

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
        pool = self._get_pool(storagepoolID)
        self._validate_not_spm(pool)  # before the lock: a started SPM answers at once
        release = await self._exclusive_pool_lock(pool)
        try:
            self._validate_not_spm(pool)  # the SPM may have started while we waited
            tid = await self.host.tasks.schedule(
                "spmStart",
                self._start_spm_job(pool, release),
                job_name="spmStart",
                tag="hsm",
                persist=False,
            )
        except BaseException:
            release()
            raise
        self.host.release_when_done(tid, release)  # also when the job never runs
        return tid

    def _start_spm_job(
        self, pool: Pool, release: Callable[[], None]
    ) -> Callable[[JobContext], Awaitable[Any]]:
        cluster = self.host.cluster
        me = self.host.name

        async def start(ctx: JobContext) -> Any:
            """sp.startSpm: Contend while the lease is acquired, SPM once the tasks are loaded."""
            try:
                self.host.spm_contending.add(pool.uuid)
                try:
                    await ctx.work(cluster.config.spm_start_seconds)
                    holder = pool.spm_host
                    if holder is not None and holder != me and cluster.host_alive(holder):
                        raise AcquireLockFailure(pool.uuid, 1, [], f"lease held by {holder}")
                    if holder is not None and holder != me:
                        await cluster.drop_spm(pool)  # the old SPM is dead: its lease is fenced
                    self.storage.set_spm(pool, me, self.host.host_id)  # lver + 1
                    store = cluster.pool_task_store(pool)
                    if store is not None:
                        try:
                            await self.host.tasks.load_persisted(store)
                        except BaseException:
                            # startSpm stops the SPM again on any error (e.g. 405 for a dumped
                            # task this host still has in memory) and fails the task.
                            if pool.spm_host == me:
                                self.storage.set_spm(pool, None)
                            raise
                finally:
                    self.host.spm_contending.discard(pool.uuid)
            finally:
                release()
            return None

        return start

    async def spm_stop(self, storagepoolID: str) -> bool:
        # HSM.spmStop takes the pool's exclusive lock first (it waits for a running spmStart).
        pool = self.storage.pools.get(storagepoolID)
        release = await self._exclusive_pool_lock(pool) if pool is not None else None
        try:
            pool = self._get_pool(storagepoolID)
            if pool.spm_host == self.host.name:
                # VDSM's stopSpm only releases the role and the lease: tasks stay in memory
                # (TaskManager.unloadTasks is never called) and running jobs carry on.
                self.storage.set_spm(pool, None)
        finally:
            if release is not None:
                release()
        return True

    async def get_spm_status(self, storagepoolID: str) -> dict[str, Any]:
        pool = self._get_pool(storagepoolID)
        # spmStatus is this host's role; lver and id are what the lease on storage says.
        return {"spmStatus": self._spm_role(pool), "spmLver": pool.lver, "spmId": pool.spm_id}

    async def pool_info(self, storagepoolID: str) -> dict[str, Any]:
        pool = self._get_pool(storagepoolID)
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

    def _validate_create_params(
        self, volFormat: Any, srcVolUUID: Any, diskType: Any = None, preallocate: Any = None
    ) -> tuple[str, str | None]:
        """sd.validateCreateVolumeParams: (format, allocation)."""
        fmt = FORMATS.get(volFormat) if isinstance(volFormat, str | int) else None
        if fmt is None or isinstance(volFormat, bool):
            raise IncorrectFormat(volFormat)
        if srcVolUUID != BLANK_UUID and not _blank(srcVolUUID) and fmt != "COW":
            raise IncorrectFormat(fmt)
        if diskType is not None and diskType not in DISK_TYPES:
            raise InvalidParameterException("DiskType", diskType)
        allocation = None
        if preallocate is not None:
            allocation = (
                ALLOCATIONS.get(preallocate) if isinstance(preallocate, str | int) else None
            )
            if allocation is None or isinstance(preallocate, bool):
                raise IncorrectType(preallocate)
        return fmt, allocation

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
        # HSM.createVolume, in its order.
        pool = self._get_pool(storagepoolID)
        domain = self._produce(storagedomainID)
        validate_uuid(imageID, "imgUUID")
        validate_uuid(volumeID, "volUUID")
        capacity = validate_size(size, "size")
        if initialSize is not None:
            validate_size(initialSize, "initialSize")
        if srcImgUUID:
            validate_uuid(srcImgUUID, "srcImgUUID")
        if srcVolUUID:
            validate_uuid(srcVolUUID, "srcVolUUID")
        if bitmap:
            validate_uuid(bitmap, "bitmap")
        fmt, allocation = self._validate_create_params(volFormat, srcVolUUID, diskType, preallocate)
        self._validate_spm(pool)

        vol = Volume(
            uuid=volumeID,
            image=imageID,
            domain=domain.uuid,
            pool=pool.uuid,
            capacity=_round_up(capacity, BLOCK_SIZE_4K),
            format=fmt,
            allocation=allocation or "SPARSE",
            disktype=str(diskType or "DATA"),
            description=desc or "",
            parent=BLANK_UUID if _blank(srcVolUUID) else srcVolUUID,
        )
        duration = self.host.draw_duration(2.0 if vol.allocation == "PREALLOCATED" else 1.0)

        async def create(ctx: JobContext) -> Any:
            """sp.createVolume -> volume.create: the checks VDSM makes here are the job's."""
            if vol.parent != BLANK_UUID:
                src_img = imageID if _blank(srcImgUUID) else srcImgUUID
                parent = self._produce_volume(domain, src_img, vol.parent)
                if vol.capacity < parent.capacity:
                    raise InvalidParameterException("capacity", vol.capacity)
            self._create_volume(ctx, vol, "createVolume")
            await self._finish_job(ctx, duration, abortable=vol.allocation == "PREALLOCATED")
            if legal:
                self.storage.set_legality(vol, "LEGAL")
            return {"uuid": vol.uuid}

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
        # HSM.copyImage, in its order.
        if dstSdUUID in (storagedomainID, BLANK_UUID) and imageID == dstImgUUID:
            raise InvalidParameterException("dstImgUUID", dstImgUUID)
        pool = self._get_pool(storagepoolID)
        domain = self._produce(storagedomainID)
        self._secured(pool)  # pool.validateVolumeChain is a secured method
        if not self._is_legal(domain, imageID):
            raise ImageIsNotLegalChain(imageID)
        if not self._image_volumes(domain, imageID):
            raise ImageDoesNotExistInSD(imageID, storagedomainID)
        dst_sd = storagedomainID if dstSdUUID == BLANK_UUID else dstSdUUID
        fmt, allocation = self._validate_create_params(
            volFormat, BLANK_UUID, preallocate=preallocate
        )
        dst_domain = self._produce(dst_sd)
        self._validate_spm(pool)
        duration = self.host.draw_duration(3.0)

        async def copy(ctx: JobContext) -> Any:
            """sp.copyImage -> image.copyCollapsed."""
            src = self._produce_volume(domain, imageID, volumeID)
            if force or not self._is_legal(dst_domain, dstImgUUID):
                self._delete_image_now(dst_domain, dstImgUUID)
            dst = Volume(
                uuid=dstVolUUID,
                image=dstImgUUID,
                domain=dst_domain.uuid,
                pool=pool.uuid,
                capacity=src.capacity,
                format=fmt,
                allocation=allocation or src.allocation,
                disktype=src.disktype,
                description=desc,
            )
            self._create_volume(ctx, dst, "copyImage")
            await self._finish_job(ctx, duration, abortable=True)  # qemu-img convert
            self.storage.set_legality(dst, "LEGAL")
            return {"uuid": dst.uuid}

        return await self._schedule("copyImage", copy, f"copyImage_{dstImgUUID}")

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
        # HSM.deleteVolume checks only the pool, the image id and the SPM role: the domain and
        # the volume are looked up by the job (sp.deleteVolume).
        pool = self._get_pool(storagepoolID)
        validate_uuid(imageID, "imgUUID")
        self._validate_spm(pool)
        duration = self.host.draw_duration(1.0 if postZero else 0.25)

        async def delete(ctx: JobContext) -> Any:
            domain = self._produce(storagedomainID)
            vol = self._produce_volume(domain, imageID, volumeID)
            self.storage.mark_removing([vol], True)
            await self._finish_job(ctx, duration, abortable=postZero)  # zeroing is abortable
            self.storage.remove_volume(vol.pool, vol.domain, vol.uuid)
            return None

        return await self._schedule("deleteVolume", delete)

    async def volume_info(
        self, volumeID: str, storagepoolID: str, storagedomainID: str, imageID: str
    ) -> dict[str, Any]:
        # HSM.getVolumeInfo ignores the pool id.
        return self._produce_volume(self._produce(storagedomainID), imageID, volumeID).info()

    # -- images --------------------------------------------------------------------------------

    async def image_delete(
        self,
        imageID: str,
        storagepoolID: str,
        storagedomainID: str,
        postZero: bool,
        force: bool,
        discard: bool = False,
    ) -> str:
        # HSM.deleteImage, in its order.
        pool = self._get_pool(storagepoolID)
        domain = self._produce(storagedomainID)
        vols = self._image_volumes(domain, imageID)
        if not vols:
            raise ImageDoesNotExistInSD(imageID, storagedomainID)
        duration = self.host.draw_duration(1.0 if postZero else 0.25)

        async def purge(ctx: JobContext) -> Any:
            if postZero:  # blockSD.zeroImage marks the volumes in the job, then zeroes them
                self.storage.mark_removing(vols, True)
            await self._finish_job(ctx, duration, abortable=postZero)  # zeroing is abortable
            for vol in vols:
                self.storage.remove_volume(vol.pool, vol.domain, vol.uuid)
            return None

        if postZero:
            self._validate_spm(pool)
            return await self._schedule("deleteImage", purge, f"zeroImage_{imageID}")
        self._secured(pool)  # pool.deleteImage (secured) renames the image at once
        self.storage.mark_removing(vols, True)
        return await self._schedule("deleteImage", purge, f"purgeImage_{imageID}")

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
        # HSM.moveImage, in its order.
        if storagedomainID == dstSdUUID:
            args = (
                f"spUUID={storagepoolID}, srcDomUUID={storagedomainID}, dstDomUUID={dstSdUUID}, "
                f"imgUUID={imageID}, vmUUID=, op={operation}, force={force}, "
                f"postZero={postZero}, force={force},discard={discard}"
            )
            raise InvalidParameterException("srcDom", f"must be different from dstDom: {args}")
        src_domain = self._produce(storagedomainID)
        dst_domain = self._produce(dstSdUUID)
        pool = self._get_pool(storagepoolID)
        self._validate_spm(pool)
        duration = self.host.draw_duration(3.0)

        async def move(ctx: JobContext) -> Any:
            """sp.moveImage -> image.move."""
            op = MOVE_OPERATIONS.get(operation) if isinstance(operation, str | int) else None
            if op is None or isinstance(operation, bool):
                raise MoveImageError(imageID)
            if force or not self._is_legal(dst_domain, imageID):
                self._delete_image_now(dst_domain, imageID)
            src_vols = self._image_volumes(src_domain, imageID)
            if not src_vols:
                raise ImageDoesNotExistInSD(imageID, storagedomainID)
            copies = []
            for v in src_vols:
                copy = replace(v, domain=dst_domain.uuid, legality="ILLEGAL", removing=False)
                self._create_volume(ctx, copy, "moveImage")
                copies.append(copy)
            await self._finish_job(ctx, duration, abortable=True)
            for copy in copies:
                self.storage.set_legality(copy, "LEGAL")
            # The copy is done: image.move clears the task's recoveries, then a MOVE deletes
            # the source (a failure there is only logged). Nothing of it is rolled back.
            ctx.clear_recoveries()
            if op == "MOVE":
                for v in src_vols:
                    self.storage.remove_volume(v.pool, v.domain, v.uuid)
            return None

        return await self._schedule("moveImage", move, f"moveImage_{imageID}")

    async def domain_volumes(
        self, storagedomainID: str, storagepoolID: str, imageID: str = BLANK_UUID
    ) -> list[str]:
        # HSM.getVolumesList: the pool id is unused; an unknown image is an empty list.
        domain = self._produce(storagedomainID)
        return [
            v.uuid
            for v in domain.volumes.values()
            if not v.removing and (imageID == BLANK_UUID or v.image == imageID)
        ]

    async def image_volumes(
        self, imageID: str, storagepoolID: str, storagedomainID: str
    ) -> list[str]:
        return await self.domain_volumes(storagedomainID, storagepoolID, imageID)

    # -- SDM host jobs (lib/vdsm/storage/sdm/api) ---------------------------------------------

    def _div_volume(self, endpoint: dict[str, Any]) -> Volume | None:
        """The volume of a `div` endpoint, as the job finds it (358, then 201); None for others."""
        if endpoint.get("endpoint_type", "div") != "div":
            return None
        domain = self._produce(endpoint["sd_id"])
        return self._produce_volume(domain, endpoint["img_id"], endpoint["vol_id"])

    def _volume_operation_start(self, vol: Volume, generation: Any, *, set_illegal: bool) -> int:
        """volume.operation: check the generation (911), mark ILLEGAL while it runs."""
        if generation is not None and generation != vol.generation:
            raise GenerationMismatch(generation, vol.generation)
        if set_illegal:
            self.storage.set_legality(vol, "ILLEGAL")
        return vol.generation

    def _volume_operation_end(self, vol: Volume, actual: int, *, set_illegal: bool) -> None:
        vol.generation = 0 if actual >= MAX_GENERATION else actual + 1
        self.storage.set_legality(vol, "LEGAL" if set_illegal else vol.legality)

    def copy_data_run(
        self, source: dict[str, Any], destination: dict[str, Any]
    ) -> Callable[[ProgressCallback], Awaitable[None]]:
        """copy_data.Job._run: both volumes must exist (the destination is not created);
        the destination is ILLEGAL while qemu-img convert runs, LEGAL with generation + 1 after."""
        src_ep, dst_ep = dict(source), dict(destination)

        async def run(progress: ProgressCallback) -> None:
            if dst_ep.get("endpoint_type") == "div":
                self._produce(dst_ep["sd_id"])  # the destination's locks produce its domain
            self._div_volume(src_ep)
            dst = self._div_volume(dst_ep)
            gen = 0
            if dst is not None:
                gen = self._volume_operation_start(dst, dst_ep.get("generation"), set_illegal=True)
            seconds = self.host.draw_duration(3.0)
            for step in range(1, 11):
                await self.host.clock.sleep(seconds / 10)
                progress(step * 10)
            self._maybe_fail()
            if dst is not None:
                self._volume_operation_end(dst, gen, set_illegal=True)

        return run

    def sparsify_run(
        self, vol_info: dict[str, Any]
    ) -> Callable[[ProgressCallback], Awaitable[None]]:
        """sparsify_volume.Job._run: the volume must exist; legality is left alone."""
        info = dict(vol_info)

        async def run(progress: ProgressCallback) -> None:
            vol = self._div_volume({**info, "endpoint_type": "div"})
            assert vol is not None
            gen = self._volume_operation_start(vol, info.get("generation"), set_illegal=False)
            await self.host.clock.sleep(self.host.draw_duration())
            self._maybe_fail()
            self._volume_operation_end(vol, gen, set_illegal=False)

        return run


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

    async def copy_data(
        job_id: str, source: dict[str, Any], destination: dict[str, Any], copy_bitmaps: bool = False
    ) -> bool:
        run = v.copy_data_run(source, destination)
        return await host.jobs.sdm_copy_data(job_id, source, destination, copy_bitmaps, run=run)

    async def sparsify(job_id: str, vol_info: dict[str, Any]) -> bool:
        return await host.jobs.sdm_sparsify_volume(job_id, vol_info, run=v.sparsify_run(vol_info))

    t.add(
        "SDM.copy_data",
        copy_data,
        Param("job_id", "str"),
        Param("source", "dict"),
        Param("destination", "dict"),
        Param("copy_bitmaps", "bool", False),
    )
    t.add("SDM.sparsify_volume", sparsify, Param("job_id", "str"), Param("vol_info", "dict"))
    t.add(
        "StorageDomain.getVolumes", v.domain_volumes, sd, pool, Param("imageID", "str", BLANK_UUID)
    )

"""Shared storage of the simulated data centre: pools, domains, images and volumes.

Storage is shared by every host of a pool, as real block or file storage is, so this model lives
once per cluster, not per host. Effects are real: a volume created by a task exists (ILLEGAL while
the task works, LEGAL once it finished) until a delete or a rollback removes it, and every change
is visible through the read verbs (Volume.getInfo, StorageDomain.getVolumes, StoragePool.getInfo).

With a state directory the model is written to `storage.json` after every change (write to a
temporary file, fsync, rename), so a restarted simulator finds the volumes its tasks left and can
roll those tasks back against them.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from vdsm_simulator.errors import (
    ImageDoesNotExistInSD,
    StorageDomainDoesNotExist,
    StoragePoolUnknown,
    VolumeAlreadyExists,
    VolumeDoesNotExist,
)

BLANK_UUID = "00000000-0000-0000-0000-000000000000"
DOMAIN_BLOCK_SIZE = 512


@dataclass
class Volume:
    """One volume; field names follow VDSM's VolumeInfo where they are reported."""

    uuid: str
    image: str
    domain: str
    pool: str
    capacity: int
    format: str = "COW"  # COW or RAW
    allocation: str = "SPARSE"  # SPARSE or PREALLOCATED
    disktype: str = "DATA"
    description: str = ""
    legality: str = "ILLEGAL"  # ILLEGAL while its creating task works, LEGAL after
    parent: str = BLANK_UUID
    voltype: str = "LEAF"
    ctime: int = field(default_factory=lambda: int(time.time()))
    generation: int = 0
    used_by: str = ""  # a VM that uses the volume (memory volumes of a hibernated VM)
    removing: bool = False  # marked for removal by a delete task still working

    def info(self) -> dict[str, Any]:
        """Volume.getInfo's result (VolumeInfoResponse)."""
        return {
            "uuid": self.uuid,
            "image": self.image,
            "domain": self.domain,
            "pool": self.pool,
            "capacity": str(self.capacity),
            "virtualsize": str(self.capacity),
            "apparentsize": str(self.capacity if self.allocation == "PREALLOCATED" else 0),
            "truesize": str(self.capacity if self.allocation == "PREALLOCATED" else 0),
            "format": self.format,
            "allocType": self.allocation,
            "type": self.allocation,
            "disktype": self.disktype,
            "description": self.description,
            "legality": self.legality,
            "parent": self.parent,
            "voltype": self.voltype,
            "children": [],
            "ctime": str(self.ctime),
            "mtime": "0",
            "status": "OK" if self.legality == "LEGAL" else "ILLEGAL",
            "generation": self.generation,
            "lease": {"path": "", "offset": 0, "owners": [], "version": None},
        }


@dataclass
class Domain:
    uuid: str
    name: str
    pool: str
    volumes: dict[str, Volume] = field(default_factory=dict)

    def image_volumes(self, image: str) -> list[Volume]:
        return [v for v in self.volumes.values() if v.image == image]


@dataclass
class Pool:
    uuid: str
    name: str
    master_domain: str
    hosts: list[str]
    domains: dict[str, Domain] = field(default_factory=dict)
    spm_host: str | None = None  # name of the host holding the SPM role, if any
    spm_id: int = -1  # VDSM's host id of the SPM, -1 when none
    lver: int = -1  # lease version, bumped on every SPM start
    master_version: int = 1


class Storage:
    """Every pool of the simulated data centre and what is on its domains."""

    def __init__(self, state_file: Path | None = None) -> None:
        self.pools: dict[str, Pool] = {}
        self.state_file = state_file
        # Volumes a MOVE took off their source, kept so that its rollback can put them back
        # (recovery arguments are short strings, so the rollback names the volume, not its data).
        self.moved_away: dict[str, Volume] = {}
        self._host_pool: dict[str, Pool] = {}

    # -- building -----------------------------------------------------------------------------

    def add_pool(
        self,
        name: str,
        hosts: list[str],
        n_domains: int = 2,
        *,
        pool_id: str = "",
        domain_ids: list[str] | None = None,
    ) -> Pool:
        pool_id = pool_id or str(uuid.uuid4())
        ids = domain_ids or [str(uuid.uuid4()) for _ in range(n_domains)]
        domains = {sd: Domain(sd, f"{name}-sd{i + 1}", pool_id) for i, sd in enumerate(ids)}
        pool = Pool(pool_id, name, ids[0], list(hosts), domains)
        self.pools[pool_id] = pool
        return pool

    def pool_of_host(self, host: str) -> Pool | None:
        """The host's pool; cached because every SPM check asks (1,000 pools made it a hot scan).

        The cached answer is re-checked against the pool's member list, so a host moved or added
        by hand is still found correctly.
        """
        cached = self._host_pool.get(host)
        if cached is not None and self.pools.get(cached.uuid) is cached and host in cached.hosts:
            return cached
        for pool in self.pools.values():
            if host in pool.hosts:
                self._host_pool[host] = pool
                return pool
        return None

    # -- lookups that raise VDSM's errors -------------------------------------------------------

    def pool(self, pool_id: str) -> Pool:
        try:
            return self.pools[pool_id]
        except KeyError:
            raise StoragePoolUnknown(pool_id) from None

    def domain(self, pool_id: str, sd_id: str) -> Domain:
        pool = self.pool(pool_id)
        try:
            return pool.domains[sd_id]
        except KeyError:
            raise StorageDomainDoesNotExist(sd_id) from None

    def volume(self, pool_id: str, sd_id: str, img_id: str, vol_id: str) -> Volume:
        vol = self.domain(pool_id, sd_id).volumes.get(vol_id)
        if vol is None or vol.image != img_id:
            raise VolumeDoesNotExist(vol_id)
        return vol

    def image(self, pool_id: str, sd_id: str, img_id: str) -> list[Volume]:
        vols = self.domain(pool_id, sd_id).image_volumes(img_id)
        if not vols:
            raise ImageDoesNotExistInSD(img_id, sd_id)
        return vols

    # -- changes (each one persisted) -----------------------------------------------------------

    def add_volume(self, vol: Volume) -> None:
        domain = self.domain(vol.pool, vol.domain)
        if vol.uuid in domain.volumes:
            raise VolumeAlreadyExists(vol.uuid)
        domain.volumes[vol.uuid] = vol
        self.save()

    def remove_volume(self, pool_id: str, sd_id: str, vol_id: str, *, keep: bool = False) -> bool:
        """Remove a volume if it is there; rollbacks call this and must be idempotent.

        `keep` remembers the volume so `restore_volume` can bring it back.
        """
        pool = self.pools.get(pool_id, None)
        if pool is None or sd_id not in pool.domains:
            return False
        vol = pool.domains[sd_id].volumes.pop(vol_id, None)
        if vol is not None and keep:
            self.moved_away[f"{sd_id}/{vol_id}"] = vol
        if vol is not None:
            self.save()
        return vol is not None

    def restore_volume(self, pool_id: str, sd_id: str, vol_id: str) -> None:
        """Put back a volume a move removed from its source (rollback of a MOVE)."""
        vol = self.moved_away.pop(f"{sd_id}/{vol_id}", None)
        if vol is not None:
            self.domain(pool_id, sd_id).volumes.setdefault(vol_id, vol)
            self.save()

    def forget_moved(self, sd_id: str, vol_id: str) -> None:
        if self.moved_away.pop(f"{sd_id}/{vol_id}", None) is not None:
            self.save()

    def set_legality(self, vol: Volume, legality: str) -> None:
        vol.legality = legality
        self.save()

    def mark_removing(self, vols: list[Volume], removing: bool) -> None:
        for vol in vols:
            vol.removing = removing
        self.save()

    def set_spm(self, pool: Pool, host: str | None, host_id: int = -1) -> None:
        pool.spm_host = host
        pool.spm_id = host_id if host else -1
        if host:
            pool.lver += 1
        self.save()

    # -- persistence -----------------------------------------------------------------------------

    def save(self) -> None:
        if self.state_file is None:
            return
        data = {
            "pools": [asdict(p) for p in self.pools.values()],
            "moved_away": {k: asdict(v) for k, v in self.moved_away.items()},
        }
        tmp = self.state_file.with_suffix(".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.state_file)

    def load(self) -> bool:
        """Read a saved model; returns False when there is none yet."""
        if self.state_file is None or not self.state_file.exists():
            return False
        data = json.loads(self.state_file.read_text(encoding="utf-8"))
        self.pools = {}
        for p in data["pools"]:
            domains = {}
            for sd_id, d in p.pop("domains").items():
                vols = {vid: Volume(**v) for vid, v in d.pop("volumes").items()}
                domains[sd_id] = Domain(**d, volumes=vols)
            self.pools[p["uuid"]] = Pool(**p, domains=domains)
        self.moved_away = {k: Volume(**v) for k, v in data.get("moved_away", {}).items()}
        return True

    def topology(self) -> list[dict[str, Any]]:
        return [
            {
                "id": p.uuid,
                "name": p.name,
                "master_domain": p.master_domain,
                "spm": p.spm_host,
                "spm_id": p.spm_id,
                "lver": p.lver,
                "hosts": list(p.hosts),
                "domains": [
                    {"id": d.uuid, "name": d.name, "volumes": len(d.volumes)}
                    for d in p.domains.values()
                ],
            }
            for p in self.pools.values()
        ]

"""CreateDisk: one VDSM task (scenario 2) — Volume.create on the pool's SPM.

`preallocate` is VDSM's createVolume argument and decides how fast a stop takes effect: a
PREALLOCATED volume is allocated through an operation VDSM registers as the task's abort
callback (fallocate on file domains), so Task.stop interrupts it and the volume is rolled back
at once; a SPARSE volume is a truncate or `qemu-img create` that nobody can interrupt, so a stop
is accepted but the task ends only when that work is done (then rolled back)."""

from __future__ import annotations

from typing import Any

from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.model import LockKind, StepType, new_id


class CreateDisk(CommandBase):
    spec = ActionSpec(
        "CreateDisk",
        "Create a disk (an image with one volume) on a storage domain",
        {
            "pool": Param("uuid", description="storage pool"),
            "domain": Param("uuid", description="storage domain"),
            "size": Param("size", description="virtual size in bytes"),
            "image": Param("uuid", required=False, description="image id (generated if absent)"),
            "volume": Param("uuid", required=False, description="volume id (generated if absent)"),
            "description": Param("str", required=False),
            "preallocate": Param(
                "allocation",
                required=False,
                description="SPARSE (default, COW) or PREALLOCATED (RAW, allocated up front)",
            ),
        },
        CancelPolicy(
            notes="stop: VDSM rolls the volume back (at once for PREALLOCATED, whose allocation "
            "is abortable; a SPARSE create first runs to its end); revert: also removes a "
            "volume already created; refused once FINALIZING has begun",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"disk:{self._ids()[0]}", LockKind.EXCLUSIVE)]

    def _ids(self) -> tuple[str, str]:
        # ids generated once and kept with the command, so a restart uses the same ones
        if "image" not in self.record.data:
            self.record.data["image"] = self.params.get("image") or new_id()
            self.record.data["volume"] = self.params.get("volume") or new_id()
        return self.record.data["image"], self.record.data["volume"]

    async def execute(self) -> None:
        image, volume = self._ids()
        await self.remember(image=image, volume=volume)
        p = self.params
        prealloc = p.get("preallocate", "SPARSE")
        # the engine's pairing: preallocated disks are RAW, thin ones COW
        fmt = "RAW" if prealloc == "PREALLOCATED" else "COW"
        await self.start_task(
            "createVolume",
            p["pool"],
            StepType.CREATE_VOLUME,
            f"Creating volume {volume}",
            lambda host: host.create_volume(
                p["pool"],
                p["domain"],
                image,
                volume,
                p["size"],
                fmt=fmt,
                prealloc=prealloc,
                desc=p.get("description", ""),
            ),
        )

    async def end_action(self) -> dict[str, Any]:
        image, volume = self._ids()
        return {
            "pool": self.params["pool"],
            "domain": self.params["domain"],
            "image": image,
            "volume": volume,
        }

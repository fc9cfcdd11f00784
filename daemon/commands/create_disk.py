"""CreateDisk: one VDSM task (scenario 2) — Volume.create on the pool's SPM."""

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
        },
        CancelPolicy(
            notes="stop: VDSM rolls the volume back; revert: also removes a volume already "
            "created; refused once FINALIZING has begun",
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
        await self.start_task(
            "createVolume",
            p["pool"],
            StepType.CREATE_VOLUME,
            f"Creating volume {volume}",
            lambda host: host.create_volume(
                p["pool"], p["domain"], image, volume, p["size"], desc=p.get("description", "")
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

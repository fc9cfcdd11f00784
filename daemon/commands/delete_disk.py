"""DeleteDisk: one VDSM task — Image.delete. A deletion cannot be undone."""

from __future__ import annotations

from typing import Any

from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.model import CancelMode, LockKind, StepType


class DeleteDisk(CommandBase):
    spec = ActionSpec(
        "DeleteDisk",
        "Delete a disk (every volume of an image)",
        {"pool": Param("uuid"), "domain": Param("uuid"), "image": Param("uuid")},
        CancelPolicy(
            modes=frozenset({CancelMode.STOP}),
            point_of_no_return="EXECUTING",
            notes="VDSM marks the image deleted as soon as Image.delete is received, and a "
            "deletion has no rollback: a cancel is accepted only before execution starts",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"disk:{self.params['image']}", LockKind.EXCLUSIVE)]

    async def execute(self) -> None:
        p = self.params
        await self.start_task(
            "deleteImage",
            p["pool"],
            StepType.DELETE_IMAGE,
            f"Deleting image {p['image']}",
            lambda host: host.delete_image(p["pool"], p["domain"], p["image"]),
        )

    async def end_action(self) -> dict[str, Any]:
        return {"image": self.params["image"], "deleted": True}

"""CopyDisk: one VDSM task — Image.move with operation COPY to another domain of the pool."""

from __future__ import annotations

from typing import Any

from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import InvalidParams
from daemon.model import LockKind, StepType


class CopyDisk(CommandBase):
    spec = ActionSpec(
        "CopyDisk",
        "Copy a disk to another storage domain of the same pool",
        {
            "pool": Param("uuid"),
            "domain": Param("uuid", description="source domain"),
            "image": Param("uuid"),
            "dst_domain": Param("uuid", description="destination domain"),
        },
        CancelPolicy(notes="the copy is abortable on the host; stop and revert remove the copy"),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"disk:{self.params['image']}", LockKind.SHARED)]

    async def validate(self) -> None:
        if self.params["domain"] == self.params["dst_domain"]:
            raise InvalidParams("CopyDisk: dst_domain must differ from domain")

    async def execute(self) -> None:
        p = self.params
        await self.start_task(
            "moveImage",
            p["pool"],
            StepType.COPY_IMAGE,
            f"Copying image {p['image']} to {p['dst_domain']}",
            lambda host: host.move_image(
                p["pool"], p["domain"], p["image"], p["dst_domain"], operation="COPY"
            ),
        )

    async def end_action(self) -> dict[str, Any]:
        return {"image": self.params["image"], "domain": self.params["dst_domain"]}

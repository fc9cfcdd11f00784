"""CopyDisk: one VDSM task — Image.move with operation COPY to another domain of the pool."""

from __future__ import annotations

import asyncio
from typing import Any

from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import InvalidParams, Unavailable
from daemon.model import LockKind, StepType
from daemon.vdsm.errors import UnknownTask


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
        CancelPolicy(
            notes="the copy is abortable on the host: a stop aborts it and VDSM removes the "
            "partial copy; a copy completed before the stop is kept under stop and deleted "
            "(Image.delete) under revert",
        ),
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

    async def compensate(self) -> list[str]:
        """Revert: delete the copy. Task.revert cannot: image.move drops its rollbacks once the
        copy is done, and a copy committed just before Task.stop arrived ends cleanSuccess/411
        with the copy kept. Only a copy this job made is deleted (a task that failed, e.g. 212
        for an image already on the destination, made nothing). Idempotent: an absent copy is
        left alone."""
        p = self.params
        made = any(
            t.vdsm_result == "success"
            or t.revert_sent  # it had succeeded; its Task.revert changed nothing
            or (t.vdsm_result == "cleanSuccess" and t.code == 411)
            for t in self.tasks()
        )
        if not made:
            return []
        spm = await self.ctx.hosts.spm(p["pool"])
        vdsm = self.vdsm(spm)
        if not await vdsm.domain_volumes(p["pool"], p["dst_domain"], p["image"]):
            return []
        task_id = await vdsm.delete_image(p["pool"], p["dst_domain"], p["image"])
        async with asyncio.timeout(300):
            while (status := await vdsm.task_status(task_id)).state != "finished":  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # VDSM's own pace; the job is not polled for it
        try:
            await vdsm.clear_task(task_id)
        except UnknownTask:
            pass
        if status.code:
            raise Unavailable(f"deleting the copy failed: [{status.code}] {status.message}")
        return [f"copy of image {p['image']} deleted from {p['dst_domain']} (Image.delete)"]

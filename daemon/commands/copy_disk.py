"""CopyDisk: one VDSM task — Image.move with operation COPY to another domain of the pool."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from daemon import model
from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.engine.task_verbs import TaskVerb, send_on_spm
from daemon.errors import InvalidParams, Unavailable
from daemon.model import LockKind, StepType, Task, TaskStatus, new_id
from daemon.vdsm.errors import VdsmCallError


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
            _COPY,
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
        for an image already on the destination, made nothing). Idempotent: a deletion an
        earlier run started (before a restart) is seen to its end first, and an absent copy is
        left alone."""
        p = self.params
        made = any(
            t.vdsm_result == "success"
            or t.revert_sent  # it had succeeded; its Task.revert changed nothing
            or (t.vdsm_result == "cleanSuccess" and t.code == 411)
            for t in self.tasks()
            if t.verb == _COPY
        )
        if not made:
            return []
        for earlier in [t for t in self.tasks() if t.verb == _DELETE]:
            with contextlib.suppress(Unavailable):  # it failed: the copy is checked again below
                await self._finish_deletion(earlier)
        spm = await self.ctx.hosts.spm(p["pool"])
        if not await self.vdsm(spm).domain_volumes(p["pool"], p["dst_domain"], p["image"]):
            return []
        await self._finish_deletion(await self._start_deletion(spm))
        return [f"copy of image {p['image']} deleted from {p['dst_domain']} (Image.delete)"]

    async def _start_deletion(self, spm: str) -> Task:
        """Image.delete as a recorded task, like every task-creating verb (command.py's
        `start_task`, which sends nothing under a cancel and so cannot serve the revert): its
        placeholder is committed before the verb leaves and its id as soon as VDSM answers, so
        a restart finds it instead of leaving it to the orphan reaper. Marked stopped and
        reverted from the start: it is the revert's own work, which a resumed cancel must
        neither stop (a half-deleted copy) nor roll back."""
        p = self.params
        task = Task(
            new_id(),
            self.job.id,
            self.record.id,
            spm,
            p["pool"],
            _DELETE,
            stop_sent=True,
            revert_sent=True,
        )
        await self.registry.add_task(task)  # committed before the verb leaves
        try:
            vdsm_id = await self.vdsm(spm).delete_image(p["pool"], p["dst_domain"], p["image"])
        except VdsmCallError as e:
            self.registry.set_task_status(
                task, TaskStatus.LOST, code=e.vdsm_code, message=e.message
            )
            if e.code == 654:
                self.ctx.hosts.forget_spm(p["pool"])
            raise
        await self.registry.record_task_id(task, vdsm_id)
        self.ctx.hosts.watch(p["pool"])
        return task

    async def _finish_deletion(self, task: Task) -> None:
        """Wait for the deletion's end (the poller reports it), clear it, and raise if it
        failed. A placeholder whose reply never came is the reaper's."""
        if task.vdsm_id is None or task.status in model.TASK_SETTLED:
            return
        self.ctx.hosts.watch(task.pool)  # after a restart nothing else may poll the pool yet
        async with asyncio.timeout(300):
            while task.status is TaskStatus.POLLING:
                await self.registry.wait_changed(self.job.id)
        if task.status is TaskStatus.ENDED:
            self.registry.set_task_status(task, TaskStatus.CLEARING)
        if task.status is TaskStatus.CLEARING:
            await send_on_spm(self.ctx.hosts, task, TaskVerb.CLEAR)
            self.registry.set_task_status(task, TaskStatus.CLEARED)
        if task.vdsm_result != "success":
            raise Unavailable(
                f"deleting the copy failed: {task.vdsm_result or task.status} "
                f"[{task.code}] {task.message}"
            )


_COPY = "moveImage"  # the verb of the copy's own task
_DELETE = "deleteImage"  # the verb of the revert's deletion task

"""The command base: validate → execute → (wait) → end_action | end_with_failure.

A command is the business logic of one action; the executor drives its phases and persists which
phase it is in, so a restarted daemon resumes it at the right place. What a command needs from the
rest of the daemon comes through its `CommandContext`: the registry (to record steps and tasks),
the hosts (to reach VDSM) and the executor (to run child commands).

Starting a VDSM task is a critical section (DESIGN.md, cancellation rule 3): the placeholder is
committed before the verb is sent, and once sent, the reply's task id is recorded even if the
command is cancelled meanwhile, so no task is ever lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from daemon.engine.policy import ActionSpec
from daemon.engine.task_verbs import TaskVerb, send_on_spm
from daemon.model import (
    CancelMode,
    Command,
    Job,
    JobStatus,
    LockKind,
    Step,
    StepType,
    Task,
    TaskStatus,
    new_id,
)
from daemon.registry import Registry
from daemon.vdsm.errors import NotSpm, VdsmCallError

if TYPE_CHECKING:
    from daemon.engine.executor import Executor
    from daemon.hosts import HostManager
    from daemon.vdsm.verbs import VdsmHost

log = logging.getLogger(__name__)


class CommandFailed(Exception):
    """execute() or a wait ended in failure; the message becomes the job's error."""


@dataclass
class CommandContext:
    registry: Registry
    hosts: HostManager
    executor: Executor
    job: Job
    tasks_step: Step | None = None  # the step task steps hang under (the root's EXECUTING)


class CommandBase:
    spec: ClassVar[ActionSpec]
    hidden: ClassVar[bool] = True  # as a child: no VALIDATING/EXECUTING/FINALIZING steps of its own
    revert_on_failure: ClassVar[bool] = False  # end_with_failure reverts succeeded tasks

    def __init__(self, ctx: CommandContext, record: Command) -> None:
        self.ctx = ctx
        self.record = record
        self.params = record.params

    # -- the phases a command overrides -----------------------------------------------------------

    def locks(self) -> list[tuple[str, LockKind]]:
        """Entities this command locks for its whole life (released after its tasks settle)."""
        return []

    async def validate(self) -> None:
        """Check the world; raise DaemonError subclasses with a clear message to refuse."""

    async def execute(self) -> None:
        """Send verbs, start tasks and children. Raise CommandFailed to fail."""

    async def wait(self) -> None:
        """Wait for what execute started; the default waits for this command's tasks."""
        await self.wait_tasks()

    async def end_action(self) -> dict[str, Any] | None:
        """The commit after success; its return value is the job's result."""
        return None

    async def end_with_failure(self) -> None:
        """Undo what a failure left behind; by default revert the tasks that succeeded."""
        if self.revert_on_failure:
            await self.revert_tasks()

    async def on_cancel(self, mode: CancelMode) -> list[str]:
        """Stop this command's own in-flight work that is not a VDSM task (VM.migrateCancel,
        an installation); returns what it did, for the cancel record. Tasks are stopped by the
        coordinator."""
        return []

    async def compensate(self) -> list[str]:
        """Under revert: undo what this command completed that is not a task (tasks are
        reverted by the coordinator). Must be idempotent: a restart may run it again."""
        return []

    # -- helpers for commands ---------------------------------------------------------------------

    @property
    def job(self) -> Job:
        return self.ctx.job

    @property
    def registry(self) -> Registry:
        return self.ctx.registry

    def vdsm(self, host: str) -> VdsmHost:
        return self.ctx.hosts.vdsm(host)

    def data(self, key: str, default: Any = None) -> Any:
        return self.record.data.get(key, default)

    async def remember(self, **values: Any) -> None:
        """Persist what end_action or compensation will need after a restart (committed)."""
        self.record.data.update(values)
        await self.registry.save_command(self.record)

    def tasks(self, *, descendants: bool = False) -> list[Task]:
        """This command's tasks; with `descendants`, also those of its child commands.

        Only the job's own tasks are looked at (a handful); without `descendants`, the common
        case (every wait loop), no set of owners is built."""
        if not descendants:
            own = self.record.id
            return [t for t in self.registry.job_tasks(self.job.id) if t.command_id == own]
        owners = {self.record.id}
        commands = self.registry.commands.get(self.job.id, {}).values()
        grew = True
        while grew:
            found = {c.id for c in commands if c.parent_id in owners}
            grew = not found <= owners
            owners |= found
        return [t for t in self.registry.job_tasks(self.job.id) if t.command_id in owners]

    async def start_task(
        self,
        verb: str,
        pool: str,
        step_type: StepType,
        description: str,
        send: Callable[[VdsmHost], Awaitable[str]],
    ) -> Task:
        """Send a task-creating verb to the pool's SPM and record the task durably."""
        spm = await self.ctx.hosts.spm(pool)
        task = Task(new_id(), self.job.id, self.record.id, spm, pool, verb)
        await self.registry.add_task(task)  # committed before the verb leaves
        if self.job.status is JobStatus.CANCELLING:
            # the cancel's intent committed meanwhile: the verb is never sent
            self.registry.set_task_status(
                task, TaskStatus.LOST, message="not sent: a cancel was committed first"
            )
            await self.ctx.executor.hold_for_cancel(self.job)
        submit = asyncio.ensure_future(self._submit(task, send))
        try:
            await asyncio.shield(submit)
        except asyncio.CancelledError:
            # A cancel landed while the verb was in flight: let the reply be recorded so the
            # canceller finds the task and stops it, then let the cancel proceed.
            with contextlib.suppress(Exception):
                await submit
            raise
        return task

    async def _submit(self, task: Task, send: Callable[[VdsmHost], Awaitable[str]]) -> None:
        """Send the verb and commit its task id. An error reply, or a reply lost to a timeout,
        marks the placeholder LOST; a task VDSM made anyway is found by the orphan reaper."""
        try:
            vdsm_id = await send(self.vdsm(task.host))
        except VdsmCallError as e:
            self.registry.set_task_status(
                task, TaskStatus.LOST, code=e.vdsm_code, message=e.message
            )
            if e.code == 654:
                self.ctx.hosts.forget_spm(task.pool)
            raise CommandFailed(
                f"{task.verb} on {task.host} failed: [{e.vdsm_code}] {e.message}"
            ) from e
        await self.registry.record_task_id(task, vdsm_id)
        step = self.registry.add_step(
            self.job,
            StepType(_step_type_for(task.verb)),
            f"{task.verb} on {task.host}",
            parent_id=self.ctx.tasks_step.id if self.ctx.tasks_step else None,
            external_id=vdsm_id,
            host=task.host,
        )
        # not POLLING: a fast task may have been reported ENDED while its id was committed
        self.registry.set_task_status(task, task.status, step_id=step.id)
        self.ctx.hosts.watch(task.pool)

    async def wait_tasks(self) -> None:
        """Wait until every task of this command ended; fail if any did not succeed."""
        while True:
            pending = [
                t for t in self.tasks() if t.status in (TaskStatus.SUBMITTING, TaskStatus.POLLING)
            ]
            if not pending:
                break
            await self.registry.wait_changed(self.job.id)
        failed = [t for t in self.tasks() if not task_succeeded(t)]
        if failed:
            t = failed[0]
            raise CommandFailed(
                f"task {t.vdsm_id or t.id} ({t.verb}) on {t.host} ended "
                f"{t.vdsm_result or t.status}: [{t.code}] {t.message}"
            )

    async def revert_tasks(self) -> None:
        """Task.revert on every task that succeeded (children's too), newest first, and wait for
        the rollbacks — the engine's revertTasks."""
        for task in sorted(self.tasks(descendants=True), key=lambda t: t.created_at, reverse=True):
            if task_succeeded(task) and task.vdsm_id and not task.revert_sent:
                await self._revert_on_spm(task)
                self.registry.set_task_status(
                    task, TaskStatus.POLLING, revert_sent=True, vdsm_result=""
                )
                self.ctx.hosts.watch(task.pool)
        while any(t.status is TaskStatus.POLLING for t in self.tasks(descendants=True)):
            await self.registry.wait_changed(self.job.id)
        failed = [
            t
            for t in self.tasks(descendants=True)
            if t.revert_sent and t.vdsm_result != "cleanSuccess"
        ]
        if failed:
            t = failed[0]
            raise CommandFailed(
                f"revert of task {t.vdsm_id} on {t.host} ended "
                f"{t.vdsm_result or t.status}: [{t.code}] {t.message}"
            )

    async def _revert_on_spm(self, task: Task) -> None:
        """Task.revert on the pool's SPM as it is now (the task moves with the role), with
        VDSM's refusals read as task_verbs.py does: a revert repeated after a restart (403/441
        on a task already rolling back) counts as sent, and a 401 from a host that lost the
        role is retried on the new SPM, a few times, since an election takes a moment."""
        for attempt in range(_REVERT_ATTEMPTS):
            try:
                await send_on_spm(self.ctx.hosts, task, TaskVerb.REVERT)
                return
            except NotSpm as e:
                if attempt == _REVERT_ATTEMPTS - 1:
                    raise
                log.info(
                    "job %s [%s]: revert of task %s: %s; retried on the new SPM",
                    self.job.id,
                    self.job.correlation_id,
                    task.vdsm_id,
                    e,
                )
                await asyncio.sleep(self.ctx.executor.settle_retry)


# NotSpm answers a revert accepts before it fails the command: each one re-resolves the SPM
_REVERT_ATTEMPTS = 5


def task_succeeded(task: Task) -> bool:
    return task.status is TaskStatus.ENDED and task.vdsm_result == "success"


_VERB_STEPS = {
    "createVolume": "CREATE_VOLUME",
    "copyImage": "COPY_IMAGE",
    "moveImage": "MOVE_IMAGE",
    "deleteImage": "DELETE_IMAGE",
    "deleteVolume": "DELETE_VOLUME",
}


def _step_type_for(verb: str) -> str:
    return _VERB_STEPS.get(verb, "UNKNOWN")

"""The executor: runs each job's root command as an asyncio Task, through every phase.

Phases of a command (persisted in `command.data["phase"]` so a restart resumes correctly):
validate → execute → wait → end → clear → done. A job ends only after every task it started has
settled on its host (cleared, or handed to the reaper as an orphan) and its locks are released.

Restart recovery closes the engine's gaps (spec/engine-job-model.md §6, §11.6): a job that was
executing when the daemon died is failed cleanly (its known tasks stopped and cleared, unknown
ones left to the orphan reaper); a job that was waiting resumes waiting; a job that was ending
re-runs its (idempotent) end; no job stays STARTED forever and no task row is dropped unended.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

from daemon import model
from daemon.engine.command import CommandBase, CommandContext, CommandFailed
from daemon.engine.policy import ActionSpec
from daemon.engine.task_verbs import TaskVerb, send_on_spm, try_each_on_spm
from daemon.engine.vmwatch import VmWatch
from daemon.errors import DaemonError, InvalidParams, NotFound, UnknownAction
from daemon.model import (
    Command,
    CommandStatus,
    Job,
    JobStatus,
    StepStatus,
    StepType,
    TaskStatus,
    new_id,
)
from daemon.registry import LockConflict, Registry
from daemon.vdsm.errors import VdsmCallError

if TYPE_CHECKING:
    from daemon.engine.cancel import CancelCoordinator
    from daemon.hosts import HostManager

log = logging.getLogger(__name__)

CommandClass = type[CommandBase]
_RESUMABLE = tuple(
    s for s in JobStatus if s not in model.JOB_TERMINAL and s is not JobStatus.CANCELLING
)
RESUME_CHUNK = 250  # jobs given their first step per pass of the event loop after a restart


class CancelRequested(Exception):
    """Raised at the point of no return when a cancel was committed first."""


class Executor:
    def __init__(
        self,
        registry: Registry,
        hosts: HostManager,
        actions: dict[str, CommandClass],
        *,
        settle_retry: float = 1.0,
    ) -> None:
        self.registry = registry
        self.hosts = hosts
        self.actions = actions
        self.settle_retry = settle_retry
        self.vms = VmWatch()
        self._running: dict[str, asyncio.Task[None]] = {}
        self.committing: set[str] = set()  # jobs whose root command is in its end phase
        self.holding: set[str] = set()  # jobs waiting for their committed cancel to land
        self.cancels: CancelCoordinator | None = None  # set at wiring; CancelJob cancels with it
        self._done_writes: dict[str, asyncio.Future[None]] = {}  # job -> root's "done" commit
        self._closing = False
        # Commands between the start of their execute phase and the queued write of the phase
        # after it, per job. A restart cannot tell how far such a command got (a multi-task
        # command may have more verbs to send), so it ends it as interrupted; a stop therefore
        # lets them reach their next phase first, for up to `close_grace` seconds.
        self._executing: collections.Counter[str] = collections.Counter()
        self._executed = asyncio.Event()  # set whenever no command is executing
        self._executed.set()
        self.close_grace = 5.0
        # Jobs resumed at start wait for their turn here (see `recover`); the pacer opens them.
        self._turns: collections.deque[asyncio.Future[None]] = collections.deque()
        self._pacer: asyncio.Task[None] | None = None
        self.resumed = asyncio.Event()  # every gated job has had its turn (bench, tests)
        self.resume_chunk = RESUME_CHUNK

    # -- submission --------------------------------------------------------------------------

    def spec(self, action: str) -> ActionSpec:
        cls = self.actions.get(action)
        if cls is None:
            raise UnknownAction(
                f"unknown action {action!r}; known: {', '.join(sorted(self.actions))}"
            )
        return cls.spec

    def check(self, action: object, params: object) -> tuple[str, dict[str, Any]]:
        """Check a client's submission: internal actions run only as children, never submitted."""
        if not isinstance(action, str):
            raise InvalidParams("action must be a string")
        spec = self.spec(action)
        if getattr(self.actions[action], "internal", False):
            raise UnknownAction(f"{action} is internal and cannot be submitted")
        return action, spec.check(params if params is not None else {})

    async def submit(
        self,
        action: object,
        params: object,
        *,
        owner: int,
        correlation_id: str | None = None,
        description: str | None = None,
    ) -> Job:
        """Create a job durably and start it; returns once the job is committed."""
        name, clean = self.check(action, params)
        return await self._create(name, clean, owner, correlation_id, description)

    async def submit_batch(
        self, entries: object, *, owner: int, correlation_id: str | None = None
    ) -> list[Job]:
        """The multiple-action runner: every entry is checked first; one job per entry."""
        if not isinstance(entries, list) or not entries:
            raise InvalidParams("batch must be a non-empty list of {action, params}")
        if len(entries) > 10_000:
            raise InvalidParams("batch holds at most 10000 entries")
        checked: list[tuple[str, dict[str, Any]]] = []
        for i, entry in enumerate(entries):
            if not isinstance(entry, dict) or set(entry) - {"action", "params", "description"}:
                raise InvalidParams(f"batch[{i}] must be an object with action and params")
            try:
                checked.append(self.check(entry.get("action"), entry.get("params")))
            except DaemonError as e:
                raise type(e)(f"batch[{i}]: {e.message}") from None
        correlation_id = correlation_id or new_id()
        self._check_tags(correlation_id, None)
        jobs = [self._new_job(name, clean, owner, correlation_id, None) for name, clean in checked]
        await self.registry.create_jobs(jobs)  # one group commit for the whole batch
        for job in jobs:
            self.start_job(job)
        return jobs

    @staticmethod
    def _check_tags(correlation_id: object, description: object) -> None:
        if correlation_id is not None and (
            not isinstance(correlation_id, str) or not 0 < len(correlation_id) <= 50
        ):
            raise InvalidParams("correlation_id must be a string of 1 to 50 characters")
        if description is not None and (
            not isinstance(description, str) or len(description) > 4096
        ):
            raise InvalidParams("description must be a string of at most 4096 characters")

    def _new_job(
        self,
        action: str,
        params: dict[str, Any],
        owner: int,
        correlation_id: str | None,
        description: str | None,
    ) -> Job:
        """A job and its root command, the command queued for the job's commit."""
        job = Job(
            new_id(),
            action,
            params,
            owner,
            correlation_id or new_id(),
            description or self.actions[action].spec.description,
        )
        root = Command(new_id(), job.id, action, params, root_id="", hidden=False)
        root.root_id = root.id
        root.data["phase"] = "validate"
        self.registry.add_command(root)
        return job

    async def _create(
        self,
        action: str,
        params: dict[str, Any],
        owner: int,
        correlation_id: str | None,
        description: str | None,
        *,
        start: bool = True,
    ) -> Job:
        self._check_tags(correlation_id, description)
        job = self._new_job(action, params, owner, correlation_id, description)
        await self.registry.create_job(job)  # the command commits in the same batch
        if start:
            self.start_job(job)
        return job

    def start_job(self, job: Job, turn: asyncio.Future[None] | None = None) -> None:
        """Run the job as an asyncio task; with `turn`, its first step waits for that future.

        The task exists from now on either way, so a cancel or a shutdown finds it in
        `running_task` and cancels it exactly as it would a running job."""
        task = asyncio.create_task(self._run_job(job, turn), name=f"job-{job.id}")
        self._running[job.id] = task
        task.add_done_callback(lambda _: self._running.pop(job.id, None))

    def running_task(self, job_id: str) -> asyncio.Task[None] | None:
        return self._running.get(job_id)

    # -- running -----------------------------------------------------------------------------

    def root_of(self, job: Job) -> Command:
        for cmd in self.registry.commands.get(job.id, {}).values():
            if cmd.parent_id is None:
                return cmd
        raise NotFound(f"job {job.id} has no root command")

    def context(self, job: Job) -> CommandContext:
        return CommandContext(self.registry, self.hosts, self, job)

    async def _run_job(self, job: Job, turn: asyncio.Future[None] | None = None) -> None:
        if turn is not None:
            await turn  # cancelled here, the job is left as committed: it never stepped
        root = self.root_of(job)
        ctx = self.context(job)
        log.info(
            "job %s [%s] %s: running (phase %s)",
            job.id,
            job.correlation_id,
            job.action,
            root.data.get("phase"),
        )
        try:
            if root.data.get("interrupted") and root.data.get("phase") == "end":
                await self._stop_running(job)
            ok, error, result = await self.run_command(ctx, root, top=True)
        except asyncio.CancelledError:
            raise  # the cancel coordinator (or shutdown) owns the rest
        except CancelRequested:
            return  # a cancel was committed before end: the coordinator carries it out
        except Exception as e:  # a bug: the job must still end, with the reason
            log.exception("job %s [%s]: unexpected error", job.id, job.correlation_id)
            ok, error, result = False, f"internal error: {e}", None
        finally:
            done_write = self._done_writes.pop(job.id, None)
        await self.settle(job)
        if done_write is not None:
            try:
                await done_write  # committed by now, or soon: it was queued before settling
            except Exception as e:  # the store failed; the job's end below reports it too
                log.error("job %s [%s]: phase done not saved: %s", job.id, job.correlation_id, e)
        self._end_commands(job, ok)
        self.registry.release_locks(job.id)
        if job.status in model.JOB_TERMINAL:
            return
        status = JobStatus.FINISHED if ok else JobStatus.FAILED
        self.committing.discard(job.id)
        await self.registry.set_job_status(job, status, error=error, result=result)
        log.info("job %s [%s] %s: %s %s", job.id, job.correlation_id, job.action, status, error)

    async def run_command(
        self, ctx: CommandContext, record: Command, *, top: bool = False
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Drive one command through its phases; returns (succeeded, error, result)."""
        command = self.actions[record.action](ctx, record)
        show = top or not command.hidden
        job = ctx.job
        phase = record.data.get("phase", "validate")
        error = str(record.data.get("error", ""))

        if phase == "validate":
            step = self.registry.add_step(job, StepType.VALIDATING, "Validating") if show else None
            try:
                self.registry.acquire_locks(job, command.locks())
                await command.validate()
            except (DaemonError, CommandFailed, LockConflict, VdsmCallError) as e:
                if step:
                    self.registry.end_step(step, StepStatus.FAILED)
                self.registry.set_command_status(record, CommandStatus.ENDED_WITH_FAILURE)
                message = e.message if isinstance(e, DaemonError | VdsmCallError) else str(e)
                return False, f"validation failed: {message}", None
            if step:
                self.registry.end_step(step, StepStatus.FINISHED)
            await self._phase(record, "execute")
            phase = "execute"

        if phase == "execute":
            if job.status is JobStatus.CANCELLING:
                await self.hold_for_cancel(job)  # a committed cancel: nothing new starts
            step = self.registry.add_step(job, StepType.EXECUTING, "Executing") if show else None
            if top:
                ctx.tasks_step = step
            self.registry.set_command_status(record, CommandStatus.ACTIVE)
            self._start_executing(job.id)
            try:
                try:
                    await command.execute()
                    written = self._queue_phase(record, "wait")
                    phase = "wait"
                except (CommandFailed, DaemonError, VdsmCallError) as e:
                    error = _message(e)
                    written = self._queue_phase(
                        record, "end", CommandStatus.EXECUTION_FAILED, error=error
                    )
                    phase = "end"
            finally:
                self._stop_executing(job.id)
            await written
            if step:
                self.registry.end_step(
                    step, StepStatus.FINISHED if not error else StepStatus.FAILED
                )

        if phase == "wait":
            if top and ctx.tasks_step is None:
                ctx.tasks_step = self._open_step(job, StepType.EXECUTING)
            for task in command.tasks():
                self.hosts.watch(task.pool)
            try:
                await command.wait()
                waited = CommandStatus.SUCCEEDED
            except (CommandFailed, DaemonError, VdsmCallError) as e:
                error = _message(e)
                waited = CommandStatus.FAILED
            await self._phase(record, "end", waited, error=error)
            phase = "end"

        result: dict[str, Any] | None = None
        if phase == "end" and top:
            # The point of no return: once in `committing`, a cancel comes too late. The check
            # and the mark happen with no await between them, so a cancel either sees the mark
            # or its committed intent is seen here.
            if job.status is JobStatus.CANCELLING and job.id not in self.committing:
                raise CancelRequested(job.id)
            self.committing.add(job.id)
        if phase == "end":
            step = self.registry.add_step(job, StepType.FINALIZING, "Finalizing") if show else None
            try:
                if error:
                    await command.end_with_failure()
                else:
                    result = await command.end_action()
            except (CommandFailed, DaemonError, VdsmCallError) as e:
                error = error or f"end failed: {_message(e)}"
            if step:
                self.registry.end_step(
                    step, StepStatus.FINISHED if not error else StepStatus.FAILED
                )
            final = CommandStatus.ENDED_WITH_FAILURE if error else CommandStatus.ENDED_SUCCESSFULLY
            if record.status is CommandStatus.ACTIVE:  # failed in execute, restarted mid-end
                self.registry.set_command_status(record, CommandStatus.FAILED)
            done_write = self._queue_phase(
                record,
                "done",
                final if record.status not in model.COMMAND_TERMINAL else None,
                result=result,
            )
            if top:
                # Settling (Task.clear) need not wait for this commit: the phase is queued
                # before any settling change, so a restart finds "done" with the tasks as they
                # were, or "end" and runs the idempotent end again. The job waits for it
                # before it ends (`_run_job`); one commit less on the path of every job.
                self._done_writes[job.id] = done_write
            else:
                await done_write
        else:
            result = record.data.get("result")
        return not error, error, result

    async def hold_for_cancel(self, job: Job) -> None:
        """A cancel is committed: start nothing new. The coordinator cancels this coroutine
        (and with it every sibling child); until then it waits here. Raising instead would
        leave a CreateVm's sibling children running on, detached from their gather."""
        self.holding.add(job.id)
        try:
            while job.status is JobStatus.CANCELLING:
                await self.registry.wait_changed(job.id)
        finally:
            self.holding.discard(job.id)
        raise CancelRequested(job.id)

    def _end_commands(self, job: Job, ok: bool) -> None:
        """Children a failure or restart left unfinished end with the job (never left ACTIVE)."""
        for cmd in self.registry.commands.get(job.id, {}).values():
            if cmd.status in model.COMMAND_TERMINAL:
                continue
            if cmd.status is CommandStatus.ACTIVE:
                self.registry.set_command_status(cmd, CommandStatus.FAILED)
            self.registry.set_command_status(cmd, CommandStatus.ENDED_WITH_FAILURE)

    def _open_step(self, job: Job, type_: StepType) -> model.Step | None:
        for step in self.registry.steps.get(job.id, {}).values():
            if step.type is type_ and step.parent_id is None:
                return step
        return None

    def _start_executing(self, job_id: str) -> None:
        self._executing[job_id] += 1
        self._executed.clear()

    def _stop_executing(self, job_id: str) -> None:
        self._executing[job_id] -= 1
        if self._executing[job_id] <= 0:
            del self._executing[job_id]
        if not self._executing:
            self._executed.set()

    async def _phase(
        self, record: Command, phase: str, status: CommandStatus | None = None, **extra: Any
    ) -> None:
        await self._queue_phase(record, phase, status, **extra)

    def _queue_phase(
        self, record: Command, phase: str, status: CommandStatus | None = None, **extra: Any
    ) -> asyncio.Future[None]:
        """Record the command's phase (and `status`, in the same change); the future resolves
        once it is committed."""
        data = {"phase": phase, **{k: v for k, v in extra.items() if v is not None and v != ""}}
        if status is not None:
            return self.registry.set_command_status(record, status, data=data)
        record.data.update(data)
        return self.registry.save_command(record)

    async def run_child(
        self, parent: CommandBase, action: str, params: dict[str, Any], *, sequence: int = 0
    ) -> tuple[bool, str, dict[str, Any] | None]:
        """Run an internal child command to its end (its steps hidden unless it asks)."""
        spec = self.spec(action)
        clean = spec.check(params)
        record = Command(
            new_id(),
            parent.job.id,
            action,
            clean,
            root_id=parent.record.root_id,
            parent_id=parent.record.id,
            sequence=sequence,
        )
        record.data["phase"] = "validate"
        await self.registry.add_command(record)
        return await self.run_command(parent.ctx, record)

    # -- settling: every task cleared or orphaned before the job ends ---------------------------

    async def settle(self, job: Job, *, deadline: float = 300.0) -> None:
        """Stop what still runs, wait for it, clear everything; orphan what cannot be reached.

        Returns as soon as the last task is settled (no trailing retry pause); a round that
        could not reach a host is retried after `settle_retry`, or at the next task report.
        """
        give_up = time.monotonic() + deadline
        while True:
            await self._clear_ended(job)
            for task in self.registry.job_tasks(job.id):
                if task.status in model.TASK_SETTLED or task.status is TaskStatus.ORPHAN:
                    continue
                if task.status is TaskStatus.SUBMITTING:
                    self.registry.set_task_status(
                        task,
                        TaskStatus.LOST,
                        message="creating verb's outcome unknown; any task it made is reaped",
                    )
                    continue
                try:
                    await self._settle_task(task)
                except (VdsmCallError, DaemonError) as e:  # host down, no SPM: retried
                    log.warning(
                        "job %s [%s]: settling task %s on %s: %s",
                        job.id,
                        job.correlation_id,
                        task.vdsm_id,
                        task.host,
                        e,
                    )
            unsettled = [
                t
                for t in self.registry.job_tasks(job.id)
                if t.status not in model.TASK_SETTLED and t.status is not TaskStatus.ORPHAN
            ]
            if not unsettled:
                return
            if time.monotonic() > give_up:
                for task in unsettled:
                    self.registry.set_task_status(task, TaskStatus.ORPHAN)
                return
            if any(t.status is TaskStatus.POLLING for t in unsettled):
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.settle_retry):
                        await self.registry.wait_changed(job.id)
            else:
                await asyncio.sleep(self.settle_retry)

    async def _clear_ended(self, job: Job) -> None:
        """Task.clear for a job's ended tasks in one attempt for them all (a CreateVm with three
        disks: one round trip instead of three in a row). A task this attempt does not settle
        stays CLEARING, and `settle`'s loop sends it again through the full path."""
        ended = self.registry.start_clearing(job.id)
        if len(ended) < 2:
            return  # the full path costs the same for one: `settle`'s loop clears it
        retried = {t.id for t in await try_each_on_spm(self.hosts, ended, TaskVerb.CLEAR)}
        for task in ended:
            if task.id not in retried:
                self.registry.set_task_status(task, TaskStatus.CLEARED)

    async def _stop_running(self, job: Job) -> None:
        """Task.stop to every task an interrupted execute left running, before its end runs:
        its end_with_failure (a revert, say) must not wait for work nobody wants any more.
        A host that cannot be reached now is retried by `settle`."""
        for task in self.registry.job_tasks(job.id):
            if task.status is TaskStatus.POLLING and not task.stop_sent:
                try:
                    await self._settle_task(task)
                except (VdsmCallError, DaemonError) as e:
                    log.warning("job %s: stopping task %s: %s", job.id, task.vdsm_id, e)

    async def _settle_task(self, task: model.Task) -> None:
        """Task.stop of a running task, Task.clear of an ended one, on the pool's SPM as it is
        now; a verb repeated after a restart counts as done once VDSM's refusal says it took
        effect (task_verbs.py). A moved SPM raises NotSpm and the next round asks again."""
        await self._settle_on(task)

    async def _settle_on(self, task: model.Task) -> None:
        assert task.vdsm_id is not None
        if task.status is TaskStatus.POLLING:
            if not task.stop_sent:
                await send_on_spm(self.hosts, task, TaskVerb.STOP)
                # its status as it is now: a poll may have seen it end while the stop was sent
                self.registry.set_task_status(task, task.status, stop_sent=True)
            self.hosts.watch(task.pool)
            return
        if task.status in (TaskStatus.ENDED, TaskStatus.CLEARING):
            if task.status is TaskStatus.ENDED:
                self.registry.set_task_status(task, TaskStatus.CLEARING)
            # a 401 from the SPM: already gone (cleared by an attempt whose reply was lost)
            await send_on_spm(self.hosts, task, TaskVerb.CLEAR)
            self.registry.set_task_status(task, TaskStatus.CLEARED)

    # -- restart --------------------------------------------------------------------------------

    async def recover(self) -> list[str]:
        """Resume every job that was not terminal when the daemon stopped.

        A job waiting for its tasks (phase wait, the bulk after a restart) gets its asyncio
        task now but takes its first step only when `release_resumed` gives it its turn, after
        the API is up: at 10,000 such jobs their first steps took most of a second, and the
        API need not wait for them. Only that phase is deferred: its first step changes nothing
        durable (it subscribes to its tasks' pool and waits), so a cancel or a stop that lands
        before the turn finds the job as a running one in that phase would have left it. Every
        other phase resumes at once, as before."""
        resumed = []
        # Through the status index, not a walk of every job (90 % of them ended at 100,000),
        # in the order they were created, as a walk of the load-ordered jobs would give.
        # Cancelling jobs are the cancel coordinator's to resume.
        jobs, by_status = self.registry.jobs, self.registry.by_status
        waiting = [jobs[i] for s in _RESUMABLE for i in by_status.get(s, ())]
        waiting.sort(key=lambda job: job.created_at)
        for job in waiting:
            root = self.root_of(job)
            phase = root.data.get("phase", "validate")
            # debug: `_run_job` logs the resumed job at info when it runs (one line, not two)
            log.debug(
                "job %s [%s] %s: recovering in phase %s",
                job.id,
                job.correlation_id,
                job.action,
                phase,
            )
            if phase == "validate":
                self._end_open_steps(job, StepStatus.FAILED)
                await self._fail_unstarted(job, root)
                continue
            if phase == "execute":
                self._end_open_steps(job, StepStatus.FAILED)
                for cmd in self.registry.commands.get(job.id, {}).values():
                    if cmd.status is CommandStatus.ACTIVE:
                        self.registry.set_command_status(cmd, CommandStatus.EXECUTION_FAILED)
                await self._phase(
                    root,
                    "end",
                    error="execution interrupted by a daemon restart",
                    interrupted=True,
                )
            # Whatever phase resumes (an end that reverts, a wait, a settle) hears of its
            # running tasks only through the poller, which nothing else starts after a restart.
            for pool in {
                t.pool for t in self.registry.job_tasks(job.id) if t.status is TaskStatus.POLLING
            }:
                self.hosts.watch(pool)
            turn = None
            if phase == "wait":
                turn = asyncio.get_running_loop().create_future()
                self._turns.append(turn)
            self.start_job(job, turn)
            resumed.append(job.id)
        return resumed

    @property
    def unresumed(self) -> int:
        """Jobs resumed at start still waiting for their first step's turn."""
        return sum(1 for turn in self._turns if not turn.done())

    def release_resumed(self) -> None:
        """Give the jobs `recover` deferred their turns, a chunk per pass of the event loop,
        so requests to the API are served between chunks."""
        if self._pacer is None:
            self._pacer = asyncio.create_task(self._pace(), name="resume-pacer")

    async def _pace(self) -> None:
        turns = self._turns
        while turns:
            for _ in range(min(self.resume_chunk, len(turns))):
                turn = turns.popleft()
                if not turn.done():  # a cancelled job's turn is cancelled with it
                    turn.set_result(None)
            await asyncio.sleep(0)  # the chunk's first steps run before the next is opened
        self.resumed.set()

    async def _fail_unstarted(self, job: Job, root: Command) -> None:
        self.registry.set_command_status(root, CommandStatus.ENDED_WITH_FAILURE)
        self.registry.release_locks(job.id)
        await self.registry.set_job_status(
            job,
            JobStatus.FAILED,
            error="interrupted by a daemon restart before execution; nothing was sent to any host",
        )

    def _end_open_steps(self, job: Job, status: StepStatus) -> None:
        for step in self.registry.steps.get(job.id, {}).values():
            if step.status is StepStatus.STARTED and step.external_id is None:
                self.registry.end_step(step, status)

    # -- shutdown -----------------------------------------------------------------------------

    async def close(self) -> None:
        """Stop running jobs' coroutines without ending them: they resume after the next start."""
        self._closing = True
        if self._pacer is not None:
            self._pacer.cancel()  # jobs still waiting for their turn are cancelled below
            with contextlib.suppress(asyncio.CancelledError):
                await self._pacer
        if not self._executed.is_set():
            log.info("stopping: %d jobs finish their execute phase first", len(self._executing))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.close_grace):
                    await self._executed.wait()
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


def _message(e: BaseException) -> str:
    if isinstance(e, DaemonError | VdsmCallError):
        return e.message if isinstance(e, DaemonError) else str(e)
    return str(e)

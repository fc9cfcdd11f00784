"""The cancel coordinator: a committed intent, then coroutine cancellation, then the cleanup.

Order of a cancel (DESIGN.md "Cancellation", rules 1-6):
1. `decide` (cancel_rules.py) accepts or refuses; an accepted intent is written and committed
   (job CANCELLING) before any verb is sent. The API answers after that commit.
2. If the job's root command already entered its end phase (the commit), the cancel came too
   late: the job completes and its record says so. Otherwise the job's asyncio Task is cancelled;
   a task-creating verb in flight still has its task id recorded (command.py).
3. The cleanup runs as its own Task, which the job's one runner waits on without cancelling it
   (`_until_done`), persisting each step a restart could not simply redo (a stop VDSM
   answered is only noted: sent again, it counts as a repeat): Task.stop for the tasks VDSM
   already runs (all of a job's at once, while the job's coroutine unwinds); once it has
   unwound, command-specific cancel verbs (VM.migrateCancel) and Task.stop for the tasks the
   unwinding recorded or an early stop missed; then under revert Task.revert newest first and
   each completed command's compensation, then Task.clear for everything (at once). A host that
   does not answer is retried with backoff until the cancel deadline (job FAILED, tasks
   orphaned); `force` ends the job at once and orphans what is left for the reaper, and a force
   escalation interrupts a cleanup that is waiting on a host.
4. On restart, CANCELLING jobs are picked up again here and carried to the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

from daemon import model
from daemon.engine.cancel_rules import CancelDecision, cancelled_error, decide, refuse
from daemon.engine.command import CommandBase, task_succeeded
from daemon.engine.task_verbs import TaskVerb, send_on_spm, try_each_on_spm
from daemon.errors import DaemonError, NotFound, Unavailable
from daemon.model import (
    CancelMode,
    CancelRecord,
    CommandStatus,
    Job,
    JobStatus,
    StepStatus,
    TaskStatus,
)
from daemon.registry import Registry
from daemon.vdsm.errors import VdsmCallError

if TYPE_CHECKING:
    from daemon.engine.executor import Executor
    from daemon.hosts import HostManager

log = logging.getLogger(__name__)


class CancelRefused(DaemonError):
    """A refused cancel; carries the decision's HTTP status and code."""

    def __init__(self, decision: CancelDecision) -> None:
        super().__init__(decision.reason)
        self.status = decision.status  # type: ignore[misc]
        self.code = decision.code  # type: ignore[misc]


class CancelCoordinator:
    def __init__(
        self,
        registry: Registry,
        hosts: HostManager,
        executor: Executor,
        *,
        deadline: float = 300.0,
        retry: float = 0.5,
    ) -> None:
        self.registry = registry
        self.hosts = hosts
        self.executor = executor
        self.deadline = deadline  # seconds a cancel may wait for unreachable hosts
        self.retry = retry
        self._runners: dict[str, asyncio.Task[None]] = {}
        self._cleanups: dict[str, asyncio.Task[None]] = {}  # not the runner's: tracked apart
        # the cleanups a force escalation interrupts (those that may wait on a host)
        self._interruptible: dict[str, asyncio.Task[None]] = {}
        self._clearing: set[str] = set()  # jobs past their last chance to revert

    # -- requests ----------------------------------------------------------------------------

    async def cancel(
        self,
        job_id: str,
        *,
        mode: CancelMode | None = None,
        reason: str = "",
        force: bool = False,
        requester: int = 0,
        privileged: bool = False,
    ) -> CancelDecision:
        job = self.registry.jobs.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id}")
        root = self.executor.root_of(job)
        spec = self.executor.actions[job.action].spec
        decision = decide(
            action=job.action,
            status=job.status,
            phase=str(root.data.get("phase", "validate")),
            policy=spec.policy,
            mode=mode,
            force=force,
            privileged=privileged,
            existing=job.cancel,
        )
        if (
            decision.accept
            and job.cancel is not None
            and job.cancel.mode is CancelMode.STOP
            and decision.mode is CancelMode.REVERT
            and job.id in self._clearing
        ):
            decision = refuse(
                409,
                "too_late",
                "the stop is already clearing its tasks: work that completed can no longer be "
                "reverted with Task.revert; the stop completes",
            )
        if not decision.accept:
            if decision.status >= 400:
                raise CancelRefused(decision)
            return decision
        assert decision.mode is not None
        if job.cancel is None:
            record = CancelRecord(decision.mode, requester, model.now(), reason, decision.force)
        else:
            record = job.cancel
            record.actions.append(
                {
                    "action": "escalated",
                    "from": record.mode.value,
                    "to": decision.mode.value,
                    "force": decision.force,
                    "by": requester,
                    "at": model.now(),
                }
            )
            record.mode, record.force = decision.mode, decision.force
        await self.registry.record_cancel(job, record)  # rule 1: committed before any verb
        log.info(
            "job %s [%s]: cancel %s%s by uid %d: %s",
            job.id,
            job.correlation_id,
            record.mode.value,
            " (force)" if record.force else "",
            requester,
            reason,
        )
        self._launch(job)
        return decision

    async def cancel_correlated(self, correlation_id: str, **kw: Any) -> list[tuple[str, Any]]:
        """Cancel every job of a batch; each answer is a decision or the refusal's message."""
        outcomes: list[tuple[str, Any]] = []
        for job_id in sorted(self.registry.by_correlation.get(correlation_id, ())):
            try:
                outcomes.append((job_id, await self.cancel(job_id, **kw)))
            except DaemonError as e:
                outcomes.append((job_id, e))
        if not outcomes:
            raise NotFound(f"no job with correlation id {correlation_id!r}")
        return outcomes

    def _launch(self, job: Job) -> None:
        """One runner per job. A force arriving while the runner waits on a host does not start
        a second runner: it interrupts this one's cleanup, and the runner then drops the slow
        path and ends the job (a force before the cleanup started makes it the fast one)."""
        runner = self._runners.get(job.id)
        if runner is not None and not runner.done():
            if job.cancel is not None and job.cancel.force:
                slow = self._interruptible.pop(job.id, None)
                if slow is not None:
                    slow.cancel()
            return
        runner = asyncio.create_task(self._carry_out(job), name=f"cancel-{job.id}")
        self._runners[job.id] = runner
        runner.add_done_callback(lambda _: self._forget_runner(job.id, runner))

    def _forget_runner(self, job_id: str, runner: asyncio.Task[None]) -> None:
        if self._runners.get(job_id) is runner:
            del self._runners[job_id]

    async def recover(self) -> list[str]:
        """Restart: carry every committed cancel to its end (nothing is re-decided)."""
        resumed = []
        for job in list(self.registry.jobs.values()):
            if job.status is JobStatus.CANCELLING and job.cancel is not None:
                if job.cancel.outcome == "too_late":
                    self.executor.start_job(job)  # the commit resumes as any job would
                else:
                    if self._clear_begun(job):
                        self._clearing.add(job.id)
                    self._launch(job)
                resumed.append(job.id)
        return resumed

    def _clear_begun(self, job: Job) -> bool:
        """A stop that had begun clearing before the restart: a task of the job CLEARING or
        CLEARED, none left to stop or wait for. Its resumed cleanup goes to the clear again,
        but maybe only after a while (a command's own cancel verb retried against a host that
        is down); a revert escalation accepted meanwhile would skip the tasks already clearing
        (only ENDED ones are reverted) and end "reverted" with their finished work kept. So it
        is refused from the start, as it was before the restart."""
        assert job.cancel is not None
        if job.cancel.mode is not CancelMode.STOP:
            return False
        tasks = self.registry.job_tasks(job.id)
        return not any(
            t.status in (TaskStatus.POLLING, TaskStatus.SUBMITTING) for t in tasks
        ) and any(t.status in (TaskStatus.CLEARING, TaskStatus.CLEARED) for t in tasks)

    async def close(self) -> None:
        """Shutdown: stop every cancel where it is; each resumes from its committed state after
        the next start (rule 6), so the shielded cleanups are stopped too, before the store
        closes under them."""
        tasks = [*self._runners.values(), *self._cleanups.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait(self, job_id: str) -> None:
        runner = self._runners.get(job_id)
        if runner is not None:
            await asyncio.shield(runner)

    # -- carrying a cancel out -------------------------------------------------------------------

    async def _carry_out(self, job: Job) -> None:
        """Cancel the job's coroutine and run the cleanup as a task of its own, which waits for
        that coroutine to have unwound before it does anything but stop the tasks VDSM already
        runs (`_stop_everything`).

        No wait takes the cancellation of what it waits for: `_until_done` returns when the
        awaited task is done however it ended, and leaves it running if this runner is
        cancelled instead (shutdown), so the runner's own cancellation always propagates
        (prior-art §5: never swallow it). The cleanup is tracked apart so shutdown stops it
        too; it resumes from the committed state after the next start."""
        cancel = job.cancel
        assert cancel is not None
        if job.id in self.executor.committing:
            cancel.outcome, cancel.late = "too_late", True
            cancel.actions.append({"action": "too_late", "phase": "end", "at": model.now()})
            await self.registry.touch_job(job)
            return  # the job completes on its own and ends FINISHED or FAILED
        unwinding = self.executor.running_task(job.id)
        if unwinding is not None and not unwinding.done():
            unwinding.cancel()
        else:
            unwinding = None
        for pool in {t.pool for t in self.registry.job_tasks(job.id)}:
            self.hosts.boost(pool)
        completed = await self._run_cleanup(job, unwinding, interruptible=not cancel.force)
        if not completed and job.status is JobStatus.CANCELLING:
            # forced while the cleanup waited on a host: one attempt at what is left, then the
            # job ends ABORTED and the reaper takes the tasks still on hosts
            await self._run_cleanup(job, unwinding, interruptible=False)

    async def _run_cleanup(
        self, job: Job, unwinding: asyncio.Task[None] | None, *, interruptible: bool
    ) -> bool:
        """Run the cleanup to its end (True), or, if `interruptible`, until a force escalation
        cancels it (False; it has unwound before this returns). The escalation cancels the
        cleanup task itself (`_launch`) rather than setting an event a second task waits on:
        one task per cancel less, in bursts of thousands."""
        cleanup = asyncio.create_task(
            self._cleanup(job, unwinding), name=f"cancel-cleanup-{job.id}"
        )
        self._cleanups[job.id] = cleanup
        if interruptible:
            self._interruptible[job.id] = cleanup
        try:
            await _until_done(cleanup)
            if cleanup.cancelled():
                return False
            if (error := cleanup.exception()) is not None:  # _cleanup ends the job on errors
                log.error("job %s: cancel cleanup failed: %r", job.id, error, exc_info=error)
            return True
        finally:
            if self._interruptible.get(job.id) is cleanup:
                del self._interruptible[job.id]
            if self._cleanups.get(job.id) is cleanup:
                del self._cleanups[job.id]

    async def _cleanup(self, job: Job, unwinding: asyncio.Task[None] | None) -> None:
        """`unwinding`: the job's coroutine, cancelled and maybe still unwinding."""
        cancel = job.cancel
        assert cancel is not None
        give_up = cancel.requested_at + self.deadline
        try:
            if cancel.force:
                # one attempt each, no waiting: what does not answer is orphaned for the reaper
                with contextlib.suppress(_Unreachable, VdsmCallError, DaemonError):
                    await self._stop_everything(job, unwinding, give_up=time.time())
                await self._finish(job, JobStatus.ABORTED, "forced", orphan=True)
                return
            await self._stop_everything(job, unwinding, give_up=give_up)
            if cancel.mode is CancelMode.REVERT:
                await self._revert(job, give_up)
            await self._clear(job, give_up)
        except _Unreachable as e:
            await self._finish(job, JobStatus.FAILED, "failed", orphan=True, error=str(e))
            return
        except (VdsmCallError, DaemonError) as e:
            await self._finish(
                job,
                JobStatus.FAILED,
                "failed",
                orphan=True,
                error=f"cancel could not complete: {e}",
            )
            return
        except Exception as e:  # a bug: the job must still end, never stay CANCELLING
            log.exception("job %s: cancel failed unexpectedly", job.id)
            await self._finish(
                job, JobStatus.FAILED, "failed", orphan=True, error=f"cancel failed: {e!r}"
            )
            return
        outcome = "reverted" if cancel.mode is CancelMode.REVERT else "stopped"
        await self._finish(job, JobStatus.ABORTED, outcome)

    def _commands(self, job: Job, method: str) -> list[CommandBase]:
        """Command objects of the job whose class has its own `method` (on_cancel, compensate;
        the base ones do nothing), deepest first (children end before their parent). Only
        those are built: a burst of a thousand cancelled jobs of four commands each built and
        sorted them all, twice, for none to do anything."""
        actions = self.executor.actions
        by_id = self.registry.commands.get(job.id, {})
        records = [r for r in by_id.values() if _overrides(actions[r.action], method)]
        if not records:
            return []

        def depth(r: model.Command) -> int:
            d = 0
            while r.parent_id is not None and r.parent_id in by_id:
                r, d = by_id[r.parent_id], d + 1
            return d

        ctx = self.executor.context(job)
        ordered = sorted(records, key=lambda r: (-depth(r), -r.sequence, -r.created_at))
        return [actions[r.action](ctx, r) for r in ordered]

    async def _stop_everything(
        self, job: Job, unwinding: asyncio.Task[None] | None, *, give_up: float
    ) -> None:
        """Stop what the job runs, then wait for every task of it to have ended.

        The tasks VDSM already runs are stopped at once, while the job's coroutine unwinds
        (in a burst of cancels each takes several loop iterations, so the stops no longer wait
        for all of them); everything else waits for the unwinding: commands' own cancel verbs,
        placeholders whose verb never answered, and the tasks whose ids the unwinding still
        recorded (a verb in flight, rule 3), stopped then."""
        cancel = job.cancel
        assert cancel is not None
        if unwinding is not None and not unwinding.done():
            try:
                # one attempt each, no retry: whatever fails is stopped again below, once the
                # unwinding is over (nothing else may run before that, whatever happens here)
                with contextlib.suppress(_Unreachable, VdsmCallError, DaemonError):
                    await self._stop_running(job, give_up=0.0)
            finally:
                await _until_done(unwinding)
        for command in self._commands(job, "on_cancel"):
            if command.record.status in model.COMMAND_TERMINAL:
                continue
            done = await self._retrying(give_up, lambda c=command: c.on_cancel(cancel.mode))
            if command.record.data.get("completed_before_cancel"):
                cancel.late = True  # its work completed before the cancel reached it
            for what in done:
                cancel.actions.append(
                    {"action": what, "command": command.record.id, "at": model.now()}
                )
        for task in self.registry.job_tasks(job.id):
            if task.status is TaskStatus.SUBMITTING:
                self.registry.set_task_status(
                    task, TaskStatus.LOST, message="verb outcome unknown; reaped if it exists"
                )
        await self._stop_running(job, give_up=give_up)
        await self._wait_tasks(job, give_up)
        if any(task_succeeded(t) and not t.revert_sent for t in self.registry.job_tasks(job.id)):
            cancel.late = True  # some work completed before the stop arrived

    async def _stop_running(self, job: Job, *, give_up: float) -> None:
        """Task.stop for every task of the job VDSM runs that was not stopped yet, at once.

        Each stop is on record in its task (`stop_sent`); the job's record of them is written
        with its next change, not committed here as well: a crash before that sends the stop
        again after the restart, which VDSM answers as a repeat (task_verbs.py)."""
        cancel = job.cancel
        assert cancel is not None
        running = [
            t
            for t in self.registry.job_tasks(job.id)
            if t.status is TaskStatus.POLLING and not t.stop_sent and t.vdsm_id
        ]
        if running:
            await self._send_each(cancel, running, TaskVerb.STOP, give_up, self._stopped)
        for pool in {task.pool for task in running}:
            self.hosts.boost(pool)  # poll soon for the aborts, even after a long retry

    async def _send_each(
        self,
        cancel: CancelRecord,
        tasks: list[model.Task],
        verb: TaskVerb,
        give_up: float,
        done: Callable[[CancelRecord, model.Task], None],
    ) -> None:
        """`verb` for every task: one attempt for all at once, then the full path (retried,
        VDSM's refusals read, task_verbs.py) for each task that attempt did not settle. `done`
        records a task as settled."""
        left = await try_each_on_spm(self.hosts, tasks, verb)
        retried = {task.id for task in left}
        for task in tasks:
            if task.id not in retried:
                done(cancel, task)

        async def full_path(task: model.Task) -> None:
            await self._retrying(give_up, lambda: send_on_spm(self.hosts, task, verb))
            done(cancel, task)

        await _all(full_path(task) for task in left)

    def _stopped(self, cancel: CancelRecord, task: model.Task) -> None:
        # not a write of its own: a restart sends the stop again, and VDSM takes it as a repeat
        self.registry.note_task(task, stop_sent=True)
        cancel.actions.append(
            {"action": "stopped", "task": task.vdsm_id, "host": task.host, "at": model.now()}
        )

    async def _revert(self, job: Job, give_up: float) -> None:
        cancel = job.cancel
        assert cancel is not None
        tasks = sorted(self.registry.job_tasks(job.id), key=lambda t: t.created_at, reverse=True)
        for task in tasks:
            if task_succeeded(task) and not task.revert_sent and task.vdsm_id:
                vdsm_id, host = task.vdsm_id, task.host
                await self._retrying(
                    give_up, lambda t=task: send_on_spm(self.hosts, t, TaskVerb.REVERT)
                )
                self.registry.set_task_status(
                    task, TaskStatus.POLLING, revert_sent=True, vdsm_result=""
                )
                cancel.actions.append(
                    {"action": "reverted", "task": vdsm_id, "host": host, "at": model.now()}
                )
                self.hosts.watch(task.pool)
                await self._wait_tasks(job, give_up)
        for command in self._commands(job, "compensate"):
            done = await self._retrying(give_up, command.compensate)
            for what in done:
                cancel.actions.append(
                    {"action": what, "command": command.record.id, "at": model.now()}
                )
        # Queued, not waited for: the store commits in order, so no later change of the job
        # (a clear, its end) is on disk without this one; a crash before it runs the
        # (idempotent) compensations again. Waiting held every reverting job for a commit.
        self.registry.touch_job(job)

    async def _clear(self, job: Job, give_up: float) -> None:
        cancel = job.cancel
        assert cancel is not None
        self._clearing.add(job.id)  # from here an escalation to revert is refused
        ended = self.registry.start_clearing(job.id)
        if ended:
            await self._send_each(cancel, ended, TaskVerb.CLEAR, give_up, self._cleared)

    def _cleared(self, cancel: CancelRecord, task: model.Task) -> None:
        self.registry.set_task_status(task, TaskStatus.CLEARED)
        cancel.actions.append(
            {"action": "cleared", "task": task.vdsm_id, "host": task.host, "at": model.now()}
        )

    async def _wait_tasks(self, job: Job, give_up: float) -> None:
        """Until no task of the job is POLLING (the poller's reports wake this), or the cancel
        deadline. One timer for the whole wait rather than one per wake-up: every report of
        any of the job's tasks wakes it, several times per task in a burst."""

        def running() -> bool:
            return any(t.status is TaskStatus.POLLING for t in self.registry.job_tasks(job.id))

        try:
            async with asyncio.timeout(max(0.0, give_up - time.time())):
                while running():
                    await self.registry.wait_changed(job.id)
        except TimeoutError:
            if running():
                raise _Unreachable(
                    "cancel deadline passed while tasks were still running"
                ) from None

    async def _retrying(self, give_up: float, call: Any) -> Any:
        """Retry a verb while its host cannot be reached, until the cancel deadline."""
        delay = self.retry
        while True:
            try:
                return await call()
            except Unavailable as e:  # no SPM right now (lost, being elected)
                if time.time() > give_up:
                    raise _Unreachable(f"no SPM until the cancel deadline: {e.message}") from e
                log.warning("cancel: %s; retrying in %.1fs", e, delay)
            except VdsmCallError as e:
                if e.vdsm_code not in _RETRIED or time.time() > give_up:
                    if e.vdsm_code in _RETRIED:
                        raise _Unreachable(
                            f"host {e.host} unreachable until the cancel deadline: {e.message}"
                        ) from e
                    raise
                log.warning("cancel: %s; retrying in %.1fs", e, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)

    async def _finish(
        self, job: Job, status: JobStatus, outcome: str, *, orphan: bool = False, error: str = ""
    ) -> None:
        cancel = job.cancel
        assert cancel is not None
        for task in self.registry.job_tasks(job.id):
            if task.status not in model.TASK_SETTLED and task.status is not TaskStatus.ORPHAN:
                if orphan and task.vdsm_id:
                    self.registry.set_task_status(task, TaskStatus.ORPHAN)
                elif task.status is TaskStatus.SUBMITTING or not task.vdsm_id:
                    self.registry.set_task_status(task, TaskStatus.LOST)
        for record in self.registry.commands.get(job.id, {}).values():
            if record.status not in model.COMMAND_TERMINAL or (
                cancel.mode is CancelMode.REVERT
                and record.status is CommandStatus.ENDED_SUCCESSFULLY
                and status is JobStatus.ABORTED
            ):
                self.registry.set_command_status(record, CommandStatus.CANCELLED)
        for step in self.registry.steps.get(job.id, {}).values():
            if step.status is StepStatus.STARTED:
                self.registry.end_step(step, StepStatus.ABORTED)
        self.registry.release_locks(job.id)
        self._clearing.discard(job.id)
        cancel.outcome, cancel.ended_at = outcome, model.now()
        if job.status is JobStatus.CANCELLING:
            await self.registry.set_job_status(
                job, status, error=error or cancelled_error(cancel.mode, cancel.reason)
            )
        log.info("job %s [%s]: cancel ended %s (%s)", job.id, job.correlation_id, status, outcome)


async def _until_done(task: asyncio.Future[Any]) -> None:
    """Wait until `task` is done, however it ends, taking neither its result nor its
    cancellation; the waiter's own cancellation propagates and leaves `task` running. What
    `asyncio.wait({task})` does, without its sets, counter and timeout bookkeeping: a burst of
    cancels makes two such waits per job."""
    if task.done():
        return
    waiter = task.get_loop().create_future()

    def wake(_: asyncio.Future[Any]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        task.remove_done_callback(wake)


def _overrides(command: type[CommandBase], method: str) -> bool:
    """Whether a command class has its own `method` (on_cancel, compensate): the base ones do
    nothing, and a burst of cancels awaited thousands of them through `_retrying`."""
    return getattr(command, method) is not getattr(CommandBase, method)


async def _all(calls: Iterable[Awaitable[None]]) -> None:
    """Send one verb per task at once: a job's tasks cost one round trip, not one each. Every
    call ends (and records what it did) before the first failure is raised, so no verb is left
    in flight behind the error."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result


# unreachable (client side), VDSM starting, not SPM (moved): retried until the cancel deadline
_RETRIED = (5022, 99, 654)


class _Unreachable(Exception):
    """A host stayed unreachable past the cancel deadline."""

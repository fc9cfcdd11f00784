"""Task.stop / Task.revert / Task.clear of one of a job's SPM tasks, for every caller.

Every sender of these verbs goes through here: the executor when a job settles its tasks (stop
what still runs, clear what ended), a failed command's revert (`CommandBase.revert_tasks`), the
cancel coordinator, and the orphan reaper (which knows a host and a task id, not a Task: it uses
`send_to_spm`). They share two facts of real VDSM:

* An SPM task lives with the pool, not with the host that started it: the verb goes to the pool's
  SPM as it is now, and a host that just lost the role answers 401 for every task of the pool,
  though the next SPM recovers them from storage. A 401 is "the task is gone" only once
  getSpmStatus confirms the host still holds the role; otherwise the verb is retried on the new
  SPM (raised as 654, which every caller already retries).
* A verb may reach VDSM twice: the daemon can die after sending it and before its record
  committed, and the restarted daemon sends it again. VDSM refuses the repeat, and the refusal
  means the first one took effect: a stop of a task already aborting answers 411; a clear of a
  task already cleared answers 401; a revert of a task already rolling back (403) or rolled back
  (441) is confirmed by the task's state (Task.getStatus) before it counts as sent.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from typing import TYPE_CHECKING

from daemon import model
from daemon.errors import DaemonError
from daemon.vdsm.errors import (
    NotSpm,
    TaskAborted,
    TaskNotFinished,
    TaskStateTransitionError,
    UnknownTask,
    VdsmCallError,
)

if TYPE_CHECKING:
    from daemon.hosts import HostManager
    from daemon.vdsm.verbs import VdsmHost

log = logging.getLogger(__name__)


class TaskVerb(StrEnum):
    """A verb on an existing task; the value names the `VdsmHost` method that sends it."""

    STOP = "stop_task"  # Task.stop: abort a running task (VDSM rolls back what it did)
    REVERT = "revert_task"  # Task.revert: roll back a task that succeeded
    CLEAR = "clear_task"  # Task.clear: drop an ended task from the host's table


# The JSON-RPC method of each verb (`VdsmHost.each_task` sends them for several tasks at once).
_METHODS = {
    TaskVerb.STOP: "Task.stop",
    TaskVerb.REVERT: "Task.revert",
    TaskVerb.CLEAR: "Task.clear",
}


class Refusal(StrEnum):
    """What VDSM's error answer to a task verb means for the caller."""

    DONE = "done"  # a repeat of a verb that took effect: count it as sent
    CHECK_ROLE = "check_role"  # 401: gone only if the host is still the SPM
    CHECK_STATE = "check_state"  # ambiguous: the task's state says whether it was a repeat
    FAILED = "failed"  # a real refusal: raised to the caller


def refusal(verb: TaskVerb, error: VdsmCallError) -> Refusal:
    """Classify VDSM's error answer to `verb` (pure: no I/O)."""
    if isinstance(error, UnknownTask):
        return Refusal.CHECK_ROLE
    if verb is TaskVerb.STOP and isinstance(error, TaskAborted):
        return Refusal.DONE
    if verb is TaskVerb.REVERT and isinstance(error, TaskNotFinished | TaskStateTransitionError):
        return Refusal.CHECK_STATE
    return Refusal.FAILED


async def send_on_spm(hosts: HostManager, task: model.Task, verb: TaskVerb) -> None:
    """Send `verb` for `task` to the pool's current SPM; return once it took effect (now or
    before a restart). Raises NotSpm (retry: the role moved) or VDSM's refusal."""
    assert task.vdsm_id is not None
    spm = await hosts.spm(task.pool)
    if spm != task.host:
        log.info(
            "job %s: task %s was started on %s; the pool's SPM is now %s",
            task.job_id,
            task.vdsm_id,
            task.host,
            spm,
        )
    await send_to_spm(hosts, spm, task.pool, task.vdsm_id, verb, about=f"job {task.job_id}")


async def try_each_on_spm(
    hosts: HostManager, tasks: Sequence[model.Task], verb: TaskVerb
) -> list[model.Task]:
    """One attempt at `verb` for every task at once, on its pool's SPM as now known; returns
    the tasks whose attempt VDSM did not simply accept (or that had no VDSM id to send it
    for). The caller sends those
    through `send_on_spm`, which reads each refusal (a repeat, a moved role) and is retried: a
    verb that did reach VDSM before its error (a timeout) is then a repeat, which that path
    counts as done. The fast path of a burst (no asyncio task per verb); never a second
    meaning for any answer."""
    by_pool: dict[str, list[tuple[model.Task, str]]] = {}
    left: list[model.Task] = []
    for task in tasks:
        if task.vdsm_id is None:
            left.append(task)  # nothing to send it for: the full path says so
        else:
            by_pool.setdefault(task.pool, []).append((task, task.vdsm_id))
    for pool, pairs in by_pool.items():
        group = [task for task, _ in pairs]
        try:
            spm = await hosts.spm(pool)
            outcomes = await hosts.vdsm(spm).each_task(_METHODS[verb], [i for _, i in pairs])
        except (DaemonError, VdsmCallError):  # no SPM now, no connection: the full path waits
            left.extend(group)
            continue
        if any(isinstance(o, NotSpm) for o in outcomes):
            hosts.forget_spm(pool)  # moved: the full path finds the new one
        left.extend(task for task, outcome in zip(group, outcomes, strict=True) if outcome)
    return left


async def send_to_spm(
    hosts: HostManager, spm: str, pool: str, vdsm_id: str, verb: TaskVerb, *, about: str
) -> Refusal | None:
    """Send `verb` for the task `vdsm_id` of `pool` to `spm`, the host the caller resolved as
    the pool's SPM (the orphan reaper knows a host, not a Task). Returns None if VDSM accepted
    it, or the refusal that counts as done (a repeat, or a task gone from a host that is still
    SPM); raises NotSpm (the role moved: retry) or VDSM's real refusal. `about` starts the log
    lines (the job, or "reaper")."""
    vdsm = hosts.vdsm(spm)
    try:
        await getattr(vdsm, verb.value)(vdsm_id)
    except NotSpm:
        hosts.forget_spm(pool)  # moved again: rediscovered on the next attempt
        raise
    except VdsmCallError as e:
        meaning = refusal(verb, e)
        if meaning is Refusal.CHECK_ROLE:
            await confirm_still_spm(hosts, spm, pool, e)
            if verb is TaskVerb.REVERT:
                raise  # a task to roll back must exist
            log.info("%s: task %s is gone from the SPM (%s repeated)", about, vdsm_id, verb.value)
        elif meaning is Refusal.CHECK_STATE:
            if not await _already_reverted(vdsm, vdsm_id, about):
                raise  # not a repeat: the task is as it was, and VDSM refused the revert
        elif meaning is Refusal.FAILED:
            raise
        else:
            log.info("%s: task %s was already aborting (stop repeated)", about, vdsm_id)
        return meaning
    return None


async def confirm_still_spm(hosts: HostManager, spm: str, pool: str, error: VdsmCallError) -> None:
    """A 401 (for any task call) from a host that lost the role while the call was on its way
    says nothing of the task: the next SPM recovers it from storage. Raise NotSpm then, so the
    caller retries on the new SPM instead of taking the task as gone."""
    status, _, _ = await hosts.vdsm(spm).spm_status(pool)
    if status != "SPM":
        hosts.forget_spm(pool)
        raise NotSpm(654, f"{spm} is {status} now: {error.message}", error.method, spm) from error


async def _already_reverted(vdsm: VdsmHost, vdsm_id: str, about: str) -> bool:
    """403/441 to a revert: a repeat if the task is rolling back or rolled back; a task still
    finished with success means VDSM refused this revert."""
    report = await vdsm.task_status(vdsm_id)
    if report.state == "finished" and report.result == "success":
        return False
    log.info(
        "%s: task %s was already reverted (%s %s; revert repeated)",
        about,
        vdsm_id,
        report.state,
        report.result,
    )
    return True

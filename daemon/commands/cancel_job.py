"""CancelJob: a cancel submitted and audited like any action (the seed's CancelTaskCommand).

The command hands the request to the cancel coordinator, exactly as `POST /api/v1/jobs/{id}/cancel`
does (same decision, same committed intent), then waits for the target to end and records what
the cancel did: tasks stopped, reverted and cleared, commands' own actions, children that never
ran. It ends FINISHED when the target ended by the cancel (ABORTED), FAILED with the reason
otherwise: a refusal (the target already ended, too late, a mode its policy does not allow) or a
cancel that could not complete. Who may cancel is checked where the caller is known, at the API
(`daemon/api/cancel_routes.py`); the requester recorded on the target is the CancelJob's owner.
"""

from __future__ import annotations

from typing import Any

from daemon import model
from daemon.engine.cancel import CancelRefused
from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import NotFound, Unavailable
from daemon.model import CancelMode, Job, JobStatus


class CancelJob(CommandBase):
    spec = ActionSpec(
        "CancelJob",
        "Cancel another job; this job records what the cancel did",
        {
            "job": Param("uuid", description="the job to cancel"),
            "mode": Param("mode", description="stop or revert"),
            "reason": Param("str", required=False, description="why, for the target's record"),
        },
        CancelPolicy(
            cancellable=False,
            modes=frozenset(),
            notes="a committed cancel intent is carried to its end (DESIGN rule 1): cancelling "
            "the CancelJob would not stop it, so it is refused",
        ),
    )

    def _target(self) -> Job:
        target = self.registry.jobs.get(self.params["job"])
        if target is None:
            raise NotFound(f"no job {self.params['job']}")
        return target

    async def validate(self) -> None:
        if self._target().id == self.job.id:
            raise CommandFailed("a CancelJob cannot cancel itself")

    async def execute(self) -> None:
        """Nothing: the request is sent from `wait`, which a restart resumes (a restart in
        execute fails the job, which would disown a cancel already committed on the target)."""

    async def wait(self) -> None:
        target = self._target()
        await self._request(target)
        while target.status not in model.JOB_TERMINAL:
            await self.registry.wait_changed(target.id)
        summary = cancel_summary(self.registry.job_view(target.id), target)
        await self.remember(summary=summary)
        if target.status is not JobStatus.ABORTED:
            raise CommandFailed(
                f"job {target.id} ended {target.status.value}, not by the cancel"
                + (f": {target.error}" if target.error else "")
            )

    def _tag(self) -> str:
        return f"[CancelJob {self.job.id}]"

    async def _request(self, target: Job) -> None:
        """Hand the cancel to the coordinator once, and remember its answer.

        After a restart between the coordinator's commit and that answer, the target's cancel
        record carries this job's tag: the cancel was ours and is not asked again (it would
        now read "already cancelling", or "already ended" once the target ended).
        """
        refused = self.data("refused")
        if refused is not None:
            raise CommandFailed(
                f"cancel of job {target.id} refused ({refused['code']}): {refused['reason']}"
            )
        if self.data("decision") is not None:
            return
        if target.cancel is not None and self._tag() in target.cancel.reason:
            await self.remember(
                decision={
                    "accepted": True,
                    "status": 202,
                    "reason": "accepted (recovered after a restart)",
                    "mode": target.cancel.mode.value,
                }
            )
            return
        coordinator = self.ctx.executor.cancels
        if coordinator is None:
            raise Unavailable("the cancel coordinator is not running")
        reason = self.params.get("reason") or ""
        try:
            decision = await coordinator.cancel(
                target.id,
                mode=CancelMode(self.params["mode"]),
                reason=f"{reason} {self._tag()}".lstrip(),
                requester=self.job.owner,
            )
        except CancelRefused as e:
            await self.remember(refused={"status": e.status, "code": e.code, "reason": e.message})
            raise CommandFailed(f"cancel of job {target.id} refused ({e.code}): {e.message}") from e
        await self.remember(
            decision={
                "accepted": decision.accept,
                "status": decision.status,
                "reason": decision.reason,
                "mode": decision.mode.value if decision.mode else None,
            }
        )

    async def end_action(self) -> dict[str, Any]:
        return dict(self.data("summary") or {})


_TASK_ACTIONS = ("stopped", "reverted", "cleared")  # listed by task in the summary


def cancel_summary(view: dict[str, Any], target: Job) -> dict[str, Any]:
    """What a cancel did to its target, from the target's cancel record and commands."""
    cancel = target.cancel
    actions: list[dict[str, Any]] = list(cancel.actions) if cancel else []

    def tasks(kind: str) -> list[str]:
        return [str(a["task"]) for a in actions if a.get("action") == kind and "task" in a]

    acted_on = {a.get("command") for a in actions}
    task_owners = {t["command_id"] for t in view["tasks"]}
    not_run = [
        {"command": c["id"], "action": c["action"]}
        for c in view["commands"]
        if c["parent_id"] is not None
        and c["data"].get("phase", "validate") in ("validate", "execute")
        and c["id"] not in task_owners
        and c["id"] not in acted_on
        and c["status"] in ("CANCELLED", "NOT_STARTED")
    ]
    return {
        "job": target.id,
        "status": target.status.value,
        "mode": cancel.mode.value if cancel else None,
        "outcome": cancel.outcome if cancel else None,
        "late": cancel.late if cancel else False,
        "tasks_stopped": tasks("stopped"),
        "tasks_reverted": tasks("reverted"),
        "tasks_cleared": tasks("cleared"),
        "children_not_run": not_run,
        "other_actions": [
            str(a["action"]) for a in actions if a.get("action") not in _TASK_ACTIONS
        ],
        "error": target.error,
    }

"""Whether a cancel request is accepted, and as what: pure decisions, no I/O.

This is where the seed's open questions get their answers in code: what may be cancelled (the
action's policy), until when (its point of no return, compared with the phase the job's root
command has reached), in which mode (stop may become revert, never the reverse), by whom (force is
for operators), and what a repeated request means (the current state, unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass

from daemon.engine.policy import CancelPolicy
from daemon.model import JOB_TERMINAL, CancelMode, CancelRecord, JobStatus

# The phases a root command goes through, in order (executor.py persists them).
PHASES = ("validate", "execute", "wait", "end", "clear", "done")
# A policy names its point of no return by step; this is the phase that step starts.
_STEP_PHASE = {"VALIDATING": "validate", "EXECUTING": "execute", "FINALIZING": "end"}


@dataclass(frozen=True)
class CancelDecision:
    accept: bool  # the intent is to be written (a new cancel, or an escalation)
    status: int  # HTTP status for the API: 202 accepted, 200 unchanged, 4xx refused
    code: str  # stable error code when refused, "" otherwise
    reason: str  # why, in words an operator can act on
    mode: CancelMode | None = None  # the mode to carry out
    force: bool = False


def refuse(status: int, code: str, reason: str) -> CancelDecision:
    return CancelDecision(False, status, code, reason)


def past_point_of_no_return(policy: CancelPolicy, phase: str) -> bool:
    limit = _STEP_PHASE.get(policy.point_of_no_return, "end")
    return PHASES.index(phase if phase in PHASES else "done") >= PHASES.index(limit)


def decide(
    *,
    action: str,
    status: JobStatus,
    phase: str,
    policy: CancelPolicy,
    mode: CancelMode | None,
    force: bool,
    privileged: bool,
    existing: CancelRecord | None,
) -> CancelDecision:
    """Decide one cancel request. `privileged`: root or the admin group (force needs it)."""
    if status in JOB_TERMINAL:
        return refuse(409, "job_ended", f"the job already ended {status}; nothing was changed")
    if force and not privileged:
        return refuse(403, "forbidden", "force is for operators (root or the admin group)")
    if not policy.cancellable:
        return refuse(409, "not_cancellable", f"{action} cannot be cancelled: {policy.notes}")
    wanted = mode or (existing.mode if existing else policy.default_mode)
    if wanted is CancelMode.FORCE:
        wanted, force = (existing.mode if existing else policy.default_mode), True
        if not privileged:
            return refuse(403, "forbidden", "force is for operators (root or the admin group)")
    if wanted not in policy.modes:
        allowed = ", ".join(sorted(m.value for m in policy.modes))
        return refuse(
            409,
            "mode_not_allowed",
            f"{action} cannot be cancelled with {wanted.value}; allowed: {allowed}",
        )
    if existing is not None:
        escalate_mode = existing.mode is CancelMode.STOP and wanted is CancelMode.REVERT
        escalate_force = force and not existing.force
        if existing.mode is CancelMode.REVERT and wanted is CancelMode.STOP and not escalate_force:
            return refuse(409, "no_downgrade", "a revert is under way; it cannot become a stop")
        if not (escalate_mode or escalate_force):
            return CancelDecision(
                False, 200, "", "already cancelling; nothing changed", existing.mode, existing.force
            )
        return CancelDecision(
            True,
            202,
            "",
            "escalated",
            wanted if escalate_mode else existing.mode,
            force or existing.force,
        )
    if past_point_of_no_return(policy, phase) and not force:
        return refuse(
            409,
            "too_late",
            f"{action} is past its point of no return "
            f"({policy.point_of_no_return}); it will complete",
        )
    return CancelDecision(True, 202, "", "accepted", wanted, force)


def cancelled_error(mode: CancelMode, reason: str) -> str:
    """The error a cancelled job ends with: the mode, then the requester's reason if one was
    given (without one, no dangling colon)."""
    reason = reason.strip()
    return f"cancelled ({mode.value}): {reason}" if reason else f"cancelled ({mode.value})"

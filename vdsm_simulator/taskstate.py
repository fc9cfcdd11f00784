"""The 15 internal states of a VDSM storage task, their legal moves and legacy names.

Kept apart from the engine so the wire layer and tests can use the table without the engine.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final

from vdsm_simulator.errors import TaskStateTransitionError


class State(StrEnum):
    unknown = "unknown"  # unreadable state (e.g. a bad value in a dumped task)
    init = "init"  # created, not prepared yet
    preparing = "preparing"  # the verb runs synchronously in the RPC call
    blocked = "blocked"  # waiting for a resource during prepare
    acquiring = "acquiring"  # job scheduled, resources being taken; moves on to queued
    queued = "queued"  # waiting in the worker pool queue
    running = "running"  # a worker runs the job
    finished = "finished"  # job succeeded (done)
    aborting = "aborting"  # stopped or failed; decides on recovery when the last ref drops
    waitrecover = "waitrecover"  # aborted with manual recovery policy: waits for a revert
    racquiring = "racquiring"  # about to roll back; moves on to recovering
    recovering = "recovering"  # rollback steps run, last pushed first
    raborting = "raborting"  # a rollback step failed or rollback was stopped
    recovered = "recovered"  # rollback completed (done)
    failed = "failed"  # rollback failed or was impossible (done)


S = State


class St:
    """The members of `State` as plain class attributes, for the task engine's hot paths.

    Python 3.11 finds an enum member through `EnumType.__getattr__`'s slot hook: ~250 ns a
    lookup against ~40 for a plain class attribute (3.12 made it cheap again). A stopped task
    made ~40 of them, a tenth of the simulator's CPU in a cancel burst.
    """

    unknown: Final = State.unknown
    init: Final = State.init
    preparing: Final = State.preparing
    blocked: Final = State.blocked
    acquiring: Final = State.acquiring
    queued: Final = State.queued
    running: Final = State.running
    finished: Final = State.finished
    aborting: Final = State.aborting
    waitrecover: Final = State.waitrecover
    racquiring: Final = State.racquiring
    recovering: Final = State.recovering
    raborting: Final = State.raborting
    recovered: Final = State.recovered
    failed: Final = State.failed


# target state <- states it may be entered from
ALLOWED_FROM: dict[State, frozenset[State]] = {
    S.unknown: frozenset(),
    S.init: frozenset(),
    S.preparing: frozenset({S.init, S.blocked}),
    S.blocked: frozenset({S.preparing}),
    S.acquiring: frozenset({S.preparing, S.acquiring}),
    S.queued: frozenset({S.acquiring, S.running}),
    S.running: frozenset({S.queued}),
    S.finished: frozenset({S.running, S.preparing}),
    S.aborting: frozenset({S.preparing, S.blocked, S.acquiring, S.queued, S.running}),
    S.waitrecover: frozenset({S.aborting}),
    S.racquiring: frozenset({S.aborting, S.finished, S.racquiring, S.waitrecover}),
    S.recovering: frozenset({S.racquiring}),
    S.raborting: frozenset({S.racquiring, S.recovering, S.waitrecover}),
    S.recovered: frozenset({S.recovering}),
    S.failed: frozenset({S.recovering, S.aborting, S.raborting}),
}

DONE = frozenset({S.finished, S.recovered, S.failed})
RECOVERING = frozenset({S.racquiring, S.recovering})
ABORTABLE = ALLOWED_FROM[S.aborting]  # a stop moves these to aborting
RECOVERY_ABORTABLE = ALLOWED_FROM[S.raborting]  # ... and these to raborting

# What getStatus / getAllTasksStatuses report (VDSM's deprecated taskState / taskResult).
LEGACY_STATE: dict[State, str] = {
    S.unknown: "unknown",
    S.init: "init",
    S.preparing: "running",
    S.blocked: "running",
    S.acquiring: "running",
    S.queued: "running",
    S.running: "running",
    S.finished: "finished",
    S.aborting: "aborting",
    S.waitrecover: "cleaning",
    S.racquiring: "cleaning",
    S.recovering: "cleaning",
    S.raborting: "aborting",
    S.recovered: "finished",
    S.failed: "finished",
}
LEGACY_RESULT: dict[State, str] = {s: "" for s in State} | {
    S.finished: "success",
    S.recovered: "cleanSuccess",
    S.failed: "cleanFailure",
}


def check_move(current: State, target: State) -> None:
    """Raise 441 unless `target` may be entered from `current`."""
    if current not in ALLOWED_FROM[target]:
        raise TaskStateTransitionError(f"from {current} to {target}")


def parse_state(value: str) -> State:
    """A dumped state name; anything unreadable is `unknown`, as VDSM's State() does."""
    try:
        return State(value)
    except ValueError:
        return State.unknown

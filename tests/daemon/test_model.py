"""The transition tables are the contract every other module relies on."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from daemon import model
from daemon.model import (
    CommandStatus,
    JobStatus,
    StepStatus,
    TaskStatus,
    TransitionError,
    check_command_move,
    check_job_move,
    check_step_move,
    check_task_move,
)


@pytest.mark.parametrize("terminal", sorted(model.JOB_TERMINAL))
def test_terminal_jobs_never_move(terminal: JobStatus) -> None:
    for target in JobStatus:
        with pytest.raises(TransitionError, match=f"job cannot move from {terminal}"):
            check_job_move(terminal, target)


def test_job_cancel_paths() -> None:
    check_job_move(JobStatus.STARTED, JobStatus.CANCELLING)
    for end in (JobStatus.ABORTED, JobStatus.FINISHED, JobStatus.FAILED):
        check_job_move(JobStatus.CANCELLING, end)
    with pytest.raises(TransitionError):
        check_job_move(JobStatus.CANCELLING, JobStatus.STARTED)  # a cancel is never undone
    with pytest.raises(TransitionError):
        check_job_move(JobStatus.STARTED, JobStatus.ABORTED)  # ABORTED only through CANCELLING


def test_every_status_can_reach_an_end() -> None:
    """No record can get stuck: from every status some chain of legal moves ends it."""
    cases: list[tuple[Any, list[Any], frozenset[Any]]] = [
        (check_job_move, list(JobStatus), model.JOB_TERMINAL),
        (check_step_move, list(StepStatus), model.STEP_TERMINAL),
        (check_command_move, list(CommandStatus), model.COMMAND_TERMINAL),
        (check_task_move, list(TaskStatus), model.TASK_SETTLED),
    ]
    for check, statuses, ends in cases:
        for start in statuses:
            seen, frontier = {start}, [start]
            while frontier:
                current = frontier.pop()
                for target in statuses:
                    if target not in seen and _legal(check, current, target):
                        seen.add(target)
                        frontier.append(target)
            assert start in ends or seen & ends, f"{start} cannot reach an end"


def test_settled_tasks_and_terminal_commands_are_final() -> None:
    for s, t in itertools.product(model.TASK_SETTLED, TaskStatus):
        assert not _legal(check_task_move, s, t)
    for c in CommandStatus:
        assert not _legal(check_command_move, CommandStatus.CANCELLED, c)
        assert not _legal(check_command_move, CommandStatus.ENDED_WITH_FAILURE, c)


def test_a_submitting_task_cannot_skip_to_cleared() -> None:
    with pytest.raises(TransitionError, match="task cannot move from SUBMITTING to CLEARED"):
        check_task_move(TaskStatus.SUBMITTING, TaskStatus.CLEARED)


def _legal(check: object, current: object, target: object) -> bool:
    try:
        check(current, target)  # type: ignore[operator]
    except TransitionError:
        return False
    return True


def test_new_ids_are_distinct_version_4_uuids_also_after_a_fork() -> None:
    import os
    import uuid

    ids = [model.new_id() for _ in range(1000)]  # several refills of the random bytes
    assert len(set(ids)) == len(ids)
    assert all(str(uuid.UUID(i)) == i and uuid.UUID(i).version == 4 for i in ids)
    model.new_id()  # the parent holds unused random bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next id must not be one the parent will make
        os.write(write, model.new_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert child_id not in {model.new_id() for _ in range(300)}

"""The cancel decisions (pure): every rule of DESIGN.md "Cancellation" that needs no I/O."""

from __future__ import annotations

import uuid

import pytest

from daemon.commands.create_disk import CreateDisk
from daemon.commands.create_vm import CreateVm
from daemon.engine.cancel_rules import (
    PHASES,
    CancelDecision,
    cancelled_error,
    decide,
    past_point_of_no_return,
)
from daemon.engine.policy import CancelPolicy
from daemon.errors import InvalidParams
from daemon.model import CancelMode, CancelRecord, JobStatus

DEFAULT = CancelPolicy()
STOP_ONLY = CancelPolicy(modes=frozenset({CancelMode.STOP}), point_of_no_return="EXECUTING")


def ask(**kw: object) -> CancelDecision:
    args: dict[str, object] = {
        "action": "CreateDisk",
        "status": JobStatus.STARTED,
        "phase": "wait",
        "policy": DEFAULT,
        "mode": CancelMode.STOP,
        "force": False,
        "privileged": False,
        "existing": None,
    }
    args.update(kw)
    return decide(**args)  # type: ignore[arg-type]


def record(mode: CancelMode, force: bool = False) -> CancelRecord:
    return CancelRecord(mode, 1000, 0.0, force=force)


@pytest.mark.parametrize("status", [JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED])
def test_an_ended_job_is_not_touched(status: JobStatus) -> None:
    d = ask(status=status)
    assert (d.accept, d.status, d.code) == (False, 409, "job_ended")


def test_accepts_with_the_default_mode_when_none_given() -> None:
    d = ask(mode=None)
    assert (d.accept, d.status, d.mode) == (True, 202, CancelMode.STOP)


def test_mode_must_be_allowed_by_the_policy() -> None:
    d = ask(policy=STOP_ONLY, phase="validate", mode=CancelMode.REVERT)
    assert (d.status, d.code) == (409, "mode_not_allowed")
    assert "allowed: stop" in d.reason


def test_point_of_no_return_refuses_unless_forced() -> None:
    assert ask(phase="end").code == "too_late"
    assert ask(policy=STOP_ONLY, phase="execute").code == "too_late"
    assert ask(policy=STOP_ONLY, phase="validate").accept
    forced = ask(phase="end", force=True, privileged=True)
    assert forced.accept and forced.force


def test_force_is_for_operators() -> None:
    assert ask(force=True).status == 403
    assert ask(mode=CancelMode.FORCE).status == 403
    d = ask(mode=CancelMode.FORCE, privileged=True)
    assert (d.accept, d.force, d.mode) == (True, True, CancelMode.STOP)


def test_repeats_are_idempotent_and_stop_escalates_to_revert_only() -> None:
    same = ask(existing=record(CancelMode.STOP))
    assert (same.accept, same.status) == (False, 200)
    up = ask(existing=record(CancelMode.STOP), mode=CancelMode.REVERT)
    assert (up.accept, up.status, up.mode) == (True, 202, CancelMode.REVERT)
    down = ask(existing=record(CancelMode.REVERT), mode=CancelMode.STOP)
    assert (down.accept, down.code) == (False, "no_downgrade")
    # an escalation is accepted even past the point of no return: the cancel began before it
    late = ask(existing=record(CancelMode.STOP), mode=CancelMode.REVERT, phase="end")
    assert late.accept


def test_force_escalates_an_existing_cancel() -> None:
    d = ask(existing=record(CancelMode.REVERT), force=True, privileged=True, mode=None)
    assert (d.accept, d.mode, d.force) == (True, CancelMode.REVERT, True)


def test_not_cancellable_policy() -> None:
    d = ask(policy=CancelPolicy(cancellable=False, notes="it is a cancel itself"))
    assert (d.status, d.code) == (409, "not_cancellable")


def test_phase_order_matches_the_point_of_no_return() -> None:
    assert [past_point_of_no_return(DEFAULT, p) for p in PHASES] == [
        False,
        False,
        False,
        True,
        True,
        True,
    ]
    assert past_point_of_no_return(DEFAULT, "unknown-phase")  # unknown is treated as done


def test_preallocate_is_checked_for_disks_and_create_disk() -> None:
    """VDSM's createVolume `preallocate` names only; anything else is refused with its place."""

    pool, domain = str(uuid.uuid4()), str(uuid.uuid4())
    disk = {"pool": pool, "domain": domain, "size": 4096}
    vm = CreateVm.spec.check(
        {"name": "v", "host": "h", "disks": [disk, {**disk, "preallocate": "PREALLOCATED"}]}
    )
    assert [d.get("preallocate") for d in vm["disks"]] == [None, "PREALLOCATED"]
    with pytest.raises(InvalidParams, match=r"disks'\[0\]\.preallocate"):
        CreateVm.spec.check({"name": "v", "host": "h", "disks": [{**disk, "preallocate": 1}]})
    assert CreateDisk.spec.check({**disk, "preallocate": "SPARSE"})["preallocate"] == "SPARSE"
    with pytest.raises(InvalidParams, match="'SPARSE' or 'PREALLOCATED'"):
        CreateDisk.spec.check({**disk, "preallocate": "sparse"})
    schema = CreateVm.spec.schema()["properties"]["disks"]["items"]
    assert schema["properties"]["preallocate"]["enum"] == ["SPARSE", "PREALLOCATED"]


def test_a_cancelled_jobs_error_names_the_mode_and_any_reason() -> None:
    assert cancelled_error(CancelMode.STOP, "operator asked") == "cancelled (stop): operator asked"
    assert cancelled_error(CancelMode.REVERT, "") == "cancelled (revert)"
    assert cancelled_error(CancelMode.REVERT, "  ") == "cancelled (revert)"

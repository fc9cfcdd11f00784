"""Host jobs follow lib/vdsm/jobs.py: statuses, abort/delete rules, autodelete and events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

from tests.sim.conftest import EventRecorder, wait_until
from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    AbortNotSupported,
    ActionStopped,
    JobExists,
    JobNotActive,
    JobNotDone,
    NoSuchJob,
    VdsmError,
)
from vdsm_simulator.events import EventBus
from vdsm_simulator.hostjobs import HostJobs, JobStatus, ProgressCallback

SD = "11111111-1111-1111-1111-111111111111"
IMG = "22222222-2222-2222-2222-222222222222"
VOL = "33333333-3333-3333-3333-333333333333"
VOL2 = "44444444-4444-4444-4444-444444444444"
J1 = "aaaaaaaa-0000-0000-0000-000000000001"
J2 = "aaaaaaaa-0000-0000-0000-000000000002"


@pytest.fixture
def bus() -> EventBus:
    return EventBus()


@pytest.fixture
async def jobs(bus: EventBus) -> AsyncIterator[HostJobs]:
    hj = HostJobs(SimClock(0.001), bus)
    yield hj
    await hj.close()


class Gate:
    """A job body that runs until the test releases it, so the status under test is stable."""

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.finished = False
        self.fail_with: BaseException | None = None

    async def __call__(self, progress: ProgressCallback) -> None:
        progress(10)
        self.started.set()
        await self.release.wait()
        if self.fail_with is not None:
            raise self.fail_with
        progress(100)
        self.finished = True


def div(vol: str = VOL) -> dict[str, object]:
    return {"endpoint_type": "div", "sd_id": SD, "img_id": IMG, "vol_id": vol}


async def test_job_runs_to_done_with_progress_and_event(jobs: HostJobs, bus: EventBus) -> None:
    rec = EventRecorder(h=bus)
    gate = Gate()
    jobs.start(J1, "storage", "copy_data", gate)
    assert jobs.get_jobs()[J1]["status"] in ("pending", "running")
    await gate.started.wait()
    assert jobs.get_jobs()[J1] == {
        "id": J1,
        "status": "running",
        "description": "copy_data",
        "job_type": "storage",
        "progress": 10.0,
    }
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.DONE)
    (event,) = rec.matching(f"|jobs|status|{J1}")
    assert {k: v for k, v in event.items() if k != "notify_time"} == {
        "id": J1,
        "status": "done",
        "description": "copy_data",
        "job_type": "storage",
        "progress": 100.0,
    }
    assert isinstance(event["notify_time"], int)


async def test_duration_job_reports_progress_up_to_100(jobs: HostJobs) -> None:
    jobs.start(J1, "storage", "copy_data", 5.0)
    await wait_until(lambda: jobs.get(J1).status == JobStatus.DONE)
    assert jobs.get_jobs()[J1]["progress"] == 100.0


async def test_failed_job_reports_error(jobs: HostJobs, bus: EventBus) -> None:
    rec = EventRecorder(h=bus)

    class VolumeBroken(VdsmError):
        code = 201
        msg = "Volume does not exist"

    gate = Gate()
    gate.fail_with = VolumeBroken(VOL)
    jobs.start(J1, "storage", "copy_data", gate)
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.FAILED)
    info = jobs.get_jobs()[J1]
    assert info["error"] == {"code": 201, "message": f"Volume does not exist: ('{VOL}',)"}
    assert rec.matching(f"|jobs|status|{J1}")[0]["status"] == "failed"


async def test_unexpected_exception_becomes_general_exception(jobs: HostJobs) -> None:
    gate = Gate()
    gate.fail_with = RuntimeError("boom")
    jobs.start(J1, "storage", "copy_data", gate)
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.FAILED)
    assert jobs.get_jobs()[J1]["error"] == {
        "code": 100,
        "message": "General Exception: ('boom',)",
    }


async def test_abort_pending_job_ends_aborted_with_event_and_never_runs(
    jobs: HostJobs, bus: EventBus
) -> None:
    rec = EventRecorder(h=bus)
    gate = Gate()
    jobs.start(J1, "storage", "copy_data", gate, start_after=3600)
    jobs.abort(J1)
    assert jobs.get(J1).status == JobStatus.ABORTED
    (event,) = rec.matching(f"|jobs|status|{J1}")
    assert event["status"] == "aborted"
    await jobs.run_job(J1)  # a worker that picks it up later quietly refuses
    assert not gate.started.is_set()
    assert "progress" not in jobs.get_jobs()[J1]


async def test_abort_running_job_goes_aborting_then_aborted(jobs: HostJobs, bus: EventBus) -> None:
    rec = EventRecorder(h=bus)
    seen: list[str] = []

    async def body(progress: ProgressCallback) -> None:
        progress(40)
        try:
            await asyncio.Event().wait()
        finally:
            seen.append(jobs.get(J1).status.value)  # status while the abort is in flight

    jobs.start(J1, "storage", "copy_data", body)
    await wait_until(lambda: jobs.get(J1).status == JobStatus.RUNNING)
    jobs.abort(J1)
    assert jobs.get(J1).status == JobStatus.ABORTING
    await wait_until(lambda: jobs.get(J1).status == JobStatus.ABORTED)
    assert seen == ["aborting"]
    (event,) = rec.matching(f"|jobs|status|{J1}")
    assert event["status"] == "aborted" and event["progress"] == 40.0
    assert "error" not in event


async def test_abort_without_support_raises_and_stays_aborting(jobs: HostJobs) -> None:
    gate = Gate()
    jobs.start(J1, "storage", "sparsify_volume", gate, abortable=False, reports_progress=False)
    await gate.started.wait()
    with pytest.raises(AbortNotSupported) as err:
        jobs.abort(J1)
    assert err.value.info() == {"code": 80, "message": "Job does not support aborting"}
    assert jobs.get(J1).status == JobStatus.ABORTING
    with pytest.raises(AbortNotSupported):
        jobs.abort(J1)  # aborting: VDSM retries the abort
    gate.release.set()
    # The run completed despite the abort request: VDSM reports it done.
    await wait_until(lambda: jobs.get(J1).status == JobStatus.DONE)
    assert "progress" not in jobs.get_jobs()[J1]


async def test_failure_while_aborting_ends_aborted_with_error(jobs: HostJobs) -> None:
    gate = Gate()
    gate.fail_with = RuntimeError("interrupted")
    jobs.start(J1, "v2v", "convert", gate, abortable=False)
    await gate.started.wait()
    with pytest.raises(AbortNotSupported):
        jobs.abort(J1)
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.ABORTED)
    assert jobs.get_jobs()[J1]["error"]["code"] == 100


async def test_action_stopped_ends_aborted(jobs: HostJobs) -> None:
    gate = Gate()
    gate.fail_with = ActionStopped()
    jobs.start(J1, "storage", "copy_data", gate)
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.ABORTED)
    assert "error" not in jobs.get_jobs()[J1]


@pytest.mark.parametrize("final", ["done", "failed", "aborted"])
async def test_abort_of_ended_job_is_job_not_active(jobs: HostJobs, final: str) -> None:
    gate = Gate()
    if final == "failed":
        gate.fail_with = RuntimeError("x")
    jobs.start(J1, "storage", "copy_data", gate, start_after=3600 if final == "aborted" else 0)
    if final == "aborted":
        jobs.abort(J1)
    else:
        gate.release.set()
    await wait_until(lambda: jobs.get(J1).status.value == final)
    with pytest.raises(JobNotActive) as err:
        jobs.abort(J1)
    assert err.value.info() == {"code": 84, "message": "Job is not active"}


async def test_unknown_job_is_no_such_job(jobs: HostJobs) -> None:
    for call in (jobs.abort, jobs.delete, jobs.get):
        with pytest.raises(NoSuchJob) as err:
            call(J2)
        assert err.value.info() == {"code": 66, "message": "Job Id does not exists"}


async def test_delete_rules(jobs: HostJobs) -> None:
    pending = Gate()
    jobs.start(J1, "storage", "copy_data", pending, start_after=3600)
    with pytest.raises(JobNotDone) as err:
        jobs.delete(J1)  # pending is active
    assert err.value.info() == {"code": 68, "message": "Job status is not done"}

    running = Gate()
    jobs.start(J2, "storage", "copy_data", running, abortable=False)
    await running.started.wait()
    with pytest.raises(JobNotDone):
        jobs.delete(J2)  # running is active
    with pytest.raises(AbortNotSupported):
        jobs.abort(J2)
    jobs.delete(J2)  # aborting is not "active" in VDSM: delete is allowed
    assert J2 not in jobs.get_jobs()
    running.release.set()

    jobs.abort(J1)
    jobs.delete(J1)  # aborted
    assert jobs.get_jobs() == {}


async def test_storage_jobs_autodelete_after_delay(bus: EventBus) -> None:
    jobs = HostJobs(SimClock(0.001), bus, autodelete_delay=50)  # 50 ms real
    try:
        jobs.start(J1, "storage", "copy_data", 0.0)
        jobs.start(J2, "v2v", "convert", 0.0)
        await wait_until(lambda: jobs.get(J1).ended and jobs.get(J2).ended)
        assert set(jobs.get_jobs()) == {J1, J2}
        await wait_until(lambda: J1 not in jobs.get_jobs(), timeout=5)
        assert J2 in jobs.get_jobs()  # only storage jobs autodelete
    finally:
        await jobs.close()


async def test_autodelete_default_is_3600_simulated_seconds(bus: EventBus) -> None:
    assert HostJobs(SimClock(1), bus).autodelete_delay == 3600


async def test_autodelete_of_pending_aborted_job(bus: EventBus) -> None:
    jobs = HostJobs(SimClock(0.001), bus, autodelete_delay=10)
    try:
        jobs.start(J1, "storage", "copy_data", 1.0, start_after=3600)
        jobs.abort(J1)
        await wait_until(lambda: J1 not in jobs.get_jobs())
    finally:
        await jobs.close()


async def test_duplicate_id(jobs: HostJobs) -> None:
    jobs.start(J1, "storage", "copy_data", 0.0)
    with pytest.raises(JobExists) as err:
        jobs.start(J1, "v2v", "convert", 0.0)
    assert err.value.info() == {"code": 69, "message": "Job id already exists"}
    # On an SDM verb the duplicate fails inside the storage task: code 100 with jobs.py's text.
    with pytest.raises(VdsmError) as sdm_err:
        await jobs.sdm_copy_data(J1, div(), div(VOL2), run=0.0)
    assert sdm_err.value.info() == {"code": 100, "message": f"Job '{J1}' exists"}


async def test_get_jobs_filtering(jobs: HostJobs) -> None:
    jobs.start(J1, "storage", "copy_data", 3600)
    jobs.start(J2, "v2v", "convert", 3600)
    assert set(jobs.get_jobs()) == {J1, J2}
    assert set(jobs.get_jobs(job_type="storage")) == {J1}
    assert set(jobs.get_jobs("v2v")) == {J2}
    assert set(jobs.get_jobs(job_ids=[J2])) == {J2}
    assert jobs.get_jobs("storage", [J2]) == {}
    assert set(jobs.get_jobs(None, [])) == {J1, J2}  # empty list means no filter, as VDSM


async def test_sdm_copy_data_returns_true_and_runs_callback(jobs: HostJobs, bus: EventBus) -> None:
    rec = EventRecorder(h=bus)
    calls: list[str] = []

    async def copy(progress: ProgressCallback) -> None:
        for pct in (0, 50, 100):
            progress(pct)
        calls.append("copied")

    assert await jobs.sdm_copy_data(J1, div(), div(VOL2), copy_bitmaps=False, run=copy) is True
    await wait_until(lambda: jobs.get(J1).status == JobStatus.DONE)
    assert calls == ["copied"]
    info = jobs.get_jobs()[J1]
    assert info["description"] == "copy_data" and info["job_type"] == "storage"
    assert info["progress"] == 100.0
    assert rec.matching(f"|jobs|status|{J1}")[0]["status"] == "done"


async def test_sdm_sparsify_has_no_progress_and_no_abort(jobs: HostJobs) -> None:
    gate = Gate()
    vol = {"sd_id": SD, "img_id": IMG, "vol_id": VOL, "generation": 0}
    assert await jobs.sdm_sparsify_volume(J1, vol, run=gate) is True
    await gate.started.wait()
    assert jobs.get_jobs()[J1] == {
        "id": J1,
        "status": "running",
        "description": "sparsify_volume",
        "job_type": "storage",
    }
    with pytest.raises(AbortNotSupported):
        jobs.abort(J1)
    gate.release.set()
    await wait_until(lambda: jobs.get(J1).status == JobStatus.DONE)


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ({"sd_id": SD, "img_id": IMG, "vol_id": VOL}, "'endpoint_type'"),
        ({"endpoint_type": "div", "img_id": IMG, "vol_id": VOL}, "Property sd_id is required"),
        (
            {"endpoint_type": "div", "sd_id": "nope", "img_id": IMG, "vol_id": VOL},
            "badly formed hexadecimal UUID string",
        ),
        ({"endpoint_type": "nfs"}, "Invalid or unsupported endpoint {}"),
        (
            {**div(), "generation": 1000},
            "Invalid value 1000 > 999 for property generation",
        ),
    ],
)
async def test_sdm_copy_data_validation_creates_no_job(
    jobs: HostJobs, endpoint: dict[str, object], message: str
) -> None:
    with pytest.raises(VdsmError) as err:
        await jobs.sdm_copy_data(J1, div(), endpoint, run=0.0)
    assert err.value.info() == {"code": 100, "message": message}
    assert jobs.get_jobs() == {}


async def test_scheduler_hook_runs_the_job(bus: EventBus) -> None:
    scheduled: list[str] = []
    runs: list[asyncio.Task[None]] = []

    async def scheduler(description: str, run: Callable[[], Awaitable[None]]) -> None:
        scheduled.append(description)
        runs.append(asyncio.ensure_future(run()))

    jobs = HostJobs(SimClock(0.001), bus, scheduler=scheduler)
    try:
        await jobs.sdm_copy_data(J1, div(), div(VOL2), run=0.0)
        assert jobs.get(J1).status == JobStatus.PENDING
        await asyncio.gather(*runs)
        assert scheduled == ["copy_data"]
        assert jobs.get(J1).status == JobStatus.DONE
    finally:
        await jobs.close()

"""VDSM host jobs (`lib/vdsm/jobs.py`, API 4.0) and the SDM verbs that create storage jobs.

Unlike storage tasks, host jobs carry a client-chosen id, report progress, announce their end
with a `|jobs|status|<id>` event and are never persisted, reverted or cleared. The rules kept
here are VDSM's, including its corners:

* abort: pending -> aborted at once (with an event); running -> aborting, then aborted when the
  run ends; a job without abort support answers AbortNotSupported and stays aborting; a job in
  aborting is asked again; any other status -> JobNotActive.
* a run that completes although an abort was requested ends `done` (VDSM `_run_completed`).
* delete refuses only *active* jobs (pending, running); an aborting job may be deleted.
* storage jobs delete themselves 3600 simulated seconds after they end.

What a job does to storage is not known here: the caller passes the job body (`JobRun`).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    AbortNotSupported,
    ActionStopped,
    CodedError,
    GeneralException,
    JobExists,
    JobNotActive,
    JobNotDone,
    NoSuchJob,
    VdsmError,
)
from vdsm_simulator.events import EventBus

log = logging.getLogger(__name__)

ProgressCallback = Callable[[float], None]
"""Reports progress in percent (0..100); a job whose type reports none ignores it."""

JobRun = Callable[[ProgressCallback], Awaitable[None]]
"""The body of a job. Raising a VdsmError fails the job with that error; raising ActionStopped
(or being cancelled by an abort) ends it aborted."""

JobScheduler = Callable[[str, Callable[[], Awaitable[None]]], Awaitable[None]]
"""Schedules a pending SDM job's coroutine: (description, run), returning once it is queued.
VDSM runs SDM jobs inside an unpersisted `sdm` task of the task manager's pool (one of its
workers); the host passes a scheduler that does the same."""

AUTODELETE_DELAY = 3600.0  # VDSM config jobs/autodelete_delay, simulated seconds
MAX_GENERATION = 999  # lib/vdsm/storage/constants.py


class JobStatus(StrEnum):
    PENDING = "pending"  # added, its run has not started
    RUNNING = "running"  # its run is in progress
    DONE = "done"  # the run completed
    ABORTING = "aborting"  # abort requested while running; on the wire, missing from the schema
    ABORTED = "aborted"  # aborted while pending, or the run ended after an abort
    FAILED = "failed"  # the run raised; `error` says why


@dataclass(eq=False)
class HostJob:
    id: str
    job_type: str  # "storage" or "v2v"
    description: str  # VDSM uses the operation name, e.g. "copy_data"
    body: JobRun
    abortable: bool = True  # the job class implements `_abort`
    autodelete: bool = False
    reports_progress: bool = True  # copy_data does; sparsify_volume never does
    status: JobStatus = JobStatus.PENDING
    progress: float | None = None  # None until the operation reports, as VDSM
    error: VdsmError | None = None
    _running: asyncio.Task[None] | None = field(default=None, repr=False)

    @property
    def active(self) -> bool:
        """VDSM's definition, which leaves out `aborting`: only this blocks delete."""
        return self.status in (JobStatus.PENDING, JobStatus.RUNNING)

    @property
    def ended(self) -> bool:
        return self.status in (JobStatus.DONE, JobStatus.ABORTED, JobStatus.FAILED)

    def info(self) -> dict[str, Any]:
        """HostJobInfo as Host.getJobs and the `|jobs|status|` event carry it."""
        ret: dict[str, Any] = {
            "id": self.id,
            "status": self.status.value,
            "description": self.description,
            "job_type": self.job_type,
        }
        if self.progress is not None:
            ret["progress"] = self.progress
        if self.error is not None:
            ret["error"] = self.error.info()
        return ret


class JobIdInUse(CodedError):
    """A duplicate id on an SDM verb: jobs.add raises a plain error inside the verb's task,
    which the storage dispatcher answers with code 100 and the error's text."""

    def __init__(self, job_id: str) -> None:
        super().__init__(100, f"Job {job_id!r} exists")


class HostJobs:
    """The jobs of one host (VDSM keeps one process-wide table; a host is one process)."""

    def __init__(
        self,
        clock: SimClock,
        events: EventBus,
        *,
        autodelete_delay: float = AUTODELETE_DELAY,
        scheduler: JobScheduler | None = None,
    ) -> None:
        self._clock = clock
        self._events = events
        self.autodelete_delay = autodelete_delay
        self._scheduler = scheduler
        self._jobs: dict[str, HostJob] = {}
        self._background: set[asyncio.Task[None]] = set()

    # -- lifecycle ----------------------------------------------------------------------------

    def add(
        self,
        job_id: str,
        job_type: str,
        description: str,
        run: JobRun | float,
        *,
        abortable: bool = True,
        autodelete: bool | None = None,
        reports_progress: bool = True,
    ) -> HostJob:
        """Register a pending job without running it (the caller runs `run_job` later).

        `run` may be a duration in simulated seconds: the job then only takes time and reports
        progress. Storage jobs autodelete unless told otherwise, as VDSM's sdm base Job.
        """
        if job_id in self._jobs:
            raise JobExists()
        body = run if callable(run) else _timed_body(self._clock, float(run))
        job = HostJob(
            id=job_id,
            job_type=job_type,
            description=description,
            body=body,
            abortable=abortable,
            autodelete=job_type == "storage" if autodelete is None else autodelete,
            reports_progress=reports_progress,
        )
        self._jobs[job_id] = job
        return job

    def start(
        self,
        job_id: str,
        job_type: str,
        description: str,
        run: JobRun | float,
        *,
        abortable: bool = True,
        autodelete: bool | None = None,
        reports_progress: bool = True,
        start_after: float = 0.0,
    ) -> HostJob:
        """Add a job and schedule its run; it stays pending for `start_after` seconds."""
        job = self.add(
            job_id,
            job_type,
            description,
            run,
            abortable=abortable,
            autodelete=autodelete,
            reports_progress=reports_progress,
        )
        self._schedule(job, start_after)
        return job

    async def run_job(self, job_id: str) -> None:
        """VDSM `Job.run`: what a worker executes for a pending job."""
        job = self._jobs.get(job_id)
        if job is None or job.status == JobStatus.ABORTED:
            return  # aborted (and perhaps deleted) while pending: quietly refuse to run
        if job.status != JobStatus.PENDING:
            raise RuntimeError(f"Attempted to run job {job_id!r} from state {job.status.value!r}")
        await self._run(job)

    async def close(self) -> None:
        """Cancel every run and timer; jobs are memory-only in VDSM, so nothing is kept."""
        for job in self._jobs.values():
            if job._running is not None:
                job._running.cancel()
        tasks = list(self._background)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- verbs and control --------------------------------------------------------------------

    def get(self, job_id: str) -> HostJob:
        try:
            return self._jobs[job_id]
        except KeyError:
            raise NoSuchJob() from None

    def get_jobs(
        self, job_type: str | None = None, job_ids: Iterable[str] | None = None
    ) -> dict[str, dict[str, Any]]:
        """Host.getJobs: {jobID: HostJobInfo}, filtered by type and ids when given."""
        wanted = frozenset(job_ids or ())
        return {
            job.id: job.info()
            for job in list(self._jobs.values())
            if (not job_type or job.job_type == job_type) and (not wanted or job.id in wanted)
        }

    def abort(self, job_id: str) -> None:
        job = self.get(job_id)
        match job.status:
            case JobStatus.PENDING:
                job.status = JobStatus.ABORTED
                self._autodelete_if_required(job)
                self._send_event(job)
            case JobStatus.RUNNING:
                job.status = JobStatus.ABORTING
                self._request_abort(job)
            case JobStatus.ABORTING:
                self._request_abort(job)  # VDSM retries the abort
            case _:
                raise JobNotActive()

    def delete(self, job_id: str) -> None:
        job = self.get(job_id)
        if job.active:
            raise JobNotDone()
        del self._jobs[job_id]

    # -- SDM verbs (VDSM: HSM.sdm_* -> sdm_schedule) --------------------------------------------

    async def sdm_copy_data(
        self,
        job_id: str,
        source: dict[str, Any],
        destination: dict[str, Any],
        copy_bitmaps: bool = False,
        *,
        run: JobRun | float,
    ) -> bool:
        """SDM.copy_data: validate both endpoints (destination first, as VDSM), add, schedule.

        copy_data implements `_abort` (qemu-img convert is abortable) and reports progress.
        """
        _check_endpoint(destination)
        _check_endpoint(source)
        await self._sdm_schedule(job_id, "copy_data", run, abortable=True, reports_progress=True)
        return True

    async def sdm_sparsify_volume(
        self, job_id: str, vol_info: dict[str, Any], *, run: JobRun | float
    ) -> bool:
        """SDM.sparsify_volume: virt-sparsify has neither abort nor progress in VDSM."""
        _check_div(vol_info)
        await self._sdm_schedule(
            job_id, "sparsify_volume", run, abortable=False, reports_progress=False
        )
        return True

    # -- internals ----------------------------------------------------------------------------

    async def _sdm_schedule(
        self, job_id: str, description: str, run: JobRun | float, **kind: bool
    ) -> None:
        """HSM.sdm_schedule: jobs.add, then the task manager's scheduleJob("sdm", ...)."""
        if job_id in self._jobs:
            raise JobIdInUse(job_id)
        job = self.add(job_id, "storage", description, run, **kind)
        if self._scheduler is not None:
            await self._scheduler(job.description, lambda: self.run_job(job.id))
        else:
            self._schedule(job, 0.0)

    def _schedule(self, job: HostJob, start_after: float) -> None:

        async def later() -> None:
            if start_after > 0:
                await self._clock.sleep(start_after)
            await self.run_job(job.id)

        self._spawn(later())

    async def _run(self, job: HostJob) -> None:
        job.status = JobStatus.RUNNING

        def report(percent: float) -> None:
            if job.reports_progress:
                job.progress = min(100.0, max(0.0, float(percent)))

        body = asyncio.ensure_future(job.body(report))
        job._running = body
        try:
            # wait() rather than awaiting the body: an abort cancels the body alone, and this
            # coroutine must still see the outcome and finish the job.
            await asyncio.wait({body})
        except asyncio.CancelledError:
            body.cancel()
            raise
        finally:
            job._running = None
        self._finish(job, body)
        self._autodelete_if_required(job)
        self._send_event(job)

    def _finish(self, job: HostJob, body: asyncio.Task[None]) -> None:
        if body.cancelled():
            job.status = JobStatus.ABORTED  # the abort stopped the run: ActionStopped
            return
        exc = body.exception()
        if exc is None:
            job.status = JobStatus.DONE  # even when aborting: the run beat the abort
        elif isinstance(exc, ActionStopped):
            job.status = JobStatus.ABORTED
        else:
            job.status = JobStatus.ABORTED if job.status == JobStatus.ABORTING else JobStatus.FAILED
            job.error = exc if isinstance(exc, VdsmError) else GeneralException(str(exc))
            if not isinstance(exc, VdsmError):
                log.warning("job %s failed with an unexpected error: %r", job.id, exc)

    def _request_abort(self, job: HostJob) -> None:
        if not job.abortable:
            raise AbortNotSupported()
        if job._running is not None:
            job._running.cancel()

    def _autodelete_if_required(self, job: HostJob) -> None:
        if not job.autodelete or self.autodelete_delay < 0:
            return

        async def autodelete() -> None:
            await self._clock.sleep(self.autodelete_delay)
            # Only this job: a later job that reused the id is not ours to delete.
            if self._jobs.get(job.id) is job and not job.active:
                del self._jobs[job.id]

        self._spawn(autodelete())

    def _send_event(self, job: HostJob) -> None:
        self._events.publish(f"|jobs|status|{job.id}", job.info())

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _timed_body(clock: SimClock, seconds: float, steps: int = 10) -> JobRun:
    """A job that only takes time, reporting progress in `steps` even steps."""

    async def body(progress: ProgressCallback) -> None:
        progress(0.0)
        for step in range(1, steps + 1):
            await clock.sleep(seconds / steps)
            progress(100.0 * step / steps)

    return body


# -- endpoint validation: VDSM's properties.Owner errors, answered as (100, str(error)) --------


def _check_endpoint(params: Any) -> None:
    if not isinstance(params, dict):
        raise CodedError(100, f"{type(params).__name__!r} object has no attribute 'pop'")
    rest = dict(params)
    if "endpoint_type" not in rest:
        raise CodedError(100, repr("endpoint_type"))  # KeyError's text
    endpoint_type = rest.pop("endpoint_type")
    if endpoint_type == "div":
        _check_div(rest)
        if rest.get("prepared") is not None:
            _check_bool(rest["prepared"], "prepared")
    elif endpoint_type == "external":
        if not isinstance(rest.get("url"), str):
            raise CodedError(100, "Property url is required")
    else:
        raise CodedError(100, f"Invalid or unsupported endpoint {rest!r}")


def _check_div(params: Any) -> None:
    if not isinstance(params, dict):
        raise CodedError(100, f"{type(params).__name__!r} object has no attribute 'get'")
    for key in ("sd_id", "img_id", "vol_id"):
        value = params.get(key)
        if value is None:
            raise CodedError(100, f"Property {key} is required")
        try:
            uuid.UUID(value)
        except (ValueError, TypeError, AttributeError) as e:
            raise CodedError(100, str(e)) from None
    generation = params.get("generation")
    if generation is not None:
        if isinstance(generation, bool) or not isinstance(generation, int):
            raise CodedError(100, f"Invalid value {generation!r} for integer property generation")
        if generation < 0:
            raise CodedError(100, f"Invalid value {generation} < 0 for property generation")
        if generation > MAX_GENERATION:
            raise CodedError(
                100, f"Invalid value {generation} > {MAX_GENERATION} for property generation"
            )


def _check_bool(value: Any, name: str) -> None:
    if value not in (True, False):
        raise CodedError(100, f"Invalid value {value!r} for boolean property {name}")

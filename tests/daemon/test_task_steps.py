"""A VDSM task's step ends with the task (it used to stay STARTED after the job had ended)."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

from daemon.model import JobStatus
from tests.daemon.stack import running_stack


def _all_steps(steps: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    for step in steps:
        out.append(step)
        out.extend(_all_steps(step.get("steps", [])))
    return out


def _task_step(view: dict[str, Any]) -> dict[str, Any]:
    return next(st for st in _all_steps(view["steps"]) if st.get("external_id"))


async def test_a_finished_task_finishes_its_step(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        job = await s.wait_job(
            await s.submit(
                "CreateDisk",
                {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
            )
        )
        assert job.status is JobStatus.FINISHED, job.error
        view = s.daemon.registry.job_view(job.id)
        assert _task_step(view)["status"] == "FINISHED"
        assert [st["type"] for st in _all_steps(view["steps"]) if st["status"] == "STARTED"] == []


async def test_a_failed_task_fails_its_step(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.storage.pools[s.pool].spm_host
        assert spm is not None
        s.sim.cluster.hosts[spm].faults.settings.update(
            {"task_failure_rate": 1.0, "task_failure_code": 351, "task_failure_message": "boom"}
        )
        job = await s.wait_job(
            await s.submit(
                "CreateDisk",
                {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
            )
        )
        assert job.status is JobStatus.FAILED
        view = s.daemon.registry.job_view(job.id)
        assert _task_step(view)["status"] == "FAILED"
        assert [st["type"] for st in _all_steps(view["steps"]) if st["status"] == "STARTED"] == []

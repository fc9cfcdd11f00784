"""Terminal jobs are purged after their retention (FINISHED sooner than FAILED/ABORTED)."""

from __future__ import annotations

import time
from pathlib import Path

from daemon.model import JobStatus
from tests.daemon.stack import running_stack


async def test_purge_respects_retention_per_status(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        ok = await s.wait_job(await s.submit("RefreshHost", {"host": "host1"}))
        bad = await s.wait_job(await s.submit("RefreshHost", {"host": "nosuch"}))
        assert (ok.status, bad.status) == (JobStatus.FINISHED, JobStatus.FAILED)
        retention = s.daemon.config.retention
        assert ok.ended_at is not None and bad.ended_at is not None
        # just past the FINISHED retention, still inside the FAILED one
        later = max(ok.ended_at, bad.ended_at) + retention.finished_minutes * 60 + 1
        assert later < bad.ended_at + retention.failed_minutes * 60
        assert await s.daemon.purge(now=later) == [ok.id]
        assert ok.id not in s.daemon.registry.jobs and bad.id in s.daemon.registry.jobs
        assert {j["id"] for j in await s.daemon.store.load("job")} == {bad.id}
        assert await s.daemon.purge(now=time.time()) == []
        latest = bad.ended_at + retention.failed_minutes * 60 + 1
        assert await s.daemon.purge(now=latest) == [bad.id]
        assert await s.daemon.store.load("step") == []

"""CancelJob across a daemon restart (issue 6), in process as tests/daemon/test_recovery.py does.

The cancel a CancelJob asked for is committed on its target before anything else (DESIGN rule
1), so after a restart the coordinator carries it on; the CancelJob must carry on too and audit
it, not end FAILED as "interrupted" while its cancel completes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from daemon.engine.cancel import CancelCoordinator
from daemon.engine.cancel_rules import CancelDecision
from daemon.model import JobStatus
from tests.daemon.stack import running_stack, start_sim
from tests.daemon.test_cancel import spm_host, until
from tests.daemon.test_cancel_job import held_disk_jobs


@pytest.mark.parametrize("moment", ["intent committed, decision not", "waiting for the target"])
async def test_a_cancel_job_survives_a_restart(
    tmp_path: Path, moment: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = CancelCoordinator.cancel

    async def dies_after_committing(
        self: CancelCoordinator, job_id: str, **kw: Any
    ) -> CancelDecision:
        await real(self, job_id, **kw)
        await asyncio.Event().wait()  # the daemon stops before the CancelJob hears back
        raise AssertionError("unreachable")

    sim = await start_sim()
    try:
        async with running_stack(tmp_path, sim=sim) as s:
            (target,) = await held_disk_jobs(s, 1)
            if moment == "intent committed, decision not":
                monkeypatch.setattr(CancelCoordinator, "cancel", dies_after_committing)
            canceller = await s.submit(
                "CancelJob", {"job": target.id, "mode": "revert", "reason": "restart test"}
            )
            reg = s.daemon.registry
            await until(s, target.id, lambda: reg.jobs[target.id].cancel is not None)
            root = s.daemon.executor.root_of(canceller)
            if moment == "waiting for the target":
                await until(s, canceller.id, lambda: root.data.get("phase") == "wait")
        monkeypatch.undo()
        sim.cluster.hosts[spm_host(s)].gate.open()
        async with running_stack(tmp_path, sim=sim) as s:
            reg = s.daemon.registry
            ended = await s.wait_job(reg.jobs[target.id])
            done = await s.wait_job(reg.jobs[canceller.id])
            assert ended.status is JobStatus.ABORTED
            assert done.status is JobStatus.FINISHED, done.error
            assert done.result is not None
            assert (done.result["job"], done.result["mode"]) == (target.id, "revert")
            (task,) = reg.job_tasks(target.id)
            assert done.result["tasks_cleared"] == [task.vdsm_id]
            assert all(table == [] for table in s.sim_tasks().values())
    finally:
        await sim.stop()

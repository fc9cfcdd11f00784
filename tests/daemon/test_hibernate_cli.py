"""HibernateVm and CancelJob as an operator reaches them (issue 6): listed by GET /api/v1/actions
with their cancel policies, and submitted with `taskmgr submit` against vdsm-sim, the CancelJob
waited for and its audit read from its result."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon.api_support import short_dir
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_cli import taskmgr
from tests.daemon.test_hibernate import VM_HOST, add_vm, memory_volumes, saving


@asynccontextmanager
async def served(tmp_path: Path) -> AsyncIterator[tuple[Stack, Path]]:
    sockets = short_dir()
    try:
        socket = sockets / "api.sock"
        async with running_stack(
            tmp_path, api=True, configure=lambda c: c.with_overrides(socket=socket)
        ) as s:
            yield s, socket
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


async def test_actions_lists_both_with_their_cancel_policy(tmp_path: Path) -> None:
    async with served(tmp_path) as (_, socket):
        async with aiohttp.ClientSession(
            base_url="http://taskmgrd", connector=aiohttp.UnixConnector(path=str(socket))
        ) as http:
            async with http.get("/api/v1/actions") as r:
                assert r.status == 200
                actions = {a["name"]: a for a in (await r.json())["actions"]}
    hibernate, cancel = actions["HibernateVm"], actions["CancelJob"]
    assert hibernate["params"]["required"] == ["vm"]
    assert hibernate["cancel"]["cancellable"] is True
    assert sorted(hibernate["cancel"]["modes"]) == ["revert", "stop"]
    assert "VM.migrateCancel" in hibernate["cancel"]["notes"]
    assert cancel["params"]["required"] == ["job", "mode"]
    assert cancel["cancel"]["cancellable"] is False


async def test_cancel_job_from_the_cli(tmp_path: Path) -> None:
    """`taskmgr submit CancelJob job=... mode=revert --wait`: the hibernation is cancelled while
    the VM saves, the CancelJob ends FINISHED with what the cancel did; a second one, aimed at
    the job now ended, exits 1 FAILED with the reason."""
    async with served(tmp_path) as (s, socket):
        s.sim.cluster.hosts[VM_HOST].gate.hold()
        vm = add_vm(s)
        run = await taskmgr("--json", "submit", "HibernateVm", f"vm={vm.vm_id}", socket=socket)
        assert run.code == 0, run.out + run.err
        target: dict[str, Any] = run.json()
        await saving(s, vm)

        run = await taskmgr(
            "--json", "submit", "CancelJob", f"job={target['id']}", "mode=revert",
            "reason=wrong VM", "--wait", socket=socket,
        )  # fmt: skip
        assert run.code == 0, run.out + run.err
        cancel = run.json()
        assert (cancel["action"], cancel["status"]) == ("CancelJob", "FINISHED")
        summary = cancel["result"]
        assert (summary["job"], summary["status"], summary["mode"]) == (
            target["id"], "ABORTED", "revert",
        )  # fmt: skip
        assert len(summary["tasks_reverted"]) == 2 and len(summary["tasks_cleared"]) == 2
        assert any("VM.migrateCancel" in a for a in summary["other_actions"])
        assert vm.status.value == "Up" and memory_volumes(s) == {}
        record = s.daemon.registry.jobs[target["id"]].cancel
        assert record is not None and record.reason.startswith("wrong VM [CancelJob ")

        run = await taskmgr(
            "submit", "CancelJob", f"job={target['id']}", "mode=stop", "--wait", socket=socket
        )
        assert run.code == 1, run.out + run.err
        assert "FAILED" in run.out and "already ended" in run.out
        assert s.daemon.registry.jobs[target["id"]].cancel == record  # untouched

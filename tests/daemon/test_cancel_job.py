"""CancelJob: the cancel as an action, submitted alone or in a batch, audited as a job of its own;
its authorization is the cancel route's (the owner, root or the admin group)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import pytest

from daemon.commands import public_actions
from daemon.commands.cancel_job import cancel_summary
from daemon.config import Config
from daemon.engine.cancel import CancelRefused
from daemon.model import CancelMode, CancelRecord, Job, JobStatus, TaskStatus
from tests.daemon.api_support import short_dir
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_cancel import spm_host, until, until_sim

NOBODY = 65534
SYSTEM_PYTHON = "/usr/bin/python3"  # the client runs as nobody: the venv may be out of its reach


async def held_disk_jobs(s: Stack, count: int) -> list[Job]:
    """`count` CreateDisk jobs whose tasks run on the SPM, held at their end by its gate."""
    s.sim.cluster.hosts[spm_host(s)].gate.hold()
    jobs = [
        await s.submit("CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096})
        for _ in range(count)
    ]
    reg = s.daemon.registry
    for job in jobs:
        await until(
            s,
            job.id,
            lambda j=job: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(j.id)),
        )
    return jobs


async def test_a_batch_of_cancels_each_audited(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        before = s.volumes()
        s.sim.cluster.hosts["host2"].gate.hold()  # holds the VM's save at its end
        vm = s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "sleepy", "host2")
        hibernate = await s.submit("HibernateVm", {"vm": vm.vm_id})
        await until_sim(lambda: vm.vm_id in s.sim.cluster.hosts["host2"].gate.held())
        stopped, reverted = await held_disk_jobs(s, 2)
        cancels = await s.daemon.executor.submit_batch(
            [
                {"action": "CancelJob", "params": {"job": stopped.id, "mode": "stop"}},
                {
                    "action": "CancelJob",
                    "params": {"job": reverted.id, "mode": "revert", "reason": "wrong size"},
                },
                {"action": "CancelJob", "params": {"job": hibernate.id, "mode": "revert"}},
            ],
            owner=1000,
        )
        reg = s.daemon.registry
        for target in (stopped, reverted):
            await until(
                s, target.id, lambda t=target: all(x.stop_sent for x in reg.job_tasks(t.id))
            )
        s.sim.cluster.hosts[spm_host(s)].gate.open()
        for cancel_job, target in zip(cancels[:2], (stopped, reverted), strict=True):
            done = await s.wait_job(cancel_job)
            assert done.status is JobStatus.FINISHED, done.error
            ended = reg.jobs[target.id]
            assert ended.status is JobStatus.ABORTED
            assert ended.cancel is not None and ended.cancel.requested_by == 1000
            assert f"[CancelJob {cancel_job.id}]" in ended.cancel.reason
            task = reg.job_tasks(target.id)[0]
            assert done.result is not None
            assert done.result["job"] == target.id
            assert done.result["tasks_stopped"] == [task.vdsm_id]
            assert done.result["tasks_cleared"] == [task.vdsm_id]
            assert done.result["status"] == "ABORTED"
            view = reg.job_view(cancel_job.id)
            assert view["commands"][0]["data"]["decision"]["accepted"] is True
        assert reg.jobs[reverted.id].cancel.mode.value == "revert"  # type: ignore[union-attr]
        assert reg.jobs[reverted.id].cancel.reason.startswith("wrong size")  # type: ignore[union-attr]
        audit = await s.wait_job(cancels[2])
        assert audit.status is JobStatus.FINISHED, audit.error
        assert audit.result is not None
        assert any("VM.migrateCancel" in a for a in audit.result["other_actions"])
        assert len(audit.result["tasks_reverted"]) == 2  # both memory volumes removed
        assert vm.status.value == "Up"
        assert len({c.correlation_id for c in cancels}) == 1
        assert s.volumes() == before
        assert all(table == [] for table in s.sim_tasks().values())


async def test_cancel_of_an_ended_job_fails_and_leaves_it_untouched(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        done = await s.wait_job(await s.submit("RefreshHost", {"host": "host1"}))
        assert done.status is JobStatus.FINISHED
        updated = done.updated_at
        cancel_job = await s.wait_job(
            await s.submit("CancelJob", {"job": done.id, "mode": "revert"})
        )
        assert cancel_job.status is JobStatus.FAILED
        assert cancel_job.error is not None
        assert "refused (job_ended)" in cancel_job.error and "already ended" in cancel_job.error
        target = s.daemon.registry.jobs[done.id]
        assert (target.status, target.cancel, target.updated_at) == (
            JobStatus.FINISHED,
            None,
            updated,
        )
        view = s.daemon.registry.job_view(cancel_job.id)
        assert view["commands"][0]["data"]["refused"]["code"] == "job_ended"
        assert s.daemon.registry.job_locks(cancel_job.id) == []


async def test_unknown_target_and_not_cancellable_cancel(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        ghost = str(uuid.uuid4())
        failed = await s.wait_job(await s.submit("CancelJob", {"job": ghost, "mode": "stop"}))
        assert failed.status is JobStatus.FAILED
        assert failed.error is not None and f"no job {ghost}" in failed.error
        with pytest.raises(CancelRefused) as refused:  # a cancel of the CancelJob itself
            await s.daemon.cancels.cancel(failed.id, requester=1000)
        assert refused.value.code == "job_ended"
        (target,) = await held_disk_jobs(s, 1)
        canceller = await s.submit("CancelJob", {"job": target.id, "mode": "stop"})
        reg = s.daemon.registry
        await until(s, canceller.id, lambda: reg.jobs[target.id].cancel is not None)
        with pytest.raises(CancelRefused) as not_cancellable:
            await s.daemon.cancels.cancel(canceller.id, requester=1000)
        assert not_cancellable.value.code == "not_cancellable"
        s.sim.cluster.hosts[spm_host(s)].gate.open()
        assert (await s.wait_job(canceller)).status is JobStatus.FINISHED
        assert reg.jobs[target.id].status is JobStatus.ABORTED


async def test_a_too_late_cancel_fails_with_the_reason(tmp_path: Path) -> None:
    """DeleteDisk's point of no return is EXECUTING: a CancelJob during its task is refused."""
    async with running_stack(tmp_path) as s:
        image = str(uuid.uuid4())
        created = await s.wait_job(
            await s.submit(
                "CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096, "image": image}
            )
        )
        assert created.status is JobStatus.FINISHED
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        delete = await s.submit(
            "DeleteDisk", {"pool": s.pool, "domain": s.domains[0], "image": image}
        )
        await until_sim(lambda: len(gate.held()) == 1)
        cancel_job = await s.wait_job(
            await s.submit("CancelJob", {"job": delete.id, "mode": "stop"})
        )
        assert cancel_job.status is JobStatus.FAILED
        assert cancel_job.error is not None and "too_late" in cancel_job.error
        gate.open()
        assert (await s.wait_job(delete)).status is JobStatus.FINISHED


def test_cancel_job_is_a_listed_action() -> None:
    spec = public_actions()["CancelJob"].spec
    assert spec.schema()["required"] == ["job", "mode"]
    assert spec.policy.as_dict()["cancellable"] is False


# -- over the socket, as another user ------------------------------------------------------------

CLIENT = """
import json, socket, sys
path, body = sys.argv[1], sys.argv[2].encode()
s = socket.socket(socket.AF_UNIX)
s.connect(path)
head = (
    "POST /api/v1/jobs HTTP/1.1\\r\\nHost: taskmgrd\\r\\nContent-Type: application/json\\r\\n"
    f"Content-Length: {len(body)}\\r\\nConnection: close\\r\\n\\r\\n"
)
s.sendall(head.encode() + body)
data = b""
while chunk := s.recv(65536):
    data += chunk
status = int(data.split(b" ", 2)[1])
print(json.dumps({"status": status, "body": json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])}))
"""


async def post_as(uid: int, socket_path: Path, body: dict[str, Any]) -> tuple[int, Any]:
    """POST /api/v1/jobs from a process running as `uid`: the daemon sees its peer credentials."""
    proc = await asyncio.create_subprocess_exec(
        SYSTEM_PYTHON,
        "-I",
        "-c",
        CLIENT,
        str(socket_path),
        json.dumps(body),
        user=uid,
        group=uid,
        cwd="/",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(30):
        out, err = await proc.communicate()
    assert proc.returncode == 0, err
    answer = json.loads(out)
    return answer["status"], answer["body"]


@pytest.mark.skipif(
    os.geteuid() != 0 or not os.access(SYSTEM_PYTHON, os.X_OK),
    reason="needs root (to run a client as another uid) and a system python",
)
async def test_only_the_owner_may_submit_a_cancel_job(tmp_path: Path) -> None:
    directory = short_dir()
    directory.chmod(0o755)
    socket_path = directory / "api.sock"

    def open_socket(config: Config) -> Config:
        config = config.with_overrides(socket=socket_path)
        return dataclasses.replace(
            # nobody reaches the socket as a member of its group, as a deployment would grant
            # it (the daemon refuses uids outside the socket's and the admin group)
            config,
            daemon=dataclasses.replace(config.daemon, socket_mode=0o660, socket_group=str(NOBODY)),
        )

    try:
        async with running_stack(tmp_path, api=True, configure=open_socket) as s:
            foreign, own = await held_disk_jobs(s, 2)
            own.owner = NOBODY
            reg = s.daemon.registry
            jobs_before = set(reg.jobs)
            status, body = await post_as(
                NOBODY,
                socket_path,
                {"action": "CancelJob", "params": {"job": foreign.id, "mode": "stop"}},
            )
            assert (status, body["error"]["code"]) == (403, "forbidden"), body
            batch = {
                "batch": [
                    {"action": "CancelJob", "params": {"job": own.id, "mode": "stop"}},
                    {"action": "CancelJob", "params": {"job": foreign.id, "mode": "stop"}},
                ]
            }
            status, body = await post_as(NOBODY, socket_path, batch)
            assert status == 403, body  # the whole batch is refused: nothing is created
            assert set(reg.jobs) == jobs_before
            assert reg.jobs[foreign.id].cancel is None and reg.jobs[own.id].cancel is None
            status, body = await post_as(
                NOBODY,
                socket_path,
                {"action": "CancelJob", "params": {"job": own.id, "mode": "stop"}},
            )
            assert status == 201, body
            assert body["owner"] == NOBODY
            await until(s, own.id, lambda: reg.jobs[own.id].cancel is not None)
            assert reg.jobs[own.id].cancel.requested_by == NOBODY  # type: ignore[union-attr]
            s.sim.cluster.hosts[spm_host(s)].gate.open()
            assert (await s.wait_job(reg.jobs[body["id"]])).status is JobStatus.FINISHED
            assert (await s.wait_job(foreign)).status is JobStatus.FINISHED  # untouched
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def test_summary_names_children_that_never_ran() -> None:
    """A child held before it sent anything (no task, no action of its own) never ran; one that
    owns a task, or whose own cancel verb was sent, did."""
    record = CancelRecord(CancelMode.REVERT, 1000, 0.0, outcome="reverted", late=True)
    record.actions = [
        {"action": "stopped", "task": "t1", "host": "host1"},
        {"action": "VM.migrateCancel on host1: VM stays on its source", "command": "c3"},
        {"action": "reverted", "task": "t1", "host": "host1"},
        {"action": "cleared", "task": "t1", "host": "host1"},
    ]
    target = Job("j", "SetHostMaintenance", {}, 1000, "cid", "", status=JobStatus.ABORTED)
    target.cancel = record

    def command(cid: str, parent: str | None, phase: str, status: str) -> dict[str, Any]:
        return {"id": cid, "action": "X", "parent_id": parent, "status": status,
                "data": {"phase": phase}}  # fmt: skip

    view = {
        "commands": [
            command("root", None, "wait", "CANCELLED"),
            command("c1", "root", "execute", "CANCELLED"),  # held: never ran
            command("c2", "root", "execute", "CANCELLED"),  # its task was stopped
            command("c3", "root", "execute", "CANCELLED"),  # its migration was cancelled
            command("c4", "root", "wait", "CANCELLED"),  # it ran
        ],
        "tasks": [{"command_id": "c2"}],
    }
    summary = cancel_summary(view, target)
    assert summary["children_not_run"] == [{"command": "c1", "action": "X"}]
    assert (summary["tasks_stopped"], summary["tasks_reverted"], summary["tasks_cleared"]) == (
        ["t1"],
        ["t1"],
        ["t1"],
    )
    assert summary["other_actions"] == ["VM.migrateCancel on host1: VM stays on its source"]
    assert (summary["mode"], summary["outcome"], summary["late"]) == ("revert", "reverted", True)

"""The API over its unix socket with the real daemon behind it, driving the simulator."""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from tests.daemon.stack import running_stack

API = "http://taskmgrd/api/v1"


async def test_submit_and_follow_a_disk_job_over_the_socket(tmp_path: Path) -> None:
    async with running_stack(tmp_path, api=True) as s:
        conn = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        async with aiohttp.ClientSession(connector=conn) as http:
            hosts = await (await http.get(f"{API}/hosts")).json()
            assert {h["name"] for h in hosts["hosts"]} == {"host1", "host2", "host3"}
            assert all(h["status"] == "UP" for h in hosts["hosts"])
            body = {
                "action": "CreateDisk",
                "correlation_id": "api-e2e",
                "params": {"pool": s.pool, "domain": s.domains[0], "size": 1 << 20},
            }
            resp = await http.post(f"{API}/jobs", json=body)
            assert resp.status == 201, await resp.text()
            job: dict[str, Any] = await resp.json()
            assert job["owner"] == os.getuid()
            async with asyncio.timeout(20):
                # the registry is checked, not the last answer: no wakeup can be lost
                while s.daemon.registry.jobs[job["id"]].status.value not in (
                    "FINISHED",
                    "FAILED",
                    "ABORTED",
                ):
                    await s.daemon.registry.wait_changed(job["id"])
            job = await (await http.get(f"{API}/jobs/{job['id']}")).json()
            assert job["status"] == "FINISHED", job["error"]
            assert job["result"]["volume"] in s.volumes()
            assert [t["status"] for t in job["tasks"]] == ["CLEARED"]
            listed = await (await http.get(f"{API}/jobs?correlation_id=api-e2e")).json()
            assert [j["id"] for j in listed["jobs"]] == [job["id"]]

            bad = await http.post(
                f"{API}/jobs",
                json={
                    "action": "CreateDisk",
                    "params": {"pool": s.pool, "domain": s.domains[0], "size": -1},
                },
            )
            assert bad.status == 400
            assert "size" in (await bad.json())["error"]["message"]
            unknown_vm = await http.post(
                f"{API}/jobs",
                json={
                    "action": "MigrateVm",
                    "params": {"vm": str(uuid.uuid4()), "dst_host": "host2"},
                },
            )
            assert unknown_vm.status == 201  # accepted: the job itself fails in validation
            failed = await unknown_vm.json()
            async with asyncio.timeout(20):
                while s.daemon.registry.jobs[failed["id"]].status.value == "STARTED":
                    await s.daemon.registry.wait_changed(failed["id"])
            assert "not running on any UP host" in s.daemon.registry.jobs[failed["id"]].error


async def test_events_follow_a_real_disk_job_through_its_vdsm_task(tmp_path: Path) -> None:
    """The live view's source against the simulator: the job's task is seen being created,
    polled and cleared on the host, in order, ending with the job's FINISHED."""
    from daemon.sse import read_events

    async with running_stack(tmp_path, api=True) as s:
        conn = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        async with aiohttp.ClientSession(connector=conn) as http:
            async with http.get(f"{API}/events?kind=job,task") as stream:
                events = read_events(stream)
                async with asyncio.timeout(20):
                    assert (await anext(events)).event == "ready"
                    body = {
                        "action": "CreateDisk",
                        "params": {"pool": s.pool, "domain": s.domains[0], "size": 1 << 20},
                    }
                    job = await (await http.post(f"{API}/jobs", json=body)).json()
                    task_states: list[str] = []
                    async for event in events:
                        doc = json.loads(event.data)
                        if doc["job_id"] != job["id"]:
                            continue
                        if doc["kind"] == "task":
                            task_states.append(doc["data"]["status"])
                        elif doc["data"].get("status") == "FINISHED":
                            break
    assert task_states[0] == "SUBMITTING" and task_states[-1] == "CLEARED"
    assert "POLLING" in task_states


async def test_taskmgr_wait_gives_up_at_its_timeout(tmp_path: Path) -> None:
    """`submit --wait --timeout` follows the job's events; a job held by the simulator's gate
    is still running at the deadline: exit 1 and the state it was last seen in."""
    import sys

    from tests.daemon.test_cancel import spm_host

    async with running_stack(tmp_path, api=True) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "daemon.cli", "--socket", str(tmp_path / "api.sock")),
            *("submit", "CreateDisk", f"pool={s.pool}", f"domain={s.domains[0]}", "size=4096"),
            *("--wait", "--timeout", "1"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(40):
            out, err = await proc.communicate()
        gate.open()
    assert proc.returncode == 1, (out, err)
    assert b"did not end within 1s (still STARTED)" in b" ".join(err.split())  # rich wraps

"""Resilience end to end (issue 3): hosts going NON_RESPONSIVE, SPM loss mid-job, AddHost.

Tasks are held running with the simulator's job gate; every test ends by checking the ground
truth: the simulator's task tables are empty and the job holds no lock.
"""

from __future__ import annotations

import socket
from pathlib import Path

import aiohttp

from daemon.model import HostStatus, JobStatus, TaskStatus
from tests.daemon.stack import Stack, running_stack
from tests.daemon.test_recovery import disk, sim_clean, simulator, spm_of, until


def _status(s: Stack, host: str) -> HostStatus:
    return s.daemon.registry.hosts[host].status


async def test_a_host_down_during_a_job_is_waited_for(tmp_path: Path) -> None:
    """CreateVm on host2 while host2 goes NON_RESPONSIVE: its disks wait on the SPM; host2
    comes back before VM.create is needed, and the job finishes."""
    async with simulator() as sim:
        spm = spm_of(sim)
        gate = sim.cluster.hosts[spm].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.submit(
                "CreateVm", {"name": "vmd", "host": "host2", "disks": [disk(s), disk(s)]}
            )
            await until(lambda: len(gate.held()) == 2)
            sim.cluster.hosts["host2"].faults.settings.update({"down": True})
            await until(lambda: _status(s, "host2") is HostStatus.NON_RESPONSIVE)
            sim.cluster.hosts["host2"].faults.clear()
            await until(lambda: _status(s, "host2") is HostStatus.UP)
            gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FINISHED, job.error
            assert job.result is not None
            vm = sim.cluster.fleet.get(job.result["vm"])
            assert vm is not None and vm.host == "host2"
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


async def test_the_spm_down_mid_job_fails_it_clearly_and_a_new_spm_takes_over(
    tmp_path: Path,
) -> None:
    """The SPM becomes unreachable while its task runs: the daemon marks it NON_RESPONSIVE,
    starts a new SPM (the simulator fences the old one, whose tasks die with its lease), sees
    the task gone and fails the job with the reason; nothing is left uncleared."""
    async with simulator() as sim:
        old = spm_of(sim)
        gate = sim.cluster.hosts[old].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.submit("CreateDisk", disk(s))
            await until(lambda: len(gate.held()) == 1)
            sim.cluster.hosts[old].faults.settings.update({"down": True})
            job = await s.wait_job(job)
            assert job.status is JobStatus.FAILED
            assert "missing from the SPM's task list" in job.error, job.error
            new = spm_of(sim)
            assert new != old and s.daemon.registry.hosts[new].spm
            assert s.daemon.registry.job_locks(job.id) == []
            sim.cluster.hosts[old].faults.clear()
            gate.open()
            await until(lambda: _status(s, old) is HostStatus.UP)
            assert sim_clean(s)
            # the pool works on: a new job runs on the new SPM
            again = await s.wait_job(await s.submit("CreateDisk", disk(s)))
            assert again.status is JobStatus.FINISHED, again.error
            assert s.daemon.registry.job_tasks(again.id)[0].host == new
            assert sim_clean(s)


async def test_spm_loss_mid_job_without_task_files_ends_the_job_failed(tmp_path: Path) -> None:
    """The SPM loses its lease (tasks gone from memory, none on storage): the daemon finds the
    pool without SPM, starts one, sees the task missing and fails the job."""
    async with simulator() as sim:
        old = spm_of(sim)
        gate = sim.cluster.hosts[old].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            job = await s.submit("CreateDisk", disk(s))
            await until(lambda: len(gate.held()) == 1)
            pool = sim.cluster.storage.pools[s.pool]
            assert await sim.cluster.drop_spm(pool)
            gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FAILED
            assert "missing from the SPM's task list" in job.error, job.error
            assert [t.status for t in s.daemon.registry.job_tasks(job.id)] == [TaskStatus.LOST]
            assert pool.spm_host is not None  # the daemon's spmStart
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


async def test_spm_moves_mid_job_and_the_recovered_task_rolls_back(tmp_path: Path) -> None:
    """With task files on storage, another host becoming SPM recovers the interrupted task and
    rolls it back (finished/cleanSuccess): the daemon sees that on the
    new SPM, fails the job saying so, and clears the task there."""
    async with simulator(state_dir=tmp_path / "sim") as sim:
        old = spm_of(sim)
        gate = sim.cluster.hosts[old].gate
        gate.hold()
        async with running_stack(tmp_path, sim=sim) as s:
            before = s.volumes()
            job = await s.submit("CreateDisk", disk(s))
            await until(lambda: len(gate.held()) == 1)
            pool = sim.cluster.storage.pools[s.pool]
            new = next(h for h in pool.hosts if h != old)
            await sim.cluster.elect_spm(pool, new)
            gate.open()
            job = await s.wait_job(job)
            assert job.status is JobStatus.FAILED
            [task] = s.daemon.registry.job_tasks(job.id)
            assert task.status is TaskStatus.CLEARED, (task.status, task.message)
            assert task.vdsm_result == "cleanSuccess"
            assert "ended cleanSuccess" in job.error, job.error
            assert s.volumes() == before  # rolled back by the new SPM
            assert s.daemon.registry.job_locks(job.id) == []
            assert sim_clean(s)


async def test_add_host_registers_and_installs_a_new_host(tmp_path: Path) -> None:
    async with simulator() as sim:
        async with running_stack(tmp_path, sim=sim) as s:
            async with (
                aiohttp.ClientSession() as http,
                http.post(
                    f"http://127.0.0.1:{sim.port}/_control/hosts", json={"pool": s.pool}
                ) as r,
            ):
                assert r.status == 201, await r.text()
                name = (await r.json())["name"]
            job = await s.wait_job(
                await s.submit(
                    "AddHost",
                    {"name": name, "address": "127.0.0.1", "port": sim.port, "pool": s.pool},
                )
            )
            assert job.status is JobStatus.FINISHED, job.error
            assert job.result == {"host": name, "status": "UP"}
            assert _status(s, name) is HostStatus.UP
            assert s.daemon.registry.job_locks(job.id) == []
            refresh = await s.wait_job(await s.submit("RefreshHost", {"host": name}))
            assert refresh.status is JobStatus.FINISHED, refresh.error


async def test_add_host_to_an_unreachable_address_fails_and_removes_it(tmp_path: Path) -> None:
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with running_stack(tmp_path) as s:
        job = await s.wait_job(
            await s.submit(
                "AddHost", {"name": "ghost", "address": "127.0.0.1", "port": port, "pool": s.pool}
            )
        )
        assert job.status is JobStatus.FAILED
        assert "ghost does not answer" in job.error, job.error
        assert "ghost" not in s.daemon.registry.hosts
        assert s.daemon.registry.job_locks(job.id) == []

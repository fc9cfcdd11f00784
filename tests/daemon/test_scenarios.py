"""The five scenarios end to end: the daemon drives vdsm-sim over STOMP; results read back from
the simulator's own state (volumes, VMs, task tables)."""

from __future__ import annotations

import uuid
from pathlib import Path

from daemon.model import CommandStatus, JobStatus, StepType, TaskStatus
from tests.daemon.stack import running_stack


async def test_simple_command_refresh_host(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        job = await s.wait_job(await s.submit("RefreshHost", {"host": "host2"}))
        assert job.status is JobStatus.FINISHED, job.error
        assert job.result is not None and job.result["host"] == "host2"
        view = s.daemon.registry.job_view(job.id)
        assert [st["type"] for st in view["steps"]] == ["VALIDATING", "EXECUTING", "FINALIZING"]
        assert all(st["status"] == "FINISHED" for st in view["steps"])
        assert view["locks"] == []


async def test_a_command_moves_status_and_phase_in_one_change(tmp_path: Path) -> None:
    """Status and the phase that follows it are one record change (one event, one row): the
    status a subscriber sees with each phase is the one a restart would find."""
    async with running_stack(tmp_path) as s:
        sub = s.daemon.events.subscribe()
        job = await s.wait_job(
            await s.submit(
                "CreateDisk",
                {
                    "pool": s.pool,
                    "domain": s.domains[0],
                    "size": 4096,
                    "volume": str(uuid.uuid4()),
                },
            )
        )
        assert job.status is JobStatus.FINISHED
        seen = []
        while not sub.queue.empty():
            event = sub.queue.get_nowait()
            if event is not None and event.kind == "command" and event.job_id == job.id:
                seen.append((event.data["status"], event.data["data"].get("phase")))
        assert seen == [
            (CommandStatus.NOT_STARTED, "validate"),
            (CommandStatus.NOT_STARTED, "execute"),
            (CommandStatus.ACTIVE, "execute"),
            (CommandStatus.ACTIVE, "execute"),  # what execute remembered (the task's ids)
            (CommandStatus.ACTIVE, "wait"),
            (CommandStatus.SUCCEEDED, "end"),
            (CommandStatus.ENDED_SUCCESSFULLY, "done"),
        ]


async def test_create_disk_runs_a_task_and_clears_it(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        image, volume = str(uuid.uuid4()), str(uuid.uuid4())
        job = await s.submit(
            "CreateDisk",
            {
                "pool": s.pool,
                "domain": s.domains[0],
                "size": 1 << 30,
                "image": image,
                "volume": volume,
            },
        )
        job = await s.wait_job(job)
        assert job.status is JobStatus.FINISHED, job.error
        assert job.result == {
            "pool": s.pool,
            "domain": s.domains[0],
            "image": image,
            "volume": volume,
        }
        assert volume in s.volumes()
        tasks = s.daemon.registry.job_tasks(job.id)
        assert [t.status for t in tasks] == [TaskStatus.CLEARED]
        assert all(table == [] for table in s.sim_tasks().values())  # Task.clear reached VDSM
        view = s.daemon.registry.job_view(job.id)
        executing = next(st for st in view["steps"] if st["type"] == "EXECUTING")
        assert [c["type"] for c in executing["steps"]] == [StepType.CREATE_VOLUME.value]
        assert executing["steps"][0]["external_id"] == tasks[0].vdsm_id


async def test_a_failing_task_ends_the_job_failed_and_is_cleared(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        spm = s.sim.cluster.storage.pools[s.pool].spm_host
        assert spm is not None
        s.sim.cluster.hosts[spm].faults.settings.update(
            {"task_failure_rate": 1.0, "task_failure_code": 351, "task_failure_message": "boom"}
        )
        volume = str(uuid.uuid4())
        job = await s.wait_job(
            await s.submit(
                "CreateDisk",
                {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": volume},
            )
        )
        assert job.status is JobStatus.FAILED
        assert "351" in job.error and "boom" in job.error
        assert volume not in s.volumes()  # VDSM rolled it back
        assert all(table == [] for table in s.sim_tasks().values())
        root = s.daemon.executor.root_of(job)
        assert root.status is CommandStatus.ENDED_WITH_FAILURE


async def test_copy_and_delete_disk(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        image = str(uuid.uuid4())
        created = await s.wait_job(
            await s.submit(
                "CreateDisk", {"pool": s.pool, "domain": s.domains[0], "size": 4096, "image": image}
            )
        )
        assert created.status is JobStatus.FINISHED, created.error
        copied = await s.wait_job(
            await s.submit(
                "CopyDisk",
                {
                    "pool": s.pool,
                    "domain": s.domains[0],
                    "image": image,
                    "dst_domain": s.domains[1],
                },
            )
        )
        assert copied.status is JobStatus.FINISHED, copied.error
        pool = s.sim.cluster.storage.pools[s.pool]
        assert pool.domains[s.domains[1]].image_volumes(image)
        deleted = await s.wait_job(
            await s.submit("DeleteDisk", {"pool": s.pool, "domain": s.domains[0], "image": image})
        )
        assert deleted.status is JobStatus.FINISHED, deleted.error
        assert not pool.domains[s.domains[0]].image_volumes(image)
        assert all(table == [] for table in s.sim_tasks().values())


async def test_create_vm_with_hidden_children(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        disks = [{"pool": s.pool, "domain": s.domains[0], "size": 4096} for _ in range(2)]
        job = await s.wait_job(
            await s.submit("CreateVm", {"name": "vm1", "host": "host2", "disks": disks})
        )
        assert job.status is JobStatus.FINISHED, job.error
        assert job.result is not None
        vm = s.sim.cluster.fleet.get(job.result["vm"])
        assert vm is not None and vm.host == "host2" and vm.status == "Up"
        view = s.daemon.registry.job_view(job.id)
        assert [st["type"] for st in view["steps"]] == ["VALIDATING", "EXECUTING", "FINALIZING"]
        executing = view["steps"][1]
        assert [c["type"] for c in executing["steps"]] == ["CREATE_VOLUME", "CREATE_VOLUME"]
        children = [c for c in view["commands"] if c["parent_id"] is not None]
        assert [c["action"] for c in children] == ["CreateDisk", "CreateDisk"]
        assert all(c["status"] == "ENDED_SUCCESSFULLY" for c in children)


async def test_migrate_vm_ends_on_the_monitor_report(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        vm = s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), "mig", "host1", memory_mb=256)
        job = await s.wait_job(await s.submit("MigrateVm", {"vm": vm.vm_id, "dst_host": "host3"}))
        assert job.status is JobStatus.FINISHED, job.error
        assert [v.vm_id for v in s.sim.cluster.fleet.vms_on("host3")] == [vm.vm_id]
        assert s.sim.cluster.fleet.vms_on("host1") == []  # the Down source copy was destroyed


async def test_host_maintenance_migrates_vms_away(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        for i in range(2):
            s.sim.cluster.fleet.add_vm(str(uuid.uuid4()), f"vm{i}", "host2", memory_mb=256)
        job = await s.wait_job(await s.submit("SetHostMaintenance", {"host": "host2"}))
        assert job.status is JobStatus.FINISHED, job.error
        assert s.sim.cluster.fleet.vms_on("host2") == []
        assert s.daemon.registry.hosts["host2"].status.value == "MAINTENANCE"
        migrations = [
            c for c in s.daemon.registry.job_view(job.id)["commands"] if c["action"] == "MigrateVm"
        ]
        assert len(migrations) == 2


async def test_batch_is_validated_first_and_runs_one_job_each(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        jobs = await s.daemon.executor.submit_batch(
            [{"action": "RefreshHost", "params": {"host": f"host{i}"}} for i in (1, 2, 3)],
            owner=1000,
            correlation_id="batch-1",
        )
        ended = [await s.wait_job(j) for j in jobs]
        assert [j.status for j in ended] == [JobStatus.FINISHED] * 3
        assert s.daemon.registry.by_correlation["batch-1"] == {j.id for j in jobs}


async def test_create_vm_failure_reverts_the_children_disks(tmp_path: Path) -> None:
    async with running_stack(tmp_path) as s:
        s.sim.cluster.hosts["host2"].faults.settings.update(
            {"error_code": 100, "error_message": "no memory", "error_methods": ["VM.create"]}
        )
        before = s.volumes()
        disks = [{"pool": s.pool, "domain": s.domains[0], "size": 4096} for _ in range(2)]
        job = await s.wait_job(
            await s.submit("CreateVm", {"name": "vm2", "host": "host2", "disks": disks})
        )
        assert job.status is JobStatus.FAILED
        assert "no memory" in job.error
        assert s.volumes() == before  # both createVolume tasks were reverted
        tasks = s.daemon.registry.job_tasks(job.id)
        assert len(tasks) == 2
        assert all(t.revert_sent and t.status is TaskStatus.CLEARED for t in tasks)
        assert all(table == [] for table in s.sim_tasks().values())

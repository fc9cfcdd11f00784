"""VM verbs and live migration, checked against VDSM's shapes, statuses and events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.sim.conftest import EventRecorder, wait_until
from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    MigrationCancelationFailed,
    MigrationInProgress,
    NoSuchVM,
    VdsmError,
    VMExists,
)
from vdsm_simulator.events import EventBus
from vdsm_simulator.vms import SimVm, VmFleet, VmStatus

VM = "5c6e2a3b-0000-4000-8000-000000000001"
VM2 = "5c6e2a3b-0000-4000-8000-000000000002"
ADDRESSES = {"host1": "host1", "host2": "host2", "host2:54321": "host2", "10.0.0.2": "host2"}


class Cluster:
    def __init__(self) -> None:
        self.buses = {"host1": EventBus(), "host2": EventBus()}
        self.rec = EventRecorder(**self.buses)
        # 1024 MiB at 102.4 MiB/s: a 10 s transfer, one progress event per simulated second.
        self.fleet = VmFleet(
            SimClock(0.001),
            self.buses.__getitem__,
            ADDRESSES.get,
            bandwidth_mbps=102.4,
            monitor_interval=1.0,
        )

    def strip(self, params: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in params.items() if k != "notify_time"}

    def events(self, vm_id: str = VM) -> list[tuple[str, str, dict[str, Any]]]:
        """(host, kind, payload of this VM) for every VM event, in publication order."""
        out = []
        for bus, method, params in self.rec.events:
            kind = method.split("|")[2]
            if method.endswith(vm_id):
                out.append((bus, kind, params[vm_id]))
        return out


@pytest.fixture
async def c() -> AsyncIterator[Cluster]:
    cluster = Cluster()
    yield cluster
    await cluster.fleet.close()


def up_vm(c: Cluster, vm_id: str = VM, host: str = "host1", memory_mb: int = 1024) -> SimVm:
    return c.fleet.add_vm(vm_id, "vm1", host, memory_mb=memory_mb)


def migrating_done(vm: SimVm) -> bool:
    return not vm.migrating


def status_of(vm: SimVm) -> VmStatus:
    """Read the status anew: it changes behind mypy's narrowing while the test awaits."""
    return vm.status


# -- create / destroy / stats / lists -----------------------------------------------------


async def test_create_returns_vmlist_and_boots_with_events(c: Cluster) -> None:
    xml = (
        f"<domain type='kvm'><name>web</name><uuid>{VM}</uuid>"
        "<memory unit='KiB'>2097152</memory></domain>"
    )
    ret = c.fleet.create("host1", {"xml": xml}, VM)
    assert ret["vmId"] == VM and ret["status"] == "WaitForLaunch" and ret["xml"] == xml
    assert set(ret) == {"vmId", "status", "statusTime", "xml"}
    assert isinstance(ret["statusTime"], str) and ret["statusTime"].isdigit()
    vm = c.fleet.get(VM)
    assert vm is not None and vm.memory_mb == 2048 and vm.name == "web"
    await wait_until(lambda: vm.status == VmStatus.UP)
    statuses = [(host, p["status"]) for host, kind, p in c.events() if kind == "VM_status"]
    assert statuses == [("host1", "Powering up"), ("host1", "Up")]
    up_event = c.events()[-1][2]
    assert {"elapsedTime", "monitorResponse", "clientIp", "timeOffset", "displayInfo"} <= set(
        up_event
    )


async def test_create_with_legacy_params_and_duplicates(c: Cluster) -> None:
    c.fleet.create("host1", {"vmId": VM, "vmName": "db", "memSize": 512})
    vm = c.fleet.get(VM, "host1")
    assert vm is not None and (vm.name, vm.memory_mb) == ("db", 512)
    with pytest.raises(VMExists) as err:
        c.fleet.create("host1", {"vmId": VM})
    assert err.value.info() == {"code": 4, "message": "Virtual machine already exists"}
    with pytest.raises(VdsmError) as missing:
        c.fleet.create("host1", {"vmName": "noid"})
    assert missing.value.info() == {"code": 100, "message": "General Exception: (\"'xml'\",)"}


async def test_stats_and_lists_shapes(c: Cluster) -> None:
    up_vm(c)
    c.fleet.add_vm(VM2, "vm2", "host2")
    (stats,) = c.fleet.get_stats("host1", VM)
    assert stats["vmId"] == VM and stats["status"] == "Up" and stats["vmName"] == "vm1"
    assert stats["vmType"] == "kvm" and isinstance(stats["statusTime"], str)
    assert isinstance(stats["elapsedTime"], str)
    assert "migrationProgress" not in stats
    (entry,) = c.fleet.get_vm_list("host1")
    assert set(entry) == {"vmId", "status", "statusTime"}
    assert (entry["vmId"], entry["status"]) == (VM, "Up")
    assert c.fleet.get_vm_list("host1", True, [VM2]) == []
    assert [s["vmId"] for s in c.fleet.get_all_vm_stats("host2")] == [VM2]
    assert c.fleet.get_all_vm_stats("host3") == []
    assert {(t["vmId"], t["host"], t["status"]) for t in c.fleet.topology()} == {
        (VM, "host1", "Up"),
        (VM2, "host2", "Up"),
    }


async def test_destroy_sends_down_event_and_forgets_vm(c: Cluster) -> None:
    up_vm(c)
    c.fleet.destroy("host1", VM)
    assert c.fleet.get(VM) is None
    ((host, kind, payload),) = c.events()
    assert (host, kind) == ("host1", "VM_status")
    assert payload == {
        "status": "Down",
        "vmId": VM,
        "exitCode": 0,
        "exitMessage": "Admin shut down from the engine",
        "exitReason": 6,
    }


async def test_destroy_during_launch(c: Cluster) -> None:
    c.fleet.create("host1", {"vmId": VM})
    c.fleet.destroy("host1", VM)
    assert [p["status"] for _, _, p in c.events()] == ["Down"]


@pytest.mark.parametrize("verb", ["get_stats", "destroy", "migrate_cancel"])
async def test_vm_on_wrong_host_is_no_such_vm(c: Cluster, verb: str) -> None:
    up_vm(c, host="host1")
    with pytest.raises(NoSuchVM) as err:
        getattr(c.fleet, verb)("host2", VM)
    assert err.value.info() == {
        "code": 1,
        "message": f"Virtual machine does not exist: {{'vmId': '{VM}'}}",
    }


async def test_migrate_on_wrong_host_and_get_migration_status_of_unknown_vm(c: Cluster) -> None:
    up_vm(c)
    with pytest.raises(NoSuchVM):
        await c.fleet.migrate("host2", VM, {"dst": "host1"})
    with pytest.raises(NoSuchVM) as err:
        c.fleet.get_migration_status("host2", VM)
    assert err.value.info() == {"code": 1, "message": "Virtual machine does not exist"}


# -- migration ------------------------------------------------------------------------------


async def test_migration_success_moves_vm_with_events_in_order(c: Cluster) -> None:
    vm = up_vm(c)
    assert c.fleet.get_migration_status("host1", VM) == {
        "status": {"code": 0, "message": "Migration in progress"},
        "progress": 0,
    }
    await c.fleet.migrate("host1", VM, {"dst": "host2:54321", "method": "online"})
    assert vm.status == VmStatus.MIGRATION_SOURCE

    await wait_until(lambda: (c.fleet.get(VM, "host2") is not None) and vm.migration.progress > 0)
    dest = c.fleet.get(VM, "host2")
    assert dest is not None and dest.status == VmStatus.MIGRATION_DESTINATION
    assert [v["status"] for v in c.fleet.get_vm_list("host2")] == ["Migration Destination"]
    status = c.fleet.get_migration_status("host1", VM)
    assert status["status"] == {"code": 0, "message": "Migration in progress"}
    assert 0 < status["progress"] < 100
    assert c.fleet.get_stats("host1", VM)[0]["migrationProgress"] == vm.migration.progress

    await wait_until(lambda: migrating_done(vm))
    assert status_of(dest) == VmStatus.UP and status_of(vm) == VmStatus.DOWN
    assert c.fleet.get(VM) is dest
    assert c.fleet.get_migration_status("host1", VM) == {
        "status": {"code": 0, "message": "Migration done"},
        "progress": 100,
        "downtime": 100,
    }
    (down_stats,) = c.fleet.get_stats("host1", VM)
    assert down_stats["status"] == "Down" and down_stats["exitReason"] == 4

    events = c.events()
    assert events[0] == ("host1", "VM_status", {"status": "Migration Source"})
    progress = [p for h, k, p in events if k == "VM_migration_status"]
    assert all(h == "host1" for h, k, _ in events if k == "VM_migration_status")
    assert [p["progress"] for p in progress] == [10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert progress[0] == {"progress": 10, "postcopy": False}
    assert progress[-1] == {"progress": 100, "postcopy": False, "downtime": 100}
    tail = [(h, k, p["status"]) for h, k, p in events[-2:]]
    assert tail == [("host2", "VM_status", "Up"), ("host1", "VM_status", "Down")]
    assert events[-1][2] == {
        "status": "Down",
        "vmId": VM,
        "exitCode": 0,
        "exitMessage": "Migration succeeded",
        "exitReason": 4,
    }
    assert "elapsedTime" in events[-2][2]

    with pytest.raises(MigrationCancelationFailed):
        c.fleet.migrate_cancel("host1", VM)  # nothing left to cancel on the Down source

    # The source keeps the Down VM until the engine destroys it there; no second Down event.
    before = len(c.rec.events)
    c.fleet.destroy("host1", VM)
    assert len(c.rec.events) == before
    assert c.fleet.get(VM, "host1") is None and c.fleet.get(VM, "host2") is dest


async def test_migrate_cancel_mid_flight_keeps_vm_up_on_source(c: Cluster) -> None:
    vm = up_vm(c, memory_mb=1024 * 100)  # 1000 s transfer: the cancel lands mid-flight
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: vm.migration.progress >= 1)
    c.fleet.migrate_cancel("host1", VM)
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP
    assert c.fleet.get(VM, "host2") is None
    status = c.fleet.get_migration_status("host1", VM)
    assert status["status"] == {"code": 47, "message": "Migration canceled"}
    assert 1 <= status["progress"] < 100

    host2_events = [(k, p["status"]) for h, k, p in c.events() if h == "host2"]
    assert host2_events == [("VM_status", "Down")]  # the destination was torn down
    last_source = [p for h, k, p in c.events() if h == "host1" and k == "VM_status"][-1]
    assert last_source == {"status": "Up"}

    with pytest.raises(MigrationCancelationFailed) as err:
        c.fleet.migrate_cancel("host1", VM)
    assert err.value.info() == {"code": 47, "message": "Migration not in progress"}


async def test_migrate_cancel_before_transfer(c: Cluster) -> None:
    c.fleet.dest_create_seconds = 1000.0
    vm = up_vm(c)
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: c.fleet.get(VM, "host2") is not None)
    c.fleet.migrate_cancel("host1", VM)
    assert vm.migration.status == (0, "Migration process cancelled")
    c.fleet.dest_create_seconds = 0.0


async def test_migrate_cancel_without_any_migration_is_quietly_accepted(c: Cluster) -> None:
    # VDSM quirk: a VM that never migrated has an unstarted source thread whose stop() swallows
    # libvirt's "no job" error, so the cancel succeeds.
    up_vm(c)
    c.fleet.migrate_cancel("host1", VM)
    assert c.fleet.get_migration_status("host1", VM) == {
        "status": {"code": 0, "message": "Migration process cancelled"},
        "progress": 0,
    }


async def test_injected_failure_during_transfer(c: Cluster) -> None:
    vm = up_vm(c)
    c.fleet.fail_next_migration(VM, at_progress=30)
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP and c.fleet.get(VM, "host2") is None
    status = c.fleet.get_migration_status("host1", VM)
    assert status == {
        "status": {"code": 12, "message": "Fatal error during migration"},
        "progress": 30,
    }
    progress = [p["progress"] for _, k, p in c.events() if k == "VM_migration_status"]
    assert progress == [10, 20]
    assert [(h, p["status"]) for h, k, p in c.events() if k == "VM_status"] == [
        ("host1", "Migration Source"),
        ("host2", "Down"),
        ("host1", "Up"),
    ]
    # The fault is used up: the next migration succeeds.
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: migrating_done(vm))
    assert status_of(vm) == VmStatus.DOWN


async def test_injected_failure_at_destination_with_code(c: Cluster) -> None:
    vm = up_vm(c)
    c.fleet.fail_next_migration(VM, 82, "Incoming migration limit exceeded", phase="destination")
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP
    assert c.fleet.get_migration_status("host1", VM)["status"] == {
        "code": 82,
        "message": "Incoming migration limit exceeded",
    }


async def test_unknown_destination_fails_asynchronously(c: Cluster) -> None:
    vm = up_vm(c)
    await c.fleet.migrate("host1", VM, {"dst": "nowhere:54321"})  # VDSM accepts the call
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP
    assert c.fleet.get_migration_status("host1", VM)["status"] == {
        "code": 12,
        "message": "Fatal error during migration",
    }
    assert [p["status"] for _, k, p in c.events() if k == "VM_status"] == ["Migration Source", "Up"]


async def test_migration_to_same_host_fails_with_vm_exists(c: Cluster) -> None:
    vm = up_vm(c)
    await c.fleet.migrate("host1", VM, {"dst": "host1"})
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP and c.fleet.get(VM, "host1") is vm
    assert c.fleet.get_migration_status("host1", VM)["status"] == {
        "code": 4,
        "message": "Virtual machine already exists",
    }


async def test_migrate_while_migrating_or_not_running(c: Cluster) -> None:
    vm = up_vm(c, memory_mb=1024 * 100)
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    with pytest.raises(MigrationInProgress) as err:
        await c.fleet.migrate("host1", VM, {"dst": "host2"})
    assert err.value.info() == {
        "code": 51,
        "message": f"Command not supported during migration: {{'vmId': '{VM}'}}",
    }
    c.fleet.migrate_cancel("host1", VM)
    await wait_until(lambda: migrating_done(vm))

    c.fleet.create("host1", {"vmId": VM2})  # still WaitForLaunch
    with pytest.raises(NoSuchVM) as launching:
        await c.fleet.migrate("host1", VM2, {"dst": "host2"})
    assert launching.value.info() == {"code": 1, "message": "Virtual machine does not exist"}


async def test_destroying_destination_fails_the_migration(c: Cluster) -> None:
    vm = up_vm(c, memory_mb=1024 * 100)
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: vm.migration.transfer_started)
    c.fleet.destroy("host2", VM)
    await wait_until(lambda: migrating_done(vm))
    assert vm.status == VmStatus.UP
    assert c.fleet.get_migration_status("host1", VM)["status"]["code"] == 12


async def test_destroying_source_aborts_migration_and_destination(c: Cluster) -> None:
    vm = up_vm(c, memory_mb=1024 * 100)
    await c.fleet.migrate("host1", VM, {"dst": "host2"})
    await wait_until(lambda: vm.migration.transfer_started)
    c.fleet.destroy("host1", VM)
    await wait_until(lambda: migrating_done(vm))
    assert c.fleet.get(VM) is None
    assert [(h, p["status"]) for h, k, p in c.events() if k == "VM_status"][-2:] == [
        ("host2", "Down"),
        ("host1", "Down"),
    ]


async def test_outgoing_limit_queues_migrations(c: Cluster) -> None:
    first = up_vm(c, VM, memory_mb=1024 * 100)
    second = up_vm(c, VM2, memory_mb=1024)
    await c.fleet.migrate("host1", VM, {"dst": "host2", "outgoingLimit": 1})
    await wait_until(lambda: first.migration.transfer_started)
    await c.fleet.migrate("host1", VM2, {"dst": "host2"})
    assert second.status == VmStatus.MIGRATION_SOURCE
    # The second waits for the slot: no destination VM while the first one transfers.
    await wait_until(lambda: first.migration.progress >= 2)
    assert c.fleet.get(VM2, "host2") is None and second.migration.progress == 0
    c.fleet.migrate_cancel("host1", VM)
    await wait_until(lambda: migrating_done(second))
    assert status_of(second) == VmStatus.DOWN
    assert c.fleet.get(VM2, "host2") is not None


async def test_cancel_while_waiting_for_slot(c: Cluster) -> None:
    first = up_vm(c, VM, memory_mb=1024 * 100)
    second = up_vm(c, VM2)
    await c.fleet.migrate("host1", VM, {"dst": "host2", "outgoingLimit": 1})
    await c.fleet.migrate("host1", VM2, {"dst": "host2"})
    await wait_until(lambda: first.migration.transfer_started)
    c.fleet.migrate_cancel("host1", VM2)
    await wait_until(lambda: migrating_done(second))
    assert second.status == VmStatus.UP
    assert second.migration.status == (47, "Migration canceled")
    assert first.migrating


async def test_max_bandwidth_param_speeds_up(c: Cluster) -> None:
    vm = up_vm(c)
    await c.fleet.migrate("host1", VM, {"dst": "10.0.0.2", "maxBandwidth": 1024})
    await wait_until(lambda: migrating_done(vm))
    assert status_of(vm) == VmStatus.DOWN
    # 1 s transfer: no intermediate progress event, only the final one.
    assert [p["progress"] for _, k, p in c.events() if k == "VM_migration_status"] == [100]

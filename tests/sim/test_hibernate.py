"""VM.hibernate in the simulator: VDSM's statuses, events, exit reason and migrateCancel, with the
memory volumes' contents checked on the simulated storage."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.conftest import Control, DataCenter, RawFactory, wait_for_async
from tests.sim.conftest import EventRecorder, wait_until
from tests.sim.stomp_client import RpcError
from vdsm_simulator.clock import SimClock
from vdsm_simulator.errors import (
    CodedError,
    GeneralException,
    MigrationCancelationFailed,
    NoSuchVM,
)
from vdsm_simulator.events import EventBus
from vdsm_simulator.host import JobGate
from vdsm_simulator.storage import Storage, Volume
from vdsm_simulator.vms import SimVm, VmFleet, VmStatus, parse_hibernation_handle

VM = "5c6e2a3b-0000-4000-8000-00000000000a"


class Bench:
    """One host with a gate, one pool with one domain holding the two memory volumes."""

    def __init__(self) -> None:
        self.bus = EventBus()
        self.rec = EventRecorder(host1=self.bus)
        self.gate = JobGate()
        self.storage = Storage()
        pool = self.storage.add_pool("pool1", ["host1"], 1)
        self.pool, self.domain = pool.uuid, pool.master_domain
        self.state = self._volume("MEMD")
        self.meta = self._volume("MEMM")
        # 1024 MiB at 102.4 MiB/s: a 10 s save (10 ms real)
        self.fleet = VmFleet(
            SimClock(0.001),
            {"host1": self.bus}.__getitem__,
            {"host1": "host1"}.get,
            save_mbps=102.4,
            storage=self.storage,
            gate_for={"host1": self.gate}.__getitem__,
        )

    def _volume(self, disk_type: str) -> Volume:
        vol = Volume(
            str(uuid.uuid4()), str(uuid.uuid4()), self.domain, self.pool, 1 << 20,
            format="RAW", disktype=disk_type, legality="LEGAL",
        )  # fmt: skip
        self.storage.add_volume(vol)
        return vol

    @property
    def handle(self) -> str:
        state, meta = self.state, self.meta
        return ",".join([self.domain, self.pool, state.image, state.uuid, meta.image, meta.uuid])

    def statuses(self) -> list[str]:
        return [p[VM]["status"] for p in self.rec.matching(f"|virt|VM_status|{VM}")]


@pytest.fixture
async def b() -> AsyncIterator[Bench]:
    bench = Bench()
    yield bench
    await bench.fleet.close()


def up_vm(b: Bench, memory_mb: int = 1024) -> SimVm:
    return b.fleet.add_vm(VM, "vm1", "host1", memory_mb=memory_mb)


def status_of(vm: SimVm) -> VmStatus:
    """Read the status anew: it changes behind mypy's narrowing while the test awaits."""
    return vm.status


async def test_hibernate_saves_the_vm_and_marks_its_memory_volumes(b: Bench) -> None:
    vm = up_vm(b)
    b.fleet.hibernate("host1", VM, b.handle)
    assert vm.status is VmStatus.SAVING_STATE
    migration = b.fleet.get_migration_status("host1", VM)
    assert migration["status"] == {"code": 0, "message": "Hibernation process starting"}
    await wait_until(lambda: status_of(vm) is VmStatus.DOWN)
    assert b.statuses() == ["Saving State", "Down"]
    down = b.rec.matching(f"|virt|VM_status|{VM}")[-1][VM]
    assert (down["exitCode"], down["exitReason"], down["exitMessage"]) == (
        0,
        5,
        "SaveState succeeded",
    )
    assert b.fleet.get_stats("host1", VM)[0]["exitReason"] == 5
    assert b.fleet.get_migration_status("host1", VM) == {
        "status": {"code": 0, "message": "SaveState done"},
        "progress": 100,
    }
    assert (b.state.used_by, b.meta.used_by) == (VM, VM)
    with pytest.raises(MigrationCancelationFailed):  # nothing left to abort
        b.fleet.migrate_cancel("host1", VM)
    b.fleet.destroy("host1", VM)  # the engine's destroy removes the Down VM, no second event
    assert b.statuses() == ["Saving State", "Down"]


async def test_saving_lasts_in_proportion_to_memory(b: Bench) -> None:
    """The gate is closed, so a save that finished its simulated time is held at the gate:
    a small VM gets there first, a big one is still writing its memory."""
    small = up_vm(b, memory_mb=1)
    big = b.fleet.add_vm(str(uuid.uuid4()), "big", "host1", memory_mb=1 << 20)
    b.gate.hold()
    b.fleet.hibernate("host1", small.vm_id, b.handle)
    b.fleet.hibernate("host1", big.vm_id, b.handle)
    await wait_until(lambda: b.gate.held() == [small.vm_id])
    assert status_of(big) is VmStatus.SAVING_STATE
    b.fleet.migrate_cancel("host1", big.vm_id)
    b.gate.open()
    await wait_until(lambda: status_of(small) is VmStatus.DOWN)
    await wait_until(lambda: status_of(big) is VmStatus.UP)


async def test_migrate_cancel_while_saving_resumes_the_vm(b: Bench) -> None:
    vm = up_vm(b)
    b.gate.hold()
    b.fleet.hibernate("host1", VM, b.handle)
    await wait_until(lambda: b.gate.held() == [VM])  # the save is done, held at its end
    b.fleet.migrate_cancel("host1", VM)  # abortJob still wins over the held end
    await wait_until(lambda: status_of(vm) is VmStatus.UP)
    assert b.gate.held() == []
    assert b.statuses() == ["Saving State", "Up"]
    assert b.fleet.get_migration_status("host1", VM)["status"] == {
        "code": 47,
        "message": "Migration canceled",
    }
    assert (b.state.used_by, b.meta.used_by) == ("", "")
    # VDSM never clears _preparingMigrationEvt for a save: libvirt's "no job" is swallowed and
    # the answer is the aborted save's status, its text rewritten
    with pytest.raises(CodedError) as again:
        b.fleet.migrate_cancel("host1", VM)
    assert again.value.info() == {"code": 47, "message": "Migration process cancelled"}
    assert b.fleet.get_migration_status("host1", VM)["status"] == again.value.info()
    assert status_of(vm) is VmStatus.UP


async def test_migrate_cancel_while_waiting_for_a_slot(b: Bench) -> None:
    """Hibernation takes an outgoing migration slot, as VDSM's SourceThread does."""
    b.fleet.max_outgoing = 0
    vm = up_vm(b)
    b.fleet.hibernate("host1", VM, b.handle)
    assert vm.status is VmStatus.SAVING_STATE
    b.fleet.migrate_cancel("host1", VM)
    await wait_until(lambda: status_of(vm) is VmStatus.UP)
    assert b.fleet.get_migration_status("host1", VM)["status"]["code"] == 47


async def test_missing_memory_volume_fails_the_save_asynchronously(b: Bench) -> None:
    vm = up_vm(b)
    b.storage.remove_volume(b.pool, b.domain, b.meta.uuid)
    b.fleet.hibernate("host1", VM, b.handle)  # accepted: VDSM prepares volumes in the thread
    await wait_until(lambda: not vm.migrating)
    assert vm.status is VmStatus.UP
    assert b.fleet.get_migration_status("host1", VM)["status"] == {
        "code": 12,
        "message": "Fatal error during migration",
    }
    assert b.state.used_by == ""
    with pytest.raises(CodedError) as cancel:  # the failed save's own code answers
        b.fleet.migrate_cancel("host1", VM)
    assert cancel.value.info() == {"code": 12, "message": "Migration process cancelled"}


async def test_migrate_cancel_after_the_save_is_refused(b: Bench) -> None:
    """The saved VM's domain is only Defined: abortJob raises NotConnectedError, 47."""
    vm = up_vm(b)
    b.fleet.hibernate("host1", VM, b.handle)
    await wait_until(lambda: status_of(vm) is VmStatus.DOWN)
    with pytest.raises(MigrationCancelationFailed) as refused:
        b.fleet.migrate_cancel("host1", VM)
    assert refused.value.info() == {"code": 47, "message": "Migration not in progress"}
    assert b.fleet.get_migration_status("host1", VM)["status"]["message"] == "SaveState done"


async def test_refusals_change_nothing(b: Bench) -> None:
    with pytest.raises(NoSuchVM):
        b.fleet.hibernate("host1", VM, b.handle)
    vm = up_vm(b)
    with pytest.raises(GeneralException) as short:
        b.fleet.hibernate("host1", VM, "a,b")
    assert short.value.code == 100
    assert "not enough values to unpack (expected 6, got 2)" in short.value.message
    with pytest.raises(GeneralException, match="too many values"):
        b.fleet.hibernate("host1", VM, b.handle + ",x")
    assert vm.status is VmStatus.UP and not vm.migrating
    assert b.rec.events == []


def test_handle_is_split_as_vdsm_does() -> None:
    state, meta = parse_hibernation_handle("sd,sp,i1,v1,i2,v2")
    assert (state.domain, state.pool, state.image, state.volume) == ("sd", "sp", "i1", "v1")
    assert (meta.image, meta.volume) == ("i2", "v2")


# -- over the wire -------------------------------------------------------------------------------


async def make_volume(control: Control, dc: DataCenter, raw: RawFactory, disk_type: str) -> Any:
    spm = await raw(dc.spm)
    params = dc.create_params(size="1048576", preallocate=2, diskType=disk_type, volFormat=5)
    task = await spm.call("Volume.create", params)

    async def done() -> bool:
        status = await spm.call("Task.getStatus", {"taskID": task})
        return bool(status["taskState"] == "finished")

    await wait_for_async(done)
    return params


async def test_hibernate_over_stomp(raw: RawFactory, control: Control, dc: DataCenter) -> None:
    vm = (await control.post("/vms", {"host": "host2", "memory_mb": 512}, expect=201))["id"]
    state = await make_volume(control, dc, raw, "MEMD")
    meta = await make_volume(control, dc, raw, "MEMM")
    volumes = [state["imageID"], state["volumeID"], meta["imageID"], meta["volumeID"]]
    handle = ",".join([dc.master, dc.pool, *volumes])
    host = await raw("host2", subscribe_events=True)
    stats = (await host.call("VM.getStats", {"vmID": vm}))[0]
    assert stats["balloonInfo"]["balloon_max"] == str(512 * 1024)
    with pytest.raises(RpcError) as bad:
        await host.call("VM.hibernate", {"vmID": vm, "hibernationVolHandle": 7})
    assert bad.value.code == -32602
    assert await host.call("VM.hibernate", {"vmID": vm, "hibernationVolHandle": handle}) is True
    seen: list[str] = []
    async for name, params in host.iter_events(5.0):
        if name == f"|virt|VM_status|{vm}":
            seen.append(params[vm]["status"])
            if params[vm]["status"] == "Down":
                assert params[vm]["exitReason"] == 5
                break
    assert seen == ["Saving State", "Down"]
    listed = await control.volumes(dc.pool)
    assert listed[state["volumeID"]]["used_by"] == vm
    assert listed[meta["volumeID"]]["used_by"] == vm

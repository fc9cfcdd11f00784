"""HostManager against the simulator over real sockets: host registry, monitor, SPM, task poller.

Calls are counted on the simulator's side (each `SimHost.call` wrapped), so "one
getAllTasksStatuses per tick per pool" is checked where it matters: at the host.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from daemon import model
from daemon.errors import Conflict, InvalidParams, NotFound
from daemon.hosts import HostManager, HostSettings, NoSpm
from daemon.model import HostStatus, Task, TaskStatus
from daemon.poller import PoolPoller
from daemon.registry import Registry
from daemon.store import Store
from daemon.vdsm.errors import NotSpm
from tests.conftest import Control, DataCenter, wait_until
from vdsm_simulator.app import Simulator

GiB = 1 << 30

FAST = HostSettings(
    fast_interval=0.02,
    idle_interval=0.2,
    young_seconds=30.0,
    missing_grace=3,
    monitor_interval=0.05,
    failures_before_non_responsive=2,
    call_timeout=2.0,
    spm_start_timeout=5.0,
    monitor_backoff_max=0.2,
)


@pytest.fixture
async def registry(tmp_path: Path) -> AsyncIterator[Registry]:
    store = Store(tmp_path / "d.db")
    await store.open()
    yield Registry(store)
    await store.close()


@pytest.fixture
async def hm(registry: Registry, request: pytest.FixtureRequest) -> AsyncIterator[HostManager]:
    marker = request.node.get_closest_marker("host_settings")
    settings = dataclasses.replace(FAST, **(marker.kwargs if marker else {}))
    manager = HostManager(registry, settings=settings)
    yield manager
    await manager.close()
    leaked = [
        t
        for t in asyncio.all_tasks()
        if t.get_name().startswith(("monitor-", "poller-")) and not t.done()
    ]
    assert leaked == []


class Calls:
    """Per-(host, method) call counts seen by the simulator."""

    def __init__(self, sim: Simulator) -> None:
        self.counts: collections.Counter[tuple[str, str]] = collections.Counter()
        for name, host in sim.cluster.hosts.items():
            original = host.call

            async def counted(
                method: str, params: Any, _name: str = name, _orig: Any = original
            ) -> Any:
                self.counts[(_name, method)] += 1
                return await _orig(method, params)

            host.call = counted  # type: ignore[method-assign]
            original_now = host.call_now

            def counted_now(  # verbs that never wait are answered without `call`
                method: str,
                params: Any,
                _name: str = name,
                _orig: Any = original_now,
                _verbs: Any = host.verbs,
            ) -> Any:
                verb = _verbs.get(method)
                if verb is not None and verb.now is not None:
                    self.counts[(_name, method)] += 1
                return _orig(method, params)

            host.call_now = counted_now  # type: ignore[method-assign]

    def of(self, method: str, host: str | None = None) -> int:
        return sum(n for (h, m), n in self.counts.items() if m == method and host in (None, h))


async def add_all(hm: HostManager, sim: Simulator, dc: DataCenter) -> None:
    for name in dc.hosts:
        await hm.add_host(name, "127.0.0.1", sim.port, dc.pool)


async def register_task(
    registry: Registry, host: str, pool: str, vdsm_id: str, *, verb: str = "createVolume"
) -> Task:
    """A task record as a command would leave it once its verb answered."""
    task = Task(model.new_id(), model.new_id(), model.new_id(), host, pool, verb)
    await registry.add_task(task)
    await registry.record_task_id(task, vdsm_id)
    return task


async def create_volume(hm: HostManager, host: str, dc: DataCenter) -> str:
    return await hm.vdsm(host).create_volume(
        dc.pool, dc.master, str(uuid.uuid4()), str(uuid.uuid4()), GiB
    )


# -- host registry ---------------------------------------------------------------------------


async def test_add_host_validates_and_registers(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    bad: list[tuple[dict[str, Any], str]] = [
        ({"port": 0}, "port must be 1..65535"),
        ({"port": 70000}, "port must be 1..65535"),
        ({"port": True}, "port must be 1..65535"),
        ({"pool": "not-a-uuid"}, "pool must be a storage pool UUID"),
        ({"pool": dc.pool.upper()}, "pool must be a storage pool UUID"),
        ({"transport": "smtp"}, "transport must be stomp or http"),
        ({"name": ""}, "host name must be"),
        ({"address": "a b"}, "address must be"),
    ]
    for change, message in bad:
        args: dict[str, Any] = {
            "name": "host1",
            "address": "127.0.0.1",
            "port": sim.port,
            "pool": dc.pool,
            **change,
        }
        with pytest.raises(InvalidParams, match=message):
            await hm.add_host(**args)
    assert registry.hosts == {}

    host = await hm.add_host("host1", "127.0.0.1", sim.port, dc.pool)
    assert host.status is HostStatus.UP  # checked once before add_host returns
    with pytest.raises(Conflict, match="already exists"):
        await hm.add_host("host1", "127.0.0.1", sim.port, dc.pool)
    assert [h.name for h in hm.hosts()] == ["host1"]
    await hm.vdsm("host1").ping()
    with pytest.raises(NotFound):
        hm.vdsm("nope")
    with pytest.raises(NotFound):
        await hm.remove_host("nope")


async def test_remove_host_refused_while_tasks_are_unsettled(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    task = await register_task(registry, dc.spm, dc.pool, str(uuid.uuid4()))
    with pytest.raises(Conflict, match=rf"{dc.spm}.*1 task.*{task.job_id}"):
        await hm.remove_host(dc.spm)
    registry.set_task_status(task, TaskStatus.LOST)
    await hm.remove_host(dc.spm)
    assert dc.spm not in registry.hosts
    with pytest.raises(NotFound):
        hm.vdsm(dc.spm)


# -- monitor ---------------------------------------------------------------------------------


@pytest.mark.sim(hosts=2, vms_per_host=1)
async def test_monitor_marks_non_responsive_and_up_again(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    reports: list[tuple[str, list[dict[str, Any]]]] = []

    def broken(host: str, vms: list[dict[str, Any]]) -> None:
        raise RuntimeError("a broken listener must not stop the monitor")

    hm.on_vm_report.extend([broken, lambda host, vms: reports.append((host, vms))])
    await add_all(hm, sim, dc)
    host1 = registry.hosts["host1"]
    await wait_until(lambda: any(h == "host1" and len(v) == 1 for h, v in reports))

    await control.faults("host1", down=True)
    await wait_until(lambda: host1.status is HostStatus.NON_RESPONSIVE, 5.0)
    assert host1.failures >= FAST.failures_before_non_responsive
    assert registry.hosts["host2"].status is HostStatus.UP

    await control.faults("host1", down=False)
    await wait_until(lambda: host1.status is HostStatus.UP, 5.0)
    assert host1.failures == 0 and host1.last_seen is not None
    count = len(reports)
    await wait_until(lambda: len(reports) > count + 2)  # the monitor keeps going


@pytest.mark.sim(hosts=2, vms_per_host=1)
async def test_vm_events_are_forwarded(hm: HostManager, sim: Simulator, dc: DataCenter) -> None:
    events: list[tuple[str, str, dict[str, Any]]] = []
    hm.on_vm_event.append(lambda host, method, params: events.append((host, method, params)))
    await add_all(hm, sim, dc)
    (vm,) = await hm.vdsm("host1").vm_stats()
    await hm.vdsm("host1").migrate_vm(vm["vmId"], "host2")
    await wait_until(
        lambda: any(
            h == "host2"
            and m == f"|virt|VM_status|{vm['vmId']}"
            and p[vm["vmId"]]["status"] == "Up"
            for h, m, p in events
        ),
        5.0,
    )
    assert any(m.startswith("|virt|VM_migration_status|") for _, m, _ in events)


# -- SPM -------------------------------------------------------------------------------------


async def test_spm_discovered_once_and_cached(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    calls = Calls(sim)
    spms = await asyncio.gather(*(hm.spm(dc.pool) for _ in range(10)))
    assert set(spms) == {dc.spm}
    assert calls.of("StoragePool.getSpmStatus") == len(dc.hosts)  # one round for ten callers
    assert await hm.spm(dc.pool) == dc.spm
    assert calls.of("StoragePool.getSpmStatus") == len(dc.hosts)
    assert calls.of("StoragePool.spmStart") == 0
    assert [h.name for h in registry.hosts.values() if h.spm] == [dc.spm]


@pytest.mark.sim(hosts=2, elect_spm=False)
async def test_spm_started_on_a_pool_without_one(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    assert dc.spm is None
    await add_all(hm, sim, dc)
    calls = Calls(sim)
    spm = await hm.spm(dc.pool)
    assert spm in dc.hosts
    assert calls.of("StoragePool.spmStart") == 1 and hm.spm_starts == 1
    assert calls.of("Task.clear", spm) == 1  # the spmStart task is not left behind
    assert sim.cluster.hosts[spm].tasks.raw_table() == []
    assert registry.hosts[spm].spm
    role, _, _ = await hm.vdsm(spm).spm_status(dc.pool)
    assert role == "SPM"


async def test_spm_lost_then_restarted(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control
) -> None:
    await add_all(hm, sim, dc)
    assert await hm.spm(dc.pool) == dc.spm
    await control.delete(f"/pools/{dc.pool}/spm")
    assert await hm.spm(dc.pool) == dc.spm  # cached: nobody told us yet
    with pytest.raises(NotSpm):
        await hm.vdsm(dc.spm).task_statuses()
    hm.forget_spm(dc.pool)
    spm = await hm.spm(dc.pool)
    assert hm.spm_starts == 1
    role, _, _ = await hm.vdsm(spm).spm_status(dc.pool)
    assert role == "SPM"


@pytest.mark.sim(hosts=2, elect_spm=False)
async def test_no_spm_when_no_host_is_reachable(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    for name in dc.hosts:
        await control.faults(name, down=True)
    await wait_until(
        lambda: all(h.status is HostStatus.NON_RESPONSIVE for h in registry.hosts.values()), 5.0
    )
    async with asyncio.timeout(1.0):  # fails fast, not after spm_start_timeout
        with pytest.raises(NoSpm, match="no reachable host"):
            await hm.spm(dc.pool)


@pytest.mark.sim(hosts=2, elect_spm=False)
@pytest.mark.host_settings(spm_start_timeout=0.5)
async def test_no_spm_when_spm_start_keeps_failing(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control
) -> None:
    await add_all(hm, sim, dc)
    for name in dc.hosts:
        await control.faults(
            name, error_code=100, error_message="no lease", error_methods=["StoragePool.spmStart"]
        )
    with pytest.raises(NoSpm, match=r"no SPM after 0\.5 s"):
        await hm.spm(dc.pool)
    assert hm.spm_starts >= 2  # tried, and rotated between candidates


# -- task poller -----------------------------------------------------------------------------


async def test_poller_one_call_per_tick_whatever_the_task_count(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    reported: list[Task] = []
    hm.on_task_report.append(reported.append)
    await control.post(f"/hosts/{dc.spm}/hold")
    calls = Calls(sim)
    tasks = [
        await register_task(registry, dc.spm, dc.pool, await create_volume(hm, dc.spm, dc))
        for _ in range(25)
    ]
    hm.watch(dc.pool)
    await wait_until(lambda: all(t.vdsm_state == "running" for t in tasks), 5.0)
    await wait_until(lambda: hm.polls.get(dc.pool, 0) >= 5, 5.0)
    await control.post(f"/hosts/{dc.spm}/release", {})
    await wait_until(lambda: all(t.status is TaskStatus.ENDED for t in tasks), 5.0)
    assert {(t.vdsm_state, t.vdsm_result, t.code) for t in tasks} == {("finished", "success", 0)}
    await wait_until(lambda: hm._pollers[dc.pool].done(), 5.0)  # nothing left to poll: it stops

    polls = calls.of("Host.getAllTasksStatuses")
    assert polls == hm.polls[dc.pool]  # one call per tick, on the SPM only
    assert calls.of("Host.getAllTasksStatuses", dc.spm) == polls
    assert polls < 100  # 25 tasks over the whole run, never one call per task per tick
    assert calls.of("Task.getStatus") == 0
    assert {t.id for t in reported} == {t.id for t in tasks}  # running, then finished

    # an ENDED task is still reported (a revert makes it run again); a new watch restarts polling
    hm.watch(dc.pool)
    await wait_until(lambda: calls.of("Host.getAllTasksStatuses") > polls, 5.0)


async def polled_held_task(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> PoolPoller:
    """A pool whose one task never ends (SPM held), being polled."""
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    await control.post(f"/hosts/{dc.spm}/hold")
    await register_task(registry, dc.spm, dc.pool, await create_volume(hm, dc.spm, dc))
    hm.watch(dc.pool)
    return hm._poll_state[dc.pool]


async def backed_off_poller(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> PoolPoller:
    """A pool whose one task never ends (SPM held), its poller backed off to idle_interval 0.16
    (young_seconds 0): 0.02 -> 0.04 -> 0.08 -> 0.16."""
    state = await polled_held_task(hm, sim, dc, control, registry)
    await wait_until(lambda: state.interval == 0.16, 5.0)
    return state


@pytest.mark.host_settings(young_seconds=0.0, idle_interval=0.16)
async def test_poller_backs_off_when_idle_and_boost_speeds_it_up(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    state = await backed_off_poller(hm, sim, dc, control, registry)
    hm.boost(dc.pool, seconds=5.0)
    await wait_until(lambda: state.interval == FAST.fast_interval, 5.0)
    polls = hm.polls[dc.pool]
    await wait_until(lambda: hm.polls[dc.pool] >= polls + 5, 1.0)  # fast while boosted
    await control.post(f"/hosts/{dc.spm}/release", {})


@pytest.mark.host_settings(fast_interval=0.16, cancel_interval=0.02, idle_interval=0.2)
async def test_a_pending_cancel_polls_at_the_cancel_pace(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    """Young tasks are polled at `fast_interval`; a pool with a cancel pending, which someone
    waits for, at the shorter `cancel_interval` (issue 3, CPU: the first could then be longer)."""
    state = await polled_held_task(hm, sim, dc, control, registry)
    await wait_until(lambda: hm.polls.get(dc.pool, 0) >= 2, 5.0)
    assert state.interval == 0.16  # young: the fast pace, not the cancel one
    hm.boost(dc.pool, seconds=5.0)
    assert state.interval == 0.02
    polls = hm.polls[dc.pool]
    await wait_until(lambda: hm.polls[dc.pool] >= polls + 10, 5.0)
    assert state.interval == 0.02
    await control.post(f"/hosts/{dc.spm}/release", {})


@pytest.mark.host_settings(young_seconds=0.0, idle_interval=0.16)
async def test_a_task_start_wakes_only_a_backed_off_poller(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    """A poller on the fast pace polls within `fast_interval` anyway: waking it on every task
    start polled busy pools several times per fast tick (issue 3, CPU)."""
    state = await backed_off_poller(hm, sim, dc, control, registry)
    state.wake.clear()
    hm.watch(dc.pool)
    assert state.wake.is_set()  # a backed-off poller is woken
    hm.boost(dc.pool, seconds=5.0)  # back on the fast pace
    await wait_until(lambda: hm.polls[dc.pool] >= 2 and not state.wake.is_set(), 5.0)
    assert state.interval == FAST.fast_interval
    hm.watch(dc.pool)
    assert not state.wake.is_set()  # a fast one is not: it polls within fast_interval anyway
    assert state.rescan  # but its next tick includes the new task
    await control.post(f"/hosts/{dc.spm}/release", {})


async def test_on_poll_times_every_task_poll(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    timed: list[tuple[str, float, bool]] = []
    hm.on_poll = lambda host, seconds, ok: timed.append((host, seconds, ok))
    await control.post(f"/hosts/{dc.spm}/hold")
    await register_task(registry, dc.spm, dc.pool, await create_volume(hm, dc.spm, dc))
    hm.watch(dc.pool)
    await wait_until(lambda: len(timed) >= 3, 5.0)
    assert {(host, ok) for host, _, ok in timed} == {(dc.spm, True)}
    assert all(0 <= seconds < FAST.call_timeout for _, seconds, _ in timed)
    assert len([t for t in timed if t[2]]) == hm.polls[dc.pool]
    await control.faults(
        dc.spm, error_code=100, error_message="boom", error_methods=["Host.getAllTasksStatuses"]
    )
    await wait_until(lambda: (dc.spm, False) in {(h, ok) for h, _, ok in timed}, 5.0)
    await control.faults(dc.spm, error_code=0, error_methods=[])
    await control.post(f"/hosts/{dc.spm}/release", {})


async def test_tasks_being_cleared_are_not_unknown(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    """The poller watches only POLLING and ENDED tasks; a task the SPM still lists while its
    record is CLEARING (or CLEARED) is still ours, never handed to the orphan reaper."""
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    unknown: list[str] = []
    hm.on_unknown_tasks.append(lambda pool, host, ids: unknown.extend(ids))
    ours = await register_task(registry, dc.spm, dc.pool, await create_volume(hm, dc.spm, dc))
    hm.watch(dc.pool)
    await wait_until(lambda: ours.status is TaskStatus.ENDED, 5.0)
    registry.set_task_status(ours, TaskStatus.CLEARING)  # Task.clear "in flight"
    stranger = await create_volume(hm, dc.spm, dc)
    hm.sweep()
    await wait_until(lambda: stranger in unknown, 5.0)
    assert ours.vdsm_id not in unknown


async def test_task_cleared_behind_our_back_becomes_lost_after_grace(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    spm = hm.vdsm(dc.spm)
    vdsm_id = await create_volume(hm, dc.spm, dc)

    async def finished() -> bool:
        return (await spm.task_status(vdsm_id)).state == "finished"

    async with asyncio.timeout(5):
        while not await finished():  # noqa: ASYNC110 - remote state
            await asyncio.sleep(0.005)
    await spm.clear_task(vdsm_id)  # someone else cleared it
    task = await register_task(registry, dc.spm, dc.pool, vdsm_id)
    lost_at: list[int] = []
    hm.on_task_report.append(lambda t: lost_at.append(hm.polls[dc.pool]))
    hm.watch(dc.pool)
    await wait_until(lambda: task.status is TaskStatus.LOST, 5.0)
    assert lost_at == [FAST.missing_grace]  # exactly after the grace, notified once
    assert (task.vdsm_state, task.message) == ("unknown", "missing from the SPM's task list")


async def test_unknown_tasks_are_reported(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    unknown: list[tuple[str, str, list[str]]] = []
    hm.on_unknown_tasks.append(lambda pool, host, ids: unknown.append((pool, host, ids)))
    ours = await register_task(registry, dc.spm, dc.pool, await create_volume(hm, dc.spm, dc))
    stranger = await create_volume(hm, dc.spm, dc)
    hm.watch(dc.pool)
    await wait_until(lambda: bool(unknown), 5.0)
    assert unknown[0] == (dc.pool, dc.spm, [stranger])
    assert ours.vdsm_id not in unknown[0][2]


async def test_poller_follows_the_spm_after_654(
    hm: HostManager, sim: Simulator, dc: DataCenter, control: Control, registry: Registry
) -> None:
    await add_all(hm, sim, dc)
    assert dc.spm is not None
    other = next(h for h in dc.hosts if h != dc.spm)
    assert await hm.spm(dc.pool) == dc.spm
    await control.post(f"/pools/{dc.pool}/spm", {"host": other})  # the SPM moved
    calls = Calls(sim)
    await control.post(f"/hosts/{other}/hold")
    task = await register_task(registry, other, dc.pool, await create_volume(hm, other, dc))
    hm.watch(dc.pool)
    await wait_until(lambda: task.vdsm_state == "running", 5.0)
    assert calls.of("Host.getAllTasksStatuses", dc.spm) == 1  # answered 654 once
    assert await hm.spm(dc.pool) == other
    await control.post(f"/hosts/{other}/release", {})
    await wait_until(lambda: task.status is TaskStatus.ENDED, 5.0)
    assert task.status is TaskStatus.ENDED  # never counted as missing meanwhile


async def test_http_transport_parity(
    hm: HostManager, sim: Simulator, dc: DataCenter, registry: Registry, control: Control
) -> None:
    spm = dc.spm
    assert spm is not None
    for name in dc.hosts:
        await hm.add_host(name, "127.0.0.1", sim.port, dc.pool, transport="http")
    assert {h.status for h in registry.hosts.values()} == {HostStatus.UP}
    task = await register_task(registry, spm, dc.pool, await create_volume(hm, spm, dc))
    hm.watch(dc.pool)
    await wait_until(lambda: task.status is TaskStatus.ENDED, 5.0)
    await control.faults(spm, down=True)
    await wait_until(lambda: registry.hosts[spm].status is HostStatus.NON_RESPONSIVE, 5.0)
    await control.faults(spm, down=False)
    await wait_until(lambda: registry.hosts[spm].status is HostStatus.UP, 5.0)

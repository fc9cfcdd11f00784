"""CPU of one task-poll tick of one pool, without sockets (issue 3, benchmark a, explained).

`completion_latency.py` measures the whole daemon on a shared machine, where the poll's share
is hard to see. This runs the poller's own work alone: a pool with `--tasks` POLLING tasks and
`--history` finished (CLEARED) ones on its SPM, a client that answers every
`Host.getAllTasksStatuses` with the same JSON text (decoded each time, as the STOMP client
does), and `--ticks` ticks: `PoolPoller.poll_once` plus the pace decision of `PoolPoller.run`.
Prints CPU microseconds per tick. Import path decides which daemon is measured, so the same
script measures an older checkout (`PYTHONPATH=/path/to/checkout`).

    python bench/poll_cost.py                 # 50 tasks, 75 finished, 5,000 ticks
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from daemon import model
from daemon.hosts import HostManager
from daemon.model import Host, Task, TaskStatus
from daemon.registry import Registry
from daemon.store import Store
from daemon.vdsm.verbs import VdsmHost

POOL = "5849b030-626e-47cb-ad90-3ce782d831b3"
SPM = "host1"


class CannedClient:
    """Answers getAllTasksStatuses with one canned JSON text, decoded per call."""

    label = SPM

    def __init__(self, text: str) -> None:
        self.text = text

    async def call(self, method: str, params: Any = None, *, timeout: float | None = None) -> Any:  # noqa: ASYNC109
        return json.loads(self.text)

    def on_event(self, callback: Any) -> None:
        pass

    async def close(self) -> None:
        pass


async def measure(tasks: int, history: int, ticks: int, workdir: Path) -> float:
    store = Store(workdir / "d.db", synchronous="OFF")
    await store.open()
    registry = Registry(store)
    await registry.put_host(Host(SPM, "127.0.0.1", 1, POOL))
    statuses: dict[str, Any] = {}
    for i in range(tasks + history):
        task = Task(model.new_id(), model.new_id(), model.new_id(), SPM, POOL, "createVolume")
        await registry.add_task(task)
        vdsm_id = model.new_id()
        await registry.record_task_id(task, vdsm_id)
        if i < tasks:
            statuses[vdsm_id] = {
                "taskID": vdsm_id,
                "taskState": "running",
                "taskResult": "",
                "code": 0,
                "message": "running job 1 of 1",
            }
        else:
            registry.set_task_status(task, TaskStatus.CLEARING)
            registry.set_task_status(task, TaskStatus.CLEARED)
    hm = HostManager(registry)
    hm._vdsm[SPM] = VdsmHost(SPM, CannedClient(json.dumps(statuses)))
    hm._spm._spm[POOL] = SPM
    hm.watch(POOL)  # makes the pool's poller state (and starts its task: stopped below)
    for poller in list(hm._pollers.values()):
        poller.cancel()
    state = hm._poll_state[POOL]
    watched = getattr(state, "watched", None)

    async def tick() -> None:
        await state.poll_once()
        pool_tasks = watched() if watched is not None else hm.pool_tasks(POOL)
        active = [t for t in pool_tasks if t.status is TaskStatus.POLLING]
        now = time.time()
        any(now - t.created_at < 30.0 for t in active)

    for _ in range(100):  # warm-up (and the first rescan)
        await tick()
    started = time.process_time()
    for _ in range(ticks):
        await tick()
    per_tick = (time.process_time() - started) / ticks
    await store.close()
    return per_tick


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=50, help="POLLING tasks in the pool (50)")
    p.add_argument("--history", type=int, default=75, help="CLEARED tasks on its SPM (75)")
    p.add_argument("--ticks", type=int, default=5000, help="measured ticks (5000)")
    args = p.parse_args(argv)
    import daemon

    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        per_tick = asyncio.run(measure(args.tasks, args.history, args.ticks, Path(tmp)))
    print(f"daemon from {Path(daemon.__file__).parent}")
    print(
        f"{args.tasks} tasks polled, {args.history} finished ones on the SPM: "
        f"{per_tick * 1e6:.0f} us CPU per tick ({per_tick * 500:.3f} core at 500 ticks/s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

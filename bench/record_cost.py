"""What one record change costs the event loop (issue 4: a cancel burst makes ~27 per job).

A `Registry` on a real `Store` (temporary SQLite file, synchronous=FULL) in this process, no
simulator: `--tasks` task records are each changed `--rounds` times, every round followed by a
flush. Prints, in microseconds of the loop thread's CPU (`time.thread_time`; SQLite's writer
thread is not counted):

* emit: `Registry._emit` per change, the part paid when the change is made (`to_doc`, the
  event, the store's queue);
* commit share: the flush per change, the part paid on the loop when the writer commits it
  (grouping, the rows, each document's JSON);
* row: `store._rows` alone per task row, the rows a commit binds.

    python bench/record_cost.py              # 3,000 tasks, 5 rounds, best of 3 runs
    python bench/record_cost.py --quick      # smoke: 300 tasks, 2 rounds, one run
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchlib import add_gc_flag, machine, run_loop, set_gc

from daemon import model
from daemon.registry import Registry
from daemon.store import Store, _rows

_TASK_COLUMNS = ("job_id", "host", "status", "vdsm_id")  # the tasks table's columns (store.py)


@dataclass
class Cost:
    emit_us: float
    commit_us: float
    row_us: float


def _tasks(count: int) -> list[model.Task]:
    return [
        model.Task(
            model.new_id(),
            f"job-{i // 3}",
            "command",
            "host1",
            "pool",
            "createVolume",
            status=model.TaskStatus.POLLING,
            vdsm_id=model.new_id(),
        )
        for i in range(count)
    ]


async def measure(tasks: int, rounds: int, workdir: Path) -> Cost:
    store = Store(workdir / "records.db")
    await store.open()
    try:
        registry = Registry(store)
        records = _tasks(tasks)
        for task in records:
            registry._emit("task", task.id, task, task.job_id, "created")
        await store.flush()
        emitting = committing = 0.0
        for _ in range(rounds):
            started = time.thread_time()
            for task in records:
                task.updated_at = model.now()
                registry._emit("task", task.id, task, task.job_id, "updated")
            emitted = time.thread_time()
            await store.flush()
            emitting += emitted - started
            committing += time.thread_time() - emitted
        docs = [(task.id, model.to_doc(task)) for task in records]
        started = time.thread_time()
        for _ in range(rounds):
            _rows(docs, _TASK_COLUMNS)
        rows = time.thread_time() - started
    finally:
        await store.close()
    changes = tasks * rounds
    return Cost(emitting / changes * 1e6, committing / changes * 1e6, rows / changes * 1e6)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", type=int, default=3000, help="task records (3,000)")
    p.add_argument("--rounds", type=int, default=5, help="changes of each record (5)")
    p.add_argument("--runs", type=int, default=3, help="runs; the best is printed (3)")
    p.add_argument("--quick", action="store_true", help="smoke run: 300 tasks, 2 rounds, 1 run")
    add_gc_flag(p)
    args = p.parse_args(argv)
    if args.quick:
        args.tasks, args.rounds, args.runs = 300, 2, 1
    print(f"machine: {machine()}")
    set_gc(args.python_gc, args.gc_threshold)
    costs = []
    for run in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="bench-records-") as tmp:
            cost = run_loop(measure(args.tasks, args.rounds, Path(tmp)))
        costs.append(cost)
        print(
            f"run {run + 1}: emit {cost.emit_us:.1f} us, commit share {cost.commit_us:.1f} us "
            f"per change; row {cost.row_us:.2f} us"
        )
    best = min(costs, key=lambda c: c.emit_us + c.commit_us)
    print(
        f"best of {len(costs)}, {args.tasks} tasks x {args.rounds} changes: emit "
        f"{best.emit_us:.1f} us + commit share {best.commit_us:.1f} us per change on the loop; "
        f"a task row {best.row_us:.2f} us"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

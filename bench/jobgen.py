"""A database of stored jobs for the restart and memory benchmarks (issue 3, c and d).

Written through the daemon's own `Store` (its writer, its group commit, its documents from
`model.to_doc`), so what a benchmark loads is exactly what a running daemon would have left:
CreateDisk jobs, each with its root command, its steps (VALIDATING, EXECUTING, the task's
CREATE_VOLUME under EXECUTING, FINALIZING) and its VDSM task.

* terminal jobs: FINISHED, command ENDED_SUCCESSFULLY in phase ``done`` with its result, four
  ended steps, the task CLEARED, no lock; ended within the last minutes (retention keeps them);
* active jobs: STARTED, waiting for their task (command ACTIVE in phase ``wait``), the task
  POLLING on its pool's SPM with a VDSM id, its CREATE_VOLUME step open, the disk lock held.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from pathlib import Path

from daemon import model
from daemon.model import (
    Command,
    CommandStatus,
    Host,
    HostStatus,
    Job,
    JobStatus,
    Lock,
    LockKind,
    Step,
    StepStatus,
    StepType,
    Task,
    TaskStatus,
    new_id,
)
from daemon.store import Kind, Store


@dataclass(frozen=True)
class PoolInfo:
    pool: str
    domain: str
    spm: str  # host name


async def generate(
    path: Path,
    pools: list[PoolInfo],
    address: str,
    port: int,
    *,
    jobs: int,
    active: int,
    seed: int = 0,
) -> dict[str, int]:
    """Write `jobs` CreateDisk jobs, `active` of them waiting for their task; returns counts."""
    rng = random.Random(seed)
    store = Store(path, synchronous="NORMAL")
    await store.open()
    rows = 0

    def put(kind: Kind, key: str, record: model.Record) -> None:
        nonlocal rows
        store.put_nowait(kind, key, model.to_doc(record))
        rows += 1

    try:
        for p in pools:
            put("host", p.spm, Host(p.spm, address, port, p.pool, status=HostStatus.UP, spm=True))
        now = time.time()
        active_at = set(rng.sample(range(jobs), active))
        for i in range(jobs):
            p = pools[i % len(pools)]
            live = i in active_at
            created = now - (rng.uniform(1, 50) if live else rng.uniform(60, 400))
            image, volume, vdsm_id = new_id(), new_id(), new_id()
            params = {"pool": p.pool, "domain": p.domain, "size": 1 << 30}
            result = {"pool": p.pool, "domain": p.domain, "image": image, "volume": volume}
            job = Job(
                new_id(),
                "CreateDisk",
                params,
                1000,
                new_id(),
                "Create a disk (an image with one volume) on a storage domain",
                created_at=created,
                updated_at=created + 3,
            )
            cmd = Command(new_id(), job.id, "CreateDisk", params, root_id="", hidden=False)
            cmd.root_id = cmd.id
            cmd.created_at = created
            cmd.data = {"phase": "wait", "image": image, "volume": volume}
            ended = None if live else created + rng.uniform(5, 60)
            done = StepStatus.FINISHED
            validating = Step(new_id(), job.id, StepType.VALIDATING, "Validating", 1)
            validating.status, validating.ended_at = done, created + 0.01
            executing = Step(new_id(), job.id, StepType.EXECUTING, "Executing", 2)
            executing.status, executing.ended_at = done, created + 0.05
            task_step = Step(
                new_id(),
                job.id,
                StepType.CREATE_VOLUME,
                f"createVolume on {p.spm}",
                3,
                executing.id,
                external_id=vdsm_id,
                external_type="VDSM",
                host=p.spm,
            )
            task = Task(
                new_id(),
                job.id,
                cmd.id,
                p.spm,
                p.pool,
                "createVolume",
                status=TaskStatus.POLLING,
                vdsm_id=vdsm_id,
                step_id=task_step.id,
                vdsm_state="running",
                created_at=created + 0.02,
                updated_at=created + 0.04,
            )
            steps = [validating, executing, task_step]
            if live:
                cmd.status = CommandStatus.ACTIVE
                lock = Lock(f"disk:{image}", LockKind.EXCLUSIVE, job.id, created)
                put("lock", f"{lock.entity}|{job.id}", lock)
            else:
                assert ended is not None
                job.status, job.ended_at, job.updated_at = JobStatus.FINISHED, ended, ended
                job.result = result
                cmd.status = CommandStatus.ENDED_SUCCESSFULLY
                cmd.data.update(phase="done", result=result)
                task_step.status, task_step.ended_at = done, ended - 0.5
                finalizing = Step(new_id(), job.id, StepType.FINALIZING, "Finalizing", 4)
                finalizing.status, finalizing.ended_at = done, ended - 0.1
                steps.append(finalizing)
                task.status, task.vdsm_state, task.vdsm_result = (
                    TaskStatus.CLEARED,
                    "finished",
                    "success",
                )
                task.updated_at = ended - 0.2
            put("job", job.id, job)
            put("command", cmd.id, cmd)
            for step in steps:
                put("step", step.id, step)
            put("task", task.id, task)
            if i % 2000 == 1999:
                await store.flush()
        await store.flush()
    finally:
        await store.close()
    return {"jobs": jobs, "active": active, "rows": rows}

"""A whole stack for end-to-end tests: vdsm-sim (a port per host) and a Daemon on a temp SQLite.

Every test drives the real daemon over real STOMP connections to the real simulator; nothing is
mocked. Polling is set fast so jobs finish in milliseconds of simulated time.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from daemon import model
from daemon.config import Config, HostEntry, PollingSection, load_config
from daemon.model import Job
from daemon.service import Daemon
from vdsm_simulator.app import Simulator
from vdsm_simulator.cluster import SimConfig
from vdsm_simulator.config import ServerConfig, Settings

FAST_POLLING = PollingSection(
    fast_interval=0.02,
    idle_interval=0.2,
    young_seconds=30.0,
    missing_grace=3,
    monitor_interval=0.1,
    failures_before_non_responsive=2,
    call_timeout=5.0,
    spm_start_timeout=10.0,
)


@dataclasses.dataclass
class Stack:
    sim: Simulator
    daemon: Daemon
    db: Path
    pool: str
    domains: list[str]

    async def wait_job(self, job: Job, deadline: float = 20.0) -> Job:
        """Wait for a job to end (deadline, no sleeps): returns the job record."""
        reg = self.daemon.registry
        async with asyncio.timeout(deadline):
            while reg.jobs[job.id].status not in model.JOB_TERMINAL:
                await reg.wait_changed(job.id)
        return reg.jobs[job.id]

    async def submit(self, action: str, params: dict[str, Any], **kw: Any) -> Job:
        return await self.daemon.executor.submit(action, params, owner=1000, **kw)

    def sim_tasks(self) -> dict[str, list[dict[str, Any]]]:
        """The simulator's own raw task tables, by host (the ground truth)."""
        return {n: h.tasks.raw_table() for n, h in self.sim.cluster.hosts.items()}

    def volumes(self) -> set[str]:
        pool = self.sim.cluster.storage.pools[self.pool]
        return {v for d in pool.domains.values() for v in d.volumes}


def daemon_config(db: Path, hosts: list[HostEntry]) -> Config:
    config = load_config(None).with_overrides(db=db)
    daemon_section = dataclasses.replace(config.daemon, synchronous="NORMAL")
    return dataclasses.replace(
        config, daemon=daemon_section, polling=FAST_POLLING, hosts=tuple(hosts)
    )


async def start_sim(hosts: int = 3, **sim_options: Any) -> Simulator:
    """A started simulator with a port per host and millisecond tasks (stop it yourself)."""
    options: dict[str, Any] = {
        "time_scale": 0.005,
        "task_seconds": 1.0,
        "task_distribution": "fixed",
        "recovering_seconds": 1.0,
    }
    options.update(sim_options)
    cluster = SimConfig(hosts=hosts, **options)
    sim = Simulator(Settings(ServerConfig(port=0, port_per_host=True), cluster))
    await sim.start()
    return sim


@asynccontextmanager
async def running_stack(
    tmp_path: Path,
    *,
    hosts: int = 3,
    db: Path | None = None,
    sim: Simulator | None = None,
    api: bool = False,
    configure: Callable[[Config], Config] | None = None,
    **sim_options: Any,
) -> AsyncIterator[Stack]:
    """A daemon on `db` (default: tmp_path/taskmgrd.db) and a simulator (`sim`, or a new one
    stopped at the end); `configure` may change the daemon's Config before it starts."""
    own_sim = sim is None
    if sim is None:
        sim = await start_sim(hosts, **sim_options)
    pool = next(iter(sim.cluster.storage.pools.values()))
    entries = [
        HostEntry(name, "127.0.0.1", port, pool.uuid)
        for name, port in sorted(sim.host_ports.items())
    ]
    db = db or tmp_path / "taskmgrd.db"
    config = daemon_config(db, entries).with_overrides(socket=tmp_path / "api.sock")
    if configure is not None:
        config = configure(config)
    daemon = Daemon(config)
    await daemon.start(api=api)
    try:
        yield Stack(sim, daemon, db, pool.uuid, list(pool.domains))
    finally:
        await daemon.stop()
        if own_sim:
            await sim.stop()

"""The simulated data centre: hosts `host1..hostN`, storage pools, VMs, and the SPM roles.

The cluster is what the server looks hosts up in (`get_host`), what the control API changes, and
what owns the things hosts share: storage, the VM fleet and the per-pool task directories that
VDSM keeps on the master domain (`<state-dir>/pools/<pool>/tasks`), from which a new SPM reloads
and rolls back the tasks of the one before it.
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vdsm_simulator.clock import SimClock
from vdsm_simulator.host import SimHost
from vdsm_simulator.storage import Pool, Storage
from vdsm_simulator.taskstore import TaskStore
from vdsm_simulator.vms import VmFleet

log = logging.getLogger(__name__)

# Fixed namespace so that one seed always names pools and domains the same way.
_NAMESPACE = uuid.UUID("6f0c3c8e-2f55-4b44-9a52-5b0f1b2c7d10")


@dataclass
class SimConfig:
    """Every knob of the simulator; `vdsm-sim` and config/vdsm-sim.toml fill it."""

    hosts: int = 1  # hosts host1..hostN
    pools: int = 1  # storage pools; hosts are split among them in order
    domains_per_pool: int = 2  # storage domains per pool; the first is the master
    seed: int = 0  # seeds every random draw (durations, faults)
    time_scale: float = 1.0  # real seconds per simulated second
    task_seconds: float = 2.0  # mean simulated duration of a storage job
    task_distribution: str = "exponential"  # exponential, uniform or fixed
    spm_start_seconds: float = 1.0  # simulated seconds spmStart takes to acquire the lease
    elect_spm: bool = True  # give each pool an SPM (its first host) at start
    recovering_seconds: float = 5.0  # simulated seconds a restarted host answers 99
    workers: int = 10  # storage task workers per host, as VDSM
    queue_size: int = 500  # task queue bound per host, as VDSM
    vms_per_host: int = 0  # VMs created Up on each host at start
    vm_memory_mb: int = 1024  # memory of those VMs
    state_dir: Path | None = None  # persist storage and SPM tasks here; None keeps all in memory

    def validate(self) -> None:
        if self.hosts < 1:
            raise ValueError("hosts must be at least 1")
        if not 1 <= self.pools <= self.hosts:
            raise ValueError("pools must be between 1 and the number of hosts")
        if self.domains_per_pool < 1:
            raise ValueError("domains_per_pool must be at least 1")
        if self.time_scale <= 0:
            raise ValueError("time_scale must be positive")
        if self.task_seconds < 0:
            raise ValueError("task_seconds must not be negative")
        if self.task_distribution not in ("exponential", "uniform", "fixed"):
            raise ValueError("task_distribution must be exponential, uniform or fixed")
        if self.workers < 1 or self.queue_size < 1:
            raise ValueError("workers and queue_size must be at least 1")


def _stable_uuid(*parts: object) -> str:
    return str(uuid.uuid5(_NAMESPACE, "/".join(str(p) for p in parts)))


class Cluster:
    def __init__(self, config: SimConfig) -> None:
        config.validate()
        self.config = config
        self.clock = SimClock(config.time_scale)
        state_file = None
        if config.state_dir is not None:
            config.state_dir.mkdir(parents=True, exist_ok=True)
            state_file = config.state_dir / "storage.json"
        self.storage = Storage(state_file)
        self.hosts: dict[str, SimHost] = {}
        self.aliases: dict[str, str] = {}  # address or address:port -> host name
        self.fleet = VmFleet(
            self.clock,
            self._events_for,
            self.resolve_host,
            storage=self.storage,
            gate_for=lambda name: self.hosts[name].gate,
        )
        self._stores: dict[str, TaskStore] = {}
        self.restored = False

    # -- building -------------------------------------------------------------------------

    async def start(self) -> None:
        """Create hosts, pools and VMs (or reload storage), then elect SPMs and recover tasks."""
        cfg = self.config
        names = [f"host{i}" for i in range(1, cfg.hosts + 1)]
        self.restored = self.storage.load()
        if not self.restored:
            for p in range(cfg.pools):
                members = names[p :: cfg.pools]
                self.storage.add_pool(
                    f"pool{p + 1}",
                    members,
                    cfg.domains_per_pool,
                    pool_id=_stable_uuid(cfg.seed, "pool", p + 1),
                    domain_ids=[
                        _stable_uuid(cfg.seed, "pool", p + 1, "sd", d + 1)
                        for d in range(cfg.domains_per_pool)
                    ],
                )
        for name in names:
            self._new_host(name)
        for pool in self.storage.pools.values():
            pool.spm_host, pool.spm_id = None, -1  # a (re)started data centre has no SPM yet
            if cfg.elect_spm:
                await self.elect_spm(pool, pool.hosts[0])
        self.storage.save()
        for name in names:
            for _ in range(cfg.vms_per_host):
                self.fleet.add_vm(
                    str(uuid.uuid4()), f"vm-{name}-{_ + 1}", name, memory_mb=cfg.vm_memory_mb
                )

    def _new_host(self, name: str) -> SimHost:
        pool = self.storage.pool_of_host(name)
        host_id = pool.hosts.index(name) + 1 if pool else 1
        host = SimHost(
            self,
            name,
            host_id,
            seed=self.config.seed,
            workers=self.config.workers,
            queue_size=self.config.queue_size,
        )
        self.hosts[name] = host
        return host

    async def add_host(self, pool_id: str | None = None) -> SimHost:
        """A new host `host<N+1>`, member of a pool (the first pool when none is given)."""
        name = f"host{len(self.hosts) + 1}"
        while name in self.hosts:
            name = f"host{int(name[4:]) + 1}"
        pool = self.storage.pool(pool_id) if pool_id else next(iter(self.storage.pools.values()))
        pool.hosts.append(name)
        self.storage.save()
        return self._new_host(name)

    async def close(self) -> None:
        for host in self.hosts.values():
            await host.close()
        await self.fleet.close()

    # -- lookups (the server's HostDirectory) ---------------------------------------------

    def get_host(self, name: str | None) -> SimHost | None:
        if name is None or name == "":
            return self.hosts.get("host1")
        host = self.hosts.get(name)
        if host is None and name in self.aliases:
            host = self.hosts.get(self.aliases[name])
        return host

    def resolve_host(self, address: str) -> str | None:
        """Map a migration destination ("host2", "host2:54321", an alias) to a host name."""
        if address in self.hosts:
            return address
        if address in self.aliases:
            return self.aliases[address]
        base = address.rsplit(":", 1)[0] if ":" in address else address
        if base in self.hosts:
            return base
        return self.aliases.get(base)

    def _events_for(self, name: str) -> Any:
        return self.hosts[name].events

    def host_alive(self, name: str) -> bool:
        host = self.hosts.get(name)
        return host is not None and host.up

    # -- SPM --------------------------------------------------------------------------------

    def pool_task_store(self, pool: Pool) -> TaskStore | None:
        if self.config.state_dir is None:
            return None
        store = self._stores.get(pool.uuid)
        if store is None:
            directory = self.config.state_dir / "pools" / pool.uuid / "tasks"
            directory.mkdir(parents=True, exist_ok=True)
            store = self._stores[pool.uuid] = TaskStore(directory)
        return store

    def task_store(self, host_name: str) -> TaskStore | None:
        pool = self.storage.pool_of_host(host_name)
        return self.pool_task_store(pool) if pool is not None else None

    async def elect_spm(self, pool: Pool, host_name: str) -> None:
        """Make a host SPM at once (start-up, control API) and recover the pool's tasks on it."""
        if pool.spm_host is not None and pool.spm_host != host_name:
            await self.drop_spm(pool)
        host = self.hosts[host_name]
        self.storage.set_spm(pool, host_name, host.host_id)
        store = self.pool_task_store(pool)
        if store is not None:
            await host.tasks.load_persisted(store, skip_known=True)

    async def drop_spm(self, pool: Pool) -> list[str]:
        """The SPM loses its lease: its in-memory SPM tasks are gone, their files stay on storage.

        VDSM panics when it loses the SPM lease, so the jobs of those tasks die with it rather
        than carry on and overwrite what the next SPM recovers. (spmStop is not this: it keeps
        the tasks, see StorageVerbs.spm_stop.)
        """
        dropped: list[str] = []
        if pool.spm_host is not None and pool.spm_host in self.hosts:
            dropped = self.hosts[pool.spm_host].tasks.drop_tag("spm", kill=True)
        self.storage.set_spm(pool, None)
        return dropped

    def topology(self) -> dict[str, Any]:
        return {
            "pools": self.storage.topology(),
            "hosts": [
                {
                    "name": h.name,
                    "host_id": h.host_id,
                    "pool": (p.uuid if (p := self.storage.pool_of_host(h.name)) else None),
                    "spm": h.is_spm(),
                    "up": h.up,
                    "recovering": h.is_recovering(),
                    "aliases": sorted(a for a, n in self.aliases.items() if n == h.name),
                }
                for h in self.hosts.values()
            ],
            "vms": self.fleet.topology(),
        }

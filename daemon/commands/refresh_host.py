"""RefreshHost {host}: the simple command (scenario 1) — ask a host for its state, no tasks."""

from __future__ import annotations

from typing import Any

from daemon.engine.command import CommandBase
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import NotFound
from daemon.model import CancelMode, LockKind


class RefreshHost(CommandBase):
    spec = ActionSpec(
        "RefreshHost",
        "Refresh a host's statistics and VM list",
        {"host": Param("name", description="the host's name")},
        CancelPolicy(
            modes=frozenset({CancelMode.STOP}),
            notes="reads only: stopping it leaves nothing behind, so revert is not offered",
        ),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"host:{self.params['host']}", LockKind.SHARED)]

    async def validate(self) -> None:
        if self.params["host"] not in self.registry.hosts:
            raise NotFound(f"no host named {self.params['host']!r}")

    async def execute(self) -> None:
        host = self.vdsm(self.params["host"])
        stats = await host.stats()
        vms = await host.vm_stats()
        self.ctx.executor.vms.host_snapshot(self.params["host"], vms)
        await self.remember(
            stats={k: stats.get(k) for k in ("cpuIdle", "memFree", "vmCount")}, vms=len(vms)
        )

    async def end_action(self) -> dict[str, Any]:
        return {"host": self.params["host"], "vms": self.data("vms"), "stats": self.data("stats")}

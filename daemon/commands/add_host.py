"""AddHost and its detached InstallHost (scenario 4: the job ends when InstallHost does).

AddHost registers the host (INSTALLING) and hands over to InstallHost, which checks that VDSM
answers, reads its capabilities and marks the host UP. A failed installation unregisters it.
"""

from __future__ import annotations

from typing import Any, ClassVar

from daemon.engine.command import CommandBase, CommandFailed
from daemon.engine.policy import ActionSpec, CancelPolicy, Param
from daemon.errors import Conflict
from daemon.model import CancelMode, HostStatus, LockKind, StepStatus, StepType
from daemon.vdsm.errors import VdsmCallError


class AddHost(CommandBase):
    spec = ActionSpec(
        "AddHost",
        "Add a host and install it",
        {
            "name": Param("name"),
            "address": Param("str", description="address VDSM listens on"),
            "port": Param("port"),
            "pool": Param("uuid", description="storage pool the host joins"),
        },
        CancelPolicy(notes="cancels InstallHost; revert also removes the host again"),
    )

    def locks(self) -> list[tuple[str, LockKind]]:
        return [(f"host:{self.params['name']}", LockKind.EXCLUSIVE)]

    async def validate(self) -> None:
        if self.params["name"] in self.registry.hosts and not self.data("registered"):
            raise Conflict(f"a host named {self.params['name']!r} already exists")

    async def execute(self) -> None:
        p = self.params
        await self.ctx.hosts.add_host(
            p["name"], p["address"], p["port"], p["pool"], status=HostStatus.INSTALLING
        )
        await self.remember(registered=True)

    async def wait(self) -> None:
        ok, error, _ = await self.ctx.executor.run_child(
            self, "InstallHost", {"host": self.params["name"]}
        )
        if not ok:
            raise CommandFailed(f"installation failed: {error}")

    async def end_action(self) -> dict[str, Any]:
        return {"host": self.params["name"], "status": "UP"}

    async def compensate(self) -> list[str]:
        """Revert: the host is unregistered again."""
        if self.data("registered") and self.params["name"] in self.registry.hosts:
            await self.ctx.hosts.remove_host(self.params["name"])
            return [f"host {self.params['name']} removed"]
        return []

    async def end_with_failure(self) -> None:
        if self.data("registered") and self.params["name"] in self.registry.hosts:
            await self.ctx.hosts.remove_host(self.params["name"])


class InstallHost(CommandBase):
    internal: ClassVar[bool] = True
    spec = ActionSpec(
        "InstallHost",
        "Install a registered host (internal to AddHost)",
        {"host": Param("name")},
        CancelPolicy(modes=frozenset({CancelMode.STOP})),
    )
    hidden = True

    async def execute(self) -> None:
        name = self.params["host"]
        step = self.registry.add_step(
            self.job, StepType.INSTALLING_HOST, f"Installing {name}", host=name
        )
        try:
            vdsm = self.vdsm(name)
            await vdsm.ping()
            caps = await vdsm.capabilities()
        except VdsmCallError as e:
            self.registry.end_step(step, StepStatus.FAILED)
            raise CommandFailed(f"host {name} does not answer: {e}") from e
        host = self.registry.hosts[name]
        host.status = HostStatus.UP
        self.registry.update_host(host)
        self.registry.end_step(step, StepStatus.FINISHED)
        await self.remember(vdsm_version=caps.get("vdsmVersion", ""))

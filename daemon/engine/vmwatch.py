"""VM state as the host monitors report it, and waiting for a VM to reach a state.

Commands ended by a monitor report (MigrateVm, SetHostMaintenance, HibernateVm) wait here instead
of polling: the host monitor's getAllVmStats results and VDSM's `|virt|VM_status|` events both feed
`report`, and every waiter whose predicate now holds is woken.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# lib/vdsm/virt/vmexitreason.py: a Down VM hibernated, its memory on the hibernation volumes
SAVE_STATE_SUCCEEDED = 5


@dataclass
class VmState:
    vm_id: str
    host: str
    status: str
    exit_reason: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Predicate = Callable[[dict[str, VmState]], bool]  # by host name, the VM's copies


class VmWatch:
    def __init__(self) -> None:
        self.copies: dict[str, dict[str, VmState]] = {}  # vm id -> host -> state
        self._waiters: dict[str, list[tuple[Predicate, asyncio.Future[None]]]] = {}

    def report(
        self, host: str, vm_id: str, status: str, extra: dict[str, Any] | None = None
    ) -> None:
        extra = extra or {}
        copies = self.copies.setdefault(vm_id, {})
        if status == "gone":
            copies.pop(host, None)
        else:
            copies[host] = VmState(vm_id, host, status, extra.get("exitReason"), extra)
        self._wake(vm_id)

    def host_snapshot(self, host: str, vms: list[dict[str, Any]]) -> None:
        """A full list from Host.getAllVmStats: VMs absent from it are gone from that host."""
        seen = set()
        for vm in vms:
            vm_id = vm.get("vmId")
            if isinstance(vm_id, str):
                seen.add(vm_id)
                self.report(host, vm_id, str(vm.get("status", "")), vm)
        for vm_id, copies in list(self.copies.items()):
            if host in copies and vm_id not in seen:
                copies.pop(host)
                self._wake(vm_id)

    def where(self, vm_id: str) -> dict[str, VmState]:
        return dict(self.copies.get(vm_id, {}))

    async def wait_for(self, vm_id: str, predicate: Predicate) -> dict[str, VmState]:
        if predicate(self.where(vm_id)):
            return self.where(vm_id)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.setdefault(vm_id, []).append(entry)
        try:
            await future
        finally:
            waiters = self._waiters.get(vm_id, [])
            if entry in waiters:
                waiters.remove(entry)
        return self.where(vm_id)

    def _wake(self, vm_id: str) -> None:
        state = self.where(vm_id)
        for predicate, future in list(self._waiters.get(vm_id, [])):
            if not future.done() and predicate(state):
                future.set_result(None)

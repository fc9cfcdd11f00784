"""VM verbs of one host, bound to the cluster's VM fleet (SDM verbs are in storage_verbs.py).

The fleet (`vms.py`) holds the semantics; this module only names the verbs and their parameters
as `vdsm-api.yml` does and passes the receiving host along.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from vdsm_simulator.verbs import Param

if TYPE_CHECKING:
    from vdsm_simulator.host import SimHost


def register_vm_verbs(host: SimHost) -> None:
    fleet = host.cluster.fleet
    name = host.name
    t = host.verbs
    vm = Param("vmID", "str")

    async def create(vmID: str, vmParams: dict[str, Any]) -> Any:
        return fleet.create(name, vmParams, vmID)

    async def destroy(vmID: str, gracefulAttempts: int = 1) -> bool:
        fleet.destroy(name, vmID)
        return True

    async def get_stats(vmID: str) -> Any:
        return fleet.get_stats(name, vmID)

    async def vm_list(
        fullStatus: bool = False, vmList: list[str] | None = None, onlyUUID: bool = False
    ) -> Any:
        return fleet.get_vm_list(name, fullStatus, vmList or None)

    async def all_stats() -> Any:
        return fleet.get_all_vm_stats(name)

    async def migrate(vmID: str, params: dict[str, Any]) -> bool:
        await fleet.migrate(name, vmID, params)
        return True

    async def hibernate(vmID: str, hibernationVolHandle: str) -> bool:
        fleet.hibernate(name, vmID, hibernationVolHandle)
        return True

    async def migrate_cancel(vmID: str) -> bool:
        fleet.migrate_cancel(name, vmID)
        return True

    async def migration_status(vmID: str) -> Any:
        return fleet.get_migration_status(name, vmID)

    t.add("VM.create", create, vm, Param("vmParams", "dict"))
    t.add("VM.destroy", destroy, vm, Param("gracefulAttempts", "int", 1))
    t.add("VM.getStats", get_stats, vm)
    t.add("VM.migrate", migrate, vm, Param("params", "dict"))
    t.add("VM.migrateCancel", migrate_cancel, vm)
    t.add("VM.hibernate", hibernate, vm, Param("hibernationVolHandle", "str"))
    t.add("VM.getMigrationStatus", migration_status, vm)
    listing = (
        Param("fullStatus", "bool", False),
        Param("vmList", "list", None),
        Param("onlyUUID", "bool", False),
    )
    t.add("Host.getVMList", vm_list, *listing)
    t.add("Host.getVMFullList", vm_list, *listing)
    t.add("Host.getAllVmStats", all_stats)

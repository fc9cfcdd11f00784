"""The built-in actions, one module each; `ACTIONS` maps action names to command classes."""

from __future__ import annotations

from daemon.commands.add_host import AddHost, InstallHost
from daemon.commands.cancel_job import CancelJob
from daemon.commands.copy_disk import CopyDisk
from daemon.commands.create_disk import CreateDisk
from daemon.commands.create_vm import CreateVm
from daemon.commands.delete_disk import DeleteDisk
from daemon.commands.hibernate_vm import HibernateVm
from daemon.commands.migrate_vm import MigrateVm
from daemon.commands.refresh_host import RefreshHost
from daemon.commands.set_host_maintenance import SetHostMaintenance
from daemon.engine.command import CommandBase

ACTIONS: dict[str, type[CommandBase]] = {
    cls.spec.name: cls
    for cls in (
        RefreshHost,
        CreateDisk,
        CopyDisk,
        DeleteDisk,
        CreateVm,
        AddHost,
        InstallHost,
        MigrateVm,
        SetHostMaintenance,
        HibernateVm,
        CancelJob,
    )
}


def public_actions() -> dict[str, type[CommandBase]]:
    """Actions a client may submit (internal ones run only as children)."""
    return {n: c for n, c in ACTIONS.items() if not getattr(c, "internal", False)}

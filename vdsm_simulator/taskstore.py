"""Storage tasks on disk, in the layout and text format VDSM uses under `master/tasks`.

One directory per task, `<store>/<id>/`, holding:

* `<id>.task`       task fields, one `key = value` line each
* `<id>.job.N`      one file per job (`name`, `runcmd`)
* `<id>.recover.N`  one file per rollback step, bottom of the stack first
* `<id>.result`     `code`, `message`, `result`; written only in state `finished`

A save writes a complete copy into `<id>.temp/`, renames `<id>` to `<id>.backup`, renames
`<id>.temp` to `<id>` and removes the backup. A reader takes `<id>`, else `<id>.temp`, else
`<id>.backup`, so a crash at any point leaves either the old or the new version readable:
until the first rename `<id>` is the old copy; between the renames only the complete temp
and the backup exist; after the second rename `<id>` is the new copy.

Plain blocking file I/O on purpose: a save is a few tiny files, cheaper than handing each one to
a thread (aiofiles), and keeping it synchronous makes every save atomic with respect to the
event loop, as a state change is in VDSM's task lock.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from vdsm_simulator.errors import (
    TaskDirError,
    TaskMetaDataLoadError,
    TaskMetaDataSaveError,
    TaskPersistError,
)

log = logging.getLogger(__name__)

KEY_SEPARATOR = "="
KEY_SEPARATOR_ENCODED = "_eq_"
PARAM_SEPARATOR = ","
TASK_EXT = ".task"
JOB_EXT = ".job"
RECOVER_EXT = ".recover"
RESULT_EXT = ".result"
TEMP_EXT = ".temp"
BACKUP_EXT = ".backup"
TASK_METADATA_VERSION = 1

# VDSM records a rollback step as module/class/function names; the simulator keeps its action
# key in `function` under these fixed names.
RECOVERY_MODULE = "simulator"
RECOVERY_OBJECT = "RecoveryActions"

POLICIES = ("none", "manual", "auto")
PRIORITIES = ("low", "medium", "high")


def _plain_name(name: str) -> bool:
    """VDSM only accepts letters, digits and '_' in recovery module/class/function names."""
    return name.replace("_", "").isalnum()


def _persistable(text: str) -> bool:
    """Whether a value survives VDSM's line format unchanged."""
    return (
        KEY_SEPARATOR_ENCODED not in text
        and "\n" not in text
        and "\r" not in text
        and text == text.strip()
    )


@dataclass(frozen=True)
class Recovery:
    """One rollback step, persisted as `<id>.recover.N`.

    Validated up front because VDSM's format silently loses what it cannot encode: a value
    containing `_eq_` is dropped, args are split on ',' and stripped.
    """

    name: str  # human name, unique within a task, e.g. "createVolume rollback"
    action: str  # key into TaskManager.recovery_actions
    args: tuple[str, ...] = ()  # string args

    def __post_init__(self) -> None:
        if not self.name or not _persistable(self.name):
            raise ValueError(f"recovery name {self.name!r} cannot be persisted")
        if not _plain_name(self.action):
            raise ValueError(f"recovery action {self.action!r} must be a plain name")
        for arg in self.args:
            if not isinstance(arg, str) or PARAM_SEPARATOR in arg or not _persistable(arg):
                raise ValueError(f"recovery arg {arg!r} cannot be persisted")


@dataclass(frozen=True)
class JobRecord:
    """What VDSM keeps of a job on disk: enough to list it, never enough to resume it."""

    name: str
    runcmd: str


@dataclass
class TaskSnapshot:
    """Everything `TaskStore` writes for one task."""

    id: str
    name: str  # the verb
    tag: str
    state: str  # internal state name
    store: str = ""
    recovery_policy: str = "auto"
    persist_policy: str = "auto"
    clean_policy: str = "manual"
    priority: str = "low"
    jobs: tuple[JobRecord, ...] = ()
    recoveries: tuple[Recovery, ...] = ()
    code: int = 0
    message: str = "Task is initializing"
    result: str = ""
    metadata_version: int = TASK_METADATA_VERSION


def _encode(text: str) -> str:
    if KEY_SEPARATOR_ENCODED in text:
        raise ValueError(f"{text!r} includes {KEY_SEPARATOR_ENCODED}")
    return text.replace(KEY_SEPARATOR, KEY_SEPARATOR_ENCODED)


def _decode(text: str) -> str:
    return text.replace(KEY_SEPARATOR_ENCODED, KEY_SEPARATOR)


def _dump(fields: list[tuple[str, object]]) -> str:
    lines = []
    for key, value in fields:
        try:
            lines.append(f"{_encode(key)} {KEY_SEPARATOR} {_encode(str(value))}\n")
        except ValueError:
            # VDSM logs and skips a field it cannot encode; so do we.
            log.warning("cannot encode field %s value %r, skipped", key, value)
    return "".join(lines)


def _parse(path: Path) -> dict[str, str]:
    """Read one metadata file the way VDSM's `_loadMetaFile` does."""
    try:
        text = path.read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise TaskMetaDataLoadError(str(path)) from e
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if KEY_SEPARATOR not in line:
            continue
        parts = line.split(KEY_SEPARATOR)
        if len(parts) != 2:
            log.warning("%s: ignoring line %r", path, line)
            continue
        fields[_decode(parts[0].strip())] = _decode(parts[1].strip())
    return fields


def _one_of(value: str, allowed: tuple[str, ...], path: Path) -> str:
    if value not in allowed:
        raise TaskMetaDataLoadError(str(path))
    return value


def _int(value: str, path: Path) -> int:
    try:
        return int(value)
    except ValueError as e:
        raise TaskMetaDataLoadError(str(path)) from e


class TaskStore:
    """One directory: VDSM's `<master domain>/master/tasks` of one pool."""

    def __init__(self, directory: Path, *, fsync: bool = False) -> None:
        # fsync only matters for power loss; a simulator "crash" is a killed process, after
        # which the page cache still holds every completed write.
        self.directory = Path(directory)
        self.fsync = fsync
        # Test hook, called with "written", "backed-up" and "swapped" during a save; raising
        # from it simulates a crash at that point.
        self.crash_hook: Callable[[str], None] | None = None

    def __repr__(self) -> str:
        return f"TaskStore({str(self.directory)!r})"

    def task_dir(self, task_id: str) -> Path:
        return self.directory / task_id

    def create(self, task_id: str) -> None:
        """Create the task directory, as VDSM's `setPersistence` does before the first save."""
        try:
            self.task_dir(task_id).mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise TaskPersistError(f"{task_id}: cannot access/create taskdir: {e}") from e

    def save(self, snap: TaskSnapshot) -> None:
        orig = self.task_dir(snap.id)
        if not orig.exists():
            raise TaskDirError(f"_save: no such task dir '{orig}'")
        temp = orig.with_name(snap.id + TEMP_EXT)
        backup = orig.with_name(snap.id + BACKUP_EXT)
        shutil.rmtree(temp, ignore_errors=True)
        try:
            temp.mkdir()
            self._write_all(temp, snap)
        except Exception as e:
            shutil.rmtree(temp, ignore_errors=True)
            raise TaskPersistError(f"{snap.id} persist failed: {e}") from e
        self._step("written")
        shutil.rmtree(backup, ignore_errors=True)
        os.rename(orig, backup)
        self._step("backed-up")
        os.rename(temp, orig)
        self._step("swapped")
        shutil.rmtree(backup, ignore_errors=True)
        if self.fsync:
            fd = os.open(self.directory, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    def load(self, task_id: str) -> TaskSnapshot:
        for ext in ("", TEMP_EXT, BACKUP_EXT):
            path = self.directory / (task_id + ext)
            if path.exists():
                return self._read_all(path, task_id)
        raise TaskDirError(f"loadTask: no such task dir '{self.directory}/{task_id}'")

    def task_ids(self) -> list[str]:
        """Ids found in the store; `<id>.temp` and `<id>.backup` count as `<id>`."""
        if not self.directory.exists():
            return []
        return sorted({os.path.splitext(name)[0] for name in os.listdir(self.directory)})

    def load_all(self) -> list[TaskSnapshot]:
        """Every readable task; an unreadable one is skipped and logged, as VDSM does."""
        snaps = []
        for task_id in self.task_ids():
            try:
                snaps.append(self.load(task_id))
            except Exception:
                log.exception("skipping task directory %s", task_id)
        return snaps

    def delete(self, task_id: str) -> None:
        shutil.rmtree(self.task_dir(task_id), ignore_errors=True)

    # -- internals -----------------------------------------------------------------------------

    def _step(self, name: str) -> None:
        if self.crash_hook is not None:
            self.crash_hook(name)

    def _write(self, path: Path, fields: list[tuple[str, object]]) -> None:
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(_dump(fields))
                if self.fsync:
                    f.flush()
                    os.fsync(f.fileno())
        except OSError as e:
            raise TaskMetaDataSaveError(str(path)) from e

    def _write_all(self, where: Path, snap: TaskSnapshot) -> None:
        base = where / snap.id
        self._write(
            Path(f"{base}{TASK_EXT}"),
            [
                ("id", snap.id),
                ("name", snap.name),
                ("tag", snap.tag),
                ("store", snap.store),
                ("recoveryPolicy", snap.recovery_policy),
                ("persistPolicy", snap.persist_policy),
                ("cleanPolicy", snap.clean_policy),
                ("priority", snap.priority),
                ("state", snap.state),
                ("njobs", len(snap.jobs)),
                ("nrecoveries", len(snap.recoveries)),
                ("metadataVersion", snap.metadata_version),
            ],
        )
        if snap.state == "finished":
            self._write(
                Path(f"{base}{RESULT_EXT}"),
                [("code", snap.code), ("message", snap.message), ("result", snap.result)],
            )
        for n, job in enumerate(snap.jobs):
            self._write(Path(f"{base}{JOB_EXT}.{n}"), [("name", job.name), ("runcmd", job.runcmd)])
        for n, rec in enumerate(snap.recoveries):
            self._write(
                Path(f"{base}{RECOVER_EXT}.{n}"),
                [
                    ("name", rec.name),
                    ("moduleName", RECOVERY_MODULE),
                    ("object", RECOVERY_OBJECT),
                    ("function", rec.action),
                    ("params", PARAM_SEPARATOR.join(rec.args)),
                ],
            )

    def _read_all(self, where: Path, task_id: str) -> TaskSnapshot:
        base = where / task_id
        task_file = Path(f"{base}{TASK_EXT}")
        f = _parse(task_file)
        if f.get("id", "") != task_id:
            raise TaskMetaDataLoadError(f"task {task_id}: loaded file does not match id")
        snap = TaskSnapshot(
            id=task_id,
            name=f.get("name", ""),
            tag=f.get("tag", ""),
            state=f.get("state", "unknown"),
            store=f.get("store", ""),
            recovery_policy=_one_of(f.get("recoveryPolicy", "none"), POLICIES, task_file),
            persist_policy=_one_of(f.get("persistPolicy", "none"), POLICIES, task_file),
            clean_policy=_one_of(f.get("cleanPolicy", "auto"), POLICIES, task_file),
            priority=_one_of(f.get("priority", "low"), PRIORITIES, task_file),
            metadata_version=_int(f.get("metadataVersion", "1"), task_file),
        )
        if snap.state == "finished":
            result_file = Path(f"{base}{RESULT_EXT}")
            r = _parse(result_file)
            snap.code = _int(r.get("code", "0"), result_file)
            snap.message = r.get("message", "")
            snap.result = r.get("result", "")
        jobs = []
        for n in range(_int(f.get("njobs", "0"), task_file)):
            j = _parse(Path(f"{base}{JOB_EXT}.{n}"))
            jobs.append(JobRecord(j.get("name", "load"), j.get("runcmd", "")))
        snap.jobs = tuple(jobs)
        recoveries = []
        for n in range(_int(f.get("nrecoveries", "0"), task_file)):
            rec_file = Path(f"{base}{RECOVER_EXT}.{n}")
            r = _parse(rec_file)
            params = r.get("params", "")
            # VDSM would turn an empty params line into one empty argument; no simulated
            # rollback takes such an argument, so an empty line means no arguments here.
            args = tuple(p.strip() for p in params.split(PARAM_SEPARATOR)) if params else ()
            try:
                recoveries.append(Recovery(r.get("name", "load"), r.get("function", ""), args))
            except ValueError as e:
                raise TaskMetaDataLoadError(str(rec_file)) from e
        snap.recoveries = tuple(recoveries)
        return snap

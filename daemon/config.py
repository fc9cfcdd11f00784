"""taskmgrd's configuration: a TOML file checked into dataclasses before anything starts.

Every key is checked against what it means (a mode, a path, a positive interval, a pool UUID) and
every error names the file, the key and what was expected; an unknown key is an error too, because
a misspelt key silently ignored is a setting the operator believes is in force. Command-line flags
override the file through `Config.with_overrides`. `config/taskmgrd.toml` documents every key.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CONFIG = Path("/etc/taskmgrd/taskmgrd.toml")  # read when no --config is given, if present
DEFAULT_SOCKET = Path("/run/taskmgrd/api.sock")
DEFAULT_DB = Path("/var/lib/taskmgrd/taskmgrd.db")

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]-]{1,253}$")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
SYNCHRONOUS = ("FULL", "NORMAL")
TRANSPORTS = ("stomp", "http")


class ConfigError(ValueError):
    """A configuration file that cannot be used; the message names the file, key and expectation."""


@dataclass(frozen=True)
class DaemonSection:
    socket: Path = DEFAULT_SOCKET  # the API's unix socket
    socket_mode: int = 0o660  # its permissions: who may talk to the daemon at all
    socket_group: str | None = None  # its group (name or gid); None keeps the daemon's group
    db: Path = DEFAULT_DB  # the SQLite state file
    synchronous: str = "FULL"  # FULL survives power loss; NORMAL survives a crash only
    commit_interval: float = 0.02  # s: least time between two commits unless one is urgent
    log_level: str = "INFO"
    max_request_bytes: int = 1 << 20  # larger API requests are refused with 413
    admin_group: str | None = None  # may cancel and clear anyone's job, and force (name or gid)
    api_rate_per_second: float = 1000.0  # API requests per second per uid (429 beyond)
    api_rate_burst: float = 2000.0  # requests a uid may send at once before the rate applies
    api_max_streams: int = 32  # open event streams (GET /api/v1/events) per uid


@dataclass(frozen=True)
class RetentionSection:
    finished_minutes: float = 10.0  # FINISHED jobs are purged after this (the engine's default)
    failed_minutes: float = 60.0  # FAILED and ABORTED jobs are purged after this
    housekeeping_seconds: float = 60.0  # how often purge and the orphan reaper run
    orphan_grace_seconds: float = 30.0  # an unknown task on an SPM is left alone this long


@dataclass(frozen=True)
class PollingSection:
    """Host monitoring and task polling; the names are `daemon.hosts.HostSettings`' fields."""

    fast_interval: float = 0.5  # seconds between task polls while a pool has young tasks
    cancel_interval: float = 0.2  # seconds between task polls while a cancel is pending there
    idle_interval: float = 5.0  # the interval polling backs off to when nothing is young
    young_seconds: float = 30.0  # a task is young (polled fast) for this long after it starts
    missing_grace: int = 3  # good SPM reports a known task may be missing from before it is LOST
    monitor_interval: float = 2.0  # seconds between monitor calls per host
    failures_before_non_responsive: int = 3  # missed monitor calls before NON_RESPONSIVE
    call_timeout: float = 180.0  # seconds a VDSM call may take (the engine's vdsTimeout)
    spm_start_timeout: float = 60.0  # seconds to wait for spmStart on a pool without an SPM


@dataclass(frozen=True)
class HostEntry:
    name: str
    address: str
    port: int
    pool: str  # storage pool UUID
    transport: str = "stomp"
    tls: bool = False


@dataclass(frozen=True)
class TlsSection:
    """Client certificate for VDSM connections with tls = true (VDSM checks it against its CA)."""

    cert: Path | None = None
    key: Path | None = None
    ca: Path | None = None  # CA that signed the hosts' certificates


@dataclass(frozen=True)
class Config:
    daemon: DaemonSection = field(default_factory=DaemonSection)
    retention: RetentionSection = field(default_factory=RetentionSection)
    polling: PollingSection = field(default_factory=PollingSection)
    hosts: tuple[HostEntry, ...] = ()
    tls: TlsSection = field(default_factory=TlsSection)
    source: str = "defaults"  # the file it came from, for messages

    @property
    def housekeeping_seconds(self) -> float:
        return self.retention.housekeeping_seconds

    def with_overrides(self, socket: Path | None = None, db: Path | None = None) -> Config:
        """Command-line flags win over the file."""
        section = self.daemon
        if socket is not None:
            section = dataclasses.replace(section, socket=Path(socket))
        if db is not None:
            section = dataclasses.replace(section, db=Path(db))
        return dataclasses.replace(self, daemon=section)

    def host_settings(self) -> Any:
        """`daemon.hosts.HostSettings` from [polling] (and [tls] where it has those fields)."""
        from daemon.hosts import HostSettings

        known = {f.name for f in fields(HostSettings)}
        values: dict[str, Any] = {
            f.name: getattr(self.polling, f.name) for f in fields(self.polling)
        }
        values.update({f"tls_{f.name}": getattr(self.tls, f.name) for f in fields(self.tls)})
        return HostSettings(**{k: v for k, v in values.items() if k in known})


# -- checking ------------------------------------------------------------------------------------


class _Where:
    def __init__(self, source: str, section: str) -> None:
        self.source, self.section = source, section

    def error(self, key: str, expected: str, value: Any) -> ConfigError:
        return ConfigError(
            f"{self.source}: {self.section} {key}: expected {expected}, got {value!r}"
        )


def _number(
    w: _Where,
    key: str,
    value: Any,
    *,
    minimum: float = 0.0,
    strict: bool = True,
    maximum: float | None = None,
) -> float:
    if maximum is not None:
        kind = f"a number of seconds {minimum:g}..{maximum:g}"
    else:
        kind = "a positive number" if strict else f"a number >= {minimum:g}"
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise w.error(key, kind, value)
    if value < minimum or (strict and value <= minimum):
        raise w.error(key, kind, value)
    if maximum is not None and value > maximum:
        raise w.error(key, kind, value)
    return float(value)


def _integer(w: _Where, key: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise w.error(key, f"an integer {lo}..{hi}", value)
    return value


def _path(w: _Where, key: str, value: Any) -> Path:
    if not isinstance(value, str) or not value or "\0" in value:
        raise w.error(key, "a file path", value)
    return Path(value)


def _choice(w: _Where, key: str, value: Any, choices: tuple[str, ...], *, upper: bool) -> str:
    text = value.upper() if upper and isinstance(value, str) else value
    if text not in choices:
        raise w.error(key, f"one of {', '.join(choices)}", value)
    return str(text)


def _mode(w: _Where, key: str, value: Any) -> int:
    expected = 'a file mode: an integer such as 0o660 or an octal string such as "0660"'
    if isinstance(value, str):
        digits = value.removeprefix("0o")
        if not digits or any(c not in "01234567" for c in digits):
            raise w.error(key, expected, value)
        value = int(digits, 8)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 0o777:
        raise w.error(key, expected, value)
    return value


def _table(source: str, name: str, value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
    return value


def _no_unknown(w: _Where, table: dict[str, Any], cls: type) -> None:
    known = [f.name for f in fields(cls)]
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{w.source}: {w.section} unknown key {key!r}; known keys: {', '.join(known)}"
            )


def _daemon(source: str, table: dict[str, Any]) -> DaemonSection:
    w = _Where(source, "[daemon]")
    _no_unknown(w, table, DaemonSection)
    checks: dict[str, Callable[[str, Any], Any]] = {
        "socket": lambda k, v: _path(w, k, v),
        "socket_mode": lambda k, v: _mode(w, k, v),
        "socket_group": lambda k, v: _group(w, k, v),
        "db": lambda k, v: _path(w, k, v),
        "synchronous": lambda k, v: _choice(w, k, v, SYNCHRONOUS, upper=True),
        "commit_interval": lambda k, v: _number(w, k, v, strict=False, maximum=1.0),
        "log_level": lambda k, v: _choice(w, k, v, LOG_LEVELS, upper=True),
        "max_request_bytes": lambda k, v: _integer(w, k, v, 1024, 1 << 30),
        "admin_group": lambda k, v: _group(w, k, v),
        "api_rate_per_second": lambda k, v: _number(w, k, v),
        "api_rate_burst": lambda k, v: _number(w, k, v, minimum=1.0, strict=False),
        "api_max_streams": lambda k, v: _integer(w, k, v, 1, 10_000),
    }
    values: dict[str, Any] = {k: checks[k](k, v) for k, v in table.items()}
    return DaemonSection(**values)


def _group(w: _Where, key: str, value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if not isinstance(value, str) or not _NAME.match(value):
        raise w.error(key, "a group name or gid", value)
    return value


def _retention(source: str, table: dict[str, Any]) -> RetentionSection:
    w = _Where(source, "[retention]")
    _no_unknown(w, table, RetentionSection)
    values = {k: _number(w, k, v, strict=k == "housekeeping_seconds") for k, v in table.items()}
    return RetentionSection(**values)


def _polling(source: str, table: dict[str, Any]) -> PollingSection:
    w = _Where(source, "[polling]")
    _no_unknown(w, table, PollingSection)
    values: dict[str, Any] = {}
    for k, v in table.items():
        if k == "failures_before_non_responsive":
            values[k] = _integer(w, k, v, 1, 1000)
        elif k == "missing_grace":
            values[k] = _integer(w, k, v, 1, 1000)
        else:
            values[k] = _number(w, k, v)
    polling = PollingSection(**values)
    for key in ("fast_interval", "cancel_interval"):
        if getattr(polling, key) > polling.idle_interval:
            raise ConfigError(
                f"{source}: [polling] {key}: expected at most idle_interval "
                f"({polling.idle_interval:g}), got {getattr(polling, key)!r}"
            )
    return polling


def _hosts(source: str, value: Any) -> tuple[HostEntry, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{source}: hosts must be an array of tables ([[hosts]]), got {value!r}")
    entries: list[HostEntry] = []
    seen: set[str] = set()
    for i, table in enumerate(value, start=1):
        w = _Where(source, f"[[hosts]] #{i}")
        if not isinstance(table, dict):
            raise ConfigError(f"{source}: [[hosts]] #{i} must be a table, got {table!r}")
        _no_unknown(w, table, HostEntry)
        for key in ("name", "address", "port", "pool"):
            if key not in table:
                raise ConfigError(f"{source}: [[hosts]] #{i} {key}: missing (required)")
        name = table["name"]
        if not isinstance(name, str) or not _NAME.match(name):
            raise w.error("name", "a host name (letters, digits, . _ -)", name)
        w = _Where(source, f"[[hosts]] #{i} ({name})")
        if name in seen:
            raise w.error("name", "a name not used by another [[hosts]] entry", name)
        seen.add(name)
        address = table["address"]
        if not isinstance(address, str) or not _ADDRESS.match(address):
            raise w.error("address", "a host name or IP address", address)
        pool = table["pool"]
        if not isinstance(pool, str) or not _UUID.match(pool):
            raise w.error("pool", "a lower-case storage pool UUID", pool)
        tls = table.get("tls", False)
        if not isinstance(tls, bool):
            raise w.error("tls", "true or false", tls)
        entries.append(
            HostEntry(
                name,
                address,
                _integer(w, "port", table["port"], 1, 65535),
                pool,
                _choice(w, "transport", table.get("transport", "stomp"), TRANSPORTS, upper=False),
                tls,
            )
        )
    return tuple(entries)


def _tls(source: str, table: dict[str, Any]) -> TlsSection:
    w = _Where(source, "[tls]")
    _no_unknown(w, table, TlsSection)
    tls = TlsSection(**{k: _path(w, k, v) for k, v in table.items()})
    if (tls.cert is None) != (tls.key is None):
        missing = "key" if tls.key is None else "cert"
        raise ConfigError(f"{source}: [tls] {missing}: missing (cert and key go together)")
    return tls


SECTIONS = ("daemon", "retention", "polling", "hosts", "tls")


def parse_config(text: str, source: str) -> Config:
    """A Config from TOML text; `source` names the file in every error."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    for key in data:
        if key not in SECTIONS:
            raise ConfigError(
                f"{source}: unknown section or key {key!r}; known: "
                "[daemon], [retention], [polling], [[hosts]], [tls]"
            )
    return Config(
        daemon=_daemon(source, _table(source, "daemon", data.get("daemon", {}))),
        retention=_retention(source, _table(source, "retention", data.get("retention", {}))),
        polling=_polling(source, _table(source, "polling", data.get("polling", {}))),
        hosts=_hosts(source, data.get("hosts", [])),
        tls=_tls(source, _table(source, "tls", data.get("tls", {}))),
        source=source,
    )


def default_config_path() -> Path | None:
    """The installed file when there is one: `taskmgrd check-config` then checks what the
    service reads. Without it the built-in defaults apply (a checkout, a test)."""
    return DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None


def load_config(path: Path | None) -> Config:
    """The configuration in `path`, or the defaults when there is no file."""
    if path is None:
        return Config()
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{source}: cannot read: {e}") from None
    return parse_config(text, source)

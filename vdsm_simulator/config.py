"""`vdsm-sim` configuration: a TOML file, overridden by command-line flags.

Every key is checked against its type; an error names the file, the key and what was expected,
and nothing starts on a bad file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from vdsm_simulator.cluster import SimConfig


@dataclass
class ServerConfig:
    """Where the simulator listens."""

    address: str = "127.0.0.1"  # bind address; the simulator is a test fixture, not a service
    port: int = 54321  # VDSM's port; 0 picks a free one (printed at start)
    port_per_host: bool = False  # also give every host a listener of its own, as real VDSM
    tls_cert: Path | None = None  # PEM certificate; with tls_key, serve TLS as VDSM does
    tls_key: Path | None = None
    tls_ca: Path | None = None  # when set, require client certificates signed by this CA


@dataclass
class Settings:
    server: ServerConfig = field(default_factory=ServerConfig)
    cluster: SimConfig = field(default_factory=SimConfig)


class ConfigError(ValueError):
    pass


def _expect(source: str, section: str, key: str, value: Any, template: Any) -> Any:
    where = f"{source}: [{section}] {key}"
    if isinstance(template, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if isinstance(template, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(template, float):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(template, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    # Path | None
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a path, got {value!r}")
    return Path(value)


def _apply(source: str, section: str, target: Any, table: Any) -> None:
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{section}] must be a table")
    known = {f.name: f for f in fields(target)}
    for key, value in table.items():
        if key not in known:
            raise ConfigError(
                f"{source}: [{section}] unknown key {key!r}; known keys: {', '.join(sorted(known))}"
            )
        setattr(target, key, _expect(source, section, key, value, getattr(target, key)))


def load(path: Path | None) -> Settings:
    settings = Settings()
    if path is None:
        return settings
    source = str(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{source}: no such file") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    for section, table in data.items():
        if section == "server":
            _apply(source, section, settings.server, table)
        elif section == "cluster":
            _apply(source, section, settings.cluster, table)
        else:
            raise ConfigError(f"{source}: unknown section [{section}]; known: [server], [cluster]")
    try:
        settings.cluster.validate()
    except ValueError as e:
        raise ConfigError(f"{source}: [cluster] {e}") from None
    return settings

"""What an action accepts and how it may be cancelled: declared beside each action, checked here.

Pure logic, no I/O: parameter checking (every error names the parameter and what was expected),
the JSON schema `GET /api/v1/actions` shows, and the cancel policy that answers the seed's first
open question — what may be cancelled, in which mode, until when.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from daemon.errors import InvalidParams
from daemon.model import CancelMode

_UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

_JSON_TYPES: dict[str, dict[str, Any]] = {
    "uuid": {"type": "string", "format": "uuid"},
    "name": {"type": "string", "pattern": _NAME.pattern},
    "str": {"type": "string"},
    "int": {"type": "integer"},
    "size": {"type": "integer", "minimum": 1},
    "port": {"type": "integer", "minimum": 1, "maximum": 65535},
    "bool": {"type": "boolean"},
    "mode": {"type": "string", "enum": ["stop", "revert"]},
    # VDSM's createVolume `preallocate` names; only PREALLOCATED work can be aborted by Task.stop
    "allocation": {"type": "string", "enum": ["SPARSE", "PREALLOCATED"]},
}
_DISK_KEYS = (("pool", "uuid"), ("domain", "uuid"), ("size", "size"))
_DISK_OPTIONAL = (("preallocate", "allocation"),)


@dataclass(frozen=True)
class Param:
    kind: str  # uuid, name, str, int, size, port, bool, mode, allocation, "list:<kind>", "disks"
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class CancelPolicy:
    """How an action may be cancelled."""

    cancellable: bool = True
    modes: frozenset[CancelMode] = frozenset({CancelMode.STOP, CancelMode.REVERT})
    default_mode: CancelMode = CancelMode.STOP
    point_of_no_return: str = "FINALIZING"  # the phase from which a cancel is refused
    notes: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "cancellable": self.cancellable,
            "modes": sorted(m.value for m in self.modes),
            "default_mode": self.default_mode.value,
            "point_of_no_return": self.point_of_no_return,
            "notes": self.notes,
        }


@dataclass(frozen=True)
class ActionSpec:
    name: str
    description: str
    params: dict[str, Param]
    policy: CancelPolicy = field(default_factory=CancelPolicy)

    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "additionalProperties": False,
            "required": sorted(n for n, p in self.params.items() if p.required),
            "properties": {
                n: {**_json_type(p.kind), "description": p.description}
                for n, p in self.params.items()
            },
        }

    def check(self, params: object) -> dict[str, Any]:
        """The parameters, checked; raises InvalidParams naming the first bad one."""
        if not isinstance(params, dict):
            raise InvalidParams(f"{self.name}: params must be a JSON object")
        unknown = sorted(set(params) - set(self.params))
        if unknown:
            raise InvalidParams(
                f"{self.name}: unknown parameter(s) {', '.join(unknown)}; "
                f"accepted: {', '.join(sorted(self.params))}"
            )
        clean: dict[str, Any] = {}
        for name, spec in self.params.items():
            if name not in params or params[name] is None:
                if spec.required:
                    raise InvalidParams(f"{self.name}: missing parameter {name!r}")
                continue
            clean[name] = _check_value(f"{self.name}: parameter {name!r}", spec.kind, params[name])
        return clean


def _json_type(kind: str) -> dict[str, Any]:
    if kind.startswith("list:"):
        return {"type": "array", "items": _json_type(kind[5:])}
    if kind == "disks":
        return {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": [k for k, _ in _DISK_KEYS],
                "properties": {k: _JSON_TYPES[t] for k, t in _DISK_KEYS + _DISK_OPTIONAL},
            },
        }
    return dict(_JSON_TYPES[kind])


def _check_value(where: str, kind: str, value: Any) -> Any:
    if kind.startswith("list:"):
        if not isinstance(value, list):
            raise InvalidParams(f"{where} must be a list")
        return [_check_value(f"{where}[{i}]", kind[5:], v) for i, v in enumerate(value)]
    if kind == "disks":
        if not isinstance(value, list) or not value:
            raise InvalidParams(f"{where} must be a non-empty list of disks")
        known = {k for k, _ in _DISK_KEYS + _DISK_OPTIONAL}
        disks = []
        for i, disk in enumerate(value):
            if not isinstance(disk, dict) or set(disk) - known:
                raise InvalidParams(
                    f"{where}[{i}] must be an object with pool, domain, size "
                    "and optionally preallocate"
                )
            checked = {k: _check_value(f"{where}[{i}].{k}", t, disk.get(k)) for k, t in _DISK_KEYS}
            for k, t in _DISK_OPTIONAL:
                if disk.get(k) is not None:
                    checked[k] = _check_value(f"{where}[{i}].{k}", t, disk[k])
            disks.append(checked)
        return disks
    if kind == "uuid":
        if not isinstance(value, str) or not _UUID.match(value):
            raise InvalidParams(f"{where} must be a lower-case UUID, got {value!r}")
        return value
    if kind == "name":
        if not isinstance(value, str) or not _NAME.match(value):
            raise InvalidParams(f"{where} must be a name (letters, digits, . _ -), got {value!r}")
        return value
    if kind == "str":
        if not isinstance(value, str) or len(value) > 4096:
            raise InvalidParams(f"{where} must be a string of at most 4096 characters")
        return value
    if kind == "bool":
        if not isinstance(value, bool):
            raise InvalidParams(f"{where} must be true or false, got {value!r}")
        return value
    if kind == "mode":
        if value not in ("stop", "revert"):
            raise InvalidParams(f"{where} must be 'stop' or 'revert', got {value!r}")
        return value
    if kind == "allocation":
        if value not in ("SPARSE", "PREALLOCATED"):
            raise InvalidParams(f"{where} must be 'SPARSE' or 'PREALLOCATED', got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidParams(f"{where} must be an integer, got {value!r}")
    if kind == "size" and value < 1:
        raise InvalidParams(f"{where} must be a positive size in bytes, got {value}")
    if kind == "port" and not 1 <= value <= 65535:
        raise InvalidParams(f"{where} must be a port 1..65535, got {value}")
    return value

"""Verb signatures and parameter binding, after the shapes of VDSM's `vdsm-api.yml`.

Real VDSM runs its schema check in non-strict mode, so a wrong type surfaces later as some deep
error. The simulator checks strictly instead and answers -32602 with the parameter's name, which
is what a client developer wants to see; names, order and defaults follow the schema so that a
positional (array) `params` binds as it does on VDSM.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from vdsm_simulator.errors import InvalidParams

_UUID_RE = re.compile(
    r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
)
REQUIRED = object()  # default of a parameter the caller must pass


def is_uuid(value: object) -> bool:
    return isinstance(value, str) and _UUID_RE.match(value) is not None


def _check_type(kind: str, value: Any) -> bool:
    if value is None:
        return True  # VDSM passes null through for optional values
    match kind:
        case "uuid" | "str":
            return isinstance(value, str)
        case "int":
            return isinstance(value, int) and not isinstance(value, bool)
        case "bool":
            return isinstance(value, bool)
        case "intstr":  # schema says string, engines send numbers too ("size", "prevLver")
            return isinstance(value, str | int) and not isinstance(value, bool)
        case "enum":  # volFormat, preallocate: engine sends ints, schema names strings
            return isinstance(value, str | int) and not isinstance(value, bool)
        case "dict":
            return isinstance(value, dict)
        case "list":
            return isinstance(value, list)
        case _:
            return True


@dataclass(frozen=True)
class Param:
    name: str
    kind: str = "any"  # uuid, str, int, bool, intstr, enum, dict, list, any
    default: Any = REQUIRED


Handler = Callable[..., Awaitable[Any]]


@dataclass(frozen=True)
class Verb:
    method: str
    params: tuple[Param, ...]
    handler: Handler
    # The verb's body when it never waits (Task.*, the task listings, pings): the wire may then
    # answer in the read that brought the request instead of starting an asyncio task for it.
    now: Callable[..., Any] | None = None

    @functools.cached_property
    def _names(self) -> frozenset[str]:
        """Parameter names, computed once: `bind` runs on every call, polls included."""
        return frozenset(p.name for p in self.params)

    def bind(self, params: dict[str, Any] | list[Any]) -> dict[str, Any]:
        """Map JSON-RPC params (object or array) to keyword arguments, checking every one."""
        if isinstance(params, list):
            if len(params) > len(self.params):
                raise InvalidParams(
                    f"{self.method} takes {len(self.params)} parameters, got {len(params)}"
                )
            given = {p.name: v for p, v in zip(self.params, params, strict=False)}
        elif isinstance(params, dict):
            given = params  # only read below
        else:
            raise InvalidParams(f"{self.method}: params must be an object or an array")
        if given and not self._names.issuperset(given):
            unknown = sorted(set(given) - self._names)
            raise InvalidParams(f"{self.method}: unexpected parameter(s) {', '.join(unknown)}")
        bound: dict[str, Any] = {}
        for p in self.params:
            if p.name in given:
                value = given[p.name]
                if not _check_type(p.kind, value):
                    raise InvalidParams(
                        f"{self.method}: parameter {p.name} must be {p.kind}, got {value!r}"
                    )
                bound[p.name] = value
            elif p.default is REQUIRED:
                raise InvalidParams(f"{self.method}: missing parameter {p.name}")
            else:
                bound[p.name] = p.default
        return bound


class VerbTable:
    """The verbs one host answers; built once per host from bound handlers."""

    def __init__(self) -> None:
        self._verbs: dict[str, Verb] = {}

    def add(self, method: str, handler: Handler, *params: Param) -> None:
        self._verbs[method] = Verb(method, params, handler)

    def add_now(self, method: str, fn: Callable[..., Any], *params: Param) -> None:
        """A verb that never waits: `fn` runs synchronously, from a task or without one."""

        async def handler(**kwargs: Any) -> Any:
            return fn(**kwargs)

        self._verbs[method] = Verb(method, params, handler, fn)

    def get(self, method: str) -> Verb | None:
        return self._verbs.get(method)

    def names(self) -> list[str]:
        return sorted(self._verbs)

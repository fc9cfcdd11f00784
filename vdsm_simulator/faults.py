"""Faults injected per host, deterministic for a given seed.

Every random choice a fault makes is drawn from the host's own `random.Random`, seeded from the
simulator seed and the host name, so one seed replays the same faults whatever other hosts do.
The transport layer consults the wire faults (latency, drops, resets, heartbeats, down); the host
consults the semantic ones (error replies, code 99, task and recovery failures).
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import asdict, dataclass, field, fields
from typing import Any


def host_rng(seed: int, host_name: str) -> random.Random:
    """A generator per host that does not depend on how many other hosts exist."""
    digest = hashlib.sha256(f"{seed}:{host_name}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


@dataclass
class FaultSettings:
    """What the control API may set; every field's default means "no fault"."""

    latency: float = 0.0  # simulated seconds added before every reply
    drop_replies: float = 0.0  # probability that a reply is never sent
    late_replies: float = 0.0  # probability that a reply is sent `late_delay` seconds late
    late_delay: float = 30.0  # simulated seconds a late reply waits
    reset_connections: float = 0.0  # probability that a request resets its connection unanswered
    missed_heartbeats: bool = False  # the host stops sending STOMP heartbeats
    error_code: int = 0  # non-zero: matching verbs answer this VDSM error code
    error_message: str = "Injected error"
    error_methods: list[str] = field(default_factory=list)  # empty: every verb
    recovering: bool = False  # every verb answers 99 RecoveryInProgress, as VDSM does at startup
    down: bool = False  # connections are refused and existing ones closed
    task_failure_rate: float = 0.0  # probability that a storage job fails
    task_failure_code: int = 100  # code of a failed job ("value=<text> abortedcode=<code>")
    task_failure_message: str = "Injected job failure"
    recovery_failure: bool = False  # rollbacks fail, so tasks end finished/cleanFailure

    def update(self, changes: dict[str, Any]) -> None:
        """Apply a partial change after checking every key and type; nothing changes on error."""
        known = {f.name: f for f in fields(self)}
        checked: dict[str, Any] = {}
        for key, value in changes.items():
            if key not in known:
                raise ValueError(f"unknown fault {key!r}; known: {', '.join(sorted(known))}")
            current = getattr(self, key)
            checked[key] = _coerce(key, value, current)
        for key, value in checked.items():
            setattr(self, key, value)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _coerce(key: str, value: Any, current: Any) -> Any:
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ValueError(f"fault {key!r} must be true or false, got {value!r}")
        return value
    if isinstance(current, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"fault {key!r} must be an integer, got {value!r}")
        return value
    if isinstance(current, float):
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ValueError(f"fault {key!r} must be a non-negative number, got {value!r}")
        if key.endswith(("_replies", "_connections", "_rate")) and value > 1:
            raise ValueError(f"fault {key!r} is a probability in [0, 1], got {value!r}")
        return float(value)
    if isinstance(current, str):
        if not isinstance(value, str):
            raise ValueError(f"fault {key!r} must be a string, got {value!r}")
        return value
    if isinstance(current, list):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"fault {key!r} must be a list of method names, got {value!r}")
        return list(value)
    raise ValueError(f"fault {key!r} cannot be set")


class HostFaults:
    """The live faults of one host plus its seeded generator."""

    def __init__(self, seed: int, host_name: str) -> None:
        self.settings = FaultSettings()
        self.rng = host_rng(seed, host_name)

    def clear(self) -> None:
        self.settings = FaultSettings()

    def chance(self, probability: float) -> bool:
        """Draw only when the fault is on, so a host without faults never consumes its stream."""
        return probability > 0 and self.rng.random() < probability

    def error_for(self, method: str) -> tuple[int, str] | None:
        s = self.settings
        if s.error_code and (not s.error_methods or method in s.error_methods):
            return s.error_code, s.error_message
        return None

"""Simulated time: every duration the simulator waits is multiplied by one time scale.

Tests run with a scale such as 0.01 so a two-second storage job takes 20 ms, while every
figure reported on the wire (durations, notify_time) stays in simulated units.
"""

from __future__ import annotations

import asyncio
import time


class SimClock:
    """One time scale for the whole simulator process."""

    def __init__(self, time_scale: float = 1.0) -> None:
        if not time_scale > 0:
            raise ValueError(f"time scale must be positive, got {time_scale!r}")
        self.time_scale = time_scale

    def real(self, sim_seconds: float) -> float:
        """Real seconds that `sim_seconds` of simulated time take."""
        return max(0.0, sim_seconds) * self.time_scale

    async def sleep(self, sim_seconds: float) -> None:
        await asyncio.sleep(self.real(sim_seconds))

    @staticmethod
    def monotonic_ms() -> int:
        """VDSM stamps events with its monotonic clock in milliseconds (`notify_time`)."""
        return int(time.monotonic() * 1000)

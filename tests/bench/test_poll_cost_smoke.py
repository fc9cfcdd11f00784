"""bench/poll_cost.py runs end to end and prints a CPU figure per tick. Not a timing test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "poll_cost.py"


@pytest.mark.timeout(60)
def test_poll_cost_prints_cpu_per_tick() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--tasks", "5", "--history", "5", "--ticks", "50"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(
        r"5 tasks polled, 5 finished ones on the SPM: \d+ us CPU per tick", proc.stdout
    )

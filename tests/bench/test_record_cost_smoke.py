"""bench/record_cost.py runs end to end and prints its costs per change. Not a timing test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "record_cost.py"


@pytest.mark.timeout(60)
def test_record_cost_prints_the_cost_of_a_change() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick"], capture_output=True, text=True, timeout=50
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(
        r"best of 1, 300 tasks x 2 changes: emit [\d.]+ us \+ commit share [\d.]+ us per change"
        r" on the loop; a task row [\d.]+ us",
        proc.stdout,
    ), proc.stdout

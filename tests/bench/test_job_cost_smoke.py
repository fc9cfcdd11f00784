"""bench/job_cost.py runs end to end and prints CPU per job. Not a timing test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "job_cost.py"


@pytest.mark.timeout(120)
def test_job_cost_prints_cpu_per_job() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--jobs", "100", "--batch", "50", "--runs", "1"],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"100 RefreshHost jobs: [\d.]+ CPU ms/job", proc.stdout)
    assert re.search(r"median: [\d.]+ CPU ms/job", proc.stdout)

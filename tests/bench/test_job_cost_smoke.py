"""bench/job_cost.py runs end to end and prints CPU per job. Not a timing test."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "job_cost.py"


def run(*args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--runs", "1", *args],
        capture_output=True,
        text=True,
        timeout=110,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"median: [\d.]+ CPU ms/job", proc.stdout)
    return proc.stdout


@pytest.mark.timeout(120)
def test_job_cost_prints_cpu_per_job() -> None:
    out = run("--jobs", "100", "--batch", "50")
    assert re.search(r"100 RefreshHost jobs, batches of 50: [\d.]+ CPU ms/job", out)


@pytest.mark.timeout(120)
def test_a_trickle_of_disks_counts_commits_per_job() -> None:
    args = ("--jobs", "20", "--rate", "50", "--pools", "2", "--action", "CreateDisk")
    out = run(*args, "--task-seconds", "0.2")
    assert re.search(r"20 CreateDisk jobs, one every 20.0 ms: [\d.]+ CPU ms/job", out)
    assert re.search(r"[\d.]+ commits per job", out)

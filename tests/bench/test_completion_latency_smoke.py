"""bench/completion_latency.py --quick runs end to end and measures every job it should.

Not a timing test (the machine is shared): only that the benchmark completes, every job whose
task finished in the window reached FINISHED, and its latencies are sane (positive, finite).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "completion_latency.py"


@pytest.mark.timeout(60)
def test_quick_mode_measures_every_job() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--pools",
            "4",
            "--tasks",
            "40",
            "--task-seconds",
            "2",
            "--window",
            "2",
            "--no-baseline",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    (result,) = report["results"]
    assert result["jobs_failed"] == 0, result
    assert result["jobs_measured"] >= 20, result  # ~40 tasks finish in a 2 s window
    assert 0 < result["p50_s"] <= result["p99_s"] <= result["max_s"] < 30, result
    assert 0 <= result["detect_p50_s"] <= result["p50_s"], result
    assert math.isfinite(result["daemon_cpu_cores"]), result
    assert "task finish = wall time" in proc.stdout

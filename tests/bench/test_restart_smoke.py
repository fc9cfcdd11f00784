"""bench/restart.py --quick runs end to end and every start loaded exactly the stored jobs.

Not a timing or size test (the machine is shared): the benchmark itself fails when a start
loaded a wrong number of jobs; here only that it completes and reports sane figures.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "restart.py"


@pytest.mark.timeout(60)
def test_quick_mode_loads_every_job() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--jobs", "2000", "--active", "200", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    full = [r for r in report["results"] if r["db"] != "empty"]
    empty = [r for r in report["results"] if r["db"] == "empty"]
    assert full and empty
    for r in full:
        assert (r["jobs_loaded"], r["active_loaded"]) == (2000, 200), r
        assert 0 < r["start_s"] <= r["ready_s"], r
    for r in empty:
        assert (r["jobs_loaded"], r["active_loaded"]) == (0, 0), r

"""bench/sim_load.py --quick still runs end to end and every reply it checks is right.

Not a timing test: the machine is shared, so the figures are not asserted, only that the
benchmark completes, both phases ran, and no reply was wrong (the benchmark checks each one).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "sim_load.py"


@pytest.mark.timeout(60)
def test_quick_mode_completes_with_correct_replies() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--hosts", "50", "--seconds", "1", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    methods = [r["method"] for r in report["results"]]
    assert methods == ["Host.ping2", "Host.getAllTasksStatuses"]
    for r in report["results"]:
        assert r["calls"] > 0, r
        assert r["bad_replies"] == 0, r
    assert "10 finished, 10 running" in proc.stdout

"""bench/throughput.py --quick runs end to end: both modes acknowledge jobs, no error answers,
and every acknowledged job reached FINISHED (the benchmark checks that itself and fails
otherwise). Not a timing test: the machine is shared, the figures are not asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "throughput.py"


@pytest.mark.timeout(60)
def test_quick_mode_acknowledges_and_runs_every_job() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--quick", "--seconds", "1", "--no-baseline", "--json"],
        capture_output=True,
        text=True,
        timeout=50,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    modes = {r["mode"]: r for r in report["results"]}
    assert set(modes) == {"single", "batch"}
    for r in modes.values():
        assert r["errors"] == 0, r
        assert r["jobs"] > 0 and r["jobs_per_s"] > 0, r
    assert modes["batch"]["jobs"] % modes["batch"]["batch"] == 0
    assert "every job acknowledged ran: {'FINISHED'" in proc.stdout

"""bench/cancel_latency.py --quick runs end to end and checks its own answers.

Not a timing test (the machine is shared, and the target is for the full run): only that the
benchmark completes, every cancelled job ended ABORTED with its three tasks cleared, the
simulator's task tables are empty, revert left no volume, and the latencies are sane.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench" / "cancel_latency.py"


@pytest.mark.timeout(30)
def test_quick_mode_cancels_every_job() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--quick",
            "--pools",
            "4",
            "--jobs",
            "20",
            "--task-seconds",
            "2",
            "--no-baseline",
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=25,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert [r["name"] for r in report["results"]] == ["stop", "revert"]
    for r in report["results"]:
        assert r["jobs"] == r["ended_ok"] == 20 and r["wrong"] == 0, r
        assert r["sim_tasks_left"] == 0 and r["volumes_left"] == 0 and not r["errors"], r
        assert 0 < r["p50_s"] <= r["p99_s"] <= r["max_s"] < 20, r
        assert 0 <= r["ack_p50_s"] <= r["p50_s"], r
        assert 0 <= r["after_vdsm_p50_s"] <= r["p50_s"], r
        assert r["writes_per_job"] > 1 and r["commits"] >= 1, r  # the ends were committed

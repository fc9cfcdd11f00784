"""`vdsm-sim` with a stopwatch: the unchanged simulator CLI, plus one hook that records the
wall-clock time at which every task first reached a done state (finished or failed).

    python bench/sim_finish_times.py OUT.json [vdsm-sim options...]

On exit (SIGTERM or SIGINT, as `vdsm-sim`) it writes `{task id: time.time()}` to OUT.json. The
hook wraps `Task._changed`, which the task engine calls on every state move; it costs one dict
lookup per move. The benchmarks use it as the ground truth of "the task finished"
(bench/completion_latency.py).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from vdsm_simulator import cli
from vdsm_simulator.task import Task
from vdsm_simulator.taskstate import DONE

FINISHED: dict[str, float] = {}
_original = Task._changed


def _changed(self: Any) -> None:
    if self.state in DONE and self.id not in FINISHED:
        FINISHED[self.id] = time.time()
    _original(self)


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    Task._changed = _changed  # type: ignore[method-assign]
    try:
        return cli.main(argv)
    finally:
        with open(out + ".tmp", "w") as f:
            json.dump(FINISHED, f)
        import os

        os.replace(out + ".tmp", out)


if __name__ == "__main__":
    sys.exit(main())

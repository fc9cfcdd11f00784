"""taskmgrd that SIGKILLs itself right after the Nth committed change of a job under cancel.

For tests/daemon/test_cancel_crash.py: `python -m tests.daemon.crash_at_step N run --config ...`
runs the real daemon (daemon.service.main) with one hook. Every change the registry makes to a
job that has a cancel record (the intent, each task's stop/revert/clear, each status change, each
released lock) is a step; once the store has committed step N, the process kills itself before
anything else runs, so the database holds exactly what a crash at that point leaves. The hook
lives here, not in the daemon: production code has no crash switch.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from daemon import service
from daemon.registry import Registry


def install(kill_after: int) -> None:
    emit = Registry._emit
    steps = 0

    def counting_emit(
        self: Registry,
        kind: Any,
        key: str,
        record: Any,
        job_id: str | None,
        op: str,
        urgent: bool = False,
    ) -> Any:
        nonlocal steps
        done = emit(self, kind, key, record, job_id, op, urgent)
        job = self.jobs.get(job_id) if job_id is not None else None
        if job is not None and job.cancel is not None:
            steps += 1
            print(f"cancel step {steps}: {kind} {op} {key}", file=sys.stderr, flush=True)
            if steps == kill_after:
                # the first callback on the commit's future: nothing awaiting it resumes first
                done.add_done_callback(lambda _: os.kill(os.getpid(), signal.SIGKILL))
        return done

    Registry._emit = counting_emit  # type: ignore[method-assign]


if __name__ == "__main__":
    install(int(sys.argv[1]))
    sys.exit(service.main(sys.argv[2:]))

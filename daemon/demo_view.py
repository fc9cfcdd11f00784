"""The demo's view of its jobs: what it expects of each, and how it shows them.

A rich Live table redrawn from the event loop while stdout is a terminal; plain lines, one per
change of a row, when it is not (a log, a pipe, a test). Rows are computed from the daemon's job
views (`GET /api/v1/jobs/{id}`) by the pure functions here.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from daemon.cli import STATUS_STYLE, TERMINAL


@dataclass
class Check:
    """One outcome read back from the simulator or the daemon after a job ended."""

    what: str
    ok: bool


@dataclass
class DemoJob:
    """A job the demo submitted, what it expects of it, and the daemon's latest view of it."""

    label: str
    scenario: str
    view: dict[str, Any]
    expect: str = "FINISHED"  # the job status the demo requires at the end
    cancel_mode: str = ""  # stop or revert when the demo cancels it
    checks: list[Check] = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(self.view["id"])

    @property
    def status(self) -> str:
        return str(self.view["status"])

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL

    def tasks(self) -> list[dict[str, Any]]:
        return list(self.view.get("tasks", []))

    def check(self, what: str, ok: bool) -> None:
        self.checks.append(Check(what, ok))

    def failures(self) -> list[str]:
        """What went wrong with this job: an unexpected end, then every check that failed."""
        state = "ended" if self.ended else "still"
        wrong = [] if self.status == self.expect else [f"{state} {self.status}, not {self.expect}"]
        return wrong + [c.what for c in self.checks if not c.ok]


# -- what one row says (pure) -------------------------------------------------------------------


def current_step(view: dict[str, Any]) -> str:
    """The deepest step still running, else the last one that ended."""
    running, last = "", ""
    stack = list(reversed(view.get("steps", [])))
    while stack:
        step = stack.pop()
        last = str(step.get("description", ""))
        if step.get("status") == "STARTED":
            running = last
        stack.extend(reversed(step.get("steps", [])))
    return running or last


def step_counts(view: dict[str, Any]) -> tuple[int, int]:
    """(ended, all) steps of the tree: the job's progress as the daemon records it."""
    ended = total = 0
    stack = list(view.get("steps", []))
    while stack:
        step = stack.pop()
        total += 1
        ended += step.get("status") != "STARTED"
        stack.extend(step.get("steps", []))
    return ended, total


def task_state(task: dict[str, Any]) -> str:
    """VDSM's word for a task: its result once finished, its state before, or the daemon's
    status until VDSM has reported."""
    if task.get("vdsm_state") == "finished" and task.get("vdsm_result"):
        return str(task["vdsm_result"])
    return str(task.get("vdsm_state") or task["status"]).lower()


def task_summary(view: dict[str, Any]) -> str:
    """The job's tasks by VDSM state, counted, in the order the job created them."""
    states = collections.Counter(task_state(t) for t in view.get("tasks", []))
    return ", ".join(f"{n} {state}" if n > 1 else state for state, n in states.items())


def cancel_summary(view: dict[str, Any]) -> str:
    cancel = view.get("cancel")
    if not cancel:
        return ""
    outcome = cancel.get("outcome") or "…"
    return f"{cancel['mode']}: {outcome}" + (" (late)" if cancel.get("late") else "")


def duration(view: dict[str, Any]) -> float:
    return float(view.get("ended_at") or time.time()) - float(view["created_at"])


def styled(status: str) -> Text:
    return Text(status, style=STATUS_STYLE.get(status, ""))


# -- the view: a rich Live table on a terminal, plain lines elsewhere --------------------------


class Board:
    """Every demo job with the daemon's latest view of it, the hosts, and a log of what the
    script did; renders itself for rich, or as plain lines when a row changes."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.plain = not console.is_terminal
        self.jobs: dict[str, DemoJob] = {}
        self.hosts: list[dict[str, Any]] = []
        self.notes: list[str] = []
        self.started = time.monotonic()
        self._printed: dict[str, str] = {}

    def note(self, text: str) -> None:
        line = f"{time.monotonic() - self.started:5.1f}s  {text}"
        self.notes.append(line)
        if self.plain:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def show(self, job: DemoJob) -> None:
        """Called after every refresh of a job: in plain mode, print the row when it changed."""
        if not self.plain:
            return
        row = (
            f"{job.label:<14} {job.status:<10} {current_step(job.view)[:40]:<40} "
            f"{task_summary(job.view):<24} {cancel_summary(job.view)}"
        ).rstrip()
        if self._printed.get(job.id) != row:
            self._printed[job.id] = row
            elapsed = time.monotonic() - self.started
            self.console.print(
                f"{elapsed:5.1f}s    {row}", markup=False, highlight=False, soft_wrap=True
            )

    def render(self) -> RenderableType:
        wide = self.console.width >= 130  # scenario and action only where they fit
        table = Table(title="taskmgrd jobs (GET /api/v1/jobs/{id})", expand=True)
        table.add_column("job", no_wrap=True)
        if wide:
            table.add_column("scenario", no_wrap=True)
            table.add_column("action", no_wrap=True)
        table.add_column("status", no_wrap=True, min_width=10)
        table.add_column("steps", justify="right", no_wrap=True)  # ended / all: the progress
        # the step gives way on a narrow terminal (ellipsis); tasks and cancel wrap
        table.add_column("current step", no_wrap=True, overflow="ellipsis", ratio=1, min_width=16)
        table.add_column("tasks (VDSM)")
        table.add_column("cancel")
        table.add_column("time", justify="right", no_wrap=True)
        for job in self.jobs.values():
            ended, total = step_counts(job.view)
            cells: list[RenderableType] = [job.label]
            if wide:
                cells += [job.scenario, job.view["action"]]
            cells += [
                styled(job.status),
                f"{ended}/{total}",
                current_step(job.view),
                task_summary(job.view),
                cancel_summary(job.view),
                f"{duration(job.view):.1f}s",
            ]
            table.add_row(*cells)
        hosts = Text("hosts: ")
        for h in self.hosts:
            hosts.append(f"{h['name']}{' (SPM)' if h.get('spm') else ''} ")
            hosts.append(h["status"], style=STATUS_STYLE.get(h["status"], ""))
            hosts.append("   ")
        return Group(table, hosts, Text("\n".join(self.notes[-10:]), style="dim"))

    @contextlib.contextmanager
    def live(self) -> Iterator[Callable[[], None]]:
        """Yields the function that redraws the view (a no-op in plain mode)."""
        if self.plain:
            yield lambda: None
            return
        # refreshed from the event loop only: rich's own refresh thread would read the board
        # while the loop changes it
        with Live(self.render(), console=self.console, auto_refresh=False) as live:
            yield lambda: live.update(self.render(), refresh=True)


class NoteHandler(logging.Handler):
    """The daemon's and the simulator's warnings go into the demo's log, not over the view."""

    def __init__(self, board: Board) -> None:
        super().__init__(logging.WARNING)
        self.board = board

    def emit(self, record: logging.LogRecord) -> None:
        self.board.note(f"[{record.name}] {record.getMessage()}")

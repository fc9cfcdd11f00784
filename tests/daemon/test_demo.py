"""`taskmgrd demo`, the README's main command: it must pass, say what happened, and leave nothing.

The demo runs as the README runs it, in a process of its own with stdout not a terminal (plain
progress lines). Its temporary files go under a TMPDIR of the test's own, so "nothing left
behind" is an empty directory; a marker in its environment finds any process it might leave
running (every child inherits it). Its runtime is not asserted: bench/ is where timing lives.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from rich.console import Console

from daemon.demo import make_workdir
from daemon.demo_view import Board, DemoJob, cancel_summary, current_step, task_summary

EXPECTED = {  # job label -> (final status, cancel as the summary shows it)
    "refresh": ("FINISHED", "-"),
    "disk": ("FINISHED", "-"),
    "vm web": ("FINISHED", "-"),
    "add host4": ("FINISHED", "-"),
    "migrate small": ("FINISHED", "-"),
    "maint host3": ("FINISHED", "-"),
    "copy disk": ("FINISHED", "-"),
    "delete copy": ("FINISHED", "-"),
    "vm db": ("ABORTED", "revert: reverted (late)"),
    "batch 1": ("ABORTED", "stop: stopped"),
    "batch 2": ("ABORTED", "stop: stopped"),
    "batch 3": ("ABORTED", "stop: stopped"),
    "migrate big": ("ABORTED", "stop: stopped"),
}


async def start_demo(tmp_path: Path) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {**os.environ, "TMPDIR": str(tmpdir), "TASKMGRD_DEMO_MARKER": uuid.uuid4().hex}
    env.pop("COLUMNS", None)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "daemon.service",
        "demo",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
    )
    return proc, env


def processes_with(marker: str) -> list[int]:
    """Pids of processes whose environment holds the marker (our own processes are readable)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue
        if f"TASKMGRD_DEMO_MARKER={marker}".encode() in environ.split(b"\0"):
            found.append(int(entry.name))
    return found


def summary_rows(output: str) -> dict[str, list[str]]:
    """The summary table's rows by job label, cells stripped."""
    table = output[output.index("summary:") :]
    rows = {}
    for line in table.splitlines():
        cells = [c.strip() for c in re.split(r"[│┃]", line)[1:-1]]
        if len(cells) == 6 and cells[0] in EXPECTED:
            rows[cells[0]] = cells
    return rows


def assert_nothing_left(env: dict[str, str], output: str) -> None:
    workdir = re.search(r"working in (\S+)", output)
    assert workdir is not None, output
    assert not Path(workdir.group(1)).exists()
    assert list(Path(env["TMPDIR"]).iterdir()) == []
    assert processes_with(env["TASKMGRD_DEMO_MARKER"]) == []


async def test_demo_passes_and_leaves_nothing_behind(tmp_path: Path) -> None:
    proc, env = await start_demo(tmp_path)
    async with asyncio.timeout(180):
        out, _ = await proc.communicate()
    output = out.decode()
    assert proc.returncode == 0, output
    assert "taskmgrd demo: passed" in output
    rows = summary_rows(output)
    assert sorted(rows) == sorted(EXPECTED), output
    for label, (status, cancel) in EXPECTED.items():
        final, cancelled, checks = rows[label][2], rows[label][3], rows[label][5]
        assert (final, cancelled) == (status, cancel), rows[label]
        assert checks.endswith(" ok") and not checks.startswith("0 "), rows[label]
    # the cancels went through the API, the batch by its correlation id
    assert re.search(r"POST /cancel correlation_id=demo-batch-\w+ stop: 3 jobs accepted", output)
    assert "no VDSM task left on any host" in output
    # plain progress lines, no terminal control sequences, when stdout is not a terminal
    assert "\x1b[" not in output
    assert re.search(r"vm db +CANCELLING", output)
    assert_nothing_left(env, output)


async def test_an_interrupted_demo_stops_everything(tmp_path: Path) -> None:
    proc, env = await start_demo(tmp_path)
    assert proc.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(120):
        while "part 2" not in (lines[-1] if lines else ""):  # jobs running, tasks held
            line = await proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line.decode())
        proc.send_signal(signal.SIGINT)
        rest, _ = await proc.communicate()
    output = "".join(lines) + rest.decode()
    assert proc.returncode == 130, output
    assert "interrupted" in output
    assert_nothing_left(env, output)


# -- the view's pure parts ----------------------------------------------------------------------


def view(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "id": "j1",
        "action": "CreateVm",
        "status": "STARTED",
        "created_at": time.time(),
        "steps": [],
        "tasks": [],
        "cancel": None,
    }
    return {**base, **fields}


def test_rows_name_the_running_step_tasks_and_cancel() -> None:
    steps = [
        {"description": "Validating", "status": "FINISHED", "steps": []},
        {
            "description": "Executing",
            "status": "STARTED",
            "steps": [
                {"description": "createVolume on host1", "status": "FINISHED", "steps": []},
                {"description": "createVolume on host1 #2", "status": "STARTED", "steps": []},
            ],
        },
    ]
    tasks = [
        {"status": "POLLING", "vdsm_state": "running", "vdsm_result": ""},
        {"status": "ENDED", "vdsm_state": "finished", "vdsm_result": "success"},
        {"status": "ENDED", "vdsm_state": "finished", "vdsm_result": "success"},
        {"status": "SUBMITTING", "vdsm_state": "", "vdsm_result": ""},
    ]
    cancel = {"mode": "revert", "outcome": "", "late": True}
    v = view(steps=steps, tasks=tasks, cancel=cancel)
    assert current_step(v) == "createVolume on host1 #2"
    assert task_summary(v) == "running, 2 success, submitting"
    assert cancel_summary(v) == "revert: … (late)"
    assert current_step(view(steps=steps[:1])) == "Validating"  # nothing running: the last


def test_a_job_that_ends_otherwise_or_fails_a_check_fails_the_demo() -> None:
    job = DemoJob("vm db", "3 children", view(status="FINISHED"), expect="ABORTED")
    job.check("its disks are gone", False)
    job.check("no task left", True)
    assert job.failures() == ["ended FINISHED, not ABORTED", "its disks are gone"]
    assert DemoJob("x", "", view(status="ABORTED"), expect="ABORTED").failures() == []
    assert DemoJob("x", "", view(status="CANCELLING"), expect="ABORTED").failures() == [
        "still CANCELLING, not ABORTED"
    ]


def test_a_deep_tmpdir_still_leaves_room_for_the_socket_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deep = tmp_path / ("d" * 100)
    deep.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(deep))
    workdir = make_workdir()
    try:
        assert len(bytes(workdir / "api.sock")) < 100
        assert list(deep.iterdir()) == []  # the first try was removed
    finally:
        workdir.rmdir()
    shallow = tmp_path / "t"
    shallow.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(shallow))
    workdir = make_workdir()
    assert workdir.parent == shallow  # TMPDIR is used when the path fits
    workdir.rmdir()


def cancelling_job() -> DemoJob:
    steps = [
        {"description": "Migrating VM 1 from host3 to host1", "status": "STARTED", "steps": []}
    ]
    cancel = {"mode": "stop", "outcome": "", "late": False}
    return DemoJob(
        "maint host3",
        "4 monitor",
        view(action="SetHostMaintenance", status="CANCELLING", steps=steps, cancel=cancel),
    )


def test_the_live_table_fits_narrow_and_wide_terminals() -> None:
    for width in (100, 160):
        out = io.StringIO()
        console = Console(file=out, width=width, force_terminal=True, color_system=None)
        board = Board(console)
        board.jobs["j1"] = cancelling_job()
        board.hosts = [{"name": "host1", "status": "UP", "spm": True}]
        board.note("part 2: cancels")
        console.print(board.render())
        text = out.getvalue()
        assert all(len(line) <= width for line in text.splitlines())
        for shown in ("maint host3", "CANCELLING", "stop: …", "host1 (SPM) UP", "part 2"):
            assert shown in text, (width, text)
        assert ("4 monitor" in text) is (width >= 130)  # the scenario only where it fits


def test_plain_output_prints_a_row_when_it_changes() -> None:
    out = io.StringIO()
    board = Board(Console(file=out, width=120))  # not a terminal: plain lines
    job = cancelling_job()
    board.show(job)
    board.show(job)  # unchanged: not printed again
    job.view = {**job.view, "status": "ABORTED", "cancel": {"mode": "stop", "outcome": "stopped"}}
    board.show(job)
    rows = [line for line in out.getvalue().splitlines() if "maint host3" in line]
    assert len(rows) == 2
    assert "CANCELLING" in rows[0] and "ABORTED" in rows[1] and "stop: stopped" in rows[1]
    assert "\x1b[" not in out.getvalue()

"""Logging: journald's priority prefixes when stderr is the journal stream systemd connected,
timestamps otherwise, and the job and correlation ids on every line written for a job."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest

from daemon import logs

JOB = "0b6c1a7e-0f0e-4bde-9a54-3c3f1e0d9a11"
CORRELATION = "batch-42"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """`logs.setup` replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    own = {name: logging.getLogger(name).level for name in logs.OWN_LOGGERS}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in own.items():
        logging.getLogger(name).setLevel(old)
    logs.tag_jobs_with(lambda job_id: None)


def journal_env(stream: TextIO) -> dict[str, str]:
    st = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path) -> None:
    with (tmp_path / "a").open("w") as a, (tmp_path / "b").open("w") as b:
        assert logs.journal_stream(a, journal_env(a))
        assert not logs.journal_stream(b, journal_env(a))
        assert not logs.journal_stream(a, {})
        assert not logs.journal_stream(a, {"JOURNAL_STREAM": "garbage"})


def test_journald_lines_carry_priorities_and_no_timestamp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, restore_logging: None
) -> None:
    path = tmp_path / "journal"
    with path.open("w") as stream:
        for key, value in journal_env(stream).items():
            monkeypatch.setenv(key, value)
        logs.setup("info", stream=stream)
        log = logging.getLogger("daemon.test")
        log.debug("hidden")
        log.info("started")
        log.warning("slow")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("failed")
    lines = path.read_text().splitlines()
    assert lines[:3] == [
        "<6>daemon.test: started",
        "<4>daemon.test: slow",
        "<3>daemon.test: failed",
    ]
    assert lines[3] == "<3>Traceback (most recent call last):"
    assert all(line.startswith("<3>") for line in lines[3:]), lines
    assert lines[-1] == "<3>RuntimeError: boom"


def test_stderr_lines_have_time_and_level(tmp_path: Path, restore_logging: None) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        logs.setup("WARNING", stream=stream)
        logging.getLogger("daemon.test").info("hidden")
        logging.getLogger("daemon.test").warning("shown")
    (line,) = path.read_text().splitlines()
    assert line.endswith(" WARNING daemon.test: shown") and line[:2] == "20", line


def test_debug_applies_to_the_daemon_not_to_libraries(
    tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        logs.setup("DEBUG", stream=stream)
        logging.getLogger("daemon.hosts").debug("ours")
        logging.getLogger("aiosqlite").debug("every SQL statement")
        logs.set_level("ERROR")
        logging.getLogger("daemon.hosts").warning("after the reload")
    text = path.read_text()
    assert "ours" in text and "every SQL statement" not in text and "after the reload" not in text


async def test_job_lines_are_tagged_by_task_name_or_argument(
    tmp_path: Path, restore_logging: None
) -> None:
    path = tmp_path / "stderr"
    with path.open("w") as stream:
        logs.setup("INFO", stream=stream)
        logs.tag_jobs_with(lambda job_id: CORRELATION if job_id == JOB else None)
        log = logging.getLogger("daemon.engine.test")

        async def in_job() -> None:
            log.info("polling a task")  # says nothing of the job itself

        await asyncio.create_task(in_job(), name=f"job-{JOB}")
        await asyncio.create_task(in_job(), name="job-unknown")
        log.info("job %s: ended", JOB)
        log.info("nothing to do with a job")
    lines = path.read_text().splitlines()
    tag = f" job={JOB} correlation={CORRELATION}"
    assert [line.endswith(tag) for line in lines] == [True, False, True, False], lines

"""Logging: to journald when systemd runs the daemon, to stderr otherwise; job lines tagged.

Under systemd, stderr is a stream to journald and $JOURNAL_STREAM names it ("device:inode"). A
`<N>` prefix on each line sets its syslog priority (journald's SyslogLevelPrefix=, on by default)
and journald adds the time and unit itself, so lines carry neither. That needs no libsystemd
binding; the fields are the same ones `journalctl -p warning -u taskmgrd` filters on.

Every line written while a job runs (its task is named `job-<id>` or `cancel-<id>` by the
executor and the cancel coordinator) or that names a known job in its arguments ends with
`job=<id> correlation=<id>`, so `journalctl -u taskmgrd | grep correlation=X` finds a whole batch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from collections.abc import Callable, MutableMapping
from typing import TextIO

# journald/syslog priorities (sd-daemon.h SD_ERR ... SD_DEBUG) for Python's levels.
_PRIORITY = {
    logging.CRITICAL: 2,
    logging.ERROR: 3,
    logging.WARNING: 4,
    logging.INFO: 6,
    logging.DEBUG: 7,
}

CorrelationOf = Callable[[str], str | None]  # a job id -> its correlation id, None if unknown

_TASK_PREFIXES = ("job-", "cancel-")


def journal_stream(
    stream: TextIO | None = None, environ: MutableMapping[str, str] | None = None
) -> bool:
    """Whether `stream` (stderr) is the journal stream systemd connected (sd_journal_stream_fd)."""
    env = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    device, _, inode = env.get("JOURNAL_STREAM", "").partition(":")
    if not (device.isdigit() and inode.isdigit()):
        return False
    try:
        st = os.fstat(stream.fileno())
    except (OSError, ValueError):
        return False
    return (st.st_dev, st.st_ino) == (int(device), int(inode))


class JobTagFilter(logging.Filter):
    """Sets `record.job_tag` to " job=<id> correlation=<id>" on lines about a job ("" otherwise)."""

    def __init__(self) -> None:
        super().__init__()
        self.correlation_of: CorrelationOf = lambda job_id: None

    def filter(self, record: logging.LogRecord) -> bool:
        record.job_tag = ""
        job_id = self._job_of(record)
        if job_id is not None:
            correlation = self.correlation_of(job_id)
            if correlation is not None:
                record.job_tag = f" job={job_id} correlation={correlation}"
        return True

    def _job_of(self, record: logging.LogRecord) -> str | None:
        try:
            task = asyncio.current_task()
        except RuntimeError:  # no running loop in this thread
            task = None
        if task is not None:
            name = task.get_name()
            for prefix in _TASK_PREFIXES:
                if name.startswith(prefix) and self.correlation_of(name[len(prefix) :]):
                    return name[len(prefix) :]
        args = record.args if isinstance(record.args, tuple) else ()
        for arg in args:  # job ids are canonical UUIDs (model.new_id): 36 characters
            if isinstance(arg, str) and len(arg) == 36 and self.correlation_of(arg):
                return arg
        return None


class JournalFormatter(logging.Formatter):
    """`<priority>logger: message job=.. correlation=..`; journald stamps time and unit."""

    def __init__(self) -> None:
        super().__init__("%(name)s: %(message)s%(job_tag)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # Each line of a traceback gets the prefix, or journald files it at the default level.
        return "\n".join(f"<{priority}>{line}" for line in text.splitlines())


STDERR_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(job_tag)s"

_tags = JobTagFilter()


def setup(level: str, *, stream: TextIO | None = None) -> logging.Handler:
    """Configure the root logger once for the daemon; returns the handler it installed."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.addFilter(_tags)
    if journal_stream(stream):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(logging.Formatter(STDERR_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    set_level(level)
    return handler


# The daemon's own loggers (modules of `daemon`, and `taskmgrd`) follow [daemon] log_level;
# libraries stay at INFO or above: aiosqlite's DEBUG lines repeat every SQL statement.
OWN_LOGGERS = ("daemon", "taskmgrd")


def set_level(level: str) -> None:
    """Change the level at run time (a reload)."""
    number = logging.getLevelNamesMapping()[level.upper()]
    logging.getLogger().setLevel(max(number, logging.INFO))
    for name in OWN_LOGGERS:
        logging.getLogger(name).setLevel(number)


def tag_jobs_with(correlation_of: CorrelationOf) -> None:
    """Where job ids resolve to correlation ids: the daemon's registry, once it exists."""
    _tags.correlation_of = correlation_of

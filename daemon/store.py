"""SQLite persistence: schema migrations, one writer with group commit, and loading at start.

The in-memory job trees are the truth while the daemon runs; SQLite is how they survive it. Every
change is queued as a whole record (an upsert of its JSON document, or a delete) and one writer
coroutine drains the queue into a single transaction per round, so a burst of a thousand changes
costs one commit. While busy it starts a round at most every `commit_interval`, so running jobs'
changes share commits; an urgent change (one the API answers on: a job, a cancel intent, a host)
starts a round at once. `write()` returns only once the transaction holding the change committed:
that is what the API waits for before it acknowledges a job or a cancel, and the executor before
it acts on a task id.

Reading happens at start (streamed, see `Registry.load` for what is read) and, for the few rows of
one job, synchronously on first use through a separate read-only connection (`read_job_tree`).

The writer is its own asyncio task, so a caller that is cancelled while it waits never cancels the
write (asyncio's edge-triggered cancellation and aiosqlite's worker thread would otherwise leave
it unclear whether a commit happened; see spec/prior-art.md §5).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import math
import operator
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Collection, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import aiosqlite
import orjson

log = logging.getLogger(__name__)

Kind = Literal["job", "step", "command", "task", "lock", "host", "purge", "barrier"]

# Each table keeps the record as a JSON document plus the columns queries and restarts need. A
# job's columns are everything its summary shows, so a start reads ended jobs without decoding
# their documents (`job_summaries`).
_JOB_COLUMNS = (
    "status",
    "action",
    "correlation_id",
    "owner",
    "created_at",
    "ended_at",
    "updated_at",
    "description",
    "error",
    "cancel",
)
_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "job": ("jobs", _JOB_COLUMNS),
    "step": ("steps", ("job_id",)),
    "command": ("commands", ("job_id",)),
    "task": ("tasks", ("job_id", "host", "status", "vdsm_id")),
    "lock": ("locks", ("job_id",)),
    "host": ("hosts", ()),
}

# Columns a record never changes once written (its id is never reused for another record). An
# update leaves them, and their indexes, alone: `INSERT OR REPLACE` deleted and re-inserted the
# whole row with every index entry on every change, about half again the pages per commit.
# Locks are not here: an entity's lock row passes from one job to the next under the same id.
_FIXED: dict[str, frozenset[str]] = {
    "jobs": frozenset(("action", "correlation_id", "owner", "created_at")),
    "steps": frozenset(("job_id",)),
    "commands": frozenset(("job_id",)),
    "tasks": frozenset(("job_id",)),
}

# Columns declared NOT NULL with a default: a document without them gets the default (as
# `INSERT OR REPLACE` gave it; an upsert would refuse the NULL).
_DEFAULTS = {"description": "''", "error": "''"}

MIGRATIONS: list[str] = [
    # 1: the first schema
    """
    CREATE TABLE jobs (
        id TEXT PRIMARY KEY, status TEXT NOT NULL, action TEXT NOT NULL,
        correlation_id TEXT NOT NULL, owner INTEGER NOT NULL, created_at REAL NOT NULL,
        ended_at REAL, doc TEXT NOT NULL);
    CREATE INDEX jobs_status ON jobs(status);
    CREATE INDEX jobs_correlation ON jobs(correlation_id);
    CREATE TABLE steps (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE INDEX steps_job ON steps(job_id);
    CREATE TABLE commands (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE INDEX commands_job ON commands(job_id);
    CREATE TABLE tasks (
        id TEXT PRIMARY KEY, job_id TEXT NOT NULL, host TEXT NOT NULL, status TEXT NOT NULL,
        vdsm_id TEXT, doc TEXT NOT NULL);
    CREATE INDEX tasks_job ON tasks(job_id);
    CREATE TABLE locks (id TEXT PRIMARY KEY, job_id TEXT NOT NULL, doc TEXT NOT NULL);
    CREATE INDEX locks_job ON locks(job_id);
    CREATE TABLE hosts (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
    """,
    # 2: a job's summary in columns (a start reads ended jobs without their documents); tasks
    # found by status (a start loads only unsettled ones) and by VDSM id (orphan checks).
    """
    ALTER TABLE jobs ADD COLUMN updated_at REAL;
    ALTER TABLE jobs ADD COLUMN description TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN error TEXT NOT NULL DEFAULT '';
    ALTER TABLE jobs ADD COLUMN cancel TEXT;
    UPDATE jobs SET
        updated_at = json_extract(doc, '$.updated_at'),
        description = coalesce(json_extract(doc, '$.description'), ''),
        error = coalesce(json_extract(doc, '$.error'), ''),
        cancel = json(json_extract(doc, '$.cancel'));
    CREATE INDEX tasks_status ON tasks(status);
    CREATE INDEX tasks_vdsm ON tasks(vdsm_id);
    """,
]

# A stored job as `job_summaries` yields it: the columns above but its status, in the order of
# `Job`'s fields (id, action, owner, correlation_id, description, created_at, updated_at,
# ended_at, error) so the registry builds each Job positionally; the cancel still JSON.
JobSummaryRow = tuple[str, str, int, str, str, float, float, float | None, str, str | None]


class StoreError(RuntimeError):
    """The database could not be written; the change it carried was not acknowledged."""


@dataclass(slots=True)
class _Op:
    kind: Kind
    key: str
    doc: dict[str, Any] | None  # None deletes
    done: asyncio.Future[None] | None = None


@dataclass
class StoreStats:
    commits: int = 0
    ops: int = 0
    last_commit_seconds: float = 0.0
    commit_seconds: list[float] = field(default_factory=list)  # recent, for metrics


class Store:
    """The daemon's SQLite file: one asynchronous writer, streaming loads, small synchronous reads.

    `on_commit`, when set, is called after every group commit with the seconds it took and the
    number of changes it wrote (the metrics attach a histogram there).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        synchronous: str = "FULL",
        batch_limit: int = 5000,
        commit_interval: float = 0.0,
    ) -> None:
        if synchronous.upper() not in ("FULL", "NORMAL", "EXTRA", "OFF"):
            raise ValueError(f"synchronous must be FULL, NORMAL, EXTRA or OFF, got {synchronous!r}")
        if not 0.0 <= commit_interval <= 1.0:
            raise ValueError(f"commit_interval must be 0 to 1 s, got {commit_interval!r}")
        self.path = Path(path)
        self.synchronous = synchronous.upper()
        self.batch_limit = batch_limit
        # The least time between the starts of two commits, unless a change is urgent. A
        # writer that has been idle that long commits a change at once; a busy one gathers
        # what arrives meanwhile into the next commit. Every commit writes each page it touched
        # to the WAL (and fsyncs it under FULL), and costs both threads a fixed part: running
        # jobs make a change every few milliseconds, and committing each on its own cost more
        # CPU than the jobs' own work (issue 3, benchmark a).
        self.commit_interval = commit_interval
        self._urgent = False  # a change someone answers an API request on is queued
        self._pacing = False  # the writer waits out the interval (only urgent changes wake it)
        self.stats = StoreStats()
        self._db: aiosqlite.Connection | None = None
        # Changes waiting for the writer, and the writer's wake-up while it waits for one. A
        # deque and one future rather than an asyncio.Queue: a queue's put and get are several
        # Python calls each, and every record change went through both (a tenth of the cost
        # of a change).
        self._queue: collections.deque[_Op | None] = collections.deque()
        self._wake: asyncio.Future[None] | None = None
        self._writer: asyncio.Task[None] | None = None
        # The writer's loop, kept: every change makes a future on it, and asyncio's
        # `get_running_loop` makes a getpid system call each time (3.11, a fork check).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._failed: BaseException | None = None
        self._reader: sqlite3.Connection | None = None
        self.on_commit: Callable[[float, int], None] | None = None

    @property
    def queued(self) -> int:
        """Changes waiting for the writer (not yet in a commit)."""
        return len(self._queue)

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the store was opened on (None before `open`)."""
        return self._loop

    # -- lifecycle ---------------------------------------------------------------------------

    async def open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = await aiosqlite.connect(self.path, isolation_level=None)
        await self._db.execute("PRAGMA journal_mode=WAL")
        await self._db.execute(f"PRAGMA synchronous={self.synchronous}")
        await self._db.execute("PRAGMA foreign_keys=ON")
        try:
            await self._migrate()
        except BaseException:
            await self._db.close()  # a refused file leaves no connection (and thread) behind
            self._db = None
            raise
        self._loop = asyncio.get_running_loop()
        self._writer = asyncio.create_task(self._write_loop(), name="store-writer")

    async def _migrate(self) -> None:
        assert self._db is not None
        async with self._db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} is newer than this daemon knows "
                f"({len(MIGRATIONS)}); refusing to touch it"
            )
        for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
            log.info("store %s: applying migration %d", self.path, number)
            await self._db.executescript(f"BEGIN; {script}; PRAGMA user_version={number}; COMMIT;")

    async def close(self) -> None:
        """Write everything queued, then close."""
        if self._writer is not None:
            self._enqueue(None, urgent=True)
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
            self._writer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db is not None:
            await self._db.close()
            self._db = None

    # -- writing -----------------------------------------------------------------------------

    def put_nowait(
        self, kind: Kind, key: str, doc: dict[str, Any] | None, *, urgent: bool = False
    ) -> asyncio.Future[None]:
        """Queue a change; the returned future resolves when it is committed.

        An urgent change (an API request is answered once it is committed) is committed at
        once; the others within `commit_interval`, with whatever else arrives meanwhile."""
        if self._failed is not None:
            raise StoreError(f"store is failed: {self._failed}")
        loop = self._loop
        if loop is None:
            raise StoreError(f"store {self.path} is not open")
        done: asyncio.Future[None] = loop.create_future()
        self._enqueue(_Op(kind, key, doc, done), urgent)
        return done

    def _enqueue(self, op: _Op | None, urgent: bool) -> None:
        self._queue.append(op)
        if urgent:
            self._urgent = True
        wake = self._wake
        if wake is not None and (urgent or not self._pacing):
            self._wake = None
            if not wake.done():
                wake.set_result(None)

    async def write(self, kind: Kind, key: str, doc: dict[str, Any] | None) -> None:
        """Queue a change and wait until it is committed (a durable acknowledgement)."""
        await self.put_nowait(kind, key, doc, urgent=True)

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        await self.put_nowait("barrier", "", None, urgent=True)

    async def purge_jobs(self, job_ids: Iterable[str]) -> None:
        """Delete jobs and everything that hangs off them; committed in the writer's order."""
        waits = [self.put_nowait("purge", job_id, None, urgent=True) for job_id in job_ids]
        if waits:
            await asyncio.gather(*waits)

    async def _write_loop(self) -> None:
        assert self._db is not None
        closing = False
        queue = self._queue
        loop = self._loop
        assert loop is not None
        last_start = -math.inf
        while not closing:
            if not queue:
                self._wake = loop.create_future()
                await self._wake
                continue
            wait = last_start + self.commit_interval - loop.time()
            if wait > 0 and not self._urgent:
                await self._pace(wait)
            last_start = loop.time()
            batch: list[_Op] = []
            while queue and len(batch) < self.batch_limit:
                op = queue.popleft()
                if op is None:
                    closing = True
                    break
                batch.append(op)
            self._urgent = self._urgent and bool(queue)  # what is left may hold it
            if batch:
                await self._commit(batch)

    async def _pace(self, seconds: float) -> None:
        """Wait out the rest of the commit interval, or less if an urgent change arrives."""
        assert self._loop is not None
        self._pacing = True
        self._wake = wake = self._loop.create_future()
        try:
            async with asyncio.timeout(seconds):
                await wake
        except TimeoutError:
            pass
        finally:
            self._pacing = False
            if self._wake is wake:
                self._wake = None

    async def _commit(self, batch: list[_Op]) -> None:
        assert self._db is not None
        started = time.perf_counter()
        try:
            statements = _statements(batch)
            # The whole transaction is one function on aiosqlite's worker thread rather than one
            # awaited `execute`/`executemany` per statement: each of those is a round trip
            # through the event loop (a future, a wake-up, a GIL hand-over), about seven per
            # commit, and a busy loop made every commit wait for it seven times. aiosqlite has
            # no public call for "run this on the connection's thread", so this uses its
            # `_execute`, the one every public method goes through.
            run_in_thread = cast(Callable[..., Awaitable[None]], self._db._execute)
            await run_in_thread(_run_transaction, self._db._conn, statements)
        except Exception as e:
            log.exception("store commit of %d changes failed", len(batch))
            self._failed = e
            for op in batch:
                if op.done is not None and not op.done.done():
                    op.done.set_exception(StoreError(f"commit failed: {e}"))
            return
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.stats.ops += len(batch)
        self.stats.last_commit_seconds = elapsed
        self.stats.commit_seconds.append(elapsed)
        del self.stats.commit_seconds[:-1000]
        if self.on_commit is not None:
            try:
                self.on_commit(elapsed, len(batch))
            except Exception:  # a metrics hook must never fail a commit that happened
                log.exception("store on_commit hook failed")
        for op in batch:
            if op.done is not None and not op.done.done():
                op.done.set_result(None)

    # -- reading -----------------------------------------------------------------------------

    async def load(self, kind: Kind) -> list[dict[str, Any]]:
        """Every record of a kind, as written."""
        return [doc async for doc in self.iter_load(kind)]

    async def iter_load(self, kind: Kind, chunk: int = 2000) -> AsyncIterator[dict[str, Any]]:
        """Every record of a kind, as written, a chunk of rows at a time."""
        table, _ = _TABLES[kind]
        async for rows in self._chunks(f"SELECT doc FROM {table}", (), chunk):
            for (doc,) in rows:
                yield _loads(doc)

    # The start's reads yield a chunk of documents (or rows) at a time: a list is far cheaper
    # to walk than an asynchronous generator's step per record, at tens of thousands of them.

    async def jobs_in(self, statuses: Collection[str]) -> AsyncIterator[list[dict[str, Any]]]:
        """The documents of the jobs in one of `statuses`."""
        sql = f"SELECT doc FROM jobs WHERE status IN ({_marks(statuses)})"
        async for rows in self._chunks(sql, tuple(statuses)):
            yield [_loads(doc) for (doc,) in rows]

    async def records_of_jobs_in(
        self, kind: Kind, job_statuses: Collection[str]
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Steps, commands, tasks or locks of the jobs in one of `job_statuses`."""
        table, _ = _TABLES[kind]
        # CROSS JOIN keeps SQLite's join order: the few active jobs first, then their records
        # through the job_id index (never the other way round, whatever the statistics say).
        sql = (
            f"SELECT r.doc FROM jobs j CROSS JOIN {table} r ON r.job_id = j.id "
            f"WHERE j.status IN ({_marks(job_statuses)})"
        )
        async for rows in self._chunks(sql, tuple(job_statuses)):
            yield [_loads(doc) for (doc,) in rows]

    async def tasks_in(
        self, statuses: Collection[str], *, job_statuses: Collection[str] = ()
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The tasks in one of `statuses`, of any job or of jobs in one of `job_statuses`."""
        if job_statuses:
            # From the jobs side (CROSS JOIN fixes the order): the settled tasks of the active
            # jobs are few, but SQLite otherwise walked every settled task of every ended job
            # through tasks_status (0.2 s of CPU at 100,000 jobs, for no row at all).
            sql = (
                f"SELECT t.doc FROM jobs j CROSS JOIN tasks t ON t.job_id = j.id "
                f"WHERE j.status IN ({_marks(job_statuses)}) AND t.status IN ({_marks(statuses)})"
            )
            params: tuple[str, ...] = (*job_statuses, *statuses)
        else:
            sql = f"SELECT doc FROM tasks WHERE status IN ({_marks(statuses)})"
            params = tuple(statuses)
        async for rows in self._chunks(sql, params):
            yield [_loads(doc) for (doc,) in rows]

    async def job_summaries(self, status: str) -> AsyncIterator[list[JobSummaryRow]]:
        """The jobs in `status` as their summary columns (no document decoded)."""
        sql = (
            "SELECT id, action, owner, correlation_id, description, created_at,"
            " coalesce(updated_at, created_at), ended_at, error, cancel FROM jobs WHERE status = ?"
        )
        async for rows in self._chunks(sql, (status,)):
            yield rows

    async def _chunks(
        self, sql: str, params: tuple[Any, ...], chunk: int = 2000
    ) -> AsyncIterator[list[Any]]:
        """Rows of a query, a chunk at a time (used at start).

        Streaming keeps the start-up peak small: only a couple of chunks of raw rows are alive
        at a time instead of every row of the table and then every document. The next chunk is
        fetched by aiosqlite's thread (SQLite itself runs without the GIL) while the caller
        decodes this one.
        """
        assert self._db is not None
        async with self._db.execute(sql, params) as cur:
            ahead = asyncio.ensure_future(cur.fetchmany(chunk))
            try:
                while rows := await ahead:
                    ahead = asyncio.ensure_future(cur.fetchmany(chunk))
                    yield list(rows)
            finally:
                with contextlib.suppress(Exception):
                    await ahead  # the cursor closes only after the read in flight

    def count_tasks(self, job_id: str) -> int:
        """How many tasks of a job are stored."""
        db = self._read_connection()
        row = db.execute("SELECT count(*) FROM tasks WHERE job_id = ?", (job_id,)).fetchone()
        return int(row[0])

    # -- small synchronous reads -----------------------------------------------------------------
    #
    # A stored job's tree is a handful of rows found through an index: well under a millisecond
    # read on the event loop's thread, so `Registry.job_view` and the mappings that load a
    # tree on first use stay synchronous. The connection is read-only and separate from the
    # writer's; WAL lets it read the last commit while the writer works.

    def read_job_tree(self, job_id: str) -> StoredTree:
        """A job's document and its steps, commands and tasks as last committed."""
        db = self._read_connection()

        def docs(table: str) -> list[dict[str, Any]]:
            rows = db.execute(f"SELECT doc FROM {table} WHERE job_id = ?", (job_id,))
            return [_loads(doc) for (doc,) in rows]

        row = db.execute("SELECT doc FROM jobs WHERE id = ?", (job_id,)).fetchone()
        job = None if row is None else _loads(row[0])
        return StoredTree(job, docs("steps"), docs("commands"), docs("tasks"))

    def stored_vdsm_ids(self, vdsm_ids: Collection[str]) -> set[str]:
        """Which of these VDSM task ids a stored task record has."""
        if not vdsm_ids:
            return set()
        ids = list(vdsm_ids)
        db = self._read_connection()
        found: set[str] = set()
        for start in range(0, len(ids), 500):  # below SQLite's bound-parameter limit
            part = ids[start : start + 500]
            sql = f"SELECT vdsm_id FROM tasks WHERE vdsm_id IN ({_marks(part)})"
            found.update(vdsm_id for (vdsm_id,) in db.execute(sql, part))
        return found

    def _read_connection(self) -> sqlite3.Connection:
        if self._reader is None:
            if self._db is None:
                raise StoreError(f"store {self.path} is not open")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self._reader = sqlite3.connect(uri, uri=True, isolation_level=None)
        return self._reader


@dataclass(slots=True)
class StoredTree:
    """One job as committed: its document (None when it is not stored) and its records'."""

    job: dict[str, Any] | None
    steps: list[dict[str, Any]] = field(default_factory=list)
    commands: list[dict[str, Any]] = field(default_factory=list)
    tasks: list[dict[str, Any]] = field(default_factory=list)


def _loads(text: str) -> Any:
    """orjson rather than the standard library: a start decodes tens of thousands of documents,
    at a third of the cost (2 vs 6 µs for a step's document on this project's machine)."""
    return orjson.loads(text)


def _dumps(doc: Any) -> str:
    """orjson (0.8 vs 6.8 µs a document): every change of every record is encoded once on its
    way to the writer. A value orjson refuses (an integer beyond 64 bits in user-supplied
    parameters, say) falls back to the standard library, which writes any JSON value."""
    try:
        return orjson.dumps(doc, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:  # orjson.JSONEncodeError is a TypeError
        return json.dumps(doc)


# A transaction as the writer thread runs it: (SQL, rows) for one executemany each, in order.
Statements = list[tuple[str, list[tuple[Any, ...]]]]


def _statements(batch: list[_Op]) -> Statements:
    """The batch's SQL and rows, built (and the documents encoded) on the event loop's thread:
    the documents belong to records the loop keeps changing."""
    statements: Statements = []
    for kind, rows in _group(batch):
        if kind == "purge":
            ids = [(k,) for k, _ in rows]
            for table in ("steps", "commands", "tasks", "locks"):
                statements.append((f"DELETE FROM {table} WHERE job_id = ?", ids))
            statements.append(("DELETE FROM jobs WHERE id = ?", ids))
            continue
        table, columns = _TABLES[kind]
        upserts = [(k, d) for k, d in rows if d is not None]
        deletes = [(k,) for k, d in rows if d is None and k]
        if upserts:
            statements.append((_upsert_sql(table, columns), _rows(upserts, columns)))
        if deletes:
            statements.append((f"DELETE FROM {table} WHERE id = ?", deletes))
    return statements


@functools.cache
def _upsert_sql(table: str, columns: tuple[str, ...]) -> str:
    """Insert a record's row, or update the columns it may change (and its document)."""
    names = ", ".join(("id", *columns, "doc"))
    marks = ", ".join(
        ["?", *(f"coalesce(?, {_DEFAULTS[c]})" if c in _DEFAULTS else "?" for c in columns), "?"]
    )
    fixed = _FIXED.get(table, frozenset())
    changing = [c for c in (*columns, "doc") if c not in fixed]
    sets = ", ".join(f"{c} = excluded.{c}" for c in changing)
    return f"INSERT INTO {table} ({names}) VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {sets}"


def _run_transaction(db: sqlite3.Connection, statements: Statements) -> None:
    """One group commit, run on the writer connection's thread; rolled back on any error."""
    db.execute("BEGIN IMMEDIATE")
    try:
        for sql, rows in statements:
            db.executemany(sql, rows)
        db.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            db.execute("ROLLBACK")
        raise


def _marks(values: Collection[Any]) -> str:
    return ", ".join("?" * len(values))


def _rows(
    upserts: list[tuple[str, dict[str, Any]]], columns: tuple[str, ...]
) -> list[tuple[Any, ...]]:
    """The rows of upserts: id, the table's columns, the document's JSON.

    Every change of a commit goes through here, so a row is one `itemgetter` call and no
    function per column (a generator and a conversion per column were 3.2 of the 5.5 µs a
    task's row cost): sqlite3 binds str, int, float and None as they are, and a StrEnum member
    (every status) as its value, being a str. Only the job's `cancel` column, a dict, is
    encoded. A document without some column (none that `to_doc` makes) gets None there, as
    `dict.get` gives."""
    if not columns:
        return [(k, _dumps(d)) for k, d in upserts]
    get = _getter(columns)
    single = len(columns) == 1
    encode_at = columns.index("cancel") if "cancel" in columns else -1
    rows: list[tuple[Any, ...]] = []
    for k, d in upserts:
        try:
            values = (get(d),) if single else get(d)
        except KeyError:
            values = tuple(d.get(c) for c in columns)
        if encode_at >= 0 and values[encode_at] is not None:
            values = (
                *values[:encode_at],
                _dumps(values[encode_at]),
                *values[encode_at + 1 :],
            )
        rows.append((k, *values, _dumps(d)))
    return rows


@functools.cache
def _getter(columns: tuple[str, ...]) -> Callable[[dict[str, Any]], Any]:
    return operator.itemgetter(*columns)


def _group(batch: list[_Op]) -> list[tuple[Kind, list[tuple[str, dict[str, Any] | None]]]]:
    """Per kind, the last change of each key in queue order (earlier ones are superseded)."""
    latest: dict[Kind, dict[str, dict[str, Any] | None]] = {}
    for op in batch:
        if op.key and op.kind != "barrier":
            per_kind = latest.setdefault(op.kind, {})
            per_kind.pop(op.key, None)  # keep queue order of the last write
            per_kind[op.key] = op.doc
    # Purges go last: a purged job's rows must not come back from a write earlier in the batch.
    return sorted(
        ((kind, list(rows.items())) for kind, rows in latest.items()),
        key=lambda item: item[0] == "purge",
    )

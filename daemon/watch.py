"""`taskmgr watch [JOB]`: a live view that redraws when the daemon says something changed.

The view is re-read (GET) after change events rather than patched from them: the events only say
*when* to redraw, so a missed or reset stream can never leave a wrong picture. Redraws are
coalesced to at most ten a second however fast events come. With a JOB the view is its step tree
with tasks and progress bars, and the command ends with the job (0 when it FINISHED, else 1);
without one, the newest jobs and their progress, until Ctrl-C. When stdout is not a terminal
(a pipe, a log) each view that differs from the last is printed in turn, not redrawn in place.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from daemon.cli import STATUS_STYLE

if TYPE_CHECKING:
    from daemon.cli import Client

TERMINAL = ("FINISHED", "FAILED", "ABORTED")
REDRAW_SECONDS = 0.1
STYLE = STATUS_STYLE  # one palette for `taskmgr jobs`, `show` and `watch`


def _status(status: str) -> Text:
    return Text(status, style=STYLE.get(status, ""))


def _bar(progress: Any, status: str) -> ProgressBar:
    done = 100 if status == "FINISHED" else (progress if isinstance(progress, int) else 0)
    return ProgressBar(
        total=100,
        completed=done,
        width=20,
        pulse=status == "STARTED" and not isinstance(progress, int),
    )


def job_view(job: dict[str, Any]) -> RenderableType:
    """The job's step tree; each step with its status, a progress bar and its VDSM task."""
    tasks = {t.get("step_id"): t for t in job.get("tasks", []) if t.get("step_id")}
    title = Text.assemble((job["action"], "bold"), f" {job['id']}  ", _status(job["status"]))
    tree = Tree(title)

    def add(node: Tree, steps: list[dict[str, Any]]) -> None:
        for step in steps:
            row = Table.grid(padding=(0, 1))
            row.add_row(
                Text(str(step.get("description", ""))),
                _status(step["status"]),
                _bar(step.get("progress"), step["status"]),
                Text(f"{step['progress']}%" if step.get("progress") is not None else ""),
            )
            task = tasks.get(step["id"])
            child = node.add(row)
            if task is not None:
                child.add(
                    Text(
                        f"task {task.get('vdsm_id') or '?'} on {task['host']}: {task['status']} "
                        f"(VDSM {task.get('vdsm_state') or '-'}/{task.get('vdsm_result') or '-'})",
                        style="dim",
                    )
                )
            add(child, step.get("steps", []))

    add(tree, job.get("steps", []))
    parts: list[RenderableType] = [tree]
    if job.get("cancel"):
        cancel = job["cancel"]
        parts.append(Text(f"cancel: {cancel['mode']} {cancel.get('outcome') or 'in progress'}"))
    if job.get("error"):
        parts.append(Text(f"error: {job['error']}", style="red"))
    return Group(*parts)


def jobs_view(doc: dict[str, Any]) -> RenderableType:
    table = Table(title=f"jobs ({doc['count']} of {doc['total']})", title_justify="left")
    for col in ("ID", "ACTION", "STATUS", "TASKS", "CORRELATION", "OWNER"):
        table.add_column(col, no_wrap=col == "ID")
    for job in doc["jobs"]:
        table.add_row(
            job["id"],
            job["action"],
            _status(job["status"]),
            str(job["tasks"]),
            job["correlation_id"],
            str(job["owner"]),
        )
    return table


async def watch(
    client: Client, job_id: str | None, console: Console, *, as_json: bool, limit: int
) -> int:
    render: Callable[[dict[str, Any]], RenderableType]
    if job_id is not None:
        path, query, render = f"/jobs/{job_id}", {}, job_view
    else:
        path, query, render = "/jobs", {"limit": limit}, jobs_view
    dirty = asyncio.Event()

    async def follow() -> None:
        kind = None if job_id is not None else "job"
        # the stream's first event (ready) comes once it is subscribed: reading the state after
        # it, not before, is what makes a change in between impossible to miss
        async for _ in client.events(job=job_id, kind=kind):
            dirty.set()  # a change, ready or reset: either way, read again

    def done(d: Any) -> bool:
        return job_id is not None and d["status"] in TERMINAL

    follower = asyncio.create_task(follow())
    try:
        doc = await _next(client, path, query, dirty, follower, pause=0.0)
        if as_json:  # one document per redraw, for scripts
            while True:
                sys.stdout.write(json.dumps(doc, sort_keys=True) + "\n")
                sys.stdout.flush()
                if done(doc):
                    break
                doc = await _next(client, path, query, dirty, follower)
        elif not console.is_terminal:  # a pipe or a log: each view that differs, in turn
            shown = ""
            while True:
                with console.capture() as capture:
                    console.print(render(doc))
                if (text := capture.get()) != shown:
                    shown = text
                    sys.stdout.write(text)
                    sys.stdout.flush()
                if done(doc):
                    break
                doc = await _next(client, path, query, dirty, follower)
        else:
            with Live(render(doc), console=console, auto_refresh=False) as live:
                while not done(doc):
                    doc = await _next(client, path, query, dirty, follower)
                    live.update(render(doc), refresh=True)
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    if job_id is None:
        return 0
    return 0 if doc["status"] == "FINISHED" else 1


async def _next(
    client: Client,
    path: str,
    query: dict[str, Any],
    dirty: asyncio.Event,
    follower: asyncio.Task[None],
    *,
    pause: float = REDRAW_SECONDS,
) -> Any:
    """The document again, once something changed (and no sooner than the redraw interval)."""
    waiter = asyncio.create_task(dirty.wait())
    try:
        await asyncio.wait({waiter, follower}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        waiter.cancel()
    if follower.done():
        follower.result()  # the stream failed for good: raise why (Unreachable, ApiError)
    await asyncio.sleep(pause)
    dirty.clear()
    return await client.call("GET", path, **query)

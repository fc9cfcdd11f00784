"""The two waits a cancel burst makes thousands of: a job's change (`Registry.wait_changed`) and
a task's end without its outcome (`cancel._until_done`). Both must keep asyncio's semantics:
a cancelled waiter propagates its own cancellation and disturbs no one else."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import pytest

from daemon.engine.cancel import _until_done
from daemon.registry import Registry
from daemon.store import Store


async def test_until_done_takes_neither_the_result_nor_the_cancellation_of_the_task() -> None:
    release = asyncio.Event()

    async def work() -> str:
        await release.wait()
        raise RuntimeError("its own failure")

    failing = asyncio.create_task(work())
    waiting = asyncio.create_task(_until_done(failing))
    await asyncio.sleep(0)
    assert not waiting.done()
    release.set()
    await waiting  # returns, the failure stays the task's
    assert isinstance(failing.exception(), RuntimeError)

    cancelled = asyncio.create_task(asyncio.sleep(3600))
    waiter = asyncio.create_task(_until_done(cancelled))
    await asyncio.sleep(0)
    cancelled.cancel()
    await waiter  # the task's cancellation is not the waiter's
    assert cancelled.cancelled() and not waiter.cancelled()


async def test_a_cancelled_until_done_leaves_the_task_running() -> None:
    running = asyncio.create_task(asyncio.sleep(3600))
    waiter = asyncio.create_task(_until_done(running))
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    assert not running.done()
    running.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await running


async def test_wait_changed_wakes_every_waiter_and_forgets_a_cancelled_one(tmp_path: Path) -> None:
    store = Store(tmp_path / "t.db")
    await store.open()
    try:
        registry = Registry(store)
        first = asyncio.create_task(registry.wait_changed("job-1"))
        second = asyncio.create_task(registry.wait_changed("job-1"))
        gone = asyncio.create_task(registry.wait_changed("job-2"))
        await asyncio.sleep(0)
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        assert "job-2" not in registry._changed  # nothing left behind for a job never changed
        first.cancel()  # one waiter cancelled: the other still wakes
        with pytest.raises(asyncio.CancelledError):
            await first
        assert not second.done()
        registry._publish("job", "job-1", {}, "job-1", "updated")
        async with asyncio.timeout(5):
            await second
        assert registry._changed == {}
    finally:
        await store.close()

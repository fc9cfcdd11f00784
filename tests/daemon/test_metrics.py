"""GET /metrics: Prometheus text from the daemon's own registry, parsed with prometheus-client's
parser; counts checked against the registry, histograms against what the test made happen."""

from __future__ import annotations

import collections
import uuid
from pathlib import Path
from types import SimpleNamespace

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from daemon.events import EventHub
from daemon.metrics import DaemonMetrics
from daemon.model import CancelMode, JobStatus, TaskStatus
from tests.daemon.api_support import ApiDaemon, settle
from tests.daemon.stack import running_stack
from tests.daemon.test_api import add_host, call
from tests.daemon.test_cancel import spm_host, until


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def scrape(
    http: aiohttp.ClientSession, url: str = "/metrics"
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with http.get(url) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        return samples(await response.text())


async def test_counts_come_from_the_registry(api: ApiDaemon, http: aiohttp.ClientSession) -> None:
    await add_host(http)
    for _ in range(3):
        status, _ = await call(
            http, "POST", "/jobs", {"action": "RefreshHost", "params": {"host": "host1"}}
        )
        assert status == 201
    status, _ = await call(
        http, "POST", "/jobs", {"action": "RefreshHost", "params": {"host": "nope"}}
    )
    assert status == 201  # accepted; fails in validation
    await settle(api)
    got = await scrape(http)
    assert got[("taskmgrd_jobs", (("action", "RefreshHost"), ("status", "FINISHED")))] == 3
    assert got[("taskmgrd_jobs", (("action", "RefreshHost"), ("status", "FAILED")))] == 1
    assert got[("taskmgrd_hosts", (("status", "UP"),))] == 1
    assert got[("taskmgrd_event_subscribers", ())] == 0
    # every answer is counted by route and status, this scrape's predecessors included
    key = (
        "taskmgrd_api_requests_total",
        (("method", "POST"), ("route", "/api/v1/jobs"), ("status", "201")),
    )
    assert got[key] == 4
    await call(http, "GET", "/no/such/path")
    got = await scrape(http)
    assert (
        got[
            (
                "taskmgrd_api_requests_total",
                (("method", "GET"), ("route", "unmatched"), ("status", "404")),
            )
        ]
        == 1
    )


def test_hooks_feed_the_histograms_and_detach_cleanly() -> None:
    from daemon.registry import Registry

    store = SimpleNamespace(on_commit=None)
    hosts = SimpleNamespace(on_poll=None)
    hub = EventHub()
    metrics = DaemonMetrics(Registry(store, hub))  # type: ignore[arg-type]
    metrics.attach(store, hosts, hub)
    store.on_commit(0.004, 7)
    hosts.on_poll("host1", 0.002, True)
    hosts.on_poll("host1", 0.5, False)
    job = {
        "cancel": {"mode": "revert", "outcome": "reverted", "requested_at": 10.0, "ended_at": 12.5}
    }
    hub.publish("job", "updated", "j1", "j1", job)
    hub.publish(
        "job", "updated", "j1", "j1", job
    )  # a later touch: the same cancel, not counted again
    got = samples(metrics.render().decode())
    assert got[("taskmgrd_store_commit_seconds_count", ())] == 1
    assert got[("taskmgrd_store_committed_rows_total", ())] == 7
    assert got[("taskmgrd_poll_roundtrip_seconds_count", (("host", "host1"),))] == 2
    assert got[("taskmgrd_poll_failures_total", (("host", "host1"),))] == 1
    cancel = (("mode", "revert"), ("outcome", "reverted"))
    assert got[("taskmgrd_cancel_duration_seconds_count", cancel)] == 1
    assert got[("taskmgrd_cancel_duration_seconds_sum", cancel)] == 2.5
    metrics.detach(hub)
    assert store.on_commit is None and hosts.on_poll is None and not hub.listeners
    # an object without the hook (before its owner adds it) is left alone
    bare = SimpleNamespace()
    DaemonMetrics(Registry(store, hub)).attach(bare, bare, hub)  # type: ignore[arg-type]
    assert not hasattr(bare, "on_commit")


async def test_a_real_cancel_and_real_polls_reach_the_histograms(tmp_path: Path) -> None:
    async with running_stack(tmp_path, api=True) as s:
        gate = s.sim.cluster.hosts[spm_host(s)].gate
        gate.hold()
        job = await s.submit(
            "CreateDisk",
            {"pool": s.pool, "domain": s.domains[0], "size": 4096, "volume": str(uuid.uuid4())},
        )
        reg = s.daemon.registry
        await until(
            s, job.id, lambda: any(t.status is TaskStatus.POLLING for t in reg.job_tasks(job.id))
        )
        await s.daemon.cancels.cancel(job.id, mode=CancelMode.STOP, reason="metrics", requester=0)
        gate.open()
        ended = await s.wait_job(job)
        assert ended.status in (JobStatus.ABORTED, JobStatus.FINISHED, JobStatus.FAILED)
        outcome = ended.cancel.outcome if ended.cancel else ""
        connector = aiohttp.UnixConnector(path=str(tmp_path / "api.sock"))
        async with aiohttp.ClientSession(base_url="http://taskmgrd", connector=connector) as http:
            got = await scrape(http)
        cancel = (("mode", "stop"), ("outcome", outcome))
        assert got[("taskmgrd_cancel_duration_seconds_count", cancel)] == 1
        states = collections.Counter(t.status.value for t in reg.tasks.values())
        assert {
            labels[0][1]: v for (name, labels), v in got.items() if name == "taskmgrd_tasks"
        } == states
        assert sum(v for (name, _), v in got.items() if name == "taskmgrd_hosts") == 3
        # the hooks exist once the store and host manager offer them (issue 5's contracts)
        if hasattr(s.daemon.store, "on_commit"):
            assert got[("taskmgrd_store_commit_seconds_count", ())] > 0
        if hasattr(s.daemon.hosts, "on_poll"):
            assert any(
                name == "taskmgrd_poll_roundtrip_seconds_count" and v > 0
                for (name, _), v in got.items()
            )

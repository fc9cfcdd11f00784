"""Prometheus metrics of one daemon (issue 5, item 5), on a registry of its own.

Counts (jobs by action and status, tasks by state, hosts by status) are read from the registry
at scrape time by a collector: nothing to keep in step, and a scrape costs one pass over the
jobs and tasks held in memory. Timings are histograms fed by hooks: the store's group commit
(`Store.on_commit`), each task poll (`HostManager.on_poll`), and cancel durations taken from the
registry's events (a job whose cancel record gains its outcome), so the cancel engine needs no
metrics code. A hook missing from the object it belongs to is skipped, not an error.
"""

from __future__ import annotations

import collections
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric

from daemon.events import Event, EventHub
from daemon.registry import Registry

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# seconds; polls and commits are milliseconds on a healthy system, cancels up to minutes
FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CANCEL_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


class RegistryCollector:
    """Gauges computed from the in-memory registry when Prometheus scrapes."""

    def __init__(self, registry: Registry) -> None:
        self._registry = registry

    def collect(self) -> Iterator[Metric]:
        reg = self._registry
        jobs = GaugeMetricFamily(
            "taskmgrd_jobs",
            "Jobs held by the daemon, by action and status",
            labels=["action", "status"],
        )
        for (action, status), n in sorted(
            collections.Counter((j.action, j.status.value) for j in reg.jobs.values()).items()
        ):
            jobs.add_metric([action, status], n)
        yield jobs
        tasks = GaugeMetricFamily(
            "taskmgrd_tasks", "VDSM tasks by the daemon's state", labels=["state"]
        )
        for state, n in sorted(
            collections.Counter(t.status.value for t in reg.tasks.values()).items()
        ):
            tasks.add_metric([state], n)
        yield tasks
        hosts = GaugeMetricFamily("taskmgrd_hosts", "Registered hosts by status", labels=["status"])
        for status, n in sorted(
            collections.Counter(h.status.value for h in reg.hosts.values()).items()
        ):
            hosts.add_metric([status], n)
        yield hosts
        subscribers = GaugeMetricFamily(
            "taskmgrd_event_subscribers", "Open change-event subscriptions (SSE streams)"
        )
        subscribers.add_metric([], reg.events.subscribers)
        yield subscribers


class DaemonMetrics:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry
        self.prometheus = CollectorRegistry()
        self.prometheus.register(RegistryCollector(registry))
        self.poll_seconds = Histogram(
            "taskmgrd_poll_roundtrip_seconds",
            "Round trip of Host.getAllTasksStatuses, by host",
            ["host"],
            buckets=FAST_BUCKETS,
            registry=self.prometheus,
        )
        self.poll_failures = Counter(
            "taskmgrd_poll_failures",
            "Host.getAllTasksStatuses calls that failed, by host",
            ["host"],
            registry=self.prometheus,
        )
        self.cancel_seconds = Histogram(
            "taskmgrd_cancel_duration_seconds",
            "From a committed cancel intent to its outcome, by mode and outcome",
            ["mode", "outcome"],
            buckets=CANCEL_BUCKETS,
            registry=self.prometheus,
        )
        self.commit_seconds = Histogram(
            "taskmgrd_store_commit_seconds",
            "Latency of one SQLite group commit",
            buckets=FAST_BUCKETS,
            registry=self.prometheus,
        )
        self.commit_rows = Counter(
            "taskmgrd_store_committed_rows",
            "Rows written by group commits",
            registry=self.prometheus,
        )
        self.api_requests = Counter(
            "taskmgrd_api_requests",
            "API requests answered, by method, route and HTTP status",
            ["method", "route", "status"],
            registry=self.prometheus,
        )
        # jobs whose cancel outcome was already counted: each cancel is observed once
        self._cancels_seen = {
            j.id for j in registry.jobs.values() if j.cancel is not None and j.cancel.outcome
        }
        self._hooked: list[tuple[Any, str]] = []

    # -- hooks -------------------------------------------------------------------------------

    def observe_poll(self, host: str, seconds: float, ok: bool) -> None:
        self.poll_seconds.labels(host).observe(seconds)
        if not ok:
            self.poll_failures.labels(host).inc()

    def observe_commit(self, seconds: float, rows: int) -> None:
        self.commit_seconds.observe(seconds)
        self.commit_rows.inc(rows)

    def on_event(self, event: Event) -> None:
        if event.kind != "job":
            return
        if event.op == "deleted":
            self._cancels_seen.discard(event.id)
            return
        cancel = event.data.get("cancel")
        if (
            not isinstance(cancel, dict)
            or not cancel.get("outcome")
            or event.id in self._cancels_seen
        ):
            return
        ended, requested = cancel.get("ended_at"), cancel.get("requested_at")
        if isinstance(ended, int | float) and isinstance(requested, int | float):
            self._cancels_seen.add(event.id)
            self.cancel_seconds.labels(str(cancel.get("mode")), str(cancel["outcome"])).observe(
                max(0.0, ended - requested)
            )

    def attach(self, store: Any, hosts: Any, hub: EventHub) -> None:
        """Hooks itself where the objects offer a hook (see the module docstring)."""
        for owner, name, hook in (
            (store, "on_commit", self.observe_commit),
            (hosts, "on_poll", self.observe_poll),
        ):
            if owner is not None and hasattr(owner, name):
                setattr(owner, name, hook)
                self._hooked.append((owner, name))
        hub.listeners.append(self.on_event)

    def detach(self, hub: EventHub) -> None:
        for owner, name in self._hooked:
            setattr(owner, name, None)
        self._hooked.clear()
        if self.on_event in hub.listeners:
            hub.listeners.remove(self.on_event)

    def render(self) -> bytes:
        return generate_latest(self.prometheus)

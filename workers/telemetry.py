"""Per-hop metrics (prometheus-client) and their merge onto one scrape endpoint.

Each replica records into its own registry and publishes the exposition text to the
``MetricsHub`` deployment every ``interval_s``; the router's ``/metrics`` serves the
hub's merge, each series labelled with the replica that produced it. Names follow
``flowtide_<subsystem>_<name>_<unit>``; counters end in ``_total``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import Metric
from prometheus_client.parser import text_string_to_metric_families

from workers.engines.base import EngineObserver, EngineStats

log = logging.getLogger(__name__)

LATENCY_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
BYTES_BUCKETS = tuple(float(4**k) for k in range(5, 16))
STALE_AFTER_S = 60.0


class RouterMetrics:
    """What the ingress sees of each request, end to end."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "flowtide_router_requests", "Requests by endpoint and outcome.", ["endpoint", "status"], registry=registry
        )
        self.inflight = Gauge("flowtide_router_inflight_requests", "Requests being served now.", registry=registry)
        self.ttft = Histogram(
            "flowtide_router_ttft_seconds", "Time to first token.", buckets=LATENCY_BUCKETS_S, registry=registry
        )
        self.tpot = Histogram(
            "flowtide_router_tpot_seconds",
            "Mean time per output token after the first, per request.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.latency = Histogram(
            "flowtide_router_request_latency_seconds",
            "End-to-end request latency.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.prompt_tokens = Counter("flowtide_router_prompt_tokens", "Prompt tokens received.", registry=registry)
        self.generation_tokens = Counter(
            "flowtide_router_generation_tokens", "Tokens generated and returned.", registry=registry
        )


class ServerMetrics(EngineObserver):
    """A prefill, decode or colocated server's load and hand-off figures; also the engine's observer."""

    def __init__(self, registry: CollectorRegistry, role: str) -> None:
        self.role = role
        self.queue_length = Gauge(
            "flowtide_server_queue_length", "Requests waiting for the engine.", ["role"], registry=registry
        ).labels(role)
        self.running = Gauge(
            "flowtide_server_running_sequences", "Sequences in the engine's running batch.", ["role"], registry=registry
        ).labels(role)
        self.kv_used = Gauge(
            "flowtide_server_kv_used_ratio", "Fraction of KV capacity in use.", ["role"], registry=registry
        ).labels(role)
        self._queue_wait = Histogram(
            "flowtide_server_queue_wait_seconds",
            "Time a request waited before the engine started it.",
            ["role", "stage"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.requests = Counter(
            "flowtide_server_requests", "Requests by outcome.", ["role", "status"], registry=registry
        )
        self.batch_size = Histogram(
            "flowtide_decode_batch_size", "Sequences per decode step.", ["role"], buckets=BATCH_BUCKETS, registry=registry
        ).labels(role)
        self.step_seconds = Histogram(
            "flowtide_decode_step_seconds", "Duration of one decode step.", ["role"], buckets=LATENCY_BUCKETS_S,
            registry=registry,
        ).labels(role)
        self.prefill_seconds = Histogram(
            "flowtide_prefill_seconds", "Prefill compute time.", ["role"], buckets=LATENCY_BUCKETS_S, registry=registry
        ).labels(role)
        self.kv_bytes = Counter(
            "flowtide_kv_handoff_bytes", "KV cache bytes handed from prefill to decode.", registry=registry
        )
        self.kv_bytes_per_request = Histogram(
            "flowtide_kv_handoff_request_bytes", "KV bytes per hand-off.", buckets=BYTES_BUCKETS, registry=registry
        )
        self.kv_seconds = Histogram(
            "flowtide_kv_handoff_seconds",
            "Time for the decode server to receive a request's KV.",
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )

    def queue_wait(self, stage: str, seconds: float) -> None:
        self._queue_wait.labels(self.role, stage).observe(seconds)

    def step(self, batch_size: int, seconds: float) -> None:
        self.batch_size.observe(batch_size)
        self.step_seconds.observe(seconds)

    def load(self, stats: EngineStats) -> None:
        self.queue_length.set(stats.waiting)
        self.running.set(stats.running)
        self.kv_used.set(stats.kv_used_fraction)


def merge_expositions(texts: dict[str, str]) -> str:
    """Merge several replicas' exposition texts into one, adding ``replica=<source>`` to every series."""
    families: dict[str, Metric] = {}
    for source, text in sorted(texts.items()):
        for family in text_string_to_metric_families(text):
            if family.name.endswith("_created"):
                continue  # prometheus-client's creation timestamps: noise for Prometheus, dropped
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type, family.unit)
            for sample in family.samples:
                if sample.name.endswith("_created"):
                    continue
                merged.add_sample(sample.name, {**sample.labels, "replica": source}, sample.value)
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Families(families.values()))
    return generate_latest(registry).decode()


class _Families:
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterable[Metric]:
        return self._families


class MetricsHub:
    """Holds each replica's latest exposition; deployed once per application."""

    def __init__(self) -> None:
        self._latest: dict[str, tuple[float, str]] = {}

    # Async, so Serve runs them on the replica's loop instead of handing each call to a thread.
    async def push(self, source: str, text: str) -> None:
        self._latest[source] = (time.monotonic(), text)

    async def collect(self) -> str:
        now = time.monotonic()
        self._latest = {k: v for k, v in self._latest.items() if now - v[0] < STALE_AFTER_S}
        return merge_expositions({source: text for source, (_, text) in self._latest.items()})


class MetricsPublisher:
    """Publishes one process's registry to the hub every ``interval_s`` once started (no hub: does nothing).

    Started from request handlers and health checks, since a Serve replica's constructor has no
    running event loop; ``before()`` refreshes gauges ahead of each push.
    """

    def __init__(self, hub, source: str, registry: CollectorRegistry, interval_s: float, before=None) -> None:
        self.hub, self.source, self.registry, self.interval_s, self.before = hub, source, registry, interval_s, before
        self._task: asyncio.Task | None = None

    def ensure_running(self) -> None:
        if self.hub is not None and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._publish_forever())

    async def push_now(self) -> None:
        if self.before is not None:
            self.before()
        await self.hub.push.remote(self.source, generate_latest(self.registry).decode())

    async def _publish_forever(self) -> None:
        while True:
            try:
                await self.push_now()
            except asyncio.CancelledError:
                raise
            except Exception:  # the hub restarting must not take a server down; the next push retries
                log.warning("metrics push from %s failed; retrying in %.1fs", self.source, self.interval_s,
                            exc_info=True)
            await asyncio.sleep(self.interval_s)

"""Metrics from several replicas merge into one valid exposition."""

import asyncio
import subprocess

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import require_tool
from workers.telemetry import MetricsHub, RouterMetrics, ServerMetrics, merge_expositions


def replica_text(role: str, n: int) -> str:
    registry = CollectorRegistry()
    metrics = ServerMetrics(registry, role)
    for _ in range(n):
        metrics.step(batch_size=4, seconds=0.01)
        metrics.queue_wait("decode", 0.002)
    metrics.kv_bytes.inc(1024 * n)
    return generate_latest(registry).decode()


def test_merge_labels_each_series_with_its_replica_and_keeps_values():
    merged = merge_expositions({"decode-1": replica_text("decode", 2), "decode-2": replica_text("decode", 3)})
    families = {f.name: f for f in text_string_to_metric_families(merged)}
    kv = {s.labels["replica"]: s.value for s in families["flowtide_kv_handoff_bytes"].samples
          if s.name.endswith("_total")}
    assert kv == {"decode-1": 2048.0, "decode-2": 3072.0}
    counts = {s.labels["replica"]: s.value for s in families["flowtide_decode_batch_size"].samples
              if s.name.endswith("_count")}
    assert counts == {"decode-1": 2.0, "decode-2": 3.0}
    assert "_created" not in merged


def test_hub_output_passes_promtool():
    async def merged() -> str:
        hub = MetricsHub()
        await hub.push("decode-1", replica_text("decode", 1))
        await hub.push("prefill-1", replica_text("prefill", 1))
        router = CollectorRegistry()
        RouterMetrics(router).ttft.observe(0.02)
        await hub.push("router-1", generate_latest(router).decode())
        return await hub.collect()

    text = asyncio.run(merged())
    assert 'replica="router-1"' in text and 'role="prefill"' in text
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr

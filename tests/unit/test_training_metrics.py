"""The training job's Prometheus metrics follow the naming conventions promtool checks."""

from __future__ import annotations

import subprocess

from prometheus_client import generate_latest

from tests.conftest import require_tool
from workers.elastic.metrics import TrainMetrics


def _exposition() -> bytes:
    m = TrainMetrics("job-a")
    m.steps.inc(3)
    m.world_size.set(2)
    m.churn_lost.inc(1.5)
    return generate_latest(m.registry)


def test_metric_names_are_flowtide_train_and_counters_end_in_total():
    text = _exposition().decode()
    names = {line.split("{")[0] for line in text.splitlines() if line and not line.startswith("#")}
    assert all(n.startswith("flowtide_train_") for n in names)
    for required in (
        "flowtide_train_steps_per_second",
        "flowtide_train_world_size",
        "flowtide_train_last_commit_step",
        "flowtide_train_recoveries_total",
        "flowtide_train_churn_lost_seconds_total",
    ):
        assert required in names
    assert 'flowtide_train_world_size{job="job-a"} 2.0' in text


def test_promtool_accepts_the_training_metrics():
    promtool = require_tool("promtool")
    out = subprocess.run([promtool, "check", "metrics"], input=_exposition(), capture_output=True, timeout=30)
    assert out.returncode == 0, out.stdout.decode() + out.stderr.decode()

"""The 14-day ServeGen replay at 10 s ticks: request-level synthesis matches the published totals,
and the simulation itself (static policy) runs in under a minute."""

from pathlib import Path

import pytest

from autoscaler.capacity import load_capacity
from autoscaler.policies.static import StaticPolicy
from autoscaler.power import PowerModel
from autoscaler.scenario import default_cluster
from autoscaler.simulator import simulate
from autoscaler.traces import load_servegen

from tests.conftest import SHARED_DATA, needs_data

ROOT = Path(__file__).resolve().parents[2]
SERVEGEN = SHARED_DATA / "servegen-m-large"
PERF = SHARED_DATA / "splitwise-perf" / "perf_model.csv"


@pytest.mark.slow
@needs_data(SERVEGEN, PERF)
def test_fourteen_day_servegen_replay_simulates_in_under_a_minute():
    trace = load_servegen(SERVEGEN, step_s=10.0, seed=0, cache_dir=ROOT / "results" / "cache")
    assert trace.n_ticks == 14 * 8640
    per_window = trace.n_requests.reshape(-1, 60).sum(axis=1) / 600
    # data/README.md: summed over clients, mean 196 req/s, max 583, min 48 (600 s windows).
    assert per_window.mean() == pytest.approx(196, rel=0.03)
    assert per_window.max() == pytest.approx(583, rel=0.05)
    assert per_window.min() == pytest.approx(48, rel=0.1)
    cluster = default_cluster(trace, load_capacity(PERF), PowerModel.for_hardware("h100-80gb"))
    result = simulate(trace, StaticPolicy.for_peak(trace, cluster), cluster)
    assert result.wall_s < 60.0
    assert result.summary()["slo_attainment"] > 0.99

"""Baseline policies behave as the systems they stand for."""

from pathlib import Path

import numpy as np
import pytest

from autoscaler.capacity import load_capacity
from autoscaler.decision import PoolView, Snapshot
from autoscaler.policies.dynamo import DynamoPolicy
from autoscaler.policies.ray_serve import DelayState, RayServePolicy, apply_delay
from autoscaler.power import PowerModel
from autoscaler.simulator import ClusterParams

PERF = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "splitwise-perf" / "perf_model.csv"
pytestmark = pytest.mark.skipif(not PERF.is_file(), reason="needs ../shared/data/splitwise-perf")


@pytest.fixture(scope="module")
def cluster():
    return ClusterParams(capacity=load_capacity(PERF), power=PowerModel.for_hardware("h100-80gb"),
                         max_replicas=(30, 30), cold_start_s=60.0)


def snap(now, history=None, ongoing=(0.0, 0.0), targets=(1, 1), step_s=10.0):
    history = np.zeros((int(now // step_s), 3)) if history is None else history
    return Snapshot(now_s=now, step_s=step_s, history=history, prefill=PoolView(targets[0], 0, targets[0]),
                    decode=PoolView(targets[1], 0, targets[1]), ongoing_prefill=ongoing[0],
                    ongoing_decode=ongoing[1], mean_prompt_tokens=1000, mean_output_tokens=200,
                    tail_prompt_tokens=2000)


def test_serve_delay_logic_waits_30s_up_and_600s_down_by_elapsed_time():
    state = DelayState()
    n, state = apply_delay(5, 2, state, 0.0, 30.0, 600.0)
    assert n == 2
    n, state = apply_delay(5, 2, state, 29.0, 30.0, 600.0)
    assert n == 2
    n, state = apply_delay(5, 2, state, 30.0, 30.0, 600.0)
    assert n == 5 and state == DelayState()
    n, state = apply_delay(1, 5, DelayState(), 100.0, 30.0, 600.0)
    n, state = apply_delay(1, 5, state, 699.0, 30.0, 600.0)
    assert n == 5
    n, _ = apply_delay(1, 5, state, 700.0, 30.0, 600.0)
    assert n == 1
    # A wish in the other direction resets the clock.
    _, state = apply_delay(9, 5, DelayState(-1, 0.0), 10.0, 30.0, 600.0)
    assert state == DelayState(1, 10.0)


def test_ray_serve_scales_with_ongoing_requests_after_the_upscale_delay(cluster):
    policy = RayServePolicy(cluster, interval_s=10.0)
    target_p, target_d = policy.targets_per_replica(snap(0))
    ongoing = (10 * target_p, 4 * target_d)
    decisions = [policy.step(snap(t, ongoing=ongoing)) for t in range(0, 40, 10)]
    assert [d.prefill for d in decisions] == [1, 1, 1, 10]
    assert decisions[-1].decode == 4


def test_dynamo_sizes_from_the_last_interval_and_clamps_to_the_power_budget(cluster):
    rows = np.tile([[20.0, 20_000.0, 4_000.0]], (18, 1))  # 180 s of 10 s ticks
    free = DynamoPolicy(cluster).step(snap(180.0, rows))
    assert free.prefill > 1 and free.decode >= 1
    tp = cluster.capacity.gpus_per_replica
    budget_gpus = (free.prefill + free.decode) * tp // 2
    capped = ClusterParams(**{**cluster.__dict__, "power_cap_w": budget_gpus * cluster.power.tdp_w})
    d = DynamoPolicy(capped).step(snap(180.0, rows))
    assert (d.prefill + d.decode) * tp <= budget_gpus
    assert d.reasons["prefill"].binding == "gpu_power_budget"
    assert d.prefill / d.decode == pytest.approx(free.prefill / free.decode, rel=0.5)

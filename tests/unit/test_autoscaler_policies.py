"""Baseline policies behave as the systems they stand for."""

import math
from dataclasses import replace

import numpy as np
import pytest

from autoscaler.capacity import load_capacity
from autoscaler.decision import PoolView, Snapshot, decide
from autoscaler.policies.dynamo import DynamoPolicy
from autoscaler.policies.ray_serve import DelayState, RayServePolicy, apply_delay
from autoscaler.power import PowerModel
from autoscaler.simulator import ClusterParams

from tests.conftest import SHARED_DATA, needs_data

PERF = SHARED_DATA / "splitwise-perf" / "perf_model.csv"
pytestmark = needs_data(PERF)


@pytest.fixture(scope="module")
def cluster():
    return ClusterParams(capacity=load_capacity(PERF), power=PowerModel.for_hardware("h100-80gb"),
                         max_replicas=(30, 30), cold_start_s=60.0)


def snap(now, history=None, ongoing=(0.0, 0.0), targets=(1, 1), step_s=10.0, latency=None):
    history = np.zeros((int(now // step_s), 3)) if history is None else history
    return Snapshot(now_s=now, step_s=step_s, history=history, prefill=PoolView(targets[0], 0, targets[0]),
                    decode=PoolView(targets[1], 0, targets[1]), ongoing_prefill=ongoing[0],
                    ongoing_decode=ongoing[1], mean_prompt_tokens=1000, mean_output_tokens=200,
                    tail_prompt_tokens=2000, latency=latency)


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


def test_ray_serve_targets_stay_finite_for_prompts_without_tokens(cluster):
    # A live loop's mean prompt over requests without prompt tokens is 0: the target once divided by it.
    empty = replace(snap(0), mean_prompt_tokens=0.0, tail_prompt_tokens=0.0)
    target_p, target_d = RayServePolicy(cluster, interval_s=10.0).targets_per_replica(empty)
    assert math.isfinite(target_p) and target_p >= 1 and target_d >= 1


def test_ray_serve_waits_its_default_600s_before_scaling_down(cluster):
    policy = RayServePolicy(cluster, interval_s=10.0)
    targets = (10, 4)
    for t in range(0, 610, 10):
        d = policy.step(snap(float(t), targets=targets))  # nothing ongoing: it wishes for the minimum
        if t < 600:
            assert (d.prefill, d.decode) == targets, t
    assert (d.prefill, d.decode) == cluster.min_replicas


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


def test_dynamo_with_a_forecaster_that_needs_more_rows_holds_the_last_value_until_it_fits(cluster):
    # Quantile regression at horizon 1 needs 39 rows; Dynamo's first fit is at 8 and once raised out of
    # the policy. With a refit every 40 rows the second fit, at 48, has enough.
    rng = np.random.default_rng(0)
    rows = np.column_stack([rng.poisson(20.0, 18 * 60)] * 3) * [1.0, 1000.0, 200.0]  # 3 hours of 10 s ticks
    policy = DynamoPolicy(cluster, forecaster="quantile", forecaster_kw={"horizon": 1}, refit_every_rows=40)
    for now in range(180, 18 * 60 * 10 + 1, 180):
        policy.step(snap(float(now), rows[: now // 10]))
        n = len(policy.rows)
        assert (policy.forecaster is not None) == (n >= 48), n
        if n < 48:
            np.testing.assert_array_equal(policy.predict(), policy.rows[-1])


def test_baselines_claim_no_power_check_or_quantile_they_did_not_compute(cluster):
    # Dynamo sizes from a point forecast and none of the baselines computes P(power <= cap): the log
    # said P(power<=cap)=1.000 and Dynamo q=0.500.
    rows = np.tile([[20.0, 20_000.0, 4_000.0]], (18, 1))
    for decision in (DynamoPolicy(cluster).step(snap(180.0, rows)),
                     RayServePolicy(cluster, interval_s=10.0).step(snap(0))):
        assert math.isnan(decision.p_power_ok) and math.isnan(decision.reasons["prefill"].quantile_used)
        out = decision.to_dict()
        assert out["p_power_ok"] is None and out["reasons"]["prefill"]["quantile_used"] is None
        assert "P(power" not in decision.explain() and "nan" not in decision.explain()


def test_dynamo_corrects_decode_by_the_tpot_its_sequences_saw(cluster):
    rows = np.tile([[20.0, 20_000.0, 4_000.0]], (18, 1))  # 1,000-token prompts, 200 output tokens
    blind = DynamoPolicy(cluster).step(snap(180.0, rows, targets=(4, 8)))
    capacity = cluster.capacity

    def seen(ttft, tpot, correction=True):
        policy = DynamoPolicy(cluster, correction=correction)
        latency = np.tile([[ttft, tpot]], (18, 1))
        latency[3] = np.nan  # a tick without requests reads as nothing, not as zero latency
        return policy, policy.step(snap(180.0, rows, targets=(4, 8), latency=latency))

    # Dynamo's factor: observed TPOT over the profile's at the concurrency the pool ran
    # (requests/s x request duration per replica), at context prompt + output / 2.
    policy, slow = seen(0.5, 0.12)
    concurrency = 20.0 * (0.5 + 200 * 0.12) / 8
    assert concurrency < capacity.max_batch
    assert policy.decode_correction == pytest.approx(0.12 / float(capacity.tpot_s(concurrency, 1100.0)))
    assert policy.decode_correction > 2 and slow.decode > blind.decode and slow.prefill == blind.prefill
    assert slow.reasons["decode"].binding == "tpot_correction" and blind.reasons["decode"].binding == "point_forecast"
    assert slow.reasons["prefill"].binding == "point_forecast"
    # Switched off (Dynamo's --no-correction), or with nothing observed, it sizes as before.
    assert seen(0.5, 0.12, correction=False)[1].decode == blind.decode
    policy, unread = seen(np.nan, np.nan)
    assert policy.decode_correction == 1.0 and unread.decode == blind.decode
    # A target no batch meets sizes at batch 1, as Dynamo's interpolator falls back to its lightest point.
    policy, crushed = seen(0.5, 5.0)  # and the profile is not read past its largest batch
    assert policy.decode_correction == pytest.approx(5.0 / float(capacity.tpot_s(capacity.max_batch, 1100.0)))
    need_at_batch_1 = 4_000.0 * float(capacity.tpot_s(1, 1100.0))
    assert crushed.decode == min(math.ceil(need_at_batch_1), cluster.max_replicas[1])


# ---- flowtide on short traces, pre-trained forecasters, and the hindsight bound -------------------

from autoscaler.forecast import make_forecaster  # noqa: E402
from autoscaler.policies import SHORT_BURST_WINDOWS_S, make_policy  # noqa: E402
from autoscaler.policies.flowtide import FlowtidePolicy, load_pretrained, pretrain  # noqa: E402
from autoscaler.policies.hindsight import HindsightPolicy  # noqa: E402
from autoscaler.traces import RequestGroups, TickTrace  # noqa: E402


def tick_trace(rps: np.ndarray, prompt: float = 1000.0, output: float = 50.0, step_s: float = 1.0) -> TickTrace:
    rps = np.asarray(rps, dtype=float)
    n = rps * step_s
    ticks = np.arange(rps.size)
    return TickTrace("synthetic", step_s, n, n * prompt, n * output,
                     RequestGroups(ticks, np.full(rps.size, prompt), np.full(rps.size, output), n))


class Recording:
    """A real forecaster (last value) that records every history it is shown."""

    def __init__(self):
        self.inner = make_forecaster("last")
        self.seen: list[np.ndarray] = []
        self.updates: list[np.ndarray] = []

    def fit(self, history, step_s):
        self.inner.fit(history, step_s)

    def update(self, new_rows):
        self.updates.append(np.array(new_rows))
        self.inner.update(new_rows)

    def predict(self, history, horizon, n_samples, rng):
        self.seen.append(np.array(history))
        return self.inner.predict(history, horizon, n_samples, rng)


def test_arrival_curve_peak_counts_a_one_second_spike_the_queue_cannot_absorb(cluster):
    policy = FlowtidePolicy(cluster, forecast_step_s=30.0, burst_windows_s=SHORT_BURST_WINDOWS_S, burst_wait_s=1.0)
    block = np.zeros((30, 3))
    block[7] = [60.0, 60_000.0, 3_000.0]  # 60 requests of 1000 tokens in one second, nothing else
    peak = policy._peak(block, 1.0, 1.0)
    # One second of arrivals plus one second the queue may hold: 30k tokens/s, 15x the 10 s mean.
    assert peak[1] == pytest.approx(30_000.0)
    ten_s = FlowtidePolicy(cluster, forecast_step_s=30.0)._peak(block, 1.0, 1.0)
    assert ten_s[1] == pytest.approx(6_000.0)


def test_joint_bootstrap_never_gives_a_busy_step_the_burst_ratio_of_a_quiet_one(cluster):
    rates = np.zeros((600, 3))
    rates[:300:30] = [20.0, 20_000.0, 1_000.0]  # quiet half: one busy second per 30 s step
    rates[300:] = [5.0, 5_000.0, 250.0]  # busy half: flat
    policies = {j: FlowtidePolicy(cluster, forecaster="last", forecast_step_s=30.0, min_fit_rows=10**6,
                                  burst_windows_s=SHORT_BURST_WINDOWS_S, joint_bootstrap=j, seed=1)
                for j in (False, True)}
    worst = {}
    for j, policy in policies.items():
        policy.step(snap(600.0, rates, step_s=1.0))
        worst[j] = policy.cached.samples[..., 1].max()
    # Every step's own peak rate is at most what one step ever needed; independent draws multiply a
    # flat step's mean by a spiky step's ratio.
    own_peaks = np.asarray(policies[True].rows)[:, 1] * np.asarray(policies[True].bursts)[:, 1]
    assert worst[True] <= own_peaks.max() + 1e-6
    assert worst[False] > 2 * own_peaks.max()


def test_a_pretrained_forecaster_serves_from_the_first_row_and_never_sees_future_rows(cluster):
    recording = Recording()
    recording.fit(np.full((50, 3), [100.0, 100_000.0, 5_000.0]), 30.0)
    level = np.array([100.0, 100_000.0, 5_000.0])
    policy = FlowtidePolicy(cluster, forecaster="flow", forecast_step_s=30.0, interval_s=10.0, min_fit_rows=10**6,
                            pretrained=recording, pretrained_level=level)
    rng = np.random.default_rng(0)
    rates = np.column_stack([rng.poisson(4.0, 300)] * 3) * [1.0, 1000.0, 50.0]
    for now in range(0, 300, 10):
        policy.step(snap(float(now), rates[:now], step_s=1.0))
    assert policy.forecaster is recording and policy.fit_error is None
    assert len(recording.seen) == 300 // 30 - 1  # one fresh forecast per completed 30 s step, from the first
    for k, shown in enumerate(recording.seen, start=1):
        own = rates[: 30 * k].reshape(k, 30, 3).mean(axis=1)  # the k steps completed so far, nothing later
        assert shown.shape == (k, 3)
        np.testing.assert_allclose(shown, own * level / own.mean(axis=0))  # rescaled to the model's units
    # Updated online with each step as it completes (this trace's rows are new to it), never ahead.
    assert [u.shape[0] for u in recording.updates] == [1] * len(recording.seen)
    for k, row in enumerate(recording.updates, start=1):
        own = rates[: 30 * k].reshape(k, 30, 3).mean(axis=1)
        np.testing.assert_allclose(row[0], own[-1] * level / own.mean(axis=0))


def test_pretrain_saves_a_flow_that_loads_and_that_make_policy_starts_from(cluster, tmp_path):
    rng = np.random.default_rng(0)
    t = np.arange(260)
    main = np.column_stack([50 + 10 * np.sin(t / 20)] * 3) * [1.0, 1000.0, 50.0] * rng.lognormal(0, 0.1, (260, 3))
    other = main[:120] * 0.01  # another trace at another scale
    kw = dict(seasons=0, max_epochs=2, max_train_s=5.0, context=12, patch=6, horizon=4, batch_size=32)
    path = tmp_path / "flow.pt"
    fitted = pretrain([main, other], 30.0, path, sources=["a", "b"], **kw)
    loaded, level = load_pretrained(path)
    np.testing.assert_allclose(level, main.mean(axis=0))
    a = fitted.predict(main, 3, 8, np.random.default_rng(5)).samples
    b = loaded.predict(main, 3, 8, np.random.default_rng(5)).samples
    np.testing.assert_allclose(a, b, rtol=1e-5)
    trace = tick_trace(np.full(600, 2.0))
    policy = make_policy("flowtide", trace, cluster, pretrained=path)
    assert policy.pretrained and policy.interval_s == 10.0 and policy.joint_bootstrap
    policy.step(snap(30.0, trace.rates()[:30], step_s=1.0))
    assert policy.forecaster is not None and policy.fitted_rows == 0  # the pre-trained one, not a fit here
    with pytest.raises(Exception, match="not found"):
        load_pretrained(tmp_path / "missing.pt")


def test_a_forecaster_is_built_for_as_many_steps_as_a_decision_looks_ahead(cluster):
    # A 150 s cold start at 30 s steps looks 7 steps ahead; quantile regression and the flow are built
    # for 6 by default, and the policy once crashed at its first forecast after the fit.
    slow = replace(cluster, cold_start_s=150.0)
    policy = FlowtidePolicy(slow, forecaster="quantile", forecast_step_s=30.0, interval_s=10.0, min_fit_rows=40)
    assert policy.horizon == 7
    rng = np.random.default_rng(0)
    rates = np.column_stack([rng.poisson(4.0, 1500)] * 3) * [1.0, 1000.0, 50.0]
    for now in range(0, 1500, 10):
        policy.step(snap(float(now), rates[:now], step_s=1.0))
    assert policy.fit_error is None and policy.forecaster.horizon == 7
    assert policy.cached.samples.shape[1] == 7
    assert FlowtidePolicy(slow, forecaster="flow", forecast_step_s=30.0, interval_s=10.0).forecaster_kw == {"horizon": 7}
    # A horizon the caller set, or a forecaster given built, is not changed behind their back.
    with pytest.raises(PolicyError, match="is given horizon 6 step.*looks 7 ahead"):
        FlowtidePolicy(slow, forecaster="quantile", forecast_step_s=30.0, interval_s=10.0, forecaster_kw={"horizon": 6})
    with pytest.raises(PolicyError, match="was built for 4 step"):
        FlowtidePolicy(slow, forecast_step_s=30.0, interval_s=10.0, pretrained=make_forecaster("flow", horizon=4))
    # Forecasters without a fixed horizon need nothing.
    assert FlowtidePolicy(slow, forecaster="last", forecast_step_s=30.0, interval_s=10.0).forecaster_kw == {}


@pytest.mark.parametrize("step_s", [0.001, 0.5, 2.5])
def test_a_forecast_step_that_is_not_whole_ticks_is_refused(cluster, step_s):
    # At 0.001 s the policy looked 70,001 steps ahead and a 5-minute trace did not finish in minutes.
    trace = tick_trace(np.full(600, 2.0))
    with pytest.raises(PolicyError, match=f"forecast_step_s {step_s:g} must be a whole number of the trace's 1 s ticks"):
        make_policy("flowtide", trace, cluster, forecaster="last", forecast_step_s=step_s)
    assert make_policy("flowtide", trace, cluster, forecaster="last", forecast_step_s=7.0).step_s == 7.0


def test_a_pretrained_forecaster_fitted_on_other_steps_is_refused(cluster, tmp_path):
    rng = np.random.default_rng(0)
    main = rng.lognormal(0, 0.1, (260, 3)) * [50.0, 50_000.0, 2_500.0]
    path = tmp_path / "flow.pt"
    pretrain([main], 60.0, path, seasons=0, max_epochs=1, context=12, patch=6, horizon=4, batch_size=32)
    with pytest.raises(PolicyError, match="rows of 60 s; this policy aggregates rows of 30 s"):
        make_policy("flowtide", tick_trace(np.full(600, 2.0)), cluster, pretrained=path)


def test_hindsight_bound_is_ready_for_a_spike_one_cold_start_ahead_and_lets_go_after(cluster):
    rps = np.full(400, 0.5)
    rps[200:210] = 60.0
    trace = tick_trace(rps)
    bound = HindsightPolicy(trace, cluster)
    at = lambda t: bound.step(snap(float(t), step_s=1.0)).prefill  # noqa: E731
    assert at(100) == 1 and at(300) == 1
    assert at(int(200 - cluster.cold_start_s)) > 3 and at(205) > 3  # asked for a cold start before the spike
    assert HindsightPolicy(trace, cluster, scale=0.5).targets[0].max() < bound.targets[0].max()


def short_policy(cluster, **kw):
    """Flowtide as make_policy builds it for an hour-long trace at 1 s ticks (never fits the flow here)."""
    base = dict(forecaster="last", forecast_step_s=30.0, min_fit_rows=10**6, interval_s=10.0,
                burst_windows_s=SHORT_BURST_WINDOWS_S, joint_bootstrap=True, burst_window_rows=10,
                n_samples=256, unseen_burst_alpha=1.0, seed=3)
    return FlowtidePolicy(cluster, **{**base, **kw})


def periodic_rates(n_steps: int) -> np.ndarray:
    """Per-second demand: every 30 s step holds one busy second (10 to 20 requests of 1000 tokens, in a
    four-step cycle, so every window of steps has the same spread) and 29 calm ones."""
    rates = np.tile([0.5, 500.0, 50.0], (n_steps * 30, 1))
    busy = np.resize([10.0, 20.0, 15.0, 12.0], n_steps)
    rates[::30] = busy[:, None] * [1.0, 1000.0, 50.0]
    return rates


def test_unseen_burst_headroom_shrinks_as_evidence_grows(cluster):
    assert [short_policy(cluster).unseen_probability(n) for n in (0, 1, 9, 99)] == pytest.approx([1, 0.5, 0.1, 0.01])
    counts, shares = {}, {}
    for n in (4, 12, 40, 120):
        policy = short_policy(cluster)
        decision = policy.step(snap(30.0 * n, periodic_rates(n), step_s=1.0))
        seen_max = (np.asarray(policy.rows) * np.asarray(policy.bursts))[:, 1].max()
        counts[n] = decision.prefill
        shares[n] = float((policy.cached.samples[..., 1] > seen_max * (1 + 1e-9)).mean())
        # Without the prior no sample ever exceeds what was seen.
        assert policy.cached_seen.samples[..., 1].max() <= seen_max * (1 + 1e-9)
    assert shares[4] > shares[12] > shares[40] > shares[120]
    assert shares[4] == pytest.approx(1 / 5, abs=0.02) and shares[120] == pytest.approx(1 / 121, abs=0.005)
    assert counts[4] > counts[40] >= counts[120]
    without = FlowtidePolicy(cluster, **{**dict(forecaster="last", forecast_step_s=30.0, min_fit_rows=10**6,
                                                burst_windows_s=SHORT_BURST_WINDOWS_S, joint_bootstrap=True,
                                                burst_window_rows=10, n_samples=256, seed=3)})
    assert without.step(snap(30.0 * 4, periodic_rates(4), step_s=1.0)).prefill < counts[4]


def test_an_unseen_burst_is_larger_than_the_recent_window_and_says_it_binds(cluster):
    policy = short_policy(cluster)
    rates = periodic_rates(6)
    rates[30 * 3] = [40.0, 40_000.0, 2_000.0]  # one step twice as busy as any other
    decision = policy.step(snap(30.0 * 6, rates, step_s=1.0))
    peaks = np.asarray(policy.rows) * np.asarray(policy.bursts)
    burst_cells = policy.cached.samples[..., 1][policy.cached.samples[..., 1] > peaks[:, 1].max() * (1 + 1e-9)]
    assert burst_cells.size == policy.last_unseen["cells"] > 0
    assert policy.last_unseen["p"] == pytest.approx(1 / 7)
    assert policy.last_unseen["mean_excess"] > 0  # the steps above the median set the tail
    assert decision.reasons["prefill"].binding == "unseen_burst"
    assert 0 < decision.reasons["prefill"].expected_attainment <= 1


def test_a_target_the_unseen_burst_prior_keeps_up_says_so_rather_than_a_hold(cluster):
    # Ten seconds after the prior raised the target, on the same evidence, its wish is still that target
    # while the seen steps alone want fewer (so their own decision would be a hysteresis hold of it).
    policy = short_policy(cluster)
    rates = periodic_rates(6)
    rates[30 * 3] = [40.0, 40_000.0, 2_000.0]
    first = policy.step(snap(30.0 * 6, rates, step_s=1.0))
    assert first.reasons["prefill"].binding == "unseen_burst"
    later = np.vstack([rates, np.tile([0.5, 500.0, 50.0], (10, 1))])
    held = policy.step(snap(30.0 * 6 + 10, later, targets=(first.prefill, first.decode), step_s=1.0))
    seen, _ = decide(replace(snap(30.0 * 6 + 10, later, targets=(0, 0), step_s=1.0), forecast=policy.cached_seen),
                     policy.state, policy.params)
    assert held.prefill == held.reasons["prefill"].wanted == first.prefill > seen.prefill
    assert held.reasons["prefill"].binding == "unseen_burst", held.explain()


def test_one_burst_then_calm_scales_up_once_and_down_once_after_a_cold_start(cluster):
    policy = short_policy(cluster)
    rates = periodic_rates(40)
    rates[30 * 20 + 5] = [60.0, 60_000.0, 3_000.0]  # one burst at t = 605 s
    targets, current, changed_at = [], (1, 1), []
    for now in np.arange(30.0, 40 * 30.0 + 1, 10.0):
        d = policy.step(snap(now, rates[: int(now)], targets=current, step_s=1.0))
        if (d.prefill, d.decode) != current:
            changed_at.append(now)
        current = (d.prefill, d.decode)
        targets.append(d.prefill)
    after = targets[int((630 - 30) // 10):]
    # Up at the burst, then only down (no flapping), and not before the lower wish held a cold start.
    assert after[0] == max(after) and all(a >= b for a, b in zip(after, after[1:]))
    downs = [t for t in changed_at if t > 630]
    assert all(b - a >= cluster.cold_start_s for a, b in zip(downs, downs[1:]))


# ---- each baseline's headroom knob, and dynamo's shared predictions -------------------------------

from autoscaler.policies import PolicyError  # noqa: E402
from autoscaler.policies.static import StaticPolicy  # noqa: E402
from autoscaler.simulator import simulate  # noqa: E402

HEADROOMS = (0.75, 1.0, 1.5, 2.0)


def test_static_headroom_sizes_ceil_headroom_times_the_peak_need(cluster):
    rps = np.full(600, 2.0)
    rps[300:320] = 20.0
    trace = tick_trace(rps)
    default = StaticPolicy.for_peak(trace, cluster)
    sized = {h: StaticPolicy.for_peak(trace, cluster, headroom=h) for h in HEADROOMS}
    assert (sized[1.0].prefill, sized[1.0].decode) == (default.prefill, default.decode)
    assert default.prefill >= 3  # enough that a multiplier moves the count
    prefill = [sized[h].prefill for h in HEADROOMS]
    assert prefill == sorted(prefill) and len(set(prefill)) == len(prefill)  # strictly more with more headroom
    assert [sized[h].decode for h in HEADROOMS] == sorted(sized[h].decode for h in HEADROOMS)
    # ceil(2 x need) lies within one replica of twice ceil(need)
    assert 2 * default.prefill - 1 <= sized[2.0].prefill <= 2 * default.prefill
    # Still clipped to the cluster's bounds.
    assert StaticPolicy.for_peak(trace, cluster, headroom=1000.0).prefill == cluster.max_replicas[0]
    assert make_policy("static", trace, cluster, headroom=2.0).prefill == sized[2.0].prefill


def test_ray_serve_headroom_divides_target_ongoing_requests(cluster):
    target_p, target_d = RayServePolicy(cluster, interval_s=10.0).targets_per_replica(snap(0))
    ongoing = (8 * target_p, 4 * target_d)
    counts = {}
    for h in HEADROOMS:
        policy = RayServePolicy(cluster, interval_s=10.0, headroom=h)
        assert policy.targets_per_replica(snap(0)) == pytest.approx((target_p / h, target_d / h))
        d = [policy.step(snap(t, ongoing=ongoing)) for t in range(0, 40, 10)][-1]
        counts[h] = (d.prefill, d.decode)
    assert counts[1.0] == (8, 4)
    for h in HEADROOMS:
        assert abs(counts[h][0] - 8 * h) < 1 and abs(counts[h][1] - 4 * h) < 1
    assert [counts[h] for h in HEADROOMS] == sorted(counts.values())


def test_dynamo_headroom_multiplies_the_predicted_need_of_both_pools(cluster):
    rows = np.tile([[20.0, 20_000.0, 4_000.0]], (18, 1))
    decisions = {h: DynamoPolicy(cluster, headroom=h).step(snap(180.0, rows)) for h in HEADROOMS}
    base = decisions[1.0]
    assert base.prefill >= 3 and base.decode >= 1
    for pool in ("prefill", "decode"):
        counts = [getattr(decisions[h], pool) for h in HEADROOMS]
        assert counts == sorted(counts)
    assert decisions[2.0].prefill >= 2 * base.prefill - 1 and decisions[0.75].prefill < base.prefill
    assert decisions[2.0].decode > base.decode


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), float("inf")])
def test_a_headroom_that_is_not_a_positive_number_is_a_policy_error(cluster, bad):
    trace = tick_trace(np.full(60, 2.0))
    with pytest.raises(PolicyError, match="headroom"):
        StaticPolicy.for_peak(trace, cluster, headroom=bad)
    with pytest.raises(PolicyError, match="headroom"):
        RayServePolicy(cluster, interval_s=1.0, headroom=bad)
    with pytest.raises(PolicyError, match="headroom"):
        DynamoPolicy(cluster, headroom=bad)
    for name in ("static", "ray-serve", "dynamo"):
        with pytest.raises(PolicyError, match="headroom"):
            make_policy(name, trace, cluster, headroom=bad)


def scored(summary: dict) -> dict:
    """A run's summary without its wall-clock timings (the only part that may differ between runs)."""
    return {k: v for k, v in summary.items() if k not in ("sim_wall_s", "decision_p99_ms", "step_p99_ms")}


def test_dynamo_runs_sharing_predictions_give_the_summary_of_a_run_without(cluster):
    # Six hours at 10 s ticks (120 planner intervals), a daily-ish swing plus noise, so the Kalman
    # forecast (refitted every 10 rows here) moves and the counts follow it.
    rng = np.random.default_rng(4)
    t = np.arange(2160)
    rps = 8 + 6 * np.sin(t / 300) + rng.gamma(2.0, 1.0, t.size)
    trace = tick_trace(rps, step_s=10.0)
    kw = dict(min_fit_rows=8, refit_every_rows=10)
    plain = scored(simulate(trace, DynamoPolicy(cluster, **kw), cluster).summary())
    shared: dict[int, np.ndarray] = {}
    first = DynamoPolicy(cluster, predictions=shared, **kw)
    filled = scored(simulate(trace, first, cluster).summary())
    assert sorted(shared) == list(range(1, 120))
    assert first.forecaster is not None
    # The forecaster, not the last row, made them: the cache holds something worth sharing.
    rows = np.asarray(first.rows)
    assert max(abs(shared[n][1] - rows[n - 1, 1]) / rows[n - 1, 1] for n in range(8, 120)) > 0.01
    second = DynamoPolicy(cluster, predictions=shared, **kw)
    read = scored(simulate(trace, second, cluster).summary())
    assert second.forecaster is None  # every prediction came from the cache
    # Filled in part (the schedule's fit rows, not the rows at hand, are what a later fit sees).
    partial = {n: v for n, v in shared.items() if n < 45}
    resumed = scored(simulate(trace, DynamoPolicy(cluster, predictions=partial, **kw), cluster).summary())
    for other in (filled, read, resumed):
        assert other == plain
    assert sorted(partial) == sorted(shared)
    for n in shared:  # the resumed run refitted on rows 1..38 at row 45, as the full run had at row 38
        np.testing.assert_array_equal(partial[n], shared[n])
    # At another headroom the shared predictions give the run an uncached one at that headroom gives.
    wider = scored(simulate(trace, DynamoPolicy(cluster, headroom=1.5, predictions=shared, **kw), cluster).summary())
    assert wider == scored(simulate(trace, DynamoPolicy(cluster, headroom=1.5, **kw), cluster).summary())
    assert wider["gpu_hours"] > plain["gpu_hours"]


def test_nowcast_sizes_the_step_under_way_from_what_it_has_shown(cluster):
    from autoscaler.policies.flowtide import FlowtidePolicy

    calm = np.tile([10.0, 10_000.0, 2_000.0], (60, 1))  # ten 60 s steps at 10 req/s, 10 s ticks
    surge = np.tile([50.0, 50_000.0, 10_000.0], (4, 1))  # the step under way: 40 s at 5x
    history = np.vstack([calm, surge])
    kw = dict(forecaster="last", forecast_step_s=60.0, min_fit_rows=10**6, seed=0)
    policies = {after: FlowtidePolicy(cluster, nowcast_after_s=after, **kw) for after in (None, 30.0, 50.0)}
    decisions = {after: p.step(snap(640.0, history)) for after, p in policies.items()}
    now = policies[30.0]
    nowcast = now._nowcast(snap(640.0, history), now.cached).samples
    np.testing.assert_allclose(nowcast[:, 0], surge.mean(axis=0) * now._factor0)
    np.testing.assert_array_equal(nowcast[:, 1:], now.cached.samples[:, 1:])
    # Without it, or before 50 s of the step are in, the forecast made before the surge decides.
    assert decisions[None].prefill == decisions[50.0].prefill
    assert decisions[30.0].prefill > 2 * decisions[None].prefill  # the surge is 5x the calm steps


def test_burst_shape_bins_spread_each_cell_over_the_steps_tick_profile(cluster):
    from autoscaler.policies.flowtide import FlowtidePolicy

    block = np.tile([10.0, 10_000.0, 2_000.0], (6, 1))
    block[0] *= 4.0  # one tick at 4x, five at 1x: the mean is 1.5x
    history = np.vstack([block] * 10)
    policy = FlowtidePolicy(cluster, forecaster="last", forecast_step_s=60.0, min_fit_rows=10**6,
                            burst_shape_bins=3, n_samples=8)
    policy.step(snap(600.0, history))
    np.testing.assert_allclose(policy.shapes[0][:, 1], [2.5 / 1.5, 1 / 1.5, 1 / 1.5])
    samples = policy.cached.samples
    assert samples.shape == (8 * 3, policy.horizon, 3)
    # Each cell's bins average back to the step's mean; the peak tick is no longer every cell's size.
    np.testing.assert_allclose(samples[:, 0, 1].reshape(8, 3).mean(axis=1), 15_000.0)
    with pytest.raises(PolicyError, match="burst_shape_bins"):
        FlowtidePolicy(cluster, burst_shape_bins=0)


def test_forecaster_samples_stay_within_the_growth_the_trace_has_shown():
    from autoscaler.policies.flowtide import FlowtidePolicy

    # Rows: 100 -> 150 -> 120 -> 240 (one-step ratios 1.5, 0.8, 2.0; two-step 1.2, 1.6); column 2 idle.
    hist = np.array([[100.0, 100.0, 0.0], [150.0, 150.0, 0.0], [120.0, 120.0, 0.0], [240.0, 240.0, 0.0]])
    samples = np.array([[[2_000.0, 300.0, 7.0], [100.0, 300.0, 7.0]],   # far above; below, within
                        [[10.0, 480.0, 7.0], [500.0, 1_000.0, 7.0]]])   # far below, at the top; above
    out = FlowtidePolicy._within_seen_growth(samples, hist)
    np.testing.assert_allclose(out[:, 0, :2], [[480.0, 300.0], [192.0, 480.0]])  # 240 x [0.8, 2.0]
    np.testing.assert_allclose(out[:, 1, :2], [[288.0, 300.0], [384.0, 384.0]])  # 240 x [1.2, 1.6]
    np.testing.assert_array_equal(out[..., 2], samples[..., 2])  # a column at 0 has no ratio to scale: untouched
    np.testing.assert_array_equal(FlowtidePolicy._within_seen_growth(samples, hist[:1]), samples)  # no ratio yet


from autoscaler.scenario import default_cluster  # noqa: E402
from autoscaler.simulator import SimulationError  # noqa: E402


@pytest.mark.parametrize("kw", [{"headroom": 0.5}, {"headroom": math.nan}, {"cap_fraction": 0.0},
                                {"cap_fraction": -0.5}, {"power_cap_w": -1.0}])
def test_default_cluster_refuses_a_size_or_cap_it_cannot_build_by_name(cluster, kw):
    # headroom 0.5 failed on initial_replicas, nan on math.ceil; a cap fraction of 0 meant no cap.
    trace = tick_trace(np.full(60, 20.0))
    assert StaticPolicy.for_peak(trace, cluster).prefill >= 2  # so half the peak is fewer replicas
    with pytest.raises(SimulationError, match=next(iter(kw))):
        default_cluster(trace, cluster.capacity, cluster.power, **kw)

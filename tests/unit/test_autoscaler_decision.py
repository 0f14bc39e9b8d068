"""The Bayesian decision: hand-built snapshots, a fake clock, and forecasts we choose."""

import math
from dataclasses import replace

import numpy as np
import pytest

from autoscaler.capacity import load_capacity
from autoscaler.decision import DecisionError, DecisionParams, DecisionState, PoolView, Snapshot, decide, pool_demand
from autoscaler.forecast import Forecast
from autoscaler.indicators import DEMAND_INDICATORS
from autoscaler.power import PowerModel

from tests.conftest import SHARED_DATA, needs_data

PERF = SHARED_DATA / "splitwise-perf" / "perf_model.csv"
pytestmark = needs_data(PERF)


@pytest.fixture(scope="module")
def params():
    return DecisionParams(capacity=load_capacity(PERF), power=PowerModel.for_hardware("h100-80gb"),
                          max_replicas=(40, 40), cold_start_s=60, interval_s=60, scale_down_delay_s=300)


def forecast(rps, step_s=60.0, prompt=1000.0, output=200.0):
    """Samples [S, H] of request rate -> the three demand columns with fixed mean lengths."""
    rps = np.asarray(rps, dtype=float)
    return Forecast(np.stack([rps, rps * prompt, rps * output], axis=-1), DEMAND_INDICATORS, step_s)


def attainment_of(n, fc, params, steps=2):
    """Expected attainment of ``n`` prefill replicas by the spec, written out: requests served within
    the SLO over requests, over the steps a replica asked for now serves in (cold start + interval)."""
    window = fc.samples[:, :steps]
    need_p, _ = pool_demand(window, params.capacity, params, 1000, 2000, 200)
    rps = window[..., 0]
    return float((rps * np.minimum(1.0, n / need_p)).sum() / rps.sum())


def spread(rps, shape=(400, 2), seed=0):
    """A forecast around ``rps`` wide enough that a count's expected attainment moves with the count."""
    return forecast(rps * np.random.default_rng(seed).lognormal(0, 0.4, shape))


def draw_w(params, n_p, n_d, rps):
    """Serving watts at full clocks of (n_p, n_d) replicas under a steady ``rps`` (1,000-token prompts,
    200 output tokens), each pool busy as far as its need keeps it: the decision's power model, written out."""
    need_p, need_d = pool_demand(forecast(np.full((1, 1), rps)).samples, params.capacity, params, 1000, 2000, 200)
    busy_p = min(1.0, float(need_p[0, 0]) / n_p)
    busy_d = min(1.0, float(need_d[0, 0]) * params.capacity.max_batch / n_d)
    tp = params.capacity.gpus_per_replica
    return float(params.power.serving_w(n_p * tp, busy_p, n_d * tp, busy_d))


def snapshot(now, fc, prefill=1, decode=1):
    return Snapshot(now_s=now, step_s=10.0, history=np.zeros((0, 3)), prefill=PoolView(prefill, 0, prefill),
                    decode=PoolView(decode, 0, decode), ongoing_prefill=0, ongoing_decode=0, mean_prompt_tokens=1000,
                    mean_output_tokens=200, tail_prompt_tokens=2000, forecast=fc)


def test_wider_forecast_with_the_same_mean_gets_more_replicas(params):
    rng = np.random.default_rng(0)
    narrow = forecast(np.full((200, 3), 60.0))
    wide = forecast(np.clip(60.0 * rng.lognormal(0, 0.5, (200, 3)) / np.exp(0.125), 0, None))
    d_narrow, _ = decide(snapshot(0, narrow), DecisionState(), params)
    d_wide, _ = decide(snapshot(0, wide), DecisionState(), params)
    assert d_wide.prefill > d_narrow.prefill and d_wide.decode > d_narrow.decode


def test_replicas_cover_the_demand_they_are_sized_for(params):
    d, _ = decide(snapshot(0, forecast(np.full((8, 3), 60.0))), DecisionState(), params)
    need_p, need_d = pool_demand(forecast(np.full((1, 1), 60.0)).samples, params.capacity, params, 1000, 2000, 200)
    assert d.prefill == int(np.ceil(need_p.max())) and d.decode == int(np.ceil(need_d.max()))
    assert d.reasons["prefill"].binding == "slo" and d.reasons["prefill"].expected_attainment >= 0.995
    assert d.reasons["prefill"].quantile_used == 1.0


def test_a_spike_after_the_cold_start_is_provisioned_now(params):
    # Step 0 is quiet, step 1 (when a replica started now is ready) is busy: scale up now.
    fc = forecast(np.tile([5.0, 80.0], (16, 1)))
    d, _ = decide(snapshot(0, fc), DecisionState(), params)
    quiet, _ = decide(snapshot(0, forecast(np.full((16, 2), 5.0))), DecisionState(), params)
    assert d.prefill > quiet.prefill


def test_scale_down_waits_out_the_hysteresis_and_does_not_flap(params):
    high = decide(snapshot(0, forecast(np.full((8, 3), 80.0))), DecisionState(), params)[0]
    state = DecisionState()
    low_fc = forecast(np.full((8, 3), 10.0))
    targets = []
    for t in range(0, 600, 60):
        d, state = decide(snapshot(t, low_fc, high.prefill, high.decode), state, params)
        targets.append(d.prefill)
        if d.prefill < high.prefill:
            break
    assert targets[:5] == [high.prefill] * 5  # 0..240 s: held, binding says so
    assert targets[-1] < high.prefill and len(targets) == 6  # released at 300 s, in one step
    held, _ = decide(snapshot(60, low_fc, high.prefill, high.decode), DecisionState((0.0, 0.0), (0, 0)), params)
    assert held.reasons["prefill"].binding == "hysteresis"
    # It says what it would go to once the wait is over: the count released at 300 s.
    assert held.reasons["prefill"].wanted == targets[-1] < held.prefill
    assert f"prefill={held.prefill} (hysteresis, wants {targets[-1]}," in held.explain()


def test_a_bump_during_the_wait_keeps_the_larger_count_and_says_the_hysteresis_set_it(params):
    state = DecisionState()
    low = spread(10.0)
    d, state = decide(snapshot(0, low, 20, 20), state, params)
    d, state = decide(snapshot(120, spread(30.0), 20, 20), state, params)
    d, state = decide(snapshot(300, low, 20, 20), state, params)
    mid, _ = decide(snapshot(0, spread(30.0)), DecisionState(), params)
    wish, _ = decide(snapshot(0, low), DecisionState(), params)
    assert d.prefill == mid.prefill > wish.prefill
    # Released to the wait's peak, not to this wish: the label and figures are the peak's.
    r = d.reasons["prefill"]
    assert (r.binding, r.wanted) == ("hysteresis", wish.prefill)
    assert r.expected_attainment == pytest.approx(attainment_of(d.prefill, low, params))
    assert r.expected_attainment > wish.reasons["prefill"].expected_attainment


def test_a_held_target_reports_its_own_quantile_and_attainment_not_the_wish(params):
    low = spread(10.0)
    wish, _ = decide(snapshot(0, low), DecisionState(), params)
    held_at = wish.prefill + 2
    held, _ = decide(snapshot(60, low, held_at, held_at), DecisionState((0.0, 0.0), (0, 0)), params)
    r = held.reasons["prefill"]
    assert held.prefill == held_at and (r.binding, r.wanted) == ("hysteresis", wish.prefill)
    assert r.expected_attainment == pytest.approx(attainment_of(held_at, low, params))
    assert r.expected_attainment > wish.reasons["prefill"].expected_attainment
    assert r.quantile_used > wish.reasons["prefill"].quantile_used


def test_power_cap_caps_clocks_first_then_refuses_serving(params):
    fc = forecast(np.full((8, 3), 100.0))
    free, _ = decide(snapshot(0, fc), DecisionState(), params)
    tp = params.capacity.gpus_per_replica
    full_w = (free.prefill * 700 + free.decode * 380) * tp
    # A cap under full-clock draw but above capped-clock draw: clocks capped, more prefill replicas.
    capped_w = float(params.power.serving_w((free.prefill + 1) * tp * 1.3, 1.0, free.decode * tp, 1.0, True))
    d, _ = decide(snapshot(0, fc), DecisionState(), replace(params, power_cap_w=min(full_w * 0.97, capped_w * 1.05)))
    assert d.freq_cap_expected and d.prefill >= free.prefill and d.p_power_ok >= 0.99
    # A cap far below: serving is refused down to what fits, and the reason names the cap.
    tight = replace(params, power_cap_w=full_w * 0.3)
    d, _ = decide(snapshot(0, fc), DecisionState(), tight)
    assert d.reasons["prefill"].binding == "power_cap" and d.p_power_ok >= 0.99
    watts = params.power.serving_w(d.prefill * tp, 1.0, d.decode * tp, 1.0, freq_capped=True)
    assert watts <= tight.power_cap_w


def test_bounds_hold_and_the_reason_says_which(params):
    low = replace(params, min_replicas=(3, 2), max_replicas=(5, 5))
    d, _ = decide(snapshot(0, forecast(np.zeros((4, 3)))), DecisionState(), low)
    assert (d.prefill, d.decode) == (3, 2) and d.reasons["prefill"].binding == "min_replicas"
    d, _ = decide(snapshot(0, forecast(np.full((4, 3), 500.0))), DecisionState(), low)
    assert d.prefill == 5 and d.reasons["prefill"].binding == "max_replicas"
    assert "prefill=5 (max_replicas" in d.explain()


def test_min_replicas_binds_only_when_demand_alone_would_choose_fewer(params):
    fc = forecast(np.full((4, 3), 30.0))
    free, _ = decide(snapshot(0, fc), DecisionState(), params)
    assert free.prefill >= 2
    # A minimum equal to what demand needs does not set the count: the SLO does.
    at, _ = decide(snapshot(0, fc), DecisionState(), replace(params, min_replicas=(free.prefill, 1)))
    assert at.prefill == free.prefill and at.reasons["prefill"].binding == "slo"
    above, _ = decide(snapshot(0, fc), DecisionState(), replace(params, min_replicas=(free.prefill + 1, 1)))
    assert above.reasons["prefill"].binding == "min_replicas"


def test_a_higher_replica_ceiling_than_demand_reaches_changes_no_decision(params):
    # The decision scores counts only up to the first that serves every cell: past it, cost only grows.
    fc = spread(30.0, shape=(64, 3), seed=3)
    state = DecisionState((120.0, None), (4, 0))
    for n in (1, 5, 9):
        narrow = decide(snapshot(200, fc, n, n), state, params)
        wide = decide(snapshot(200, fc, n, n), state, replace(params, max_replicas=(400, 400)))
        assert narrow == wide and narrow[0].reasons["prefill"].binding != "max_replicas"


def test_requests_without_prompt_tokens_still_need_a_replica(params):
    free = replace(params, min_replicas=(0, 0))
    d, _ = decide(snapshot(0, forecast(np.full((4, 3), 5.0), prompt=0.0), 0, 0), DecisionState(), free)
    assert d.prefill == 1 and d.reasons["prefill"].binding == "slo"


def test_decide_is_pure_and_its_state_round_trips(params):
    fc = forecast(np.random.default_rng(1).uniform(10, 50, (32, 3)))
    state = DecisionState((120.0, None), (4, 0))
    a = decide(snapshot(200, fc, 9, 9), state, params)
    b = decide(snapshot(200, fc, 9, 9), DecisionState.from_dict(state.to_dict()), params)
    assert a == b


def test_decide_refuses_a_snapshot_without_a_forecast(params):
    with pytest.raises(DecisionError, match="needs snapshot.forecast"):
        decide(snapshot(0, None), DecisionState(), params)
    with pytest.raises(DecisionError, match="min_replicas <= max_replicas"):
        replace(params, min_replicas=(5, 1), max_replicas=(2, 2))


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_forecast_with_non_finite_samples_is_refused_not_sized_to_the_minimum(params, bad):
    # A NaN made the request weight NaN: every count then expected attainment 1, and the pools went to 1.
    rps = np.full((8, 3), 80.0)
    rps[0, 0] = bad
    with pytest.raises(DecisionError, match="finite"):
        decide(snapshot(0, forecast(rps)), DecisionState(), params)


def test_clocks_stay_full_when_the_count_that_fits_capped_would_serve_less(params):
    # Demand beyond what the cap allows either way: 12 prefill replicas fit at full clocks, 15 (the
    # maximum) at capped clocks, which serve like 15 / 1.3 = 11.5. Capping would cost more for less.
    tp = params.capacity.gpus_per_replica
    fc = forecast(np.full((16, 2), 60.0), prompt=20_000.0, output=20.0)
    need_p, need_d = pool_demand(fc.samples, params.capacity, params, 1000, 2000, 200)
    assert need_p.min() > 15 and need_d.max() <= 1  # prefill wants more than any choice gives
    cap_w = float(params.power.serving_w(12.5 * tp, 1.0, 1 * tp, 1.0, freq_capped=False))
    assert float(params.power.serving_w(15 * tp, 1.0, 1 * tp, 1.0, freq_capped=True)) <= cap_w
    bounded = replace(params, max_replicas=(15, 2), power_cap_w=cap_w)
    d, _ = decide(snapshot(0, fc), DecisionState(), bounded)
    assert (d.prefill, d.decode) == (12, 1) and not d.freq_cap_expected
    assert d.reasons["prefill"].binding == "power_cap" and d.p_power_ok >= 0.99
    capped_need = need_p * params.power.prefill_slowdown_capped
    assert d.reasons["prefill"].expected_attainment > float(np.minimum(1.0, 15 / capped_need).mean())
    # With room for the capped count to serve more (a cap that full clocks only meet at 9), POLCA's order holds.
    low_w = float(params.power.serving_w(9.5 * tp, 1.0, 1 * tp, 1.0, freq_capped=False))
    assert float(params.power.serving_w(15 * tp, 1.0, 1 * tp, 1.0, freq_capped=True)) > low_w
    d, _ = decide(snapshot(0, fc), DecisionState(), replace(bounded, power_cap_w=low_w))
    assert d.freq_cap_expected and d.prefill / params.power.prefill_slowdown_capped > 9


def test_serving_refused_under_the_cap_comes_from_the_pool_that_loses_least(params):
    # Prefill wants far more than fits, decode needs 1.5 replicas. Dropping the second decode replica
    # would let one more prefill replica fit but lose a third of decode's requests (a request needs
    # both SLOs): the cap is met by refusing prefill replicas only.
    tp = params.capacity.gpus_per_replica
    fc = forecast(np.full((16, 2), 60.0), prompt=20_000.0, output=30.0)
    need_p, need_d = pool_demand(fc.samples, params.capacity, params, 1000, 2000, 200)
    assert need_p.min() > 15 and 1 < need_d.max() < 2
    cap_w = float(params.power.serving_w(12.5 * tp, 1.0, 2 * tp, 1.0, freq_capped=False))
    d, _ = decide(snapshot(0, fc), DecisionState(), replace(params, max_replicas=(15, 2), power_cap_w=cap_w))
    assert (d.prefill, d.decode) == (12, 2) and not d.freq_cap_expected and d.p_power_ok >= 0.99
    assert d.reasons["decode"].expected_attainment > 0.99
    # The cap cut prefill only: decode keeps the reason its demand gave it.
    assert d.reasons["prefill"].binding == "power_cap" and d.reasons["decode"].binding == "slo"


def test_steps_a_replica_asked_for_now_cannot_serve_do_not_size_it(params):
    # Ten-minute steps: 20 req/s in the one under way, 80 in the next.
    quiet_then_busy = forecast(np.tile([20.0, 80.0], (64, 1)), step_s=600.0)
    early = replace(quiet_then_busy, start_s=1_000.0)  # 60 s into the step: cold start + interval end inside it
    d_early, _ = decide(snapshot(1_060.0, early), DecisionState(), params)
    d_late, _ = decide(snapshot(1_500.0, early), DecisionState(), params)  # 500 s in: a replica asked now serves in both
    d_unknown, _ = decide(snapshot(1_060.0, quiet_then_busy), DecisionState(), params)  # no start: it begins now
    d_quiet, _ = decide(snapshot(1_060.0, forecast(np.full((64, 1), 20.0), step_s=600.0)), DecisionState(), params)
    assert (d_early.prefill, d_early.decode) == (d_quiet.prefill, d_quiet.decode)
    assert d_late.prefill > d_early.prefill and d_late.decode > d_early.decode
    assert (d_unknown.prefill, d_unknown.decode) == (d_quiet.prefill, d_quiet.decode)
    # One-minute steps from now: cold start + interval reach into the busy second one.
    d_short, _ = decide(snapshot(1_060.0, replace(quiet_then_busy, step_s=60.0)), DecisionState(), params)
    assert (d_short.prefill, d_short.decode) == (d_late.prefill, d_late.decode)


def test_a_prefill_backlog_drains_by_the_time_new_replicas_have_served_an_interval(params):
    # A backlog worth 30 replicas for cold start + interval (120 s), at 20 req/s: the count asked for
    # carries both, whether the forecast's steps last a minute or ten (it once spread the backlog over
    # the forecast's steps, so ten-minute steps asked for a tenth of the extra replicas).
    rate = 20.0
    need_p, _ = pool_demand(forecast(np.full((1, 1), rate)).samples, params.capacity, params, 1000, 2000, 200)
    per_replica = rate * 1000 / float(need_p[0, 0])  # input tokens/s one replica carries within the SLO
    backlog = 30 * per_replica * (params.cold_start_s + params.interval_s)
    for step_s in (60.0, 600.0):
        fc = forecast(np.full((16, 2), rate), step_s=step_s)
        base, _ = decide(snapshot(0, fc), DecisionState(), params)
        d, _ = decide(replace(snapshot(0, fc), prefill_backlog_tokens=backlog), DecisionState(), params)
        assert d.prefill == int(np.ceil(float(need_p[0, 0]) + 30 - 1e-9)), step_s
        assert d.prefill >= base.prefill + 30 and d.decode == base.decode


def test_queued_work_is_sized_when_no_new_traffic_is_forecast(params):
    # A forecast of no arrivals once weighed nothing: every count looked sure to attain the SLO, and
    # pools allowed to reach 0 were released with 10 million prompt tokens and 1,000 sequences waiting.
    empty = forecast(np.zeros((16, 2)))
    free = replace(params, min_replicas=(0, 0))
    idle, _ = decide(snapshot(0, empty, prefill=0, decode=0), DecisionState(), free)
    assert (idle.prefill, idle.decode) == (0, 0)
    queued = replace(snapshot(0, empty, prefill=0, decode=0), prefill_backlog_tokens=1e7, decode_queued_sequences=1_000)
    d, _ = decide(queued, DecisionState(), free)
    _, need_d = pool_demand(queued.forecast.samples, params.capacity, params, 1000, 2000, 200, decode_queued=1_000)
    with_backlog = empty.samples.copy()
    with_backlog[..., 1] += 1e7 / (params.cold_start_s + params.interval_s)
    need_p, _ = pool_demand(with_backlog, params.capacity, params, 1000, 2000, 200)
    assert d.prefill == int(np.ceil(float(need_p.max()))) and d.decode == int(np.ceil(float(need_d.max())))
    for pool in ("prefill", "decode"):
        assert d.reasons[pool].binding == "slo" and d.reasons[pool].quantile_used == 1.0
        assert d.reasons[pool].expected_attainment >= params.attainment_target


def test_steps_that_ended_before_now_do_not_size_the_pools(params):
    # A forecast made at t = 0 whose first one-minute step (a burst) is over by t = 120 s.
    rps = np.tile([400.0, 20.0, 20.0, 20.0, 20.0], (64, 1))
    made = replace(forecast(rps), start_s=0.0)
    late, _ = decide(snapshot(120.0, made), DecisionState(), params)
    fresh, _ = decide(snapshot(120.0, forecast(np.full((64, 3), 20.0))), DecisionState(), params)
    assert (late.prefill, late.decode) == (fresh.prefill, fresh.decode)
    with pytest.raises(DecisionError, match="forecast ended before now"):
        decide(snapshot(300.0, made), DecisionState(), params)


@pytest.mark.parametrize("field, value", [
    ("prefill_backlog_tokens", math.inf), ("prefill_backlog_tokens", math.nan), ("prefill_backlog_tokens", -1.0),
    ("decode_queued_sequences", math.nan), ("mean_prompt_tokens", math.nan), ("mean_output_tokens", -5.0),
    ("tail_prompt_tokens", math.nan)])
def test_a_snapshot_figure_that_is_not_a_finite_count_is_refused_by_name(params, field, value):
    fc = forecast(np.full((8, 2), 20.0))
    with pytest.raises(DecisionError, match=f"snapshot.{field} must be a finite number >= 0"):
        decide(replace(snapshot(0, fc), **{field: value}), DecisionState(), params)


@pytest.mark.parametrize("shape", [(8, 3), (8, 2, 2), (8, 2, 4), (0, 2, 3), (8, 0, 3)])
def test_forecast_samples_of_the_wrong_shape_are_refused(params, shape):
    fc = Forecast(np.ones(shape), DEMAND_INDICATORS, 60.0)
    with pytest.raises(DecisionError, match=r"forecast samples must be \[samples >= 1, steps >= 1, 3\]"):
        decide(snapshot(0, fc), DecisionState(), params)


def test_the_reason_says_when_the_miss_penalty_not_the_floor_set_the_count(params):
    # Ten-minute steps at 80 req/s: 48,000 requests a step, so a replica that saves a few dozen
    # expected misses pays for itself (0.02 GPU-h each) long after the 0.995 floor is met.
    rng = np.random.default_rng(1)
    fc = forecast(80.0 * rng.lognormal(0, 0.2, (64, 1)), step_s=600.0)
    busy, _ = decide(snapshot(0, fc), DecisionState(), params)
    floor, _ = decide(snapshot(0, fc), DecisionState(), replace(params, miss_penalty_gpu_h=0.0))
    assert busy.reasons["prefill"].binding == "miss_cost" and floor.reasons["prefill"].binding == "slo"
    assert busy.prefill > floor.prefill
    assert busy.reasons["prefill"].expected_attainment > floor.reasons["prefill"].expected_attainment >= 0.995
    assert "prefill=%d (miss_cost," % busy.prefill in busy.explain()
    held, _ = decide(snapshot(0, fc, busy.prefill, busy.decode), DecisionState(), params)
    assert held.prefill == busy.prefill and held.reasons["prefill"].binding == "miss_cost_hold"


@pytest.mark.parametrize("field", ["miss_penalty_gpu_h", "energy_gpu_h_per_kwh"])
def test_a_negative_cost_is_refused_by_name(params, field):
    with pytest.raises(DecisionError, match=field):
        replace(params, **{field: -0.01})


@pytest.mark.parametrize("field, value", [
    ("min_replicas", (1,)), ("max_replicas", (40, 40, 40)), ("power_cap_w", -5.0), ("latency_margin", 1.5),
    ("scale_down_delay_s", -100.0), ("interval_s", math.nan), ("interval_s", 0.0), ("cold_start_s", -1.0),
    ("ttft_slo_s", 0.0), ("tpot_slo_s", -0.1),
])
def test_bad_decision_params_are_refused_by_name(params, field, value):
    # Each was accepted: a short tuple was truncated by zip, interval_s = cold_start_s = 0 divided by
    # zero on a backlog, ttft_slo_s = 0 was blamed on the profile at the first decision.
    with pytest.raises(DecisionError, match=field):
        replace(params, **{field: value})


def test_a_power_cap_below_the_minimum_replicas_idle_draw_is_refused(params):
    tp = params.capacity.gpus_per_replica
    idle_w = float(params.power.serving_w(tp, 0.0, tp, 0.0))
    with pytest.raises(DecisionError, match=r"power_cap_w .* below the idle draw of the minimum replicas \(1, 1\)"):
        replace(params, power_cap_w=idle_w - 1.0)
    assert replace(params, power_cap_w=idle_w).power_cap_w == idle_w
    assert replace(params, power_cap_w=idle_w - 1.0, min_replicas=(0, 0)).power_cap_w == idle_w - 1.0


def test_the_power_constraint_allows_eps_of_samples_over_the_cap_and_no_more(params):
    # eps = 0.1. Busy samples (40 req/s) draw more than the cap at the counts demand wants, quiet ones
    # (5 req/s) less. With 5% busy samples P(power <= cap) = 0.95 >= 0.9: the counts stand. With 20%,
    # P = 0.8: serving is cut until the draw fits in 90% of samples, though the mean draw would fit.
    loose = replace(params, power_eps=0.1)
    for busy_share, fits in ((0.05, True), (0.20, False)):
        rps = np.full((100, 2), 5.0)
        rps[: int(busy_share * 100)] = 40.0
        fc = forecast(rps)
        free, _ = decide(snapshot(0, fc), DecisionState(), loose)
        quiet_w, busy_w = draw_w(params, free.prefill, free.decode, 5.0), draw_w(params, free.prefill, free.decode, 40.0)
        cap_w = (quiet_w + busy_w) / 2
        assert busy_share * busy_w + (1 - busy_share) * quiet_w < cap_w  # the mean draw fits either way
        d, _ = decide(snapshot(0, fc), DecisionState(), replace(loose, power_cap_w=cap_w))
        if fits:
            assert (d.prefill, d.decode) == (free.prefill, free.decode)
            assert d.p_power_ok == pytest.approx(0.95) and not d.freq_cap_expected
        else:
            assert d.prefill + d.decode < free.prefill + free.decode and d.p_power_ok >= 0.9


def test_sequences_waiting_for_a_decode_slot_add_their_batches_of_replicas(params):
    fc = forecast(np.full((8, 2), 20.0))
    base, _ = decide(snapshot(0, fc), DecisionState(), params)
    batch = params.capacity.max_batch_within(params.tpot_slo_s, 1100.0, params.latency_margin)
    d, _ = decide(replace(snapshot(0, fc), decode_queued_sequences=10 * batch), DecisionState(), params)
    assert d.decode == base.decode + 10 and d.prefill == base.prefill


def test_expected_attainment_weighs_each_sample_by_its_requests(params):
    # Half the samples carry 100 req/s of short prompts, half 1 req/s of prompts that need three times
    # the prefill replicas. Weighted by requests, the long-prompt samples are 1% of the requests: the
    # floor is met with about half their need, where an unweighted mean would want all of it.
    short, long = [100.0, 100.0 * 300, 100.0 * 50], [1.0, 3 * 100.0 * 300, 1.0 * 50]
    fc = Forecast(np.array([[short, short], [long, long]] * 32), DEMAND_INDICATORS, 60.0)
    floor = replace(params, miss_penalty_gpu_h=0.0)
    d, _ = decide(snapshot(0, fc), DecisionState(), floor)
    need_p, _ = pool_demand(fc.samples, params.capacity, params, 1000, 2000, 200)
    weighted = next(n for n in range(1, 41) if attainment_of(n, fc, params) >= floor.attainment_target)
    unweighted = next(n for n in range(1, 41) if np.minimum(1.0, n / need_p).mean() >= floor.attainment_target)
    assert d.prefill == weighted < unweighted
    assert d.reasons["prefill"].expected_attainment == pytest.approx(attainment_of(d.prefill, fc, params))


def test_a_hold_above_max_replicas_is_cut_to_the_bound_at_once(params):
    # A cluster shrunk under running replicas (60 each, the bound now 40): hysteresis held 60 for 300 s.
    low = spread(10.0)
    wish, _ = decide(snapshot(0, low), DecisionState(), params)
    d, state = decide(snapshot(0, low, 60, 60), DecisionState(), params)
    assert (d.prefill, d.decode) == params.max_replicas
    r = d.reasons["prefill"]
    assert (r.binding, r.wanted) == ("max_replicas", wish.prefill)
    assert r.expected_attainment == pytest.approx(attainment_of(40, low, params))
    assert state.down_since_s == (0.0, 0.0)  # the wait for the wish goes on below the bound


def test_held_replicas_the_power_cap_cannot_carry_are_cut_at_once(params):
    # Steady 20 req/s; the targets held from a busier time draw more than a cap the wish fits under.
    # The cap leaves room for the held prefill replicas (idle: 75 W a GPU) beside two decode replicas
    # above the wish (busy: 380 W a GPU); the cut keeps the most replicas it can.
    fc = forecast(np.full((8, 2), 20.0))
    wish, _ = decide(snapshot(0, fc), DecisionState(), params)
    held = (wish.prefill + 6, wish.decode + 6)
    cap_w = draw_w(params, held[0], wish.decode + 2, 20.0) + 1.0
    assert draw_w(params, held[0], wish.decode + 3, 20.0) > cap_w
    d, state = decide(snapshot(0, fc, *held), DecisionState(), replace(params, power_cap_w=cap_w))
    assert (d.prefill, d.decode) == (held[0], wish.decode + 2)
    assert d.p_power_ok == 1.0 and not d.freq_cap_expected  # full clocks: the targets fit the cap
    assert (d.reasons["decode"].binding, d.reasons["decode"].wanted) == ("power_cap", wish.decode)
    assert d.reasons["prefill"].binding == "hysteresis"
    assert state.down_since_s == (0.0, 0.0)  # what the cap leaves above the wish waits out the delay


def test_p_power_ok_is_that_of_the_targets_held_not_of_the_wish(params):
    # eps 0.1: 5% busy samples put the held targets over the cap, none put the wish over it.
    rps = np.full((100, 2), 5.0)
    rps[:5] = 40.0
    fc = forecast(rps)
    loose = replace(params, power_eps=0.1)
    wish, _ = decide(snapshot(0, fc), DecisionState(), loose)
    held = (wish.prefill + 2, wish.decode)
    cap_w = (draw_w(params, *held, 40.0) + draw_w(params, wish.prefill, wish.decode, 40.0)) / 2
    assert draw_w(params, *held, 5.0) < cap_w
    d, _ = decide(snapshot(0, fc, *held), DecisionState(), replace(loose, power_cap_w=cap_w))
    assert (d.prefill, d.decode) == held and d.p_power_ok == pytest.approx(0.95)


def test_a_release_never_raises_a_target_the_cap_cut_below_the_waits_peak(params):
    low_fc, busy_fc = forecast(np.full((8, 2), 20.0)), forecast(np.full((8, 2), 40.0))
    low, _ = decide(snapshot(0, low_fc), DecisionState(), params)
    busy, _ = decide(snapshot(0, busy_fc), DecisionState(), params)
    assert busy.decode >= low.decode + 2
    _, state = decide(snapshot(0, busy_fc, 20, 20), DecisionState(), params)  # the wait's peak: busy's counts
    tight = replace(params, power_cap_w=draw_w(params, 20, low.decode + 1, 20.0) + 1.0)
    d, state = decide(snapshot(60, low_fc, 20, 20), state, tight)  # the cap cuts decode below that peak
    assert (d.prefill, d.decode) == (20, low.decode + 1)
    # Released with the cap lifted: decode goes no higher than the cut left it, not back up to the peak.
    d, _ = decide(snapshot(300, low_fc, d.prefill, d.decode), state, params)
    assert (d.prefill, d.decode) == (busy.prefill, low.decode + 1)

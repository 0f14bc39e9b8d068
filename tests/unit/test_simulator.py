"""The two-pool simulator: accounting, cold starts, power order, causality and determinism."""

import time
from dataclasses import dataclass, field, replace

import numpy as np
import pytest

from autoscaler.capacity import load_capacity
from autoscaler.decision import Decision, Snapshot
from autoscaler.forecast import Forecast
from autoscaler.policies import PolicyError, make_policy
from autoscaler.policies.flowtide import FlowtidePolicy
from autoscaler.policies.static import StaticPolicy
from autoscaler.power import PowerModel
from autoscaler.simulator import ClusterParams, SimulationError, _tick_quantile, _wq, simulate
from autoscaler.traces import RequestGroups, TickTrace

from tests.conftest import SHARED_DATA, needs_data

PERF = SHARED_DATA / "splitwise-perf" / "perf_model.csv"
pytestmark = needs_data(PERF)


def constant_trace(rps, ticks=360, step_s=10.0, prompt=1000.0, output=100.0, name="const"):
    n = np.asarray(rps, dtype=float) * step_s * np.ones(ticks)
    groups = RequestGroups(np.arange(ticks), np.full(ticks, prompt), np.full(ticks, output), n.copy())
    return TickTrace(name, step_s, n, n * prompt, n * output, groups)


@pytest.fixture(scope="module")
def cluster():
    return ClusterParams(capacity=load_capacity(PERF), power=PowerModel.for_hardware("h100-80gb"),
                         max_replicas=(20, 20), cold_start_s=60.0, initial_replicas=(1, 1))


def warm(cluster, prefill, decode, **kw):
    """The cluster already running (prefill, decode) replicas, so no cold start at t=0."""
    return ClusterParams(**{**cluster.__dict__, "initial_replicas": (prefill, decode), **kw})


@dataclass
class Scripted:
    """A policy that asks for fixed targets from a given time and records what it was shown."""

    targets: tuple[int, int]
    from_s: float = 0.0
    name: str = "scripted"
    interval_s: float = 10.0
    offset_s: float = 0.0
    seen: list = field(default_factory=list)
    snapshots: list = field(default_factory=list)

    def step(self, snapshot: Snapshot) -> Decision:
        self.seen.append((snapshot.now_s, snapshot.history.shape[0], snapshot.history.copy(),
                          snapshot.latency.copy()))
        self.snapshots.append(snapshot)
        if snapshot.now_s >= self.from_s:
            return Decision(*self.targets)
        return Decision(snapshot.prefill.target, snapshot.decode.target)


def test_enough_replicas_meet_the_slo_and_too_few_miss_it(cluster):
    trace = constant_trace(20.0)
    ok = simulate(trace, StaticPolicy(6, 6), warm(cluster, 6, 6)).summary()
    short = simulate(trace, StaticPolicy(1, 6), warm(cluster, 1, 6)).summary()
    assert ok["slo_attainment"] > 0.999 and ok["ttft_p99_s"] < 2.0
    assert short["slo_attainment"] < 0.2 and short["ttft_p99_s"] > 2.0


def test_gpu_hours_count_every_held_gpu_for_the_whole_run(cluster):
    s = simulate(constant_trace(5.0, ticks=360), StaticPolicy(3, 2), cluster).summary()
    assert s["gpu_hours"] == pytest.approx(5 * 4 * 1.0)  # cold-starting replicas are held too
    assert s["scaling_actions"] == 2  # from the initial (1, 1) to (3, 2), once per pool
    assert simulate(constant_trace(5.0, ticks=360), StaticPolicy(3, 2), warm(cluster, 3, 2)).summary()[
        "scaling_actions"] == 0


def test_new_replicas_serve_only_after_the_cold_start(cluster):
    result = simulate(constant_trace(1.0, ticks=30), Scripted((4, 1), from_s=50.0), cluster)
    ready = result.prefill_replicas
    assert ready[:11].max() == 1  # asked at 50 s, cold until 110 s
    assert ready[11] == 4
    assert result.prefill_gpus_held[5] == 4 * 4  # held (and paid for) while starting


def test_the_policy_sees_only_finished_ticks(cluster):
    trace = constant_trace(1.0, ticks=20)
    trace.n_requests[5:] += np.arange(15)  # a trend the policy must not see ahead of time
    policy = Scripted((1, 1))
    simulate(trace, policy, cluster)
    for now, rows, history, _ in policy.seen:
        assert rows == int(now // trace.step_s)
        assert np.array_equal(history[:, 0], trace.rates()[:rows, 0])


def test_the_policy_sees_each_finished_ticks_mean_latency_as_the_run_reports_it(cluster):
    # One prefill replica for 20 req/s of 1,000-token prompts: the queue, and TTFT, grow every tick.
    trace = constant_trace(20.0, ticks=30)
    trace.n_requests[7] = trace.prompt_tokens[7] = trace.output_tokens[7] = trace.groups.weight[7] = 0.0
    policy = Scripted((1, 1))
    result = simulate(trace, policy, warm(cluster, 1, 1))
    now, rows, _, latency = policy.seen[-1]
    assert latency.shape == (rows, 2) and rows == 29
    assert np.isnan(latency[7]).all()  # a tick without requests reports nothing
    served = np.arange(rows) != 7
    np.testing.assert_allclose(latency[served, 0], result.ttft_s[:rows][served])
    np.testing.assert_allclose(latency[served, 1], result.tpot_s[:rows][served])
    assert latency[-1, 0] > 5 * latency[0, 0] > 0


def test_replicas_demand_keeps_idle_draw_less_and_leave_the_cap_to_training(cluster):
    tp = cluster.capacity.gpus_per_replica
    training_w = PowerModel.for_hardware("h100-80gb").training_w
    busy_w = (6 * 700 + 6 * 380) * tp  # twelve replicas busy at full clocks
    # No demand: serving draws idle watts (75 a GPU), so training keeps all ten GPUs it wants under a
    # cap that, planned against busy serving, left it 3,000 W (4 GPUs).
    params = warm(cluster, 6, 6, total_gpus=12 * tp + 10, power_cap_w=busy_w + 3000.0)
    idle = simulate(constant_trace(0.0), StaticPolicy(6, 6), params)
    assert idle.summary()["training_gpu_hours"] == 10
    np.testing.assert_allclose(idle.power_w, 12 * tp * 75 + 10 * training_w)
    # 20 req/s keeps prefill a third busy: under 70% of the busy draw, which even capped clocks
    # exceed at full activity (a brake all the hour when planned so), serving runs at full clocks.
    s = simulate(constant_trace(20.0), StaticPolicy(6, 6), warm(params, 6, 6, power_cap_w=0.7 * busy_w)).summary()
    free = simulate(constant_trace(20.0), StaticPolicy(6, 6), warm(cluster, 6, 6)).summary()
    assert (s["power_violations"], s["freq_capped_s"]) == (0, 0) and s["training_gpu_hours"] > 0
    assert s["slo_attainment"] == free["slo_attainment"] > 0.999


def test_a_saturated_tick_sheds_training_then_caps_clocks_then_brakes(cluster):
    trace = constant_trace(80.0)  # 80,000 prompt tokens/s saturate six prefill replicas at any clocks
    tp = cluster.capacity.gpus_per_replica
    training_w = PowerModel.for_hardware("h100-80gb").training_w
    full_w, capped_w = (6 * 700 + 6 * 380) * tp, (6 * 490 + 6 * 380) * tp
    free = simulate(trace, StaticPolicy(6, 6), warm(cluster, 6, 6)).summary()
    # Room for serving and 3,000 W: training is shed to what fits, serving untouched.
    params = warm(cluster, 6, 6, total_gpus=12 * tp + 10, power_cap_w=full_w + 3000.0)
    s = simulate(trace, StaticPolicy(6, 6), params).summary()
    assert (s["power_violations"], s["freq_capped_s"]) == (0, 0)
    assert s["training_gpu_hours"] == int(3000 // training_w) and s["slo_attainment"] == free["slo_attainment"]
    # Serving alone exceeds the cap at full clocks, not at capped ones: no training, clocks capped.
    policy = Scripted((6, 6))
    s = simulate(trace, policy, warm(params, 6, 6, power_cap_w=capped_w + 1.0)).summary()
    assert (s["training_gpu_hours"], s["freq_capped_s"], s["power_violations"]) == (0, 3600.0, 0)
    # The backlog grew at the capped clocks' rate, once a tick (not also at full clocks, tried first).
    capped_rate = 6 * cluster.capacity.prefill_tokens_per_s() / 1.3
    for snap in policy.snapshots:
        assert snap.prefill_backlog_tokens == pytest.approx(snap.now_s * (80_000 - capped_rate))
    # Over the cap even capped: the brake scales serving down to the cap, every tick a violation.
    brake = warm(params, 6, 6, power_cap_w=capped_w * 0.5)
    result = simulate(trace, StaticPolicy(6, 6), brake)
    s = result.summary()
    np.testing.assert_allclose(result.power_w, capped_w * 0.5)
    assert s["training_gpu_hours"] == 0 and s["freq_capped_s"] == 3600.0
    assert s["power_violations"] == 1 and s["power_violation_s"] == 3600.0  # one episode, the whole hour
    # The same hour at 5 s ticks: the same episode and seconds (counting ticks gave 360 and 720).
    fine = simulate(constant_trace(80.0, ticks=720, step_s=5.0), StaticPolicy(6, 6), brake).summary()
    assert (fine["power_violations"], fine["power_violation_s"]) == (1, 3600.0)
    # Episodes are maximal runs of violating ticks, however long.
    mask = np.zeros(360, bool)
    mask[[3, 4, 5, 9, 300]] = True
    s = replace(result, violated=mask).summary()
    assert (s["power_violations"], s["power_violation_s"]) == (3, 50.0)


def test_a_saturated_pool_at_capped_clocks_draws_its_capped_watts_all_the_time(cluster):
    # 60 req/s of 1,000-token prompts saturate six prefill replicas; the cap sits between the pools'
    # draw at capped clocks (prefill 490 W a GPU, 70% of TDP; decode 380 W) and at full clocks.
    tp = cluster.capacity.gpus_per_replica
    capped_w = (6 * 490 + 6 * 380) * tp
    result = simulate(constant_trace(60.0), StaticPolicy(6, 6), warm(cluster, 6, 6, power_cap_w=capped_w + 1.0))
    s = result.summary()
    assert s["freq_capped_s"] == 3600.0 and s["training_gpu_hours"] == 0 and s["slo_attainment"] < 0.5
    np.testing.assert_allclose(result.power_w, capped_w)
    assert s["energy_kwh"] == pytest.approx(capped_w * 3600 / 3.6e6)


def test_a_prefill_pool_without_replicas_serves_nothing_and_counts_no_request_in_service(cluster):
    # From the start (it raised UnboundLocalError), and after scaling to zero at 50 s (a stale M/D/1
    # wait counted requests in service that no replica held).
    for initial, from_s in ((0, 0.0), (2, 50.0)):
        policy = Scripted((0, 1), from_s=from_s)
        params = warm(cluster, initial, 1, min_replicas=(0, 1))
        result = simulate(constant_trace(1.0, ticks=30), policy, params)
        assert not np.isfinite(result.ttft_s[int(from_s // 10):]).any()
        for snap in policy.snapshots:
            if snap.now_s > from_s:
                assert snap.ongoing_prefill == pytest.approx(snap.now_s - from_s)  # 1 req/s, all in the backlog


def test_cluster_params_refuse_a_non_positive_power_cap_and_a_non_finite_cold_start(cluster):
    for bad in (0.0, -100.0, float("nan"), float("inf")):
        with pytest.raises(SimulationError, match=r"power_cap_w must be a finite number of watts > 0 \(or None: no cap\)"):
            warm(cluster, 1, 1, power_cap_w=bad)
    for bad in (-5.0, float("nan"), float("inf")):
        with pytest.raises(SimulationError, match="cold_start_s must be a finite number >= 0"):
            warm(cluster, 1, 1, cold_start_s=bad)


class MeanForecaster:
    """A tiny forecaster satisfying the protocol: a narrow lognormal spread around the last row."""

    name = "mean"

    def fit(self, history, step_s):
        self.step_s = step_s

    def update(self, new_rows):
        pass

    def predict(self, history, horizon, n_samples, rng):
        level = history[-1]
        noise = rng.lognormal(0.0, 0.05, (n_samples, horizon, 1))
        return Forecast(level[None, None, :] * noise, ("arrival_rps", "input_tokens_per_s", "output_tokens_per_s"),
                        self.step_s)


def test_a_seeded_run_is_reproducible(cluster):
    trace = constant_trace(10.0, ticks=720)
    trace.n_requests[300:] *= 2.0
    runs = [simulate(trace, FlowtidePolicy(cluster, forecaster=MeanForecaster(), forecast_step_s=60, min_fit_rows=4,
                                           seed=7), cluster).summary() for _ in range(2)]
    for key in ("slo_attainment", "gpu_hours", "energy_kwh", "scaling_actions", "ttft_p99_s"):
        assert runs[0][key] == runs[1][key]


class SlowFittingForecaster(MeanForecaster):
    """Fitting takes 0.3 s: learning inside a policy's step, which its decision time must not count."""

    def fit(self, history, step_s):
        time.sleep(0.3)
        super().fit(history, step_s)


def test_decision_time_is_the_policys_own_and_step_time_counts_its_learning_too(cluster):
    policy = FlowtidePolicy(cluster, forecaster=SlowFittingForecaster(), forecast_step_s=60, min_fit_rows=4)
    result = simulate(constant_trace(10.0, ticks=180), policy, cluster)
    s = result.summary()
    assert result.decision_latency_s.tolist() == policy.decision_s and len(policy.decision_s) > 10
    assert result.step_latency_s.max() >= 0.3 > result.decision_latency_s.max()
    assert s["decision_p99_ms"] == pytest.approx(np.quantile(policy.decision_s, 0.99) * 1e3)
    assert s["step_p99_ms"] == pytest.approx(np.quantile(result.step_latency_s, 0.99) * 1e3)
    static = simulate(constant_trace(10.0, ticks=60), StaticPolicy(2, 2), cluster).summary()
    assert static["decisions"] >= 1 and static["decision_p99_ms"] == static["step_p99_ms"]  # no learning: one time


def test_flowtide_follows_a_step_in_demand_without_missing_the_slo(cluster):
    trace = constant_trace(10.0, ticks=1080)
    for arr in (trace.n_requests, trace.prompt_tokens, trace.output_tokens, trace.groups.weight):
        arr[540:] *= 2.0
    policy = FlowtidePolicy(cluster, forecaster=MeanForecaster(), forecast_step_s=60, min_fit_rows=4)
    result = simulate(trace, policy, cluster)
    s = result.summary()
    static = simulate(trace, StaticPolicy.for_peak(trace, cluster), cluster).summary()
    assert result.prefill_replicas[-1] > result.prefill_replicas[500]
    assert s["slo_attainment"] > 0.97
    assert s["gpu_hours"] < static["gpu_hours"]


def test_a_policy_with_an_offset_decides_at_its_phase(cluster):
    trace = constant_trace(20.0, ticks=30)
    phased = Scripted((2, 2), interval_s=60.0, offset_s=10.0)
    assert [t for t, _ in simulate(trace, phased, cluster).decisions] == [10.0, 70.0, 130.0, 190.0, 250.0]
    assert [t for t, *_ in phased.seen][:2] == [10.0, 70.0] and phased.seen[0][1] == 1  # one tick of history


def test_decisions_follow_the_policys_schedule_when_the_tick_does_not_divide_its_interval(cluster):
    # 7 s ticks, a decision due every 10 s: each is taken at the first tick at or after its time.
    trace = constant_trace(1.0, ticks=12, step_s=7.0)
    assert [t for t, _ in simulate(trace, Scripted((1, 1), interval_s=10.0), cluster).decisions] == [
        0.0, 14.0, 21.0, 35.0, 42.0, 56.0, 63.0, 70.0]
    with pytest.raises(SimulationError, match="interval_s must be > 0"):
        simulate(trace, Scripted((1, 1), interval_s=0.0), cluster)


def test_flowtide_on_a_multi_day_trace_decides_and_nowcasts_one_tick_into_each_step(cluster):
    two_days = constant_trace(20.0, ticks=2 * 8640 + 6)
    policy = make_policy("flowtide", two_days, cluster)
    assert (policy.interval_s, policy.offset_s, policy.nowcast_after_s, policy.step_s) == (60.0, 10.0, 10.0, 600.0)
    # At 30 s ticks (--tick-s 30) the first tick of each step is 30 s in; at 60 s, decisions fall on it.
    assert make_policy("flowtide", constant_trace(20.0, ticks=5800, step_s=30.0), cluster).offset_s == 30.0
    assert make_policy("flowtide", constant_trace(20.0, ticks=2900, step_s=60.0), cluster).offset_s == 0.0
    with pytest.raises(PolicyError, match="offset_s"):
        FlowtidePolicy(cluster, offset_s=60.0)


def test_make_policy_names_the_choices(cluster):
    with pytest.raises(ValueError, match="unknown policy"):
        make_policy("k8s-hpa", constant_trace(1.0), cluster)


def test_plot_frontier_draws_each_policy(tmp_path):
    import matplotlib.image as mpimg

    from autoscaler.plots import plot_frontier

    runs = {"dynamo": [{"headroom": h, "gpu_hours": g, "slo_attainment": a}
                       for h, g, a in ((1.0, 10.2, 0.79), (1.5, 13.9, 0.9967), (2.0, 13.3, 0.807))],
            "flowtide": [{"gpu_hours": 14.6, "slo_attainment": 0.9988}]}
    path = plot_frontier("azure-conv", runs, tmp_path / "plots")
    assert path == tmp_path / "plots" / "frontier.png"
    image = mpimg.imread(path)
    assert image.shape[:2] == (605, 1430)  # two panels: every run, and the zoom near the target
    # Something besides the white background and axes was drawn: coloured pixels (lines, the star).
    rgb = image[..., :3]
    assert ((rgb.max(axis=2) - rgb.min(axis=2)) > 0.3).sum() > 500


def test_plot_run_draws_serving_and_training_power_under_the_cluster_total(cluster, tmp_path, monkeypatch):
    from autoscaler import plots

    params = warm(cluster, 2, 2, total_gpus=4 * cluster.capacity.gpus_per_replica + 8, power_cap_w=8000.0)
    # Demand steps up half-way: serving draws more, and training is shed to stay under the cap.
    result = simulate(constant_trace(np.r_[np.zeros(180), np.full(180, 5.0)]), StaticPolicy(2, 2), params)
    training = result.power_w - result.serving_w
    assert training[-1] < training[0] and training[-1] > 0
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    path = plots.plot_run(result, tmp_path)
    assert path.is_file()
    ax = figures[0].axes[3]
    bands = {c.get_label(): c.get_paths()[0].vertices[:, 1] for c in ax.collections}
    assert set(bands) == {"serving", "training (shed first)"}
    assert bands["serving"].min() == 0 and np.isclose(bands["serving"].max(), result.serving_w.max() / 1e3)
    assert np.isclose(bands["training (shed first)"].min(), result.serving_w.min() / 1e3)
    assert np.isclose(bands["training (shed first)"].max(), result.power_w.max() / 1e3)
    (total,) = [line for line in ax.lines if line.get_label() == "cluster"]
    np.testing.assert_allclose(total.get_ydata(), result.power_w / 1e3)


def test_the_run_gives_each_pools_indicators_and_the_cluster_view(cluster):
    from autoscaler.indicators import INDICATORS

    trace = constant_trace(20.0)
    short = simulate(trace, StaticPolicy(1, 6), warm(cluster, 1, 6))
    pools = short.indicators().pools
    prefill, decode = pools["prefill"], pools["decode"]
    assert prefill.names == decode.names == INDICATORS and len(prefill) == len(decode) == 360
    np.testing.assert_array_equal(prefill.values[:, :3], trace.rates())  # both pools see the demand
    np.testing.assert_array_equal(decode.values[:, :3], trace.rates())
    # One prefill replica falls behind: its waiting requests grow tick by tick, as does its TTFT.
    queue = prefill.column("queue_requests")
    assert np.all(np.diff(queue) > 0) and queue[-1] > 1000
    np.testing.assert_allclose(prefill.column("ttft_p99_s"), short.ttft_s)  # one request shape a tick
    assert np.isnan(prefill.column("tpot_p99_s")).all() and np.isnan(prefill.column("kv_use_fraction")).all()
    np.testing.assert_allclose(decode.column("tpot_p99_s"), short.tpot_s)
    assert np.isnan(decode.column("ttft_p99_s")).all()
    # The pools' watts split serving's draw; the cluster adds them and takes the worst latency.
    np.testing.assert_allclose(prefill.column("power_w") + decode.column("power_w"), short.serving_w)
    np.testing.assert_allclose(prefill.column("power_w"), 700.0 * cluster.capacity.gpus_per_replica)  # saturated
    whole = short.indicators().cluster()
    np.testing.assert_allclose(whole.column("power_w"), short.serving_w)
    np.testing.assert_array_equal(whole.column("ttft_p99_s"), short.ttft_s)
    np.testing.assert_array_equal(whole.column("kv_use_fraction"), decode.column("kv_use_fraction"))
    # Enough replicas: nothing carried over, only the within-tick M/D/1 wait, and TTFT within the SLO.
    enough = simulate(trace, StaticPolicy(6, 6), warm(cluster, 6, 6)).indicators().pools["prefill"]
    assert enough.column("queue_requests").max() < 5 and enough.column("ttft_p99_s").max() < 2.0
    # One decode replica at 60 req/s: every batch slot busy, sequences waiting for one.
    busy = simulate(constant_trace(60.0), StaticPolicy(12, 1), warm(cluster, 12, 1)).indicators().pools["decode"]
    assert busy.column("kv_use_fraction")[-1] == pytest.approx(1.0) and busy.column("queue_requests")[-1] > 100
    light = simulate(constant_trace(1.0), StaticPolicy(2, 2), warm(cluster, 2, 2)).indicators().pools["decode"]
    assert 0 < light.column("kv_use_fraction").max() < 0.5 and light.column("queue_requests").max() == 0


def test_a_pool_without_replicas_has_no_kv_use_and_cold_starts_draw_idle_watts_in_their_pool(cluster):
    result = simulate(constant_trace(1.0, ticks=30), Scripted((1, 3), from_s=50.0), warm(cluster, 1, 0,
                                                                                          min_replicas=(1, 0)))
    decode = result.indicators().pools["decode"]
    assert np.isnan(decode.column("kv_use_fraction")[:11]).all()  # no decode replica until 60 + 50 s
    assert np.isfinite(decode.column("kv_use_fraction")[11:]).all()
    idle = PowerModel.for_hardware("h100-80gb").idle_w * 3 * cluster.capacity.gpus_per_replica
    np.testing.assert_allclose(decode.column("power_w")[5:11], idle)  # three replicas starting, idle
    assert decode.column("queue_requests")[4] == pytest.approx(50.0)  # 1 req/s for 50 s, all waiting for a slot


def test_each_ticks_quantile_is_the_weighted_quantile_of_its_requests():
    rng = np.random.default_rng(0)
    tick = rng.integers(0, 40, 500)
    values = rng.lognormal(size=500)
    values[::50] = np.inf  # requests never served
    weight = rng.choice([0.0, 1.0, 2.5, 7.0], 500)
    for q in (0.5, 0.9, 0.99):
        got = _tick_quantile(values, weight, tick, 45, q)
        for t in range(45):
            mine = (tick == t) & (weight > 0)
            assert got[t] == _wq(values[mine], weight[mine], q) if mine.any() else np.isnan(got[t])


def test_plot_pools_draws_each_pools_indicators(cluster, tmp_path, monkeypatch):
    from autoscaler import plots

    result = simulate(constant_trace(np.r_[np.full(180, 2.0), np.full(180, 20.0)]), StaticPolicy(1, 2),
                      warm(cluster, 1, 2))
    figures = []
    monkeypatch.setattr(plots.plt, "close", figures.append)
    path = plots.plot_pools(result, tmp_path)
    assert path == tmp_path / "static-pools.png" and path.is_file()
    queue, kv, latency, power = figures[0].axes
    pools = result.indicators().pools
    lines = {line.get_label(): line.get_ydata() for line in queue.lines}
    np.testing.assert_allclose(lines["prefill: requests waiting"], pools["prefill"].column("queue_requests"))
    np.testing.assert_allclose(kv.lines[0].get_ydata(), pools["decode"].column("kv_use_fraction"))
    ratios = {line.get_label(): line.get_ydata() for line in latency.lines}
    np.testing.assert_allclose(ratios["prefill: TTFT p99 / 2 s"], pools["prefill"].column("ttft_p99_s") / 2.0)
    assert ratios["prefill: TTFT p99 / 2 s"][-1] > 1 > ratios["prefill: TTFT p99 / 2 s"][0]  # overloaded half-way
    top = {c.get_label(): c.get_paths()[0].vertices[:, 1].max() for c in power.collections}
    assert np.isclose(top["decode"], result.serving_w.max() / 1e3)  # decode stacked on prefill: serving's draw


def test_a_cost_per_request_lowers_the_prefill_rate_of_short_prompts(cluster):
    """Same tokens/s, 16x the requests: with a cost per request (a served profile), the short prompts'
    ticks get a lower prefill rate; ticks without arrivals keep the last arrivals' rate."""
    cap = replace(cluster.capacity, prefill_per_request_s=0.01)
    params = warm(replace(cluster, capacity=cap), 2, 2)
    ticks, step = 60, 10.0
    n = np.where(np.arange(ticks) % 3 == 2, 0.0, np.where(np.arange(ticks) % 3 == 0, 160.0, 10.0))
    prompt = np.where(n == 160.0, 100.0, 1600.0)
    groups = RequestGroups(np.arange(ticks)[n > 0], prompt[n > 0], np.full(int((n > 0).sum()), 50.0), n[n > 0])
    trace = TickTrace("mixed", step, n, n * prompt, n * 50.0, groups)
    result = simulate(trace, StaticPolicy(2, 2), params)
    short, long = cap.prefill_tokens_per_s(mean_prompt_tokens=100.0), cap.prefill_tokens_per_s(mean_prompt_tokens=1600.0)
    expected = np.tile([short, long, long], ticks // 3)
    np.testing.assert_allclose(result.prefill_tokens_per_s, expected)
    plain_s = float(cluster.capacity.prefill_time_s(4096))  # a 4096-token batch without the cost per request
    assert short == pytest.approx(4096 / (plain_s + 4096 / 100 * 0.01))  # 41 requests' cost a batch
    assert long == pytest.approx(4096 / (plain_s + 4096 / 1600 * 0.01))
    # The Splitwise H100 fit has no such cost: every tick gets the one rate, whatever its prompts.
    plain = simulate(trace, StaticPolicy(2, 2), warm(cluster, 2, 2))
    np.testing.assert_array_equal(plain.prefill_tokens_per_s, cluster.capacity.prefill_tokens_per_s())

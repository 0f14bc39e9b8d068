"""The flow forecaster: joint sample paths, reproducible, saved and loaded exactly, updated online, fails loudly."""

from __future__ import annotations

import copy
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from autoscaler.forecast import ForecastInputError, make_forecaster
from autoscaler.forecast.evaluate import rolling_evaluation
from autoscaler.forecast.flow import FlowForecaster

from tests.conftest import load_benchmark

STEP_S = 3600.0
TINY = dict(horizon=3, context=12, patch=6, seasons=1, pre=6, d_model=16, heads=2, layers=1, context_features=16,
            transforms=2, hidden_features=(32, 32), batch_size=64, max_epochs=4, patience=4, update_every_s=6 * 3600.0,
            update_steps=3, calibration_samples=16)


def correlated_series(rows: int = 600, seed: int = 0, shock_std: float | np.ndarray = 0.15) -> np.ndarray:
    """Two indicators driven by one shock per step (log scale) plus a daily cycle."""
    rng = np.random.default_rng(seed)
    t = np.arange(rows)
    shock = shock_std * rng.standard_normal(rows)
    level = np.log(100) + 0.3 * np.sin(2 * np.pi * t / 24)
    a = np.exp(level + shock + 0.02 * rng.standard_normal(rows))
    b = np.exp(level + np.log(3) + shock + 0.02 * rng.standard_normal(rows))
    return np.column_stack([a, b])


@pytest.fixture(scope="module")
def fitted() -> tuple[FlowForecaster, np.ndarray]:
    x = correlated_series()
    fc = make_forecaster("flow", indicators=("a", "b"), **TINY)
    fc.fit(x[:500], STEP_S)
    return fc, x


def test_flow_gives_nonnegative_joint_paths_of_the_requested_shape(fitted):
    fc, x = fitted
    out = fc.predict(x[:520], 2, 32, np.random.default_rng(0))
    assert out.samples.shape == (32, 2, 2)
    assert out.indicators == ("a", "b") and out.step_s == STEP_S
    assert np.all(np.isfinite(out.samples)) and np.all(out.samples >= 0)


def test_flow_sampling_is_reproducible_for_a_seed_and_leaves_torch_rng_alone(fitted):
    fc, x = fitted
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    a = fc.predict(x[:520], 3, 16, np.random.default_rng(7)).samples
    assert torch.rand(1) == expected_next
    b = fc.predict(x[:520], 3, 16, np.random.default_rng(7)).samples
    np.testing.assert_array_equal(a, b)


def test_flow_training_is_seeded_by_its_config_and_leaves_torch_global_rng_alone():
    x = correlated_series(seed=4)
    kw = {**TINY, "max_epochs": 2, "dropout": 0.1}  # dropout draws from torch's global RNG in fit and fine-tune
    models = []
    for caller_seed in (123, 456):
        torch.manual_seed(caller_seed)
        expected = torch.rand(3)
        torch.manual_seed(caller_seed)
        fc = make_forecaster("flow", **kw)
        fc.fit(x[:500], STEP_S)
        fc.update(x[500:506])  # 6 h: one fine-tune
        assert torch.equal(torch.rand(3), expected)
        models.append(fc)
    for a, b in zip(models[0].net.parameters(), models[1].net.parameters()):
        assert torch.equal(a, b)


def test_validation_start_is_where_fit_validates(fitted):
    fc, _ = fitted
    # Validation origins run from it to the last origin with a whole target (rows - horizon - 1).
    assert 500 - fc.config.horizon - fc.validation_start(500, STEP_S) == fc.train_log["val_windows"]


def test_forecast_benchmark_cuts_aligned_subsets_where_the_flows_validation_begins(monkeypatch):
    """The client-subset series cover the training days; windows of theirs at the validation times
    would train the network on what early stopping and the first calibration score."""
    bench = load_benchmark("forecast")
    seen = []
    fit = FlowForecaster.fit

    def recording_fit(self, history, step_s, extra_histories=()):
        seen.append((self.validation_start(history.shape[0], step_s), [e.shape[0] for e in extra_histories]))
        return fit(self, history, step_s, extra_histories)

    monkeypatch.setattr(FlowForecaster, "fit", recording_fit)
    x = correlated_series(560)
    extra = tuple(correlated_series(500, seed=s) for s in (1, 2))
    bench.run_forecast_benchmark(x, ("a", "b"), STEP_S, 500, horizon=3, n_samples=16, forecasters=("flow",),
                                 flow_kw=TINY, flow_extra=extra, stride=20, progress=False)
    [(start, lengths)] = seen
    assert start < 500 and lengths == [start, start]


def test_flow_save_then_load_predicts_the_same_samples(fitted, tmp_path):
    fc, x = fitted
    fc.save(tmp_path / "flow.pt")
    loaded = FlowForecaster.load(tmp_path / "flow.pt")
    np.testing.assert_allclose(
        loaded.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        fc.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        rtol=1e-6,
    )
    np.testing.assert_array_equal(loaded.spread, fc.spread)
    assert loaded.indicators == fc.indicators


def test_flow_stretches_only_the_tails_and_keeps_its_central_samples_as_drawn(fitted):
    fc = copy.deepcopy(fitted[0])
    x = fitted[1]
    fc.spread = np.ones_like(fc.spread)
    drawn = fc.predict(x[:520], 3, 256, np.random.default_rng(5)).samples
    fc.spread = np.full_like(fc.spread, 3.0)
    stretched = fc.predict(x[:520], 3, 256, np.random.default_rng(5)).samples
    for p in (0.25, 0.5, 0.75):
        np.testing.assert_allclose(np.quantile(stretched, p, axis=0), np.quantile(drawn, p, axis=0), rtol=1e-6)
    wide = lambda s: np.quantile(s, 0.95, axis=0) - np.quantile(s, 0.05, axis=0)  # noqa: E731
    assert np.all(wide(stretched) > 1.5 * wide(drawn))


def test_flow_keeps_the_last_history_days_and_saves_and_loads_them_exactly(tmp_path):
    x = correlated_series(seed=1)
    fc = make_forecaster("flow", **TINY, history_days=4.0)  # 96 rows of 1 h
    fc.fit(x[:500], STEP_S)
    np.testing.assert_array_equal(fc.history, x[404:500])
    fc.update(x[500:530])  # the anchor refits after row 523 on the last 96 rows; six rows since
    np.testing.assert_array_equal(fc.history, x[428:530])
    assert fc.qr.fitted_rows == 96
    fc.save(tmp_path / "flow.pt")
    loaded = FlowForecaster.load(tmp_path / "flow.pt")
    np.testing.assert_array_equal(loaded.qr.history, fc.qr.history)
    np.testing.assert_array_equal(
        loaded.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        fc.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
    )


def test_flow_fine_tunes_only_once_update_every_s_of_new_rows_arrived(tmp_path):
    x = correlated_series(seed=1)
    fc = make_forecaster("flow", **TINY)
    fc.fit(x[:500], STEP_S)
    before = [p.detach().clone() for p in fc.net.parameters()]
    fc.update(x[500:505])  # 5 h < 6 h: only appended
    assert all(torch.equal(a, b) for a, b in zip(before, fc.net.parameters()))
    assert fc.history.shape[0] == 505
    fc.update(x[505:506])  # 6 h reached: a few optimiser steps
    assert any(not torch.equal(a, b) for a, b in zip(before, fc.net.parameters()))


def test_flow_rejects_a_horizon_beyond_training_a_short_history_and_predict_before_fit(fitted):
    fc, x = fitted
    with pytest.raises(ForecastInputError, match="exceeds"):
        fc.predict(x[:520], 4, 8, np.random.default_rng(0))
    with pytest.raises(ForecastInputError, match="rows"):
        make_forecaster("flow", **TINY).fit(x[:40], STEP_S)
    with pytest.raises(ForecastInputError, match="fit"):
        make_forecaster("flow", **TINY).predict(x[:40], 1, 8, np.random.default_rng(0))
    # Rows enough to window, windows too few to train on: refused before anything is fitted.
    short = make_forecaster("flow", **TINY)
    with pytest.raises(ForecastInputError, match="training windows, need at least 64"):
        short.fit(x[:85], STEP_S)
    assert short.net is None and not hasattr(short, "qr")


def test_flow_predicts_from_a_history_shorter_than_its_window(fitted):
    fc, x = fitted
    out = fc.predict(x[:3], 3, 8, np.random.default_rng(0))
    assert out.samples.shape == (8, 3, 2) and np.all(np.isfinite(out.samples))


@pytest.mark.slow
def test_flow_samples_carry_the_shock_shared_by_two_indicators():
    x = correlated_series(rows=900, seed=2)
    fc = make_forecaster("flow", **{**TINY, "max_epochs": 40, "patience": 10})
    fc.fit(x[:800], STEP_S)
    corr = []
    for end in range(800, 880, 8):
        s = np.log(fc.predict(x[:end], 1, 256, np.random.default_rng(end)).samples[:, 0])
        corr.append(np.corrcoef(s[:, 0], s[:, 1])[0, 1])
    assert np.mean(corr) > 0.6


def test_flow_scores_each_issued_band_only_on_outcomes_already_observed(fitted):
    fc, x = copy.deepcopy(fitted[0]), fitted[1]
    fc.update(x[500:503])
    scores = fc._scores()  # [origins, side, tail level, step, indicator], newest origin last
    for j in range(fc.config.horizon):
        # The origin j rows back knows its first j steps; later steps lie in the future.
        assert np.all(np.isfinite(scores[-1 - j, :, :, :j])) and np.all(np.isnan(scores[-1 - j, :, :, j:]))


def test_flow_training_never_sees_the_validation_targets():
    # Scaling the validation windows' target rows changes neither the normalisation, the anchor's residual
    # statistics nor the trained network (one epoch: early stopping has no choice to make).
    x = correlated_series(seed=1)[:500]
    fc = make_forecaster("flow", **{**TINY, "max_epochs": 1})
    fc.fit(x, STEP_S)
    first = 500 - fc.config.horizon - fc.train_log["val_windows"]  # the first validation origin
    y = x.copy()
    y[first:] *= 3.0
    other = make_forecaster("flow", **{**TINY, "max_epochs": 1})
    other.fit(y, STEP_S)
    np.testing.assert_array_equal(fc.scale.offset, other.scale.offset)
    for key in ("z_mean", "z_std", "d_std", "t_mean", "t_std"):
        np.testing.assert_array_equal(getattr(fc, key), getattr(other, key), err_msg=key)
    for a, b in zip(fc.net.parameters(), other.net.parameters()):
        assert torch.equal(a, b)
    assert fc.train_log["best_val_nll"] != other.train_log["best_val_nll"]  # the validation did see the change


def test_flow_first_calibration_scores_only_origins_it_did_not_train_on():
    x = correlated_series(seed=1)
    fc = make_forecaster("flow", **TINY, calibration_days=4.0)  # 96 origins: more than the validation windows'
    fc.fit(x[:500], STEP_S)
    first = 500 - fc.config.horizon - fc.train_log["val_windows"]  # the first validation origin
    origins = np.arange(500 - len(fc.bands), 500)
    assert origins[0] < first  # the calibration window reaches back into the training windows' origins
    assert np.all(np.isnan(fc.bands[origins < first])) and np.all(np.isfinite(fc.bands[origins >= first]))
    assert np.all(fc.spread >= 1.0) and np.all(np.isfinite(fc.spread))


def test_flow_update_is_the_same_row_by_row_or_in_one_block(fitted):
    # 26 rows of 1 h: fine-tunes after rows 505, 511, 517 and 523 (every 6 h), the anchor refits after row 523 (a day).
    fc, x = fitted
    one, block = copy.deepcopy(fc), copy.deepcopy(fc)
    for r in range(500, 526):
        one.update(x[r : r + 1])
    block.update(x[500:526])
    assert any(not torch.equal(a, b) for a, b in zip(fc.net.parameters(), one.net.parameters()))  # it fine-tuned
    assert one.qr.fitted_rows == block.qr.fitted_rows == 524
    for a, b in zip(one.net.parameters(), block.net.parameters()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(one.bands, block.bands)
    np.testing.assert_array_equal(one.spread, block.spread)


def test_flow_tail_calibration_widens_to_near_nominal_coverage_when_volatility_rises_after_fit():
    # Calm while fitted (shocks 0.05), then three times as volatile: the fitted flow is too sharp.
    # The tail calibration alone: a median-only anchor and no blend, whose spread does not follow the shift.
    x = correlated_series(rows=760, seed=3, shock_std=np.where(np.arange(760) < 500, 0.05, 0.15))
    fc = make_forecaster("flow", **TINY, anchor_levels=(0.5,), blend_weight=0.0)
    fc.fit(x[:500], STEP_S)
    before = fc.spread.copy()
    ev = rolling_evaluation(fc, x, 500, 3, 64, np.random.default_rng(0))
    day = int(86_400 / STEP_S)  # the calibration window has filled with post-shift outcomes
    # Tail factors [side, level, step]: every one grew, except where the drawn tail already covers the
    # new outcomes and the factor stays at its floor of 1; by half again on average.
    after = fc.spread[..., 0]
    assert np.all((after > before[..., 0]) | (after == 1.0))
    assert after.mean() > 1.5 * before[..., 0].mean()
    assert 0.7 <= ev.cover80[day:, :, 0].mean() <= 0.9
    assert 0.88 <= ev.cover95[day:, :, 0].mean() <= 0.99


def test_flow_intervals_widen_to_near_nominal_coverage_when_volatility_rises_after_fit():
    # As above with the default flow (quantile regression's quantiles blended in):
    # the network's own spread follows the shift too, so the outcome is checked, not the tail factors.
    x = correlated_series(rows=760, seed=3, shock_std=np.where(np.arange(760) < 500, 0.05, 0.15))
    fc = make_forecaster("flow", **TINY)
    fc.fit(x[:500], STEP_S)
    width = lambda f, end: np.diff(np.log(np.quantile(  # noqa: E731
        f.predict(x[:end], 3, 512, np.random.default_rng(0)).samples[..., 0], [0.05, 0.95], axis=0)), axis=0)[0]
    calm = width(fc, 500)
    ev = rolling_evaluation(fc, x, 500, 3, 64, np.random.default_rng(0))
    day = int(86_400 / STEP_S)
    assert np.all(width(fc, 760) > 2 * calm)  # the 90% interval at every step, on the log scale
    assert 0.7 <= ev.cover80[day:, :, 0].mean() <= 0.9
    assert 0.88 <= ev.cover95[day:, :, 0].mean() <= 0.99


def test_flow_training_budget_is_counted_in_epochs_not_wall_time(monkeypatch):
    # Same seed and data, once as is and once with every optimiser step slowed down (a loaded
    # machine): the budget is epochs with early stopping, so the two models are the same.
    x = correlated_series(seed=4)
    kw = {**TINY, "max_epochs": 6, "patience": 6}
    quick = make_forecaster("flow", **kw)
    quick.fit(x[:500], STEP_S)
    step = FlowForecaster._step

    slowed = []

    def slow_step(self, batch):
        time.sleep(0.004)
        slowed.append(1)
        step(self, batch)

    monkeypatch.setattr(FlowForecaster, "_step", slow_step)
    slow = make_forecaster("flow", **kw)
    slow.fit(x[:500], STEP_S)
    assert len(slowed) == slow.train_log["steps"] > 0  # every step of the second fit was slowed down
    assert slow.train_log["train_s"] >= 0.004 * len(slowed)
    for key in ("epochs", "best_epoch", "steps", "best_val_nll", "stopped_by"):
        assert slow.train_log[key] == quick.train_log[key], key
    assert quick.train_log["epochs"] == 6 and quick.train_log["stopped_by"] == "max_epochs"
    assert quick.train_log["steps"] == 6 * min(50, -(-quick.train_log["train_windows"] // kw["batch_size"]))
    assert not slow.train_log["wall_cap_hit"]
    for a, b in zip(quick.net.parameters(), slow.net.parameters()):
        assert torch.equal(a, b)
    np.testing.assert_array_equal(quick.spread, slow.spread)
    np.testing.assert_array_equal(
        quick.predict(x[:520], 3, 32, np.random.default_rng(5)).samples,
        slow.predict(x[:520], 3, 32, np.random.default_rng(5)).samples,
    )


def test_flow_reports_and_warns_when_the_wall_time_guard_ends_training(monkeypatch):
    import autoscaler.forecast.flow as flow_module

    clock = iter(range(0, 100_000, 100))  # every reading of the flow's clock is 100 s later: a very slow machine
    monkeypatch.setattr(flow_module, "time", SimpleNamespace(perf_counter=lambda: float(next(clock))))
    fc = make_forecaster("flow", **{**TINY, "max_epochs": 6, "patience": 6, "max_train_s": 150.0})
    with pytest.warns(RuntimeWarning, match="wall-time guard"):
        fc.fit(correlated_series(seed=4)[:500], STEP_S)
    assert fc.train_log["wall_cap_hit"] and fc.train_log["stopped_by"] == "wall_cap"
    assert 1 <= fc.train_log["epochs"] < 6


def test_flow_stops_early_after_patience_epochs_without_a_better_validation_loss():
    fc = make_forecaster("flow", **{**TINY, "max_epochs": 30, "patience": 2, "lr": 0.0})  # lr 0: never improves
    fc.fit(correlated_series(seed=4)[:500], STEP_S)
    log = fc.train_log
    assert log["stopped_by"] == "patience" and log["best_epoch"] == 1 and log["epochs"] == 3
    assert not log["wall_cap_hit"]


QUANTILE_INPUT = dict(anchor_levels=(0.1, 0.5, 0.9))


@pytest.fixture(scope="module")
def blended() -> tuple[FlowForecaster, np.ndarray]:
    x = correlated_series(seed=5)
    fc = make_forecaster("flow", indicators=("a", "b"), **TINY, **QUANTILE_INPUT, blend_weight=0.5)
    fc.fit(x[:500], STEP_S)
    return fc, x


def test_flow_anchor_token_carries_quantile_regressions_median_and_its_10_90_offsets(blended):
    fc, x = blended
    h = fc.config.horizon
    z = fc.scale.to_log(x[:520])
    origins = np.array([480, 500, 519])
    q = fc._anchor(fc.qr, x[:520], origins)  # [3 levels, N, H, K]
    np.testing.assert_allclose(q, fc.scale.to_log(fc.qr.quantiles_at(x[:520], origins))[[3, 7, 11]])  # LEVELS' 10/50/90%
    anchor = fc._inputs(z, origins, q)[3].numpy()
    assert anchor.shape == (3, 3 * h, 2)
    np.testing.assert_allclose(anchor[:, :h], (q[1] - z[origins][:, None]) / fc.d_std, rtol=1e-5, atol=1e-5)
    assert np.all(anchor[:, h : 2 * h] <= 0) and np.all(anchor[:, 2 * h :] >= 0)  # 10% below, 90% above the median
    assert np.any(anchor[:, 2 * h :] - anchor[:, h : 2 * h] > 0.5)  # a real spread, not a collapsed one
    assert fc.net.encoder.anchor_embed.in_features == 3 * h


def _with_blend(fc: FlowForecaster, weight: float) -> FlowForecaster:
    out = copy.deepcopy(fc)
    out.config.blend_weight = weight
    out.spread = np.ones_like(out.spread)  # no tail stretch: compare the blend alone
    return out


def test_flow_blend_averages_its_quantile_function_with_quantile_regressions(blended):
    fc, x = blended
    draw = lambda f: np.log(f.predict(x[:520], 3, 2000, np.random.default_rng(9)).samples + f.scale.offset)  # noqa: E731
    own, qr, half = draw(_with_blend(fc, 0.0)), draw(_with_blend(fc, 1.0)), draw(_with_blend(fc, 0.5))
    # The blend is 0.5 x the flow's residual + 0.5 x quantile regression's quantile at the sample's rank, per cell.
    np.testing.assert_allclose(half, (own + qr) / 2, atol=1e-6)
    # With all weight on quantile regression, the samples' quantiles are quantile regression's.
    expected = np.log(fc.qr.quantiles(x[:520], 3) + fc.scale.offset)  # [15 levels, H, K]
    levels = list(fc.qr.levels)
    for p in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(np.quantile(qr, p, axis=0), expected[levels.index(p)], atol=0.02)


def test_flow_blend_keeps_the_joint_structure_of_the_flows_samples(blended):
    fc, x = blended
    own = _with_blend(fc, 0.0).predict(x[:520], 3, 256, np.random.default_rng(4)).samples
    half = _with_blend(fc, 0.5).predict(x[:520], 3, 256, np.random.default_rng(4)).samples
    # A monotone map per (step, indicator): every cell's ranks, and so the copula, are as the flow drew them.
    np.testing.assert_array_equal(np.argsort(own, axis=0), np.argsort(half, axis=0))
    assert not np.allclose(own, half)


def test_flow_with_quantile_input_and_blend_saves_and_loads_to_the_same_samples(blended, tmp_path):
    fc, x = blended
    fc.save(tmp_path / "flow.pt")
    loaded = FlowForecaster.load(tmp_path / "flow.pt")
    assert loaded.config.anchor_levels == (0.1, 0.5, 0.9) and loaded.config.blend_weight == 0.5
    np.testing.assert_allclose(
        loaded.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        fc.predict(x[:530], 3, 16, np.random.default_rng(1)).samples,
        rtol=1e-6,
    )


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("patch", 0, "patch must be an integer >= 1"),
        ("horizon", 0, "horizon must be an integer >= 1"),
        ("batch_size", 0, "batch_size must be an integer >= 1"),
        ("bins", 1, "bins must be an integer >= 2"),
        ("hidden_features", (32, 0), "hidden_features"),
        ("blend_weight", 2.0, r"blend_weight must lie in \[0, 1\]"),
        ("blend_weight", -1.0, r"blend_weight must lie in \[0, 1\]"),
        ("val_frac", -0.5, r"val_frac must lie in \(0, 1\)"),
        ("calibration_level", 1.5, r"calibration_level must lie in \(0, 1\)"),
        ("calibration_level", 0.1, r"must exceed 1 / \(calibration_knots \+ 1\)"),
        ("heads", 3, "d_model 16 must be a multiple of heads 3"),
        ("sample_clip", -1.0, "sample_clip must be > 0"),
        ("update_every_s", float("nan"), "update_every_s must be > 0"),
        ("lr", -1e-3, "lr must be a finite number >= 0"),
        ("lr", float("inf"), "lr must be a finite number >= 0"),
        ("weight_decay", float("inf"), "weight_decay must be a finite number >= 0"),
        ("seed", 0.5, "seed must be an integer, got 0.5"),
        ("anchor_levels", (0.5, 0.1), "must increase strictly"),
        ("history_days", 2.0, r"history_days must be finite and >= seasons \+ max"),  # TINY: 1 + 2 days
        ("dropout", "0.1", "dropout must be a number, got '0.1'"),
        ("bins", True, "bins must be a number"),
        ("hidden_features", 32, "hidden_features must be a list"),
    ],
)
def test_flow_config_out_of_range_is_a_named_error(field, value, message):
    with pytest.raises(ForecastInputError, match=message):
        make_forecaster("flow", **{**TINY, field: value})


def test_flow_load_of_a_file_it_did_not_write_is_a_named_error(fitted, tmp_path):
    torch.save(torch.zeros(3), tmp_path / "tensor.pt")
    (tmp_path / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(300))
    (tmp_path / "text.pt").write_text("hello world")
    for name in ("tensor.pt", "garbage.pt", "text.pt"):
        with pytest.raises(ForecastInputError, match="not a file FlowForecaster.save wrote"):
            FlowForecaster.load(tmp_path / name)
    fitted[0].save(tmp_path / "flow.pt")
    state = torch.load(tmp_path / "flow.pt", weights_only=True)
    state["config"]["retired_field"] = 0.0  # a field this version does not have
    torch.save(state, tmp_path / "other.pt")
    with pytest.raises(ForecastInputError, match=r"another version of the flow .*retired_field"):
        FlowForecaster.load(tmp_path / "other.pt")
    with pytest.raises(FileNotFoundError):
        FlowForecaster.load(tmp_path / "missing.pt")


def test_flow_whose_training_diverges_says_so():
    # A learning rate this large sends the weights to NaN at once: no epoch's validation NLL is finite.
    flow = make_forecaster("flow", **{**TINY, "lr": 1e6, "max_epochs": 2})
    with pytest.raises(ForecastInputError, match=r"training diverged.*lr=1e\+06"):
        flow.fit(correlated_series(), 600.0)


def test_flow_load_of_an_edited_file_is_a_named_error(fitted, tmp_path):
    fitted[0].save(tmp_path / "flow.pt")
    state = torch.load(tmp_path / "flow.pt", weights_only=True)
    for edit, message in ((lambda s: s["config"].update(d_model=2 * s["config"]["d_model"]), "weights do not fit"),
                          (lambda s: s["config"].update(horizon=s["config"]["horizon"] + 1), "weights do not fit"),
                          (lambda s: s["arrays"].pop("spread"), r"arrays are not those save\(\) writes .*spread")):
        edited = torch.load(tmp_path / "flow.pt", weights_only=True)
        edit(edited)
        torch.save(edited, tmp_path / "edited.pt")
        with pytest.raises(ForecastInputError, match=message):
            FlowForecaster.load(tmp_path / "edited.pt")
    assert FlowForecaster.load(tmp_path / "flow.pt").horizon == state["config"]["horizon"]


def test_flow_refuses_anchor_levels_without_the_median():
    with pytest.raises(ForecastInputError, match="median"):
        make_forecaster("flow", **TINY, anchor_levels=(0.1, 0.9))
    # One quantile regression at the blend's 15 levels also gives the anchor: its levels must be among them.
    with pytest.raises(ForecastInputError, match="must be among"):
        make_forecaster("flow", **TINY, anchor_levels=(0.15, 0.5), blend_weight=0.25)
    assert make_forecaster("flow", **TINY, anchor_levels=(0.15, 0.5), blend_weight=0.0).config.anchor_levels == (0.15, 0.5)

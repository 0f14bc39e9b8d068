"""Baseline forecasters: each does what its name promises, uses only the history it is given, rejects bad input."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.forecast import FORECASTERS, Forecast, ForecastInputError, Forecaster, make_forecaster

STEP_S = 3600.0  # 24 steps per day keeps the seasonal models small


def daily_series(days: int = 6, k: int = 2, noise: float = 0.05, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(days * 24)
    base = 100 + 40 * np.sin(2 * np.pi * t / 24)
    cols = [base * (1 + i) * np.exp(noise * rng.standard_normal(t.size)) for i in range(k)]
    return np.column_stack(cols)


@pytest.mark.parametrize("name", ["last", "seasonal_naive", "ewma", "kalman", "quantile"])
def test_every_baseline_meets_the_forecaster_protocol(name):
    x = daily_series()
    fc = make_forecaster(name, indicators=("a", "b"), **({"horizon": 3} if name == "quantile" else {}))
    assert isinstance(fc, Forecaster)
    fc.fit(x[:100], STEP_S)
    fc.update(x[100:110])
    out = fc.predict(x[:110], 3, 16, np.random.default_rng(0))
    assert isinstance(out, Forecast)
    assert out.samples.shape[1:] == (3, 2) and out.samples.shape[0] in (1, 16)
    assert out.indicators == ("a", "b") and out.step_s == STEP_S
    assert np.all(out.samples >= 0)


def test_last_value_repeats_the_last_row():
    x = daily_series()
    fc = make_forecaster("last")
    fc.fit(x, STEP_S)
    np.testing.assert_array_equal(fc.predict(x, 4, 1, None).samples[0], np.repeat(x[-1:], 4, axis=0))


def test_seasonal_naive_returns_the_value_one_day_earlier():
    x = daily_series()
    fc = make_forecaster("seasonal_naive")
    fc.fit(x, STEP_S)
    out = fc.predict(x[:100], 30, 1, None).samples[0]
    np.testing.assert_array_equal(out[:24], x[100 - 24 : 100])
    np.testing.assert_array_equal(out[24:], x[100 - 24 : 106 - 24])  # beyond a day: two days back


def test_seasonal_naive_falls_back_to_last_value_before_a_full_day():
    x = daily_series()
    fc = make_forecaster("seasonal_naive")
    fc.fit(x, STEP_S)
    np.testing.assert_array_equal(fc.predict(x[:10], 2, 1, None).samples[0], np.repeat(x[9:10], 2, axis=0))


def test_ewma_picks_a_high_alpha_for_a_random_walk_and_a_low_one_for_noise():
    rng = np.random.default_rng(1)
    walk = np.exp(np.cumsum(0.1 * rng.standard_normal(500)))[:, None] * 100
    noise = (100 + 10 * rng.standard_normal(500))[:, None]
    fast, slow = make_forecaster("ewma"), make_forecaster("ewma")
    fast.fit(walk, 60.0)
    slow.fit(noise, 60.0)
    assert fast.alpha >= 0.7 and slow.alpha <= 0.1


def test_ewma_refit_picks_alpha_afresh_and_keeps_a_given_one():
    rng = np.random.default_rng(1)
    walk = np.exp(np.cumsum(0.1 * rng.standard_normal(500)))[:, None] * 100
    noise = (100 + 10 * rng.standard_normal(500))[:, None]
    refit, fresh, given = make_forecaster("ewma"), make_forecaster("ewma"), make_forecaster("ewma", alpha=0.5)
    refit.fit(walk, 60.0)
    assert refit.alpha >= 0.7
    refit.fit(noise, 60.0)
    fresh.fit(noise, 60.0)
    assert refit.alpha == fresh.alpha <= 0.1
    given.fit(walk, 60.0)
    given.fit(noise, 60.0)
    assert given.alpha == 0.5


def test_kalman_follows_a_daily_cycle_better_than_last_value():
    x = daily_series(days=8, k=1, noise=0.02)
    kal, last = make_forecaster("kalman"), make_forecaster("last")
    kal.fit(x[:150], STEP_S)
    last.fit(x[:150], STEP_S)
    truth = x[150:156, 0]
    err_k = np.abs(kal.predict(x[:150], 6, 1, None).samples[0, :, 0] - truth).mean()
    err_l = np.abs(last.predict(x[:150], 6, 1, None).samples[0, :, 0] - truth).mean()
    assert err_k < 0.5 * err_l


def test_quantile_regression_80pct_intervals_cover_about_80pct_of_lognormal_noise():
    rng = np.random.default_rng(2)
    x = (200 * np.exp(0.2 * rng.standard_normal(1200)))[:, None]
    fc = make_forecaster("quantile", horizon=2, seasons=0)
    fc.fit(x[:900], 60.0)
    hits = []
    for t in range(900, 1190, 2):
        q = fc.quantiles(x[: t + 1], 2)
        lo, hi = q[fc.levels.tolist().index(0.1)], q[fc.levels.tolist().index(0.9)]
        hits.append((x[t + 1 : t + 3] >= lo) & (x[t + 1 : t + 3] <= hi))
    assert 0.72 <= np.mean(hits) <= 0.88


def test_quantile_regression_at_many_origins_matches_one_origin_at_a_time():
    x = daily_series(days=8)
    fc = make_forecaster("quantile", horizon=3)
    fc.fit(x[:150], STEP_S)
    origins = np.array([2, 60, 149, 170])  # before the daily windows exist, inside, at and past the fit end
    many = fc.quantiles_at(x[:180], origins)
    for i, t in enumerate(origins):
        np.testing.assert_allclose(many[:, i], fc.quantiles(x[: t + 1], 3))


def test_quantile_regression_update_is_the_same_row_by_row_or_in_one_block():
    x = daily_series(days=8)
    one, block = make_forecaster("quantile", horizon=3), make_forecaster("quantile", horizon=3)
    one.fit(x[:100], STEP_S)
    block.fit(x[:100], STEP_S)
    for r in range(100, 130):
        one.update(x[r : r + 1])
    block.update(x[100:130])  # a day (24 rows) in: one refit, on the first 124 rows
    assert one.fitted_rows == block.fitted_rows == 124
    np.testing.assert_array_equal(one.quantiles(x[:130], 3), block.quantiles(x[:130], 3))


def test_quantile_regression_keeps_and_refits_on_the_last_history_days():
    x = daily_series(days=8)
    fc = make_forecaster("quantile", horizon=3, history_days=3.0)  # 72 rows of 1 h
    fc.fit(x[:100], STEP_S)
    np.testing.assert_array_equal(fc.history, x[28:100])
    fc.update(x[100:130])  # refits after row 123, on rows 52..123; six rows since
    np.testing.assert_array_equal(fc.history, x[52:130])
    assert fc.fitted_rows == 72
    fresh = make_forecaster("quantile", horizon=3)
    fresh.fit(x[52:124], STEP_S)
    np.testing.assert_allclose(fc.quantiles(x[:130], 3), fresh.quantiles(x[:130], 3))


@pytest.mark.parametrize("name", ["last", "seasonal_naive", "ewma", "kalman", "quantile"])
def test_prediction_depends_only_on_the_history_passed(name):
    x = daily_series()
    fc = make_forecaster(name, **({"horizon": 2} if name == "quantile" else {}))
    fc.fit(x[:100], STEP_S)
    before = fc.predict(x[:120], 2, 8, np.random.default_rng(0)).samples
    fc.update(x[100:101])  # one row: below every refit period
    after = fc.predict(x[:120], 2, 8, np.random.default_rng(0)).samples
    np.testing.assert_allclose(before, after)


TINY_FLOW = dict(horizon=3, context=12, patch=6, seasons=1, pre=6, d_model=16, heads=2, layers=1, batch_size=16)


def built(name: str):
    """A forecaster of each kind, small where it has sizes."""
    return make_forecaster(name, **{"quantile": {"horizon": 3}, "flow": TINY_FLOW}.get(name, {}))


@pytest.mark.parametrize("name", ["last", "kalman", "quantile", "flow"])
@pytest.mark.parametrize(
    "bad, message",
    [
        (np.full((300, 2), np.nan), "NaN"),
        (-np.ones((300, 2)), "negative"),
        (np.ones(300), "shape"),
    ],
)
def test_bad_history_is_rejected_with_a_named_error(name, bad, message):
    with pytest.raises(ForecastInputError, match=message):
        built(name).fit(bad, STEP_S)


@pytest.mark.parametrize(
    "name, step_s",
    [(name, float("nan")) for name in ("last", "seasonal_naive", "ewma", "kalman", "quantile", "flow")]
    + [(name, float("inf")) for name in ("last", "seasonal_naive", "ewma")],  # the others need a season: inf has none
)
def test_fit_rejects_a_step_that_is_not_a_finite_number_of_seconds(name, step_s):
    with pytest.raises(ForecastInputError, match="step_s"):
        built(name).fit(daily_series(days=8), step_s)


@pytest.mark.parametrize("name", ["last", "seasonal_naive", "ewma", "kalman", "quantile"])
def test_update_before_fit_is_a_named_error(name):
    with pytest.raises(ForecastInputError, match=r"fit\(\) before update"):
        built(name).update(daily_series()[:2, :1])


@pytest.mark.parametrize(
    "name, kw, message",
    [
        ("quantile", {"context": 1}, "context must be an integer >= 2"),
        ("quantile", {"horizon": 0}, "horizon"),
        ("quantile", {"refit_every_s": 0.0}, "refit_every_s"),
        ("quantile", {"refit_every_s": float("nan")}, "refit_every_s"),
        ("quantile", {"history_days": 0.0}, "history_days"),
        ("ewma", {"alphas": ()}, "alphas"),
        ("ewma", {"alphas": (0.3, 1.5)}, "alphas"),
        ("quantile", {"levels": ()}, "levels"),
        ("kalman", {"harmonics": 0}, "harmonics must be an integer >= 1"),
        ("kalman", {"harmonics": 1.5}, "harmonics must be an integer >= 1"),
        ("kalman", {"window_days": float("nan")}, "window_days must be a finite number > 0"),
        ("kalman", {"season_s": 0.0}, "season_s must be a finite number > 0"),
        ("seasonal_naive", {"season_s": float("nan")}, "season_s must be a finite number of seconds > 0"),
    ],
)
def test_baseline_settings_out_of_range_are_a_named_error(name, kw, message):
    with pytest.raises(ForecastInputError, match=message):
        make_forecaster(name, **kw)


@pytest.mark.parametrize("name", ["last", "seasonal_naive", "kalman", "quantile"])
@pytest.mark.parametrize("step_s", ["600", None, True])
def test_fit_rejects_a_step_that_is_not_a_number(name, step_s):
    with pytest.raises(ForecastInputError, match="step_s must be a finite number of seconds"):
        built(name).fit(daily_series(days=3), step_s)


@pytest.mark.parametrize("name", ["last", "seasonal_naive", "kalman", "quantile"])
@pytest.mark.parametrize("horizon, n_samples", [(2.5, 1), (2, 1.0), (True, 1)])
def test_predict_rejects_a_horizon_or_sample_count_that_is_not_an_integer(name, horizon, n_samples):
    x = daily_series(days=3)
    fc = built(name)
    fc.fit(x, STEP_S)
    with pytest.raises(ForecastInputError, match="must be an integer"):
        fc.predict(x, horizon, n_samples, np.random.default_rng(0))


def test_quantile_at_steps_longer_than_a_day_over_its_horizon_drops_the_daily_lags_and_keeps_refitting():
    # Six-hour steps, horizon 6: yesterday's same time lies inside the forecast. Once a refit had the
    # rows for daily lags it raised, left its scale changed under the old coefficients and raised at every update.
    rng = np.random.default_rng(0)
    x = 100 * rng.lognormal(0, 0.1, (60, 1))
    fc = make_forecaster("quantile", levels=(0.1, 0.5, 0.9))
    fc.fit(x[:44], 21_600.0)
    for i in range(44, 60):
        fc.update(x[i : i + 1])
    assert fc.fitted_rows == 60  # refitted daily (every 4 rows), the last at row 60
    q = fc.quantiles(x, 6)
    assert np.isfinite(q).all() and (np.diff(q, axis=0) >= 0).all()


def test_predict_rejects_a_history_of_another_width_and_a_zero_horizon():
    x = daily_series()
    fc = make_forecaster("seasonal_naive")
    fc.fit(x, STEP_S)
    with pytest.raises(ForecastInputError, match="indicators"):
        fc.predict(x[:, :1], 2, 1, None)
    with pytest.raises(ForecastInputError, match="horizon"):
        fc.predict(x, 0, 1, None)


def test_quantile_rejects_a_horizon_beyond_the_trained_one():
    x = daily_series()
    fc = make_forecaster("quantile", horizon=2)
    fc.fit(x, STEP_S)
    with pytest.raises(ForecastInputError, match="exceeds"):
        fc.predict(x, 3, 4, np.random.default_rng(0))


def test_registry_builds_every_name_and_names_the_known_ones_on_a_typo():
    assert set(FORECASTERS) == {"last", "seasonal_naive", "ewma", "kalman", "quantile", "flow"}
    for name in FORECASTERS:
        assert make_forecaster(name).name == name
    with pytest.raises(ForecastInputError, match="seasonal_naive"):
        make_forecaster("seasonal-naive")

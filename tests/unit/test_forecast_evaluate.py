"""Scores: CRPS, pinball and coverage agree with their definitions; rolling evaluation never shows the future."""

from __future__ import annotations

import numpy as np
import pytest
import scoringrules as sr

from autoscaler.forecast import Forecast, ForecastInputError
from autoscaler.forecast.evaluate import covered, crps, pinball, rolling_evaluation


def test_crps_of_a_point_forecast_is_its_absolute_error():
    truth = np.array([[3.0, 10.0]])
    point = np.array([[[5.0, 7.0]]])
    np.testing.assert_allclose(crps(point, truth), [[2.0, 3.0]])


def test_crps_of_a_large_gaussian_ensemble_matches_the_closed_form():
    rng = np.random.default_rng(0)
    samples = rng.normal(1.0, 2.0, size=(20000, 1))
    np.testing.assert_allclose(crps(samples, np.array([0.3])), sr.crps_normal(0.3, 1.0, 2.0), rtol=0.02)


def test_the_fair_crps_of_small_ensembles_is_unbiased_where_the_empirical_one_pays_for_the_sample():
    # 16-member ensembles of N(1, 2) against 0.3, over 4,000 draws: qd's mean exceeds the closed form
    # by E|X - X'| / (2 m) = (2 sigma / sqrt(pi)) / 32; fair's does not.
    rng = np.random.default_rng(2)
    samples = rng.normal(1.0, 2.0, size=(16, 4000))
    truth = np.full(4000, 0.3)
    exact = float(sr.crps_normal(0.3, 1.0, 2.0))
    bias = 2 * 2.0 / np.sqrt(np.pi) / 32
    assert abs(crps(samples, truth, "fair").mean() - exact) < 0.02
    assert abs(crps(samples, truth).mean() - exact - bias) < 0.02
    point = np.array([[[5.0, 7.0]]])
    np.testing.assert_allclose(crps(point, np.array([[3.0, 10.0]]), "fair"), [[2.0, 3.0]])


def test_pinball_of_an_exact_degenerate_forecast_is_zero_and_grows_with_error():
    truth = np.array([4.0])
    assert pinball(np.full((10, 1), 4.0), truth)[0] == 0.0
    assert pinball(np.full((10, 1), 6.0), truth)[0] > pinball(np.full((10, 1), 5.0), truth)[0] > 0


def test_pinball_at_an_asymmetric_level_weighs_outcomes_above_the_quantile_by_the_level():
    samples = np.repeat(np.arange(11.0)[:, None], 2, axis=1)  # the 0.9 quantile of 0..10 is 9
    # Truth 3 lies 6 below it: (1 - 0.9) x 6 = 0.6; truth 10 lies 1 above: 0.9 x 1 = 0.9.
    np.testing.assert_allclose(pinball(samples, np.array([3.0, 10.0]), levels=(0.9,)), [0.6, 0.9])


def test_a_calibrated_ensemble_covers_its_nominal_level():
    rng = np.random.default_rng(1)
    samples = rng.normal(size=(4000, 2000))
    truth = rng.normal(size=2000)
    assert abs(covered(samples, truth, 0.8).mean() - 0.8) < 0.03
    assert abs(covered(samples, truth, 0.95).mean() - 0.95) < 0.02


class _Spy:
    """Records what it is shown; forecasts the last value."""

    name = "spy"

    def __init__(self):
        self.updates, self.lengths = [], []

    def fit(self, history, step_s):
        self.seen = history.shape[0]

    def update(self, new_rows):
        self.updates.append(new_rows.copy())
        self.seen += new_rows.shape[0]

    def predict(self, history, horizon, n_samples, rng):
        self.lengths.append(history.shape[0])
        assert history.shape[0] == self.seen  # updated up to the origin, not beyond
        return Forecast(np.repeat(history[-1:], horizon, axis=0)[None], ("x",), 1.0)


def test_rolling_evaluation_shows_each_origin_only_its_past_and_updates_in_order():
    series = np.arange(1.0, 41.0)[:, None]
    spy = _Spy()
    spy.fit(series[:20], 1.0)
    ev = rolling_evaluation(spy, series, 20, 3, 1, np.random.default_rng(0), stride=2)
    assert spy.lengths == [t + 1 for t in ev.origins]
    np.testing.assert_array_equal(np.concatenate(spy.updates)[:, 0], np.arange(21.0, ev.origins[-1] + 2))
    # last value forecast of a +1 ramp: error h at step h
    np.testing.assert_allclose(ev.crps[:, :, 0].mean(axis=0), [1.0, 2.0, 3.0])


def test_rolling_evaluation_scores_the_last_origin_with_a_full_window():
    series = np.arange(1.0, 41.0)[:, None]
    spy = _Spy()
    spy.fit(series[:37], 1.0)
    ev = rolling_evaluation(spy, series, 37, 3, 1, np.random.default_rng(0))  # origin row 36, targets 37-39
    assert list(ev.origins) == [36]
    np.testing.assert_allclose(ev.crps[0, :, 0], [1.0, 2.0, 3.0])
    with pytest.raises(ForecastInputError, match="leaves no held-out window"):
        rolling_evaluation(spy, series, 38, 3, 1, np.random.default_rng(0))


@pytest.mark.parametrize(
    "where, kw, message",
    [
        (38, {}, "NaN or infinite values .* first at row 38"),  # only ever truth: never passed to update
        (10, {}, "NaN or infinite values .* first at row 10"),  # in the fit part
        (None, {"stride": 0}, "stride must be >= 1"),
        (None, {"stride": -1}, "stride must be >= 1"),
        (None, {"horizon": 0}, "horizon must be >= 1"),
        (None, {"n_samples": 0}, "n_samples must be >= 1"),
    ],
)
def test_rolling_evaluation_rejects_bad_series_and_settings_with_a_named_error(where, kw, message):
    series = np.arange(1.0, 41.0)[:, None]
    if where is not None:
        series[where] = np.nan
    spy = _Spy()
    spy.fit(series[:20], 1.0)
    args = {"horizon": 3, "n_samples": 1, "stride": 1, **kw}
    with pytest.raises(ForecastInputError, match=message):
        rolling_evaluation(spy, series, 20, rng=np.random.default_rng(0), **args)

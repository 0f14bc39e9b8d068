"""Conformal spread calibration: intervals of a too-sharp or biased forecaster cover close to nominal, from past outcomes only."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.forecast import ForecastInputError
from autoscaler.forecast.calibration import conformal_factor, spread_scores, widen

LEVEL = 0.8
SIDE = (1 + LEVEL) / 2  # each side's bound


def band(samples: np.ndarray) -> tuple[np.ndarray, ...]:
    return tuple(np.quantile(samples, [(1 - LEVEL) / 2, 0.5, (1 + LEVEL) / 2], axis=0))


def coverage(samples: np.ndarray, truth: np.ndarray) -> float:
    lo, _, hi = band(samples)
    return float(((truth >= lo) & (truth <= hi)).mean())


@pytest.mark.parametrize("bias, scale", [(0.0, 2.5), (1.0, 1.5), (0.0, 0.4)])
def test_conformal_spread_brings_coverage_of_a_miscalibrated_forecast_close_to_nominal(bias, scale):
    # Forecasts N(0, 1) per cell for outcomes N(bias, scale): too sharp, biased, or too wide.
    rng = np.random.default_rng(0)
    past_samples, future_samples = rng.standard_normal((256, 400, 3)), rng.standard_normal((256, 4000, 3))
    past_truth = bias + scale * rng.standard_normal((400, 3))
    future_truth = bias + scale * rng.standard_normal((4000, 3))
    assert abs(coverage(future_samples, future_truth) - LEVEL) > 0.1
    factor = conformal_factor(np.moveaxis(spread_scores(*band(past_samples), past_truth), 0, 1), SIDE)
    assert abs(coverage(widen(future_samples, factor), future_truth) - LEVEL) < 0.03
    if bias:
        assert np.all(factor[1] > factor[0])  # only the side the outcomes lean to is widened more


def test_conformal_factor_is_the_finite_sample_quantile_and_skips_unobserved_outcomes():
    scores = np.arange(1.0, 11.0)[:, None]  # ten outcomes, one cell
    assert conformal_factor(scores, 0.8)[0] == 9.0  # ceil(11 * 0.8) = 9th smallest
    with_unknown = np.concatenate([scores, np.full((5, 1), np.nan)])
    assert conformal_factor(with_unknown, 0.8)[0] == 9.0
    with pytest.raises(ForecastInputError):
        conformal_factor(np.full((3, 1), np.nan), 0.8)


def test_spread_scores_are_within_a_factor_exactly_when_the_scaled_band_covers():
    rng = np.random.default_rng(1)
    samples, truth = rng.standard_normal((200, 50)), 2 * rng.standard_normal(50)
    c = np.array([1.3, 0.7])[:, None]
    lo, _, hi = band(widen(samples, c))
    below, above = spread_scores(*band(samples), truth)
    np.testing.assert_array_equal((truth >= lo) & (truth <= hi), (below <= c[0] + 1e-12) & (above <= c[1] + 1e-12))


def test_widen_keeps_each_cells_median_and_sample_order():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((101, 4))
    out = widen(samples, np.array([[2.0] * 4, [0.5] * 4]))
    np.testing.assert_allclose(np.median(out, axis=0), np.median(samples, axis=0))
    np.testing.assert_array_equal(np.argsort(out, axis=0), np.argsort(samples, axis=0))

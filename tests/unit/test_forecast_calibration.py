"""Conformal tail calibration: tails of a too-sharp or biased forecaster cover close to nominal, from past
outcomes only, while the centre of its samples stays as drawn."""

from __future__ import annotations

import numpy as np
import pytest

from autoscaler.forecast import ForecastInputError
from autoscaler.forecast.calibration import (
    band_levels,
    conformal_factor,
    spread_scores,
    stretch_tails,
    tail_factors,
    tail_levels,
    tail_scores,
)

LEVEL, KNOTS = 0.8, 4
LEVELS = tail_levels(LEVEL, KNOTS)
INNER = 0.125


def band(samples: np.ndarray, level: float = LEVEL) -> tuple[np.ndarray, ...]:
    return tuple(np.quantile(samples, [(1 - level) / 2, 0.5, (1 + level) / 2], axis=0))


def coverage(samples: np.ndarray, truth: np.ndarray, level: float = LEVEL) -> float:
    lo, _, hi = band(samples, level)
    return float(((truth >= lo) & (truth <= hi)).mean())


def test_tail_levels_run_evenly_out_to_the_central_intervals_ends():
    np.testing.assert_allclose(LEVELS, [0.025, 0.05, 0.075, 0.1])
    np.testing.assert_allclose(band_levels(LEVEL, KNOTS), [0.025, 0.05, 0.075, 0.1, 0.5, 0.9, 0.925, 0.95, 0.975])
    with pytest.raises(ForecastInputError):
        tail_levels(1.2, 4)


@pytest.mark.parametrize("bias, scale", [(0.0, 2.5), (1.0, 1.5)])
def test_tail_factors_bring_80_and_95_coverage_of_a_too_sharp_forecast_close_to_nominal(bias, scale):
    # Forecasts N(0, 1) per cell for outcomes N(bias, scale): too sharp, or biased and too sharp.
    rng = np.random.default_rng(0)
    past_samples, future_samples = rng.standard_normal((256, 400, 3)), rng.standard_normal((256, 4000, 3))
    past_truth = bias + scale * rng.standard_normal((400, 3))
    future_truth = bias + scale * rng.standard_normal((4000, 3))
    assert abs(coverage(future_samples, future_truth) - LEVEL) > 0.1
    bands = np.moveaxis(np.quantile(past_samples, band_levels(LEVEL, KNOTS), axis=0), 0, 1)  # [N, 2L+1, 3]
    factor = tail_factors(tail_scores(bands, past_truth), LEVELS)  # [2, L, 3]
    out = np.stack([stretch_tails(future_samples[:, i], LEVELS, factor, INNER) for i in range(4000)], axis=1)
    assert abs(coverage(out, future_truth) - LEVEL) < 0.03
    assert abs(coverage(out, future_truth, 0.95) - 0.95) < 0.03
    if bias:
        assert np.all(factor[1] > factor[0])  # the side the outcomes lean to is stretched more


def test_tail_factors_never_thin_the_tails_of_a_too_wide_forecast():
    rng = np.random.default_rng(3)
    samples, truth = rng.standard_normal((256, 400, 2)), 0.3 * rng.standard_normal((400, 2))
    bands = np.moveaxis(np.quantile(samples, band_levels(LEVEL, KNOTS), axis=0), 0, 1)
    np.testing.assert_array_equal(tail_factors(tail_scores(bands, truth), LEVELS), 1.0)


def test_stretch_tails_moves_each_tail_quantile_to_its_factor_and_keeps_the_centre_and_order():
    rng = np.random.default_rng(2)
    samples = rng.standard_normal((401, 3))  # every knot's quantile is one sample: p * 400 is whole
    factor = np.stack([np.linspace(3.0, 2.0, 4), np.linspace(1.5, 1.2, 4)])[:, :, None].repeat(3, axis=2)
    out = stretch_tails(samples, LEVELS, factor, INNER)
    med = np.median(samples, axis=0)
    for i, p in enumerate(LEVELS):
        np.testing.assert_allclose(np.quantile(out, p, axis=0), med + factor[0, i] * (np.quantile(samples, p, axis=0) - med))
        np.testing.assert_allclose(np.quantile(out, 1 - p, axis=0), med + factor[1, i] * (np.quantile(samples, 1 - p, axis=0) - med))
    lo, hi = np.quantile(samples, [INNER, 1 - INNER], axis=0)
    centre = (samples >= lo) & (samples <= hi)
    np.testing.assert_allclose(out[centre], samples[centre])
    np.testing.assert_array_equal(np.argsort(out, axis=0), np.argsort(samples, axis=0))


def test_stretch_tails_with_unit_factors_is_the_identity():
    samples = np.random.default_rng(4).standard_normal((128, 6, 2))
    np.testing.assert_allclose(stretch_tails(samples, LEVELS, np.ones((2, 4, 6, 2)), INNER), samples)


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
    lo, med, hi = band(samples)
    c = (1.3, 0.7)
    below, above = spread_scores(lo, med, hi, truth)
    covers = (truth >= med - c[0] * (med - lo)) & (truth <= med + c[1] * (hi - med))
    np.testing.assert_array_equal(covers, (below <= c[0] + 1e-12) & (above <= c[1] + 1e-12))

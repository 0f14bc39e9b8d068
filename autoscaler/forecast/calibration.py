"""Conformal tail calibration: stretch the tails of predictive samples, keep their centre as drawn.

A model fitted on a few days has tails too thin when volatility shifts (ServeGen's
held-out days drop, then surge). For each tail level ``p`` (a few levels out to the
ends of the central interval, e.g. 2.5-10% and 90-97.5%), each (step, indicator)'s
sample quantile is moved away from the median by the conformal quantile of normalised
errors on recent windows whose outcomes are already known, so that it would have had
its nominal share of outcomes beyond it there (split conformal prediction, Vovk et al.
2005, with a score per side as in conformalized quantile regression, Romano et al.
2019, here per level). Samples inside the central interval are left as the model drew
them: scaling a whole side to reach coverage also widens the centre, which CRPS
penalises (on ServeGen's development split it cost 2-10% CRPS). Recomputed on a
trailing window as outcomes arrive, the factors follow drift (a fixed-window cousin of
adaptive conformal inference, Gibbs & Candes 2021).
"""

from __future__ import annotations

import numpy as np

from .base import ForecastInputError


def tail_levels(level: float, knots: int) -> np.ndarray:
    """The lower-tail levels calibrated for a central ``level`` interval: ``knots`` evenly spaced
    levels up to ``(1 - level) / 2`` (0.8, 4 -> 0.025, 0.05, 0.075, 0.1); mirrored above the median."""
    if not 0 < level < 1 or knots < 1:
        raise ForecastInputError(f"tail calibration needs 0 < level < 1 and knots >= 1, got {level}, {knots}")
    return (1 - level) / 2 * np.arange(1, knots + 1) / knots


def band_levels(level: float, knots: int) -> np.ndarray:
    """Levels of a recorded band, ascending: the lower tail levels, the median, the upper ones (``2 knots + 1``)."""
    low = tail_levels(level, knots)
    return np.concatenate([low, [0.5], 1 - low[::-1]])


def spread_scores(lo: np.ndarray, med: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Normalised errors ``[2, ...]`` (below, above the median) of ``truth`` against a band (arrays that broadcast).

    Row 0: how far ``truth`` lies below the median in units of ``med - lo`` (0 if above); row 1:
    above, in units of ``hi - med``. ``truth`` lies inside the band with its lower side scaled by
    ``c0`` and its upper side by ``c1`` exactly when both scores are within them. Two sides, so a
    forecast biased one way is widened on that side only. NaN truth gives NaN.
    """
    below = np.maximum(med - truth, 0) / np.maximum(med - lo, 1e-9)
    above = np.maximum(truth - med, 0) / np.maximum(hi - med, 1e-9)
    return np.stack([below, above])


def conformal_factor(scores: np.ndarray, level: float, bounds: tuple[float, float] = (0.2, 10.0)) -> np.ndarray:
    """Per-cell scale ``[...]`` from ``scores [N, ...]``: the finite-sample conformal ``level`` quantile,
    the ``ceil((n + 1) level)``-th smallest of a cell's ``n`` scores (NaN: outcome not observed yet, skipped).

    Bounded so that a few calm (or wild) windows cannot collapse (or explode) the spread.
    """
    n = np.sum(~np.isnan(scores), axis=0)
    if not 0 < level < 1 or np.any(n < 1):
        raise ForecastInputError("conformal calibration needs a score in every cell and 0 < level < 1")
    k = np.minimum(np.ceil((n + 1) * level).astype(int), n) - 1
    q = np.take_along_axis(np.sort(scores, axis=0), k[None], axis=0)[0]
    return np.clip(q, *bounds)


def tail_scores(bands: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Scores ``[N, 2, L, ...]`` (below / above, tail level) of ``truth [N, ...]`` against recorded bands.

    ``bands [N, 2L+1, ...]``: quantiles at :func:`band_levels` (lower tail, median, upper tail), so
    band ``i`` and ``2L - i`` are one level's pair. NaN truth (not observed yet) gives NaN.
    """
    n_lv = (bands.shape[1] - 1) // 2
    med = bands[:, n_lv]
    scores = [spread_scores(bands[:, i], med, bands[:, 2 * n_lv - i], truth) for i in range(n_lv)]
    return np.moveaxis(np.stack(scores, axis=1), 2, 0)


def tail_factors(scores: np.ndarray, levels: np.ndarray, max_factor: float = 10.0) -> np.ndarray:
    """How far to stretch each tail: ``[2, L, ...]`` (below / above, ``levels`` order) from :func:`tail_scores`.

    The factor of level ``p`` is the conformal ``1 - p`` quantile of its scores, at least 1: the
    tails are only ever stretched, because one day's outcomes are too few to trust a thinner tail
    than the model's.
    """
    out = np.empty(scores.shape[1:])
    for i, p in enumerate(levels):
        out[:, i] = conformal_factor(scores[:, :, i], 1 - p, bounds=(1.0, max_factor))
    return out


def stretch_tails(samples: np.ndarray, levels: np.ndarray, factor: np.ndarray, inner: float) -> np.ndarray:
    """Samples ``[S, ...]`` with each cell's tails stretched away from its median; order is kept.

    A monotone piecewise-linear map per cell: the sample quantile at tail level ``p`` (``levels``,
    ascending, below 0.5) moves to ``med + factor[0, i] * (q_p - med)``, the one at ``1 - p`` to
    ``med + factor[1, i] * (q_{1-p} - med)``; the quantiles at ``inner`` and ``1 - inner`` and all samples
    between them stay; beyond the outermost level the map continues with the outermost factor's slope.
    ``factor [2, L, ...]`` must be >= 1 (knots are sorted otherwise, so the map stays monotone).
    """
    levels = np.asarray(levels)
    if not np.all(np.diff(levels) > 0) or not levels[-1] < inner < 0.5:
        raise ForecastInputError(f"tail levels {levels} must increase and lie below inner {inner} < 0.5")
    knots = np.concatenate([levels, [inner, 0.5, 1 - inner], 1 - levels[::-1]])
    flat = samples.reshape(samples.shape[0], -1)
    q = np.quantile(flat, knots, axis=0)  # [2L+3, cells]
    med = q[len(levels) + 1]
    c = np.concatenate([factor[0].reshape(len(levels), -1), np.ones((3, flat.shape[1])),
                        factor[1].reshape(len(levels), -1)[::-1]])
    target = np.sort(med + c * (q - med), axis=0)
    out = np.empty_like(flat)
    for j in range(flat.shape[1]):
        x = flat[:, j]
        y = np.interp(x, q[:, j], target[:, j])
        lo, hi = x < q[0, j], x > q[-1, j]
        y[lo] = target[0, j] + c[0, j] * (x[lo] - q[0, j])
        y[hi] = target[-1, j] + c[-1, j] * (x[hi] - q[-1, j])
        out[:, j] = y
    return out.reshape(samples.shape)

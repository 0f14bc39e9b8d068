"""Conformal spread calibration: widen or narrow predictive samples around their median.

A model fitted on a few days is too sharp when volatility shifts (ServeGen's held-out
days drop, then surge). Each (step, indicator) is scaled around its median by the
conformal quantile of normalised errors on recent windows whose outcomes are already
known, so the central interval would have covered its nominal share there (split
conformal prediction, Vovk et al. 2005, with a score per side as in conformalized
quantile regression, Romano et al. 2019). Recomputed on a trailing window as outcomes
arrive, it follows drift (a fixed-window cousin of adaptive conformal inference,
Gibbs & Candes 2021).
"""

from __future__ import annotations

import numpy as np

from .base import ForecastInputError


def spread_scores(lo: np.ndarray, med: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Normalised errors ``[2, ...]`` (below, above the median) of ``truth`` against a band (arrays of one shape).

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


def widen(samples: np.ndarray, factor: np.ndarray) -> np.ndarray:
    """Samples ``[S, ...]`` moved away from (factor > 1) or towards (< 1) their per-cell median,
    those below it by ``factor[0]``, those above by ``factor[1]`` (``factor [2, ...]``); order is kept.
    """
    med = np.median(samples, axis=0)
    return med + np.where(samples >= med, factor[1], factor[0]) * (samples - med)


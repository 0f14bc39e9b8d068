"""Scoring predictive distributions on held-out data: CRPS, pinball loss, interval coverage, latency.

``rolling_evaluation`` replays a series origin by origin: at origin ``t`` the
forecaster sees rows ``0..t`` only, is scored against ``t+1..t+horizon``, and
then receives the next rows through ``update`` (online learning from the past,
never from the future it is judged on).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import scoringrules as sr

from .base import Forecaster, ForecastInputError, check_request

PINBALL_LEVELS = (0.025, 0.1, 0.25, 0.5, 0.75, 0.9, 0.975)


def crps(samples: np.ndarray, truth: np.ndarray, estimator: str = "qd") -> np.ndarray:
    """CRPS of an ensemble ``[S, ...]`` against ``truth [...]``.

    ``qd`` (scoringrules' quantile decomposition, the benchmark's score): the CRPS of the empirical
    distribution of the ``S`` samples; for one sample the absolute error, so point forecasts are
    scored on the same scale. ``fair``: the unbiased estimate of the CRPS of the distribution the
    samples are drawn from (Ferro 2014). ``qd`` exceeds it by ``E|X - X'| / (2 S)``, so at a fixed
    ``S`` a wider forecast pays more for its finite sample. A point forecast is its own distribution:
    its ``fair`` score is its absolute error too.
    """
    if estimator == "fair" and samples.shape[0] == 1:
        estimator = "qd"
    return np.asarray(sr.crps_ensemble(truth, samples, m_axis=0, estimator=estimator))


def pinball(samples: np.ndarray, truth: np.ndarray, levels: tuple[float, ...] = PINBALL_LEVELS) -> np.ndarray:
    """Mean pinball (quantile) loss (``scoringrules.quantile_score``) over ``levels`` of the ensemble's
    empirical quantiles, shape of ``truth``."""
    q = np.quantile(samples, levels, axis=0)
    lv = np.asarray(levels).reshape(-1, *([1] * truth.ndim))
    return np.asarray(sr.quantile_score(truth[None], q, lv)).mean(axis=0)


def covered(samples: np.ndarray, truth: np.ndarray, level: float) -> np.ndarray:
    """Whether ``truth`` lies in the central ``level`` interval of the ensemble (boolean, shape of ``truth``)."""
    lo, hi = np.quantile(samples, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return (truth >= lo) & (truth <= hi)


@dataclass
class Evaluation:
    """Per-origin scores ``[N, horizon, K]`` of one forecaster and its predict latencies (s)."""

    name: str
    crps: np.ndarray
    crps_fair: np.ndarray
    pinball: np.ndarray
    cover80: np.ndarray
    cover95: np.ndarray
    latency_s: np.ndarray
    origins: np.ndarray
    median: np.ndarray
    lo80: np.ndarray
    hi80: np.ndarray

    def summary(self, indicator: int = 0) -> dict:
        """Means over origins for one indicator: overall and per horizon step, plus latency percentiles."""
        k = indicator
        return {
            "crps": float(self.crps[:, :, k].mean()),
            "crps_per_step": self.crps[:, :, k].mean(axis=0).tolist(),
            "crps_fair": float(self.crps_fair[:, :, k].mean()),
            "pinball": float(self.pinball[:, :, k].mean()),
            "coverage_80": float(self.cover80[:, :, k].mean()),
            "coverage_95": float(self.cover95[:, :, k].mean()),
            "latency_p50_ms": float(np.percentile(self.latency_s, 50) * 1e3),
            "latency_p99_ms": float(np.percentile(self.latency_s, 99) * 1e3),
            "origins": int(len(self.origins)),
        }


def rolling_evaluation(
    forecaster: Forecaster,
    series: np.ndarray,
    start: int,
    horizon: int,
    n_samples: int,
    rng: np.random.Generator,
    stride: int = 1,
    progress=None,
) -> Evaluation:
    """Score ``forecaster`` (already fitted on ``series[:start]``) at origins ``start-1, start-1+stride, ...``.

    ``progress`` is an optional callable ``(done, total)`` for a progress bar. Raises
    ``ForecastInputError`` for a series that is not ``[T, K]`` or holds NaN or infinite values, a
    ``horizon``, ``n_samples`` or ``stride`` below 1, or a ``start`` that leaves no held-out window.
    """
    series = np.asarray(series, dtype=np.float64)
    if series.ndim != 2:
        raise ForecastInputError(f"series must be [T, n_indicators], got shape {series.shape}")
    bad = np.flatnonzero(~np.isfinite(series).all(axis=1))
    if bad.size:
        raise ForecastInputError(f"series has NaN or infinite values ({bad.size} rows, the first at row {bad[0]})")
    check_request(horizon, n_samples)
    if stride < 1:
        raise ForecastInputError(f"stride must be >= 1, got {stride}")
    if not 0 < start <= series.shape[0] - horizon:
        raise ForecastInputError(f"start {start} leaves no held-out window of {horizon} steps in {series.shape[0]} rows")
    origins = np.arange(start - 1, series.shape[0] - horizon, stride)
    n, k = len(origins), series.shape[1]
    out = {key: np.zeros((n, horizon, k)) for key in ("crps", "crps_fair", "pinball", "median", "lo80", "hi80")}
    cov80, cov95 = np.zeros((n, horizon, k), bool), np.zeros((n, horizon, k), bool)
    latency = np.zeros(n)
    seen = start
    for i, t in enumerate(origins):
        if t + 1 > seen:
            forecaster.update(series[seen : t + 1])
            seen = t + 1
        history = series[: t + 1]
        t0 = time.perf_counter()
        fc = forecaster.predict(history, horizon, n_samples, rng)
        latency[i] = time.perf_counter() - t0
        truth = series[t + 1 : t + 1 + horizon]
        out["crps"][i] = crps(fc.samples, truth)
        out["crps_fair"][i] = crps(fc.samples, truth, "fair")
        out["pinball"][i] = pinball(fc.samples, truth)
        cov80[i], cov95[i] = covered(fc.samples, truth, 0.8), covered(fc.samples, truth, 0.95)
        out["median"][i] = np.median(fc.samples, axis=0)
        out["lo80"][i], out["hi80"][i] = np.quantile(fc.samples, [0.1, 0.9], axis=0)
        if progress is not None:
            progress(i + 1, n)
    return Evaluation(
        name=forecaster.name,
        crps=out["crps"],
        crps_fair=out["crps_fair"],
        pinball=out["pinball"],
        cover80=cov80,
        cover95=cov95,
        latency_s=latency,
        origins=origins,
        median=out["median"],
        lo80=out["lo80"],
        hi80=out["hi80"],
    )

"""The forecaster interface: history of indicators in, a predictive distribution out.

Every forecaster, baseline or flow, returns samples of the future so the decision
can integrate over them; point forecasters return one degenerate sample.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Forecast:
    """Predictive samples, shape ``[n_samples, horizon, n_indicators]``, for named indicators."""

    samples: np.ndarray
    indicators: tuple[str, ...]
    step_s: float
    start_s: float | None = None  # when the first step began (a clock time); None: it begins now

    def quantile(self, q: float | np.ndarray) -> np.ndarray:
        """Per-step, per-indicator quantile(s): shape ``[horizon, n_indicators]`` (or ``[len(q), ...]``)."""
        return np.quantile(self.samples, q, axis=0)


@runtime_checkable
class Forecaster(Protocol):
    """A forecaster over multi-indicator history sampled every ``step_s`` seconds.

    ``history`` is ``[T, n_indicators]``, oldest first, non-negative rates. ``predict``
    must use nothing but ``history`` (and what ``fit``/``update`` saw): never the future. One built
    for a fixed number of steps ahead (quantile regression, the flow) says how many as ``horizon``.
    """

    name: str

    def fit(self, history: np.ndarray, step_s: float) -> None: ...

    def update(self, new_rows: np.ndarray) -> None: ...

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast: ...


class ForecastInputError(ValueError):
    """History, horizon or sample count a forecaster cannot use (wrong shape, negative, NaN, too short)."""


def check_history(history: np.ndarray, n_indicators: int | None = None, min_rows: int = 1) -> np.ndarray:
    """Return ``history`` as float64 ``[T, K]`` or raise ``ForecastInputError`` naming the problem."""
    arr = np.asarray(history, dtype=np.float64)
    if arr.ndim != 2:
        raise ForecastInputError(f"history must be [T, n_indicators], got shape {arr.shape}")
    if n_indicators is not None and arr.shape[1] != n_indicators:
        raise ForecastInputError(f"history has {arr.shape[1]} indicators, the forecaster was fitted on {n_indicators}")
    if arr.shape[0] < min_rows:
        raise ForecastInputError(f"history has {arr.shape[0]} rows, needs at least {min_rows}")
    if not np.all(np.isfinite(arr)):
        raise ForecastInputError("history contains NaN or infinite values")
    if np.any(arr < 0):
        raise ForecastInputError("history contains negative rates")
    return arr


def check_positive(name: str, value: float, unit: str = "") -> float:
    """Return ``value`` as a float or raise ``ForecastInputError`` naming ``name`` unless it is a finite number > 0."""
    if not (isinstance(value, numbers.Real) and not isinstance(value, bool) and np.isfinite(value) and value > 0):
        raise ForecastInputError(f"{name} must be a finite number{unit} > 0, got {value!r}")
    return float(value)


def check_step_s(step_s: float) -> float:
    """Return ``step_s`` as a float or raise ``ForecastInputError`` unless it is a finite number of seconds > 0."""
    return check_positive("step_s", step_s, " of seconds")


def check_request(horizon: int, n_samples: int, max_horizon: int | None = None) -> None:
    """Raise ``ForecastInputError`` for a horizon or sample count that is not a positive integer, or a horizon
    beyond what was trained."""
    for name, value in (("horizon", horizon), ("n_samples", n_samples)):
        if not isinstance(value, numbers.Integral) or isinstance(value, bool):
            raise ForecastInputError(f"{name} must be an integer, got {value!r}")
    if horizon < 1:
        raise ForecastInputError(f"horizon must be >= 1, got {horizon}")
    if n_samples < 1:
        raise ForecastInputError(f"n_samples must be >= 1, got {n_samples}")
    if max_horizon is not None and horizon > max_horizon:
        raise ForecastInputError(f"horizon {horizon} exceeds the {max_horizon} steps this forecaster was built for")


def indicator_names(names: tuple[str, ...] | None, n_indicators: int) -> tuple[str, ...]:
    """Names given at construction, checked against the fitted width, or ``x0..x{K-1}``."""
    if names is None:
        return tuple(f"x{i}" for i in range(n_indicators))
    if len(names) != n_indicators:
        raise ForecastInputError(f"{len(names)} indicator names for {n_indicators} indicators")
    return tuple(names)

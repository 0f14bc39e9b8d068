"""The forecaster interface: history of indicators in, a predictive distribution out.

Every forecaster, baseline or flow, returns samples of the future so the decision
can integrate over them; point forecasters return one degenerate sample.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Forecast:
    """Predictive samples, shape ``[n_samples, horizon, n_indicators]``, for named indicators."""

    samples: np.ndarray
    indicators: tuple[str, ...]
    step_s: float

    def quantile(self, q: float | np.ndarray) -> np.ndarray:
        """Per-step, per-indicator quantile(s): shape ``[horizon, n_indicators]`` (or ``[len(q), ...]``)."""
        return np.quantile(self.samples, q, axis=0)

    def mean(self) -> np.ndarray:
        return self.samples.mean(axis=0)


@runtime_checkable
class Forecaster(Protocol):
    """A forecaster over multi-indicator history sampled every ``step_s`` seconds.

    ``history`` is ``[T, n_indicators]``, oldest first, non-negative rates. ``predict``
    must use nothing but ``history`` (and what ``fit``/``update`` saw): never the future.
    """

    name: str

    def fit(self, history: np.ndarray, step_s: float) -> None: ...

    def update(self, new_rows: np.ndarray) -> None: ...

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast: ...

"""Point baselines an operator would try first: last value, daily seasonal naive, EWMA.

Each returns one degenerate sample (``samples.shape[0] == 1``), so its CRPS is its
absolute error and its intervals have zero width.
"""

from __future__ import annotations

import numpy as np

from .base import (Forecast, ForecastInputError, check_history, check_positive, check_request, check_step_s,
                   indicator_names)

DAY_S = 86_400.0


def season_steps(step_s: float, season_s: float = DAY_S) -> int:
    """Steps per season (a day by default); ``step_s`` must divide into it at least once."""
    check_step_s(step_s)
    steps = int(round(season_s / step_s))
    if steps < 1:
        raise ForecastInputError(f"step_s {step_s} is longer than the season {season_s} s")
    return steps


class _PointForecaster:
    """Shared bookkeeping: remembers ``step_s`` and the number of indicators from ``fit``."""

    name = "point"

    def __init__(self, indicators: tuple[str, ...] | None = None) -> None:
        self.step_s: float | None = None
        self.n_indicators: int | None = None
        self.indicators = indicators

    def fit(self, history: np.ndarray, step_s: float) -> None:
        arr = check_history(history)
        self.step_s, self.n_indicators = check_step_s(step_s), arr.shape[1]
        self.indicators = indicator_names(self.indicators, arr.shape[1])
        self._fit(arr)

    def _fit(self, history: np.ndarray) -> None:
        """Baselines without parameters learn nothing."""

    def update(self, new_rows: np.ndarray) -> None:
        """Point baselines read everything they need from ``history`` at predict time."""
        if self.step_s is None:
            raise ForecastInputError(f"{self.name}: call fit() before update()")
        check_history(new_rows, self.n_indicators, min_rows=0)

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast:
        if self.step_s is None:
            raise ForecastInputError(f"{self.name}: call fit() before predict()")
        arr = check_history(history, self.n_indicators)
        check_request(horizon, n_samples)
        point = self._point(arr, horizon)
        return Forecast(samples=point[None], indicators=self.indicators, step_s=self.step_s)

    def _point(self, history: np.ndarray, horizon: int) -> np.ndarray:
        raise NotImplementedError


class LastValue(_PointForecaster):
    """Tomorrow looks like now: the last row repeated over the horizon."""

    name = "last"

    def _point(self, history: np.ndarray, horizon: int) -> np.ndarray:
        return np.repeat(history[-1:], horizon, axis=0)


class SeasonalNaive(_PointForecaster):
    """The value one season (a day) earlier; falls back to the last value while history is shorter than a season."""

    name = "seasonal_naive"

    def __init__(self, season_s: float = DAY_S, indicators: tuple[str, ...] | None = None) -> None:
        super().__init__(indicators)
        check_positive("season_s", season_s, " of seconds")
        self.season_s = season_s

    def _point(self, history: np.ndarray, horizon: int) -> np.ndarray:
        period = season_steps(self.step_s, self.season_s)
        t = history.shape[0] - 1
        if t + 1 - period < 0:
            return np.repeat(history[-1:], horizon, axis=0)
        h = np.arange(1, horizon + 1)
        idx = t + h - period * np.ceil(h / period).astype(int)
        return history[idx]


class EWMA(_PointForecaster):
    """Exponentially weighted level, flat over the horizon.

    ``alpha`` (the one in use) is the constructor's if given, else picked from ``alphas`` at every
    ``fit`` by 1-step error on that fit's history (0.3 on fewer than 3 rows).
    """

    name = "ewma"

    def __init__(
        self,
        alpha: float | None = None,
        alphas: tuple[float, ...] = (0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 0.9),
        indicators: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(indicators)
        if alpha is not None and not 0 < alpha <= 1:
            raise ForecastInputError(f"alpha must be in (0, 1], got {alpha}")
        if not alphas or not all(0 < a <= 1 for a in alphas):
            raise ForecastInputError(f"alphas must be one or more values in (0, 1], got {alphas}")
        self._given_alpha, self._alphas = alpha, alphas
        self.alpha: float | None = alpha

    @staticmethod
    def _levels(history: np.ndarray, alpha: float) -> np.ndarray:
        levels = np.empty_like(history)
        level = history[0]
        for i, row in enumerate(history):
            level = alpha * row + (1 - alpha) * level
            levels[i] = level
        return levels

    def _fit(self, history: np.ndarray) -> None:
        if self._given_alpha is not None or history.shape[0] < 3:
            self.alpha = self._given_alpha or 0.3
            return
        errors = [np.abs(self._levels(history[:-1], a) - history[1:]).mean() for a in self._alphas]
        self.alpha = float(self._alphas[int(np.argmin(errors))])

    def _point(self, history: np.ndarray, horizon: int) -> np.ndarray:
        # Weights beyond ~ln(1e-6)/ln(1-alpha) rows are negligible: bound the work per call.
        span = min(history.shape[0], int(np.ceil(np.log(1e-6) / np.log(max(1 - self.alpha, 1e-9)))) + 1)
        level = self._levels(history[-span:], self.alpha)[-1]
        return np.repeat(level[None], horizon, axis=0)

"""A Kalman-filter point forecaster, the kind NVIDIA Dynamo's planner uses to predict load.

Per indicator, a local level plus daily Fourier seasonality (statsmodels
``UnobservedComponents``) on the log scale; parameters come from ``fit`` by
maximum likelihood, and each ``predict`` filters the given history's last
``window`` rows with them (the last value while fewer rows exist). Point
only: one degenerate sample.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from statsmodels.tsa.statespace.structural import UnobservedComponents

from .base import Forecast, ForecastInputError, check_history, check_positive, check_request, indicator_names
from .features import LogScale
from .naive import DAY_S, season_steps


class KalmanForecaster:
    name = "kalman"

    def __init__(
        self,
        harmonics: int = 3,
        window_days: float = 3.0,
        season_s: float = DAY_S,
        indicators: tuple[str, ...] | None = None,
    ) -> None:
        if not isinstance(harmonics, numbers.Integral) or isinstance(harmonics, bool) or harmonics < 1:
            raise ForecastInputError(f"harmonics must be an integer >= 1, got {harmonics!r}")
        check_positive("window_days", window_days)
        check_positive("season_s", season_s)
        self.harmonics, self.window_days, self.season_s = harmonics, window_days, season_s
        self.indicators = indicators
        self.step_s: float | None = None
        self._results: list = []
        self._scale: LogScale | None = None
        self._window = 0

    def _model(self, endog: np.ndarray, period: int) -> UnobservedComponents:
        seasonal = [{"period": period, "harmonics": self.harmonics}] if endog.shape[0] >= 2 * period else None
        return UnobservedComponents(endog, level="llevel", freq_seasonal=seasonal)

    def fit(self, history: np.ndarray, step_s: float) -> None:
        arr = check_history(history, min_rows=8)
        period = season_steps(step_s, self.season_s)
        self.step_s, self.indicators = float(step_s), indicator_names(self.indicators, arr.shape[1])
        self._scale = LogScale.fit(arr)
        z = self._scale.to_log(arr)
        # Filter over enough rows that the seasonal states settle, but bounded per call.
        self._window = max(int(self.window_days * period), 2 * period) if arr.shape[0] >= 2 * period else arr.shape[0]
        self._results = []
        for k in range(arr.shape[1]):
            with warnings.catch_warnings():
                # MLE on short, noisy series often warns about convergence; the fit is still usable.
                warnings.simplefilter("ignore")
                self._results.append(self._model(z[:, k], period).fit(disp=False, maxiter=200))

    def update(self, new_rows: np.ndarray) -> None:
        """Parameters stay those of ``fit``; the state is re-filtered from ``history`` at every predict."""
        if self._scale is None:
            raise ForecastInputError("kalman: call fit() before update()")
        check_history(new_rows, len(self.indicators), min_rows=0)

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast:
        if self._scale is None:
            raise ForecastInputError("kalman: call fit() before predict()")
        arr = check_history(history, len(self.indicators))
        check_request(horizon, n_samples)
        z = self._scale.to_log(arr[-self._window :])
        if z.shape[0] < self._window:
            # Too few rows to settle the seasonal states (the forecast diverges): hold the last value.
            return Forecast(samples=np.repeat(arr[-1:], horizon, axis=0)[None], indicators=self.indicators, step_s=self.step_s)
        out = np.empty((horizon, arr.shape[1]))
        for k, res in enumerate(self._results):
            out[:, k] = res.apply(z[:, k]).forecast(horizon)
        return Forecast(samples=self._scale.from_log(out)[None], indicators=self.indicators, step_s=self.step_s)

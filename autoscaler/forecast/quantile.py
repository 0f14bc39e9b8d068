"""Quantile-regression baseline: linear quantile regression per horizon step and indicator.

For each (step h, indicator k, level q) a statsmodels ``QuantReg`` maps a few
lagged log features (level, last change, recent mean, same time on earlier
days) to the q-quantile of ``z[t+h] - z[t]``. It is marginal: samples draw each
(h, k) independently by inverting the interpolated quantile function. Refitted
every ``refit_every_s`` of new data on the last ``history_days`` seen (the rows kept).
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from statsmodels.regression.quantile_regression import QuantReg

from .base import Forecast, ForecastInputError, check_history, check_positive, check_request, indicator_names
from .features import LogScale, WindowSpec
from .naive import DAY_S, season_steps

LEVELS = (0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.975, 0.99)


class QuantileRegression:
    name = "quantile"

    def __init__(
        self,
        horizon: int = 6,
        context: int = 6,
        seasons: int = 2,
        refit_every_s: float = DAY_S,
        levels: tuple[float, ...] = LEVELS,
        indicators: tuple[str, ...] | None = None,
        history_days: float = 28.0,
    ) -> None:
        if not levels or not all(0 < q < 1 for q in levels) or list(levels) != sorted(levels):
            raise ForecastInputError(f"levels must be increasing in (0, 1), got {levels}")
        for name, value, least in (("horizon", horizon, 1), ("context", context, 2), ("seasons", seasons, 0)):
            # context >= 2: a feature is the last change, which needs two rows.
            if not isinstance(value, numbers.Integral) or value < least:
                raise ForecastInputError(f"{name} must be an integer >= {least}, got {value!r}")
        if not refit_every_s > 0:
            raise ForecastInputError(f"refit_every_s must be > 0, got {refit_every_s!r}")
        check_positive("history_days", history_days)
        self.horizon, self.context, self.seasons = horizon, context, seasons
        self.history_days = history_days
        self.refit_every_s, self.levels = refit_every_s, np.asarray(levels)
        self.indicators = indicators
        self.step_s: float | None = None
        self._history: np.ndarray | None = None
        self._since_refit = 0
        self._coef: np.ndarray | None = None  # [H, K, Q, F]

    def _spec(self, rows: int, period: int) -> WindowSpec:
        """Daily lags once the rows hold enough seasons of them, and only if a season spans the horizon
        (at steps over a day / horizon the same time yesterday lies inside the forecast)."""
        enough = rows >= self.seasons * period + self.horizon + self.context + 32
        seasons = self.seasons if enough and self.horizon <= period else 0
        return WindowSpec(context=self.context, horizon=self.horizon, period=period, seasons=seasons, pre=1)

    def _features(self, z: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """``[N, H, K, F]`` design rows; the same spec is used at fit and predict time."""
        recent = self._window.recent(z, origins)  # [N, C, K]
        last = recent[:, -1]
        cols = [np.ones_like(last), last - self._mean, last - recent[:, -2], recent.mean(axis=1) - last]
        n, h = len(origins), self.horizon
        base = np.broadcast_to(np.stack(cols, axis=-1)[:, None], (n, h, *last.shape[1:], len(cols)))
        if self._window.seasons == 0:
            return base
        seasonal = self._window.seasonal(z, origins)[:, :, self._window.pre :]  # [N, D, H, K]
        season_cols = np.stack([seasonal[:, 0] - last[:, None], seasonal.mean(axis=1) - last[:, None]], axis=-1)
        return np.concatenate([base, season_cols], axis=-1)

    def fit(self, history: np.ndarray, step_s: float) -> None:
        """Fit on the last ``history_days`` of ``history [T, K]`` (all of it when shorter)."""
        min_rows = self.context + self.horizon + 32
        arr = check_history(history, min_rows=min_rows)
        self._period = season_steps(step_s)
        self.step_s, self.indicators = float(step_s), indicator_names(self.indicators, arr.shape[1])
        self._max_rows = round(self.history_days * DAY_S / self.step_s)
        if self._max_rows < min_rows:
            raise ForecastInputError(
                f"history_days {self.history_days} keeps {self._max_rows} rows of {self.step_s:g} s, a fit needs {min_rows}"
            )
        self._history = arr
        self._refit()

    def _refit(self) -> None:
        self._history = self._history[-self._max_rows :]
        arr = self._history
        self._scale = LogScale.fit(arr)
        z = self._scale.to_log(arr)
        self._mean = z.mean(axis=0)
        self._window = self._spec(arr.shape[0], self._period)
        origins = np.arange(self._window.first_origin, arr.shape[0] - self.horizon)
        x = self._features(z, origins)
        y = self._window.target(z, origins) - z[origins][:, None]  # [N, H, K]
        _, h_steps, k_ind, f = x.shape
        self._coef = np.zeros((h_steps, k_ind, len(self.levels), f))
        for h in range(h_steps):
            for k in range(k_ind):
                model = QuantReg(y[:, h, k], x[:, h, k])
                for i, q in enumerate(self.levels):
                    with warnings.catch_warnings():
                        # IRLS may stop at max_iter on flat stretches; the estimate is still a valid fit.
                        warnings.simplefilter("ignore")
                        self._coef[h, k, i] = model.fit(q=q, max_iter=300).params
        self._since_refit = 0

    @property
    def history(self) -> np.ndarray:
        """The rows kept: the last ``history_days`` at the last refit, then every row since (bounded)."""
        return self._history

    @property
    def fitted_rows(self) -> int:
        """The first ``fitted_rows`` of :attr:`history` are those the coefficients were fitted on; the rest arrived since."""
        return self._history.shape[0] - self._since_refit

    def update(self, new_rows: np.ndarray) -> None:
        """Append rows that have just completed, one at a time: the refit schedule, and so the model, is
        the same whether they come in one block or row by row."""
        if self._coef is None:
            raise ForecastInputError("quantile: call fit() before update()")
        rows = check_history(new_rows, len(self.indicators), min_rows=0)
        for row in rows[:, None]:
            self._history = np.concatenate([self._history, row])
            self._since_refit += 1
            if self._since_refit * self.step_s >= self.refit_every_s:
                self._refit()

    def quantiles(self, history: np.ndarray, horizon: int) -> np.ndarray:
        """Predicted quantiles at ``self.levels``: ``[Q, horizon, K]`` on the rate scale (crossings sorted away)."""
        check_request(horizon, 1, self.horizon)
        arr = self._checked(history)
        return self.quantiles_at(arr, np.array([arr.shape[0] - 1]))[:, 0, :horizon]

    def quantiles_at(self, history: np.ndarray, origins: np.ndarray) -> np.ndarray:
        """Quantiles ``[Q, N, horizon, K]`` (rates) for each origin row index of ``history``, from rows up to it.

        Origins too early for the lagged windows see the oldest row repeated in front (as early in
        a trace). The flow uses this for its anchor at every training window.
        """
        arr = self._checked(history)
        earliest = int(np.min(origins))
        origins = np.asarray(origins) + self._window.missing(earliest)
        z = self._window.pad(self._scale.to_log(arr), earliest)
        x = self._features(z, origins)  # [N, H, K, F]
        dz = np.einsum("hkqf,nhkf->qnhk", self._coef, x)
        return self._scale.from_log(np.sort(dz, axis=0) + z[origins][None, :, None])

    def _checked(self, history: np.ndarray) -> np.ndarray:
        if self._coef is None:
            raise ForecastInputError("quantile: call fit() before predict()")
        return check_history(history, len(self.indicators))

    def predict(self, history: np.ndarray, horizon: int, n_samples: int, rng: np.random.Generator) -> Forecast:
        check_request(horizon, n_samples, self.horizon)
        qs = self.quantiles(history, horizon)
        u = rng.uniform(size=(n_samples, *qs.shape[1:]))
        # Invert the piecewise-linear quantile function cell by cell (flat beyond the outer levels).
        flat_q = qs.reshape(len(self.levels), -1)
        flat_u = u.reshape(n_samples, -1)
        samples = np.stack([np.interp(flat_u[:, j], self.levels, flat_q[:, j]) for j in range(flat_q.shape[1])], axis=1)
        return Forecast(samples=samples.reshape(u.shape), indicators=self.indicators, step_s=self.step_s)

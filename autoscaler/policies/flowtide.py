"""Ours: a predictive distribution of demand feeding the Bayesian decision.

Demand is aggregated into ``forecast_step_s`` rows as they complete; the forecaster (the flow by
default) is fitted once ``min_fit_rows`` exist and updated online with every new row, so it
learns only from the trace's past. Each sample is then scaled by a within-step burst factor
(peak ``burst_window_s`` mean rate over the step mean) bootstrapped from the recent past, because replicas must
carry the peak tick, not the mean. Before the first fit, the step means of the last
``burst_window_rows`` steps, bootstrapped, stand in for the forecaster's samples.
"""

from __future__ import annotations

import math
import time
from dataclasses import replace

import numpy as np

from autoscaler.decision import Decision, DecisionState, Reason, Snapshot, decide
from autoscaler.forecast import Forecast, ForecastInputError, Forecaster, make_forecaster
from autoscaler.indicators import DEMAND_INDICATORS
from autoscaler.simulator import ClusterParams

from . import PolicyError, decision_params


class FlowtidePolicy:
    name = "flowtide"

    def __init__(self, cluster: ClusterParams, forecaster: str | Forecaster = "flow", forecast_step_s: float = 600.0,
                 interval_s: float = 60.0, n_samples: int = 64, min_fit_rows: int = 144, refit_every_rows: int | None = None,
                 burst_window_rows: int = 144, burst_window_s: float = 10.0, forecaster_kw: dict | None = None, seed: int = 0,
                 **decision_overrides) -> None:
        if forecast_step_s <= 0 or interval_s <= 0 or n_samples < 1:
            raise PolicyError("forecast_step_s and interval_s must be positive and n_samples >= 1")
        self.cluster = cluster
        self.params = decision_params(cluster, interval_s=interval_s, **decision_overrides)
        self.interval_s = interval_s
        self.step_s = forecast_step_s
        self.n_samples = n_samples
        self.min_fit_rows = min_fit_rows
        self.refit_every_rows = refit_every_rows
        self.burst_window_rows = burst_window_rows
        self.burst_window_s = burst_window_s
        self.forecaster_spec = forecaster
        self.forecaster_kw = forecaster_kw or {}
        self.forecaster: Forecaster | None = None
        self.fitted_rows = 0
        self.fit_error: str | None = None
        self.rows: list[np.ndarray] = []
        self.bursts: list[np.ndarray] = []
        self.consumed_s = 0.0
        self.horizon = int(math.ceil((cluster.cold_start_s + interval_s) / forecast_step_s)) + 1
        self.state = DecisionState()
        self.rng = np.random.default_rng(seed)
        self.cached: Forecast | None = None
        self.last_band: dict[int, np.ndarray] | None = None
        self.last_decision: Decision | None = None
        self.decision_s: list[float] = []  # forecast sampling + optimisation, per fresh forecast
        self._predict_started = 0.0

    def _observe(self, snapshot: Snapshot) -> int:
        """Aggregate completed steps into rows (mean) and burst ratios (peak tick / mean)."""
        history, tick = snapshot.history, snapshot.step_s
        start = snapshot.now_s - history.shape[0] * tick
        added = 0
        while self.consumed_s + self.step_s <= snapshot.now_s + 1e-9:
            lo = int(round((self.consumed_s - start) / tick))
            hi = int(round((self.consumed_s + self.step_s - start) / tick))
            if hi > lo >= 0:
                block = history[lo:hi]
                mean = block.mean(axis=0)
                self.rows.append(mean)
                k = min(block.shape[0], max(1, int(round(self.burst_window_s / tick))))
                peak = np.apply_along_axis(lambda c: np.convolve(c, np.ones(k) / k, mode="valid"), 0, block).max(axis=0)
                self.bursts.append(np.where(mean > 0, peak / np.maximum(mean, 1e-12), 1.0))
                added += 1
            self.consumed_s += self.step_s
        return added

    def _new_forecaster(self) -> Forecaster:
        if isinstance(self.forecaster_spec, str):
            return make_forecaster(self.forecaster_spec, **self.forecaster_kw)
        return self.forecaster_spec

    def forecast(self, added: int) -> Forecast:
        """Samples ``[S, H, 3]`` of per-tick peak demand over the next ``horizon`` steps."""
        hist = np.asarray(self.rows)
        n = hist.shape[0]
        refit = self.refit_every_rows is not None and n - self.fitted_rows >= self.refit_every_rows
        if n >= self.min_fit_rows and (self.forecaster is None or refit) and (added or self.forecaster is None):
            candidate = self._new_forecaster()
            try:
                candidate.fit(hist, self.step_s)
            except ForecastInputError as exc:
                # Too little history for this forecaster yet: keep the bootstrap, retry next row.
                self.fit_error = str(exc)
            else:
                self.forecaster, self.fitted_rows, self.fit_error = candidate, n, None
        elif self.forecaster is not None and added:
            self.forecaster.update(hist[-added:])
        self._predict_started = time.perf_counter()
        if self.forecaster is None:
            # Warm-up: the recent step means, bootstrapped, stand in for the forecast.
            recent = hist[-self.burst_window_rows:]
            base = recent[self.rng.integers(0, recent.shape[0], (self.n_samples, self.horizon))]
        else:
            base = self.forecaster.predict(hist, self.horizon, self.n_samples, self.rng).samples
        bursts = np.asarray(self.bursts[-self.burst_window_rows:])
        factor = bursts[self.rng.integers(0, bursts.shape[0], base.shape[:2])]
        return Forecast(samples=base * factor, indicators=DEMAND_INDICATORS, step_s=self.step_s)

    def step(self, snapshot: Snapshot) -> Decision:
        added = self._observe(snapshot)
        if not self.rows:
            # No completed step yet: hold, and say so.
            hold = Reason("no_data", float("nan"), float("nan"))
            self.last_decision = Decision(snapshot.prefill.target, snapshot.decode.target,
                                          {"prefill": hold, "decode": hold})
            return self.last_decision
        fresh = added or self.cached is None
        if fresh:
            self.cached = self.forecast(added)
            q = np.percentile(self.cached.samples[:, 0, 1], [5, 50, 95])  # input tokens/s
            ticks = max(1, int(round(self.step_s / snapshot.step_s)))
            self.last_band = {k: np.full(ticks, v) for k, v in zip((5, 50, 95), q)}
        decision, self.state = decide(replace(snapshot, forecast=self.cached), self.state, self.params)
        if fresh:
            self.decision_s.append(time.perf_counter() - self._predict_started)
        self.last_decision = decision
        return decision

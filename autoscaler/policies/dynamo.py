"""A planner in the style of NVIDIA Dynamo's SLA planner: point forecast + profiled curves.

Every ``interval_s`` (180 s) it averages the last interval's request rate and token rates,
predicts the next interval with a point forecaster (Kalman, as Dynamo's load predictor offers),
sizes prefill for input tokens/s and decode for concurrent sequences from the same profiled
curves as ours, and, if the total exceeds the GPU budget or the power budget (cap over TDP per
GPU), scales both pools down proportionally.
"""

from __future__ import annotations

import math

import numpy as np

from autoscaler.decision import Decision, Reason, Snapshot, pool_demand
from autoscaler.forecast import ForecastInputError, make_forecaster
from autoscaler.simulator import ClusterParams

from . import check_headroom, decision_params


class DynamoPolicy:
    """The planner. ``headroom`` (> 0) multiplies both pools' predicted need before rounding up.

    ``predictions``: a dict shared by runs on the same trace with the same interval, forecaster and
    fit settings, keyed by the number of interval rows observed. The rows are the trace's demand,
    never the policy's own doing, so every such run predicts the same; the first run fills it and the
    others read it (a 14-day trace's Kalman filtering takes minutes per run).
    """

    name = "dynamo"

    def __init__(self, cluster: ClusterParams, interval_s: float = 180.0, forecaster: str = "kalman",
                 forecaster_kw: dict | None = None,
                 min_fit_rows: int = 8, refit_every_rows: int = 480, seed: int = 0, headroom: float = 1.0,
                 predictions: dict[int, np.ndarray] | None = None) -> None:
        self.headroom = check_headroom(headroom)
        self.predictions = predictions
        self.cluster = cluster
        self.params = decision_params(cluster)
        self.interval_s = interval_s
        self.forecaster_name = forecaster
        # Kalman re-filters its window at every predict: two days (its minimum) keeps that ~0.3 s.
        self.forecaster_kw = forecaster_kw if forecaster_kw is not None else (
            {"window_days": 2.0} if forecaster == "kalman" else {})
        self.forecaster = None
        self.min_fit_rows, self.refit_every_rows = min_fit_rows, refit_every_rows
        self.rows: list[np.ndarray] = []
        self.consumed_s = 0.0
        self.fitted_at = 0
        self.rng = np.random.default_rng(seed)

    def _observe(self, snapshot: Snapshot) -> None:
        """Append one row per elapsed interval: the mean demand over that interval's ticks."""
        history, step = snapshot.history, snapshot.step_s
        start = snapshot.now_s - history.shape[0] * step
        while self.consumed_s + self.interval_s <= snapshot.now_s + 1e-9:
            lo = int(round((self.consumed_s - start) / step))
            hi = int(round((self.consumed_s + self.interval_s - start) / step))
            if hi > lo >= 0:
                self.rows.append(history[lo:hi].mean(axis=0))
            self.consumed_s += self.interval_s

    def _fit_rows(self, n: int) -> int | None:
        """How many rows the forecaster in use at ``n`` rows was fitted on: the first fit at
        ``min_fit_rows``, a refit every ``refit_every_rows``; None before the first."""
        if n < self.min_fit_rows:
            return None
        return self.min_fit_rows + (n - self.min_fit_rows) // self.refit_every_rows * self.refit_every_rows

    def predict(self) -> np.ndarray:
        """Next interval's (rps, input tokens/s, output tokens/s); the last value until the predictor fits.

        Read from ``predictions`` when a run before filled it. A computed one is stored there; the
        forecaster is fitted on the rows its schedule names (not on the rows at hand), so a cache
        filled in part gives the same predictions as none when the forecaster draws no random
        numbers (Kalman's point forecast draws none).
        """
        n = len(self.rows)
        if self.predictions is not None and n in self.predictions:
            return self.predictions[n].copy()
        hist = np.asarray(self.rows)
        fit_rows = self._fit_rows(n)
        if fit_rows is not None and (self.forecaster is None or self.fitted_at != fit_rows):
            self.forecaster = make_forecaster(self.forecaster_name, **self.forecaster_kw)
            self.forecaster.fit(hist[:fit_rows], self.interval_s)
            self.fitted_at = fit_rows
        if self.forecaster is None:
            out = hist[-1]
        else:
            try:
                out = self.forecaster.predict(hist, 1, 1, self.rng).samples[0, 0]
            except ForecastInputError:
                out = hist[-1]
        out = np.array(out, dtype=float)
        if self.predictions is not None:
            self.predictions[n] = out.copy()
        return out

    def step(self, snapshot: Snapshot) -> Decision:
        self._observe(snapshot)
        if not self.rows:
            return Decision(snapshot.prefill.target, snapshot.decode.target,
                            {p: Reason("no_data", float("nan"), float("nan")) for p in ("prefill", "decode")})
        predicted = np.maximum(self.predict(), 0.0)
        need_p, need_d = pool_demand(predicted[None, None], self.cluster.capacity, self.params,
                                     snapshot.mean_prompt_tokens, snapshot.mean_prompt_tokens,
                                     snapshot.mean_output_tokens)
        lo, hi = self.cluster.min_replicas, self.cluster.max_replicas
        p = min(max(math.ceil(self.headroom * float(need_p[0, 0])), lo[0]), hi[0])
        d = min(max(math.ceil(self.headroom * float(need_d[0, 0])), lo[1]), hi[1])
        binding = "point_forecast"
        tp = self.cluster.capacity.gpus_per_replica
        budget = sum(hi) * tp
        if self.cluster.power_cap_w is not None:
            budget = min(budget, int(self.cluster.power_cap_w // self.cluster.power.tdp_w))
        if (p + d) * tp > budget:
            scale = budget / ((p + d) * tp)
            p, d = max(lo[0], math.floor(p * scale)), max(lo[1], math.floor(d * scale))
            binding = "gpu_power_budget"
        reason = Reason(binding, 0.5, float("nan"))
        return Decision(p, d, {"prefill": reason, "decode": reason})

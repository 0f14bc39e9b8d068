"""A planner in the style of NVIDIA Dynamo's SLA planner: point forecast + profiled curves.

Every ``interval_s`` (180 s) it averages the last interval's request rate and token rates,
predicts the next interval with a point forecaster (Kalman, as Dynamo's load predictor offers),
sizes prefill for input tokens/s and decode for concurrent sequences from the same profiled
curves as ours, and, if the total exceeds the GPU budget or the power budget (cap over TDP per
GPU), scales both pools down proportionally.

Like Dynamo's planner it corrects decode by what it observed: the last interval's mean TPOT over
the profile's TPOT at the concurrency it ran (``decode_correction``) divides the TPOT target the
decode pool is sized for, so a pool whose sequences waited for a batch slot is sized for a tighter
one. Dynamo's prefill correction, ``min(1, observed TTFT / profiled TTFT)``, can only lower the
count (prefix-cache hits, which the simulator does not model), so it is left out.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from autoscaler.capacity import decode_context_tokens
from autoscaler.decision import Decision, DecisionParams, Reason, Snapshot, pool_demand
from autoscaler.forecast import ForecastInputError, make_forecaster
from autoscaler.simulator import ClusterParams

from . import check_headroom, decision_params


class DynamoPolicy:
    """The planner. ``headroom`` (> 0) multiplies both pools' predicted need before rounding up;
    ``correction`` (Dynamo's default; its ``--no-correction`` turns it off) applies the decode
    correction factor.

    ``predictions``: a dict shared by runs on the same trace with the same interval, forecaster and
    fit settings, keyed by the number of interval rows observed. The rows are the trace's demand,
    never the policy's own doing, so every such run predicts the same; the first run fills it and the
    others read it (a 14-day trace's Kalman filtering takes minutes per run).
    """

    name = "dynamo"

    def __init__(self, cluster: ClusterParams, interval_s: float = 180.0, forecaster: str = "kalman",
                 forecaster_kw: dict | None = None,
                 min_fit_rows: int = 8, refit_every_rows: int = 480, seed: int = 0, headroom: float = 1.0,
                 predictions: dict[int, np.ndarray] | None = None, correction: bool = True) -> None:
        self.headroom = check_headroom(headroom)
        self.correction = correction
        self.decode_correction = 1.0
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
        self.last_latency = np.full(2, np.nan)  # the last row's mean TTFT and TPOT, request-weighted
        self.consumed_s = 0.0
        self.fitted_at: int | None = None  # the rows of the last fit attempted
        self.rng = np.random.default_rng(seed)

    def _observe(self, snapshot: Snapshot) -> None:
        """Append one row per elapsed interval: the mean demand over that interval's ticks, and
        the mean latency its requests saw (NaN when the snapshot carries none)."""
        history, step = snapshot.history, snapshot.step_s
        start = snapshot.now_s - history.shape[0] * step
        while self.consumed_s + self.interval_s <= snapshot.now_s + 1e-9:
            lo = int(round((self.consumed_s - start) / step))
            hi = int(round((self.consumed_s + self.interval_s - start) / step))
            if hi > lo >= 0:
                self.rows.append(history[lo:hi].mean(axis=0))
                self.last_latency = _mean_latency(snapshot.latency, history, lo, hi)
            self.consumed_s += self.interval_s

    def _update_correction(self, snapshot: Snapshot) -> None:
        """Dynamo's decode correction from the last interval: observed TPOT over the profile's TPOT
        at the concurrency the pool ran (Little's law over the request's duration; the profile is
        not read beyond its largest batch). Kept as it was when the interval gives nothing to read."""
        if not (self.correction and self.rows and snapshot.decode.ready > 0):
            return
        ttft, tpot = self.last_latency
        rps, in_tps, out_tps = self.rows[-1]
        if not (math.isfinite(ttft) and math.isfinite(tpot) and tpot > 0 and rps > 0):
            return
        isl, osl = in_tps / rps, out_tps / rps
        concurrency = rps * (ttft + osl * tpot) / snapshot.decode.ready
        capacity = self.cluster.capacity
        expected = float(capacity.tpot_s(min(max(concurrency, 1.0), capacity.max_batch), decode_context_tokens(isl, osl)))
        self.decode_correction = tpot / expected

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
        if fit_rows is not None and self.fitted_at != fit_rows:
            self.fitted_at = fit_rows
            self.forecaster = make_forecaster(self.forecaster_name, **self.forecaster_kw)
            try:
                self.forecaster.fit(hist[:fit_rows], self.interval_s)
            except ForecastInputError:
                # Too few rows for this forecaster (quantile regression, the flow): the last value
                # stands in until the next scheduled refit.
                self.forecaster = None
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
        self._update_correction(snapshot)
        predicted = np.maximum(self.predict(), 0.0)[None, None]
        lo, hi = self.cluster.min_replicas, self.cluster.max_replicas

        def counts(params: DecisionParams) -> tuple[int, int]:
            needs = pool_demand(predicted, self.cluster.capacity, params, snapshot.mean_prompt_tokens,
                                snapshot.mean_prompt_tokens, snapshot.mean_output_tokens)
            return tuple(min(max(math.ceil(self.headroom * float(need[0, 0])), lo[i]), hi[i])
                         for i, need in enumerate(needs))

        p, d = counts(self._corrected_params(snapshot))
        # The decode count is the correction's when the uncorrected TPOT target would have asked another.
        bindings = ["point_forecast", "point_forecast"]
        if self.decode_correction != 1.0 and d != counts(self.params)[1]:
            bindings[1] = "tpot_correction"
        tp = self.cluster.capacity.gpus_per_replica
        budget = sum(hi) * tp
        if self.cluster.power_cap_w is not None:
            budget = min(budget, int(self.cluster.power_cap_w // self.cluster.power.tdp_w))
        if (p + d) * tp > budget:
            scale = budget / ((p + d) * tp)
            p, d = max(lo[0], math.floor(p * scale)), max(lo[1], math.floor(d * scale))
            bindings = ["gpu_power_budget", "gpu_power_budget"]
        # A point forecast: no demand quantile, no expected attainment.
        return Decision(p, d, {pool: Reason(binding, float("nan"), float("nan"))
                               for pool, binding in zip(("prefill", "decode"), bindings)})

    def _corrected_params(self, snapshot: Snapshot) -> DecisionParams:
        """The decision parameters with the TPOT target divided by the decode correction; never
        below what batch 1 meets (Dynamo then sizes at its lightest profiled load)."""
        capacity, params = self.cluster.capacity, self.params
        ctx = decode_context_tokens(snapshot.mean_prompt_tokens, snapshot.mean_output_tokens)
        lightest = float(capacity.tpot_s(1, ctx)) / params.latency_margin * (1 + 1e-9)
        return replace(params, tpot_slo_s=max(params.tpot_slo_s / self.decode_correction, lightest))


def _mean_latency(latency: np.ndarray | None, history: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Request-weighted mean (TTFT, TPOT) over ticks ``[lo, hi)``, of the requests served (as a
    histogram counts them); NaN without any."""
    if latency is None or latency.shape[0] < hi:
        return np.full(2, np.nan)
    rows, weight = latency[lo:hi], history[lo:hi, 0]
    seen = np.isfinite(rows).all(axis=1) & (weight > 0)
    if not seen.any():
        return np.full(2, np.nan)
    return (rows[seen] * weight[seen, None]).sum(axis=0) / weight[seen].sum()

"""Ours: a predictive distribution of demand feeding the Bayesian decision.

Demand is aggregated into ``forecast_step_s`` rows as they complete; the forecaster (the flow by
default) is fitted once ``min_fit_rows`` exist, or given pre-trained on other traces
(:func:`pretrain`), and updated online with every new row, so it learns only from the trace's
past. Its samples stay within the step-to-step growth the trace has shown
(:meth:`FlowtidePolicy._within_seen_growth`). Each sample is then scaled by a within-step burst
factor (the step's peak rate over its mean: the peak ``burst_window_s`` mean, or with
``burst_windows_s`` its arrival curve) bootstrapped from the recent past, because replicas must
carry the peak, not the mean; or, with ``burst_shape_bins``, spread over a recent step's tick rates
in that many bins (one sample each), so the decision counts the share of a step's requests its
replicas serve rather than sizing every cell for its peak tick. With ``nowcast_after_s``, the step
under way is sized from its own mean so far (:meth:`FlowtidePolicy._nowcast`): its forecast was
made before it began. Before the first fit,
the step means of the last ``burst_window_rows`` steps, bootstrapped (with ``joint_bootstrap``,
each with its own burst factor), stand in for the forecaster's samples.

The bootstrap can never propose a step larger than the largest it has seen, so with
``unseen_burst_alpha`` a share ``alpha / (alpha + n)`` of the sample cells (``n`` steps seen so
far: Laplace's rule of succession, the chance that the next of ``n + 1`` exchangeable steps is the
largest) is replaced by an unseen burst: the recent window's largest step scaled up by an
exponential excess fitted to the recent peaks over their median (peaks-over-threshold). Early in a
trace this is wide headroom; it fades as evidence accumulates (:meth:`FlowtidePolicy._with_unseen`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from autoscaler.decision import SLO_BINDINGS, Decision, DecisionState, Reason, Snapshot, decide
from autoscaler.forecast import Forecast, ForecastInputError, Forecaster, make_forecaster
from autoscaler.indicators import DEMAND_INDICATORS
from autoscaler.simulator import ClusterParams

from . import PolicyError, decision_params


class FlowtidePolicy:
    name = "flowtide"

    def __init__(self, cluster: ClusterParams, forecaster: str | Forecaster = "flow", forecast_step_s: float = 600.0,
                 interval_s: float = 60.0, n_samples: int = 64, min_fit_rows: int = 144, refit_every_rows: int | None = None,
                 burst_window_rows: int = 144, burst_window_s: float = 10.0, burst_windows_s: tuple[float, ...] | None = None,
                 burst_wait_s: float | None = None, joint_bootstrap: bool = False, forecaster_kw: dict | None = None,
                 pretrained: Forecaster | None = None, pretrained_level: np.ndarray | None = None,
                 unseen_burst_alpha: float | None = None, burst_shape_bins: int | None = None,
                 nowcast_after_s: float | None = None, offset_s: float = 0.0, seed: int = 0,
                 **decision_overrides) -> None:
        if forecast_step_s <= 0 or interval_s <= 0 or n_samples < 1:
            raise PolicyError("forecast_step_s and interval_s must be positive and n_samples >= 1")
        if burst_shape_bins is not None and burst_shape_bins < 1:
            raise PolicyError(f"burst_shape_bins must be >= 1 (or None: the step's peak), got {burst_shape_bins}")
        if not 0 <= offset_s < interval_s:
            raise PolicyError(f"offset_s must lie in [0, interval_s = {interval_s}), got {offset_s}")
        if unseen_burst_alpha is not None and unseen_burst_alpha <= 0:
            raise PolicyError(f"unseen_burst_alpha must be positive (or None: off), got {unseen_burst_alpha}")
        self.cluster = cluster
        self.params = decision_params(cluster, interval_s=interval_s, **decision_overrides)
        self.interval_s = interval_s
        self.offset_s = offset_s  # the first decision's time; the simulator (and a live loop) keep the phase
        self.step_s = forecast_step_s
        self.n_samples = n_samples
        self.min_fit_rows = min_fit_rows
        self.refit_every_rows = refit_every_rows
        self.burst_window_rows = burst_window_rows
        self.burst_window_s = burst_window_s
        self.burst_windows_s = tuple(burst_windows_s) if burst_windows_s else None
        self.burst_wait_s = burst_wait_s
        self.joint_bootstrap = joint_bootstrap
        self.burst_shape_bins = burst_shape_bins
        self.nowcast_after_s = nowcast_after_s
        self._factor0: np.ndarray | None = None  # the factors drawn for the current step's cells, [samples, 3]
        self.shapes: list[np.ndarray] = []  # per step, [bins, 3] tick rates over the step mean, highest first
        self.unseen_burst_alpha = unseen_burst_alpha
        # What the last forecast's unseen-burst prior did: its probability, cells replaced, sizes.
        self.last_unseen: dict[str, float] = {"p": 0.0, "cells": 0, "ref_tokens_per_s": 0.0, "mean_excess": 0.0}
        self.forecaster_spec = forecaster
        # The steps a decision looks ahead: the one under way, then a cold start plus an interval.
        self.horizon = int(math.ceil((cluster.cold_start_s + interval_s) / forecast_step_s)) + 1
        self.forecaster_kw = self._reaching(forecaster, dict(forecaster_kw or {}), pretrained)
        if getattr(pretrained, "step_s", None) not in (None, forecast_step_s):
            raise PolicyError(f"the pre-trained forecaster was fitted on rows of {pretrained.step_s:g} s; this policy "
                              f"aggregates rows of {forecast_step_s:g} s (forecast_step_s)")
        # A forecaster fitted on other traces serves from the first row and is updated online with
        # this trace's rows; it is only replaced if ``refit_every_rows`` asks for a refit.
        self.forecaster: Forecaster | None = pretrained
        self.pretrained = pretrained is not None
        self.pretrained_level = None if pretrained_level is None else np.asarray(pretrained_level, dtype=float)
        self.fitted_rows = 0
        self.fit_error: str | None = None
        self.rows: list[np.ndarray] = []
        self.bursts: list[np.ndarray] = []
        self.consumed_s = 0.0
        self.state = DecisionState()
        self.rng = np.random.default_rng(seed)
        self.cached: Forecast | None = None
        self.cached_seen: Forecast | None = None  # the same forecast without the unseen-burst prior
        self.last_band: dict[int, np.ndarray] | None = None
        self.last_decision: Decision | None = None
        self.decision_s: list[float] = []  # forecast sampling + optimisation, per fresh forecast
        self._predict_started = 0.0

    def _observe(self, snapshot: Snapshot) -> int:
        """Aggregate completed steps into rows (mean) and burst ratios (peak rate / mean)."""
        history, tick = snapshot.history, snapshot.step_s
        wait = self.burst_wait_s
        if wait is None and self.burst_windows_s is not None:  # only the arrival-curve sizing uses it
            # What a queued prompt may wait and still meet the TTFT SLO: the budget left after the
            # tail prompt's own prefill (the same margin the decision sizes replicas with).
            own = float(self.params.capacity.prefill_time_s(snapshot.tail_prompt_tokens))
            wait = max(0.0, self.params.latency_margin * self.params.ttft_slo_s - own)
        start = snapshot.now_s - history.shape[0] * tick
        added = 0
        while self.consumed_s + self.step_s <= snapshot.now_s + 1e-9:
            lo = int(round((self.consumed_s - start) / tick))
            hi = int(round((self.consumed_s + self.step_s - start) / tick))
            if hi > lo >= 0:
                block = history[lo:hi]
                mean = block.mean(axis=0)
                self.rows.append(mean)
                peak = self._peak(block, tick, wait)
                self.bursts.append(np.where(mean > 0, peak / np.maximum(mean, 1e-12), 1.0))
                if self.burst_shape_bins:
                    self.shapes.append(self._shape(block, mean))
                added += 1
            self.consumed_s += self.step_s
        return added

    def _peak(self, block: np.ndarray, tick: float, wait_s: float | None) -> np.ndarray:
        """The rate per column that replicas must carry within the step ``block`` ([ticks, 3]).

        With ``burst_windows_s`` unset: the peak ``burst_window_s`` moving mean. With it set (short
        ticks, where one-second spikes matter): the arrival-curve rate, the most any window of those
        lengths brings in over its length plus ``wait_s`` (work a queue may hold and still
        meet the TTFT SLO), as a fluid server is sized in network calculus.
        """
        if self.burst_windows_s is None:
            k = min(block.shape[0], max(1, int(round(self.burst_window_s / tick))))
            return np.apply_along_axis(lambda c: np.convolve(c, np.ones(k) / k, mode="valid"), 0, block).max(axis=0)
        csum = np.concatenate([np.zeros((1, block.shape[1])), np.cumsum(block, axis=0)])
        peak = np.zeros(block.shape[1])
        for w in self.burst_windows_s:
            k = min(block.shape[0], max(1, int(round(w / tick))))
            amount = (csum[k:] - csum[:-k]).max(axis=0) * tick
            peak = np.maximum(peak, amount / (k * tick + wait_s))
        return peak

    def _shape(self, block: np.ndarray, mean: np.ndarray) -> np.ndarray:
        """The step's tick rates over its mean, sorted (highest first) into ``burst_shape_bins`` equal-time bins.

        A forecast cell becomes one sample per bin, so the decision's expected attainment is the
        request-weighted share of the step's ticks it serves, not the share of the step's peak.
        """
        ratio = np.where(mean > 0, block / np.maximum(mean, 1e-12), 1.0)
        ordered = -np.sort(-ratio, axis=0)
        return np.stack([b.mean(axis=0) for b in np.array_split(ordered, min(self.burst_shape_bins, len(ordered)))])

    def _with_shapes(self, base: np.ndarray) -> np.ndarray:
        """``[S, H, 3]`` step means -> ``[S * bins, H, 3]``: each cell times a recent step's shape (bootstrapped)."""
        shapes = np.asarray(self.shapes[-self.burst_window_rows:])
        picked = shapes[self.rng.integers(0, shapes.shape[0], base.shape[:2])]  # [S, H, bins, 3]
        self._factor0 = picked[:, 0].reshape(-1, base.shape[2])
        out = base[:, :, None, :] * picked
        return out.transpose(0, 2, 1, 3).reshape(-1, base.shape[1], base.shape[2])

    def _reaching(self, spec: str | Forecaster, kw: dict, pretrained: Forecaster | None) -> dict:
        """``kw`` for a forecaster that predicts ``self.horizon`` steps: a named one built for fewer by
        default is built for that many; one given built, or told a shorter horizon, is refused."""
        for given in (pretrained, None if isinstance(spec, str) else spec):
            if given is not None and getattr(given, "horizon", self.horizon) < self.horizon:
                raise PolicyError(self._short(given.horizon, "was built for"))
        if isinstance(spec, str) and getattr(make_forecaster(spec, **kw), "horizon", self.horizon) < self.horizon:
            if "horizon" in kw:
                raise PolicyError(self._short(kw["horizon"], "is given horizon"))
            kw["horizon"] = self.horizon
        return kw

    def _short(self, steps: int, how: str) -> str:
        return (f"the forecaster {how} {steps} step(s) of {self.step_s:g} s; a decision looks {self.horizon} ahead "
                f"(the step under way, then cold start {self.cluster.cold_start_s:g} s + interval {self.interval_s:g} s): "
                f"give it a longer horizon or a longer forecast_step_s")

    def _new_forecaster(self) -> Forecaster:
        if isinstance(self.forecaster_spec, str):
            return make_forecaster(self.forecaster_spec, **self.forecaster_kw)
        return self.forecaster_spec

    def forecast(self, added: int) -> Forecast:
        """Samples ``[S, H, 3]`` of per-tick peak demand over the next ``horizon`` steps, the first the one under way."""
        fc = replace(self._forecast_seen(added), start_s=self.consumed_s)
        self.cached_seen = fc
        if self.unseen_burst_alpha is None:
            return fc
        samples = self._with_unseen(fc.samples)
        return fc if samples is fc.samples else replace(fc, samples=samples)

    def unseen_probability(self, n_steps: int) -> float:
        """P(the next step exceeds all ``n_steps`` seen): ``alpha / (alpha + n)``; 1 with no evidence.

        With ``alpha = 1`` this is the record probability of exchangeable steps (the next of
        ``n + 1`` is the largest with chance ``1/(n+1)``), i.e. a Dirichlet-process predictive whose
        base measure is the unseen-burst law of :meth:`_with_unseen`.
        """
        alpha = self.unseen_burst_alpha or 0.0
        return alpha / (alpha + n_steps) if alpha > 0 else 0.0

    def _with_unseen(self, samples: np.ndarray) -> np.ndarray:
        """Replace a share :meth:`unseen_probability` of the ``[S, H, 3]`` cells by unseen bursts.

        A burst is the recent window's largest step (by input tokens/s; its three columns scale
        together, so its requests weigh in the decision) times ``(m + beta E) / m``: ``m`` that step's
        size, ``E`` standard-exponential at stratified quantiles, ``beta`` the mean excess of the
        window's step peaks over their median (an exponential peaks-over-threshold tail, which is
        memoryless: the excess over ``m`` has the same law). The number of cells is rounded to the
        nearest (off by at most half a cell of ``S x H``, so no sampling noise). Only past steps are read.
        """
        peaks = np.asarray(self.rows) * np.asarray(self.bursts)
        p = self.unseen_probability(peaks.shape[0])
        cells = samples.shape[0] * samples.shape[1]
        k = int(np.floor(p * cells + 0.5))
        recent = peaks[-self.burst_window_rows:]
        size = recent[:, 1]
        m = float(size.max())
        median = float(np.median(size))
        beta = float((size[size > median] - median).mean()) if (size > median).any() else 0.0
        self.last_unseen = {"p": p, "cells": k, "ref_tokens_per_s": m, "mean_excess": beta}
        if k == 0 or m <= 0:
            return samples
        excess = -np.log1p(-(np.arange(k) + 0.5) / k)  # Exp(1) at stratified quantiles
        burst = recent[int(np.argmax(size))][None] * ((m + beta * excess) / m)[:, None]
        out = samples.copy()
        flat = out.reshape(cells, samples.shape[2])
        flat[self.rng.choice(cells, k, replace=False)] = burst
        return out

    def _forecast_seen(self, added: int) -> Forecast:
        """The forecast from what the trace has shown: the forecaster's or the bootstrap's samples."""
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
            self.forecaster.update(hist[-added:] * self._to_model(hist))
        self._predict_started = time.perf_counter()
        bursts = np.asarray(self.bursts[-self.burst_window_rows:])
        recent = hist[-self.burst_window_rows:]
        if self.forecaster is None:
            # Warm-up: the recent step means, bootstrapped, stand in for the forecast.
            pick = self._picks(recent.shape[0])
            base = recent[pick]
            if self.joint_bootstrap:
                # A step's mean and its burst come together: busy steps are not also given the
                # burst ratio of quiet ones (whose peaks over a near-zero mean are huge ratios).
                return Forecast(samples=base * bursts[pick], indicators=DEMAND_INDICATORS, step_s=self.step_s)
        else:
            to_model = self._to_model(hist)
            base = self.forecaster.predict(hist * to_model, self.horizon, self.n_samples, self.rng).samples / to_model
            base = self._within_seen_growth(base, hist)
            if self.joint_bootstrap:
                pick = self._picks(recent.shape[0])
                # The forecaster moves the level; the recent steps' joint (mean, burst) draws give
                # the shape of the peaks around it.
                level = np.maximum(recent.mean(axis=0), 1e-9)
                return Forecast(samples=recent[pick] * bursts[pick] * base / level, indicators=DEMAND_INDICATORS,
                                step_s=self.step_s)
        if self.burst_shape_bins:
            return Forecast(samples=self._with_shapes(base), indicators=DEMAND_INDICATORS, step_s=self.step_s)
        factor = bursts[self.rng.integers(0, bursts.shape[0], base.shape[:2])]
        self._factor0 = factor[:, 0]
        return Forecast(samples=base * factor, indicators=DEMAND_INDICATORS, step_s=self.step_s)

    @staticmethod
    def _within_seen_growth(samples: np.ndarray, hist: np.ndarray) -> np.ndarray:
        """Forecaster samples ``[S, H, 3]`` clipped, per column, to ``h`` steps ahead of the last row times the
        smallest and largest ``h``-step ratio the trace's rows have shown.

        A flow's density extrapolates past its training targets: on ServeGen (day 6) its 99th
        percentile ten minutes out was 7x the level, when no ten minutes had ever multiplied it by
        more than 2.7. The decision weighs samples by the requests they carry, so those few sized it.
        """
        last = hist[-1]
        out = samples.copy()
        for h in range(1, min(samples.shape[1], hist.shape[0] - 1) + 1):
            before, after = hist[:-h], hist[h:]
            for k in np.flatnonzero(last > 0):
                seen = before[:, k] > 0
                if seen.any():
                    ratio = after[seen, k] / before[seen, k]
                    out[:, h - 1, k] = np.clip(out[:, h - 1, k], last[k] * ratio.min(), last[k] * ratio.max())
        return out

    def _nowcast(self, snapshot: Snapshot, fc: Forecast) -> Forecast:
        """The current step's cells from what it has shown so far, once ``nowcast_after_s`` of it is in.

        The forecast of the step under way was made before it began; its mean so far is better
        evidence of its level, so that step's cells become that mean times their drawn burst factors.
        """
        if self.nowcast_after_s is None or self._factor0 is None:
            return fc
        elapsed = snapshot.now_s - self.consumed_s
        ticks = int(round(elapsed / snapshot.step_s))
        if elapsed < self.nowcast_after_s or ticks < 1 or ticks > snapshot.history.shape[0]:
            return fc
        samples = fc.samples.copy()
        samples[:, 0] = snapshot.history[-ticks:].mean(axis=0) * self._factor0
        return replace(fc, samples=samples)

    def _picks(self, n_rows: int) -> np.ndarray:
        """Bootstrap indices ``[S, H]`` into the last ``n_rows`` steps.

        With ``joint_bootstrap`` they are stratified: every step of the window is drawn equally often
        (up to one) in each horizon column, in a random order. The decision averages over cells, so
        this is the bootstrap's expectation without its sampling noise, which otherwise moved the
        count up and down from one forecast to the next on the same evidence (flapping).
        """
        if not self.joint_bootstrap:
            return self.rng.integers(0, n_rows, (self.n_samples, self.horizon))
        column = np.resize(np.arange(n_rows), self.n_samples)
        return np.stack([self.rng.permutation(column) for _ in range(self.horizon)], axis=1)

    def _to_model(self, hist: np.ndarray) -> np.ndarray | float:
        """Factor from this trace's units to a pre-trained forecaster's: its training mean over
        this trace's mean so far (past rows only). 1 when there is no pre-trained level."""
        if self.pretrained_level is None:
            return 1.0
        return self.pretrained_level / np.maximum(hist.mean(axis=0), 1e-9)

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
        forecast = self._nowcast(snapshot, self.cached)
        decision, state = decide(replace(snapshot, forecast=forecast), self.state, self.params)
        if self.cached is not self.cached_seen:
            # Say when the unseen-burst prior is what sets an SLO-bound count: the seen steps alone want
            # fewer replicas than the target, and the prior's wish reaches it. Wishes, not targets, are
            # compared: a target the prior's wish keeps up would otherwise read as a hysteresis hold of
            # the seen steps. A power cap or replica bound that limits the count stays the binding.
            seen, _ = decide(replace(snapshot, forecast=self._nowcast(snapshot, self.cached_seen)), self.state,
                             self.params)
            reasons = {pool: replace(r, binding="unseen_burst") if r.binding in SLO_BINDINGS
                       and seen.reasons[pool].wanted < getattr(decision, pool) <= r.wanted else r
                       for pool, r in decision.reasons.items()}
            decision = replace(decision, reasons=reasons)
        self.state = state
        if fresh:
            self.decision_s.append(time.perf_counter() - self._predict_started)
        self.last_decision = decision
        return decision


def pretrain(histories: list[np.ndarray], step_s: float, path: str | Path, sources: list[str] | None = None,
             **forecaster_kw) -> Forecaster:
    """Fit a flow on other traces' demand rows ``[T, 3]`` and save it for :func:`load_pretrained`.

    The first history sets the normalisation and the validation windows; the others are rescaled
    to its mean and add training windows (``FlowForecaster.fit``'s ``extra_histories``). The mean
    row is written beside the model (``<path>.json``): the policy rescales a new trace to it.
    Never pass the trace the policy will be judged on.
    """
    main = np.asarray(histories[0], dtype=float)
    level = main.mean(axis=0)
    extra = tuple(np.asarray(h, dtype=float) * level / np.maximum(np.asarray(h).mean(axis=0), 1e-9)
                  for h in histories[1:])
    forecaster = make_forecaster("flow", **forecaster_kw)
    forecaster.fit(main, step_s, extra_histories=extra)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    forecaster.save(path)
    meta = {"level": level.tolist(), "step_s": step_s, "sources": list(sources or []), "rows": [len(h) for h in histories]}
    Path(f"{path}.json").write_text(json.dumps(meta, indent=1))
    return forecaster


def load_pretrained(path: str | Path) -> tuple[Forecaster, np.ndarray]:
    """A flow saved by :func:`pretrain` and the mean demand row of the traces it was trained on.

    Raises:
        PolicyError: the model or its ``.json`` beside it is missing.
    """
    from autoscaler.forecast.flow import FlowForecaster

    path = Path(path)
    meta = Path(f"{path}.json")
    if not path.is_file() or not meta.is_file():
        raise PolicyError(f"pre-trained forecaster {path} (and {meta.name} beside it) not found; see pretrain()")
    return FlowForecaster.load(path), np.asarray(json.loads(meta.read_text())["level"], dtype=float)

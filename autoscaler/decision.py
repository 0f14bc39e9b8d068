"""The Bayesian scaling decision: forecast samples in, (prefill, decode) replica targets out.

``decide(snapshot, state) -> (Decision, DecisionState)`` is pure: the clock is in the snapshot,
all memory is in the returned state. For each pool it picks the replica count minimising the
expected GPU and energy cost plus a penalty per expected SLO miss, integrated over the
forecast samples, subject to an expected-attainment floor over the window up to the time a
replica started now would serve until the next decision (cold start + interval), min/max bounds,
scale-down hysteresis (which never holds replicas past the bounds or the cap), and
P(cluster power <= cap) >= 1 - eps with POLCA's clock cap as the first resort (arXiv 2308.12908)
unless fewer replicas at full clocks would serve more. Capacity per replica comes from the
profiled latency curves, as DistServe sizes prefill and decode instances separately to each SLO.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from autoscaler.capacity import CapacityModel, decode_context_tokens
from autoscaler.forecast.base import Forecast
from autoscaler.indicators import DEMAND_INDICATORS
from autoscaler.power import PowerModel, check_power_cap

POOLS = ("prefill", "decode")
# Bindings where the forecast's demand set the count: the attainment floor's smallest count, or more
# because the expected misses cost more than replicas; ``_hold`` while that count is already the target.
_DEMAND_BINDINGS = ("slo", "miss_cost")
SLO_BINDINGS = _DEMAND_BINDINGS + tuple(f"{b}_hold" for b in _DEMAND_BINDINGS)


class DecisionError(ValueError):
    """A snapshot or parameter the decision cannot use (named in the message)."""


@dataclass(frozen=True)
class PoolView:
    """What one pool reports: replicas serving now, replicas still cold-starting, current target."""

    ready: int
    starting: int
    target: int


@dataclass(frozen=True)
class Snapshot:
    """Everything a policy may look at, at time ``now_s``: never anything later.

    ``history`` is ``[T, 3]`` demand (``DEMAND_INDICATORS``) per ``step_s`` tick up to now;
    ``ongoing`` is requests in each pool (queued plus running); ``prefill_backlog_tokens`` and
    ``decode_queued_sequences`` are work already waiting for a replica (the simulator's fluid pools
    pass what the last tick left unfinished; a live loop, its servers' queue gauges); ``latency``, when given, is
    ``[T, 2]`` beside ``history``: the mean TTFT and TPOT (s) of each tick's requests, what a live
    loop reads from the router's histograms (NaN for a tick without requests); ``forecast`` is
    filled in by forecasting policies before :func:`decide` is called.
    """

    now_s: float
    step_s: float
    history: np.ndarray
    prefill: PoolView
    decode: PoolView
    ongoing_prefill: float
    ongoing_decode: float
    mean_prompt_tokens: float
    mean_output_tokens: float
    tail_prompt_tokens: float
    prefill_backlog_tokens: float = 0.0
    decode_queued_sequences: float = 0.0
    latency: np.ndarray | None = None
    forecast: Forecast | None = None


@dataclass(frozen=True)
class DecisionParams:
    """Knobs of the decision; units in names. Costs are in GPU-hour equivalents."""

    capacity: CapacityModel
    power: PowerModel
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    min_replicas: tuple[int, int] = (1, 1)
    max_replicas: tuple[int, int] = (64, 64)
    cold_start_s: float = 60.0
    interval_s: float = 30.0
    scale_down_delay_s: float = 300.0
    attainment_target: float = 0.995
    miss_penalty_gpu_h: float = 0.02
    energy_gpu_h_per_kwh: float = 0.05
    power_cap_w: float | None = None
    power_eps: float = 0.01
    latency_margin: float = 0.9

    def __post_init__(self) -> None:
        for name in ("min_replicas", "max_replicas"):
            if len(getattr(self, name)) != len(POOLS):
                raise DecisionError(f"{name} must give one count per pool {POOLS}, got {getattr(self, name)!r}")
        for pool, lo, hi in zip(POOLS, self.min_replicas, self.max_replicas):
            if not 0 <= lo <= hi:
                raise DecisionError(f"{pool}: need 0 <= min_replicas <= max_replicas, got {lo}, {hi}")
        # interval_s > 0 also keeps the window a replica asked for now serves in (cold start + interval) open.
        for name in ("ttft_slo_s", "tpot_slo_s", "interval_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) > 0):
                raise DecisionError(f"{name} must be a finite number > 0, got {getattr(self, name)!r}")
        for name in ("cold_start_s", "scale_down_delay_s"):
            if not (math.isfinite(getattr(self, name)) and getattr(self, name) >= 0):
                raise DecisionError(f"{name} must be a finite number >= 0, got {getattr(self, name)!r}")
        check_power_cap(self.power_cap_w, DecisionError)
        if self.power_cap_w is not None:
            tp = self.capacity.gpus_per_replica
            idle_w = float(self.power.serving_w(self.min_replicas[0] * tp, 0.0, self.min_replicas[1] * tp, 0.0))
            if idle_w > self.power_cap_w:
                # No decision could meet it: every one would report the cap binding with P(ok) = 0.
                raise DecisionError(f"power_cap_w {self.power_cap_w:g} W is below the idle draw of the minimum replicas "
                                    f"{self.min_replicas} ({idle_w:g} W)")
        if not 0 < self.latency_margin <= 1:
            raise DecisionError(f"latency_margin (the share of an SLO the sizing may use) must lie in (0, 1], got "
                                f"{self.latency_margin!r}")
        if not 0 < self.attainment_target < 1:
            raise DecisionError(f"attainment_target must lie in (0, 1), got {self.attainment_target}")
        if not (self.miss_penalty_gpu_h >= 0 and self.energy_gpu_h_per_kwh >= 0):
            raise DecisionError(f"miss_penalty_gpu_h and energy_gpu_h_per_kwh must be >= 0, got "
                                f"{self.miss_penalty_gpu_h}, {self.energy_gpu_h_per_kwh}")
        if not 0 < self.power_eps < 1:
            raise DecisionError(f"power_eps must lie in (0, 1), got {self.power_eps}")


@dataclass(frozen=True)
class Reason:
    """Why a pool got its target: what bound it, the demand quantile it covers, attainment expected.

    ``wanted`` is the count the forecast asks for before scale-down hysteresis (None where a policy
    has no such wish); it differs from the target while hysteresis holds more.
    """

    binding: str
    quantile_used: float
    expected_attainment: float
    wanted: int | None = None


@dataclass(frozen=True)
class Decision:
    """Per-pool targets and why. ``p_power_ok`` is P(serving power <= cap) at the targets; NaN where
    the policy does not compute it (the baselines), so a log never claims a check that was not made."""

    prefill: int
    decode: int
    reasons: dict[str, Reason] = field(default_factory=dict)
    freq_cap_expected: bool = False
    p_power_ok: float = math.nan

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN, where a policy has no such figure, becomes None)."""
        def clean(v: Any) -> Any:
            return None if isinstance(v, float) and math.isnan(v) else v

        return {"prefill": self.prefill, "decode": self.decode, "freq_cap_expected": self.freq_cap_expected,
                "p_power_ok": clean(self.p_power_ok),
                "reasons": {pool: {k: clean(v) for k, v in asdict(r).items()} for pool, r in self.reasons.items()}}

    def explain(self) -> str:
        """One line per decision; a figure the policy has none of (NaN) is left out, not printed as nan."""
        parts = []
        for pool, r in self.reasons.items():
            figures = [r.binding] + ([f"wants {r.wanted}"] if r.wanted not in (None, getattr(self, pool)) else [])
            figures += [f"{name}={value:{fmt}}" for name, value, fmt in (
                ("q", r.quantile_used, ".3f"), ("attainment", r.expected_attainment, ".4f")) if not math.isnan(value)]
            parts.append(f"{pool}={getattr(self, pool)} ({', '.join(figures)})")
        if not math.isnan(self.p_power_ok):
            parts.append(f"P(power<=cap)={self.p_power_ok:.3f}")
        return "; ".join(parts + (["clocks capped"] if self.freq_cap_expected else []))


@dataclass(frozen=True)
class DecisionState:
    """Hysteresis memory: since when each pool has wanted fewer replicas, and the most it wanted since."""

    down_since_s: tuple[float | None, float | None] = (None, None)
    down_peak: tuple[int, int] = (0, 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DecisionState:
        return cls(down_since_s=tuple(data["down_since_s"]), down_peak=tuple(data["down_peak"]))


def pool_demand(samples: np.ndarray, capacity: CapacityModel, params: DecisionParams, mean_prompt: float,
                tail_prompt: float, mean_output: float, prefill_slowdown: float = 1.0,
                decode_queued: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Replicas needed per sample and step, ``([S, H], [S, H])`` for prefill and decode.

    Prefill needs input tokens/s over the load one replica carries within the TTFT SLO; decode
    needs the concurrent sequences (Little's law at the SLO batch's TPOT) plus ``decode_queued``
    sequences already waiting for a slot (admitted as soon as a replica has room), over that batch.
    """
    names = list(DEMAND_INDICATORS)
    tokens_in = samples[..., names.index("input_tokens_per_s")]
    tokens_out = samples[..., names.index("output_tokens_per_s")]
    per_prefill = capacity.prefill_tokens_per_s_within(params.ttft_slo_s / prefill_slowdown, mean_prompt, tail_prompt,
                                                       params.latency_margin) / prefill_slowdown
    ctx = decode_context_tokens(mean_prompt, mean_output)
    batch = capacity.max_batch_within(params.tpot_slo_s, ctx, params.latency_margin)
    if per_prefill <= 0:
        own = float(capacity.prefill_time_s(tail_prompt)) * prefill_slowdown
        raise DecisionError(f"the profile cannot meet the TTFT SLO even unloaded: a {tail_prompt:.0f}-token prompt (the "
                            f"90th percentile) takes {own:.3g} s to prefill, over {params.latency_margin:g} x "
                            f"{params.ttft_slo_s:g} s")
    if batch <= 0:
        raise DecisionError(f"the profile cannot meet the TPOT SLO even unloaded: TPOT at batch 1 is "
                            f"{float(capacity.tpot_s(1, ctx)):.3g} s, over {params.latency_margin:g} x {params.tpot_slo_s:g} s")
    concurrency = tokens_out * float(capacity.tpot_s(batch, ctx))
    return tokens_in / per_prefill, concurrency / batch + decode_queued / batch


def _choose(need: np.ndarray, weight: np.ndarray, lo: int, hi: int, gpu_h_per_replica: float,
            kwh_per_replica: float, params: DecisionParams) -> tuple[int, Reason]:
    """Cheapest count in [lo, hi] by expected cost; counts below the attainment floor are refused.

    Attainment of ``n`` replicas in a sample-step is ``min(1, n / need)`` (the share of demand
    served within the SLO); the expected attainment is its request-weighted mean over samples
    and steps, so a step that carries more requests counts for more. The binding is ``slo`` when
    the count is the floor's smallest, ``miss_cost`` when the expected misses' penalty buys more:
    the penalty is per request, so on busy traffic it, not the floor, sets the count; ``min_replicas``
    only when demand alone would choose fewer than ``lo``.
    """
    # From 0, to tell what demand alone would choose, up to the first count that serves every cell
    # (or ``lo``): past it nothing is missed and the cost only grows, so no larger count can win.
    # Scoring only those keeps a 64-replica pool's decision from scoring 64 counts to pick 30.
    top = min(hi, max(lo, 1, math.ceil(float(need.max())) if need.size else 0))
    counts = np.arange(0, top + 1, dtype=float)
    att = _attainment(counts, need)
    expected = _expected_attainment(att, weight)
    missed = ((1.0 - att) * weight[None]).mean(axis=1).sum(axis=1)  # expected misses over the window
    cost = counts * (gpu_h_per_replica + params.energy_gpu_h_per_kwh * kwh_per_replica) + params.miss_penalty_gpu_h * missed
    feasible = expected >= params.attainment_target
    allowed = feasible & (counts >= lo)
    if not allowed.any():
        n, binding = hi, "max_replicas"
    else:
        n = int(np.argmin(np.where(allowed, cost, np.inf)))  # counts[n] == n
        own = int(np.argmin(np.where(feasible, cost, np.inf)))
        floor = int(np.argmax(allowed))  # expected attainment grows with the count
        binding = "min_replicas" if own < lo else "miss_cost" if n > floor else "slo"
    return n, Reason(binding, float((need <= n).mean()), float(expected[n]))


def decide(snapshot: Snapshot, state: DecisionState, params: DecisionParams) -> tuple[Decision, DecisionState]:
    """One decision from a snapshot carrying a forecast; see the module docstring.

    Raises:
        DecisionError: the snapshot has no forecast, the forecast's indicators are not the demand
            columns or its samples not ``[S >= 1, H, 3]``, it ended before now, the samples it reads
            are not finite (a NaN weighs nothing, and the minimum counts would look sure to attain
            the SLO), or a request statistic or queue of the snapshot is negative or not finite.
    """
    fc = _checked_forecast(snapshot)
    # The steps a replica asked for now would serve in: from the step under way until a cold start
    # plus one interval from now, counted from where the forecast's first step began (now, if it
    # does not say). Steps that ended before now are over: no replica can serve them.
    into = 0.0 if fc.start_s is None else max(0.0, snapshot.now_s - fc.start_s)
    first = int(into // fc.step_s)
    if first >= fc.samples.shape[1]:
        raise DecisionError(f"the forecast ended before now: its {fc.samples.shape[1]} step(s) of {fc.step_s:g} s "
                            f"began at {fc.start_s:g} s, now is {snapshot.now_s:g} s")
    steps = max(first + 1, int(math.ceil((into + params.cold_start_s + params.interval_s) / fc.step_s - 1e-9)))
    window = fc.samples[:, first:steps]
    if not np.isfinite(window).all():
        raise DecisionError(f"forecast samples must be finite; the {window.shape[1]} step(s) the decision reads hold "
                            f"{int((~np.isfinite(window)).sum())} NaN or infinite value(s)")
    samples = np.maximum(window, 0.0)
    if snapshot.prefill_backlog_tokens > 0:
        # Work already queued must drain before a prompt queued behind it can meet the TTFT SLO: it
        # is extra input tokens/s until a replica asked for now has served one interval. Spread over
        # the forecast's whole steps (600 s on multi-day traces) it added a few replicas, and after a
        # level jump the queue took minutes to drain while every prompt behind it missed.
        samples = samples.copy()
        samples[..., 1] += snapshot.prefill_backlog_tokens / (params.cold_start_s + params.interval_s)
    rps = samples[..., 0]
    tp = params.capacity.gpus_per_replica
    step_h = fc.step_s / 3600.0
    gpu_h = tp * step_h * samples.shape[1]
    kwh = (tp * params.power.prefill_w, tp * params.power.decode_w)
    args = (samples, params.capacity, params, snapshot.mean_prompt_tokens, snapshot.tail_prompt_tokens,
            snapshot.mean_output_tokens)
    need_p, need_d = pool_demand(*args, decode_queued=snapshot.decode_queued_sequences)
    # Requests per sample-step weigh each cell's attainment. Work already queued counts too, spread
    # over the window's steps: without it a forecast of no new traffic would weigh nothing, and any
    # count, the minimum included, would look sure to serve a queue still waiting.
    arrivals = rps * fc.step_s
    weights = (arrivals + snapshot.prefill_backlog_tokens / max(snapshot.mean_prompt_tokens, 1.0) / samples.shape[1],
               arrivals + snapshot.decode_queued_sequences / samples.shape[1])
    chosen = [_choose(need, weight, lo, hi, gpu_h, k * step_h * samples.shape[1] / 1e3, params)
              for need, weight, lo, hi, k in zip((need_p, need_d), weights, params.min_replicas, params.max_replicas, kwh)]
    (n_p, r_p), (n_d, r_d) = chosen
    wish_p, wish_d = n_p, n_d
    freq_capped = False
    if params.power_cap_w is not None:
        if _p_power_ok(params, n_p, n_d, need_p, need_d, capped=False) < 1 - params.power_eps:
            # Two ways to fit the cap. POLCA: cap clocks before refusing serving; prefill then needs
            # 1.3x the replicas. Or keep full clocks and refuse serving down to what fits. Capping
            # is worth it only while it serves more: near the cap, the count that fits at capped
            # clocks can carry less than the count that fits at full clocks (15 capped replicas are
            # 11.5 at full speed, 12 may fit uncapped), and then it costs more for less.
            full_fit = _fit_power(params, n_p, n_d, need_p, need_d, weights, capped=False)
            # Capped clocks slow prefill only: decode is memory-bound, its need stays need_d.
            need_pc = pool_demand(*args, prefill_slowdown=params.power.prefill_slowdown_capped)[0]
            n_pc, _ = _choose(need_pc, weights[0], params.min_replicas[0], params.max_replicas[0], gpu_h,
                              kwh[0] * step_h * samples.shape[1] / 1e3, params)
            capped_fit = _fit_power(params, n_pc, n_d, need_pc, need_d, weights, capped=True)
            # A tie keeps full clocks.
            freq_capped = _fit_score(*capped_fit, params) > _fit_score(*full_fit, params)
            n_p, n_d = (capped_fit if freq_capped else full_fit)[:2]
            if freq_capped:
                need_p = need_pc
            # A pool is bound by the cap only if the cap changed its count (or prefill's clocks).
            if freq_capped or n_p != wish_p:
                r_p = _reason_at("power_cap", n_p, need_p, weights[0])
            if n_d != wish_d:
                r_d = _reason_at("power_cap", n_d, need_d, weights[1])
    wishes, needs = (n_p, n_d), (need_p, need_d)
    targets, reasons, since, peaks = [], {}, list(state.down_since_s), list(state.down_peak)
    wished = {pool: replace(r, wanted=n) for pool, n, r in zip(POOLS, wishes, (r_p, r_d))}
    for i, (pool, n, reason, need, weight) in enumerate(zip(POOLS, wishes, wished.values(), needs, weights)):
        current = getattr(snapshot, pool).target
        if n >= current:
            since[i], peaks[i] = None, 0
            targets.append(n)
            held = n == current and reason.binding in _DEMAND_BINDINGS
            reasons[pool] = replace(reason, binding=f"{reason.binding}_hold") if held else reason
            continue
        since[i] = snapshot.now_s if since[i] is None else since[i]
        peaks[i] = max(peaks[i], n)
        if snapshot.now_s - since[i] + 1e-6 >= params.scale_down_delay_s:
            # Released to the most wished during the wait (never above the target: a cut may have gone lower).
            target, since[i], peaks[i] = min(peaks[i], current), None, 0
        else:
            target = current
        # The hysteresis keeps only what the cluster may hold: a count above the bound is cut at once.
        binding = "hysteresis" if target <= params.max_replicas[i] else "max_replicas"
        target = min(target, params.max_replicas[i])
        targets.append(target)
        # Above this wish, the hold set the count: its figures are the target's, not the wish's.
        reasons[pool] = reason if target == n else _reason_at(binding, target, need, weight, wanted=n)
    p_ok = 1.0
    if params.power_cap_w is not None:
        p_ok = _p_power_ok(params, targets[0], targets[1], need_p, need_d, capped=freq_capped)
        if p_ok < 1 - params.power_eps:
            # Held replicas must fit the cap too: power safety is not flapping, so a cut it forces applies now.
            held = tuple(targets)
            targets = list(_trim_to_cap(params, held, wishes, need_p, need_d, freq_capped))
            for i, pool in enumerate(POOLS):
                if targets[i] != held[i]:
                    reasons[pool] = wished[pool] if targets[i] == wishes[i] else _reason_at(
                        "power_cap", targets[i], needs[i], weights[i], wanted=wishes[i])
            p_ok = _p_power_ok(params, targets[0], targets[1], need_p, need_d, capped=freq_capped)
    decision = Decision(targets[0], targets[1], reasons, freq_capped, p_ok)
    return decision, DecisionState(tuple(since), tuple(peaks))


def _checked_forecast(snapshot: Snapshot) -> Forecast:
    """The snapshot's forecast, once it and the figures the sizing reads are known to be usable."""
    for name in ("mean_prompt_tokens", "mean_output_tokens", "tail_prompt_tokens", "prefill_backlog_tokens",
                 "decode_queued_sequences"):
        value = getattr(snapshot, name)
        if not (math.isfinite(value) and value >= 0):
            raise DecisionError(f"snapshot.{name} must be a finite number >= 0, got {value!r}")
    fc = snapshot.forecast
    if fc is None:
        raise DecisionError("decide() needs snapshot.forecast (demand samples over the horizon)")
    if tuple(fc.indicators) != DEMAND_INDICATORS:
        raise DecisionError(f"forecast indicators {fc.indicators} must be {DEMAND_INDICATORS}")
    shape = np.shape(fc.samples)
    if len(shape) != 3 or shape[0] < 1 or shape[1] < 1 or shape[2] != len(DEMAND_INDICATORS):
        raise DecisionError(f"forecast samples must be [samples >= 1, steps >= 1, {len(DEMAND_INDICATORS)}], "
                            f"got shape {shape}")
    return fc


def _attainment(counts: np.ndarray, need: np.ndarray) -> np.ndarray:
    """Attainment ``[N, S, H]`` of each of ``counts [N]`` replicas in each sample-step of ``need [S, H]``."""
    return np.minimum(1.0, np.asarray(counts, dtype=float)[:, None, None] / np.maximum(need[None], 1e-9))


def _expected_attainment(att: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Request-weighted mean ``[N]`` of :func:`_attainment` over samples and steps."""
    total = float(weight.sum())
    # No requests expected anywhere: every count attains the SLO (there is nothing to miss).
    return (att * weight[None]).sum(axis=(1, 2)) / total if total > 0 else np.ones(att.shape[0])


def _pool_attainment(n: int, need: np.ndarray, weight: np.ndarray) -> float:
    return float(_expected_attainment(_attainment([n], need), weight)[0])


def _reason_at(binding: str, n: int, need: np.ndarray, weight: np.ndarray, wanted: int | None = None) -> Reason:
    """The reason for a count something other than the demand set (a hold, a bound, the cap), with
    that count's demand quantile and expected attainment."""
    return Reason(binding, float((need <= n).mean()), _pool_attainment(n, need, weight), wanted)


def _fit_score(n_p: int, n_d: int, att_p: float, att_d: float, params: DecisionParams) -> tuple[bool, float, int]:
    """Order of counts that fit the cap: both pools at the target first, then the cheapest; short
    of it, the most requests served, counting each pool's misses (a request needs both SLOs; at
    worst the two pools miss different requests, so the share served is at least
    ``att_p + att_d - 1``)."""
    ok = min(att_p, att_d) >= params.attainment_target
    return ok, 0.0 if ok else att_p + att_d - 1.0, -(n_p + n_d)


def _fit_power(params: DecisionParams, n_p: int, n_d: int, need_p: np.ndarray, need_d: np.ndarray,
               weights: tuple[np.ndarray, np.ndarray], capped: bool) -> tuple[int, int, float, float]:
    """The counts at most ``(n_p, n_d)`` with P(serving power <= cap) >= 1 - eps at the given clocks.

    For each decode count, the most prefill replicas that fit beside it; of those, the best by
    :func:`_fit_score`. If nothing fits, the minimum counts.
    Returns ``(n_p, n_d, expected attainment prefill, decode)``.
    """
    lo_p, lo_d = params.min_replicas
    best: tuple | None = None
    for d in range(n_d, lo_d - 1, -1):
        p = _most_prefill_within_cap(params, lo_p, n_p, d, need_p, need_d, capped)
        if p is None:
            continue
        fit = (p, d, _pool_attainment(p, need_p, weights[0]), _pool_attainment(d, need_d, weights[1]))
        if best is None or _fit_score(*fit, params) > _fit_score(*best, params):
            best = fit
    if best is None:
        best = (lo_p, lo_d, _pool_attainment(lo_p, need_p, weights[0]), _pool_attainment(lo_d, need_d, weights[1]))
    return best


def _trim_to_cap(params: DecisionParams, held: tuple[int, int], wish: tuple[int, int], need_p: np.ndarray,
                 need_d: np.ndarray, capped: bool) -> tuple[int, int]:
    """Held targets over the cap, cut toward the wishes only as far as P(serving power <= cap) >= 1 - eps needs.

    Between ``wish`` and ``held`` per pool: for each decode count, the most prefill replicas that fit
    beside it; the most replicas in all win (a tie: more decode). The wishes if nothing above them fits.
    """
    best = wish
    for d in range(held[1], wish[1] - 1, -1):
        p = _most_prefill_within_cap(params, wish[0], held[0], d, need_p, need_d, capped)
        if p is not None and p + d > sum(best):
            best = (p, d)
    return best


def _most_prefill_within_cap(params: DecisionParams, lo: int, hi: int, n_d: int, need_p: np.ndarray,
                             need_d: np.ndarray, capped: bool) -> int | None:
    """The most prefill replicas in ``[lo, hi]`` beside ``n_d`` decode replicas with P(power <= cap)
    >= 1 - eps (bisection: power grows with the count); None if even ``lo`` does not fit."""
    ok = 1 - params.power_eps
    if _p_power_ok(params, lo, n_d, need_p, need_d, capped=capped) < ok:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _p_power_ok(params, mid, n_d, need_p, need_d, capped=capped) >= ok:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _p_power_ok(params: DecisionParams, n_p: int, n_d: int, need_p: np.ndarray, need_d: np.ndarray,
                capped: bool) -> float:
    """P(serving power <= cap) over samples, worst step; training is shed first so it never counts."""
    tp = params.capacity.gpus_per_replica
    busy_p = np.minimum(1.0, need_p / max(n_p, 1e-9))
    # A decode replica draws decode watts while it holds any sequence: busy once it has one.
    busy_d = np.minimum(1.0, need_d * params.capacity.max_batch / max(n_d, 1e-9))
    watts = params.power.serving_w(n_p * tp, busy_p, n_d * tp, busy_d, freq_capped=capped)
    return float((watts <= params.power_cap_w).mean(axis=0).min())

"""Trace-driven simulation of the prefill and decode pools under a scaling policy.

Time advances in fixed ticks (10 s for multi-day traces, 1 s for hour-long ones); in each tick
the pools are fluid queues driven by the profiled capacity model: prefill drains a token
backlog at the replicas' profiled rate (plus an M/D/1 wait for arrivals within the tick),
decode runs continuous batches up to the largest profiled batch with TPOT from the profile, and extra
sequences wait for a slot. Replicas cold-start before serving; power follows POLCA's reactive
order on the draw the tick's activity gives (shed training, cap clocks, brake). Per-request SLO
attainment is scored after the run,
vectorised over the trace's request groups with each request's own prompt and output length.
The only randomness is in the trace synthesis and the policy's forecaster: a seeded run is
reproducible.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Protocol

import numpy as np

from autoscaler.capacity import CapacityModel
from autoscaler.decision import Decision, PoolView, Snapshot
from autoscaler.indicators import INDICATORS, ClusterIndicators, IndicatorSeries
from autoscaler.power import PowerModel, check_power_cap, plan_power
from autoscaler.traces import TickTrace


# Time constant of the prefill utilisation the M/D/1 wait uses: longer than a 1 s tick's noise,
# shorter than the minutes over which load moves.
UTIL_SMOOTHING_S = 30.0


class _Fluid(NamedTuple):
    """The pools' fluid state between ticks."""

    q_tok: float = 0.0  # prefill backlog: tokens, requests, and their output tokens
    q_req: float = 0.0
    q_out: float = 0.0
    active: float = 0.0  # decode: sequences and their remaining tokens
    remaining: float = 0.0
    util: float = 0.0  # prefill utilisation smoothed over UTIL_SMOOTHING_S (the M/D/1 wait's)
    in_service: float = 0.0  # requests waiting within the last tick or being prefilled
    concurrency: float = 0.0  # the last tick's decoding sequences, over all replicas


class _Tick(NamedTuple):
    """One tick served: the state after it, its prefill wait, TPOT, decode-slot wait, busy fractions and
    the work waiting for a replica (prefill requests, decode sequences)."""

    state: _Fluid
    wait: float
    tpot: float
    dwait: float
    busy: tuple[float, float]
    queued: tuple[float, float]


class SimulationError(ValueError):
    """A simulator parameter or policy output it cannot use."""


class Policy(Protocol):
    """A scaling policy: called every ``interval_s`` with what the cluster reports, returns targets.

    A policy that also learns inside ``step`` (fits, online updates) may keep ``decision_s``, the
    seconds of each decision alone (forecast sampling + optimisation); the summary's
    ``decision_p99_ms`` then reads it, and ``step_p99_ms`` the whole step. One that wants its
    decisions at a phase sets ``offset_s``, the time of its first (0 if it has none).
    """

    name: str
    interval_s: float

    def step(self, snapshot: Snapshot) -> Decision: ...


@dataclass(frozen=True)
class ClusterParams:
    """The simulated cluster: hardware, SLOs, cold start, bounds, cluster size and power cap."""

    capacity: CapacityModel
    power: PowerModel
    ttft_slo_s: float = 2.0
    tpot_slo_s: float = 0.1
    cold_start_s: float = 60.0
    min_replicas: tuple[int, int] = (1, 1)
    max_replicas: tuple[int, int] = (64, 64)
    initial_replicas: tuple[int, int] = (1, 1)
    total_gpus: int | None = None
    power_cap_w: float | None = None
    history_window_s: float = 8 * 86_400.0

    def __post_init__(self) -> None:
        for name, lo, hi, init in zip(("prefill", "decode"), self.min_replicas, self.max_replicas, self.initial_replicas):
            if not 0 <= lo <= init <= hi:
                raise SimulationError(f"{name}: need 0 <= min_replicas <= initial_replicas <= max_replicas")
        if not (math.isfinite(self.cold_start_s) and self.cold_start_s >= 0):
            raise SimulationError(f"cold_start_s must be a finite number >= 0, got {self.cold_start_s}")
        check_power_cap(self.power_cap_w, SimulationError)

    @property
    def gpus(self) -> int:
        """GPUs in the cluster; those serving does not hold run the training job."""
        serving_max = sum(self.max_replicas) * self.capacity.gpus_per_replica
        return self.total_gpus if self.total_gpus is not None else serving_max


@dataclass
class SimResult:
    """Per-tick records and per-request scores of one run; :meth:`summary` is what the CLI prints."""

    policy: str
    trace: str
    step_s: float
    prefill_replicas: np.ndarray
    decode_replicas: np.ndarray
    prefill_gpus_held: np.ndarray
    decode_gpus_held: np.ndarray
    power_w: np.ndarray
    serving_w: np.ndarray
    training_gpus: np.ndarray
    freq_capped: np.ndarray
    violated: np.ndarray
    demand: np.ndarray
    prefill_tokens_per_s: np.ndarray  # one replica's prefill rate each tick, at full clocks
    forecast_bands: dict[int, np.ndarray]
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    weight: np.ndarray
    ok: np.ndarray
    tick_attainment: np.ndarray
    scaling_actions: int
    step_latency_s: np.ndarray
    decision_latency_s: np.ndarray
    wall_s: float
    power_cap_w: float | None
    ttft_slo_s: float
    tpot_slo_s: float
    request_tick: np.ndarray  # the tick of each scored request group (``ttft_s``, ``tpot_s``, ``weight``)
    pool_power_w: np.ndarray  # [T, 2] serving watts of the prefill and decode pools
    queue: np.ndarray  # [T, 2] prefill requests and decode sequences waiting for a replica
    kv_use: np.ndarray  # decode batch slots in use, of the profile's largest batch (the cap); NaN without replicas
    decisions: list[tuple[float, Decision]] = field(default_factory=list)  # (time, what the policy decided)

    def indicators(self) -> ClusterIndicators:
        """The run as the cluster -> pool indicator hierarchy a live controller reads, one row per tick.

        Both pools see the trace's demand (every request passes through both). Each pool reports the
        latency it decides, NaN for the other: TTFT's 99th percentile over the tick's requests on
        prefill, TPOT's on decode (NaN in a tick without arrivals); KV use is the decode pool's.
        """
        n, w = self.prefill_replicas.size, self.weight
        ttft = _tick_quantile(self.ttft_s, w, self.request_tick, n, 0.99)
        tpot = _tick_quantile(self.tpot_s, w, self.request_tick, n, 0.99)
        none = np.full(n, np.nan)
        pools = {}
        for i, (pool, latency, kv) in enumerate((("prefill", (ttft, none), none),
                                                  ("decode", (none, tpot), self.kv_use))):
            values = np.column_stack([self.demand, self.queue[:, i], kv, *latency, self.pool_power_w[:, i]])
            pools[pool] = IndicatorSeries(pool, self.step_s, 0.0, INDICATORS, values)
        return ClusterIndicators(pools)

    def summary(self) -> dict[str, float | int | str | None]:
        w = self.weight
        hours = self.step_s / 3600.0
        return {
            "policy": self.policy,
            "trace": self.trace,
            "requests": float(w.sum()),
            "slo_attainment": float((self.ok * w).sum() / w.sum()) if w.sum() else 1.0,
            "ttft_attainment": float(((self.ttft_s <= self.ttft_slo_s) * w).sum() / w.sum()) if w.sum() else 1.0,
            "tpot_attainment": float(((self.tpot_s <= self.tpot_slo_s) * w).sum() / w.sum()) if w.sum() else 1.0,
            "gpu_hours": float((self.prefill_gpus_held + self.decode_gpus_held).sum() * hours),
            "energy_kwh": float(self.serving_w.sum() * self.step_s / 3.6e6),
            "cluster_energy_kwh": float(self.power_w.sum() * self.step_s / 3.6e6),
            "training_gpu_hours": float(self.training_gpus.sum() * hours),
            # Episodes (maximal runs of violating ticks) and seconds, both independent of the tick:
            # a count of ticks made a 1 s trace's violations five times a 5 s trace's.
            "power_violations": int(np.count_nonzero(np.diff(self.violated.astype(np.int8), prepend=0) == 1)),
            "power_violation_s": float(self.violated.sum() * self.step_s),
            "freq_capped_s": float(self.freq_capped.sum() * self.step_s),
            "scaling_actions": int(self.scaling_actions),
            "ttft_p90_s": _wq(self.ttft_s, w, 0.90),
            "ttft_p99_s": _wq(self.ttft_s, w, 0.99),
            "tpot_p90_s": _wq(self.tpot_s, w, 0.90),
            "tpot_p99_s": _wq(self.tpot_s, w, 0.99),
            "mean_prefill_replicas": float(self.prefill_replicas.mean()),
            "mean_decode_replicas": float(self.decode_replicas.mean()),
            "decision_p99_ms": _p99_ms(self.decision_latency_s),
            "step_p99_ms": _p99_ms(self.step_latency_s),
            "decisions": int(self.step_latency_s.size),
            "power_cap_w": self.power_cap_w,
            "sim_wall_s": self.wall_s,
        }

    def bindings(self) -> dict[str, dict[str, int]]:
        """How many of the run's decisions each reason bound, per pool, most frequent first."""
        counts: dict[str, Counter] = {}
        for _, decision in self.decisions:
            for pool, reason in decision.reasons.items():
                counts.setdefault(pool, Counter())[reason.binding] += 1
        return {pool: dict(c.most_common()) for pool, c in counts.items()}

    def write_decisions(self, path: str | Path) -> Path:
        """One JSON line per decision: ``t_s`` and :meth:`Decision.to_dict` (targets, reasons, power)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w") as out:
            for now, decision in self.decisions:
                out.write(json.dumps({"t_s": now, **decision.to_dict()}) + "\n")
        return path


def _p99_ms(seconds: np.ndarray) -> float:
    return float(np.quantile(seconds, 0.99) * 1e3) if seconds.size else 0.0


def _wq(values: np.ndarray, weight: np.ndarray, q: float) -> float:
    """Weighted quantile; infinite latencies (requests never served) count as misses beyond any SLO."""
    if values.size == 0 or weight.sum() == 0:
        return 0.0
    order = np.argsort(values, kind="stable")
    cum = np.cumsum(weight[order])
    i = int(np.searchsorted(cum, q * cum[-1]))
    return float(values[order][min(i, values.size - 1)])


def _tick_quantile(values: np.ndarray, weight: np.ndarray, tick: np.ndarray, n: int, q: float) -> np.ndarray:
    """Each tick's weighted ``q`` quantile of ``values`` by the rule of :func:`_wq`; NaN where it has none."""
    out = np.full(n, np.nan)
    keep = weight > 0
    values, weight, tick = values[keep], weight[keep], tick[keep]
    if not values.size:
        return out
    order = np.lexsort((values, tick))
    values, weight, tick = values[order], weight[order], tick[order]
    cum = np.cumsum(weight)
    ticks, first, count = np.unique(tick, return_index=True, return_counts=True)
    before = np.where(first > 0, cum[first - 1], 0.0)
    total = cum[first + count - 1] - before
    i = np.searchsorted(cum, before + q * total)
    out[ticks] = values[np.clip(i, first, first + count - 1)]
    return out


def _request_latency(cap: CapacityModel, wait, slow, tpot, dwait, prompt_tokens, output_tokens):
    """TTFT and TPOT of requests arriving in a tick: the tick's prefill wait plus their own prefill
    (slowed by capped clocks), and the tick's TPOT plus the wait for a decode slot spread over their
    output. Scalars (one tick's mean request, as a live loop's histograms report it) or arrays."""
    return wait + cap.prefill_time_s(prompt_tokens) * slow, tpot + dwait / np.maximum(output_tokens - 1.0, 1.0)


def simulate(trace: TickTrace, policy: Policy, params: ClusterParams,
             progress: Callable[[int, int], None] | None = None) -> SimResult:
    """Replay ``trace`` under ``policy``; ``progress(done, total)`` is called every ~1% of ticks.

    The policy sees only the demand of ticks already finished (never the current or later ones).
    """
    cap, pw = params.capacity, params.power
    dt = trace.step_s
    n = trace.n_ticks
    tp = cap.gpus_per_replica
    rates = trace.rates()
    cum_n, cum_prompt, cum_out = (np.concatenate([[0.0], np.cumsum(x)]) for x in
                                  (trace.n_requests, trace.prompt_tokens, trace.output_tokens))
    mean_prompt_all = np.divide(trace.prompt_tokens, np.maximum(trace.n_requests, 1e-9))
    # A replica's prefill rate at the prompts it serves: the tick's arrivals', else the last arrivals'.
    has = trace.n_requests > 0
    last_arrivals = np.maximum.accumulate(np.where(has, np.arange(n), -1))
    first = int(np.argmax(has)) if has.any() else 0
    served_prompt = mean_prompt_all[np.where(last_arrivals >= 0, last_arrivals, first)]
    prefill_rate = cap.prefill_tokens_per_s(mean_prompt_tokens=served_prompt)
    decode_batch_cap = cap.max_batch
    ready = list(params.initial_replicas)
    starting: list[deque[float]] = [deque(), deque()]
    target = list(params.initial_replicas)
    state = _Fluid()
    smooth = 1.0 - math.exp(-dt / UTIL_SMOOTHING_S)

    def serve(s: _Fluid, t: int, p: int, d: int, slow: float, scale: float) -> _Tick:
        """Tick ``t`` served from state ``s`` by ``p`` prefill and ``d`` decode replicas, prefill ``slow``
        times slower and decode TPOT ``1 / scale`` times longer than profiled; ``s`` is left as it is,
        so that the power manager can try clocks before the one it picks is committed."""
        # Prefill: fluid backlog drained at the replicas' profiled rate.
        a_tok, a_req, a_out = trace.prompt_tokens[t], trace.n_requests[t], trace.output_tokens[t]
        rate = p * prefill_rate[t] / slow
        cap_tok = rate * dt
        total = s.q_tok + a_tok
        served = min(total, cap_tok)
        frac = served / total if total > 0 else 0.0
        q_tok = total - served
        util = s.util + (min(1.0, a_tok / cap_tok if cap_tok > 0 else 1.0) - s.util) * smooth
        done_req, done_out = (s.q_req + a_req) * frac, (s.q_out + a_out) * frac
        q_req, q_out = s.q_req + a_req - done_req, s.q_out + a_out - done_out
        if a_req > 0 and rate > 0:
            # Random arrivals queue even below capacity: M/D/1 wait at the smoothed utilisation
            # (the fluid backlog already carries overload across ticks).
            rho = min(util, 0.95)
            own = float(cap.prefill_time_s(mean_prompt_all[t]))
            mdl = rho * own * slow / (2 * (1 - rho))
            wait = (s.q_tok + q_tok) / 2 / rate + mdl
            # Requests waiting within the tick or being prefilled (Little's law): Serve counts them
            # as ongoing, beside the backlog carried over.
            in_service = a_req / dt * (mdl + own * slow)
            waiting = a_req / dt * mdl
        elif a_req > 0:
            # No prefill capacity: every arrival stays in the backlog (counted there), unserved.
            wait, in_service, waiting = math.inf, 0.0, 0.0
        else:
            wait = in_service = waiting = 0.0
        # Decode: continuous batching up to the profiled batch, as token work. The batch a replica
        # runs is the tick's time-average concurrency, token-seconds of decoding over the tick
        # (Little's law), solved with TPOT by fixed point; beyond the batch cap, work carries
        # over and sequences wait for a slot.
        active = s.active + done_req
        remaining = s.remaining + done_out
        ctx = mean_prompt_all[t] + (remaining / active / 2 if active > 0 else 0.0)
        if d > 0 and remaining > 0:
            full_tpot = float(cap.tpot_s(decode_batch_cap, ctx)) / scale
            max_tokens = d * decode_batch_cap * dt / full_tpot
            if remaining <= max_tokens:
                produced = remaining
                tpot = float(cap.tpot_s(1, ctx)) / scale
                for _ in range(4):
                    concurrency = min(d * decode_batch_cap, produced * tpot / dt)
                    tpot = float(cap.tpot_s(concurrency / d, ctx)) / scale
                finished, dwait, queued = active, 0.0, 0.0
            else:
                produced, tpot, concurrency = max_tokens, full_tpot, d * decode_batch_cap
                finished = active * produced / remaining
                queued = max(0.0, active - concurrency)
                dwait = queued / (finished / dt) if finished > 0 else math.inf
            active, remaining = active - finished, remaining - produced
        else:
            tpot = float(cap.tpot_s(1, ctx))
            concurrency, queued = 0.0, active
            dwait = math.inf if remaining > 0 else 0.0
        # Busy at the clocks this tick ran at: a saturated capped pool is busy all the tick.
        busy = (served / cap_tok if cap_tok > 0 else 0.0, min(1.0, concurrency / d) if d else 0.0)
        return _Tick(_Fluid(q_tok, q_req, q_out, active, remaining, util, in_service, concurrency),
                     wait, tpot, dwait, busy, (q_req + waiting, queued))
    rec = {k: np.zeros(n) for k in ("p", "d", "pg", "dg", "power", "train", "capped", "viol", "wait", "slow",
                                     "tpot", "dwait", "serving_w", "scale", "busy_p", "busy_d", "queue_p", "queue_d",
                                     "kv")}
    observed = np.full((n, 2), np.nan)  # each tick's mean TTFT and TPOT, as the router's histograms report
    bands: dict[int, np.ndarray] = {q: np.full(n, np.nan) for q in (5, 50, 95)}
    latencies: list[float] = []
    decisions: list[tuple[float, Decision]] = []
    actions = 0
    offset = float(getattr(policy, "offset_s", 0.0))
    if not policy.interval_s > 0:
        raise SimulationError(f"policy {policy.name}: interval_s must be > 0, got {policy.interval_s}")
    next_decision = offset
    window = int(params.history_window_s // dt)
    recent_prompts: deque[float] = deque(maxlen=max(1, int(600 // dt)))
    start_wall = time.perf_counter()
    report_every = max(1, n // 100)
    for t in range(n):
        now = t * dt
        for i in range(2):
            while starting[i] and starting[i][0] <= now + 1e-9:
                starting[i].popleft()
                ready[i] += 1
        if now + 1e-9 >= next_decision:
            lo = max(0, t - window)
            hist_n = cum_n[t] - cum_n[lo]
            mean_prompt = (cum_prompt[t] - cum_prompt[lo]) / hist_n if hist_n else 1024.0
            mean_out = (cum_out[t] - cum_out[lo]) / hist_n if hist_n else 256.0
            tail = float(np.quantile(recent_prompts, 0.9)) if recent_prompts else mean_prompt
            snap = Snapshot(now_s=now, step_s=dt, history=rates[lo:t],
                            prefill=PoolView(ready[0], len(starting[0]), target[0]),
                            decode=PoolView(ready[1], len(starting[1]), target[1]),
                            ongoing_prefill=state.q_req + state.in_service,
                            ongoing_decode=state.concurrency + state.active,
                            mean_prompt_tokens=float(mean_prompt), mean_output_tokens=float(mean_out),
                            tail_prompt_tokens=max(tail, float(mean_prompt)), prefill_backlog_tokens=state.q_tok,
                            decode_queued_sequences=state.active, latency=observed[lo:t])
            t0 = time.perf_counter()
            decision = policy.step(snap)
            latencies.append(time.perf_counter() - t0)
            decisions.append((now, decision))
            band = getattr(policy, "last_band", None)
            if band is not None:
                for q, values in band.items():
                    end = min(n, t + values.size)
                    bands[q][t:end] = values[: end - t]
            for i, new in enumerate((decision.prefill, decision.decode)):
                new = int(min(max(new, params.min_replicas[i]), params.max_replicas[i]))
                if new != target[i]:
                    actions += 1
                have = ready[i] + len(starting[i])
                for _ in range(new - have):
                    starting[i].append(now + params.cold_start_s)
                for _ in range(have - new):
                    if starting[i]:
                        starting[i].pop()  # cancel the newest cold start first
                    else:
                        ready[i] -= 1
                target[i] = new
            # The schedule's next slot (offset + k * interval) after now, not now + interval: with a
            # tick that does not divide the interval (7 s and 10 s) decisions keep the interval's rate.
            next_decision = offset + policy.interval_s * (math.floor((now - offset) / policy.interval_s + 1e-9) + 1)
        p, d = ready
        held = (p + len(starting[0])) * tp, (d + len(starting[1])) * tp
        # Power, as POLCA's reactive controller: the tick at full clocks and the activity its demand
        # gives; if serving and training exceed the cap, training is shed; if serving alone does,
        # clocks are capped and the tick served again; if it still does, serving is braked. The
        # state goes on from the tick at the clocks finally chosen, once.
        idle_w = (len(starting[0]) + len(starting[1])) * tp * pw.idle_w
        tried: dict[tuple[bool, float], _Tick] = {}

        def serving_w(freq_capped: bool, scale: float) -> float:
            slow = (pw.prefill_slowdown_capped if freq_capped else 1.0) / scale
            tick = tried[freq_capped, scale] = serve(state, t, p, d, slow, scale)
            return (float(pw.serving_w(p * tp, tick.busy[0], d * tp, tick.busy[1], freq_capped)) + idle_w) * scale

        capped_full_w = float(pw.serving_w(p * tp, 1.0, d * tp, 1.0, freq_capped=True)) + idle_w
        plan = plan_power(pw, params.power_cap_w, serving_w, capped_full_w, max(0, params.gpus - held[0] - held[1]))
        tick = tried[plan.freq_capped, plan.serving_scale]
        state = tick.state
        slow = plan.prefill_slowdown / plan.serving_scale
        wait, tpot, dwait = tick.wait, tick.tpot, tick.dwait
        training_w = plan.training_gpus * pw.training_w
        for key, value in (("p", p), ("d", d), ("pg", held[0]), ("dg", held[1]), ("power", plan.power_w),
                           ("train", plan.training_gpus), ("capped", plan.freq_capped), ("viol", plan.violated),
                           ("wait", wait), ("slow", slow), ("tpot", tpot), ("dwait", dwait),
                           ("serving_w", plan.power_w - training_w), ("scale", plan.serving_scale),
                           ("busy_p", tick.busy[0]), ("busy_d", tick.busy[1]), ("queue_p", tick.queued[0]),
                           ("queue_d", tick.queued[1]),
                           ("kv", state.concurrency / (d * decode_batch_cap) if d else math.nan)):
            rec[key][t] = value
        a_req = trace.n_requests[t]
        if a_req > 0:
            recent_prompts.append(trace.prompt_tokens[t] / a_req)
            observed[t] = _request_latency(cap, wait, slow, tpot, dwait, mean_prompt_all[t],
                                           trace.output_tokens[t] / a_req)
        if progress is not None and (t % report_every == 0 or t == n - 1):
            progress(t + 1, n)
    wall = time.perf_counter() - start_wall
    g = trace.groups
    ttft, tpot = _request_latency(cap, rec["wait"][g.tick], rec["slow"][g.tick], rec["tpot"][g.tick],
                                  rec["dwait"][g.tick], g.prompt_tokens, g.output_tokens)
    ok = (ttft <= params.ttft_slo_s) & (tpot <= params.tpot_slo_s)
    tick_ok = np.bincount(g.tick, ok * g.weight, n) / np.maximum(np.bincount(g.tick, g.weight, n), 1e-12)
    tick_ok[trace.n_requests == 0] = 1.0
    # Each pool's watts, as serving_w above splits them: its replicas at their activity and clocks,
    # its cold-starting replicas idle, both under the tick's brake.
    capped = rec["capped"].astype(bool)
    pool_w = np.column_stack([
        (np.where(capped, pw.serving_w(*use, freq_capped=True), pw.serving_w(*use)) + starting * pw.idle_w) * rec["scale"]
        for use, starting in (((rec["p"] * tp, rec["busy_p"], 0.0, 0.0), rec["pg"] - rec["p"] * tp),
                              ((0.0, 0.0, rec["d"] * tp, rec["busy_d"]), rec["dg"] - rec["d"] * tp))])
    result = SimResult(
        policy=policy.name, trace=trace.name, step_s=dt, prefill_replicas=rec["p"], decode_replicas=rec["d"],
        prefill_gpus_held=rec["pg"], decode_gpus_held=rec["dg"], power_w=rec["power"], serving_w=rec["serving_w"], training_gpus=rec["train"],
        freq_capped=rec["capped"].astype(bool), violated=rec["viol"].astype(bool), demand=rates,
        prefill_tokens_per_s=prefill_rate, forecast_bands=bands,
        ttft_s=ttft, tpot_s=tpot, weight=g.weight, ok=ok, tick_attainment=tick_ok, scaling_actions=actions,
        step_latency_s=np.asarray(latencies), decision_latency_s=np.asarray(getattr(policy, "decision_s", latencies)),
        wall_s=wall, power_cap_w=params.power_cap_w,
        ttft_slo_s=params.ttft_slo_s, tpot_slo_s=params.tpot_slo_s, decisions=decisions,
        request_tick=g.tick, pool_power_w=pool_w, queue=np.column_stack([rec["queue_p"], rec["queue_d"]]),
        kv_use=rec["kv"])
    return result


"""A hindsight bound, not a policy anyone can run: it reads the trace's future demand.

It answers "what would a scaler with perfect knowledge of future demand and the same cold start,
bounds and profiled curves spend?" so that a target can be judged feasible or not. Per tick it
computes the replicas the arrivals need so that no window's prompt tokens (1 to 30 s windows
ending at that tick) wait more than ``wait_budget_s`` beyond the window (a fluid arrival curve,
as network calculus sizes a server), and decode's peak 10 s need (static's rule). At every tick
it asks for the most either pool needs from now until a replica started now would be serving,
and keeps a replica ``drain_s`` past the need so the backlog drains; ``scale`` < 1 sizes below
that, to find the cheapest hindsight run that still reaches an attainment.
"""

from __future__ import annotations

import math

import numpy as np

from autoscaler.decision import Decision, Reason, Snapshot, pool_demand
from autoscaler.simulator import ClusterParams
from autoscaler.traces import TickTrace

from . import decision_params
from .static import PEAK_WINDOW_S, trace_lengths

WINDOWS_S = (1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0)


def _trailing_mean(rates: np.ndarray, k: int) -> np.ndarray:
    """Mean of the ``k`` ticks ending at each tick (fewer at the start), per column."""
    csum = np.concatenate([np.zeros((1,) + rates.shape[1:]), np.cumsum(rates, axis=0)])
    idx = np.arange(1, rates.shape[0] + 1)
    return (csum[idx] - csum[np.maximum(0, idx - k)]) / k


class HindsightPolicy:
    """Replica counts from the trace's own future (for bounds only; never a benchmark entrant)."""

    name = "hindsight"

    def __init__(self, trace: TickTrace, cluster: ClusterParams, scale: float = 1.0, wait_budget_s: float = 1.0,
                 drain_s: float = 10.0) -> None:
        if scale <= 0:
            raise ValueError(f"scale must be positive, got {scale}")
        self.interval_s = trace.step_s
        self.step_s = trace.step_s
        mean_prompt, tail, mean_out = trace_lengths(trace)
        rates = trace.rates()
        per_replica = cluster.capacity.prefill_tokens_per_s(mean_prompt_tokens=mean_prompt)
        need_p = np.zeros(trace.n_ticks)
        for w in WINDOWS_S:
            k = max(1, int(round(w / trace.step_s)))
            tokens = _trailing_mean(rates[:, 1], k) * k * trace.step_s
            need_p = np.maximum(need_p, tokens / (per_replica * (k * trace.step_s + wait_budget_s)))
        k = max(1, int(round(PEAK_WINDOW_S / trace.step_s)))
        _, need_d = pool_demand(_trailing_mean(rates, k)[None], cluster.capacity, decision_params(cluster),
                                mean_prompt, tail, mean_out)
        lead = int(math.ceil(cluster.cold_start_s / trace.step_s)) + 1
        back = max(k, int(math.ceil(drain_s / trace.step_s)))
        self.targets = []
        for i, need in enumerate((need_p, need_d[0])):
            span = lead + back
            padded = np.concatenate([np.zeros(back), need, np.zeros(lead)])
            ahead = np.lib.stride_tricks.sliding_window_view(padded, span)[: need.size].max(axis=1)
            counts = np.ceil(scale * ahead - 1e-9)
            self.targets.append(np.clip(counts, cluster.min_replicas[i], cluster.max_replicas[i]).astype(int))

    def step(self, snapshot: Snapshot) -> Decision:
        t = min(int(round(snapshot.now_s / self.step_s)), self.targets[0].size - 1)
        reason = Reason("hindsight", 1.0, float("nan"))
        return Decision(int(self.targets[0][t]), int(self.targets[1][t]), {"prefill": reason, "decode": reason})

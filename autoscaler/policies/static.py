"""Static peak provisioning: the replica counts the trace's busiest tick needs, held throughout."""

from __future__ import annotations

import math

import numpy as np

from autoscaler.decision import Decision, Reason, Snapshot, pool_demand
from autoscaler.simulator import ClusterParams
from autoscaler.traces import TickTrace

from . import check_headroom, decision_params


# Peak of the demand's moving mean over this window: shorter bursts are absorbed by the queue
# within the TTFT SLO, longer ones are what provisioning must carry.
PEAK_WINDOW_S = 10.0


def trace_lengths(trace: TickTrace) -> tuple[float, float, float]:
    """Whole-trace mean prompt, 90th-percentile prompt (at least the mean) and mean output tokens (hindsight)."""
    g = trace.groups
    total = max(float(trace.n_requests.sum()), 1e-9)
    mean_prompt = float(trace.prompt_tokens.sum() / total)
    mean_out = float(trace.output_tokens.sum() / total)
    order = np.argsort(g.prompt_tokens)
    cum = np.cumsum(g.weight[order])
    tail = float(g.prompt_tokens[order][np.searchsorted(cum, 0.9 * cum[-1])])
    return mean_prompt, max(tail, mean_prompt), mean_out


class StaticPolicy:
    """Fixed (prefill, decode) replicas; sized with hindsight, as operators size for a known peak."""

    name = "static"
    interval_s = math.inf

    def __init__(self, prefill: int, decode: int) -> None:
        self.prefill, self.decode = prefill, decode

    @classmethod
    def for_peak(cls, trace: TickTrace, cluster: ClusterParams, headroom: float = 1.0) -> StaticPolicy:
        """Size each pool for the peak 10 s demand with the profiled curves, clipped to the cluster's bounds.

        ``headroom``: the operator's multiplier, ``ceil(headroom * need)`` replicas per pool (> 0).
        """
        headroom = check_headroom(headroom)
        params = decision_params(cluster)
        mean_prompt, tail, mean_out = trace_lengths(trace)
        k = max(1, int(round(PEAK_WINDOW_S / trace.step_s)))
        rates = np.apply_along_axis(lambda c: np.convolve(c, np.ones(k) / k, mode="valid"), 0, trace.rates())[None]
        need_p, need_d = pool_demand(rates, cluster.capacity, params, mean_prompt, tail, mean_out)
        p = int(np.clip(math.ceil(headroom * need_p.max()), cluster.min_replicas[0], cluster.max_replicas[0]))
        d = int(np.clip(math.ceil(headroom * need_d.max()), cluster.min_replicas[1], cluster.max_replicas[1]))
        return cls(p, d)

    def step(self, snapshot: Snapshot) -> Decision:
        reason = Reason("static_peak", 1.0, float("nan"))
        return Decision(self.prefill, self.decode, {"prefill": reason, "decode": reason})

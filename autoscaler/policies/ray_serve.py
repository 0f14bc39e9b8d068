"""Ray Serve's default autoscaling policy, per pool: ongoing requests over a per-replica target.

Mirrors ``ray.serve.autoscaling_policy`` 2.60: desired = ceil(mean ongoing over the 30 s look-back
/ target_ongoing_requests), applied only after the wish has held for ``upscale_delay_s`` (30 s)
up or ``downscale_delay_s`` (600 s) down, timed by elapsed seconds. Serve's default target (2)
is for web requests; an LLM user sets it to what a replica sustains, so we give it the
profile's: the SLO decode batch, and a prefill replica's occupancy at its SLO load.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from autoscaler.capacity import decode_context_tokens
from autoscaler.decision import Decision, Reason, Snapshot
from autoscaler.simulator import ClusterParams

from . import check_headroom, decision_params


@dataclass(frozen=True)
class DelayState:
    """Since when the policy has wanted to move, and in which direction (+1 up, -1 down)."""

    direction: int = 0
    since_s: float | None = None


def apply_delay(desired: int, current: int, state: DelayState, now_s: float, upscale_delay_s: float,
                downscale_delay_s: float) -> tuple[int, DelayState]:
    """Serve's ``_apply_delay_logic``: move only once the same wish has held for the delay."""
    if desired == current:
        return current, DelayState()
    direction = 1 if desired > current else -1
    since = state.since_s if state.direction == direction and state.since_s is not None else now_s
    delay = upscale_delay_s if direction > 0 else downscale_delay_s
    if now_s - since + 1e-6 >= delay:
        return desired, DelayState()
    return current, DelayState(direction, since)


class RayServePolicy:
    """Serve's default policy per pool. ``headroom`` (> 0) divides target_ongoing_requests: above 1, more replicas."""

    name = "ray-serve"

    def __init__(self, cluster: ClusterParams, interval_s: float, look_back_s: float = 30.0,
                 upscale_delay_s: float = 30.0, downscale_delay_s: float = 600.0, headroom: float = 1.0) -> None:
        self.headroom = check_headroom(headroom)
        self.cluster = cluster
        self.params = decision_params(cluster)
        self.interval_s = interval_s
        self.look_back_s = look_back_s
        self.upscale_delay_s, self.downscale_delay_s = upscale_delay_s, downscale_delay_s
        self.samples: deque[tuple[float, float, float]] = deque()
        self.states = (DelayState(), DelayState())

    def targets_per_replica(self, snapshot: Snapshot) -> tuple[float, float]:
        """target_ongoing_requests per pool: a replica's occupancy at its SLO load (Little's law,
        L = lambda * mean TTFT, from the profile); decode's is the SLO batch; both over ``headroom``."""
        cap, p = self.cluster.capacity, self.params
        ctx = decode_context_tokens(snapshot.mean_prompt_tokens, snapshot.mean_output_tokens)
        tokens_s = cap.prefill_tokens_per_s_within(p.ttft_slo_s, snapshot.mean_prompt_tokens,
                                                   snapshot.tail_prompt_tokens, p.latency_margin)
        mean_ttft = float(cap.ttft_s(tokens_s, snapshot.mean_prompt_tokens, snapshot.mean_prompt_tokens))
        prefill = max(1.0, tokens_s / max(snapshot.mean_prompt_tokens, 1.0) * mean_ttft)
        decode = max(1.0, float(cap.max_batch_within(p.tpot_slo_s, ctx, p.latency_margin)))
        return prefill / self.headroom, decode / self.headroom

    def step(self, snapshot: Snapshot) -> Decision:
        now = snapshot.now_s
        self.samples.append((now, snapshot.ongoing_prefill, snapshot.ongoing_decode))
        while self.samples and self.samples[0][0] < now - self.look_back_s:
            self.samples.popleft()
        targets = self.targets_per_replica(snapshot)
        out, states, reasons = [], [], {}
        for i, (pool, view) in enumerate((("prefill", snapshot.prefill), ("decode", snapshot.decode))):
            ongoing = sum(s[i + 1] for s in self.samples) / len(self.samples)
            lo, hi = self.cluster.min_replicas[i], self.cluster.max_replicas[i]
            desired = min(max(math.ceil(ongoing / targets[i]), lo), hi)
            n, state = apply_delay(desired, view.target, self.states[i], now, self.upscale_delay_s,
                                   self.downscale_delay_s)
            out.append(n)
            states.append(state)
            reasons[pool] = Reason("delay" if n != desired else "target_ongoing_requests", float("nan"), float("nan"))
        self.states = tuple(states)
        return Decision(out[0], out[1], reasons)

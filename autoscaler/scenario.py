"""The default cluster for replaying a trace: size, bounds and power cap, printed by the CLI.

The cluster holds ``headroom`` times the replicas static peak provisioning needs (rounded up),
training fills whatever serving does not hold, and the power cap is ``cap_fraction`` of the
cluster's GPUs at TDP (POLCA oversubscribes rows: inference peaks at 79% of provisioned power,
and its policy starts capping clocks at 80%).
"""

from __future__ import annotations

import math

from autoscaler.capacity import CapacityModel
from autoscaler.policies.static import StaticPolicy
from autoscaler.power import PowerModel
from autoscaler.simulator import ClusterParams
from autoscaler.traces import TickTrace


def default_cluster(trace: TickTrace, capacity: CapacityModel, power: PowerModel, ttft_slo_s: float = 2.0,
                    tpot_slo_s: float = 0.1, cold_start_s: float = 60.0, headroom: float = 1.5,
                    cap_fraction: float | None = 0.8, power_cap_w: float | None = None) -> ClusterParams:
    """Cluster params for ``trace``; an explicit ``power_cap_w`` wins over ``cap_fraction``."""
    probe = ClusterParams(capacity=capacity, power=power, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                          cold_start_s=cold_start_s, max_replicas=(10_000, 10_000))
    peak = StaticPolicy.for_peak(trace, probe)
    max_replicas = (math.ceil(headroom * peak.prefill), math.ceil(headroom * peak.decode))
    gpus = sum(max_replicas) * capacity.gpus_per_replica
    cap = power_cap_w if power_cap_w is not None else (cap_fraction * gpus * power.tdp_w if cap_fraction else None)
    return ClusterParams(capacity=capacity, power=power, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                         cold_start_s=cold_start_s, min_replicas=(1, 1), max_replicas=max_replicas,
                         initial_replicas=(peak.prefill, peak.decode), total_gpus=gpus, power_cap_w=cap)

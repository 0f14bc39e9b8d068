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
from autoscaler.simulator import ClusterParams, SimulationError
from autoscaler.traces import TickTrace


def default_cluster(trace: TickTrace, capacity: CapacityModel, power: PowerModel, ttft_slo_s: float = 2.0,
                    tpot_slo_s: float = 0.1, cold_start_s: float = 60.0, headroom: float = 1.5,
                    cap_fraction: float | None = 0.8, power_cap_w: float | None = None) -> ClusterParams:
    """Cluster params for ``trace``; an explicit ``power_cap_w`` wins over ``cap_fraction`` (None: no cap).

    Raises:
        SimulationError: ``headroom`` is not a finite number >= 1 (the cluster starts at static's peak
            counts, so it must hold them), ``cap_fraction`` lies outside (0, 1], or (from ``ClusterParams``)
            ``power_cap_w`` is not a finite number of watts > 0.
    """
    if not (math.isfinite(headroom) and headroom >= 1):
        raise SimulationError(f"headroom (cluster size over static's peak replicas) must be a finite number >= 1, "
                              f"got {headroom!r}")
    if cap_fraction is not None and not 0 < cap_fraction <= 1:
        raise SimulationError(f"cap_fraction (power cap over the cluster's TDP) must lie in (0, 1] (or None: no cap), "
                              f"got {cap_fraction!r}")
    probe = ClusterParams(capacity=capacity, power=power, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                          cold_start_s=cold_start_s, max_replicas=(10_000, 10_000))
    peak = StaticPolicy.for_peak(trace, probe)
    max_replicas = (math.ceil(headroom * peak.prefill), math.ceil(headroom * peak.decode))
    gpus = sum(max_replicas) * capacity.gpus_per_replica
    cap = power_cap_w if power_cap_w is not None else (None if cap_fraction is None else cap_fraction * gpus * power.tdp_w)
    return ClusterParams(capacity=capacity, power=power, ttft_slo_s=ttft_slo_s, tpot_slo_s=tpot_slo_s,
                         cold_start_s=cold_start_s, min_replicas=(1, 1), max_replicas=max_replicas,
                         initial_replicas=(peak.prefill, peak.decode), total_gpus=gpus, power_cap_w=cap)

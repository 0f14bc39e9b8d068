"""Scaling policies compared in the simulator: what users would pick, and ours.

Each is an object with ``name``, ``interval_s`` and ``step(snapshot) -> Decision``; the pure
cores (Ray Serve's delay logic, the Bayesian :func:`autoscaler.decision.decide`) sit inside.
"""

from __future__ import annotations

from autoscaler.decision import DecisionParams
from autoscaler.simulator import ClusterParams

POLICIES = ("static", "ray-serve", "dynamo", "flowtide")


class PolicyError(ValueError):
    """Unknown policy name or a parameter the policy cannot use."""


def decision_params(cluster: ClusterParams, **overrides) -> DecisionParams:
    """The decision's view of the cluster (profile, power, SLOs, bounds, cold start, cap)."""
    base = dict(capacity=cluster.capacity, power=cluster.power, ttft_slo_s=cluster.ttft_slo_s,
                tpot_slo_s=cluster.tpot_slo_s, min_replicas=cluster.min_replicas, max_replicas=cluster.max_replicas,
                cold_start_s=cluster.cold_start_s, power_cap_w=cluster.power_cap_w)
    base.update(overrides)
    return DecisionParams(**base)


def make_policy(name: str, trace, cluster: ClusterParams, forecaster: str = "flow", forecast_step_s: float | None = None,
                seed: int = 0, **kw):
    """Build policy ``name`` for ``trace`` on ``cluster``.

    ``forecast_step_s`` defaults to 600 s (ServeGen's window) for traces of two days or more and
    30 s for shorter ones, whose few rows would not train a forecaster at coarse steps.
    """
    from autoscaler.policies.dynamo import DynamoPolicy
    from autoscaler.policies.flowtide import FlowtidePolicy
    from autoscaler.policies.ray_serve import RayServePolicy
    from autoscaler.policies.static import StaticPolicy

    if name == "static":
        return StaticPolicy.for_peak(trace, cluster)
    if name == "ray-serve":
        return RayServePolicy(cluster, interval_s=trace.step_s, **kw)
    if name == "dynamo":
        return DynamoPolicy(cluster, seed=seed, **kw)
    if name == "flowtide":
        step = forecast_step_s or default_forecast_step_s(trace.duration_s)
        return FlowtidePolicy(cluster, forecaster=forecaster, forecast_step_s=step,
                              min_fit_rows=int(max(8, 86_400 // step if trace.duration_s >= 2 * 86_400 else 40)),
                              seed=seed, **kw)
    raise PolicyError(f"unknown policy {name!r}; choose one of {POLICIES}")


def default_forecast_step_s(duration_s: float) -> float:
    return 600.0 if duration_s >= 2 * 86_400 else 30.0

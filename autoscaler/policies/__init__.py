"""Scaling policies compared in the simulator: what users would pick, and ours.

Each is an object with ``name``, ``interval_s`` and ``step(snapshot) -> Decision``; the pure
cores (Ray Serve's delay logic, the Bayesian :func:`autoscaler.decision.decide`) sit inside.
"""

from __future__ import annotations

import math
from pathlib import Path

from autoscaler.decision import DecisionParams
from autoscaler.simulator import ClusterParams
from autoscaler.traces import whole_multiple

POLICIES = ("static", "ray-serve", "dynamo", "flowtide")
# Traces at least this long are "multi-day" (600 s forecast steps, 10 s ticks); shorter ones are hour-long.
LONG_TRACE_S = 2 * 86_400.0
# Windows of flowtide's arrival-curve burst sizing on short (1 s tick) traces.
SHORT_BURST_WINDOWS_S = (1.0, 2.0, 5.0, 10.0, 30.0)
# On short traces flowtide bootstraps the steps of the last SHORT_BURST_MEMORY_S (the current regime;
# what it has not shown is the unseen-burst prior's) and draws SHORT_SAMPLES samples so that the prior's
# few cells are not lost to sampling noise.
SHORT_BURST_MEMORY_S = 300.0
SHORT_SAMPLES = 256
# On multi-day traces each forecast cell is spread over a recent step's tick-rate profile in this many
# bins (the decision then counts the share of a step's requests served, not whether its peak tick is).
LONG_SHAPE_BINS = 8
LONG_INTERVAL_S = 60.0


class PolicyError(ValueError):
    """Unknown policy name or a parameter the policy cannot use."""


def check_headroom(headroom: float) -> float:
    """A baseline's sizing multiplier, as an operator tunes it: finite and > 0, else :class:`PolicyError`."""
    if not (math.isfinite(headroom) and headroom > 0):
        raise PolicyError(f"headroom must be a finite number > 0, got {headroom!r}")
    return float(headroom)


def decision_params(cluster: ClusterParams, **overrides) -> DecisionParams:
    """The decision's view of the cluster (profile, power, SLOs, bounds, cold start, cap).

    Scale-down waits one cold start (ski rental: keep an idle replica as long as a new one would take
    to become useful); ``scale_down_delay_s`` overrides it.
    """
    base = dict(capacity=cluster.capacity, power=cluster.power, ttft_slo_s=cluster.ttft_slo_s,
                tpot_slo_s=cluster.tpot_slo_s, min_replicas=cluster.min_replicas, max_replicas=cluster.max_replicas,
                cold_start_s=cluster.cold_start_s, scale_down_delay_s=cluster.cold_start_s,
                power_cap_w=cluster.power_cap_w)
    base.update(overrides)
    return DecisionParams(**base)


def make_policy(name: str, trace, cluster: ClusterParams, forecaster: str = "flow", forecast_step_s: float | None = None,
                seed: int = 0, pretrained: str | Path | None = None, **kw):
    """Build policy ``name`` for ``trace`` on ``cluster``.

    ``forecast_step_s`` defaults to 600 s (ServeGen's window) for traces of two days or more and
    30 s for shorter ones, whose few rows would not train a forecaster at coarse steps. On short
    traces (1 s ticks) flowtide also decides every 10 s, sizes each step by its arrival curve
    (1-30 s windows, see ``FlowtidePolicy._peak``), bootstraps (mean, burst) pairs of the last
    5 minutes jointly, adds the unseen-burst prior (``unseen_burst_alpha=1``: a share ``1/(n+1)``
    of samples exceed the recent window). On multi-day traces it spreads each cell over a recent
    step's tick-rate profile (``burst_shape_bins=8``) and decides one tick into each step (and every
    60 s after), sizing the step under way from that tick's mean on (``nowcast_after_s`` and
    ``offset_s`` one tick): a step's rate can jump at its start, and the replicas the forecast made
    before it missed are then asked for after one tick, not a minute. On both, flowtide scales down
    once the lower wish has held one cold start (:func:`decision_params`).
    ``pretrained``: a flow saved by :func:`autoscaler.policies.flowtide.pretrain` on other traces, used
    by flowtide from the first row and updated online.
    """
    from autoscaler.policies.dynamo import DynamoPolicy
    from autoscaler.policies.flowtide import FlowtidePolicy
    from autoscaler.policies.ray_serve import RayServePolicy
    from autoscaler.policies.static import StaticPolicy

    if name == "static":
        return StaticPolicy.for_peak(trace, cluster, **kw)
    if name == "ray-serve":
        return RayServePolicy(cluster, interval_s=trace.step_s, **kw)
    if name == "dynamo":
        return DynamoPolicy(cluster, seed=seed, **kw)
    if name == "flowtide":
        step = forecast_step_s or default_forecast_step_s(trace.duration_s)
        if not whole_multiple(step, trace.step_s):
            # A step's row is the mean of whole ticks; one shorter than a tick looks thousands of steps ahead.
            raise PolicyError(f"forecast_step_s {step:g} must be a whole number of the trace's {trace.step_s:g} s ticks")
        if trace.duration_s < LONG_TRACE_S:
            kw = {"interval_s": 10.0, "burst_windows_s": SHORT_BURST_WINDOWS_S, "joint_bootstrap": True,
                  "burst_window_rows": max(1, int(SHORT_BURST_MEMORY_S // step)), "unseen_burst_alpha": 1.0,
                  "n_samples": SHORT_SAMPLES, **kw}
        else:
            kw = {"interval_s": LONG_INTERVAL_S, "burst_shape_bins": LONG_SHAPE_BINS,
                  "nowcast_after_s": trace.step_s, **kw}
            kw.setdefault("offset_s", trace.step_s % kw["interval_s"])
        if pretrained is not None:
            from autoscaler.policies.flowtide import load_pretrained

            kw["pretrained"], kw["pretrained_level"] = load_pretrained(pretrained)
        return FlowtidePolicy(cluster, forecaster=forecaster, forecast_step_s=step,
                              min_fit_rows=int(max(8, 86_400 // step if trace.duration_s >= LONG_TRACE_S else 40)),
                              seed=seed, **kw)
    raise PolicyError(f"unknown policy {name!r}; choose one of {POLICIES}")


def default_forecast_step_s(duration_s: float) -> float:
    return 600.0 if duration_s >= LONG_TRACE_S else 30.0

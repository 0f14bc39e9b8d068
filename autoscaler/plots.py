"""Plots of one simulated run: demand vs capacity with forecast bands, replicas, SLO attainment, power.

Long runs are reduced to at most ``max_points`` points per curve by block means (block maxima
for demand, so peaks stay visible).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers or in CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from autoscaler.simulator import SimResult  # noqa: E402


def _blocks(x: np.ndarray, k: int, how: str = "mean") -> np.ndarray:
    n = (x.size // k) * k
    if n == 0:
        return x
    b = x[:n].reshape(-1, k)
    with warnings.catch_warnings():
        # Blocks with no forecast at all stay NaN (drawn as gaps); that is not worth a warning.
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmax(b, axis=1) if how == "max" else np.nanmean(b, axis=1)


def plot_run(result: SimResult, prefill_tokens_per_s: float, out_dir: str | Path, max_points: int = 4000) -> Path:
    """Write ``<policy>.png`` with four stacked panels into ``out_dir``; returns its path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    n = result.prefill_replicas.size
    k = max(1, int(np.ceil(n / max_points)))
    hours = _blocks(np.arange(n) * result.step_s / 3600.0, k)
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    ax = axes[0]
    ax.plot(hours, _blocks(result.demand[:, 1], k, "max"), lw=0.6, color="black", label="input tokens/s (demand)")
    ax.plot(hours, _blocks(result.prefill_replicas * prefill_tokens_per_s, k), lw=1.0, color="tab:blue",
            label="prefill capacity (tokens/s)")
    lo, mid, hi = (result.forecast_bands.get(q) for q in (5, 50, 95))
    if lo is not None and np.isfinite(lo).any():
        ax.fill_between(hours, _blocks(lo, k), _blocks(hi, k), color="tab:orange", alpha=0.3, label="forecast 5-95%")
        ax.plot(hours, _blocks(mid, k), lw=0.6, color="tab:orange", label="forecast median")
    ax.set_ylabel("tokens/s")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{result.trace}: policy {result.policy}")
    ax = axes[1]
    ax.plot(hours, _blocks(result.prefill_replicas, k), label="prefill replicas")
    ax.plot(hours, _blocks(result.decode_replicas, k), label="decode replicas")
    ax.set_ylabel("replicas")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[2]
    ax.plot(hours, _blocks(result.tick_attainment, k), lw=0.8, color="tab:green")
    ax.axhline(0.99, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("SLO attainment")
    ax.set_ylim(-0.02, 1.02)
    ax = axes[3]
    ax.plot(hours, _blocks(result.power_w, k) / 1e3, lw=0.8, label="cluster power (kW)")
    if result.power_cap_w is not None:
        ax.axhline(result.power_cap_w / 1e3, color="red", ls="--", lw=0.8, label="cap")
    ax.set_ylabel("kW")
    ax.set_xlabel("hours")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    path = out / f"{result.policy}.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(trace: str, runs: dict[str, list[dict]], out_dir: str | Path, target: float = 0.99) -> Path:
    """Write ``frontier.png``: SLO attainment against GPU-hours, one line per policy over its sweep.

    ``runs`` maps a policy to its runs (dicts with ``gpu_hours``, ``slo_attainment`` and optionally
    ``headroom``, written beside each point). A policy with one run is drawn as a star: that is
    ours, whose point is compared with every baseline's curve at equal GPU-hours.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8, 5.5))
    for name, points in runs.items():
        points = sorted(points, key=lambda r: r["gpu_hours"])
        x = [r["gpu_hours"] for r in points]
        y = [100 * r["slo_attainment"] for r in points]
        if len(points) == 1:
            ax.plot(x, y, "*", ms=16, color="tab:red", label=name, zorder=5)
            continue
        ax.plot(x, y, "o-", lw=1.0, ms=4, label=name)
        for r, xi, yi in zip(points, x, y):
            if "headroom" in r:
                ax.annotate(f"{r['headroom']:g}", (xi, yi), textcoords="offset points", xytext=(3, 3), fontsize=7)
    ax.axhline(100 * target, color="grey", ls="--", lw=0.8, label=f"{100 * target:g}% target")
    ax.set_xlabel("GPU-hours")
    ax.set_ylabel("requests within both SLOs (%)")
    ax.set_title(f"{trace}: attainment against GPU-hours (baselines over their headroom)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    path = out / "frontier.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path

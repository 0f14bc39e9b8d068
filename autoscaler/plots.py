"""Plots of one simulated run: demand vs capacity with forecast bands, replicas, SLO attainment, power (serving and
training), and each pool's indicators (queue, KV use, latency against its SLO, watts).

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


def _timeline(result: SimResult, max_points: int) -> tuple[int, np.ndarray]:
    """The block length that leaves at most ``max_points`` points, and each block's time in hours."""
    n = result.prefill_replicas.size
    k = max(1, int(np.ceil(n / max_points)))
    return k, _blocks(np.arange(n) * result.step_s / 3600.0, k)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_run(result: SimResult, out_dir: str | Path, max_points: int = 4000) -> Path:
    """Write ``<policy>.png`` with four stacked panels into ``out_dir``; returns its path."""
    k, hours = _timeline(result, max_points)
    fig, axes = plt.subplots(4, 1, figsize=(11, 11), sharex=True)
    ax = axes[0]
    ax.plot(hours, _blocks(result.demand[:, 1], k, "max"), lw=0.6, color="black", label="input tokens/s (demand)")
    ax.plot(hours, _blocks(result.prefill_replicas * result.prefill_tokens_per_s, k), lw=1.0, color="tab:blue",
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
    serving, total = _blocks(result.serving_w, k) / 1e3, _blocks(result.power_w, k) / 1e3
    ax.fill_between(hours, 0.0, serving, color="tab:blue", alpha=0.45, lw=0, label="serving")
    ax.fill_between(hours, serving, total, color="tab:purple", alpha=0.35, lw=0, label="training (shed first)")
    ax.plot(hours, total, lw=0.6, color="black", label="cluster")
    if result.power_cap_w is not None:
        ax.axhline(result.power_cap_w / 1e3, color="red", ls="--", lw=0.8, label="cap")
    ax.set_ylabel("power (kW)")
    ax.set_xlabel("hours")
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, Path(out_dir) / f"{result.policy}.png")


def plot_pools(result: SimResult, out_dir: str | Path, max_points: int = 4000) -> Path:
    """Write ``<policy>-pools.png``: the run's per-pool indicators (``SimResult.indicators``) over time.

    Queues and latencies are block maxima (a burst stays visible), KV use and watts block means.
    """
    pools = result.indicators().pools
    prefill, decode = pools["prefill"], pools["decode"]
    k, hours = _timeline(result, max_points)
    fig, axes = plt.subplots(4, 1, figsize=(11, 10), sharex=True)
    ax = axes[0]
    ax.plot(hours, _blocks(prefill.column("queue_requests"), k, "max"), lw=0.8, label="prefill: requests waiting")
    ax.plot(hours, _blocks(decode.column("queue_requests"), k, "max"), lw=0.8, label="decode: sequences waiting")
    ax.set_ylabel("queue")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_title(f"{result.trace}: policy {result.policy}, per pool")
    ax = axes[1]
    ax.plot(hours, _blocks(decode.column("kv_use_fraction"), k), lw=0.8, color="tab:orange")
    ax.set_ylabel("decode KV use\n(batch slots)")
    ax.set_ylim(-0.02, 1.02)
    ax = axes[2]
    ax.plot(hours, _blocks(prefill.column("ttft_p99_s") / result.ttft_slo_s, k, "max"), lw=0.8,
            label=f"prefill: TTFT p99 / {result.ttft_slo_s:g} s")
    ax.plot(hours, _blocks(decode.column("tpot_p99_s") / result.tpot_slo_s, k, "max"), lw=0.8,
            label=f"decode: TPOT p99 / {result.tpot_slo_s:g} s")
    ax.axhline(1.0, color="red", ls="--", lw=0.8, label="SLO")
    ax.set_yscale("log")
    ax.set_ylabel("latency / SLO\n(per tick)")
    ax.legend(loc="upper right", fontsize=8)
    ax = axes[3]
    p_kw, d_kw = _blocks(prefill.column("power_w"), k) / 1e3, _blocks(decode.column("power_w"), k) / 1e3
    ax.fill_between(hours, 0.0, p_kw, color="tab:blue", alpha=0.45, lw=0, label="prefill")
    ax.fill_between(hours, p_kw, p_kw + d_kw, color="tab:green", alpha=0.45, lw=0, label="decode")
    ax.set_ylabel("serving power (kW)")
    ax.set_xlabel("hours")
    ax.legend(loc="upper right", fontsize=8)
    return _save(fig, Path(out_dir) / f"{result.policy}-pools.png")


def plot_frontier(trace: str, runs: dict[str, list[dict]], out_dir: str | Path, target: float = 0.99) -> Path:
    """Write ``frontier.png``: SLO attainment against GPU-hours, one line per policy over its sweep.

    ``runs`` maps a policy to its runs (dicts with ``gpu_hours``, ``slo_attainment`` and optionally
    ``headroom``, written beside each point). A policy with one run is drawn as a star: that is
    ours, whose point is compared with every baseline's curve at equal GPU-hours. The left panel
    shows every run; the right one zooms on the last points below 100% around the target, where
    the comparison is decided (on the full scale 99.8% and 99.9% are one dot).
    """
    fig, axes = plt.subplots(1, 2, figsize=(13, 5.5))
    for ax in axes:
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
    axes[0].set_ylabel("requests within both SLOs (%)")
    axes[0].set_title("every run")
    low = 100 * target - 1.5
    axes[1].set_ylim(low, 100.15)
    near = [r["gpu_hours"] for points in runs.values() for r in points if 100 * r["slo_attainment"] >= low]
    if near:
        pad = 0.1 * (max(near) - min(near)) or 0.05 * max(near)
        axes[1].set_xlim(min(near) - pad, max(near) + pad)
    axes[1].set_title(f"near the {100 * target:g}% target")
    axes[1].legend(loc="lower right", fontsize=8)
    fig.suptitle(f"{trace}: attainment against GPU-hours (baselines over their headroom)")
    return _save(fig, Path(out_dir) / "frontier.png")

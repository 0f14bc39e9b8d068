"""How well the simulator predicts the live cluster: the same requests, replayed on both.

1. Flowtide's local cluster with one prefill and one decode replica, fixed (the embedded tiny model).
2. Two capacity profiles of it, with the same sweep, both by `flowtide profile`: the engine alone
   (the baseline) and the running service through its endpoint (`--endpoint`: HTTP, routing and the
   KV hand-off included).
3. A slice of Azure conv, token counts scaled down for the tiny model, replayed at several speeds
   through the openai client, streaming: each request's TTFT and TPOT as a client sees them.
4. The same requests simulated (static 1 + 1 replicas, no cold start, 1 s ticks) with each profile.

Reports, per load: live and simulated TTFT / TPOT quantiles (simulated over live), the median
per-request error (|log| of simulated over live), and the share of requests the simulator puts
within the live p50 / p90 / p99. Writes JSON, a plot of the distributions and every request's
live and simulated latencies (``.npz`` beside the JSON, to analyse the runs again).

    python benchmarks/sim_fidelity.py --json results/sim_fidelity.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
# `python benchmarks/sim_fidelity.py` puts benchmarks/ first on sys.path, where benchmarks/autoscaler.py
# would shadow the autoscaler package.
sys.path.insert(0, str(ROOT))

import orchestrator  # noqa: E402,F401  (loopback before ray)
from autoscaler.capacity import load_capacity  # noqa: E402
from autoscaler.policies.static import StaticPolicy  # noqa: E402
from autoscaler.power import PowerModel  # noqa: E402
from autoscaler.simulator import ClusterParams, simulate  # noqa: E402
from autoscaler.traces import RequestTrace, load_azure_csv  # noqa: E402

console = Console(width=150)
CONV = ROOT.parent / "shared" / "data" / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
QUANTILES = (0.5, 0.9, 0.99)
SWEEP_PROMPTS, SWEEP_BATCHES = "16,32,64,128,256,512,1024", "1,2,4,8,16,32"  # at 64-token prompts, 32 tokens


def scaled_slice(trace: RequestTrace, speedup: float, duration_s: float, token_scale: float, max_prompt: int,
                 max_output: int) -> RequestTrace:
    """The requests of the first ``speedup * duration_s`` seconds, arriving ``speedup`` times faster,
    with prompt and output lengths divided by ``token_scale`` (prompt >= 1, output >= 2 so TPOT exists)."""
    keep = trace.arrival_s < speedup * duration_s
    prompt = np.clip(np.rint(trace.prompt_tokens[keep] / token_scale), 1, max_prompt)
    output = np.clip(np.rint(trace.output_tokens[keep] / token_scale), 2, max_output)
    return RequestTrace(f"{trace.name} x{speedup:g}", trace.arrival_s[keep] / speedup, prompt, output)


def profile_paths(json_path: Path) -> dict[str, Path]:
    """Where a run keeps its two profiles: beside its JSON and named after it, so that a run into
    another JSON (``--token-scale 2 --json results/sim_fidelity_ts2.json``) does not overwrite the
    profiles an earlier run's JSON names."""
    return {f"{kind} profile": json_path.with_name(f"{json_path.stem}_{kind}_profile.csv") for kind in ("engine", "served")}


def simulated(trace: RequestTrace, profile: Path, hardware: str) -> tuple[np.ndarray, np.ndarray]:
    """Per-request TTFT and TPOT the simulator gives ``trace`` on one prefill and one decode replica."""
    capacity = load_capacity(profile, model="flowtide-tiny", hardware=hardware, tensor_parallel=1)
    params = ClusterParams(capacity=capacity, power=PowerModel.for_hardware("h100-80gb"), cold_start_s=0.0,
                           min_replicas=(1, 1), max_replicas=(1, 1), initial_replicas=(1, 1))
    result = simulate(trace.to_ticks(1.0), StaticPolicy(1, 1), params)
    return result.ttft_s, result.tpot_s


async def replay(base_url: str, model: str, trace: RequestTrace, vocab_size: int, seed: int,
                 progress: Progress) -> dict[str, np.ndarray]:
    """Send every request of ``trace`` at its arrival time, streaming; TTFT and TPOT as the client sees them."""
    import openai

    from workers.engines.base import SamplingParams
    from workers.profiling import endpoint_timer

    rng = random.Random(seed)
    prompts = [[rng.randrange(vocab_size) for _ in range(int(n))] for n in trace.prompt_tokens]
    n = len(prompts)
    ttft, tpot, lag = np.full(n, np.nan), np.full(n, np.nan), np.zeros(n)
    task = progress.add_task(f"replaying {trace.name}: {n} requests", total=n)

    async with openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="-", max_retries=0, timeout=300) as client:
        timer = endpoint_timer(client, model)

        async def one(i: int, start: float) -> None:
            await asyncio.sleep(max(0.0, start + trace.arrival_s[i] - time.perf_counter()))
            sent = time.perf_counter()
            lag[i] = sent - (start + trace.arrival_s[i])
            sampling = SamplingParams(max_tokens=int(trace.output_tokens[i]), temperature=0.0, ignore_eos=True)
            first, last, tokens = await timer(f"replay-{i}", prompts[i], sampling)
            if tokens != sampling.max_tokens:
                raise RuntimeError(f"request {i}: {tokens} tokens, asked for {sampling.max_tokens}")
            ttft[i], tpot[i] = first - sent, (last - first) / (tokens - 1)
            progress.advance(task)

        start = time.perf_counter() + 0.5
        await asyncio.gather(*(one(i, start) for i in range(n)))
    return {"ttft_s": ttft, "tpot_s": tpot, "send_lag_s": lag}


def compare(live: np.ndarray, sim: np.ndarray) -> dict[str, float]:
    """Simulated against live for one latency: quantile ratios, per-request error, share within live's quantiles."""
    out: dict[str, float] = {}
    for q in QUANTILES:
        lq, sq = float(np.quantile(live, q)), float(np.quantile(sim, q))
        tag = f"p{round(q * 100)}"
        out[f"live_{tag}_ms"], out[f"sim_{tag}_ms"], out[f"sim_over_live_{tag}"] = lq * 1e3, sq * 1e3, sq / lq
        out[f"sim_within_live_{tag}"] = float(np.mean(sim <= lq))  # live: q by definition
    out["median_abs_log_error"] = float(np.median(np.abs(np.log(sim / live))))
    return out


def plot(results: list[dict], curves: dict[str, dict[str, np.ndarray]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, len(results), figsize=(4.5 * len(results), 7), squeeze=False)
    for col, result in enumerate(results):
        name = result["load"]
        for row, metric in enumerate(("ttft_s", "tpot_s")):
            ax = axes[row][col]
            for label, style in (("live", "k-"), ("served profile", "C0--"), ("engine profile", "C1:")):
                values = np.sort(curves[name][f"{label}:{metric}"]) * 1e3
                ax.plot(values, np.linspace(0, 1, values.size), style, label=label)
            ax.set_xscale("log")
            ax.set_xlabel(f"{metric[:4].upper()} ms")
            ax.set_ylabel("share of requests")
            ax.set_title(f"{name}: {result['live_rps']:.1f} req/s")
            ax.grid(alpha=0.3)
    axes[0][0].legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def flowtide_profile(out: Path, *extra: str) -> None:
    """``flowtide profile`` with the benchmark's sweep, as a user runs it (this checkout's code)."""
    cmd = [sys.executable, "-m", "orchestrator.cli", "profile", "--out", str(out), "--prompt-sizes", SWEEP_PROMPTS,
           "--batch-sizes", SWEEP_BATCHES, *extra]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    subprocess.run(cmd, env=env, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--speedups", default="1,2,4", help="replay speeds over the trace's own (comma-separated); "
                        "past 4x the load generator, on the same 2 cores, falls behind its own schedule")
    parser.add_argument("--duration-s", type=float, default=60.0, help="seconds each replay lasts")
    parser.add_argument("--token-scale", type=float, default=8.0, help="divide the trace's token counts by this")
    parser.add_argument("--max-output", type=int, default=64, help="longest output, in tokens, after scaling")
    parser.add_argument("--port", type=int, default=8312)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="results/sim_fidelity.json")
    args = parser.parse_args()
    speedups = [float(x) for x in args.speedups.split(",")]
    if not CONV.exists():
        raise SystemExit(f"missing {CONV}: the Azure 2023 traces (see ../shared/data/README.md)")

    import ray
    from ray import serve

    from orchestrator.app import deploy
    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.config import load_config
    from workers.profiling import hardware_name
    from workers.tiny_model import tiny_model_path

    config = load_config(**{"serving.http_port": args.port, "cluster.pools.train.nodes": 0,
                            **{f"serving.{role}.{k}": 1 for role in ("prefill", "decode")
                               for k in ("min_replicas", "initial_replicas", "max_replicas")}})
    model_path = str(tiny_model_path())
    vocab = json.loads((Path(model_path) / "config.json").read_text())["vocab_size"]
    hardware = hardware_name()
    out_dir = Path(args.json).parent
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = profile_paths(Path(args.json))
    profiles = {"engine profile": (paths["engine profile"], hardware),
                "served profile": (paths["served profile"], f"{hardware}-served")}
    azure = load_azure_csv(CONV)
    traces = [scaled_slice(azure, s, args.duration_s, args.token_scale, config.model.max_prompt_tokens, args.max_output)
              for s in speedups]

    flowtide_profile(profiles["engine profile"][0])  # before the cluster starts: the engine alone on the machine
    cluster = LocalCluster(config.cluster, serving=config.serving).start()
    try:
        with console.status("deploying one prefill and one decode replica"):
            connect(cluster.address)
            base = deploy(config, model_path)
        flowtide_profile(profiles["served profile"][0], "--endpoint", base)

        async def served():
            lives = []
            with Progress(console=console) as progress:
                for trace in traces:
                    lives.append(await replay(base, "flowtide-tiny", trace, vocab, args.seed, progress))
                    await asyncio.sleep(5.0)  # let the pools drain between loads
            return lives

        lives = asyncio.run(served())
    finally:
        if ray.is_initialized():
            serve.shutdown()
        cluster.shutdown()

    results, curves = [], {}
    for speedup, trace, live in zip(speedups, traces, lives):
        name = f"x{speedup:g}"
        row = {"load": name, "speedup": speedup, "requests": int(trace.arrival_s.size),
               "live_rps": trace.arrival_s.size / args.duration_s,
               "mean_prompt_tokens": float(trace.prompt_tokens.mean()),
               "mean_output_tokens": float(trace.output_tokens.mean()),
               "send_lag_p99_ms": float(np.quantile(live["send_lag_s"], 0.99) * 1e3)}
        curves[name] = {f"live:{m}": live[m] for m in ("ttft_s", "tpot_s")}
        for label, (path, hw) in profiles.items():
            ttft, tpot = simulated(trace, path, hw)
            curves[name] |= {f"{label}:ttft_s": ttft, f"{label}:tpot_s": tpot}
            row[label] = {"ttft": compare(live["ttft_s"], ttft), "tpot": compare(live["tpot_s"], tpot)}
        row["error_ratio_served_vs_engine"] = {
            m: row["served profile"][m]["median_abs_log_error"] / row["engine profile"][m]["median_abs_log_error"]
            for m in ("ttft", "tpot")}
        results.append(row)

    table = Table(title="simulated over live (1 prefill + 1 decode replica, tiny model)")
    for col in ("load", "req/s", "profile", "TTFT p50", "p90", "p99", "TTFT err", "TPOT p50", "p90", "p99", "TPOT err"):
        table.add_column(col)
    for row in results:
        for label in profiles:
            t, d = row[label]["ttft"], row[label]["tpot"]
            table.add_row(row["load"], f"{row['live_rps']:.1f}", label.split()[0],
                          *(f"{t[f'sim_over_live_p{q}']:.2f}" for q in (50, 90, 99)), f"{t['median_abs_log_error']:.2f}",
                          *(f"{d[f'sim_over_live_p{q}']:.2f}" for q in (50, 90, 99)), f"{d['median_abs_log_error']:.2f}")
    console.print(table)
    for row in results:
        console.print(f"{row['load']}: live TTFT p50/p99 {row['served profile']['ttft']['live_p50_ms']:.1f}/"
                      f"{row['served profile']['ttft']['live_p99_ms']:.1f} ms, TPOT p50/p99 "
                      f"{row['served profile']['tpot']['live_p50_ms']:.2f}/{row['served profile']['tpot']['live_p99_ms']:.2f}"
                      f" ms; error ratio served/engine profile: {row['error_ratio_served_vs_engine']}")
    png = Path(args.json).with_suffix(".png")
    plot(results, curves, png)
    np.savez_compressed(Path(args.json).with_suffix(".npz"), **{
        f"{name}/{key}": series for name, by_key in curves.items() for key, series in by_key.items()},
        **{f"x{s:g}/{field}": getattr(t, field) for s, t in zip(speedups, traces)
           for field in ("arrival_s", "prompt_tokens", "output_tokens")})
    summary = {"machine": "2 cores (shared), no GPU", "trace": str(CONV.name), "duration_s": args.duration_s,
               "token_scale": args.token_scale, "max_output": args.max_output, "seed": args.seed,
               "profiles": {k: str(v[0]) for k, v in profiles.items()}, "loads": results}
    Path(args.json).write_text(json.dumps(summary, indent=2))
    console.print(f"wrote {args.json}, {png} and the .npz of every request")


if __name__ == "__main__":
    main()

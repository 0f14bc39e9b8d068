"""Every scaling policy on the same real traces, side by side, in one run.

Traces: Azure LLM inference 2023 code and conv (request level, 1 s ticks) and ServeGen m-large
(14 days, request-level arrivals synthesised per client window, 10 s ticks), replayed on
llama2-70b / H100 / TP4 replicas profiled by Splitwise. SLOs: TTFT <= 2 s, TPOT <= 100 ms,
scored per request. Policies: static peak provisioning, Ray Serve's default, a Dynamo-style
planner, and flowtide (forecaster + Bayesian decision, learning online from the trace's own
past). Each baseline is also run at every ``--headroom`` multiplier of its sizing knob, as an
operator would tune it: its attainment-vs-GPU-hours frontier, read at flowtide's GPU-hours.
Printed as ratios to static and to the best baseline that also reaches 99%; decision
latency p99 is forecast sampling plus optimisation, timed inside the flowtide policy. The
forecast-quality (CRPS) part is ``benchmarks/forecast.py``'s: ``--crps`` runs it here too.

    python benchmarks/autoscaler.py --json results/autoscaler.json

Data (../shared/data, see docs/autoscaler.md for attribution): Azure/AzurePublicDataset
(CC-BY-4.0), alibaba/ServeGen (Apache-2.0), Mutinifni/splitwise-sim (MIT).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
# Run as a script, this file's folder heads sys.path and its name would shadow the
# `autoscaler` package; the package is what we import, so that entry goes.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]
DATA = ROOT / ".." / "shared" / "data"
TRACES = {
    "azure-code": (DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_code.csv", 1.0),
    "azure-conv": (DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv", 1.0),
    "servegen-m-large": (DATA / "servegen-m-large", 10.0),
}
PROFILE = DATA / "splitwise-perf" / "perf_model.csv"
POLICY_ORDER = ("static", "ray-serve", "dynamo", "flowtide")
TARGET_ATTAINMENT = 0.99
HINDSIGHT_SCALES = (0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2)
# Each baseline's sizing knob as an operator would tune it (1.0: the policy's default, the table's row);
# denser over 1.4-1.6, where Dynamo crosses 99% on conv and ServeGen, so its best tuning is found there;
# down to 0.5 so that static has a run cheaper than flowtide on every trace (conv's 0.75 still rounds
# up to static's own fleet), and its attainment at flowtide's GPU-hours is read between two runs.
HEADROOMS = (0.5, 0.75, 1.0, 1.25, 1.4, 1.45, 1.5, 1.55, 1.6, 1.75, 2.0)
BASELINES = ("static", "ray-serve", "dynamo")
SWEEP_FIELDS = ("slo_attainment", "gpu_hours", "energy_kwh", "power_violations", "scaling_actions")
# Pre-training data for flowtide on each hour-long trace: never the trace it is judged on.
PRETRAIN_DAYS = 4.0
PRETRAIN_SOURCES = {"azure-code": ("servegen-m-large", "azure-conv"), "azure-conv": ("servegen-m-large", "azure-code")}


def run_trace(name: str, path: Path, tick_s: float, policies: tuple[str, ...], forecaster: str, seed: int,
              plots: Path, bar, checkpoint, pretrained: dict[str, Path], hindsight: bool,
              headrooms: tuple[float, ...] = (1.0,), dynamo_correction: bool = True) -> dict:
    """Every policy on one trace; each baseline also at every ``headrooms`` value (its default run
    is the 1.0 one and stays in ``policies``; the sweep goes to ``sweep``)."""
    from autoscaler.capacity import load_capacity
    from autoscaler.plots import plot_frontier, plot_pools, plot_run
    from autoscaler.policies import make_policy
    from autoscaler.power import PowerModel
    from autoscaler.scenario import default_cluster
    from autoscaler.simulator import simulate
    from autoscaler.traces import load_trace

    capacity = load_capacity(PROFILE, "llama2-70b", "h100-80gb", 4)
    power = PowerModel.for_hardware("h100-80gb")
    load_task = bar.add_task(f"{name}: load", total=None)
    t0 = time.perf_counter()
    trace = load_trace(path, tick_s, seed=seed, cache_dir=ROOT / "results" / "cache")
    bar.update(load_task, description=f"{name}: loaded in {time.perf_counter() - t0:.0f} s", total=1, completed=1)
    cluster = default_cluster(trace, capacity, power)
    out = {"tick_s": tick_s, "requests": float(trace.n_requests.sum()), "duration_h": trace.duration_s / 3600,
           "cluster": {"max_replicas": list(cluster.max_replicas), "gpus": cluster.gpus,
                       "power_cap_w": cluster.power_cap_w, "cold_start_s": cluster.cold_start_s},
           "policies": {}}
    sweeping = set(headrooms) != {1.0}
    if sweeping:
        out["sweep"] = {}
    for policy_name in policies:
        model = pretrained.get(name) if policy_name == "flowtide" else None
        # Dynamo's predictions read only the trace's demand: the sweep's runs share them.
        shared = {"predictions": {}} if sweeping and policy_name == "dynamo" else {}
        if policy_name == "dynamo":
            shared["correction"] = dynamo_correction
        policy = make_policy(policy_name, trace, cluster, forecaster=forecaster, seed=seed, pretrained=model, **shared)
        task = bar.add_task(f"{name}: {policy_name}", total=trace.n_ticks)
        t0 = time.perf_counter()
        result = simulate(trace, policy, cluster, progress=lambda done, total, t=task: bar.update(t, completed=done))
        summary = result.summary()
        summary["wall_s"] = time.perf_counter() - t0
        if policy_name == "flowtide":
            lat = np.asarray(policy.decision_s)
            # The simulator's decision_p99_ms reads the same list (the policy's decision_s).
            summary["decision_forecast_plus_optimise_p99_ms"] = summary["decision_p99_ms"] if lat.size else None
            summary["decision_forecast_plus_optimise_p50_ms"] = float(np.quantile(lat, 0.50) * 1e3) if lat.size else None
            summary["forecaster"] = forecaster if policy.forecaster is not None else f"{forecaster} (never fitted)"
            summary["forecast_step_s"] = policy.step_s
            summary["forecaster_fit_error"] = policy.fit_error
            summary["pretrained"] = str(model) if model is not None else None
        summary["plot"] = str(plot_run(result, plots / name).relative_to(ROOT))
        summary["pools_plot"] = str(plot_pools(result, plots / name).relative_to(ROOT))
        out["policies"][policy_name] = summary
        out["ratios"] = ratios(out["policies"], out.get("sweep"))
        checkpoint(name, out)
        if not sweeping or policy_name not in BASELINES:
            continue
        runs = [{"headroom": 1.0, **{k: summary[k] for k in SWEEP_FIELDS}}]
        for headroom in sorted(set(headrooms) - {1.0}):
            task = bar.add_task(f"{name}: {policy_name} headroom {headroom:g}", total=trace.n_ticks)
            policy = make_policy(policy_name, trace, cluster, seed=seed, headroom=headroom, **shared)
            run = simulate(trace, policy, cluster,
                           progress=lambda done, total, t=task: bar.update(t, completed=done)).summary()
            runs.append({"headroom": headroom, **{k: run[k] for k in SWEEP_FIELDS}})
            out["sweep"][policy_name] = sorted(runs, key=lambda r: r["headroom"])
            out["ratios"] = ratios(out["policies"], out["sweep"])
            checkpoint(name, out)
    if sweeping:
        runs = dict(out["sweep"])
        if "flowtide" in out["policies"]:
            runs["flowtide"] = [out["policies"]["flowtide"]]
        out["frontier_plot"] = str(plot_frontier(name, runs, plots / name, TARGET_ATTAINMENT).relative_to(ROOT))
        checkpoint(name, out)
    if hindsight:
        task = bar.add_task(f"{name}: hindsight bound", total=len(HINDSIGHT_SCALES))
        out["hindsight"] = hindsight_bound(trace, cluster, lambda done, t=task: bar.update(t, completed=done))
        if "static" in out["policies"] and out["hindsight"]["cheapest_at_99"]:
            out["hindsight"]["cheapest_at_99"]["gpu_hours_vs_static"] = (
                out["hindsight"]["cheapest_at_99"]["gpu_hours"] / out["policies"]["static"]["gpu_hours"])
        checkpoint(name, out)
    return out


def ensure_pretrained(judged: str, seed: int, bar) -> Path:
    """The flow flowtide starts from on ``judged``: trained on ServeGen and the other Azure trace at
    the short-trace forecast step, never on ``judged`` itself; made once per forecaster source, then loaded."""
    from autoscaler.policies import default_forecast_step_s
    from autoscaler.policies.flowtide import pretrain
    from autoscaler.traces import load_trace

    # Keyed by the forecaster's source: a model saved by other forecasting code may not load.
    source = hashlib.sha256(b"".join(p.read_bytes() for p in sorted((ROOT / "autoscaler" / "forecast").glob("*.py"))))
    path = ROOT / "results" / "models" / f"flow-for-{judged}-{source.hexdigest()[:12]}.pt"
    if path.is_file() and Path(f"{path}.json").is_file():
        return path
    task = bar.add_task(f"{judged}: pre-train flow on {', '.join(PRETRAIN_SOURCES[judged])}", total=None)
    step = default_forecast_step_s(3600.0)
    histories = []
    for source in PRETRAIN_SOURCES[judged]:
        src, tick = TRACES[source]
        trace = load_trace(src, tick, seed=seed, cache_dir=ROOT / "results" / "cache")
        k = int(round(step / tick))
        rates = trace.rates()[: trace.n_ticks // k * k]
        # The last PRETRAIN_DAYS of a long source: enough windows, and a fit of minutes on 2 cores.
        histories.append(rates.reshape(-1, k, rates.shape[1]).mean(axis=1)[-int(PRETRAIN_DAYS * 86_400 / step):])
    # No daily seasonal lags: the hour-long traces it serves have none.
    pretrain(histories, step, path, sources=list(PRETRAIN_SOURCES[judged]), seasons=0, max_train_s=150.0, seed=seed)
    bar.update(task, total=1, completed=1)
    return path


def hindsight_bound(trace, cluster, progress) -> dict:
    """What perfect knowledge of the trace's future buys with the same cold start, bounds and profile.

    Not a policy: :class:`autoscaler.policies.hindsight.HindsightPolicy` reads future demand. Swept
    over ``scale`` (sizing below or above its arrival-curve need); the cheapest run reaching 99%
    says whether a GPU-hour target is reachable at all.
    """
    from autoscaler.policies.hindsight import HindsightPolicy
    from autoscaler.simulator import simulate

    runs = []
    for i, scale in enumerate(HINDSIGHT_SCALES):
        s = simulate(trace, HindsightPolicy(trace, cluster, scale=scale), cluster).summary()
        runs.append({"scale": scale, **{k: s[k] for k in ("slo_attainment", "gpu_hours", "power_violations",
                                                          "scaling_actions", "mean_prefill_replicas",
                                                          "mean_decode_replicas")}})
        progress(i + 1)
    ok = [r for r in runs if r["slo_attainment"] >= TARGET_ATTAINMENT]
    return {"runs": runs, "cheapest_at_99": dict(min(ok, key=lambda r: r["gpu_hours"])) if ok else None}


def pareto_frontier(runs: list[dict]) -> list[dict]:
    """The runs no other run beats on both counts (fewer GPU-hours and higher attainment), cheapest first.

    Along the result both GPU-hours and attainment rise strictly; a run that costs more than another
    without attaining more is dominated and left out.
    """
    frontier: list[dict] = []
    for run in sorted(runs, key=lambda r: (r["gpu_hours"], -r["slo_attainment"])):
        if not frontier or run["slo_attainment"] > frontier[-1]["slo_attainment"]:
            frontier.append(run)
    return frontier


def attainment_at_gpu_hours(runs: list[dict], gpu_hours: float) -> dict:
    """A baseline's attainment at ``gpu_hours``, read off its sweep's Pareto frontier.

    Linear between the frontier's runs. Outside them nothing was measured, so the nearest run
    stands in and ``extrapolated`` says so: cheaper than every run, the cheapest run's attainment
    (at least what the baseline would attain with fewer, if attainment rises with GPU-hours);
    dearer than every run, its best attainment (the baseline given more might do better).
    """
    frontier = pareto_frontier(runs)
    if not frontier:
        raise ValueError("attainment_at_gpu_hours: no runs")
    g = np.array([r["gpu_hours"] for r in frontier])
    a = np.array([r["slo_attainment"] for r in frontier])
    outside = "cheaper" if gpu_hours < g[0] else "dearer" if gpu_hours > g[-1] else None
    return {"slo_attainment": float(np.interp(gpu_hours, g, a)), "extrapolated": outside is not None,
            "flowtide_is": outside, "frontier": [(float(x), float(y)) for x, y in zip(g, a)]}


def ratios(policies: dict, sweep: dict | None = None) -> dict:
    """Flowtide against static, against the cheapest baseline that also reaches 99% (each at its
    default, and over its headroom ``sweep``), and against each baseline's sweep at equal GPU-hours."""
    if "flowtide" not in policies:
        return {}
    ours = policies["flowtide"]
    res: dict = {}
    if "static" in policies:
        res["gpu_hours_vs_static"] = ours["gpu_hours"] / policies["static"]["gpu_hours"]
        res["energy_vs_static"] = ours["energy_kwh"] / policies["static"]["energy_kwh"]
    qualified = {n: p for n, p in policies.items() if n != "flowtide" and p["slo_attainment"] >= TARGET_ATTAINMENT}
    if qualified:
        best = min(qualified, key=lambda n: qualified[n]["gpu_hours"])
        res["best_baseline_at_99"] = best
        res["gpu_hours_vs_best_baseline_at_99"] = ours["gpu_hours"] / qualified[best]["gpu_hours"]
    res["attainment_vs_every_baseline"] = {n: ours["slo_attainment"] - p["slo_attainment"]
                                           for n, p in policies.items() if n != "flowtide"}
    # Each baseline's runs over its headroom sweep; a baseline not swept has its default run only.
    sweep = sweep or {}
    runs = {n: sweep.get(n) or [{"headroom": 1.0, **{k: p[k] for k in SWEEP_FIELDS}}]
            for n, p in policies.items() if n != "flowtide"}
    tuned = [(n, r) for n, rs in runs.items() for r in rs if r["slo_attainment"] >= TARGET_ATTAINMENT]
    if tuned:
        n, r = min(tuned, key=lambda nr: nr[1]["gpu_hours"])
        res["best_tuned_baseline_at_99"] = {"policy": n, "headroom": r["headroom"],
                                            "slo_attainment": r["slo_attainment"], "gpu_hours": r["gpu_hours"]}
        res["gpu_hours_vs_best_tuned_baseline_at_99"] = ours["gpu_hours"] / r["gpu_hours"]
    res["attainment_at_equal_gpu_hours"] = {n: attainment_at_gpu_hours(rs, ours["gpu_hours"]) for n, rs in runs.items()}
    res["beats_every_baseline_at_equal_gpu_hours"] = bool(runs) and all(
        ours["slo_attainment"] > v["slo_attainment"] for v in res["attainment_at_equal_gpu_hours"].values())
    reached = ours["slo_attainment"] >= TARGET_ATTAINMENT
    # The GPU-hour targets hold "at that attainment": a cheap run below 99% does not meet them. Those
    # against the best or every baseline are measured only when every baseline ran (else null).
    every = set(BASELINES) <= set(policies)
    if not every:
        res["baselines_run"] = [n for n in BASELINES if n in policies]
    res["targets"] = {
        "attainment_ge_99": reached,
        "gpu_hours_le_0.70x_static_at_99": reached and res.get("gpu_hours_vs_static", np.inf) <= 0.70,
        "gpu_hours_le_0.85x_best_baseline_at_99": (
            reached and res.get("gpu_hours_vs_best_baseline_at_99", np.inf) <= 0.85) if every else None,
        "gpu_hours_le_0.85x_best_tuned_baseline_at_99_or_beats_at_equal_gpu_hours": (reached and (
            res.get("gpu_hours_vs_best_tuned_baseline_at_99", np.inf) <= 0.85
            or res["beats_every_baseline_at_equal_gpu_hours"])) if every else None,
        "zero_power_violations": ours["power_violations"] == 0,
    }
    return res


def forecast_benchmark():
    """``benchmarks/forecast.py`` as a module (the forecasting engineer's script, not a package)."""
    spec = importlib.util.spec_from_file_location("forecast_benchmark", ROOT / "benchmarks" / "forecast.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def crps_part(args, results: Path = ROOT / "results") -> dict:
    """The held-out forecast benchmark (``benchmarks/forecast.py``, the forecasting engineer's) at this run's seed.

    ``--crps`` runs it first (if that fails, nothing is embedded: the file holds an older run); otherwise
    its last result is read, and only if it is that benchmark's standard held-out run at this seed: a run
    at another seed, over fewer forecasters or with another training budget would report targets this
    run did not measure.
    """
    if args.crps and (code := forecast_benchmark().main(["--seed", str(args.seed)])) != 0:
        return {"note": f"python benchmarks/forecast.py --seed {args.seed} failed (exit {code}): nothing embedded"}
    path = results / "forecast.json"
    if not path.is_file():
        return {"note": f"no {path.name}: run python benchmarks/forecast.py --seed {args.seed}, or pass --crps"}
    data = json.loads(path.read_text())
    if data.get("seed") != args.seed or not data.get("standard_run"):
        return {"note": f"{path.name} holds another run ({data.get('command')!r}): run python benchmarks/forecast.py "
                        f"--seed {args.seed}, or pass --crps"}
    return {"source": f"results/{path.name}", "command": data.get("command"), "seed": data["seed"],
            "targets": data.get("targets"),
            "crps_vs_seasonal_naive": {n: s.get("crps_vs_seasonal_naive") for n, s in data["forecasters"].items()}}


def print_table(results: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="autoscaler benchmark (ratios vs static peak in the same run)")
    for col in ("trace", "policy", "SLO attain.", "GPU-h", "x static", "energy kWh", "power viol.", "actions",
                "TTFT p99 s", "TPOT p99 s"):
        table.add_column(col, justify="right" if col not in ("trace", "policy") else "left")
    for trace, res in results["traces"].items():
        static = res["policies"].get("static", {}).get("gpu_hours")
        for name, s in res["policies"].items():
            table.add_row(trace, name, f"{s['slo_attainment']:.4f}", f"{s['gpu_hours']:.1f}",
                          f"{s['gpu_hours'] / static:.2f}" if static else "-", f"{s['energy_kwh']:.1f}",
                          str(s["power_violations"]), str(s["scaling_actions"]), f"{s['ttft_p99_s']:.2f}",
                          f"{s['tpot_p99_s'] * 1e3:.0f} ms")
    Console(width=160).print(table)


def print_sweep(results: dict) -> None:
    """Each baseline's attainment and GPU-hours at every headroom, and its frontier at flowtide's GPU-hours."""
    from rich.console import Console
    from rich.table import Table

    swept = {t: r for t, r in results["traces"].items() if r.get("sweep")}
    if not swept:
        return
    headrooms = sorted({run["headroom"] for r in swept.values() for runs in r["sweep"].values() for run in runs})
    table = Table(title="baselines over their headroom (SLO attainment / GPU-h); frontier at flowtide's GPU-h")
    for col in ("trace", "policy", *(f"x{h:g}" for h in headrooms), "at flowtide GPU-h"):
        table.add_column(col, justify="left" if col in ("trace", "policy") else "right")
    for trace, res in swept.items():
        equal = res.get("ratios", {}).get("attainment_at_equal_gpu_hours", {})
        ours = res["policies"].get("flowtide")
        if ours:
            table.add_row(trace, "flowtide", *([""] * len(headrooms)),
                          f"{ours['slo_attainment']:.4f} / {ours['gpu_hours']:,.1f}")
        for name, runs in res["sweep"].items():
            by_h = {run["headroom"]: run for run in runs}
            cells = [f"{by_h[h]['slo_attainment']:.4f} / {by_h[h]['gpu_hours']:,.1f}" if h in by_h else "-"
                     for h in headrooms]
            at = equal.get(name)
            note = f" (flowtide {at['flowtide_is']})" if at and at["extrapolated"] else ""
            table.add_row(trace, name, *cells, "-" if at is None else f"{at['slo_attainment']:.4f}{note}")
    Console(width=200).print(table)


def parse_headrooms(text: str) -> tuple[float, ...]:
    """``--headroom``: comma-separated multipliers, each finite and > 0."""
    from autoscaler.policies import PolicyError, check_headroom

    try:
        values = tuple(check_headroom(float(x)) for x in text.split(",") if x.strip())
    except (ValueError, PolicyError) as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not values:
        raise argparse.ArgumentTypeError(f"finite values > 0 expected, got {text!r}")
    return values


def names_of(known: tuple[str, ...], what: str):
    """argparse type: comma-separated names, each one of ``known``, checked before any run starts."""
    def parse(text: str) -> tuple[str, ...]:
        names = tuple(n for n in text.split(",") if n)
        unknown = [n for n in names if n not in known]
        if unknown or not names:
            said = f"unknown {what} {unknown[0]!r}" if unknown else f"no {what} given"
            raise argparse.ArgumentTypeError(f"{said}; choose from {', '.join(known)}")
        return names
    return parse


def main(argv: list[str] | None = None) -> int:
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from autoscaler.forecast import FORECASTERS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--traces", type=names_of(tuple(TRACES), "trace"), default=",".join(TRACES),
                        help="comma-separated: " + ", ".join(TRACES))
    parser.add_argument("--policies", type=names_of(POLICY_ORDER, "policy"), default=",".join(POLICY_ORDER),
                        help="comma-separated: " + ", ".join(POLICY_ORDER))
    parser.add_argument("--forecaster", default="flow", choices=sorted(FORECASTERS), help="flowtide's forecaster")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--crps", action="store_true", help="also run benchmarks/forecast.py's CRPS evaluation")
    parser.add_argument("--json", type=Path, default=None, help="also write the result JSON here")
    parser.add_argument("--pretrain", action="store_true",
                        help="start flowtide on the hour-long Azure traces from a flow pre-trained on ServeGen and the "
                             "other Azure trace (never the judged one); made once into results/models/")
    parser.add_argument("--hindsight", choices=("short", "all", "none"), default="short",
                        help="also run the hindsight bound (reads the future; not a policy) on short traces, all, or none")
    parser.add_argument("--headroom", type=parse_headrooms, default=HEADROOMS,
                        help="comma-separated multipliers of each baseline's sizing knob to sweep (static's peak need, "
                             "ray-serve's 1/target_ongoing_requests, dynamo's predicted need); 1.0 alone: no sweep")
    parser.add_argument("--no-dynamo-correction", dest="dynamo_correction", action="store_false",
                        help="run the Dynamo baseline without its decode correction factor (Dynamo's --no-correction)")
    args = parser.parse_args(argv)
    missing = [str(TRACES[t][0]) for t in args.traces if not TRACES[t][0].exists()]
    if missing or not PROFILE.is_file():
        print(f"data not found: {missing or [str(PROFILE)]}; see ../shared/data/README.md", file=sys.stderr)
        return 2
    policies = args.policies
    plots = ROOT / "results" / "autoscaler"
    t0 = time.perf_counter()
    results: dict = {"traces": {}}
    partial = ROOT / "results" / "autoscaler.partial.json"
    partial.parent.mkdir(exist_ok=True)

    def checkpoint(trace: str, res: dict) -> None:
        """Keep what finished so far, so a long run that is cut short still leaves its numbers."""
        results["traces"][trace] = res
        partial.write_text(json.dumps(results, indent=2, default=float))
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn()) as bar:
        pretrained = {}
        if args.pretrain and "flowtide" in policies:
            pretrained = {t: ensure_pretrained(t, args.seed, bar) for t in args.traces if t in PRETRAIN_SOURCES}
        for trace in args.traces:
            path, tick = TRACES[trace]
            hindsight = args.hindsight == "all" or (args.hindsight == "short" and tick < 10.0)
            results["traces"][trace] = run_trace(trace, path, tick, policies, args.forecaster, args.seed, plots, bar,
                                                 checkpoint, pretrained, hindsight, args.headroom,
                                                 args.dynamo_correction)
    flowtide_p99 = [r["policies"]["flowtide"].get("decision_forecast_plus_optimise_p99_ms")
                    for r in results["traces"].values() if "flowtide" in r["policies"]]
    flowtide_p99 = [x for x in flowtide_p99 if x is not None]
    results.update(
        command="python benchmarks/autoscaler.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        profile="llama2-70b / h100-80gb / TP4 (Splitwise perf_model.csv)",
        slo={"ttft_s": 2.0, "tpot_s": 0.1},
        decision_p99_ms=max(flowtide_p99) if flowtide_p99 else None,
        decision_p99_le_50ms=bool(flowtide_p99) and max(flowtide_p99) <= 50.0,
        forecast=crps_part(args),
        wall_s=time.perf_counter() - t0,
        machine={"cpus": os.cpu_count(), "load_avg_1m": os.getloadavg()[0], "python": platform.python_version()},
    )
    text = json.dumps(results, indent=2, default=float)
    out = ROOT / "results" / "autoscaler.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(text)
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text)
    print_table(results)
    print_sweep(results)
    for trace, res in results["traces"].items():
        print(trace, json.dumps(res["ratios"], default=float))
        if "hindsight" in res:
            best = res["hindsight"]["cheapest_at_99"]
            print(f"{trace} hindsight bound (reads the future, same cold start): " + (
                f"{best['slo_attainment']:.4f} at {best['gpu_hours']:.1f} GPU-h "
                f"({best.get('gpu_hours_vs_static', float('nan')):.2f}x static)" if best else "never reaches 99%"))
    print(f"decision p99 (forecast + optimise): {results['decision_p99_ms']} ms; JSON: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

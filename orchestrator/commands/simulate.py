"""``flowtide simulate``: replay a trace through the two-pool simulator under one policy.

Prints the defaults it used and a result table, writes plots, and with ``--json`` the summary
other tools read (slo_attainment, gpu_hours, energy_kwh, power_violations, scaling_actions,
ttft_p99_s, tpot_p99_s, ...).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

    from autoscaler.simulator import SimResult
    from autoscaler.traces import TickTrace

# Splitwise's published profiles beside the checkout (../shared/data), found from any working directory.
DEFAULT_PROFILE = Path(__file__).resolve().parents[3] / "shared" / "data" / "splitwise-perf" / "perf_model.csv"


def _finite(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be finite, got {text!r}")
    return value


def positive(text: str) -> float:
    """argparse type: a finite number > 0 (0 is refused, not taken for the default)."""
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


def non_negative(text: str) -> float:
    """argparse type: a finite number >= 0."""
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text!r}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0 (numpy's seed sequences refuse negative ones)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0, got {text!r}")
    return value


def output_problem(path: Path, folder: bool = False) -> str | None:
    """Why ``path`` (a file, or a folder with ``folder``) cannot be written, or None if it can.

    Checked before the run, so that a bad path fails at once instead of after minutes of simulation
    with the results lost. Writing is tried, leaving nothing behind: ``os.access`` passes root on
    /sys and /proc, where no file can be created.
    """
    if path.exists() and path.is_dir() != folder:
        return f"it is a {'file' if folder else 'folder'}"
    existing = next(p for p in (path, *path.parents) if p.exists())
    if existing != path and not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        if existing.is_dir():
            with tempfile.NamedTemporaryFile(dir=existing, prefix=".flowtide-write-test-"):
                pass
        else:  # the file itself, opened to append (its contents kept); a FIFO without a reader fails, not blocks
            os.close(os.open(existing, os.O_WRONLY | os.O_APPEND | os.O_NONBLOCK))
    except OSError as exc:
        return f"{existing} is not writable ({exc.strerror or exc})"
    return None


class _DefaultsFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows an option's default unless it has none to show (None, or a flag's False): those options'
    help says what happens without them."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False:
            return action.help or ""
        return super()._get_help_string(action)


def register(subparsers: argparse._SubParsersAction) -> None:
    from autoscaler.forecast import FORECASTERS
    from autoscaler.policies import POLICIES

    p = subparsers.add_parser("simulate", help="replay a trace under a scaling policy", description=__doc__,
                              formatter_class=_DefaultsFormatter)
    p.add_argument("--trace", required=True, help="Azure-format per-request CSV (TIMESTAMP, ContextTokens, "
                   "GeneratedTokens) or a ServeGen folder of chunk-*-trace.csv files")
    p.add_argument("--policy", required=True, choices=POLICIES, help="the scaling policy the trace is replayed under")
    p.add_argument("--json", type=Path, default=None, help="write the summary here")
    p.add_argument("--plots", type=Path, default=None, help="plot folder (default results/simulate/<trace>)")
    p.add_argument("--no-plots", action="store_true", help="skip the plots")
    p.add_argument("--decisions", type=Path, default=None,
                   help="JSON lines, one per decision: targets and why (default <plot folder>/<policy>-decisions.jsonl)")
    p.add_argument("--indicators", type=Path, default=None,
                   help="write the per-tick indicators of the cluster and each pool here as CSV (.csv.gz compresses)")
    p.add_argument("--profile", type=Path, default=DEFAULT_PROFILE, help="perf_model.csv-schema profile")
    p.add_argument("--model", default="llama2-70b", help="the profile's model whose rows plan the replicas")
    p.add_argument("--hardware", default="h100-80gb", help="the profile's hardware whose rows plan the replicas")
    p.add_argument("--tp", type=int, default=4, help="tensor parallel GPUs per replica")
    p.add_argument("--power-hardware", default=None, help="GPU whose Splitwise watts the power model uses "
                   "(default: --hardware; give it for a profile of other hardware, e.g. from `flowtide profile` on CPU)")
    p.add_argument("--tick-s", type=positive, default=None, help="simulation tick (default 1 s for a CSV shorter than 2 days, else 10 s)")
    p.add_argument("--seed", type=non_negative_int, default=0, help="seeds the ServeGen synthesis and the forecaster")
    p.add_argument("--ttft-slo-s", type=positive, default=None, help="default: config autoscaler.slo.ttft_s")
    p.add_argument("--tpot-slo-s", type=positive, default=None, help="default: config autoscaler.slo.tpot_s")
    p.add_argument("--power-cap-w", type=positive, default=None,
                   help="cluster cap; default: config autoscaler.power_cap_w, else 80%% of the cluster's TDP")
    p.add_argument("--cold-start-s", type=non_negative, default=60.0, help="seconds from a replica's request to its first request served")
    p.add_argument("--forecaster", default="flow", choices=sorted(FORECASTERS), help="forecaster of the flowtide policy")
    p.add_argument("--forecast-step-s", type=positive, default=None,
                   help="flowtide's forecast step (default 600 s for multi-day traces, 30 s for short ones)")
    p.add_argument("--cache-dir", type=Path, default=Path("results/cache"), help="synthesised ServeGen arrivals")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Table

    from autoscaler.capacity import ProfileError, load_capacity
    from autoscaler.decision import DecisionError
    from autoscaler.policies import PolicyError, make_policy
    from autoscaler.power import PowerError, PowerModel
    from autoscaler.scenario import default_cluster
    from autoscaler.simulator import SimulationError, simulate
    from autoscaler.traces import TraceError
    from orchestrator.config import load_config

    console = Console(stderr=True, soft_wrap=True)  # a logged line stays one line: paths and commands copy whole
    config = load_config()
    ttft = args.ttft_slo_s if args.ttft_slo_s is not None else config.autoscaler.slo.ttft_s
    tpot = args.tpot_slo_s if args.tpot_slo_s is not None else config.autoscaler.slo.tpot_s
    cap_w = args.power_cap_w if args.power_cap_w is not None else config.autoscaler.power_cap_w
    trace_path = Path(args.trace)
    if not _outputs_ok([("--json", args.json, False), ("--decisions", args.decisions, False),
                        ("--indicators", args.indicators, False), ("--plots", args.plots, True),
                        ("--cache-dir", args.cache_dir if trace_path.is_dir() else None, True)]):
        return 2
    try:
        power = PowerModel.for_hardware(args.power_hardware or args.hardware)
    except PowerError as exc:
        hint = "" if args.power_hardware else " (give --power-hardware for a profile of other hardware)"
        print(f"flowtide simulate: {exc}{hint}", file=sys.stderr)
        return 2
    try:
        capacity = load_capacity(args.profile, args.model, args.hardware, args.tp)
        with console.status(f"loading {trace_path} ..."):
            trace, tick = _load_trace(trace_path, args)
    except (TraceError, ProfileError) as exc:
        print(f"flowtide simulate: {_load_error(exc, Path(args.profile))}", file=sys.stderr)
        return 2
    folder = args.plots or Path("results/simulate") / trace.name
    decisions_path = args.decisions or folder / f"{args.policy}-decisions.jsonl"
    if not _outputs_ok([("the decision log", decisions_path, False),
                        ("the plot folder", None if args.no_plots else folder, True)]):
        return 2
    try:
        cluster = default_cluster(trace, capacity, power, ttft, tpot, args.cold_start_s, power_cap_w=cap_w)
        policy = make_policy(args.policy, trace, cluster, forecaster=args.forecaster,
                             forecast_step_s=args.forecast_step_s, seed=args.seed)
    except DecisionError as exc:
        print(f"flowtide simulate: {exc} (profile {args.model}/{args.hardware}/TP{args.tp})", file=sys.stderr)
        return 2
    except (SimulationError, PolicyError) as exc:
        print(f"flowtide simulate: {exc}", file=sys.stderr)
        return 2
    console.print(
        f"profile {args.model}/{args.hardware}/TP{args.tp} ({args.profile}); SLO TTFT<={ttft}s TPOT<={tpot}s; "
        f"tick {tick}s; cold start {args.cold_start_s}s; replicas prefill<={cluster.max_replicas[0]} "
        f"decode<={cluster.max_replicas[1]}; power cap {cluster.power_cap_w:.0f} W; "
        + (f"forecaster {args.forecaster}, step {policy.step_s:.0f}s; decides every {policy.interval_s:g}s from "
           f"{policy.offset_s:g}s, attainment >= {policy.params.attainment_target:g} and a miss penalty of "
           f"{policy.params.miss_penalty_gpu_h:g} GPU-h per request; " if args.policy == "flowtide" else "")
        + (f"plans every {policy.interval_s:g}s from a {policy.forecaster_name} point forecast, decode correction "
           f"{'on' if policy.correction else 'off'}; " if args.policy == "dynamo" else "")
        + f"seed {args.seed}")
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.percentage:>5.1f}%"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=console) as bar:
        task = bar.add_task(f"{args.policy} on {trace.name}", total=trace.n_ticks)
        result = simulate(trace, policy, cluster, progress=lambda done, total: bar.update(task, completed=done))
    summary = result.summary()
    summary.update(tick_s=tick, ttft_slo_s=ttft, tpot_slo_s=tpot, profile=f"{args.model}/{args.hardware}/TP{args.tp}",
                   cold_start_s=args.cold_start_s, seed=args.seed,
                   forecaster=args.forecaster if args.policy == "flowtide" else None)
    table = Table(title=f"flowtide simulate: {args.policy} on {trace.name}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in summary.items():
        table.add_row(key, f"{value:.4g}" if isinstance(value, float) else str(value))
    Console().print(table)
    return _write_results(args, result, summary, folder, decisions_path, console)


def _load_trace(trace_path: Path, args: argparse.Namespace) -> tuple[TickTrace, float]:
    """The trace in ticks and the tick. A loader's warning (an unreadable cache entry) is printed as one line.

    Raises:
        TraceError: the trace cannot be read or ticked (see :mod:`autoscaler.traces`).
    """
    from autoscaler.policies import LONG_TRACE_S
    from autoscaler.traces import load_azure_csv, load_trace

    with warnings.catch_warnings(record=True) as caught:
        try:
            if trace_path.is_file():
                requests = load_azure_csv(trace_path)
                # 1 s ticks resolve an hour's bursts; a multi-day file gets ServeGen's 10 s (a month at 1 s is hours);
                # a file whose requests span less than a second gets one tick of that span.
                span = float(requests.arrival_s[-1])
                default = 10.0 if span >= LONG_TRACE_S else min(1.0, span) if span > 0 else 1.0
                tick = args.tick_s if args.tick_s is not None else default
                return requests.to_ticks(tick), tick
            tick = args.tick_s if args.tick_s is not None else 10.0
            return load_trace(trace_path, tick, seed=args.seed, cache_dir=args.cache_dir), tick
        finally:
            for warning in caught:
                print(f"flowtide simulate: warning: {warning.message}", file=sys.stderr)


def _load_error(exc: Exception, profile: Path) -> str:
    """A loader's message; for a profile that is not a readable file, what it is and what to give instead."""
    from autoscaler.capacity import ProfileError
    from autoscaler.traces import file_problem

    problem = file_problem(profile) if isinstance(exc, ProfileError) else None
    if problem is None:
        return str(exc)
    return (f"profile file {profile} {problem} (give --profile PATH: a perf_model.csv-schema file, "
            "e.g. from `flowtide profile`)")


def _write_results(args: argparse.Namespace, result: SimResult, summary: dict, folder: Path, decisions_path: Path,
                   console: Console) -> int:
    """Write the plots, the decision log, the indicators and the JSON summary; 2 if any failed.

    Each failure is one line and the others are still written: the run is not repeated for a full disk.
    """
    from autoscaler.plots import plot_pools, plot_run

    writes = [] if args.no_plots else [
        ("the plots in", folder, lambda: f"plots: {plot_run(result, folder)}, {plot_pools(result, folder)}")]
    writes.append(("the decision log", decisions_path, lambda: _write_decisions(result, decisions_path)))
    if args.indicators:
        writes.append(("--indicators", args.indicators, lambda: _write_indicators(result, args.indicators)))
    if args.json:
        writes.append(("--json", args.json, lambda: _write_json(summary, args.json)))
    failed = False
    for what, path, write in writes:
        try:
            console.print(write())
        except OSError as exc:
            print(f"flowtide simulate: cannot write {what} {path}: {exc.strerror or exc}", file=sys.stderr)
            failed = True
    return 2 if failed else 0


def _write_decisions(result: SimResult, path: Path) -> str:
    written = result.write_decisions(path)
    bound = "; ".join(f"{pool}: " + ", ".join(f"{why} {n}" for why, n in counts.items())
                      for pool, counts in result.bindings().items())
    return f"decisions: {written} ({len(result.decisions)}; bound by {bound})"


def _write_indicators(result: SimResult, path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    result.indicators().to_frame().to_csv(path, index=False)
    return f"indicators: {path}"


def _write_json(summary: dict, path: Path) -> str:
    """Strict JSON: a figure that is not finite is null (JSON has no NaN or Infinity)."""
    strict = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in summary.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(strict, indent=2, allow_nan=False))
    return f"summary: {path}"


def _outputs_ok(outputs: list[tuple[str, Path | None, bool]]) -> bool:
    """Print why the first of ``(what, path, is_folder)`` that cannot be written cannot (a None path is
    not written); True if all can."""
    for what, path, folder in outputs:
        problem = None if path is None else output_problem(path, folder)
        if problem is not None:
            print(f"flowtide simulate: cannot write {what} {path}: {problem}", file=sys.stderr)
            return False
    return True

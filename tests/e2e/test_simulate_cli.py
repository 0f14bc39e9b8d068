"""`flowtide simulate` as a user runs it: the CLI, a real trace file, JSON and plots out."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from autoscaler.indicators import INDICATORS

from tests.conftest import SHARED_DATA, needs_data

ROOT = Path(__file__).resolve().parents[2]
CONV = SHARED_DATA / "azure-llm-2023" / "AzureLLMInferenceTrace_conv.csv"
PROFILE = SHARED_DATA / "splitwise-perf" / "perf_model.csv"
REQUIRED = ("slo_attainment", "gpu_hours", "energy_kwh", "power_violations", "power_violation_s", "scaling_actions",
            "ttft_p99_s", "tpot_p99_s")
needs_trace = needs_data(CONV, PROFILE)


def flowtide(*args, cwd=ROOT, env=None):
    # `python -m` with this checkout first on the path: the `flowtide` script runs whichever checkout
    # was installed (with several worktrees, another one's code).
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**(env or os.environ), "PYTHONPATH": path}
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def azure_excerpt(tmp_path: Path, rows: int = 3000) -> Path:
    lines = CONV.read_text().splitlines()[: rows + 1]
    path = tmp_path / "conv-excerpt.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@needs_trace
@pytest.mark.parametrize("policy", ["static", "ray-serve", "dynamo", "flowtide"])
def test_simulate_writes_the_json_other_tools_read(tmp_path, policy):
    trace = azure_excerpt(tmp_path)
    out = tmp_path / "out.json"
    narrow = {**os.environ, "COLUMNS": "40"}  # a log line must not be wrapped at the terminal's width
    indicators = tmp_path / "indicators.csv.gz"
    proc = flowtide("simulate", "--trace", str(trace), "--policy", policy, "--json", str(out),
                    "--plots", str(tmp_path / "plots"), "--forecaster", "last", "--indicators", str(indicators),
                    env=narrow)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    for key in REQUIRED:
        assert isinstance(summary[key], (int, float)), key
    assert 0.0 <= summary["slo_attainment"] <= 1.0 and summary["requests"] == 3000
    assert summary["gpu_hours"] > 0 and summary["energy_kwh"] > 0
    assert (tmp_path / "plots" / f"{policy}.png").stat().st_size > 10_000
    assert "power cap" in proc.stderr and "TTFT<=2.0s" in proc.stderr  # the defaults are printed
    if policy == "flowtide":  # and what sets its operating point
        said = "decides every 10s from 0s, attainment >= 0.995 and a miss penalty of 0.02 GPU-h per request"
        assert said in proc.stderr
    if policy == "dynamo":
        assert "plans every 180s from a kalman point forecast, decode correction on" in proc.stderr
    lines = proc.stderr.splitlines()
    assert (tmp_path / "plots" / f"{policy}-pools.png").stat().st_size > 10_000
    assert f"plots: {tmp_path / 'plots' / f'{policy}.png'}, {tmp_path / 'plots' / f'{policy}-pools.png'}" in lines
    assert f"summary: {out}" in lines and f"indicators: {indicators}" in lines
    # The cluster -> pool indicators, a row per tick and level: every request counted once, serving's
    # energy split between the pools.
    frame = pd.read_csv(indicators)
    assert frame.columns.tolist() == ["t_s", "pool", *INDICATORS]
    levels = {pool: rows.reset_index(drop=True) for pool, rows in frame.groupby("pool")}
    assert set(levels) == {"cluster", "prefill", "decode"} and len({len(rows) for rows in levels.values()}) == 1
    assert levels["cluster"]["arrival_rps"].sum() * summary["tick_s"] == pytest.approx(3000)
    energy = (levels["prefill"]["power_w"] + levels["decode"]["power_w"]).sum() * summary["tick_s"] / 3.6e6
    assert energy == pytest.approx(summary["energy_kwh"])
    assert "slo_attainment" in proc.stdout  # the table
    # Every decision, with why, one JSON line each (strict JSON: a policy's missing figures are null, not NaN).
    log = tmp_path / "plots" / f"{policy}-decisions.jsonl"
    decisions = [json.loads(line, parse_constant=lambda c: pytest.fail(f"{c} in {log}"))
                 for line in log.read_text().splitlines()]
    assert len(decisions) == summary["decisions"] > 0
    assert all({"prefill", "decode"} <= d["reasons"].keys() and d["reasons"]["prefill"]["binding"] for d in decisions)
    assert [d["t_s"] for d in decisions] == sorted(d["t_s"] for d in decisions)
    printed = next(line for line in lines if line.startswith(f"decisions: {log} ({len(decisions)}; bound by "))
    for part in printed.split("; bound by ", 1)[1].rstrip(")").split("; "):
        pool, counts = part.split(": ", 1)
        shown = {why: int(n) for why, n in (c.rsplit(" ", 1) for c in counts.split(", "))}
        assert shown == Counter(d["reasons"][pool]["binding"] for d in decisions), printed


def test_simulate_help_says_each_default_once_and_no_empty_one():
    proc = flowtide("simulate", "--help", env={**os.environ, "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    options: dict[str, str] = {}  # each option's help, its continuation lines joined
    for line in proc.stdout.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            name = line.split()[0].rstrip(",")
            options[name] = line
        elif options:
            options[name] += " " + line.strip()
    assert "--indicators" in options and not [o for o, text in options.items()
                                              if "(default: None)" in text or "(default: False)" in text]
    for option, default in (("--model", "llama2-70b"), ("--tp", "4"), ("--seed", "0"), ("--cold-start-s", "60.0"),
                            ("--forecaster", "flow")):
        assert options[option].endswith(f"(default: {default})"), options[option]
    # An option whose default depends on the trace or the config says so once, in its own words.
    assert options["--tick-s"].count("default") == 1 and "10 s" in options["--tick-s"]


@needs_trace
def test_simulate_reads_a_servegen_folder(tmp_path):
    folder = tmp_path / "sg"
    folder.mkdir()
    (folder / "chunk-0-trace.csv").write_text("0,3.0,1.5,Gamma,0.44,1.0\n600,4.0,2.0,Weibull,0.5,1.0\n")
    out = tmp_path / "sg.json"
    proc = flowtide("simulate", "--trace", str(folder), "--policy", "ray-serve", "--json", str(out), "--no-plots",
                    "--cache-dir", str(tmp_path / "cache"), "--decisions", str(tmp_path / "decisions.jsonl"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["requests"] == pytest.approx(3.0 * 600 + 4.0 * 600, rel=0.2)


def test_simulate_reports_a_missing_trace_clearly(tmp_path):
    proc = flowtide("simulate", "--trace", str(tmp_path / "none.csv"), "--policy", "static")
    assert proc.returncode == 2
    assert "does not exist" in proc.stderr


@needs_trace
def test_simulate_reports_a_malformed_csv_clearly(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("when,prompt\n1,2\n")
    proc = flowtide("simulate", "--trace", str(bad), "--policy", "static")
    assert proc.returncode == 2 and "lacks columns" in proc.stderr


@needs_trace
def test_simulate_names_prompts_no_replica_can_serve_within_the_slo(tmp_path):
    huge = tmp_path / "huge.csv"
    huge.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,100000000,44\n")
    proc = flowtide("simulate", "--trace", str(huge), "--policy", "static", "--no-plots")
    assert proc.returncode == 2, proc.stderr
    assert "cannot meet the TTFT SLO even unloaded: a 100000000-token prompt" in proc.stderr
    assert "Traceback" not in proc.stderr


@needs_trace
def test_simulate_finds_the_default_profile_from_any_directory(tmp_path):
    proc = flowtide("simulate", "--trace", str(azure_excerpt(tmp_path, rows=200)), "--policy", "static",
                    "--json", str(tmp_path / "out.json"), "--no-plots", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["requests"] == 200


@needs_trace
def test_simulate_ticks_a_multi_day_csv_at_10_s(tmp_path):
    gap = tmp_path / "two-days.csv"
    gap.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,500,50\n2023-11-18 18:15:47,500,50\n")
    proc = flowtide("simulate", "--trace", str(gap), "--policy", "static", "--json", str(tmp_path / "out.json"),
                    "--no-plots", "--profile", str(PROFILE), "--decisions", str(tmp_path / "decisions.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "out.json").read_text())["tick_s"] == 10.0


@needs_trace
def test_simulate_plans_with_a_profile_of_our_own_engine(tmp_path):
    """A CPU profile (`flowtide profile`'s schema) has no Splitwise watts: the power model's GPU is named
    apart, and until it is the CLI says so in one line."""
    rows = ["model,hardware,prompt_size,batch_size,token_size,prompt_time,token_time,tensor_parallel"]
    rows += [f"tiny,cpu-x86_64-2c-served,{p},{b},32,{12 + 4 * b + 0.03 * p * b},{1.5 + 0.1 * b},1"
             for p in (16, 64, 256, 1024) for b in (1, 2, 4, 8, 16, 32)]
    profile = tmp_path / "served.csv"
    profile.write_text("\n".join(rows) + "\n")
    trace = azure_excerpt(tmp_path, rows=1000)
    common = ("simulate", "--trace", str(trace), "--policy", "static", "--profile", str(profile), "--model", "tiny",
              "--hardware", "cpu-x86_64-2c-served", "--tp", "1", "--ttft-slo-s", "0.5", "--tpot-slo-s", "0.02",
              "--no-plots")
    proc = flowtide(*common)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("flowtide simulate: no power constants for hardware 'cpu-x86_64-2c-served'; known: "
                                   "['a100-80gb', 'h100-80gb'] (give --power-hardware for a profile of other hardware)")
    out = tmp_path / "out.json"
    proc = flowtide(*common, "--power-hardware", "h100-80gb", "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(out.read_text())
    assert summary["profile"] == "tiny/cpu-x86_64-2c-served/TP1" and summary["requests"] == 1000
    assert summary["slo_attainment"] > 0.99 and summary["ttft_p99_s"] < 0.5

"""`flowtide simulate` as a user runs it: the CLI, a real trace file, JSON and plots out."""

import json
import math
import os
import re
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
    (entry,) = (tmp_path / "cache").glob("*.npz")
    entry.write_bytes(entry.read_bytes()[:100])  # as a run stopped mid-write by an older version left it
    proc = flowtide("simulate", "--trace", str(folder), "--policy", "ray-serve", "--json", str(out), "--no-plots",
                    "--cache-dir", str(tmp_path / "cache"), "--decisions", str(tmp_path / "decisions.jsonl"))
    assert proc.returncode == 0, proc.stderr
    assert f"flowtide simulate: warning: ServeGen cache {entry} cannot be read (BadZipFile" in proc.stderr
    again = json.loads(out.read_text())
    assert (again["requests"], again["gpu_hours"]) == (summary["requests"], summary["gpu_hours"])


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
    huge.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46,9000000,44\n")  # under 1e7, the bound
    proc = flowtide("simulate", "--trace", str(huge), "--policy", "static", "--no-plots")
    assert proc.returncode == 2, proc.stderr
    assert "cannot meet the TTFT SLO even unloaded: a 9000000-token prompt" in proc.stderr
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


def _bad_inputs(tmp_path: Path) -> dict[str, Path]:
    """Tiny traces, each wrong in one way, and a ServeGen folder."""
    rows = {"zero-epoch": ["1970-01-01 00:00:00,100,10", "2023-11-16 18:17:03,100,10"],
            "five-minutes": ["2023-11-16 18:17:03,100,10", "2023-11-16 18:22:03,100,10"],
            "milliseconds": ["1700158623000,100,10", "1700162223000,100,10"],
            "huge-output": ["2023-11-16 18:17:03,100,10", "2023-11-16 18:17:04,100,1e300"]}
    paths = {}
    for name, lines in rows.items():
        paths[name] = tmp_path / f"{name}.csv"
        paths[name].write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{line}\n" for line in lines))
    paths["servegen"] = tmp_path / "sg"
    paths["servegen"].mkdir()
    (paths["servegen"] / "chunk-0-trace.csv").write_text("0,1.0,1.0,Gamma,1.0,1.0\n")
    (tmp_path / "a-file").write_text("")
    return paths


@needs_trace
@pytest.mark.parametrize("trace, extra, error", [
    # The long replays' ticks are beyond any memory, so that without the bound they fail at once too.
    ("zero-epoch", ["--tick-s", "1e-3"], r"span 1,700,158,623 s \(19,677.8 days\) \(TIMESTAMP '1970-01-01 00:00:00' "
                                         r"at data row 1 to '2023-11-16 18:17:03' at data row 2\), 1.7e\+12 ticks of "
                                         "0.001 s, beyond the 20,000,000 a replay holds"),
    ("five-minutes", ["--tick-s", "1e-9"], r"3e\+11 ticks of 1e-09 s, beyond the 20,000,000 a replay holds"),
    ("five-minutes", ["--tick-s", "600"], r"span 300 s \(TIMESTAMP .*\), less than the 600 s tick"),
    ("five-minutes", ["--seed", "-1"], "argument --seed: must be an integer >= 0, got '-1'"),
    ("five-minutes", ["--json", "/proc/x.json"], "cannot write --json /proc/x.json: /proc is not writable"),
    ("five-minutes", ["--profile", "{tmp}"], "profile file {tmp} is a folder, not a file"),
    ("servegen", ["--cache-dir", "{tmp}/a-file"], "cannot write --cache-dir {tmp}/a-file: it is a file"),
    ("milliseconds", [], "TIMESTAMP 1700158623000 at data row 1 is past the year 5000 as seconds: it looks like epoch"),
    ("huge-output", [], r"GeneratedTokens 1e\+300 at data row 2 is 1e\+07 tokens or more"),
    ("/dev/null", [], "trace /dev/null is not a regular file"),
], ids=["zero-epoch-row", "tiny-tick", "tick-past-span", "negative-seed", "json-in-proc", "profile-folder",
        "cache-dir-file", "epoch-ms", "huge-tokens", "dev-null"])
def test_simulate_refuses_bad_input_in_one_line_before_the_run(tmp_path, trace, extra, error):
    path = _bad_inputs(tmp_path).get(trace, trace)
    extra = [arg.format(tmp=tmp_path) for arg in extra]
    proc = flowtide("simulate", "--trace", str(path), "--policy", "static", "--no-plots", *extra)
    assert proc.returncode == 2, proc.stderr
    assert re.search(error.format(tmp=re.escape(str(tmp_path))), proc.stderr), proc.stderr
    assert "Traceback" not in proc.stderr and "slo_attainment" not in proc.stdout


@needs_trace
def test_simulate_keeps_its_results_when_an_output_cannot_be_written(tmp_path):
    from orchestrator.commands.simulate import _write_json

    trace = azure_excerpt(tmp_path, rows=100)
    # A cap below the idle draw of one replica per pool once ran, served nothing and wrote an infinite
    # TTFT as `Infinity` (invalid JSON): it is refused before the run, and a figure that is not finite is null.
    proc = flowtide("simulate", "--trace", str(trace), "--policy", "static", "--no-plots", "--power-cap-w", "1e-320",
                    "--json", str(tmp_path / "out.json"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "power_cap_w 9.99989e-321 W is below the idle draw of the minimum replicas (1, 1) (600 W)" in proc.stderr
    out = tmp_path / "out.json"
    _write_json({"ttft_p99_s": math.inf, "tpot_p99_s": math.nan, "requests": 100}, out)
    summary = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in {out}"))
    assert summary == {"ttft_p99_s": None, "tpot_p99_s": None, "requests": 100}
    # /dev/full opens (the check before the run passes) but every write fails: the table is still printed.
    proc = flowtide("simulate", "--trace", str(trace), "--policy", "static", "--no-plots", "--json", "/dev/full",
                    "--indicators", str(tmp_path / "indicators.csv"), "--decisions", str(tmp_path / "d.jsonl"))
    assert proc.returncode == 2
    assert proc.stderr.splitlines()[-1] == "flowtide simulate: cannot write --json /dev/full: No space left on device"
    assert "Traceback" not in proc.stderr and "slo_attainment" in proc.stdout
    assert (tmp_path / "indicators.csv").stat().st_size > 0


def test_output_paths_are_tried_for_writing_and_left_as_found(tmp_path):
    from orchestrator.commands.simulate import output_problem

    kept = tmp_path / "kept.json"
    kept.write_text("{}")
    assert output_problem(kept) is None and output_problem(tmp_path / "new" / "out.json") is None
    assert output_problem(tmp_path, folder=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kept.json"] and kept.read_text() == "{}"
    if Path("/proc/self").is_dir():  # root passes os.access here, yet no file can be created
        assert output_problem(Path("/proc/x.json")) == "/proc is not writable (No such file or directory)"

"""The CLI refuses bad input at start with a message naming the problem."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def cli(*args):
    # This checkout's CLI (`-m` from the repository root), whichever checkout the `flowtide` script was installed from.
    return subprocess.run([sys.executable, "-m", "orchestrator.cli", *args], cwd=ROOT, text=True, capture_output=True,
                          timeout=120)


def test_up_with_bad_config_fails_naming_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("serving:\n  mode: sideways\n")
    result = cli("up", "--config", str(bad))
    assert result.returncode == 2
    assert "serving.mode" in result.stderr


def tiny_trace(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n0,100,10\n1,200,20\n2,100,10\n")
    return path


@pytest.mark.parametrize("flag, value, says", [
    ("--cold-start-s", "-5", "argument --cold-start-s: must be >= 0, got '-5'"),
    ("--forecast-step-s", "-30", "argument --forecast-step-s: must be > 0, got '-30'"),
    ("--tick-s", "nan", "argument --tick-s: must be finite, got 'nan'"),
    ("--tick-s", "0", "argument --tick-s: must be > 0, got '0'"),  # was taken for the default, 1 s
    ("--power-cap-w", "-100", "argument --power-cap-w: must be > 0, got '-100'"),
    ("--power-cap-w", "0", "argument --power-cap-w: must be > 0, got '0'"),  # was taken for the default
    ("--ttft-slo-s", "0", "argument --ttft-slo-s: must be > 0, got '0'"),  # was taken for the default, 2 s
    ("--forecaster", "bogus", "argument --forecaster: invalid choice: 'bogus'"),
])
def test_simulate_refuses_a_bad_number_or_forecaster_before_running(tmp_path, flag, value, says):
    result = cli("simulate", "--trace", str(tiny_trace(tmp_path)), "--policy", "flowtide", "--no-plots",
                 "--decisions", str(tmp_path / "decisions.jsonl"), flag, value)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("flag, kind, says", [
    ("--json", "folder", "it is a folder"),
    ("--decisions", "folder", "it is a folder"),
    ("--plots", "file", "it is a file"),
    ("--json", "under a file", "is a file, not a folder"),
    ("--indicators", "folder", "it is a folder"),
])
def test_simulate_refuses_an_output_path_it_cannot_write_before_running(tmp_path, flag, kind, says):
    trace = tiny_trace(tmp_path)
    target = {"folder": tmp_path, "file": trace, "under a file": trace / "out.json"}[kind]
    outputs = {"--decisions": tmp_path / "decisions.jsonl", "--plots": tmp_path / "plots", flag: target}
    result = cli("simulate", "--trace", str(trace), "--policy", "static", *(x for o in outputs.items() for x in (o[0], str(o[1]))))
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == f"flowtide simulate: cannot write {flag} {target}: " + (
        f"{trace} {says}" if kind == "under a file" else says)


def test_up_and_profile_help_name_their_defaults():
    up = " ".join(cli("up", "--help").stdout.split())  # joined: argparse wraps at the terminal's width
    assert "--engine {transformers,vllm} inference engine (default: the config's engine.kind, built in transformers)" in up
    assert "(default: the config's serving.mode, built in disaggregated)" in up
    assert "(default: the config's serving.http_port, built in 8000)" in up
    profile = " ".join(cli("profile", "--help").stdout.split())
    assert "prompt sweep at batch 1 (default: 32,64,128,256,512)" in profile and "(default: 3)" in profile

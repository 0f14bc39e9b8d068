"""`flowtide profile` on real engines: a perf_model.csv the autoscaler's capacity model loads."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest

from workers.profiling import PERF_COLUMNS, hardware_name

SWEEP = ["--prompt-sizes", "16,96", "--batch-sizes", "1,4", "--batch-prompt-size", "24", "--token-size", "8",
         "--repeats", "2"]


def _profile(engine: str, model_dir: str, out: Path, env: dict[str, str] | None = None, timeout_s: int = 300) -> None:
    cmd = [sys.executable, "-m", "orchestrator.cli", "profile", "--engine", engine, "--model", model_dir,
           "--out", str(out), *SWEEP]
    done = subprocess.run(cmd, env={**os.environ, **(env or {})}, capture_output=True, text=True, timeout=timeout_s)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"wrote {out}" in done.stdout


def _check_profile(out: Path, model: str) -> None:
    from autoscaler.capacity import fit_capacity, load_profile_table

    with out.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == PERF_COLUMNS
    assert [(int(r["prompt_size"]), int(r["batch_size"])) for r in rows] == [
        (16, 1), (16, 1), (96, 1), (96, 1), (24, 1), (24, 1), (24, 4), (24, 4)
    ]
    assert {(r["model"], r["hardware"], r["tensor_parallel"], r["token_size"]) for r in rows} == {
        (model, hardware_name(), "1", "8")
    }
    capacity = fit_capacity(load_profile_table(out), model, hardware_name(), 1)
    assert capacity.max_batch == 4


def test_profile_transformers_engine_writes_a_capacity_profile(tmp_path, tiny_model_dir):
    out = tmp_path / "transformers.csv"
    _profile("transformers", tiny_model_dir, out)
    _check_profile(out, Path(tiny_model_dir).name)


def test_profile_refuses_a_sweep_longer_than_the_model(tmp_path, tiny_model_dir):
    cmd = [sys.executable, "-m", "orchestrator.cli", "profile", "--engine", "transformers", "--model", tiny_model_dir,
           "--out", str(tmp_path / "x.csv"), "--prompt-sizes", "4000", "--token-size", "200"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert "max_model_len is 2048" in done.stderr
    assert not (tmp_path / "x.csv").exists()


@pytest.mark.vllm
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_profile_vllm_engine_writes_a_capacity_profile(tmp_path, tiny_model_dir):
    from tests.integration.vllm_support import FAST_START_ENV

    model_dir = tiny_model_dir
    out = tmp_path / "vllm.csv"
    env = {
        **FAST_START_ENV,
        "FLOWTIDE_ENGINE__VLLM__ENFORCE_EAGER": "true",
        "FLOWTIDE_ENGINE__VLLM__KV_CACHE_BYTES": str(64 * 1024**2),
    }
    _profile("vllm", model_dir, out, env=env, timeout_s=800)
    _check_profile(out, Path(model_dir).name)


def test_profile_of_a_missing_model_names_the_path(tmp_path):
    cmd = [sys.executable, "-m", "orchestrator.cli", "profile", "--engine", "transformers", "--model",
           str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.csv")]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert f"{tmp_path / 'nowhere'} is not a Hugging Face checkpoint directory" in done.stderr

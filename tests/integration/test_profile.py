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


def _profile_endpoint(url: str, model_dir: str, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "orchestrator.cli", "profile", "--endpoint", url, "--model", model_dir,
           "--out", str(out), *SWEEP, *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_profile_endpoint_measures_the_running_service(service, tmp_path, tiny_model_dir):
    """The service's profile, through HTTP, routing and the KV hand-off: slower than the engine's own."""
    served, engine = tmp_path / "served.csv", tmp_path / "engine.csv"
    done = _profile_endpoint(service.base_url, tiny_model_dir, served)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "power: not measured (profiled through the endpoint)" in done.stdout
    with served.open() as handle:
        rows = list(csv.DictReader(handle))
    assert tuple(rows[0].keys()) == PERF_COLUMNS
    assert {(r["model"], r["hardware"]) for r in rows} == {("flowtide-tiny", f"{hardware_name()}-served")}
    assert [(int(r["prompt_size"]), int(r["batch_size"])) for r in rows] == [
        (16, 1), (16, 1), (96, 1), (96, 1), (24, 1), (24, 1), (24, 4), (24, 4)
    ]
    from autoscaler.capacity import fit_capacity, load_profile_table

    capacity = fit_capacity(load_profile_table(served), "flowtide-tiny", f"{hardware_name()}-served", 1)
    assert capacity.max_batch == 4
    # Every request's first token crossed HTTP and two Serve replicas: its time includes the engine's.
    _profile("transformers", tiny_model_dir, engine)
    engine_ms = {int(r["prompt_size"]): float(r["prompt_time"]) for r in csv.DictReader(engine.open())
                 if r["batch_size"] == "1"}
    served_ms = {int(r["prompt_size"]): float(r["prompt_time"]) for r in rows if r["batch_size"] == "1"}
    assert min(served_ms.values()) > min(engine_ms.values())


def test_profile_endpoint_errors_name_the_problem(service, tmp_path, tiny_model_dir):
    from tests.conftest import free_port

    down = f"http://127.0.0.1:{free_port()}"
    done = _profile_endpoint(down, tiny_model_dir, tmp_path / "a.csv")
    assert done.returncode == 1
    assert f"cannot list the models at {down}/v1" in done.stderr and "Traceback" not in done.stderr
    env_done = subprocess.run(
        [sys.executable, "-m", "orchestrator.cli", "profile", "--endpoint", service.base_url, "--model", tiny_model_dir,
         "--out", str(tmp_path / "b.csv"), *SWEEP],
        env={**os.environ, "FLOWTIDE_MODEL__SERVED_NAME": "other-model"}, capture_output=True, text=True, timeout=300)
    assert env_done.returncode == 1
    assert "serves ['flowtide-tiny'], not 'other-model'" in env_done.stderr
    done = _profile_endpoint(service.base_url.removeprefix("http://"), tiny_model_dir, tmp_path / "d.csv")
    assert done.returncode == 2
    assert "expected a base URL like http://127.0.0.1:8000" in done.stderr
    done = _profile_endpoint(service.base_url, tiny_model_dir, tmp_path / "c.csv", "--prompt-sizes", "2000")
    assert done.returncode == 2
    assert "prompt size 2000 exceeds model.max_prompt_tokens=1024" in done.stderr
    assert not any((tmp_path / name).exists() for name in ("a.csv", "b.csv", "c.csv", "d.csv"))

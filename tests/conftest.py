"""Shared fixtures: loopback Ray, the embedded tiny model, free ports, the shared data."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import orchestrator  # noqa: F401  (keeps Ray on loopback: must precede any ray import)
import pytest

from orchestrator.ingress import free_port  # noqa: F401  (the tests' free port)


SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"  # ../shared/data beside the clone


def load_benchmark(name: str) -> ModuleType:
    """``benchmarks/<name>.py`` as a module named ``<name>_benchmark`` ("autoscaler" is also the package it imports)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_benchmark", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def needs_data(*paths: Path) -> pytest.MarkDecorator:
    """Skip marker for tests that read the shared data; in CI missing data fails collection instead."""
    missing = [str(p) for p in paths if not p.exists()]
    if missing and os.environ.get("CI") == "true":
        raise FileNotFoundError(f"CI needs the shared data beside the clone (see its README); missing: {missing}")
    return pytest.mark.skipif(bool(missing), reason=f"needs the shared data: {missing}")


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def tiny_model_dir() -> str:
    from workers.tiny_model import tiny_model_path

    return str(tiny_model_path())


def require_tool(name: str) -> str:
    """Path of an external tool the tests need; in CI a missing tool fails, locally it skips."""
    import shutil

    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required in CI but not installed (the test command's set-up installs it)")
        pytest.skip(f"{name} not installed (scripts/test.sh installs it)")
    return path

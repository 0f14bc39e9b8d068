"""Shared fixtures: loopback Ray, the embedded tiny model, free ports."""

from __future__ import annotations

import os
import socket

import orchestrator  # noqa: F401  (keeps Ray on loopback: must precede any ray import)
import pytest


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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

"""`flowtide up` / `flowtide status` as an operator runs them: start, call, inspect, Ctrl-C, nothing left over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest
from openai import OpenAI

from tests.conftest import free_port

pytestmark = pytest.mark.slow


def flowtide(*args: str, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def haproxy_pids() -> set[int]:
    out = subprocess.run(["pgrep", "-x", "haproxy"], capture_output=True, text=True).stdout
    return {int(pid) for pid in out.split()}


def test_up_serves_status_shows_placement_and_ctrl_c_leaves_no_raylet(tmp_path):
    port = free_port()
    haproxy_before = haproxy_pids()
    env = {**os.environ, "FLOWTIDE_STATE_FILE": str(tmp_path / "run.json")}
    proc = flowtide("up", "--port", str(port), env=env)
    try:
        deadline = time.monotonic() + 400
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                healthy = httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                healthy = False
            if healthy and (tmp_path / "run.json").exists():  # `up` records its state once deployed
                break
            assert time.monotonic() < deadline, "flowtide up did not come up"
            time.sleep(2)
        c = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="-", max_retries=3)
        assert c.completions.create(model="flowtide-tiny", prompt="hi", max_tokens=4).usage.completion_tokens >= 1
        state = json.loads((tmp_path / "run.json").read_text())
        gcs_port = state["ray_address"].rsplit(":", 1)[1]

        status = subprocess.run([sys.executable, "-m", "orchestrator.cli", "status"], env=env, text=True,
                                capture_output=True, timeout=120)
        assert status.returncode == 0, status.stdout + status.stderr
        rows = [line for line in status.stdout.splitlines() if "RUNNING" in line]
        assert any("PrefillServer" in r and "prefill" in r.split("PrefillServer", 1)[1] for r in rows), status.stdout
        assert any("DecodeServer" in r and "decode" in r.split("DecodeServer", 1)[1] for r in rows), status.stdout
        for pool in ("prefill", "decode", "train", "head"):
            assert pool in status.stdout
        ours = haproxy_pids() - haproxy_before
        assert ours, "the default ingress (serving.http_proxy: haproxy) runs no HAProxy"
    finally:
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 0, out
    assert "serving flowtide-tiny" in out and "curl" in out
    assert not (tmp_path / "run.json").exists()
    leftover = subprocess.run(["pgrep", "-f", f"gcs.address=127.0.0.1:{gcs_port}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"raylets still running: {leftover.stdout}"
    assert not ours & haproxy_pids(), "HAProxy outlived the cluster"

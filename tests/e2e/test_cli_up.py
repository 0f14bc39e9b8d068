"""`flowtide up` / `flowtide status` as an operator runs them: start, call, inspect, Ctrl-C, nothing left over."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import httpx
import psutil
import pytest
from openai import OpenAI

from orchestrator.cluster import CLUSTER_TAG_ENV
from tests.conftest import free_port
from workers.tiny_model import tiny_model_path

pytestmark = pytest.mark.slow


def flowtide(*args: str, env: dict, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "orchestrator.cli", *args], env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, **kw)


def cluster_tags(processes=None) -> set[str]:
    """The local-cluster tags the given processes (default: all) carry in their environment."""
    tags = set()
    for proc in psutil.process_iter() if processes is None else processes:
        try:
            tag = proc.environ().get(CLUSTER_TAG_ENV)
        except (psutil.Error, OSError):
            continue
        if tag:
            tags.add(tag)
    return tags


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
    assert "graceful_shutdown failed" not in out, out  # Ray 2.60's serve.shutdown reports its own controller's exit
    assert not (tmp_path / "run.json").exists()
    leftover = subprocess.run(["pgrep", "-f", f"gcs.address=127.0.0.1:{gcs_port}"], capture_output=True, text=True)
    assert leftover.stdout.strip() == "", f"raylets still running: {leftover.stdout}"
    assert not ours & haproxy_pids(), "HAProxy outlived the cluster"


def test_up_fails_naming_a_deployment_that_cannot_be_scheduled_and_leaves_no_raylet(tmp_path):
    # Prefill replicas ask for more CPUs than the prefill pool has: Serve would wait for them forever.
    config = tmp_path / "unschedulable.yaml"
    config.write_text("serving:\n  deploy_timeout_s: 45\n  prefill:\n    num_cpus: 64\n")
    env = {**os.environ, "FLOWTIDE_STATE_FILE": str(tmp_path / "run.json")}
    log = tmp_path / "up.log"
    with log.open("w") as out_file:
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up", "--config", str(config), "--port",
                                 str(free_port())], env=env, text=True, stdout=out_file, stderr=subprocess.STDOUT)
        ours: set[str] = set()  # the tags of the processes `up` starts (its cluster's)
        deadline = time.monotonic() + 400
        while proc.poll() is None:
            assert time.monotonic() < deadline, "flowtide up neither came up nor failed"
            ours |= cluster_tags(psutil.Process(proc.pid).children(recursive=True))
            time.sleep(1)
    out = log.read_text()
    assert proc.returncode == 1, out
    assert "not running after serving.deploy_timeout_s=45 s (deleted)" in out, out
    why = out.split("deploy_timeout_s=45 s (deleted)", 1)[1]
    assert "PrefillServer" in why and "DecodeServer" not in why, out
    assert not (tmp_path / "run.json").exists()
    assert ours, "no process of the cluster `up` started was seen"
    assert not ours & cluster_tags(), "processes of the failed `up`'s cluster outlived it"


def test_up_fails_fast_naming_the_error_of_a_deployment_whose_replicas_crash(tmp_path):
    # The tiny model with its weights file replaced by garbage (it passes the up-front check, which
    # only sees that one exists): every server replica's constructor raises on loading it, Serve marks
    # the deployments DEPLOY_FAILED, and `up` says why without waiting out its timeout.
    model = tmp_path / "corrupt"
    shutil.copytree(tiny_model_path(), model)
    (model / "model.safetensors").write_bytes(os.urandom(4096))
    env = {**os.environ, "FLOWTIDE_STATE_FILE": str(tmp_path / "run.json"), "FLOWTIDE_SERVING__DEPLOY_TIMEOUT_S": "300"}
    log = tmp_path / "up.log"
    started = time.monotonic()
    with log.open("w") as out_file:  # a file, not a pipe: nothing blocks on a full pipe while we poll
        proc = subprocess.Popen([sys.executable, "-m", "orchestrator.cli", "up", "--model", str(model), "--port",
                                 str(free_port())], env=env, text=True, stdout=out_file, stderr=subprocess.STDOUT)
        ours: set[str] = set()
        while proc.poll() is None:
            assert time.monotonic() - started < 300, "up waited out its deploy timeout instead of reporting the failure"
            ours |= cluster_tags(psutil.Process(proc.pid).children(recursive=True))
            time.sleep(1)
    out = log.read_text()
    assert proc.returncode == 1, out
    why = out.split("failed to deploy (deleted): ", 1)[1]
    assert "DEPLOY_FAILED" in why and "Error while deserializing header" in why, out
    assert not (tmp_path / "run.json").exists()
    assert ours and not ours & cluster_tags(), "processes of the failed `up`'s cluster outlived it"


def test_up_on_a_cluster_it_joined_deletes_only_its_app_on_ctrl_c(tmp_path):
    # Someone else's cluster (cluster.address) with another Serve app on it: Ctrl-C takes our app
    # away and leaves the cluster, Serve and the other app running.
    from ray import serve
    from ray.serve.config import HTTPOptions, ProxyLocation

    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.config import load_config

    port = free_port()
    config = load_config(**{"serving.http_port": port})
    cluster = LocalCluster(config.cluster, serving=config.serving).start()
    try:
        connect(cluster.address)
        serve.start(proxy_location=ProxyLocation.HeadOnly, http_options=HTTPOptions(port=port))

        @serve.deployment(ray_actor_options={"num_cpus": 0})
        def other() -> str:
            return "the other app"

        serve.run(other.bind(), name="other", route_prefix="/other")
        joined = tmp_path / "joined.yaml"
        joined.write_text(f"cluster:\n  address: {cluster.address}\nserving:\n  http_port: {port}\n")
        env = {**os.environ, "FLOWTIDE_STATE_FILE": str(tmp_path / "run.json")}
        proc = flowtide("up", "--config", str(joined), env=env)
        try:
            deadline = time.monotonic() + 400
            while not (tmp_path / "run.json").exists():  # `up` records its state once deployed
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "flowtide up did not come up"
                time.sleep(2)
            assert serve.status().applications[config.serving.app_name].status.value == "RUNNING"
        finally:
            proc.send_signal(signal.SIGINT)
            out, _ = proc.communicate(timeout=180)
        assert proc.returncode == 0, out
        assert "graceful_shutdown failed" not in out, out
        apps = serve.status().applications
        assert config.serving.app_name not in apps or apps[config.serving.app_name].status.value != "RUNNING", apps
        assert apps["other"].status.value == "RUNNING"
        assert httpx.get(f"http://127.0.0.1:{port}/other", timeout=10, trust_env=False).text == "the other app"
        assert any(True for _ in cluster.processes()), "the joined cluster's processes were stopped"
    finally:
        try:
            serve.shutdown()
        finally:
            cluster.shutdown()

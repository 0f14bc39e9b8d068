"""A real local multi-pool Ray cluster on one machine: a head plus labelled nodes per pool.

Every node carries the Ray node label ``pool=<name>`` (the head: ``pool=head``);
deployments and training actors select their pool by that label, never by host.
Ray is kept on loopback (see ``../shared/FACTS.md``): without it Ray rewrites
127.0.0.1 to the machine's address and hangs.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import tempfile
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import ray
from ray.cluster_utils import Cluster

from orchestrator.config import ClusterConfig, Pool, ServingConfig

if TYPE_CHECKING:
    import psutil

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
POOL_LABEL = "pool"
HEAD_POOL = "head"
CLUSTER_TAG_ENV = "FLOWTIDE_LOCAL_CLUSTER"


@dataclass
class LocalCluster:
    """Owns the raylets it starts; :meth:`shutdown` removes exactly those (never ``ray stop``).

    ``serving``: the Serve settings its processes must start with (see :mod:`orchestrator.ingress`).
    Every process carries a tag in its environment, so shutdown also finds what Ray does not
    stop itself (HAProxy, whose parent actor was killed).
    """

    config: ClusterConfig
    serving: ServingConfig | None = None
    _cluster: Cluster | None = None
    _nodes: dict[str, list] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _env: dict[str, str] = field(default_factory=dict)
    _run_dir: Path | None = None

    @property
    def address(self) -> str:
        if self._cluster is None:
            raise RuntimeError("cluster not started")
        return self._cluster.address

    def start(self) -> LocalCluster:
        """Start the head and every pool's nodes; returns once all are alive. Main thread only."""
        from orchestrator.ingress import serve_env

        # Short: HAProxy nests its sockets under it (by node id), and a socket path may have 97 characters.
        self._run_dir = Path(tempfile.mkdtemp(prefix="ft-"))
        self._env = {CLUSTER_TAG_ENV: uuid.uuid4().hex}
        if self.serving is not None:
            self._env.update(serve_env(self.serving, self._run_dir))
        with self._process_env():
            self._cluster = Cluster(
                initialize_head=True,
                head_node_args=dict(
                    num_cpus=self.config.head_num_cpus,
                    node_ip_address=LOOPBACK,
                    object_store_memory=self.config.object_store_memory_bytes,
                    include_dashboard=self.config.include_dashboard,
                    # Drivers connect with log_to_driver=False, so nothing reads what it would stream; it polled
                    # every worker's log files (~1.5% of a core idle, more under load).
                    include_log_monitor=False,
                    labels={POOL_LABEL: HEAD_POOL},
                ),
            )
        for pool, pool_config in self.config.pools.items():
            for _ in range(pool_config.nodes):
                self.add_node(pool)
        self._cluster.wait_for_nodes()
        return self

    def add_node(self, pool: Pool, num_cpus: float | None = None, wait: bool = True):
        """Add one node to ``pool`` (a node joining the pool, as a KubeRay worker group would)."""
        if self._cluster is None:
            raise RuntimeError("cluster not started")
        pool_config = self.config.pools[pool]
        with self._process_env():
            node = self._cluster.add_node(
                wait=wait,
                num_cpus=pool_config.num_cpus_per_node if num_cpus is None else num_cpus,
                num_gpus=pool_config.num_gpus_per_node,
                node_ip_address=LOOPBACK,
                object_store_memory=self.config.object_store_memory_bytes,
                labels={POOL_LABEL: pool.value},
            )
        with self._lock:
            self._nodes.setdefault(pool.value, []).append(node)
        return node

    def remove_node(self, node, allow_graceful: bool = False) -> None:
        """Remove ``node``; ``allow_graceful=False`` kills its processes like a node failure."""
        if self._cluster is None:
            raise RuntimeError("cluster not started")
        with self._lock:
            for nodes in self._nodes.values():
                if node in nodes:
                    nodes.remove(node)
        self._cluster.remove_node(node, allow_graceful=allow_graceful)

    def kill_node(self, node) -> None:
        """Fail ``node`` like a machine loss: SIGKILL its workers (children of its raylet), then the node.

        ``remove_node`` alone kills the raylet but leaves its workers running until they
        notice, seconds later; a lost machine takes them down at once.
        """
        import psutil
        from ray._private import ray_constants

        for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
            try:
                for child in psutil.Process(info.process.pid).children(recursive=True):
                    child.kill()
            except psutil.NoSuchProcess:
                pass  # the raylet is already gone; remove_node below reaps the rest
        self.remove_node(node, allow_graceful=False)

    def processes(self) -> Iterator[tuple[psutil.Process, dict[str, str]]]:
        """This cluster's live processes (each started with its tag), with their environments."""
        return tagged_processes(self._env[CLUSTER_TAG_ENV]) if self._env else iter(())

    def nodes(self, pool: Pool) -> list:
        with self._lock:
            return list(self._nodes.get(pool.value, []))

    def shutdown(self) -> None:
        """Disconnect and stop every process this cluster started."""
        if ray.is_initialized():
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
            self._nodes.clear()
        if self._env:
            _kill_tagged(self._env[CLUSTER_TAG_ENV])
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    @contextlib.contextmanager
    def _process_env(self) -> Iterator[None]:
        """Processes spawned inside inherit this cluster's environment; the driver's own is restored after."""
        saved = {name: os.environ.get(name) for name in self._env}
        os.environ.update(self._env)
        try:
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def tagged_processes(tag: str) -> Iterator[tuple[psutil.Process, dict[str, str]]]:
    """Every other process whose environment carries cluster ``tag``, with that environment.

    Each process's command line is read with it (``proc.info["cmdline"]``; None once it has exited).
    """
    import psutil

    for proc in psutil.process_iter(["cmdline"]):
        try:
            env = proc.environ()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
        if proc.pid != os.getpid() and env.get(CLUSTER_TAG_ENV) == tag:
            yield proc, env


def _kill_tagged(tag: str) -> None:
    """SIGKILL every process whose environment carries this cluster's tag."""
    import psutil

    for proc, _ in tagged_processes(tag):
        try:
            log.info("stopping leftover process %d (%s)", proc.pid, proc.name())
            proc.kill()
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue


def connect(address: str, namespace: str = "flowtide") -> None:
    """Connect this process as a driver to the cluster at ``address`` (idempotent)."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)

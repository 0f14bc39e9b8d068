"""A real local multi-pool Ray cluster on one machine: a head plus labelled nodes per pool.

Every node carries the Ray node label ``pool=<name>`` (the head: ``pool=head``);
deployments and training actors select their pool by that label, never by host.
Ray is kept on loopback (see ``../shared/FACTS.md``): without it Ray rewrites
127.0.0.1 to the machine's address and hangs.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

import ray
from ray.cluster_utils import Cluster

from orchestrator.config import ClusterConfig, Pool

log = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"
POOL_LABEL = "pool"
HEAD_POOL = "head"


def pool_selector(pool: Pool | str) -> dict[str, str]:
    """The Ray ``label_selector`` that pins an actor to ``pool``."""
    return {POOL_LABEL: Pool(pool).value if not isinstance(pool, Pool) else pool.value}


@dataclass
class LocalCluster:
    """Owns the raylets it starts; :meth:`shutdown` removes exactly those (never ``ray stop``)."""

    config: ClusterConfig
    _cluster: Cluster | None = None
    _nodes: dict[str, list] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def address(self) -> str:
        if self._cluster is None:
            raise RuntimeError("cluster not started")
        return self._cluster.address

    def start(self) -> LocalCluster:
        """Start the head and every pool's nodes; returns once all are alive. Main thread only."""
        self._cluster = Cluster(
            initialize_head=True,
            head_node_args=dict(
                num_cpus=self.config.head_num_cpus,
                node_ip_address=LOOPBACK,
                object_store_memory=self.config.object_store_memory_bytes,
                include_dashboard=self.config.include_dashboard,
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

    def nodes(self, pool: Pool) -> list:
        with self._lock:
            return list(self._nodes.get(pool.value, []))

    def shutdown(self) -> None:
        """Disconnect and stop every raylet this cluster started."""
        if ray.is_initialized():
            ray.shutdown()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None
            self._nodes.clear()


def connect(address: str, namespace: str = "flowtide") -> None:
    """Connect this process as a driver to the cluster at ``address`` (idempotent)."""
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)

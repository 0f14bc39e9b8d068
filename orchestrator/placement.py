"""Where things run: pools, their nodes, and each Serve replica's node, as Ray reports them."""

from __future__ import annotations

from dataclasses import dataclass

import ray
from ray import serve

from orchestrator.cluster import POOL_LABEL


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    pool: str
    alive: bool
    cpus: float
    gpus: float


@dataclass(frozen=True)
class ReplicaInfo:
    app: str
    deployment: str
    replica_id: str
    state: str
    node_id: str
    pool: str


def nodes() -> list[NodeInfo]:
    """Every node Ray knows, with its pool label (``?`` where it has none)."""
    return [
        NodeInfo(
            node_id=n["NodeID"],
            pool=n.get("Labels", {}).get(POOL_LABEL, "?"),
            alive=n["Alive"],
            cpus=n.get("Resources", {}).get("CPU", 0.0),
            gpus=n.get("Resources", {}).get("GPU", 0.0),
        )
        for n in ray.nodes()
    ]


def replicas() -> list[ReplicaInfo]:
    """Every Serve replica with the pool of the node Ray placed it on."""
    pool_of = {n.node_id: n.pool for n in nodes()}
    details = ray.get(serve.context._get_global_client()._controller.get_serve_instance_details.remote())
    out = []
    for app_name, app in details.get("applications", {}).items():
        for dep_name, dep in app.get("deployments", {}).items():
            for rep in dep.get("replicas", []):
                node_id = rep.get("node_id") or ""
                state = getattr(rep["state"], "value", rep["state"])  # a ReplicaState enum or its string
                out.append(ReplicaInfo(app_name, dep_name, rep["replica_id"], str(state), node_id,
                                       pool_of.get(node_id, "?")))
    return out

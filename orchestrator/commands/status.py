"""`flowtide status`: pools, nodes, deployments and replicas, with where each replica runs."""

from __future__ import annotations

import argparse
from collections import Counter

from rich.console import Console
from rich.table import Table


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("status", help="show pools, nodes, deployments and replica placement")
    p.add_argument("--address", help="Ray address (default: the cluster `flowtide up` started)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import orchestrator  # noqa: F401  (loopback env before ray)
    from orchestrator import placement, runstate
    from orchestrator.cluster import connect

    console = Console()
    state = runstate.load()
    address = args.address or (state.ray_address if state else None)
    if address is None:
        console.print("[red]no running Flowtide cluster found[/] (start one with `flowtide up`, or pass --address)")
        return 1
    connect(address)
    nodes = placement.nodes()
    reps = placement.replicas()
    per_node = Counter(r.node_id for r in reps)

    table = Table(title=f"nodes ({address})")
    for col in ("pool", "node", "alive", "CPUs", "GPUs", "replicas"):
        table.add_column(col)
    for n in sorted(nodes, key=lambda n: (n.pool, n.node_id)):
        table.add_row(n.pool, n.node_id[:12], "yes" if n.alive else "[red]no[/]", f"{n.cpus:g}", f"{n.gpus:g}",
                      str(per_node.get(n.node_id, 0)))
    console.print(table)

    table = Table(title="replicas" + (f" (endpoint {state.endpoint})" if state else ""))
    for col in ("app", "deployment", "replica", "state", "pool", "node"):
        table.add_column(col)
    for r in sorted(reps, key=lambda r: (r.app, r.deployment, r.replica_id)):
        table.add_row(r.app, r.deployment, r.replica_id, r.state, r.pool, r.node_id[:12])
    console.print(table)
    return 0

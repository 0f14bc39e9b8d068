"""`flowtide train JOB.yaml`: validate a training job, run it elastically, follow it to the end."""

from __future__ import annotations

import argparse
import sys

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from orchestrator.config import load_config

console = Console(soft_wrap=True)  # a logged line stays one line: paths and commands copy whole


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="run an elastic training job from a YAML job file")
    p.add_argument("job", help="YAML job file (see docs/training.md)")
    p.add_argument("--config", help="YAML config file (default: $FLOWTIDE_CONFIG or built-in defaults)")
    p.add_argument("--address", help="Ray cluster address (default: cluster.address, else a local cluster)")
    p.add_argument("--timeout-s", type=float, default=3600.0, help="give up after this many seconds (default: %(default)s)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    from orchestrator.training.spec import JobSpecError, load_job_spec

    config = load_config(args.config)
    try:
        spec = load_job_spec(args.job)
    except JobSpecError as exc:
        print(f"flowtide: {exc}", file=sys.stderr)
        return 2

    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.training.manager import TrainingJobFailed, TrainingJobManager

    address = args.address or config.cluster.address
    cluster = None
    try:
        if address is None:
            with console.status("starting a local Ray cluster"):
                cluster = LocalCluster(config.cluster).start()
                address = cluster.address
        connect(address)
        manager = TrainingJobManager(config.training)
        try:
            job_id = manager.submit(spec)
        except JobSpecError as exc:  # the backend does not fit the pool's nodes
            print(f"flowtide: {exc}", file=sys.stderr)
            return 2
        console.print(
            f"job [bold]{job_id}[/]: {spec.steps} steps, {spec.min_peers}-{spec.max_peers} peers on pool {spec.pool}, "
            f"backend {manager.status(job_id)['backend']}"
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            bar = progress.add_task("training", total=spec.steps)

            def show(status: dict) -> None:
                progress.update(
                    bar,
                    completed=status["last_commit_step"],
                    description=f"{status['phase']} world={status['world_size']} "
                    f"loss={status['losses'][-1][1] if status['losses'] else float('nan'):.4f}",
                )

            try:
                status = manager.wait(job_id, timeout_s=args.timeout_s, on_status=show)
            except (TrainingJobFailed, TimeoutError) as exc:
                console.print(f"[red]{exc}[/]")
                return 1
        digests = {d[1] for d in status["final_digests"].values()}
        console.print(
            f"[green]finished[/] step {status['last_commit_step']}, final loss {status['losses'][-1][1]:.4f}, "
            f"recoveries {status['recoveries']}, joins {status['joins']}, "
            f"time lost to churn {status['churn_lost_s']:.1f} s, state sha256 {', '.join(sorted(d[:16] for d in digests))}"
        )
        manager.stop(job_id)
        return 0
    finally:
        if cluster is not None:
            cluster.shutdown()

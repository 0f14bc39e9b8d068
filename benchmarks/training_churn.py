"""Peer death mid-run: Flowtide's elastic trainer vs Ray Train (FailureConfig + checkpoint restart).

Same MLP, same data order, same checkpoint period and the same churn schedule in one
run on one local cluster (head + 3 one-CPU train nodes, 2 workers each, so both have a
spare node): at step ``--kill-at`` the node hosting rank 0 fails (its workers and raylet
SIGKILLed), and a fresh train node is added right after. Reported per system: time to
recover (kill -> first step of the re-formed group), steps lost (steps computed again,
the in-flight one included), time to finish.

    python benchmarks/training_churn.py --steps 300 --kill-at 140 --json results/training_churn.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import orchestrator  # noqa: F401  (loopback Ray: before importing ray)

ROOT = Path(__file__).resolve().parents[1]
B, MICRO, SEED = 64, 8, 0
TRAIN_NODES = 3


def _train_loop_per_worker(config: dict) -> None:
    """Ray Train's side: DDP over gloo on the same MLP and sample order; rank 0 logs each step."""
    import tempfile
    import uuid

    import ray.train
    import ray.train.torch
    import torch

    from workers.elastic import mlp
    from workers.elastic.sharding import step_sample_ids

    torch.set_num_threads(1)
    torch.manual_seed(SEED)
    model = ray.train.torch.prepare_model(mlp.build_model())
    opt = mlp.build_optimizer(model.parameters())
    x, y = mlp.build_dataset(SEED)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    start = 0
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            saved = torch.load(Path(d) / "state.pt", weights_only=True)
        model.module.load_state_dict(saved["model"])
        opt.load_state_dict(saved["optimizer"])
        start = saved["step"]
    attempt = uuid.uuid4().hex[:8]
    node_id = ray.get_runtime_context().get_node_id()
    for step in range(start, config["steps"]):
        ids = step_sample_ids(step, B, len(x), SEED)
        mine = torch.from_numpy(ids[rank * B // world : (rank + 1) * B // world])
        loss = torch.nn.functional.mse_loss(model(x[mine]), y[mine])
        opt.zero_grad()
        loss.backward()
        opt.step()
        done = step + 1
        if rank == 0:
            with open(config["progress"], "a") as f:
                f.write(json.dumps({"attempt": attempt, "step": done, "t": time.time(), "node": node_id, "start": start}) + "\n")
        if done % config["checkpoint_every"] == 0 or done == config["steps"]:
            with tempfile.TemporaryDirectory() as d:
                ckpt = None
                if rank == 0:
                    torch.save({"model": model.module.state_dict(), "optimizer": opt.state_dict(), "step": done}, Path(d) / "state.pt")
                    ckpt = ray.train.Checkpoint.from_directory(d)
                ray.train.report({"step": done}, checkpoint=ckpt)
        if config["step_delay_s"]:
            time.sleep(config["step_delay_s"])


def raytrain_driver(args: argparse.Namespace) -> int:
    """Runs in a subprocess: ``trainer.fit()`` blocks and wants the main thread."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    ray.init(address=args.raytrain_driver, namespace="flowtide-bench", log_to_driver=False)
    trainer = TorchTrainer(
        _train_loop_per_worker,
        train_loop_config=dict(
            steps=args.steps, progress=args.progress, checkpoint_every=args.checkpoint_every, step_delay_s=args.step_delay_s
        ),
        scaling_config=ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}, label_selector={"pool": "train"}),
        run_config=RunConfig(
            name=f"bench-{int(time.time())}",
            storage_path=str(Path(args.progress).parent / "raytrain"),
            failure_config=FailureConfig(max_failures=3),
        ),
    )
    trainer.fit()
    return 0


def _ensure_train_nodes(cluster, pool, n: int) -> None:
    while len(cluster.nodes(pool)) < n:
        cluster.add_node(pool)


def run_ours(cluster, config, args, progress, bar) -> dict:
    from orchestrator.config import Pool
    from orchestrator.training.manager import TrainingJobManager
    from orchestrator.training.spec import parse_job_spec

    _ensure_train_nodes(cluster, Pool.TRAIN, TRAIN_NODES)
    manager = TrainingJobManager(config.training)
    spec = parse_job_spec(
        dict(
            name=f"bench-{int(time.time()) % 100000}",
            model="workers.elastic.mlp:build_model",
            optimizer="workers.elastic.mlp:build_optimizer",
            data="workers.elastic.mlp:build_dataset",
            step="workers.elastic.mlp:mse_step",
            steps=args.steps,
            global_batch_size=B,
            micro_batch_size=MICRO,
            seed=SEED,
            max_peers=2,
            checkpoint_every_steps=args.checkpoint_every,
            step_delay_s=args.step_delay_s,
        )
    )
    t_submit = time.time()
    job = manager.submit(spec)
    t_kill = None
    while True:
        s = manager.status(job)
        progress.update(bar, completed=s["last_commit_step"])
        if s["phase"] in ("finished", "failed"):
            break
        if t_kill is None and s["world_size"] == 2 and s["last_commit_step"] >= args.kill_at:
            victim = next(iter(s["members"].values()))  # rank 0's node
            node = next(n for n in cluster.nodes(Pool.TRAIN) if n.node_id == victim)
            t_kill = time.time()
            cluster.kill_node(node)
            cluster.add_node(Pool.TRAIN)
        time.sleep(0.1)
    s = manager.wait(job, timeout_s=60)
    manager.stop(job)
    failure = next(r for r in s["reformations"] if r["reason"] == "failure")
    before = max(step for step, _, epoch, _ in s["commits"] if epoch < failure["epoch"])
    return dict(
        recovery_s=failure["t_first_commit"] - t_kill,
        detect_s=failure["t_detect"] - t_kill,
        steps_lost=max(0, before + 1 - failure["start_step"]),
        train_time_s=s["commits"][-1][1] - s["commits"][0][1],
        total_time_s=s["commits"][-1][1] - t_submit,
        final_step=s["last_commit_step"],
        world_size_after=s["world_size"],
        joins=s["joins"],
    )


def run_raytrain(cluster, address: str, args, progress, bar, workdir: Path) -> dict:
    from orchestrator.config import Pool

    _ensure_train_nodes(cluster, Pool.TRAIN, TRAIN_NODES)
    log = workdir / "raytrain_progress.jsonl"
    log.unlink(missing_ok=True)
    cmd = [
        sys.executable, __file__, "--raytrain-driver", address, "--progress", str(log), "--steps", str(args.steps),
        "--checkpoint-every", str(args.checkpoint_every), "--step-delay-s", str(args.step_delay_s),
    ]
    t_submit = time.time()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(workdir / "raytrain_driver.log", "w"))
    t_kill = None
    rows: list[dict] = []
    deadline = time.time() + args.timeout_s
    while proc.poll() is None and time.time() < deadline:
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        if rows:
            progress.update(bar, completed=rows[-1]["step"])
        if t_kill is None and rows and rows[-1]["step"] >= args.kill_at:
            node = next(n for n in cluster.nodes(Pool.TRAIN) if n.node_id == rows[-1]["node"])
            t_kill = time.time()
            cluster.kill_node(node)
            cluster.add_node(Pool.TRAIN)
        time.sleep(0.1)
    if proc.poll() is None:
        proc.kill()
        raise RuntimeError(f"Ray Train did not finish in {args.timeout_s} s (see {workdir / 'raytrain_driver.log'})")
    rows = [json.loads(line) for line in log.read_text().splitlines()]
    if proc.returncode != 0 or rows[-1]["step"] != args.steps:
        raise RuntimeError(f"Ray Train failed (exit {proc.returncode}); see {workdir / 'raytrain_driver.log'}")
    first_attempt = rows[0]["attempt"]
    old = [r for r in rows if r["attempt"] == first_attempt]
    new = [r for r in rows if r["attempt"] != first_attempt and r["t"] > t_kill]
    return dict(
        recovery_s=new[0]["t"] - t_kill,
        steps_lost=max(0, old[-1]["step"] + 1 - new[0]["start"]),
        train_time_s=rows[-1]["t"] - rows[0]["t"],
        total_time_s=rows[-1]["t"] - t_submit,
        final_step=rows[-1]["step"],
        restarted_from_step=new[0]["start"],
        attempts=len({r["attempt"] for r in rows}),
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--kill-at", type=int, default=140, help="kill rank 0's node once this step is committed")
    p.add_argument("--checkpoint-every", type=int, default=50)
    p.add_argument("--step-delay-s", type=float, default=0.05, help="pause per step (both systems)")
    p.add_argument("--timeout-s", type=float, default=420.0)
    p.add_argument("--json", help="also write the result here")
    p.add_argument("--raytrain-driver", help=argparse.SUPPRESS)
    p.add_argument("--progress", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.raytrain_driver:
        return raytrain_driver(args)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.config import Pool, load_config

    workdir = ROOT / "results" / "training_churn"
    workdir.mkdir(parents=True, exist_ok=True)
    config = load_config()
    for pool in (Pool.PREFILL, Pool.DECODE):
        config.cluster.pools[pool].nodes = 0
    config.cluster.pools[Pool.TRAIN].nodes = TRAIN_NODES
    config.cluster.pools[Pool.TRAIN].num_cpus_per_node = 1
    config.training.checkpoint_dir = str(workdir / "checkpoints")
    console = Console()
    with console.status(f"starting a local cluster (head + {TRAIN_NODES} train nodes)"):
        cluster = LocalCluster(config.cluster).start()
    try:
        connect(cluster.address)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console) as progress:
            ours = run_ours(cluster, config, args, progress, progress.add_task("flowtide elastic", total=args.steps))
            theirs = run_raytrain(
                cluster, cluster.address, args, progress, progress.add_task("ray train restart", total=args.steps), workdir
            )
    finally:
        cluster.shutdown()

    ratios = dict(
        recovery_speedup=theirs["recovery_s"] / ours["recovery_s"],
        total_time_ratio=theirs["total_time_s"] / ours["total_time_s"],
        train_time_ratio=theirs["train_time_s"] / ours["train_time_s"],
    )
    table = Table(title=f"peer death at step {args.kill_at} of {args.steps} (checkpoint every {args.checkpoint_every})")
    for col in ("", "flowtide", "ray train", "ray train / flowtide"):
        table.add_column(col)
    table.add_row("time to recover (s)", f"{ours['recovery_s']:.2f}", f"{theirs['recovery_s']:.2f}", f"{ratios['recovery_speedup']:.1f}x")
    table.add_row("steps lost", str(ours["steps_lost"]), str(theirs["steps_lost"]), "")
    table.add_row("train time, first to last step (s)", f"{ours['train_time_s']:.1f}", f"{theirs['train_time_s']:.1f}", f"{ratios['train_time_ratio']:.2f}x")
    table.add_row("total time incl. start (s)", f"{ours['total_time_s']:.1f}", f"{theirs['total_time_s']:.1f}", f"{ratios['total_time_ratio']:.2f}x")
    console.print(table)
    targets = dict(
        recovery_le_10s=ours["recovery_s"] <= 10.0,
        recovery_ge_3x_faster=ratios["recovery_speedup"] >= 3.0,
        le_1_step_lost=ours["steps_lost"] <= 1,
    )
    console.print("targets: " + ", ".join(f"{k}={'met' if v else 'MISSED'}" for k, v in targets.items()))
    result = dict(
        benchmark="training_churn",
        args={k: v for k, v in vars(args).items() if k not in ("raytrain_driver", "progress", "json")},
        flowtide=ours,
        ray_train=theirs,
        ratios=ratios,
        targets=targets,
        machine=dict(cpus=os.cpu_count(), load_avg=os.getloadavg()),
        when=time.strftime("%Y-%m-%dT%H:%M:%S"),
    )
    out = json.dumps(result, indent=2)
    (ROOT / "results" / "training_churn.json").write_text(out)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`flowtide up`: start a local multi-pool Ray cluster, deploy the Serve app, stay up until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import threading
import typing

from rich.console import Console

from orchestrator.config import EngineConfig, ServingConfig, load_config

console = Console(soft_wrap=True)  # a logged line stays one line: paths and commands copy whole


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("up", help="start the cluster and the OpenAI-compatible endpoint (Ctrl-C stops)")
    p.add_argument("--config", help="YAML config file (default: $FLOWTIDE_CONFIG or built-in defaults)")
    p.add_argument("--model", help="local Hugging Face checkpoint directory (default: the embedded tiny model)")
    # Choices and built-in defaults read from the config's fields, so the help cannot drift from them.
    for flag, section, model, field, what in (("--engine", "engine", EngineConfig, "kind", "inference engine"),
                                              ("--mode", "serving", ServingConfig, "mode", "serving mode"),
                                              ("--port", "serving", ServingConfig, "http_port", "HTTP port of the endpoint")):
        info = model.model_fields[field]
        choices = typing.get_args(info.annotation) or None
        p.add_argument(flag, choices=choices, type=None if choices else int,
                       help=f"{what} (default: the config's {section}.{field}, built in {info.default})")
    p.add_argument("--exit-after-ready", action="store_true", help=argparse.SUPPRESS)  # smoke tests
    p.set_defaults(run=run)


def _overrides(args: argparse.Namespace) -> dict:
    pairs = {"model.path": args.model, "engine.kind": args.engine, "serving.mode": args.mode,
             "serving.http_port": args.port}
    return {k: v for k, v in pairs.items() if v is not None}


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config, **_overrides(args))
    from orchestrator import runstate
    from orchestrator.app import DeployError, deploy, resolve_model_path
    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.ingress import check_cluster_env

    model_path = resolve_model_path(config)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    cluster = None
    try:
        with console.status("starting the Ray cluster"):
            if config.cluster.address is None:
                cluster = LocalCluster(config.cluster, serving=config.serving).start()
                address = cluster.address
            else:
                address = config.cluster.address
            connect(address)
            if cluster is None:
                check_cluster_env(config.serving)
        pools = ", ".join(f"{p.value}={c.nodes}" for p, c in config.cluster.pools.items())
        console.print(f"[green]cluster up[/] at {address} (head + nodes per pool: {pools})")
        with console.status(f"deploying the {config.serving.mode} Serve app ({config.engine.kind} engine)"):
            try:
                endpoint = deploy(config, model_path)
            except DeployError as exc:
                console.print(f"flowtide up: {exc}", style="red", markup=False, highlight=False, soft_wrap=True)
                return 1
        runstate.save(runstate.RunState(address, endpoint, config.serving.app_name, os.getpid()))
        _print_ready(config, endpoint, model_path)
        if not args.exit_after_ready:
            stop.wait()
        console.print("shutting down ...")
        return 0
    finally:
        _shutdown(cluster, config.serving.app_name)
        runstate.clear(os.getpid())


def _print_ready(config, endpoint: str, model_path: str) -> None:
    name = config.model.served_name
    serving = config.serving
    console.print(f"[bold green]serving[/] {name} ({model_path}) at {endpoint}/v1")
    console.print(f"  curl {endpoint}/v1/completions -H 'Content-Type: application/json' "
                  f"-d '{{\"model\": \"{name}\", \"prompt\": \"hello\", \"max_tokens\": 16}}'")
    console.print(f"  python -c \"from openai import OpenAI; c = OpenAI(base_url='{endpoint}/v1', api_key='-'); "
                  f"print(c.completions.create(model='{name}', prompt='hello', max_tokens=16).choices[0].text)\"")
    console.print(f"  metrics: {endpoint}/metrics   status: flowtide status")
    console.print(f"  autoscaling: prefill {serving.prefill.min_replicas}-{serving.prefill.max_replicas}, "
                  f"decode {serving.decode.min_replicas}-{serving.decode.max_replicas} replicas")
    console.print("Ctrl-C stops everything.")


def _shutdown(cluster, app_name: str) -> None:
    """Delete our app (its replicas drain), then stop the cluster if we started it.

    Serve itself is not shut down: on our own cluster its controller and proxies stop with the
    cluster (Ray 2.60's ``serve.shutdown`` has the controller kill itself inside a task the raylet
    then reports as failed, a confusing error on every Ctrl-C); on a cluster we only joined, other
    applications may be using it.
    """
    import ray
    from ray import serve

    if ray.is_initialized():
        try:
            serve.delete(app_name)
        except Exception as exc:  # shutting down anyway; say what failed
            console.print(f"[yellow]deleting the Serve app {app_name}: {exc}[/]")
    if cluster is not None:
        cluster.shutdown()
    elif ray.is_initialized():
        ray.shutdown()

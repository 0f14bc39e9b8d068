"""Builds and deploys the Serve application from one config: the P/D wiring lives here.

Disaggregated, ``serving.ingress: decode`` (default): HTTP -> DecodeServer (pool=decode; the router
runs in-process) -> PrefillServer (pool=prefill). ``ingress: head``: HTTP -> Router (head) ->
DecodeServer -> PrefillServer. Colocated (the baseline): the decode-pool server does both phases.
Each server selects its pool by Ray node label, never by host.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, NoReturn

import httpx
from ray import serve
from ray.serve.config import HTTPOptions, ProxyLocation

from orchestrator.cluster import HEAD_POOL, POOL_LABEL
from orchestrator.config import DeploymentConfig, FlowtideConfig, Pool
from orchestrator.router import Router, api
from workers.servers import LLMServer
from workers.telemetry import MetricsHub

PREFILL_DEPLOYMENT = "PrefillServer"
DECODE_DEPLOYMENT = "DecodeServer"
ROUTER_DEPLOYMENT = "Router"
HUB_DEPLOYMENT = "MetricsHub"


WEIGHT_FILES = ("*.safetensors", "*.bin", "*.pt")


def resolve_model_path(config: FlowtideConfig) -> str:
    """The checkpoint directory to serve: the configured one, or the embedded tiny model (built on first use)."""
    if config.model.path is None:
        from workers.tiny_model import tiny_model_path

        return str(tiny_model_path())
    from orchestrator.config import ConfigError

    path = Path(config.model.path).expanduser()
    if not (path / "config.json").exists():
        raise ConfigError(f"model.path: {path} is not a Hugging Face checkpoint directory (no config.json)")
    if not any(any(path.glob(pattern)) for pattern in WEIGHT_FILES):
        # Caught here in a second, not after every replica has failed to load it three times.
        raise ConfigError(f"model.path: {path} holds no weights (no {' or '.join(WEIGHT_FILES)} files)")
    return str(path)


# Serve runs user code and the handle router on event loops of their own by default; every
# request then crosses threads several times. Our servers never block their loop (engine work
# runs on a worker thread), so they take the single-loop fast path.
FAST_PATH_ENV = {"RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0", "RAY_SERVE_RUN_ROUTER_IN_SEPARATE_LOOP": "0"}


def _options(name: str, pool: str, deployment: DeploymentConfig, access_log: bool) -> dict[str, Any]:
    return dict(
        name=name,
        ray_actor_options={
            "num_cpus": deployment.num_cpus,
            "num_gpus": deployment.num_gpus,
            "label_selector": {POOL_LABEL: pool},
            "runtime_env": {"env_vars": FAST_PATH_ENV},
        },
        logging_config={"enable_access_log": access_log},
        max_ongoing_requests=deployment.max_ongoing_requests,
        autoscaling_config={
            "min_replicas": deployment.min_replicas,
            "initial_replicas": deployment.initial_replicas,
            "max_replicas": deployment.max_replicas,
        },
    )


def engine_options(config: FlowtideConfig, role: str) -> dict[str, Any]:
    """Keyword arguments of the configured engine's constructor."""
    if config.engine.kind == "vllm":
        vllm = config.engine.vllm
        return dict(
            dtype=config.model.dtype,
            max_model_len=config.model.max_model_len,
            tensor_parallel_size=vllm.tensor_parallel_size,
            kv_cache_bytes=vllm.kv_cache_bytes,
            gpu_memory_utilization=vllm.gpu_memory_utilization,
            enforce_eager=vllm.enforce_eager,
            kv_connector=vllm.kv_connector,
            kv_storage_path=vllm.kv_storage_path,
            block_size=vllm.block_size,
            max_batch_size=config.serving.max_batch_size,
        )
    return dict(
        dtype=config.model.dtype,
        device=config.engine.device,
        max_batch_size=config.serving.max_batch_size,
        max_model_len=config.model.max_model_len,
    )


def build_app(config: FlowtideConfig, model_path: str | None = None) -> serve.Application:
    """The Serve application for ``config`` (not yet running)."""
    model_path = model_path or resolve_model_path(config)
    serving = config.serving
    hub = serve.deployment(MetricsHub).options(
        name=HUB_DEPLOYMENT, num_replicas=1, ray_actor_options={"num_cpus": 0, "label_selector": {POOL_LABEL: HEAD_POOL}}
    ).bind()

    def server_args(role: str) -> dict[str, Any]:
        return dict(role=role, engine_kind=config.engine.kind, model_path=model_path,
                    engine_options=engine_options(config, role), metrics_interval_s=serving.metrics_push_interval_s)

    prefill = None
    if serving.mode == "disaggregated":
        prefill = serve.deployment(LLMServer).options(
            **_options(PREFILL_DEPLOYMENT, Pool.PREFILL.value, serving.prefill, serving.access_log)
        ).bind(**server_args("prefill"), metrics_hub=hub)
    role = "decode" if prefill is not None else "colocated"
    router_cls = serve.deployment(serve.ingress(api)(Router))
    decode_options = _options(DECODE_DEPLOYMENT, Pool.DECODE.value, serving.decode, serving.access_log)
    if serving.ingress == "decode":
        # The decode replica is the ingress: HTTP -> DecodeServer(router + engine) -> PrefillServer.
        return router_cls.options(**decode_options).bind(
            config.model_dump(mode="json"), model_path, metrics_hub=hub, fused_server=server_args(role),
            prefill=prefill,
        )
    decode = serve.deployment(LLMServer).options(**decode_options).bind(**server_args(role), prefill=prefill,
                                                                        metrics_hub=hub)
    return router_cls.options(**_options(ROUTER_DEPLOYMENT, HEAD_POOL, serving.router, serving.access_log)).bind(
        config.model_dump(mode="json"), model_path, decode=decode, metrics_hub=hub
    )


DEPLOY_POLL_S = 0.5


class DeployError(RuntimeError):
    """The application did not come up: its deployments' states and Serve's messages say why."""


def deploy(config: FlowtideConfig, model_path: str | None = None) -> str:
    """Start Serve on the connected cluster, run the app, and return the endpoint's base URL once it answers.

    ``serve.run`` waits with no limit for a replica that can never be scheduled (a pool without the
    CPUs/GPUs it asks for), and in Ray 2.60 it goes on waiting after the application is deleted (a
    deleted application reads NOT_STARTED), leaving a thread that polls a cluster being shut down.
    So the application is submitted without waiting and the wait is ours, bounded by
    ``serving.deploy_timeout_s``: until Serve reports it RUNNING and its ``/health`` answers through
    the endpoint (the ingress has its routes). Past the timeout, or on DEPLOY_FAILED, the
    application is deleted and :class:`DeployError` names the deployments not healthy, with Serve's
    own messages (e.g. the resources a replica waits for).
    """
    serving = config.serving
    serve.start(
        proxy_location=ProxyLocation.HeadOnly,
        http_options=HTTPOptions(host=serving.http_host, port=serving.http_port,
                                 request_timeout_s=serving.request_timeout_s),
    )
    serve.run_many([serve.RunTarget(build_app(config, model_path), name=serving.app_name,
                                    route_prefix=serving.route_prefix)], wait_for_applications_running=False)
    endpoint = f"http://{serving.http_host}:{serving.http_port}"
    host = "127.0.0.1" if serving.http_host in ("0.0.0.0", "::") else serving.http_host
    health = f"http://{host}:{serving.http_port}{serving.route_prefix.rstrip('/')}/health"
    deadline = time.monotonic() + serving.deploy_timeout_s
    while True:
        app = serve.status().applications.get(serving.app_name)
        status = app.status.value if app is not None else "NOT_STARTED"
        if status == "DEPLOY_FAILED":
            _delete_and_raise(serving.app_name, f"failed to deploy (deleted): {_not_healthy(serving.app_name)}")
        if status == "RUNNING" and _answers(health):
            return endpoint
        if time.monotonic() > deadline:
            why = _not_healthy(serving.app_name) if status != "RUNNING" else f"{health} does not answer 200"
            _delete_and_raise(serving.app_name, f"not running after serving.deploy_timeout_s="
                                                f"{serving.deploy_timeout_s:.0f} s (deleted): {why}")
        time.sleep(DEPLOY_POLL_S)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=5.0, trust_env=False).status_code == 200  # our own endpoint: no proxy
    except httpx.HTTPError:
        return False


def _delete_and_raise(app_name: str, what: str) -> NoReturn:
    serve.delete(app_name)
    raise DeployError(f"application {app_name!r} {what}")


def _not_healthy(app_name: str) -> str:
    """The application's deployments that are not healthy, with Serve's status messages."""
    app = serve.status().applications.get(app_name)
    if app is None:
        return "Serve has no such application yet"
    lines = [f"{name} {d.status.value}: {d.message or 'no message'}"
             for name, d in app.deployments.items() if d.status.value != "HEALTHY"]
    return "; ".join(lines) or f"application {app.status.value}: {app.message or 'no message'}"

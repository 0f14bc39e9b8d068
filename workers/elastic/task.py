"""The job a peer runs, as plain picklable data: user callables travel as import paths."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

from workers.elastic.backend import Backend


class TaskError(ValueError):
    """A training task is malformed (the message names the field)."""


def resolve(path: str, field_name: str) -> Callable[..., Any]:
    """Import ``module:attribute`` and return the callable.

    Raises:
        TaskError: the path is malformed, the module or attribute is missing, or not callable.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise TaskError(f"{field_name}: expected 'module:function', got {path!r}")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskError(f"{field_name}: cannot import module {module_name!r}: {exc}") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise TaskError(f"{field_name}: module {module_name!r} has no attribute {attr!r}")
        target = getattr(target, part)
    if not callable(target):
        raise TaskError(f"{field_name}: {path!r} is not callable")
    return target


@dataclass(frozen=True)
class TrainTask:
    """Everything a peer needs; built and validated by ``orchestrator.training.spec``.

    ``model_fn()`` builds the model from torch's global RNG (seeded by the trainer),
    ``optimizer_fn(params)`` its optimizer, ``dataset_fn(seed)`` a tuple of tensors
    with equal first dimension, ``step_fn(model, batch) -> loss`` the mean loss of
    one micro-batch (the trainer runs backward, exchange and the optimizer step).
    """

    job_id: str
    model_fn: str
    optimizer_fn: str
    dataset_fn: str
    step_fn: str
    total_steps: int
    global_batch_size: int
    micro_batch_size: int
    seed: int = 0
    min_peers: int = 1
    max_peers: int = 4
    checkpoint_dir: str | None = None
    checkpoint_every_steps: int = 50
    keep_checkpoints: int = 2
    collective_timeout_s: float = 10.0
    liveness_timeout_s: float = 2.0
    node_poll_s: float = 1.0
    peer_start_timeout_s: float = 300.0
    peer_num_cpus: float = 1.0
    peer_label_selector: dict[str, str] = field(default_factory=lambda: {"pool": "train"})
    backend: Backend = Backend.GLOO  # resolved at submit (``orchestrator.training.spec``), never "auto"
    torch_threads: int = 1
    step_delay_s: float = 0.0

    @property
    def num_micro_batches(self) -> int:
        return self.global_batch_size // self.micro_batch_size

    def validate(self) -> TrainTask:
        """Check the numbers that the trainer relies on; the import paths are checked by ``resolve``.

        Raises:
            TaskError: naming the first bad field.
        """
        if self.total_steps < 1:
            raise TaskError("total_steps must be at least 1")
        if self.micro_batch_size < 1 or self.global_batch_size < self.micro_batch_size:
            raise TaskError("micro_batch_size must be >= 1 and <= global_batch_size")
        if self.global_batch_size % self.micro_batch_size:
            raise TaskError("global_batch_size must be a multiple of micro_batch_size")
        if self.min_peers < 1:
            raise TaskError("min_peers must be at least 1")
        if self.min_peers > self.max_peers:
            raise TaskError(f"min_peers ({self.min_peers}) must not exceed max_peers ({self.max_peers})")
        if self.max_peers > self.num_micro_batches:
            raise TaskError(
                f"max_peers ({self.max_peers}) exceeds the micro-batches per step ({self.num_micro_batches}); "
                "extra peers would have nothing to compute"
            )
        if self.checkpoint_every_steps < 1 or self.keep_checkpoints < 1:
            raise TaskError("checkpoint_every_steps and keep_checkpoints must be at least 1")
        for name in ("model_fn", "optimizer_fn", "dataset_fn", "step_fn"):
            resolve(getattr(self, name), name)
        return self

"""The small MLP job the training unit tests share."""

from __future__ import annotations

from workers.elastic.task import TrainTask

MLP = "workers.elastic.mlp"


def mlp_task(**overrides) -> TrainTask:
    """A validated 6-step MLP task (32 samples a step, micro-batches of 4); ``overrides`` replace fields."""
    base = dict(
        job_id="unit",
        model_fn=f"{MLP}:build_model",
        optimizer_fn=f"{MLP}:build_optimizer",
        dataset_fn=f"{MLP}:build_dataset",
        step_fn=f"{MLP}:mse_step",
        total_steps=6,
        global_batch_size=32,
        micro_batch_size=4,
    )
    return TrainTask(**{**base, **overrides}).validate()

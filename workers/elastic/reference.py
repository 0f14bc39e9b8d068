"""The reference for the determinism contract: the same job in one process, no churn.

After ``s`` committed steps an elastic run must equal, bit for bit, ``reference_run(task, s)``:
the same samples (``sharding``), the same per-micro-batch gradients, combined in the
same order (``step_math``), from the same seeded start.
"""

from __future__ import annotations

import torch

from workers.elastic import state as state_io
from workers.elastic.sharding import step_sample_ids
from workers.elastic.step_math import EXTRA_COLS, apply_rows, micro_batch_row, num_grad_elements, trainable
from workers.elastic.task import TrainTask, resolve


def reference_run(
    task: TrainTask, steps: int | None = None, device: torch.device | str = "cpu"
) -> tuple[state_io.StateDigest, list[float]]:
    """Train ``steps`` (default: all) committed steps alone on ``device``; returns the final digest and the losses.

    The contract holds per device type: a GPU job is compared with a reference on the same GPU model.
    """
    torch.set_num_threads(task.torch_threads)
    steps = task.total_steps if steps is None else steps
    step_fn = resolve(task.step_fn, "step_fn")
    data = tuple(resolve(task.dataset_fn, "dataset_fn")(task.seed))
    torch.manual_seed(task.seed)
    model = resolve(task.model_fn, "model_fn")().to(device)
    optimizer = resolve(task.optimizer_fn, "optimizer_fn")(trainable(model))
    k, m = task.num_micro_batches, task.micro_batch_size
    rows = torch.zeros(k, num_grad_elements(model) + EXTRA_COLS, device=device)
    losses = []
    for step in range(steps):
        ids = step_sample_ids(step, task.global_batch_size, len(data[0]), task.seed)
        rows.zero_()
        for micro in range(k):
            idx = torch.from_numpy(ids[micro * m : (micro + 1) * m])
            micro_batch_row(model, step_fn, tuple(t[idx].to(device) for t in data), task.seed, step, micro, rows[micro])
        losses.append(apply_rows(model, optimizer, rows))
    return state_io.digest(model, optimizer, steps, task.seed), losses

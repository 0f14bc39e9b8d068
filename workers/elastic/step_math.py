"""Bit-exact data-parallel step: per-micro-batch gradients, combined in a fixed order.

A sum all-reduce adds in an order that depends on the world size, so results drift in
the last bits as peers churn. Instead each micro-batch's gradient is computed alone,
all rows are gathered (exact copies), and every peer adds them in micro-batch order.
The combined gradient, hence the model, depends only on the committed samples, never
on who computed them (the determinism contract in docs/training.md).
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable, Sequence

import torch

# Columns after the flat gradient in each gathered row.
LOSS_COL = 0
REFORM_COL = 1
EXTRA_COLS = 2


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def num_grad_elements(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in trainable(model))


def micro_seed(seed: int, step: int, micro_index: int) -> int:
    """The RNG seed of one micro-batch (dropout etc.): a function of the step, not of the peer."""
    digest = hashlib.sha256(f"{seed}/{step}/{micro_index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def micro_batch_row(
    model: torch.nn.Module,
    step_fn: Callable[[torch.nn.Module, Any], torch.Tensor],
    batch: Sequence[torch.Tensor],
    seed: int,
    step: int,
    micro_index: int,
    out: torch.Tensor,
) -> None:
    """Write the flat gradient and loss of one micro-batch into ``out`` (one gather row)."""
    torch.manual_seed(micro_seed(seed, step, micro_index))
    params = trainable(model)
    for p in params:
        p.grad = None
    loss = step_fn(model, batch)
    loss.backward()
    offset = 0
    for p in params:
        n = p.numel()
        if p.grad is None:
            out[offset : offset + n].zero_()
        else:
            out[offset : offset + n].copy_(p.grad.reshape(-1))
        offset += n
    out[offset + LOSS_COL] = loss.detach()


def apply_rows(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rows: torch.Tensor) -> float:
    """Average the ``[num_micro_batches, P + EXTRA_COLS]`` rows in index order and step the optimizer.

    Returns the mean loss of the step. Every peer runs this on identical rows, so every
    peer's parameters and optimizer state stay identical bit for bit.
    """
    params = trainable(model)
    total = rows[0].clone()
    for i in range(1, rows.shape[0]):
        total += rows[i]
    total /= rows.shape[0]
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = total[offset : offset + n].view_as(p).clone()
        offset += n
    optimizer.step()
    return float(total[offset + LOSS_COL])

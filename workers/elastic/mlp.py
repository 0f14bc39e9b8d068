"""The built-in example task: a small MLP regressing a fixed random teacher network.

Small enough for 2 shared CPU cores, big enough that the loss falls visibly over a few
hundred steps. Tests, the benchmark and ``examples/train_mlp.yaml`` use it.
"""

from __future__ import annotations

import torch
from torch import nn

IN_FEATURES = 32
HIDDEN = 64
DATASET_SIZE = 4096


def build_model() -> nn.Module:
    return nn.Sequential(nn.Linear(IN_FEATURES, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, HIDDEN), nn.Tanh(), nn.Linear(HIDDEN, 1))


def build_optimizer(params) -> torch.optim.Optimizer:
    return torch.optim.Adam(params, lr=3e-3)


def build_dataset(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and teacher outputs; a function of ``seed`` only (every peer builds the same)."""
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(DATASET_SIZE, IN_FEATURES, generator=g)
    w1 = torch.randn(IN_FEATURES, 16, generator=g) / IN_FEATURES**0.5
    w2 = torch.randn(16, 1, generator=g) / 4
    y = torch.sin(x @ w1) @ w2
    return x, y


def mse_step(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)

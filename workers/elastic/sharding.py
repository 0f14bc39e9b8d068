"""Deterministic data order: which samples committed step ``s`` consumes, and who computes what.

The sample stream is a sequence of seeded permutations of the dataset, one per data
epoch; step ``s`` takes positions ``[s*B, (s+1)*B)`` of that stream. It depends on the
committed step only, never on the world size, so no sample is lost or doubled across
churn. The global batch splits into fixed micro-batches; ranks take contiguous runs.
"""

from __future__ import annotations

import numpy as np


def data_epoch_permutation(seed: int, data_epoch: int, dataset_len: int) -> np.ndarray:
    """A fixed permutation of ``range(dataset_len)`` for one pass over the data."""
    return np.random.default_rng([seed, data_epoch]).permutation(dataset_len)


def step_sample_ids(step: int, global_batch_size: int, dataset_len: int, seed: int) -> np.ndarray:
    """Sample ids (in order) of committed step ``step``; a batch may span two data epochs."""
    if dataset_len < 1:
        raise ValueError("dataset is empty")
    start = step * global_batch_size
    positions = np.arange(start, start + global_batch_size)
    out = np.empty(global_batch_size, dtype=np.int64)
    for data_epoch in np.unique(positions // dataset_len):
        mask = positions // dataset_len == data_epoch
        out[mask] = data_epoch_permutation(seed, int(data_epoch), dataset_len)[positions[mask] % dataset_len]
    return out


def micro_batches_of(rank: int, world_size: int, num_micro_batches: int) -> range:
    """The micro-batch indices ``rank`` computes: a contiguous run, sizes differ by at most one."""
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} outside world of {world_size}")
    return range(rank * num_micro_batches // world_size, (rank + 1) * num_micro_batches // world_size)


def rows_per_rank(world_size: int, num_micro_batches: int) -> int:
    """Rows each rank sends in the gather (the largest share; shorter shares are padded)."""
    return -(-num_micro_batches // world_size)

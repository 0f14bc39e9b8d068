"""Pure parts of elastic training: sharding, bit-exact step math, state hash, formation policy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from workers.elastic import state as state_io
from workers.elastic.membership import Arrival, Restore, form
from workers.elastic.reference import reference_run
from workers.elastic.sharding import micro_batches_of, rows_per_rank, step_sample_ids
from workers.elastic.step_math import EXTRA_COLS, apply_rows, micro_batch_row, num_grad_elements, trainable
from workers.elastic.task import TaskError, TrainTask, resolve
from tests.unit.training_tasks import MLP, mlp_task


@pytest.mark.parametrize("world", [1, 2, 3, 5, 8])
def test_micro_batches_partition_the_step_for_any_world_size(world):
    shares = [micro_batches_of(r, world, 8) for r in range(world)]
    assert sorted(i for s in shares for i in s) == list(range(8))
    assert max(len(s) for s in shares) == rows_per_rank(world, 8)
    assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_every_sample_is_consumed_exactly_once_per_data_epoch():
    n, b = 100, 8  # batches straddle the epoch boundary
    ids = np.concatenate([step_sample_ids(s, b, n, seed=3) for s in range(25)])  # 200 samples = 2 epochs
    assert sorted(ids[:100]) == list(range(100))
    assert sorted(ids[100:]) == list(range(100))
    assert not np.array_equal(ids[:100], ids[100:])  # each epoch reshuffled


def test_sample_order_depends_on_step_and_seed_only():
    a = step_sample_ids(17, 16, 1000, seed=5)
    assert np.array_equal(a, step_sample_ids(17, 16, 1000, seed=5))
    assert not np.array_equal(a, step_sample_ids(17, 16, 1000, seed=6))


def _rows_by_world(task: TrainTask, world: int) -> torch.Tensor:
    """What the gather assembles when ``world`` peers each compute their share (simulated in-process)."""
    torch.manual_seed(task.seed)
    model = resolve(task.model_fn, "m")()
    data = resolve(task.dataset_fn, "d")(task.seed)
    ids = step_sample_ids(0, task.global_batch_size, len(data[0]), task.seed)
    k, m = task.num_micro_batches, task.micro_batch_size
    full = torch.zeros(k, num_grad_elements(model) + EXTRA_COLS)
    for rank in reversed(range(world)):  # order of computation must not matter
        for micro in micro_batches_of(rank, world, k):
            idx = torch.from_numpy(ids[micro * m : (micro + 1) * m])
            micro_batch_row(model, resolve(task.step_fn, "s"), tuple(t[idx] for t in data), task.seed, 0, micro, full[micro])
    return full


def test_combined_gradient_is_bit_identical_for_any_world_size():
    task = mlp_task()
    reference = _rows_by_world(task, 1)
    for world in (2, 3, 8):
        assert torch.equal(_rows_by_world(task, world), reference)


def test_reference_run_is_reproducible_and_loss_decreases():
    task = mlp_task(total_steps=25)
    d1, losses = reference_run(task)
    d2, _ = reference_run(task)
    assert d1 == d2
    assert np.mean(losses[-5:]) < 0.5 * np.mean(losses[:5])


def test_state_transfer_reproduces_the_hash_and_detects_tampering():
    task = mlp_task()
    torch.manual_seed(0)
    src = resolve(task.model_fn, "m")()
    opt = resolve(task.optimizer_fn, "o")(trainable(src))
    rows = torch.randn(task.num_micro_batches, num_grad_elements(src) + EXTRA_COLS)
    apply_rows(src, opt, rows)  # non-empty optimizer state
    blob = state_io.dump(src, opt, 1, 0)
    expected = state_io.digest(src, opt, 1, 0)
    torch.manual_seed(99)
    dst = resolve(task.model_fn, "m")()
    dst_opt = resolve(task.optimizer_fn, "o")(trainable(dst))
    assert state_io.load(blob, dst, dst_opt, expected) == 1
    assert state_io.digest(dst, dst_opt, 1, 0) == expected
    wrong = state_io.StateDigest(1, "0" * 64)
    with pytest.raises(state_io.StateHashMismatch):
        state_io.load(blob, dst, dst_opt, wrong)


def test_blob_digest_equals_the_digest_of_the_state_it_was_dumped_from():
    """A finished job keeps its final state without a model to load it into (its peers are gone):
    hashing the blob alone must give the digest the peers reported, and see any change."""
    task = mlp_task()
    torch.manual_seed(0)
    model = resolve(task.model_fn, "m")()
    opt = resolve(task.optimizer_fn, "o")(trainable(model))
    for _ in range(3):  # non-empty Adam state (step, exp_avg, exp_avg_sq)
        apply_rows(model, opt, torch.randn(task.num_micro_batches, num_grad_elements(model) + EXTRA_COLS))
    blob = state_io.dump(model, opt, 3, 7)
    assert state_io.blob_digest(blob) == state_io.digest(model, opt, 3, 7)
    with torch.no_grad():
        next(model.parameters()).view(-1).view(torch.int32)[0] ^= 1
    assert state_io.blob_digest(state_io.dump(model, opt, 3, 7)) != state_io.blob_digest(blob)
    assert state_io.blob_digest(state_io.dump(model, opt, 3, 7)) == state_io.digest(model, opt, 3, 7)


def test_digest_changes_with_any_single_bit():
    task = mlp_task()
    torch.manual_seed(0)
    model = resolve(task.model_fn, "m")()
    opt = resolve(task.optimizer_fn, "o")(trainable(model))
    before = state_io.digest(model, opt, 0, 0)
    with torch.no_grad():
        w = next(model.parameters())
        w.view(-1).view(torch.int32)[0] ^= 1
    assert state_io.digest(model, opt, 0, 0) != before


def _arr(pid, step, sha, rank, order):
    return Arrival(pid, step, sha, rank, order)


def test_formation_keeps_newest_state_and_transfers_to_laggards_and_joiners():
    arrivals = [_arr("a", 10, "h10", 0, 0), _arr("b", 11, "h11", 1, 1), _arr("new", 0, None, None, 2)]
    f = form(arrivals, set(), min_peers=1, max_peers=4, checkpoint=(5, "c5"))
    assert f.assignments["b"].rank == 0 and f.assignments["b"].restore is Restore.KEEP
    assert f.assignments["a"].restore is Restore.PEER and f.assignments["a"].source_peer == "b"
    assert f.assignments["new"].restore is Restore.PEER and f.assignments["new"].start_step == 11
    assert not f.diverged


def test_formation_restores_checkpoint_only_without_live_state():
    arrivals = [_arr("x", 0, None, None, 0), _arr("y", 0, None, None, 1)]
    f = form(arrivals, set(), 1, 4, checkpoint=(40, "c40"))
    assert {a.restore for a in f.assignments.values()} == {Restore.CHECKPOINT}
    assert all(a.start_step == 40 for a in f.assignments.values())
    f = form(arrivals, set(), 1, 4, checkpoint=None)
    assert {a.restore for a in f.assignments.values()} == {Restore.INIT}


def test_formation_waits_below_min_peers_and_releases_on_request():
    arrivals = [_arr("a", 3, "h", 0, 0), _arr("b", 3, "h", 1, 1)]
    f = form(arrivals, {"b"}, min_peers=2, max_peers=4, checkpoint=None)
    assert f.released == ["b"] and f.world_size == 0
    f = form(arrivals, {"b"}, min_peers=1, max_peers=4, checkpoint=None)
    assert f.released == ["b"] and list(f.assignments) == ["a"]


def test_formation_caps_at_max_peers_and_flags_divergence():
    arrivals = [_arr("a", 3, "h", 0, 0), _arr("b", 3, "other", 1, 1), _arr("c", 0, None, None, 2)]
    f = form(arrivals, set(), 1, 2, None)
    assert f.world_size == 2 and f.standby == ["c"]
    assert f.diverged == ["b"]


@pytest.mark.parametrize(
    "override, message",
    [
        (dict(step_fn=f"{MLP}:no_such_function"), "has no attribute"),
        (dict(step_fn="no_such_module:f"), "cannot import module"),
        (dict(step_fn="missing_colon"), "expected 'module:function'"),
        (dict(min_peers=3, max_peers=2), "must not exceed max_peers"),
        (dict(global_batch_size=30), "multiple of micro_batch_size"),
        (dict(max_peers=9), "exceeds the micro-batches per step"),
    ],
)
def test_bad_task_fails_with_named_error(override, message):
    with pytest.raises(TaskError, match=message):
        mlp_task(**override)

"""Checkpoints: atomic (half-written never loaded), verified, asynchronous, pruned."""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path

from workers.elastic import checkpoint as ckpt


def test_half_written_checkpoint_is_never_loaded(tmp_path):
    ckpt.write_atomic(tmp_path, 10, b"state-10", "s10", world_size=2)
    # A writer killed mid-way leaves only a .tmp directory behind.
    (tmp_path / ".tmp-step-0000000020-1-1").mkdir()
    (tmp_path / ".tmp-step-0000000020-1-1" / ckpt.STATE_FILE).write_bytes(b"partial")
    found, blob = ckpt.latest_valid(tmp_path)
    assert found.step == 10 and blob == b"state-10"


def test_corrupt_checkpoint_is_skipped_for_the_previous_one(tmp_path):
    ckpt.write_atomic(tmp_path, 10, b"state-10", "s10", 2)
    newest = ckpt.write_atomic(tmp_path, 20, b"state-20", "s20", 2)
    (newest.path / ckpt.STATE_FILE).write_bytes(b"bit rot")
    found, blob = ckpt.latest_valid(tmp_path)
    assert found.step == 10 and blob == b"state-10"


def test_no_checkpoint_gives_none(tmp_path):
    assert ckpt.latest_valid(tmp_path / "absent") is None


def test_async_writer_does_not_block_the_trainer_and_keeps_the_newest(tmp_path, monkeypatch):
    gate = threading.Event()
    real_write = ckpt.write_atomic

    def slow_write(*args, **kwargs):
        gate.wait(5)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(ckpt, "write_atomic", slow_write)
    writer = ckpt.AsyncCheckpointer(tmp_path, keep=2)
    t0 = time.monotonic()
    for step in (1, 2, 3, 4):
        writer.submit(step, f"s{step}".encode(), f"h{step}", 1)
    assert time.monotonic() - t0 < 0.5  # storage is blocked, training is not
    gate.set()
    assert writer.flush(timeout_s=10)
    steps = [c.step for c in ckpt.list_checkpoints(tmp_path)]
    assert steps[0] == 4 and len(steps) <= 2  # newest written, older pending ones superseded, pruned to keep


def test_checkpoint_is_a_ray_train_checkpoint_directory(tmp_path):
    saved = ckpt.write_atomic(tmp_path, 5, b"x", "h", 1)
    with saved.as_ray_checkpoint().as_directory() as d:
        assert (Path(d) / ckpt.STATE_FILE).read_bytes() == b"x"


def test_find_complete_gives_the_final_checkpoint_only_if_whole_and_holding_that_state(tmp_path):
    """What a finished job's coordinator relies on before it kills the peers that could give the state."""
    ckpt.write_atomic(tmp_path, 10, b"state-10", "s10", 1)
    assert ckpt.find_complete(tmp_path, 20, "s20") is None  # not written (yet)
    (tmp_path / ".tmp-step-0000000020-1-1").mkdir()  # being written, or its writer was killed
    (tmp_path / ".tmp-step-0000000020-1-1" / ckpt.STATE_FILE).write_bytes(b"state-20")
    assert ckpt.find_complete(tmp_path, 20, "s20") is None
    saved = ckpt.write_atomic(tmp_path, 20, b"state-20", "s20", 1)
    assert ckpt.find_complete(tmp_path, 20, "s20") == saved
    assert ckpt.find_complete(tmp_path, 20, "other") is None  # another state at that step
    (saved.path / ckpt.STATE_FILE).write_bytes(b"bit rot!")
    assert ckpt.find_complete(tmp_path, 20, "s20") is None


def test_file_sha256_reads_in_chunks_and_matches_the_manifest(tmp_path):
    blob = bytes(range(256)) * 1000
    saved = ckpt.write_atomic(tmp_path, 1, blob, "h", 1)
    assert ckpt.file_sha256(saved.path / ckpt.STATE_FILE, chunk_bytes=1000) == hashlib.sha256(blob).hexdigest()

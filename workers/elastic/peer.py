"""One training peer (a Ray actor per train node): compute its micro-batches, gather, commit.

Per-step commit protocol: a step is committed on a peer once the gather of every
rank's gradient rows has completed there; the update is then applied identically
everywhere. A failed gather abandons only the in-flight step (at most one step lost):
the peer aborts its process group (``backend.EpochGroup``) and goes back to the
coordinator with its last committed state in memory. The model, optimizer and
gathered rows live on the peer's device (its GPU with NCCL, else the CPU).
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
import time
import traceback
from pathlib import Path

import ray
import torch
from ray.exceptions import GetTimeoutError, RayError
from torch.distributed import TCPStore

from workers.elastic import state as state_io
from workers.elastic.backend import EpochGroup, PeerLost, new_group, peer_device
from workers.elastic.checkpoint import AsyncCheckpointer, SavedCheckpoint
from workers.elastic.membership import Plan, Restore
from workers.elastic.sharding import micro_batches_of, rows_per_rank, step_sample_ids
from workers.elastic.step_math import EXTRA_COLS, REFORM_COL, apply_rows, micro_batch_row, num_grad_elements, trainable
from workers.elastic.task import TrainTask, resolve

log = logging.getLogger(__name__)

FINAL_FLUSH_S = 60.0


class StateDivergence(RuntimeError):
    """Peers of one epoch hold different states at the same step (a determinism bug)."""


class ElasticPeer:
    """Runs in its own process; ``run`` trains until the job ends or the peer is released.

    The actor is threaded: ``ping``, ``request_reform``, ``abort_epoch`` and ``export_state``
    answer while ``run`` is busy, and only read state at a step boundary (under ``_lock``).
    """

    def __init__(self, task: TrainTask, peer_id: str, coordinator: ray.actor.ActorHandle) -> None:
        torch.set_num_threads(task.torch_threads)
        self.task = task
        self.peer_id = peer_id
        self.coordinator = coordinator
        self.node_ip = ray.util.get_node_ip_address()
        self.device = peer_device(task.backend, ray.get_gpu_ids(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        self.step_fn = resolve(task.step_fn, "step_fn")
        self.data = tuple(resolve(task.dataset_fn, "dataset_fn")(task.seed))
        if not self.data or len({len(t) for t in self.data}) != 1:
            raise ValueError("dataset_fn must return tensors with one common first dimension")
        self._build_initial()
        self.has_state = False
        self.prev_rank: int | None = None
        self.epoch = 0
        self._reform = threading.Event()
        self._lock = threading.Lock()
        self._group: EpochGroup | None = None
        self._store: TCPStore | None = None
        self._store_addr: tuple[str, int] | None = None
        self._export_cache: tuple[int, bytes] | None = None
        self._checkpointer = (
            AsyncCheckpointer(job_checkpoint_dir(task), task.keep_checkpoints) if task.checkpoint_dir else None
        )

    def _build_initial(self) -> None:
        torch.manual_seed(self.task.seed)
        # Built on the CPU from the seeded CPU RNG, then moved: the same start on any device.
        self.model = resolve(self.task.model_fn, "model_fn")().to(self.device)
        self.optimizer = resolve(self.task.optimizer_fn, "optimizer_fn")(trainable(self.model))
        self.step = 0

    # --- called concurrently with run() -------------------------------------------------
    def ping(self) -> str:
        return self.peer_id

    def request_reform(self) -> None:
        """Stop at the next step boundary (the flag travels in the gather so all stop together)."""
        self._reform.set()

    def abort_epoch(self, epoch: int) -> None:
        """Abort ``epoch``'s communicator: the coordinator learned that a member is gone.

        Called for NCCL jobs only, whose collectives hang on a lost peer; the abort makes
        ``run``'s blocked collective fail now rather than at ``collective_timeout_s``.
        A no-op once the peer has moved on to another epoch.
        """
        group = self._group
        if group is not None and group.epoch == epoch:
            group.abort()

    def export_state(self, step: int) -> bytes:
        """The serialized state at committed ``step`` (for a joiner)."""
        with self._lock:
            if self.step != step:
                raise PeerLost(f"{self.peer_id} is at step {self.step}, not {step}")
            if self._export_cache is None or self._export_cache[0] != step:
                self._export_cache = (step, state_io.dump(self.model, self.optimizer, self.step, self.task.seed))
            return self._export_cache[1]

    def digest(self) -> state_io.StateDigest:
        with self._lock:
            return state_io.digest(self.model, self.optimizer, self.step, self.task.seed)

    # --- the training loop --------------------------------------------------------------
    def run(self) -> state_io.StateDigest | None:
        """Train until the job's last step (returns the final digest) or a release (returns None)."""
        reason = "start"
        while True:
            self._drop_group()
            current = self.digest() if self.has_state else None
            self._reform.clear()
            plan: Plan = ray.get(
                self.coordinator.join_epoch.remote(
                    self.peer_id, self.step, current.sha256 if current else None, self.prev_rank, reason
                )
            )
            if plan.stop:
                return None
            try:
                self._enter(plan)
                finished = self._train(plan)
            except PeerLost as exc:
                log.warning("%s: epoch %d abandoned at step %d: %s", self.peer_id, plan.epoch, self.step, exc)
                reason = "failure"
                continue
            except Exception:
                self._drop_group()
                ray.get(self.coordinator.peer_failed.remote(self.peer_id, traceback.format_exc()))
                raise
            if finished:
                if self._checkpointer is not None and not self._checkpointer.flush(timeout_s=FINAL_FLUSH_S):
                    log.warning("%s: final checkpoint still being written after %.0f s", self.peer_id, FINAL_FLUSH_S)
                final = self.digest()
                ray.get(self.coordinator.peer_finished.remote(self.peer_id, final))
                return final
            reason = "reform"

    def _enter(self, plan: Plan) -> None:
        """Take the epoch's starting state, form the group, and prove all states equal."""
        expected = state_io.StateDigest(plan.start_step, plan.expected_sha256) if plan.expected_sha256 else None
        if plan.restore is Restore.PEER:
            try:
                blob = ray.get(plan.source.export_state.remote(plan.start_step), timeout=self.task.collective_timeout_s)
            except (RayError, GetTimeoutError) as exc:
                raise PeerLost(f"state transfer from the source failed: {exc}") from exc
            with self._lock:
                self.step = state_io.load(blob, self.model, self.optimizer, expected)
        elif plan.restore is Restore.CHECKPOINT:
            blob = SavedCheckpoint(plan.start_step, Path(plan.checkpoint_path), plan.expected_sha256).read()
            with self._lock:
                self.step = state_io.load(blob, self.model, self.optimizer, expected)
        elif plan.restore is Restore.INIT:
            with self._lock:
                self._build_initial()
        elif self.step != plan.start_step:
            raise StateDivergence(f"{self.peer_id} told to keep step {plan.start_step} but holds step {self.step}")
        self.has_state = True
        self.prev_rank = plan.rank
        self.epoch = plan.epoch
        self._group = self._make_group(plan)
        mine = self.digest()
        send = torch.tensor([[mine.step, mine.short]], dtype=torch.int64, device=self.device)
        recv = [torch.empty_like(send) for _ in range(plan.world_size)]
        self._group.allgather(recv, send)
        if any(not torch.equal(r, send) for r in recv):
            raise StateDivergence(
                f"epoch {plan.epoch}: peers' (step, hash) differ: {[tuple(r[0].tolist()) for r in recv]}"
            )

    def _make_group(self, plan: Plan) -> EpochGroup:
        if self._store_addr != (plan.store_host, plan.store_port):
            self._store = TCPStore(
                plan.store_host,
                plan.store_port,
                is_master=False,
                timeout=datetime.timedelta(seconds=self.task.collective_timeout_s),
            )
            self._store_addr = (plan.store_host, plan.store_port)
        return new_group(
            self.task.backend,
            self._store,
            plan.epoch,
            plan.rank,
            plan.world_size,
            self.task.collective_timeout_s,
            self.node_ip,
        )

    def _drop_group(self) -> None:
        # Aborting closes gloo's sockets / NCCL's communicator, so peers blocked on us fail now.
        if self._group is not None:
            self._group.abort()
            self._group = None

    def _train(self, plan: Plan) -> bool:
        """Run committed steps; True at the job's last step, False when a reform was requested."""
        task = self.task
        k, m = task.num_micro_batches, task.micro_batch_size
        mine = micro_batches_of(plan.rank, plan.world_size, k)
        shares = [micro_batches_of(r, plan.world_size, k) for r in range(plan.world_size)]
        rows = rows_per_rank(plan.world_size, k)
        p = num_grad_elements(self.model)
        send = torch.zeros(rows, p + EXTRA_COLS, device=self.device)
        recv = [torch.empty_like(send) for _ in range(plan.world_size)]
        full = torch.empty(k, p + EXTRA_COLS, device=self.device)
        n = len(self.data[0])
        while self.step < task.total_steps:
            ids = step_sample_ids(self.step, task.global_batch_size, n, task.seed)
            send.zero_()
            for j, micro in enumerate(mine):
                idx = torch.from_numpy(ids[micro * m : (micro + 1) * m])
                batch = tuple(t[idx].to(self.device) for t in self.data)
                micro_batch_row(self.model, self.step_fn, batch, task.seed, self.step, micro, send[j])
            send[0, p + REFORM_COL] = 1.0 if self._reform.is_set() else 0.0
            self._group.allgather(recv, send)
            for r, share in enumerate(shares):
                full[share.start : share.stop] = recv[r][: len(share)]
            reform = any(bool(recv[r][0, p + REFORM_COL] > 0) for r in range(plan.world_size))
            with self._lock:
                loss = apply_rows(self.model, self.optimizer, full)
                self.step += 1
            if plan.rank == 0:
                self._after_commit(plan, loss)
            if task.step_delay_s:
                time.sleep(task.step_delay_s)
            if reform:
                return False
        return True

    def _after_commit(self, plan: Plan, loss: float) -> None:
        self.coordinator.report_commit.remote(plan.epoch, self.step, loss, time.time(), plan.world_size)
        last = self.step == self.task.total_steps
        if self._checkpointer is not None and (last or self.step % self.task.checkpoint_every_steps == 0):
            with self._lock:
                blob = state_io.dump(self.model, self.optimizer, self.step, self.task.seed)
                sha = state_io.digest(self.model, self.optimizer, self.step, self.task.seed).sha256
            self._checkpointer.submit(self.step, blob, sha, plan.world_size)


def job_checkpoint_dir(task: TrainTask) -> Path:
    """Where a job's checkpoints live: one folder per job under ``checkpoint_dir``."""
    if task.checkpoint_dir is None:
        raise ValueError(f"job {task.job_id} has no checkpoint_dir")
    return Path(task.checkpoint_dir) / task.job_id

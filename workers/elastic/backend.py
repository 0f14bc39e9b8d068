"""The collective backend of a job: gloo on CPU, NCCL on GPU, and how a broken epoch is torn down.

Each membership epoch gets a fresh process group (:class:`EpochGroup`). A collective
that fails or times out aborts it, so the peer can re-form without the lost member.
The two backends fail differently: a lost gloo peer closes its sockets and the others'
collectives fail at once; a lost NCCL peer makes the others' collectives hang, so
every wait is bounded and the coordinator aborts the survivors' communicators as soon
as it learns of the loss (``ElasticPeer.abort_epoch``).
"""

from __future__ import annotations

import datetime
import threading
from enum import Enum
from typing import Sequence

import torch
from torch.distributed import PrefixStore, ProcessGroupGloo, Store


class PeerLost(RuntimeError):
    """A collective or a state transfer failed because another peer went away (recoverable)."""


class Backend(str, Enum):
    GLOO = "gloo"  # CPU tensors, no GPU reserved
    NCCL = "nccl"  # one GPU per peer, CUDA tensors

    @property
    def gpus_per_peer(self) -> int:
        return 1 if self is Backend.NCCL else 0


def nccl_available() -> bool:
    """Whether this torch build can run NCCL (a CPU-only wheel cannot)."""
    return torch.distributed.is_nccl_available()


def nccl_peer_env(collective_timeout_s: float) -> dict[str, str]:
    """Environment of an NCCL peer process; torch reads it when the first NCCL group is made.

    - ``TORCH_NCCL_ASYNC_ERROR_HANDLING=0``: the peer handles a failed collective itself
      (raise, abort, re-form). The default (3) makes the watchdog kill the process on a
      collective timeout: the survivor of a peer loss would die with it.
    - ``TORCH_NCCL_NONBLOCKING_TIMEOUT``: how long torch polls a non-blocking
      communicator (see :func:`new_group`) while it connects; torch's default is 30 min.
    """
    return {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "0",
        "TORCH_NCCL_NONBLOCKING_TIMEOUT": str(int(max(1.0, collective_timeout_s))),
    }


def peer_device(backend: Backend, gpu_ids: Sequence[int | str], cuda_visible_devices: str | None) -> torch.device:
    """The device a peer trains on: the CPU for gloo, the one GPU Ray assigned for NCCL.

    ``gpu_ids`` is ``ray.get_gpu_ids()``; CUDA numbers devices by their position in
    ``CUDA_VISIBLE_DEVICES``, which Ray narrows to the assigned GPU (so it is ``cuda:0``).

    Raises:
        RuntimeError: an NCCL peer without exactly one assigned GPU (bad resource request).
    """
    if backend is Backend.GLOO:
        return torch.device("cpu")
    if len(gpu_ids) != 1:
        raise RuntimeError(f"an nccl peer needs exactly one GPU from Ray, got {list(gpu_ids)}")
    gpu = str(gpu_ids[0])
    index = int(gpu) if cuda_visible_devices is None else cuda_visible_devices.split(",").index(gpu)
    return torch.device("cuda", index)


class EpochGroup:
    """One membership epoch's process group; a collective that fails or times out aborts it."""

    def __init__(self, backend: Backend, epoch: int, pg: object, timeout_s: float) -> None:
        self.backend = backend
        self.epoch = epoch
        self._pg = pg
        self._timeout = datetime.timedelta(seconds=timeout_s)
        self._lock = threading.Lock()

    @property
    def aborted(self) -> bool:
        return self._pg is None

    def allgather(self, recv: list[torch.Tensor], send: torch.Tensor) -> None:
        """Gather every rank's ``send`` into ``recv`` (rank order), waiting at most the collective timeout.

        ``Work.wait(timeout)`` blocks the CPU until the collective completes on the device
        too (torch 2.13), so an NCCL hang surfaces here, not later in a CUDA sync.

        Raises:
            PeerLost: the collective failed, timed out, or the group was aborted; the group
                is aborted before this is raised.
        """
        pg = self._pg
        if pg is None:
            raise PeerLost(f"epoch {self.epoch} was aborted")
        try:
            pg.allgather([recv], [send]).wait(self._timeout)
        except RuntimeError as exc:  # gloo: connection closed / timed out; NCCL: timed out / aborted
            self.abort()
            raise PeerLost(str(exc).splitlines()[0][:300]) from exc

    def abort(self) -> None:
        """Tear the group down; idempotent.

        NCCL: ``abort()`` (ncclCommAbort) fails every collective blocked in the group, from
        any thread; a communicator with a hung collective cannot be destroyed cleanly.
        Gloo: dropping the group closes its sockets, so the other peers' collectives fail
        now instead of at their timeout. Only the thread that runs the collectives may do
        this: torch 2.13's ``ProcessGroupGloo.abort()`` neither fails an op in flight nor
        closes the sockets, and destroying a gloo group waits for its op (both measured).
        """
        with self._lock:
            pg, self._pg = self._pg, None
        if pg is not None and self.backend is Backend.NCCL:
            pg.abort()


def new_group(
    backend: Backend, store: Store, epoch: int, rank: int, world_size: int, timeout_s: float, host: str
) -> EpochGroup:
    """Form epoch ``epoch``'s group on ``store`` under the key prefix ``epoch-<n>/`` (never reused).

    Raises:
        PeerLost: the rendezvous failed (a member is gone).
    """
    prefixed = PrefixStore(f"epoch-{epoch}/", store)
    timeout = datetime.timedelta(seconds=timeout_s)
    try:
        if backend is Backend.NCCL:
            from torch.distributed import ProcessGroupNCCL  # exists in CUDA builds only

            options = ProcessGroupNCCL.Options()
            options._timeout = timeout
            # A non-blocking communicator can be aborted from another thread while it connects
            # or runs a collective (torchft's ProcessGroupNCCL does the same).
            options.config.blocking = False
            pg = ProcessGroupNCCL(prefixed, rank, world_size, options)
        else:
            options = ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [ProcessGroupGloo.create_device(hostname=host)]  # this node's IP, not a guess
            pg = ProcessGroupGloo(prefixed, rank, world_size, options)
    except RuntimeError as exc:
        raise PeerLost(f"forming epoch {epoch} failed: {exc}") from exc
    return EpochGroup(backend, epoch, pg, timeout_s)

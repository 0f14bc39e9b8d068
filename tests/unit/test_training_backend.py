"""The collective backend: device choice, peer resource requests, and the abort path of a broken epoch.

Gloo groups are real (two ranks on threads over loopback TCP). NCCL cannot run on this
CPU-only torch build, so its one test uses a thin stand-in for ``ProcessGroupNCCL``.
"""

from __future__ import annotations

import datetime
import threading
import time

import pytest
import torch
from torch.distributed import TCPStore

from workers.elastic import state as state_io
from workers.elastic.backend import Backend, EpochGroup, PeerLost, new_group, peer_device
from workers.elastic.coordinator import NODE_ID_LABEL, PeerRecord, eligible_nodes, overdue_peers, peer_options
from workers.elastic.mlp import build_model, build_optimizer
from workers.elastic.step_math import EXTRA_COLS, apply_rows, num_grad_elements, trainable
from tests.unit.training_tasks import mlp_task


def test_gloo_peers_train_on_the_cpu_and_nccl_peers_on_the_gpu_ray_assigned():
    assert peer_device(Backend.GLOO, [], None) == torch.device("cpu")
    assert peer_device(Backend.NCCL, [3], "3") == torch.device("cuda", 0)  # Ray narrowed CUDA_VISIBLE_DEVICES
    assert peer_device(Backend.NCCL, ["3"], "1,3") == torch.device("cuda", 1)
    assert peer_device(Backend.NCCL, [3], None) == torch.device("cuda", 3)
    for wrong in ([], [0, 1]):
        with pytest.raises(RuntimeError, match="exactly one GPU"):
            peer_device(Backend.NCCL, wrong, "0,1")


def test_nccl_peers_request_one_gpu_and_an_environment_that_keeps_survivors_alive():
    gloo = peer_options(mlp_task(), "node-a", offered=False)
    assert gloo["num_gpus"] == 0 and "runtime_env" not in gloo
    assert gloo["label_selector"] == {"pool": "train", NODE_ID_LABEL: "node-a"}
    nccl = peer_options(mlp_task(backend=Backend.NCCL, collective_timeout_s=7.5), "node-b", offered=True)
    assert nccl["num_gpus"] == 1 and nccl["num_cpus"] == 1.0
    assert nccl["label_selector"] == {NODE_ID_LABEL: "node-b"}  # an offered node is pinned by id alone
    env = nccl["runtime_env"]["env_vars"]
    assert env["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "0"  # the watchdog must not kill a survivor
    assert env["TORCH_NCCL_NONBLOCKING_TIMEOUT"] == "7"


def _node(node_id: str, pool: str, gpus: float, alive: bool = True) -> dict:
    resources = {"CPU": 1.0, **({"GPU": gpus} if gpus else {})}
    return {"NodeID": node_id, "Alive": alive, "Labels": {"pool": pool}, "Resources": resources}


def test_nccl_peers_go_only_to_nodes_with_a_gpu():
    nodes = [
        _node("cpu", "train", 0),
        _node("gpu", "train", 1),
        _node("dead-gpu", "train", 1, alive=False),
        _node("decode-gpu", "decode", 1),
        _node("decode-cpu", "decode", 0),
    ]
    offered = {"decode-gpu", "decode-cpu"}
    assert eligible_nodes(nodes, mlp_task(), set()) == {"cpu", "gpu"}
    assert eligible_nodes(nodes, mlp_task(), offered) == {"cpu", "gpu", "decode-gpu", "decode-cpu"}
    assert eligible_nodes(nodes, mlp_task(backend=Backend.NCCL), offered) == {"gpu", "decode-gpu"}


def _gloo_world(timeout_s: float, size: int = 2) -> list[EpochGroup]:
    """``size`` real gloo ranks of epoch 1 on loopback, each with its own store client (formed on threads)."""
    master = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30))
    groups: dict[int, EpochGroup] = {}

    def form(rank: int) -> None:
        client = TCPStore("127.0.0.1", master.port, is_master=False, timeout=datetime.timedelta(seconds=30))
        groups[rank] = new_group(Backend.GLOO, client, 1, rank, size, timeout_s, "127.0.0.1")

    threads = [threading.Thread(target=form, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(groups) == list(range(size)), "the gloo world did not form"
    return [groups[r] for r in range(size)]


def _gather_on_thread(group: EpochGroup, rank: int) -> dict:
    """Start rank ``rank``'s all-gather on a thread; the dict gets its outcome and duration."""
    out: dict = {}
    send = torch.full((1, 3), float(rank))
    recv = [torch.empty_like(send) for _ in range(2)]

    def run() -> None:
        t0 = time.monotonic()
        try:
            group.allgather(recv, send)
            out["result"] = [r[0, 0].item() for r in recv]
        except PeerLost as exc:
            out["error"] = exc
        out["elapsed_s"] = time.monotonic() - t0

    out["thread"] = threading.Thread(target=run)
    out["thread"].start()
    return out


def test_gloo_peer_that_aborts_fails_the_survivors_gather_at_once_and_it_aborts_too():
    timeout_s = 30.0
    survivor, leaving = _gloo_world(timeout_s)
    ok = [_gather_on_thread(g, r) for r, g in ((0, survivor), (1, leaving))]
    for o in ok:
        o["thread"].join(60)
    assert [o.get("result") for o in ok] == [[0.0, 1.0], [0.0, 1.0]]  # the world works
    blocked = _gather_on_thread(survivor, 0)
    time.sleep(0.3)  # the survivor is blocked in its gather when the other peer gives up on the epoch
    leaving.abort()
    blocked["thread"].join(timeout_s + 10)
    assert isinstance(blocked.get("error"), PeerLost)
    assert blocked["elapsed_s"] < timeout_s / 3, "the survivor waited for its timeout instead of failing at once"
    assert survivor.aborted and leaving.aborted
    t0 = time.monotonic()
    with pytest.raises(PeerLost, match="epoch 1 was aborted"):
        survivor.allgather([torch.empty(1, 3)] * 2, torch.zeros(1, 3))
    assert time.monotonic() - t0 < 0.1  # an aborted group never touches the network again


def test_gloo_gather_with_a_hung_peer_fails_at_the_collective_timeout_and_aborts():
    timeout_s = 3.0
    survivor, hung = _gloo_world(timeout_s)  # ``hung`` stays alive but never joins the gather
    blocked = _gather_on_thread(survivor, 0)
    blocked["thread"].join(timeout_s + 30)
    assert isinstance(blocked.get("error"), PeerLost)
    assert timeout_s * 0.9 <= blocked["elapsed_s"] < timeout_s + 10
    assert survivor.aborted
    hung.abort()


class _FakeNcclProcessGroup:
    """Stands in for ``ProcessGroupNCCL``, which this CPU-only torch build lacks.

    Models what a lost peer does to NCCL: the collective never fails on its own, it
    hangs until ``abort()`` (ncclCommAbort) fails it from another thread.
    """

    def __init__(self) -> None:
        self.aborted = threading.Event()
        self.abort_calls = 0

    def allgather(self, recv, send):
        return self

    def wait(self, timeout: datetime.timedelta) -> bool:
        if self.aborted.wait(timeout.total_seconds()):
            raise RuntimeError("NCCL communicator was aborted")
        raise RuntimeError("NCCL collective timed out")

    def abort(self) -> None:
        self.abort_calls += 1
        self.aborted.set()


def test_nccl_gather_blocked_on_a_lost_peer_ends_when_the_coordinator_aborts_the_epoch():
    pg = _FakeNcclProcessGroup()
    group = EpochGroup(Backend.NCCL, epoch=4, pg=pg, timeout_s=30.0)
    blocked = _gather_on_thread(group, 0)
    time.sleep(0.2)
    group.abort()  # what ElasticPeer.abort_epoch does on the coordinator's word
    blocked["thread"].join(10)
    assert isinstance(blocked.get("error"), PeerLost) and blocked["elapsed_s"] < 10
    assert pg.abort_calls == 1, "the communicator is aborted exactly once (the failed gather does not abort again)"


def test_state_hash_and_blob_are_made_from_cpu_copies(monkeypatch):
    torch.manual_seed(0)
    model = build_model()
    opt = build_optimizer(trainable(model))
    apply_rows(model, opt, torch.randn(2, num_grad_elements(model) + EXTRA_COLS))  # optimizer state too
    tensors = len(model.state_dict()) + sum(len(s) for s in opt.state_dict()["state"].values())
    moved = []
    real_cpu = torch.Tensor.cpu

    def spy(t, *args, **kwargs):
        moved.append(t.shape)
        return real_cpu(t, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", spy)
    state_io.digest(model, opt, 1, 0)
    assert len(moved) == tensors, "every tensor is hashed from a CPU copy"
    moved.clear()
    state_io.dump(model, opt, 1, 0)
    assert len(moved) == tensors, "every tensor is serialized from a CPU copy"


def test_overdue_peers_are_those_that_never_reached_a_boundary_within_the_timeout():
    peers = {
        "late": PeerRecord(handle=None, node_id="a", spawned_at=100.0),
        "young": PeerRecord(handle=None, node_id="b", spawned_at=150.0),
        "started": PeerRecord(handle=None, node_id="c", spawned_at=0.0, arrived=True),
    }
    assert overdue_peers(peers, now=161.0, timeout_s=60.0) == ["late"]
    assert overdue_peers(peers, now=160.0, timeout_s=60.0) == []  # exactly at the timeout: not yet
    assert overdue_peers(peers, now=1000.0, timeout_s=60.0) == ["late", "young"]


def test_members_ending_with_different_states_fail_the_job_instead_of_keeping_either():
    import asyncio

    from workers.elastic.coordinator import ElasticCoordinator
    from workers.elastic.state import StateDigest

    async def end(digests: dict[str, str]) -> ElasticCoordinator:
        coordinator = ElasticCoordinator(mlp_task(job_id="diverged", checkpoint_dir=None))
        coordinator._wake = asyncio.Event()
        coordinator.members = list(digests)
        coordinator.phase = "finished"
        for peer, sha in digests.items():
            coordinator.peer_finished(peer, StateDigest(6, sha))
        await coordinator._secure_final_state()
        return coordinator

    diverged = asyncio.run(end({"p0": "a" * 64, "p1": "b" * 64}))
    assert diverged.phase == "failed" and "different states" in diverged.error
    assert "aaaaaaaaaaaa" in diverged.error and "bbbbbbbbbbbb" in diverged.error
    assert diverged.peers_released and diverged.final_state_source is None
    with pytest.raises(RuntimeError, match="different states"):
        asyncio.run(diverged.final_state())
    # Agreeing members (no peer alive to copy from, no checkpoint dir): finished, the state lost, said so.
    agreed = asyncio.run(end({"p0": "a" * 64, "p1": "a" * 64}))
    assert agreed.phase == "finished" and agreed.final_state_source == "lost"

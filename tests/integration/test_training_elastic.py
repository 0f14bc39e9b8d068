"""Elastic training on a real local multi-node Ray cluster (CPU, gloo): death, join, preemption, churn.

Every finished job is compared bit for bit with ``reference_run`` of the same task:
the determinism contract (docs/training.md) says churn may change who computes a
micro-batch, never which samples a committed step sees or the order they are added.
The NCCL tests at the end run only where CUDA GPUs exist.
"""

from __future__ import annotations

import io
import os
import random
import time

import numpy as np
import pytest
import torch

from orchestrator.config import Pool, load_config
from orchestrator.training.spec import parse_job_spec
from workers.elastic import state as state_io
from workers.elastic.reference import reference_run
from workers.elastic.step_math import trainable
from workers.elastic.task import resolve

JOB = dict(
    model="workers.elastic.mlp:build_model",
    optimizer="workers.elastic.mlp:build_optimizer",
    data="workers.elastic.mlp:build_dataset",
    step="workers.elastic.mlp:mse_step",
    global_batch_size=64,
    micro_batch_size=8,
    max_peers=2,
)


class Harness:
    def __init__(self, cluster, manager, config):
        self.cluster, self.manager, self.config = cluster, manager, config
        self._n = 0
        self.live_jobs: set[str] = set()

    def ensure_train_nodes(self, n: int) -> None:
        while len(self.cluster.nodes(Pool.TRAIN)) < n:
            self.cluster.add_node(Pool.TRAIN)
        while len(self.cluster.nodes(Pool.TRAIN)) > n:
            self.cluster.remove_node(self.cluster.nodes(Pool.TRAIN)[-1])

    def node(self, node_id: str):
        return next(n for n in self.cluster.nodes(Pool.TRAIN) if n.node_id == node_id)

    def settle(self, timeout_s: float = 90.0) -> None:
        """Wait until the GCS has noticed every node we removed (it takes a few health checks).

        Until then Ray may still pick a removed node to forward a new actor's lease to,
        and the actor dies with it before it runs.
        """
        import ray

        ours = {n.node_id for pool in Pool for n in self.cluster.nodes(pool)}
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Labels"].get("pool") != "head"}
            if alive <= ours:
                return
            time.sleep(0.5)
        raise AssertionError(f"removed nodes still alive in the GCS after {timeout_s} s")

    def submit(self, **overrides):
        self.settle()
        self._n += 1
        spec = parse_job_spec({**JOB, "name": f"it-{self._n}-{int(time.time()) % 100000}", **overrides})
        job_id = self.manager.submit(spec)
        self.live_jobs.add(job_id)
        return spec, job_id

    def stop(self, job_id: str) -> None:
        self.manager.stop(job_id)
        self.live_jobs.discard(job_id)

    def wait_for(self, job_id, predicate, timeout_s: float, what: str, manager=None) -> dict:
        manager = manager or self.manager
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = manager.status(job_id)
            assert status["phase"] != "failed", status["error"]
            if predicate(status):
                return status
            # A finished job changes no more: say so now rather than time out.
            assert status["phase"] != "finished", f"the job finished before {what}: {_brief(status)}"
            time.sleep(0.2)
        raise AssertionError(f"timed out waiting for {what}: {_brief(manager.status(job_id))}")

    def busy_nodes(self) -> dict[str, dict]:
        """Our alive nodes whose CPUs or GPUs are not all free: node id -> (available, total)."""
        from ray._private import state

        ours = {n.node_id for pool in Pool for n in self.cluster.nodes(pool)}
        total, available = state.total_resources_per_node(), state.available_resources_per_node()
        busy = {}
        for node_id in ours & set(total):
            free = available.get(node_id, {})
            held = {
                r: (free.get(r, 0.0), total[node_id][r])
                for r in ("CPU", "GPU")
                if free.get(r, 0.0) < total[node_id].get(r, 0.0)
            }
            if held:
                busy[node_id] = held
        return busy

    def assert_nodes_free(self, timeout_s: float = 30.0) -> None:
        """Every CPU and GPU of our nodes is free again (a stopped job's actors are gone).

        Whatever still holds one would make the next test's peers wait for it forever.
        """
        deadline = time.monotonic() + timeout_s
        while (busy := self.busy_nodes()) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert not busy, f"resources still held {timeout_s} s after every job stopped (available, total): {busy}"

    def reference_task(self, spec):
        """The job as ``reference_run`` takes it (one process, no collectives: the backend does not matter)."""
        return spec.model_copy(update={"backend": "gloo"}).to_task(self.config.training, node_gpus=[])

    def finish(self, spec, job_id, timeout_s: float = 240.0, device: str = "cpu") -> dict:
        status = self.manager.wait(job_id, timeout_s=timeout_s)
        reference, _ = reference_run(self.reference_task(spec), device=device)
        digests = {sha for _, sha in status["final_digests"].values()}
        assert status["last_commit_step"] == spec.steps
        assert digests == {reference.sha256}, "final state differs from the reference run"
        self.stop(job_id)
        return status


@pytest.fixture(scope="module")
def harness(tmp_path_factory):
    import ray

    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.training.manager import TrainingJobManager

    config = load_config()
    for pool in (Pool.PREFILL, Pool.DECODE):
        config.cluster.pools[pool].nodes = 0
    config.cluster.pools[Pool.TRAIN].nodes = 2
    config.cluster.pools[Pool.TRAIN].num_cpus_per_node = 1  # one peer per node
    config.training.checkpoint_dir = str(tmp_path_factory.mktemp("checkpoints"))
    previous = ray.get_runtime_context().gcs_address if ray.is_initialized() else None
    if previous:
        ray.shutdown()  # another module's cluster; reconnected below
    cluster = LocalCluster(config.cluster).start()
    try:
        connect(cluster.address)
        yield Harness(cluster, TrainingJobManager(config.training), config)
    finally:
        cluster.shutdown()
        if previous:
            connect(previous)


@pytest.fixture(autouse=True)
def stop_left_jobs(harness):
    """Stop what a test left running when it failed before ``finish``: its job (coordinator and
    peers) would otherwise live on beside the tests after it, on the same few cores, and its peers
    would hold the train nodes' CPUs, so that every later job's peers wait for them for ever (a CI
    run once failed the joiner test and all seven after it so). Then check that the nodes are free."""
    yield
    errors = []
    for job_id in list(harness.live_jobs):
        try:
            harness.stop(job_id)
        except Exception as exc:  # stop the others all the same
            errors.append(f"{job_id}: {exc!r}")
    assert not errors, f"could not stop jobs: {errors}"
    harness.assert_nodes_free()


def _brief(status: dict) -> dict:
    """The parts of a status that explain a wait (no per-step lists)."""
    keys = ("phase", "error", "epoch", "world_size", "members", "pending_peers", "last_commit_step", "total_steps")
    return {k: status.get(k) for k in keys}


def _commits_before(status: dict, t: float) -> int:
    return max((step for step, when, _, _ in status["commits"] if when <= t), default=0)


def test_peer_node_death_survivors_continue_without_restart_losing_at_most_one_step(harness):
    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=220)
    status = harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 40, 120, "2 peers")
    assert status["backend"] == "gloo", "'auto' on a pool without GPUs"
    ranks = list(status["members"])
    victim, survivor = ranks[0], ranks[1]  # rank 0 writes checkpoints and reports commits: the harder case
    t_kill = time.time()
    harness.cluster.kill_node(harness.node(status["members"][victim]))
    after = harness.wait_for(job, lambda s: s["recoveries"] >= 1 and s["world_size"] == 1, 60, "recovery")
    assert list(after["members"]) == [survivor], "the survivor must go on as the same actor (no restart)"
    recovery = next(r for r in after["reformations"] if r["reason"] == "failure")
    assert recovery["restore"] == "keep", "survivors continue from memory, not from disk or a peer"
    assert recovery["start_step"] >= _commits_before(after, t_kill), "a committed step was rolled back"
    final = harness.finish(spec, job)
    losses = [loss for _, loss in final["losses"]]
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), "loss must keep decreasing"
    assert final["recoveries"] == 1


def test_joining_peer_receives_live_state_with_verified_hash_and_world_grows(harness):
    harness.ensure_train_nodes(1)
    # The joiner must arrive before the job ends: adding a node and starting a peer on it took
    # ~10 s under CPU load (CI), while 260 steps at 0.02 s could end sooner; at 0.1 s they take > 26 s.
    spec, job = harness.submit(steps=260, step_delay_s=0.1)
    harness.wait_for(job, lambda s: s["world_size"] == 1 and s["last_commit_step"] >= 10, 120, "1 peer")
    harness.cluster.add_node(Pool.TRAIN)
    grown = harness.wait_for(job, lambda s: s["world_size"] == 2, 120, "the joiner")
    join = grown["reformations"][-1]
    assert join["restore"] == "peer" and join["start_step"] > 0, "the joiner must copy live state, not restart"
    assert grown["joins"] == 1
    # Every live peer holds the same state, hash for hash, right after the join.
    digests = harness.manager.peer_digests(job)
    assert len(digests) == 2
    final = harness.finish(spec, job)
    assert len(final["final_digests"]) == 2


def _blocker(**selector):
    """An actor that holds one CPU of the node(s) matching ``selector``, as another job's peer would."""
    import ray

    @ray.remote(num_cpus=1, label_selector=selector)
    class Blocker:
        def ping(self) -> bool:
            return True

    blocker = Blocker.remote()
    ray.get(blocker.ping.remote(), timeout=60)
    return blocker


def test_job_whose_peers_are_never_scheduled_fails_with_an_error_naming_the_nodes(harness):
    """A node whose CPU another actor holds: the peer's lease is never granted. The job must not
    sit in 'starting' for ever (how one leaked job once failed every test after it)."""
    import ray

    from orchestrator.training.manager import TrainingJobManager

    harness.ensure_train_nodes(1)
    harness.settle()  # a removed node, not yet noticed, would be the job's second node
    (node,) = harness.cluster.nodes(Pool.TRAIN)
    blocker = _blocker(**{"ray.io/node-id": node.node_id})
    manager = TrainingJobManager(harness.config.training.model_copy(update={"peer_start_timeout_s": 10.0}))
    spec = parse_job_spec({**JOB, "name": f"it-blocked-{int(time.time()) % 100000}", "steps": 20})
    job = manager.submit(spec)
    try:
        t0, pending = time.monotonic(), {}
        deadline = t0 + 10.0 + 15.0  # the start timeout, a few node polls, slack for load
        while (status := manager.status(job))["phase"] != "failed" and time.monotonic() < deadline:
            assert status["phase"] == "starting" and status["world_size"] == 0
            pending.update(status.get("pending_peers", {}))
            time.sleep(0.2)
        waited = time.monotonic() - t0
        assert status["phase"] == "failed", f"still {status['phase']} after {waited:.0f} s: {_brief(status)}"
        assert "no peer started" in status["error"] and node.node_id in status["error"], status["error"]
        assert pending == {f"{spec.name}-peer-0": node.node_id}, "status must show the peer that waits"
        assert status["pending_peers"] == {} and status["peer_start_timeouts"] == 1
    finally:
        manager.stop(job)
        ray.kill(blocker)


def test_peer_starting_after_the_job_finished_does_not_keep_its_node(harness):
    """A joiner slower than the job's last steps (the CI failure: a job of 260 fast steps ended before
    its joiner, started under load, arrived). It must not hold its node after the job ends."""
    import ray

    harness.ensure_train_nodes(2)
    harness.settle()
    first, second = harness.cluster.nodes(Pool.TRAIN)
    blocker = _blocker(**{"ray.io/node-id": second.node_id})  # the second peer's lease waits for this CPU
    try:
        spec, job = harness.submit(steps=30)  # starts on the first node alone after the start grace
        harness.manager.wait(job, timeout_s=120)
    finally:
        ray.kill(blocker)  # the waiting lease can be granted now, if the job still wants it
    deadline = time.monotonic() + 20.0  # a peer starts in ~5-10 s here, under load
    while time.monotonic() < deadline:
        assert not _peer_processes(second), "a peer started on the second node after the job had finished"
        time.sleep(0.5)
    assert second.node_id not in harness.busy_nodes(), "the second node's CPU is still held"
    status = harness.manager.status(job)
    assert status["pending_peers"] == {} and list(status["members"].values()) == [first.node_id]
    harness.finish(spec, job)


def _load_verified(harness, spec, blob: bytes, expected) -> int:
    """Load ``blob`` into a fresh model of the job, checking it hashes to ``expected``; returns its step."""
    task = harness.reference_task(spec)
    torch.manual_seed(task.seed)
    model = resolve(task.model_fn, "model_fn")()
    optimizer = resolve(task.optimizer_fn, "optimizer_fn")(trainable(model))
    return state_io.load(blob, model, optimizer, expected)


@pytest.mark.parametrize("checkpoints_work", [True, False], ids=["final-checkpoint", "checkpoint-writes-fail"])
def test_finished_job_frees_every_node_without_stop_and_keeps_its_final_state(harness, tmp_path, checkpoints_work):
    """The train pool's nodes are lent to serving: a finished job must not hold them until someone calls
    ``stop``. Its status, digests and final state must stay as they were, read without its peers: from the
    final checkpoint, or, when there is none (every write fails: the directory is a file), from the copy
    the coordinator fetched from a finished peer before killing it."""
    from orchestrator.training.manager import TrainingJobManager

    harness.ensure_train_nodes(2)
    harness.settle()
    config = harness.config.training
    if not checkpoints_work:
        (tmp_path / "not-a-dir").write_text("")
        config = config.model_copy(update={"checkpoint_dir": str(tmp_path / "not-a-dir")})
    manager = TrainingJobManager(config)
    name = f"it-free-{int(checkpoints_work)}-{int(time.time()) % 100000}"
    spec = parse_job_spec({**JOB, "name": name, "steps": 120, "step_delay_s": 0.05})
    job = manager.submit(spec)
    try:
        harness.wait_for(job, lambda s: s["world_size"] == 2, 120, "2 peers", manager=manager)
        status = manager.wait(job, timeout_s=240)
        harness.assert_nodes_free()  # no stop: every peer is gone, every CPU free again
        reference, _ = reference_run(harness.reference_task(spec))
        assert status["phase"] == "finished" and status["peers_released"] and status["pending_peers"] == {}
        assert status["final_state_source"] == ("checkpoint" if checkpoints_work else "coordinator")
        assert status["world_size"] == 2 and len(status["members"]) == 2, "the last members stay in the status"
        assert {sha for _, sha in status["final_digests"].values()} == {reference.sha256}
        assert set(status["final_digests"]) == set(status["members"])
        assert manager.peer_digests(job) == status["final_digests"]
        # The final state, after the peers are gone, equals the reference bit for bit.
        assert _load_verified(harness, spec, manager.final_state(job), reference) == spec.steps
        again = manager.status(job)
        for key in ("phase", "world_size", "members", "final_digests", "last_commit_step", "commits", "error"):
            assert again[key] == status[key], key
    finally:
        manager.stop(job)


def test_failed_job_frees_its_members_nodes_at_once(harness):
    """A job that fails (here: a peer's unrecoverable error, as a peer reports it) has nothing to keep:
    its members are killed at once, not left holding their nodes until ``stop``."""
    import ray

    from orchestrator.training.manager import ACTOR_PREFIX, TrainingJobFailed

    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=3000, step_delay_s=0.05)
    harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 5, 120, "2 peers")
    coordinator = ray.get_actor(ACTOR_PREFIX + job, namespace=harness.manager.namespace)
    ray.get(coordinator.peer_failed.remote("test", "an unrecoverable error in user code"))
    status = harness.manager.status(job)
    assert status["phase"] == "failed" and status["peers_released"] and len(status["members"]) == 2
    harness.assert_nodes_free()
    assert harness.manager.status(job)["last_commit_step"] < spec.steps
    with pytest.raises(TrainingJobFailed, match="unrecoverable error in user code"):
        harness.manager.wait(job, timeout_s=10)
    with pytest.raises(RuntimeError, match="failed"):
        harness.manager.final_state(job)
    harness.stop(job)


@pytest.mark.slow
def test_release_gives_nodes_back_at_a_step_boundary_and_reclaim_regrows(harness):
    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=300, step_delay_s=0.02)
    harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 10, 120, "2 peers")
    t0 = time.monotonic()
    released = harness.manager.release_nodes(job, 1, notice_s=10.0)
    assert len(released) == 1 and time.monotonic() - t0 < 10.0
    status = harness.manager.status(job)
    assert status["world_size"] == 1 and status["lent_nodes"] == released
    assert status["recoveries"] == 0, "a release is planned: no failure path"
    assert harness.manager.release_nodes(job, 1, notice_s=1.0) == [], "never below min_peers"
    assert harness.manager.reclaim_nodes(job) == released
    harness.wait_for(job, lambda s: s["world_size"] == 2, 120, "regrowth")
    metrics = harness.manager.metrics_text(job)
    for name in (
        "flowtide_train_steps_per_second",
        "flowtide_train_world_size",
        "flowtide_train_last_commit_step",
        "flowtide_train_recoveries_total",
        "flowtide_train_churn_lost_seconds_total",
        "flowtide_train_releases_total",
    ):
        assert name in metrics
    final = harness.finish(spec, job)
    assert final["releases"] == 1 and final["joins"] >= 1


@pytest.mark.slow
def test_offered_serving_node_hosts_a_peer_and_goes_back_first(harness):
    harness.ensure_train_nodes(1)
    decode = harness.cluster.add_node(Pool.DECODE, num_cpus=1)
    try:
        spec, job = harness.submit(steps=400, step_delay_s=0.02)
        harness.wait_for(job, lambda s: s["world_size"] == 1 and s["last_commit_step"] >= 5, 120, "1 peer")
        harness.manager.offer_nodes(job, [decode.node_id])
        grown = harness.wait_for(job, lambda s: s["world_size"] == 2, 120, "a peer on the lent node")
        assert decode.node_id in grown["members"].values()
        assert harness.manager.release_nodes(job, 1, notice_s=10.0) == [decode.node_id], "lent nodes go back first"
        status = harness.manager.status(job)
        assert status["offered_nodes"] == [] and status["lent_nodes"] == []
        assert decode.node_id not in status["members"].values()
        harness.finish(spec, job)
    finally:
        harness.cluster.remove_node(decode)


@pytest.mark.slow
def test_release_past_its_notice_kills_the_peer_and_the_rest_recover(harness):
    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=14, step_delay_s=1.5)  # a step boundary only every ~1.5 s
    harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 2, 120, "2 peers")
    t0 = time.monotonic()
    released = harness.manager.release_nodes(job, 1, notice_s=0.3)
    assert len(released) == 1 and time.monotonic() - t0 < 5.0, "the notice period bounds the release"
    after = harness.wait_for(job, lambda s: s["recoveries"] == 1 and s["world_size"] == 1, 60, "recovery")
    assert after["lent_nodes"] == released
    harness.manager.reclaim_nodes(job)
    harness.finish(spec, job)


@pytest.mark.slow
def test_random_churn_final_model_equals_reference_bit_for_bit(harness):
    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=600, step_delay_s=0.03, checkpoint_every_steps=25)
    harness.wait_for(job, lambda s: s["world_size"] >= 1 and s["last_commit_step"] >= 10, 120, "start")
    rng = random.Random(7)
    deadline = time.monotonic() + 40.0
    events = []
    while time.monotonic() < deadline and harness.manager.status(job)["phase"] == "running":
        nodes = harness.cluster.nodes(Pool.TRAIN)
        if len(nodes) >= 2 and rng.random() < 0.6:
            harness.cluster.kill_node(rng.choice(nodes))
            events.append("kill")
        elif len(nodes) < 3:
            harness.cluster.add_node(Pool.TRAIN)
            events.append("add")
        time.sleep(rng.uniform(2.0, 5.0))
    harness.ensure_train_nodes(max(1, len(harness.cluster.nodes(Pool.TRAIN))))
    final = harness.finish(spec, job, timeout_s=400)
    assert "kill" in events and "add" in events
    assert final["recoveries"] >= 1


@pytest.mark.slow
def test_all_peers_lost_restarts_from_last_checkpoint_on_fewer_peers(harness):
    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=200, checkpoint_every_steps=20, step_delay_s=0.02)
    harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 70, 120, "progress")
    for node in harness.cluster.nodes(Pool.TRAIN):
        harness.cluster.kill_node(node)
    lost_at = harness.manager.status(job)["last_commit_step"]
    harness.cluster.add_node(Pool.TRAIN)
    restarted = harness.wait_for(
        job, lambda s: any(r["restore"] == "checkpoint" for r in s["reformations"]), 180, "checkpoint restart"
    )
    restart = next(r for r in restarted["reformations"] if r["restore"] == "checkpoint")
    assert restart["world_size"] == 1
    assert restart["start_step"] % 20 == 0 and lost_at - 20 <= restart["start_step"] <= lost_at
    harness.finish(spec, job)


def _peer_processes(node) -> list:
    """The peer worker processes a node's raylet started (Ray titles them ``ray::ElasticPeer...``)."""
    import psutil
    from ray._private import ray_constants

    found = []
    for info in node.all_processes.get(ray_constants.PROCESS_TYPE_RAYLET, []):
        for child in psutil.Process(info.process.pid).children(recursive=True):
            if "ElasticPeer" in " ".join(child.cmdline()):
                found.append(child)
    return found


@pytest.mark.slow
def test_hung_peer_fails_the_gather_at_the_collective_timeout_and_the_survivor_re_forms(harness):
    """A peer that stops without closing its sockets: the CPU analogue of a lost NCCL peer."""
    import psutil

    harness.ensure_train_nodes(2)
    spec, job = harness.submit(steps=120, step_delay_s=0.02)
    status = harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 20, 120, "2 peers")
    survivor, victim = list(status["members"])
    processes = _peer_processes(harness.node(status["members"][victim]))
    assert len(processes) == 1
    timeout_s = harness.config.training.collective_timeout_s
    t_stop = time.time()
    processes[0].suspend()  # SIGSTOP: alive, sockets open, never answers
    try:
        after = harness.wait_for(
            job, lambda s: s["recoveries"] >= 1 and s["world_size"] == 1, timeout_s + 60, "recovery from a hung peer"
        )
    finally:
        try:
            processes[0].resume()
        except psutil.NoSuchProcess:
            pass  # the coordinator killed it, as it should
    assert list(after["members"]) == [survivor]
    recovery = next(r for r in after["reformations"] if r["reason"] == "failure")
    assert recovery["restore"] == "keep" and recovery["start_step"] >= _commits_before(after, t_stop)
    harness.finish(spec, job)


def _cuda_gpus() -> int:
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _add_gpu_train_node(harness, gpu: int):
    """A train node that owns physical GPU ``gpu``.

    Ray takes a node's GPU ids from its raylet's ``CUDA_VISIBLE_DEVICES`` and narrows each
    peer's to the one it assigns; without this, every local node would claim GPU 0.
    """
    pool = harness.cluster.config.pools[Pool.TRAIN]
    saved = os.environ.get("CUDA_VISIBLE_DEVICES"), pool.num_gpus_per_node
    os.environ["CUDA_VISIBLE_DEVICES"], pool.num_gpus_per_node = str(gpu), 1
    try:
        return harness.cluster.add_node(Pool.TRAIN)
    finally:
        pool.num_gpus_per_node = saved[1]
        if saved[0] is None:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = saved[0]


@pytest.mark.skipif(_cuda_gpus() < 1, reason="needs CUDA GPUs")
def test_gpu_pool_job_runs_nccl_on_cuda_and_its_state_verifies_on_the_cpu(harness):
    harness.ensure_train_nodes(0)
    _add_gpu_train_node(harness, 0)
    try:
        spec, job = harness.submit(steps=60, max_peers=1)
        status = harness.manager.wait(job, timeout_s=240)
        assert status["backend"] == "nccl", "'auto' on a pool with GPUs"
        reference, _ = reference_run(harness.reference_task(spec), device="cuda")
        assert {sha for _, sha in status["final_digests"].values()} == {reference.sha256}
        # The GPU peer's state, loaded into a CPU model, hashes the same: hash and transfer are device-agnostic.
        blob = harness.manager.final_state(job)
        task = harness.reference_task(spec)
        torch.manual_seed(task.seed)
        model = resolve(task.model_fn, "model_fn")()
        optimizer = resolve(task.optimizer_fn, "optimizer_fn")(trainable(model))
        assert all(t.device.type == "cpu" for t in torch.load(io.BytesIO(blob), weights_only=True)["model"].values())
        assert state_io.load(blob, model, optimizer, reference) == spec.steps
        harness.stop(job)
    finally:
        harness.ensure_train_nodes(0)


@pytest.mark.skipif(_cuda_gpus() < 2, reason="needs CUDA GPUs (two)")
def test_nccl_survivor_aborts_its_communicator_and_goes_on_after_a_peer_node_dies(harness):
    harness.ensure_train_nodes(0)
    for gpu in (0, 1):
        _add_gpu_train_node(harness, gpu)
    try:
        spec, job = harness.submit(steps=200)
        status = harness.wait_for(job, lambda s: s["world_size"] == 2 and s["last_commit_step"] >= 40, 180, "2 peers")
        assert status["backend"] == "nccl"
        victim, survivor = list(status["members"])
        t_kill = time.time()
        harness.cluster.kill_node(harness.node(status["members"][victim]))
        timeout_s = harness.config.training.collective_timeout_s
        after = harness.wait_for(job, lambda s: s["recoveries"] >= 1, timeout_s + 60, "recovery")
        assert list(after["members"]) == [survivor], "the survivor must go on as the same actor (no restart)"
        recovery = next(r for r in after["reformations"] if r["reason"] == "failure")
        assert recovery["restore"] == "keep" and recovery["start_step"] >= _commits_before(after, t_kill)
        harness.finish(spec, job, device="cuda")
    finally:
        harness.ensure_train_nodes(0)

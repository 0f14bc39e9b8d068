"""Runs training jobs on a Ray cluster and is the controller's seam for preemption.

``submit`` starts one coordinator actor per job on the head node (it must outlive
train nodes); the coordinator spawns and re-forms the peers. ``release_nodes`` /
``reclaim_nodes`` let serving borrow train nodes: peers leave at a step boundary
within the notice period, and come back when the nodes are returned.
"""

from __future__ import annotations

import logging
import time

import ray

from orchestrator.cluster import HEAD_POOL, POOL_LABEL
from orchestrator.config import TrainingConfig
from orchestrator.training.spec import JobSpecError, TrainingJobSpec
from workers.elastic.coordinator import ElasticCoordinator

ACTOR_PREFIX = "flowtide-train-"
STOP_TIMEOUT_S = 30.0

log = logging.getLogger(__name__)


def pool_node_gpus(pool: str) -> list[float]:
    """GPUs of each alive node labelled ``pool`` in the connected cluster."""
    return [
        n["Resources"].get("GPU", 0.0) for n in ray.nodes() if n["Alive"] and n.get("Labels", {}).get(POOL_LABEL) == pool
    ]


class TrainingJobFailed(RuntimeError):
    """The job stopped with an error (the message is the failing peer's)."""


class TrainingJobManager:
    """Driver-side handle on the cluster's training jobs (connect to Ray first).

    Jobs live as long as the driver that submitted them (non-detached actors).
    """

    def __init__(self, config: TrainingConfig, namespace: str = "flowtide") -> None:
        self.config = config
        self.namespace = namespace
        self._jobs: dict[str, ray.actor.ActorHandle] = {}

    def submit(self, spec: TrainingJobSpec) -> str:
        """Start ``spec``; returns the job id.

        Raises:
            JobSpecError: a job with this name is already running, or its backend cannot run
                on the pool's nodes as they are now.
        """
        if spec.name in self._jobs:
            raise JobSpecError(f"name: job {spec.name!r} is already running")
        task = spec.to_task(self.config, pool_node_gpus(spec.pool))
        coordinator = (
            ray.remote(ElasticCoordinator)
            .options(
                name=ACTOR_PREFIX + spec.name,
                namespace=self.namespace,
                num_cpus=0,
                label_selector={POOL_LABEL: HEAD_POOL},
                max_concurrency=1000,
            )
            .remote(task, self.config.metrics_port)
        )
        ray.get(coordinator.start.remote())
        self._jobs[spec.name] = coordinator
        return spec.name

    def _job(self, job_id: str) -> ray.actor.ActorHandle:
        if job_id not in self._jobs:
            raise KeyError(f"no training job {job_id!r}")
        return self._jobs[job_id]

    def status(self, job_id: str) -> dict:
        return ray.get(self._job(job_id).status.remote())

    def metrics_text(self, job_id: str) -> str:
        """The job's Prometheus exposition (``flowtide_train_*``)."""
        return ray.get(self._job(job_id).metrics_text.remote())

    def peer_digests(self, job_id: str) -> dict[str, tuple[int, str]]:
        return ray.get(self._job(job_id).peer_digests.remote())

    def final_state(self, job_id: str) -> bytes:
        """The finished job's serialized state (``workers.elastic.state.dump``); works after its peers are gone."""
        return ray.get(self._job(job_id).final_state.remote())

    def wait(self, job_id: str, timeout_s: float, poll_s: float = 0.5, on_status=None) -> dict:
        """Block until the job finishes and has freed its nodes; returns its final status.

        A finished job kills its peers by itself once every member has reported its final digest
        (a member lost at the very end is not waited for) and its final state is secured
        (``status["final_state_source"]``); ``stop`` is needed only to end the coordinator.

        Raises:
            TrainingJobFailed: the job failed.
            TimeoutError: still running after ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            status = self.status(job_id)
            if on_status is not None:
                on_status(status)
            if status["phase"] == "failed":
                raise TrainingJobFailed(f"training job {job_id} failed: {status['error']}")
            if status["phase"] == "finished" and status["peers_released"]:
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"training job {job_id} still {status['phase']} at step {status['last_commit_step']}")
            time.sleep(poll_s)

    def release_nodes(self, job_id: str, n: int, notice_s: float) -> list[str]:
        """Ask the job to give back ``n`` nodes within ``notice_s``; returns the freed node ids.

        Fewer come back when the job would drop below its ``min_peers``.
        """
        return ray.get(self._job(job_id).release_nodes.remote(n, notice_s), timeout=notice_s + 30.0)

    def offer_nodes(self, job_id: str, node_ids: list[str]) -> list[str]:
        """Lend the job nodes of another pool (serving's idle capacity); returns all nodes on offer."""
        return ray.get(self._job(job_id).offer_nodes.remote(list(node_ids)))

    def reclaim_nodes(self, job_id: str) -> list[str]:
        """Return every node lent by the job; it grows back onto them (up to ``max_peers``)."""
        return ray.get(self._job(job_id).reclaim_nodes.remote())

    def stop(self, job_id: str, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """Kill the job's coordinator and the peers it still has (a finished or failed job has none left).

        Killing the coordinator kills its peers too (they are its actors), so a coordinator that
        does not answer ``shutdown`` within ``timeout_s`` is killed all the same.
        """
        coordinator = self._jobs.pop(job_id)
        try:
            ray.get(coordinator.shutdown.remote(), timeout=timeout_s)
        except (ray.exceptions.GetTimeoutError, ray.exceptions.RayError) as exc:
            log.warning("job %s: shutdown did not complete (%s); killing its coordinator", job_id, exc)
        ray.kill(coordinator, no_restart=True)

"""The job's coordinator: one async actor that owns membership epochs, peers and the store.

It spawns one peer per eligible node (label selector + node id, and a free GPU for
NCCL jobs), hosts the TCPStore that every epoch's process group rendezvouses on (a fresh
key prefix per epoch), forms epochs with :func:`workers.elastic.membership.form`, and
carries out releases and reclaims for the serving side. It never touches tensors while the
job runs; peers hold all training state. When the job ends it frees every node at once: a
finished job first secures its final state (the final checkpoint, verified, or else one copy
in the object store of the coordinator's node), then kills all its peers.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import itertools
import logging
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import ray
from prometheus_client import generate_latest, start_http_server
from torch.distributed import TCPStore

from workers.elastic import checkpoint as ckpt
from workers.elastic.backend import Backend, nccl_peer_env
from workers.elastic.membership import Arrival, Formation, Plan, Restore, form
from workers.elastic.metrics import TrainMetrics
from workers.elastic.peer import FINAL_FLUSH_S, ElasticPeer, job_checkpoint_dir
from workers.elastic.state import StateDigest, blob_digest
from workers.elastic.task import TrainTask

log = logging.getLogger(__name__)

NODE_ID_LABEL = "ray.io/node-id"
RATE_WINDOW_S = 10.0
# Peers answer coordinator calls on extra threads while run() trains.
PEER_MAX_CONCURRENCY = 4
START_GRACE_S = 15.0
# After the first member reports the end, the others are waited for this long before the silent ones
# are pinged (a dead one is dropped); a live one is waited for up to FINAL_FLUSH_S more: rank 0
# reports only once its final checkpoint is written (or FINAL_FLUSH_S has passed).
FINISH_GRACE_S = 5.0


def eligible_nodes(nodes: list[dict], task: TrainTask, offered: set[str]) -> set[str]:
    """Alive nodes (``ray.nodes()`` entries) that may host a peer of ``task``.

    A node qualifies by the pool's labels, or by being offered by serving; an NCCL
    job also needs a GPU there, else its peer would wait for one forever and hold a
    ``max_peers`` slot.
    """
    selector, gpus = task.peer_label_selector, task.backend.gpus_per_peer
    return {
        n["NodeID"]
        for n in nodes
        if n["Alive"]
        and (n["NodeID"] in offered or all(n.get("Labels", {}).get(k) == v for k, v in selector.items()))
        and n.get("Resources", {}).get("GPU", 0) >= gpus
    }


def peer_options(task: TrainTask, node_id: str, offered: bool) -> dict[str, Any]:
    """Ray actor options of ``task``'s peer on ``node_id`` (an offered node is pinned by id alone)."""
    options: dict[str, Any] = dict(
        num_cpus=task.peer_num_cpus,
        num_gpus=task.backend.gpus_per_peer,
        label_selector={**({} if offered else task.peer_label_selector), NODE_ID_LABEL: node_id},
        max_concurrency=PEER_MAX_CONCURRENCY,
        max_restarts=0,
    )
    if task.backend is Backend.NCCL:
        options["runtime_env"] = {"env_vars": nccl_peer_env(task.collective_timeout_s)}
    return options


@dataclass
class PeerRecord:
    handle: ray.actor.ActorHandle
    node_id: str
    spawned_at: float = field(default_factory=time.monotonic)
    arrived: bool = False  # reached its first step boundary (``join_epoch``): its actor was scheduled and built


def overdue_peers(peers: dict[str, PeerRecord], now: float, timeout_s: float) -> list[str]:
    """Peers spawned more than ``timeout_s`` before ``now`` (monotonic) that never reached a step boundary.

    Their actor was never scheduled (a lease waiting for resources that other actors hold) or
    their start hung; either way they hold a ``max_peers`` slot and would keep the job waiting.
    """
    return [p for p, r in peers.items() if not r.arrived and now - r.spawned_at > timeout_s]


@dataclass
class Reformation:
    """One re-formation, for status and the benchmark: why, when detected, formed, first commit."""

    epoch: int
    reason: str
    world_size: int
    t_detect: float
    t_formed: float
    start_step: int
    restore: str
    t_first_commit: float | None = None


@dataclass
class JobStatus:
    job_id: str
    backend: str  # gloo | nccl
    phase: str  # starting | running | reforming | waiting_for_peers | finished | failed
    epoch: int
    world_size: int
    members: dict[str, str]  # peer id -> node id, rank order
    last_commit_step: int
    last_commit_time: float | None
    total_steps: int
    steps_per_second: float
    recoveries: int
    joins: int
    releases: int
    churn_lost_s: float
    lent_nodes: list[str]
    offered_nodes: list[str]
    pending_peers: dict[str, str]  # peer id -> node id: spawned, not yet at their first step boundary
    peer_start_timeouts: int  # peers dropped for not starting within peer_start_timeout_s
    losses: list[tuple[int, float]]
    commits: list[tuple[int, float, int, int]]  # (step, time, epoch, world size)
    reformations: list[dict]
    final_digests: dict[str, tuple[int, str]]
    # True once the job has ended and every peer was killed (its nodes are free). A finished job's
    # members, world_size and final digests stay as they were at the end.
    peers_released: bool = False
    # Where ``final_state`` reads from once the peers are gone: "checkpoint" (the verified final
    # checkpoint), "coordinator" (one copy in the object store), "lost" (neither could be had).
    final_state_source: str | None = None
    error: str | None = None


class ElasticCoordinator:
    """Async Ray actor; create it with ``options(num_cpus=0, ...)`` on a node that outlives peers."""

    def __init__(self, task: TrainTask, metrics_port: int | None = None) -> None:
        self.task = task.validate()
        self.host = ray.util.get_node_ip_address()
        self.store = TCPStore(
            self.host, 0, is_master=True, wait_for_workers=False, timeout=datetime.timedelta(seconds=30)
        )
        self.metrics = TrainMetrics(task.job_id)
        if metrics_port is not None:
            start_http_server(metrics_port, addr=self.host, registry=self.metrics.registry)
        self.peers: dict[str, PeerRecord] = {}
        self.members: list[str] = []
        self.epoch = 0
        self.phase = "starting"
        self.error: str | None = None
        self.arrivals: dict[str, tuple[Arrival, asyncio.Future]] = {}
        self.releasing: set[str] = set()
        self.lent_nodes: set[str] = set()  # our pool's nodes lent to serving
        self.offered_nodes: set[str] = set()  # serving's nodes lent to us
        self.final_digests: dict[str, tuple[int, str]] = {}
        self.commits: list[tuple[int, float, int, int]] = []
        self.losses: list[tuple[int, float]] = []
        self.reformations: list[Reformation] = []
        self.counts = collections.Counter()
        self.churn_lost_s = 0.0
        self._order = itertools.count()
        self._peer_ids = itertools.count()
        self._wake: asyncio.Event | None = None
        self._failure_at: float | None = None
        self._aborted_epoch = 0
        self._restore_ckpt: ckpt.SavedCheckpoint | None = None
        self._tasks: list[asyncio.Task] = []
        self.peers_released = False
        self.final_state_source: str | None = None
        self._final: StateDigest | None = None  # the state final_state returns
        self._final_ckpt: ckpt.SavedCheckpoint | None = None
        self._final_ref: ray.ObjectRef | None = None
        self._final_members: dict[str, str] | None = None  # the last members (peer -> node), kept for status

    async def start(self) -> None:
        """Start the node watcher and the formation loop (idempotent)."""
        if self._tasks:
            return
        self._wake = asyncio.Event()
        self._self = ray.get_runtime_context().current_actor
        self._tasks = [asyncio.create_task(self._watch_nodes()), asyncio.create_task(self._form_loop())]

    # --- peers call these ----------------------------------------------------------------
    async def join_epoch(
        self, peer_id: str, step: int, sha256: str | None, prev_rank: int | None, reason: str
    ) -> Plan:
        """Wait at a step boundary until the next epoch is formed; returns this peer's plan."""
        record = self.peers.get(peer_id)
        if record is None:
            return Plan(stop=True)
        if self.phase in ("finished", "failed"):
            # It started after the job ended (a joiner slower than the last steps): nothing to do,
            # and alive it would hold its node's resources until the job is stopped.
            self._drop_peer(peer_id, f"reached its first step boundary after the job {self.phase}")
            return Plan(stop=True)
        record.arrived = True
        if reason == "failure" and self._failure_at is None:
            self._failure_at = time.time()
        future = asyncio.get_running_loop().create_future()
        self.arrivals[peer_id] = (Arrival(peer_id, step, sha256, prev_rank, next(self._order)), future)
        self._wake.set()
        return await future

    def report_commit(self, epoch: int, step: int, loss: float, t: float, world_size: int) -> None:
        if epoch != self.epoch:
            return  # a late report from an epoch already replaced
        self.commits.append((step, t, epoch, world_size))
        self.losses.append((step, loss))
        if self.reformations and self.reformations[-1].t_first_commit is None:
            ref = self.reformations[-1]
            ref.t_first_commit = t
            previous = [c for c in self.commits if c[2] < epoch]
            if previous:
                gap = t - previous[-1][1]
                lost = max(0.0, gap - self._typical_step_s(epoch))
                self.churn_lost_s += lost
                self.metrics.churn_lost.inc(lost)
        self.metrics.steps.inc()
        self.metrics.last_commit_step.set(step)
        self.metrics.last_commit_time.set(t)
        self.metrics.loss.set(loss)
        self.metrics.steps_per_second.set(self._rate(t))

    def peer_finished(self, peer_id: str, digest: StateDigest) -> None:
        self.final_digests[peer_id] = (digest.step, digest.sha256)
        if self.phase != "failed":
            self.phase = "finished"
        self._drop_non_members(f"job {self.phase}")
        if self.phase == "finished" and not any(t.get_name() == "finish" for t in self._tasks):
            self._tasks.append(asyncio.get_running_loop().create_task(self._finish(), name="finish"))
        self._wake.set()

    def peer_failed(self, peer_id: str, error: str) -> None:
        """A peer hit a non-recoverable error (user code, divergence): the job fails, visibly."""
        self._fail(f"{peer_id}: {error}")

    # --- the controller calls these (through orchestrator.training) -------------------------
    async def release_nodes(self, n: int, notice_s: float) -> list[str]:
        """Give back up to ``n`` nodes, never going below ``min_peers``; returns their node ids.

        The released peers stop at the next step boundary; any still running when
        ``notice_s`` runs out is killed, and the others recover from that as from a failure.
        """
        if n < 0 or notice_s < 0:
            raise ValueError("n and notice_s must be non-negative")
        spare = max(0, len(self.members) - len(self.releasing) - self.task.min_peers)
        # Peers spawned but not yet training go first (nothing to stop), then peers on nodes
        # serving lent us (they go home), then the newest ranks.
        pending = [p for p in self.peers if p not in self.members and p not in self.releasing]
        members = sorted(
            (p for p in reversed(self.members) if p not in self.releasing),
            key=lambda p: self.peers[p].node_id not in self.offered_nodes,
        )[:spare]
        chosen = (pending + members)[:n]
        if not chosen:
            return []
        nodes = [self.peers[p].node_id for p in chosen]
        self.releasing.update(chosen)
        self.lent_nodes.update(node for node in nodes if node not in self.offered_nodes)
        self.offered_nodes.difference_update(nodes)
        for p in chosen:
            if p not in self.members:
                self._drop_peer(p, "released before joining")
        for p in self.members:
            self._request_reform(p)
        deadline = time.time() + notice_s
        while any(p in self.peers for p in chosen) and time.time() < deadline:
            await asyncio.sleep(0.05)
        expired = [p for p in chosen if p in self.peers]
        for p in expired:
            self._drop_peer(p, "notice period expired")
        if any(p in self.members for p in expired):
            self._abort_epoch()
        return nodes

    def offer_nodes(self, node_ids: list[str]) -> list[str]:
        """Serving lends these nodes (any pool): peers are put on them, up to ``max_peers``.

        ``release_nodes`` gives offered nodes back before the job's own.
        """
        self.offered_nodes.update(node_ids)
        return sorted(self.offered_nodes)

    def reclaim_nodes(self) -> list[str]:
        """Take lent nodes back: peers are spawned on them again (up to ``max_peers``)."""
        nodes = sorted(self.lent_nodes)
        self.lent_nodes.clear()
        return nodes

    def status(self) -> dict:
        return asdict(
            JobStatus(
                job_id=self.task.job_id,
                backend=self.task.backend.value,
                phase=self.phase,
                epoch=self.epoch,
                world_size=len(self._members_view()) if self.peers_released else len(self.members),
                members=self._members_view(),
                last_commit_step=self.commits[-1][0] if self.commits else 0,
                last_commit_time=self.commits[-1][1] if self.commits else None,
                total_steps=self.task.total_steps,
                steps_per_second=self._rate(time.time()),
                recoveries=self.counts["recoveries"],
                joins=self.counts["joins"],
                releases=self.counts["releases"],
                churn_lost_s=self.churn_lost_s,
                lent_nodes=sorted(self.lent_nodes),
                offered_nodes=sorted(self.offered_nodes),
                pending_peers={p: r.node_id for p, r in self.peers.items() if not r.arrived},
                peer_start_timeouts=self.counts["peer_start_timeouts"],
                losses=list(self.losses),
                commits=list(self.commits),
                reformations=[asdict(r) for r in self.reformations],
                final_digests=dict(self.final_digests),
                peers_released=self.peers_released,
                final_state_source=self.final_state_source,
                error=self.error,
            )
        )

    def metrics_text(self) -> str:
        return generate_latest(self.metrics.registry).decode()

    async def peer_digests(self) -> dict[str, tuple[int, str]]:
        """Every live member's current (step, sha256), read from the peers themselves; once the job
        has ended and its peers are gone, the last members' final digests."""
        if self.peers_released:
            return {p: self.final_digests[p] for p in self._members_view() if p in self.final_digests}
        out = {}
        for p in list(self.members):
            if p in self.peers:
                d = await self.peers[p].handle.digest.remote()
                out[p] = (d.step, d.sha256)
        return out

    async def final_state(self) -> bytes:
        """The serialized final state.

        From a finished peer while the job is still securing it (the peers are alive until then); after
        that from the final checkpoint (its file checked against the manifest again, and the manifest
        against the final digest) or from the copy in the object store.

        Raises:
            RuntimeError: the job failed, has not finished, or its final state was lost.
            workers.elastic.checkpoint.CheckpointCorrupt: the final checkpoint changed since the end.
        """
        if self.phase == "failed":
            raise RuntimeError(f"job {self.task.job_id} failed: {self.error}")
        if not self.peers_released:
            for p in self.final_digests:
                if p in self.peers:
                    return await self.peers[p].handle.export_state.remote(self.final_digests[p][0])
            if self.phase != "finished":
                raise RuntimeError(f"job {self.task.job_id} has not finished")
            raise RuntimeError("no finished peer is alive")
        if self._final_ckpt is not None:
            saved = self._final_ckpt
            found = await asyncio.to_thread(ckpt.list_checkpoints, saved.path.parent)
            if not any(c.path == saved.path and c.state_sha256 == self._final.sha256 for c in found):
                raise ckpt.CheckpointCorrupt(f"{saved.path}: gone, or no longer holds the final state")
            return await asyncio.to_thread(saved.read)  # the file checked against the manifest
        if self._final_ref is not None:
            return await self._final_ref
        raise RuntimeError(
            f"job {self.task.job_id}: the final state was lost (no complete final checkpoint, and no finished peer "
            "could hand it over before the peers were freed)"
        )

    def shutdown(self) -> None:
        for t in self._tasks:
            t.cancel()
        for p in list(self.peers):
            self._drop_peer(p, "job shut down")

    # --- the end of a job ------------------------------------------------------------------
    def _members_view(self) -> dict[str, str]:
        if self._final_members is not None:
            return dict(self._final_members)
        return {p: self.peers[p].node_id for p in self.members if p in self.peers}

    def _release_all(self, why: str) -> None:
        """The job has ended: kill every peer now, so that all its nodes are free without ``stop``.

        The last members (peer -> node) are kept for ``status``."""
        if self._final_members is None:
            self._final_members = self._members_view()
        for p in list(self.peers):
            self._drop_peer(p, why)
        self.peers_released = True

    async def _finish(self) -> None:
        """The job finished: wait for the members' final reports, secure the final state, free every node.

        A member that is neither reporting nor at a boundary after ``FINISH_GRACE_S`` is pinged and
        dropped if dead; a live one (rank 0 writing the final checkpoint) is waited for up to
        ``FINAL_FLUSH_S`` more, then killed with the rest.
        """
        t0 = time.monotonic()
        while self.phase == "finished":
            # A member at a boundary (its last gather failed while the others committed) will not report.
            silent = [
                p for p in self.members if p in self.peers and p not in self.final_digests and p not in self.arrivals
            ]
            waited = time.monotonic() - t0
            if not silent:
                break
            if waited > FINISH_GRACE_S + FINAL_FLUSH_S:
                log.warning("job %s: members %s did not report the end within %.0f s", self.task.job_id, silent, waited)
                break
            if waited > FINISH_GRACE_S:
                alive = await asyncio.gather(*(self._alive(p) for p in silent))
                for p, ok in zip(silent, alive):
                    if not ok:
                        self._drop_peer(p, "lost at the end of the job")
            await asyncio.sleep(0.1)
        if self.phase != "finished":
            return  # it failed meanwhile: _fail freed the nodes
        try:
            await self._secure_final_state()
        finally:
            if self.phase == "finished":
                self._release_all("job finished")
                log.info("job %s finished: peers freed, final state from %s", self.task.job_id, self.final_state_source)

    async def _secure_final_state(self) -> None:
        """Make ``final_state`` independent of the peers.

        The final checkpoint if there is a complete one holding the final state (rank 0 writes it at
        the last step and flushes it before it reports the end; the write can fail or outlast
        FINAL_FLUSH_S, and rank 0 can die first, so it is checked, not assumed); else the state is
        fetched once from a finished peer, checked against its final digest, and kept in the object
        store of the coordinator's node (one full-replica copy per finished job, until ``stop``).
        """
        # Members in rank order first (rank 0 wrote the checkpoint), then any other reporter.
        reporters = [p for p in dict.fromkeys([*self._members_view(), *self.final_digests]) if p in self.final_digests]
        if not reporters:
            self.final_state_source = "lost"
            return
        if len({self.final_digests[p] for p in reporters}) > 1:
            # Every member applies the same all-reduced update, so their states are identical by
            # construction; ending with different ones means at least one is wrong, and no final
            # state can be trusted.
            ends = {p: f"step {self.final_digests[p][0]} sha256 {self.final_digests[p][1][:12]}" for p in reporters}
            self._fail(f"members ended with different states ({ends}); none is kept as the final state")
            return
        step, sha = self.final_digests[reporters[0]]
        self._final = StateDigest(step, sha)
        if self.task.checkpoint_dir:
            found = await asyncio.to_thread(ckpt.find_complete, job_checkpoint_dir(self.task), step, sha)
            if found is not None:
                self._final_ckpt, self.final_state_source = found, "checkpoint"
                return
            log.warning(
                "job %s: no complete final checkpoint of step %d holds the final state; keeping a copy of it",
                self.task.job_id, step,
            )
        for p in reporters:
            if p not in self.peers or self.final_digests[p] != (step, sha):
                continue
            try:
                blob = await asyncio.wait_for(
                    self.peers[p].handle.export_state.remote(step), self.task.collective_timeout_s
                )
                got = await asyncio.to_thread(blob_digest, blob)
            except (ray.exceptions.RayError, asyncio.TimeoutError, RuntimeError) as exc:
                log.warning("job %s: could not fetch the final state from %s: %s", self.task.job_id, p, exc)
                continue
            if got != self._final:
                log.error("job %s: the final state from %s hashes to %s, not %s", self.task.job_id, p, got, self._final)
                continue
            self._final_ref, self.final_state_source = ray.put(blob), "coordinator"
            return
        self.final_state_source = "lost"

    # --- internals ----------------------------------------------------------------------
    def _rate(self, now: float) -> float:
        recent = [c for c in self.commits if c[1] >= now - RATE_WINDOW_S]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1][1] - recent[0][1], 1e-9)

    def _typical_step_s(self, before_epoch: int) -> float:
        times = [c[1] for c in self.commits if c[2] < before_epoch][-20:]
        if len(times) < 2:
            return 0.0
        return (times[-1] - times[0]) / (len(times) - 1)

    def _request_reform(self, peer_id: str) -> None:
        record = self.peers.get(peer_id)
        if record is not None:
            record.handle.request_reform.remote()

    def _abort_epoch(self) -> None:
        """NCCL jobs: abort the current epoch's communicator on members not yet back.

        Called when the epoch has lost a member. A lost peer makes NCCL collectives hang
        until ``collective_timeout_s``; gloo ones fail as soon as its sockets close, and
        cannot be interrupted from outside anyway (``EpochGroup.abort``), so gloo skips this.
        """
        if self.task.backend is not Backend.NCCL or self._aborted_epoch == self.epoch:
            return
        self._aborted_epoch = self.epoch
        for p in self.members:
            if p in self.peers and p not in self.arrivals:
                self.peers[p].handle.abort_epoch.remote(self.epoch)

    def _fail(self, error: str) -> None:
        self.phase = "failed"
        self.error = error
        log.error("job %s failed: %s", self.task.job_id, self.error)
        self._release_all("job failed")  # nothing to keep: every node is freed now
        self._wake.set()

    def _drop_non_members(self, why: str) -> None:
        """The job has ended: peers outside the last epoch (spawns still starting or waiting for a lease,
        joiners at a boundary) will never train; drop them so that they free their nodes now. The
        members follow once they have reported their final digests and the final state is secured
        (``_finish``)."""
        for p in [p for p in self.peers if p not in self.members]:
            self._drop_peer(p, why)

    def _drop_overdue_peers(self) -> None:
        """Drop peers that did not start within ``peer_start_timeout_s``; their nodes are tried again.

        A job none of whose peers ever started fails: its peers' actors are not being scheduled
        (the nodes' resources are held by other actors) or their start hangs, and waiting in
        'starting' would hide that.
        """
        overdue = overdue_peers(self.peers, time.monotonic(), self.task.peer_start_timeout_s)
        if not overdue:
            return
        nodes = sorted(self.peers[p].node_id for p in overdue)
        for p in overdue:
            self._drop_peer(p, f"did not start within {self.task.peer_start_timeout_s:.0f} s")
        self.counts["peer_start_timeouts"] += len(overdue)
        log.warning(
            "job %s: %d peer(s) did not start within %.0f s on nodes %s",
            self.task.job_id, len(overdue), self.task.peer_start_timeout_s, [n[:8] for n in nodes],
        )
        if self.epoch == 0 and not any(r.arrived for r in self.peers.values()):
            self._fail(
                f"no peer started within peer_start_timeout_s={self.task.peer_start_timeout_s:.0f} s on nodes "
                f"{nodes}: their Ray actors were not scheduled (are the nodes' CPUs/GPUs held by other actors, "
                "e.g. another job's peers?) or their start hung"
            )

    def _drop_peer(self, peer_id: str, why: str) -> None:
        record = self.peers.pop(peer_id, None)
        if record is None:
            return
        log.info("dropping %s on %s: %s", peer_id, record.node_id[:8], why)
        if peer_id in self.members:
            self.members.remove(peer_id)
        entry = self.arrivals.pop(peer_id, None)
        if entry is not None and not entry[1].done():
            entry[1].set_result(Plan(stop=True))
        ray.kill(record.handle, no_restart=True)

    def _spawn(self, node_id: str) -> None:
        peer_id = f"{self.task.job_id}-peer-{next(self._peer_ids)}"
        options = peer_options(self.task, node_id, offered=node_id in self.offered_nodes)
        handle = ray.remote(ElasticPeer).options(**options).remote(self.task, peer_id, self._self)
        handle.run.remote()  # the peer reports its end (finished / failed) to us itself
        self.peers[peer_id] = PeerRecord(handle=handle, node_id=node_id)
        log.info("spawned %s on node %s", peer_id, node_id[:8])

    async def _watch_nodes(self) -> None:
        """Spawn a peer on every eligible node without one; forget peers whose node is gone."""
        while self.phase not in ("finished", "failed"):
            alive = eligible_nodes(ray.nodes(), self.task, self.offered_nodes)
            gone = [p for p, record in self.peers.items() if record.node_id not in alive]
            lost_member = any(p in self.members for p in gone)
            for peer_id in gone:
                self._drop_peer(peer_id, "node left the cluster")
                self._wake.set()
            if lost_member:
                self._abort_epoch()
            self._drop_overdue_peers()
            if self.phase == "failed":
                return
            used = {r.node_id for r in self.peers.values()}
            free = sorted(alive - used - self.lent_nodes)
            for node_id in free[: max(0, self.task.max_peers - len(self.peers))]:
                self._spawn(node_id)
            await asyncio.sleep(self.task.node_poll_s)

    async def _alive(self, peer_id: str) -> bool:
        record = self.peers.get(peer_id)
        if record is None:
            return False
        try:
            await asyncio.wait_for(record.handle.ping.remote(), self.task.liveness_timeout_s)
            return True
        except (ray.exceptions.RayError, asyncio.TimeoutError):
            return False

    async def _wait_for_members(self) -> None:
        """Wait until every live member is at the boundary; unresponsive ones are dropped."""
        while True:
            missing = [p for p in self.members if p not in self.arrivals]
            if not missing:
                return
            for p in missing:
                self._request_reform(p)
            if self._failure_at is not None:
                self._abort_epoch()  # a member's collective failed: the others are stuck in a dead epoch
            alive = await asyncio.gather(*(self._alive(p) for p in missing))
            for p, ok in zip(missing, alive):
                if not ok:
                    self._drop_peer(p, "unresponsive at re-formation")
            if all(not ok for ok in alive):
                return
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=0.25)
            except asyncio.TimeoutError:
                pass

    async def _form_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self.phase in ("finished", "failed"):
                for peer_id in list(self.arrivals):
                    # Told to stop (Plan(stop=True)) and dropped: it will not train again, so it must
                    # not hold its node until the job is stopped.
                    self._drop_peer(peer_id, f"at a step boundary after the job {self.phase}")
                self.arrivals.clear()
                if self.phase == "finished":
                    continue
                return
            if not self.arrivals:
                continue
            if self.epoch == 0:
                # The first epoch waits briefly for every spawned peer, so the job does not start
                # on one peer and re-form at once when the next finishes importing torch.
                deadline = time.time() + START_GRACE_S
                while any(p not in self.arrivals for p in self.peers) and time.time() < deadline:
                    await asyncio.sleep(0.1)
            t_detect = self._failure_at or time.time()
            if self.phase == "running":
                self.phase = "reforming"
            new_joiner = any(p not in self.members for p in self.arrivals)
            if new_joiner:
                for p in self.members:
                    self._request_reform(p)
            await self._wait_for_members()
            # An arrival that died while waiting would stall the new group until its timeout.
            arrived = list(self.arrivals)
            alive = await asyncio.gather(*(self._alive(p) for p in arrived))
            for p, ok in zip(arrived, alive):
                if not ok:
                    self._drop_peer(p, "died at the boundary")
            if self.phase in ("finished", "failed"):
                self._wake.set()
                continue
            self._form(t_detect)

    def _checkpoint_info(self) -> tuple[int, str] | None:
        if not self.task.checkpoint_dir:
            return None
        found = ckpt.latest_valid(job_checkpoint_dir(self.task))
        if found is None:
            return None
        self._restore_ckpt = found[0]
        return found[0].step, found[0].state_sha256

    def _form(self, t_detect: float) -> None:
        arrivals = [a for a, _ in self.arrivals.values()]
        has_live = any(a.sha256 is not None for a in arrivals)
        formation: Formation = form(
            arrivals,
            self.releasing,
            self.task.min_peers,
            self.task.max_peers,
            None if has_live else self._checkpoint_info(),
        )
        for p in formation.released:
            _, future = self.arrivals.pop(p)
            future.set_result(Plan(stop=True))
            self.counts["releases"] += 1
            self.metrics.releases.inc()
            self.releasing.discard(p)
            self._drop_peer(p, "released")
        if formation.diverged:
            self.peer_failed(",".join(formation.diverged), "state differs from the source's at the same step")
            self._wake.set()
            return
        if not formation.assignments:
            self.phase = "waiting_for_peers"
            self.members = [p for p in self.members if p in self.arrivals]
            return
        was_failure = self._failure_at is not None
        self.epoch += 1
        previous = set(self.members)
        self.members = sorted(formation.assignments, key=lambda p: formation.assignments[p].rank)
        first = formation.assignments[self.members[0]]
        restore = "peer" if any(a.restore is Restore.PEER for a in formation.assignments.values()) else first.restore.value
        for peer_id, a in formation.assignments.items():
            _, future = self.arrivals.pop(peer_id)
            future.set_result(
                Plan(
                    stop=False,
                    epoch=self.epoch,
                    rank=a.rank,
                    world_size=formation.world_size,
                    store_host=self.host,
                    store_port=self.store.port,
                    restore=a.restore,
                    source=self.peers[a.source_peer].handle if a.source_peer else None,
                    start_step=a.start_step,
                    expected_sha256=a.expected_sha256,
                    checkpoint_path=str(self._restore_ckpt.path) if a.restore is Restore.CHECKPOINT else None,
                )
            )
        joined = [p for p in self.members if p not in previous and formation.assignments[p].restore is Restore.PEER]
        self.counts["joins"] += len(joined)
        self.metrics.joins.inc(len(joined))
        if was_failure and self.epoch > 1:
            self.counts["recoveries"] += 1
            self.metrics.recoveries.inc()
        self.reformations.append(
            Reformation(
                epoch=self.epoch,
                reason="failure" if was_failure else ("start" if self.epoch == 1 else "membership"),
                world_size=formation.world_size,
                t_detect=t_detect,
                t_formed=time.time(),
                start_step=first.start_step,
                restore=restore,
            )
        )
        self._failure_at = None
        self.phase = "running"
        self.metrics.world_size.set(formation.world_size)
        self.metrics.epoch.set(self.epoch)

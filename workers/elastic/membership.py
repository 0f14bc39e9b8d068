"""The pure formation policy: who trains in the next membership epoch, and from what state.

The coordinator gathers one ``Arrival`` per peer at a step boundary (or after a failed
collective) and calls :func:`form`. The newest live state wins: peers that completed
the last step keep it, peers one step behind and joiners copy it from a source peer.
Only when no peer holds live state does the group restore a checkpoint (or start).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Restore(str, Enum):
    KEEP = "keep"  # this peer already holds the state the epoch starts from
    PEER = "peer"  # copy the state from the source peer, check its hash
    CHECKPOINT = "checkpoint"  # no live state anywhere: load the newest valid checkpoint
    INIT = "init"  # nothing to restore: the seeded initial model


@dataclass(frozen=True)
class Arrival:
    """A peer waiting at a step boundary. ``sha256`` is None for a peer without live state."""

    peer_id: str
    step: int
    sha256: str | None
    prev_rank: int | None
    order: int


@dataclass(frozen=True)
class Assignment:
    peer_id: str
    rank: int
    restore: Restore
    source_peer: str | None
    start_step: int
    expected_sha256: str | None


@dataclass(frozen=True)
class Formation:
    """The outcome; ``assignments`` is empty while there are fewer than ``min_peers``."""

    assignments: dict[str, Assignment]
    released: list[str]
    standby: list[str]
    diverged: list[str] = field(default_factory=list)

    @property
    def world_size(self) -> int:
        return len(self.assignments)


def _priority(a: Arrival) -> tuple:
    # Newest state first (it must train), then the previous rank order (ranks stay stable), then arrival.
    has_state = a.sha256 is not None
    return (not has_state, -a.step if has_state else 0, a.prev_rank if a.prev_rank is not None else 1 << 30, a.order)


def form(
    arrivals: list[Arrival],
    releasing: set[str],
    min_peers: int,
    max_peers: int,
    checkpoint: tuple[int, str] | None,
) -> Formation:
    """Plan the next epoch from the peers at the boundary.

    ``checkpoint`` is the newest valid checkpoint's (step, state sha256), used only
    when no participant holds live state. Peers in ``releasing`` are told to stop.
    ``diverged`` lists peers whose state at the source's step hashes differently from
    the source's: a determinism bug the coordinator must surface, not paper over.
    """
    released = sorted(a.peer_id for a in arrivals if a.peer_id in releasing)
    candidates = sorted((a for a in arrivals if a.peer_id not in releasing), key=_priority)
    participants, standby = candidates[:max_peers], [a.peer_id for a in candidates[max_peers:]]
    if len(participants) < min_peers:
        return Formation(assignments={}, released=released, standby=[a.peer_id for a in candidates])
    source = participants[0] if participants[0].sha256 is not None else None
    assignments: dict[str, Assignment] = {}
    diverged: list[str] = []
    for rank, a in enumerate(participants):
        if source is not None:
            same = a.step == source.step and a.sha256 == source.sha256
            if a.step == source.step and a.sha256 is not None and not same:
                diverged.append(a.peer_id)
            assignments[a.peer_id] = Assignment(
                peer_id=a.peer_id,
                rank=rank,
                restore=Restore.KEEP if same else Restore.PEER,
                source_peer=None if same else source.peer_id,
                start_step=source.step,
                expected_sha256=source.sha256,
            )
        elif checkpoint is not None:
            assignments[a.peer_id] = Assignment(a.peer_id, rank, Restore.CHECKPOINT, None, checkpoint[0], checkpoint[1])
        else:
            assignments[a.peer_id] = Assignment(a.peer_id, rank, Restore.INIT, None, 0, None)
    return Formation(assignments=assignments, released=released, standby=standby, diverged=diverged)


@dataclass(frozen=True)
class Plan:
    """What the coordinator answers one peer at a boundary: stop, or train in ``epoch``."""

    stop: bool
    epoch: int = 0
    rank: int = 0
    world_size: int = 0
    store_host: str = ""
    store_port: int = 0
    restore: Restore = Restore.KEEP
    source: object = None  # the source peer's actor handle when restore is PEER
    start_step: int = 0
    expected_sha256: str | None = None
    checkpoint_path: str | None = None

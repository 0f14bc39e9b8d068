"""Asynchronous, atomic checkpoints that any number of peers can restore.

The trainer hands over bytes it has already serialized and goes on; a writer thread
writes ``.tmp-step-N/``, fsyncs, and renames it to ``step-N/`` (rename is atomic on a
POSIX file system), so a reader sees a whole checkpoint or none. The manifest holds
the file's SHA-256, and a checkpoint whose file does not match is skipped, not loaded.
The state is a full replica (data parallel), so it restores on any world size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ray.train import Checkpoint

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
MANIFEST_FILE = "manifest.json"
_DIR_RE = re.compile(r"^step-(\d{10})$")


class CheckpointCorrupt(RuntimeError):
    """A checkpoint's bytes do not match its manifest."""


@dataclass(frozen=True)
class SavedCheckpoint:
    step: int
    path: Path
    state_sha256: str

    def as_ray_checkpoint(self) -> Checkpoint:
        """The same directory as a Ray Train ``Checkpoint`` (for tools that take one)."""
        from ray.train import Checkpoint  # ~3 s of imports: only when asked for, never in a peer

        return Checkpoint.from_directory(str(self.path))

    def read(self) -> bytes:
        """The state bytes, after checking them against the manifest.

        Raises:
            CheckpointCorrupt: the file's hash differs from the manifest's.
        """
        blob = (self.path / STATE_FILE).read_bytes()
        if hashlib.sha256(blob).hexdigest() != self._manifest_file_sha256():
            raise CheckpointCorrupt(f"{self.path}: {STATE_FILE} does not match its manifest")
        return blob

    def verify(self) -> None:
        """Check the file against the manifest without loading it (hashed in chunks).

        Raises:
            CheckpointCorrupt: the file's hash differs from the manifest's.
        """
        if file_sha256(self.path / STATE_FILE) != self._manifest_file_sha256():
            raise CheckpointCorrupt(f"{self.path}: {STATE_FILE} does not match its manifest")

    def _manifest_file_sha256(self) -> str:
        return json.loads((self.path / MANIFEST_FILE).read_text())["file_sha256"]


def file_sha256(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """SHA-256 of a file, read in chunks (a checkpoint can be larger than the memory to spare)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_bytes):
            h.update(chunk)
    return h.hexdigest()


def find_complete(root: Path, step: int, state_sha256: str) -> SavedCheckpoint | None:
    """The checkpoint of ``step`` under ``root`` that holds the state hashing to ``state_sha256``, if it is
    complete: renamed into place (never a ``.tmp-*``), its manifest names that state, and its file matches
    the manifest (hashed in chunks, not loaded). None otherwise."""
    for saved in list_checkpoints(root):
        if saved.step != step or saved.state_sha256 != state_sha256:
            continue
        try:
            saved.verify()
        except (CheckpointCorrupt, OSError, ValueError, KeyError) as exc:
            log.warning("checkpoint %s is not usable: %s", saved.path, exc)
            continue
        return saved
    return None


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(root: Path, step: int, blob: bytes, state_sha256: str, world_size: int) -> SavedCheckpoint:
    """Write one checkpoint under ``root``; visible only once complete."""
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:010d}"
    tmp = root / f".tmp-step-{step:010d}-{os.getpid()}-{threading.get_ident()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    with open(tmp / STATE_FILE, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    manifest = {
        "step": step,
        "file_sha256": hashlib.sha256(blob).hexdigest(),
        "state_sha256": state_sha256,
        "world_size": world_size,
    }
    with open(tmp / MANIFEST_FILE, "w") as f:
        json.dump(manifest, f)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():  # the same step committed twice (after a restore): identical state, keep the first
        shutil.rmtree(tmp)
    else:
        os.rename(tmp, final)
        _fsync_dir(root)
    return SavedCheckpoint(step=step, path=final, state_sha256=state_sha256)


def list_checkpoints(root: Path) -> list[SavedCheckpoint]:
    """Complete checkpoints under ``root``, newest first (half-written ``.tmp-*`` are ignored)."""
    if not root.is_dir():
        return []
    found = []
    for entry in root.iterdir():
        m = _DIR_RE.match(entry.name)
        if not m or not (entry / MANIFEST_FILE).is_file():
            continue
        manifest = json.loads((entry / MANIFEST_FILE).read_text())
        found.append(SavedCheckpoint(step=int(m.group(1)), path=entry, state_sha256=manifest["state_sha256"]))
    return sorted(found, key=lambda c: c.step, reverse=True)


def latest_valid(root: Path) -> tuple[SavedCheckpoint, bytes] | None:
    """The newest checkpoint whose bytes match its manifest, with those bytes; corrupt ones are logged and skipped."""
    for ckpt in list_checkpoints(root):
        try:
            return ckpt, ckpt.read()
        except (CheckpointCorrupt, OSError) as exc:
            log.warning("skipping checkpoint %s: %s", ckpt.path, exc)
    return None


class AsyncCheckpointer:
    """One writer thread; ``submit`` never blocks on storage.

    If a write is still running when the next one arrives, the waiting one is replaced:
    storage falls behind by at most one checkpoint, training never waits for it.
    """

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep
        self._cond = threading.Condition()
        self._pending: tuple[int, bytes, str, int] | None = None
        self._busy = False
        self.written: list[int] = []
        self.errors: list[str] = []
        self._thread = threading.Thread(target=self._loop, name="checkpoint-writer", daemon=True)
        self._thread.start()

    def submit(self, step: int, blob: bytes, state_sha256: str, world_size: int) -> None:
        with self._cond:
            self._pending = (step, blob, state_sha256, world_size)
            self._cond.notify()

    def flush(self, timeout_s: float) -> bool:
        """Wait until nothing is pending or being written; True if drained in time."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout=timeout_s)

    def _loop(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._pending is not None)
                step, blob, sha, world = self._pending
                self._pending = None
                self._busy = True
            try:
                write_atomic(self.root, step, blob, sha, world)
                self.written.append(step)
                for old in list_checkpoints(self.root)[self.keep :]:
                    shutil.rmtree(old.path, ignore_errors=True)
            except OSError as exc:
                log.error("checkpoint of step %d failed: %s", step, exc)
                self.errors.append(f"step {step}: {exc}")
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

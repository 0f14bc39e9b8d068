"""The training state a joiner must receive, its canonical hash, and its wire format.

State = model parameters and buffers, optimizer state, committed step and seed. The
data position is the committed step (see ``sharding``) and the RNG is derived from
(seed, step, micro-batch) (see ``step_math``), so both travel as those two integers.
Hashes and blobs are made from CPU copies, so they do not depend on the device the
state lives on: a GPU peer's checkpoint loads and verifies on a CPU-only machine.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from typing import Any

import torch


class StateHashMismatch(RuntimeError):
    """A received or restored state does not hash to what its source announced."""


@dataclass(frozen=True)
class StateDigest:
    step: int
    sha256: str

    @property
    def short(self) -> int:
        """The first 63 bits as an int: small enough to gather in an int64 tensor."""
        return int(self.sha256[:16], 16) & (2**63 - 1)


def _feed(h: "hashlib._Hash", obj: Any) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().contiguous().cpu()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, dict):
        h.update(b"{")
        for key in sorted(obj, key=repr):
            h.update(repr(key).encode())
            _feed(h, obj[key])
        h.update(b"}")
    elif isinstance(obj, (list, tuple)):
        h.update(b"[")
        for item in obj:
            _feed(h, item)
        h.update(b"]")
    else:
        h.update(repr(obj).encode())


def _digest_of(model_state: dict, optimizer_state: dict, step: int, seed: int) -> StateDigest:
    h = hashlib.sha256()
    _feed(h, {"step": step, "seed": seed, "model": model_state, "optimizer": optimizer_state})
    return StateDigest(step=step, sha256=h.hexdigest())


def digest(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seed: int) -> StateDigest:
    """SHA-256 over every byte of the state, in a canonical order."""
    return _digest_of(model.state_dict(), optimizer.state_dict(), step, seed)


def blob_digest(blob: bytes) -> StateDigest:
    """The digest of a serialized state (``dump``), without a model to load it into.

    Equals ``digest`` of the model and optimizer the blob was dumped from (and of any it is
    loaded into): the blob holds the same state dicts, as CPU copies, and the hash reads CPU copies.
    """
    data = torch.load(io.BytesIO(blob), weights_only=True)
    return _digest_of(data["model"], data["optimizer"], int(data["step"]), int(data["seed"]))


def _on_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        out = type(obj)((key, _on_cpu(value)) for key, value in obj.items())
        if hasattr(obj, "_metadata"):  # a state_dict's module versions, read by load_state_dict
            out._metadata = obj._metadata
        return out
    if isinstance(obj, (list, tuple)):
        return type(obj)(_on_cpu(item) for item in obj)
    return obj


def dump(model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, seed: int) -> bytes:
    """The state as bytes, every tensor a CPU copy (a blob never names a device)."""
    buf = io.BytesIO()
    state = {"step": step, "seed": seed, "model": model.state_dict(), "optimizer": optimizer.state_dict()}
    torch.save(_on_cpu(state), buf)
    return buf.getvalue()


def load(
    blob: bytes, model: torch.nn.Module, optimizer: torch.optim.Optimizer, expected: StateDigest | None
) -> int:
    """Load ``blob`` into ``model`` and ``optimizer`` (onto their devices); return its step.

    Raises:
        StateHashMismatch: the loaded state does not hash to ``expected``.
    """
    data = torch.load(io.BytesIO(blob), weights_only=True)
    model.load_state_dict(data["model"])
    optimizer.load_state_dict(data["optimizer"])
    step = int(data["step"])
    if expected is not None:
        got = digest(model, optimizer, step, int(data["seed"]))
        if got != expected:
            raise StateHashMismatch(
                f"state of step {step} hashes to {got.sha256[:12]}, source announced "
                f"step {expected.step} / {expected.sha256[:12]}"
            )
    return step

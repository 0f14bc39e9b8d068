"""The engine protocol: what the prefill and decode servers need from an inference engine.

Everything is in token ids; tokenizing, chat templates and stop strings live in the
router. One engine instance serves one role (prefill, decode or colocated) in one
replica. Engines: ``workers.engines.transformers`` (built-in) and ``workers.engines.vllm``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


class EngineError(RuntimeError):
    """The engine could not serve a request (named cause in the message)."""


class EngineUnavailableError(EngineError):
    """The engine cannot be built here: package missing, model path missing, memory too small."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens. ``temperature == 0`` is greedy and deterministic."""

    max_tokens: int
    temperature: float = 0.0
    seed: int | None = None
    ignore_eos: bool = False


@dataclass(frozen=True)
class Prefilled:
    """The result of a prefill, handed to a decode replica.

    ``kv`` is engine-specific: the built-in engine's KV as one numpy array (it travels
    in the reply, through the Ray object store); vLLM's connector ``kv_transfer_params``.
    """

    request_id: str
    prompt_ids: tuple[int, ...]
    first_token: int
    kv: Any
    kv_bytes: int
    prefill_s: float
    sent_at: float = 0.0  # wall clock when the prefill server replied (hand-off time = receipt - sent_at)


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one engine's load, exported as metrics and read by the autoscaler."""

    waiting: int = 0
    running: int = 0
    kv_used_fraction: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


class EngineObserver:
    """What an engine reports as it works; servers pass one that records metrics. Defaults do nothing."""

    def queue_wait(self, stage: str, seconds: float) -> None:
        """A request waited ``seconds`` before the engine started its ``stage`` (prefill or decode)."""

    def step(self, batch_size: int, seconds: float) -> None:
        """One decode step ran over ``batch_size`` sequences."""


@runtime_checkable
class Engine(Protocol):
    """One inference engine. Implementations must be safe to call from one asyncio loop."""

    eos_token_id: int | None

    async def prefill(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> Prefilled:
        """Run the prompt; return the first token and an exportable KV handle."""

    def decode(self, prefilled: Prefilled, sampling: SamplingParams) -> AsyncIterator[int]:
        """Continue from a prefill done elsewhere; yield the tokens after the first, joining the running batch.

        Closing the iterator (client gone) removes the sequence from the batch.
        """

    def generate(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> AsyncIterator[int]:
        """Colocated mode: prefill and decode here; yield every generated token, the first included."""

    def stats(self) -> EngineStats:
        """Current load."""

    def check_health(self) -> None:
        """Raise :class:`EngineError` if the engine can no longer serve (Serve then replaces the replica)."""

    async def shutdown(self) -> None:
        """Release the engine's resources."""

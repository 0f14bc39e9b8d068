"""The prefill, decode and colocated servers: one class parameterised by role.

Topology (disaggregated): router -> decode server -> prefill server. The decode
server calls prefill itself (as Ray Serve LLM does), fetches the KV from the object
store, joins the engine's running batch and streams tokens back to the router, so a
request crosses one hop fewer than router -> prefill -> router -> decode.
Colocated: router -> colocated server, which does both.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import logging
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry

from workers.engines import build_engine
from workers.engines.base import EngineError, Prefilled, SamplingParams
from workers.telemetry import MetricsPublisher, ServerMetrics

log = logging.getLogger(__name__)

ROLES = ("prefill", "decode", "colocated")


@dataclass(frozen=True)
class GenerateRequest:
    request_id: str
    prompt_ids: tuple[int, ...]
    sampling: SamplingParams


class LLMServer:
    """Serves one role on its pool. The app builder deploys it as PrefillServer / DecodeServer."""

    def __init__(
        self,
        role: str,
        engine_kind: str,
        model_path: str,
        engine_options: dict[str, Any] | None = None,
        prefill: Any = None,
        metrics_hub: Any = None,
        metrics_interval_s: float = 5.0,
    ) -> None:
        if role not in ROLES:
            raise ValueError(f"role must be one of {ROLES}, got {role!r}")
        if role == "decode" and prefill is None:
            raise ValueError("a decode server needs a prefill handle (use role='colocated' without one)")
        self.role = role
        self._registry = CollectorRegistry()
        self.metrics = ServerMetrics(self._registry, role)
        self.engine = build_engine(engine_kind, role, model_path, observer=self.metrics, **(engine_options or {}))
        self._prefill = prefill
        self.publisher = MetricsPublisher(metrics_hub, f"{role}-{os.getpid()}", self._registry, metrics_interval_s,
                                          before=lambda: self.metrics.load(self.engine.stats()))
        freeze_startup_heap()

    async def check_health(self) -> None:
        """Serve's periodic health check: raises when the engine is broken; also (re)starts the metrics publisher."""
        self.engine.check_health()
        self.publisher.ensure_running()

    async def stats(self) -> dict[str, Any]:
        """This replica's load, for the controller (seam for the live autoscaler loop)."""
        return dataclasses.asdict(self.engine.stats())

    async def prefill(self, request: GenerateRequest) -> Prefilled:
        """Prefill role: run the prompt. The reply, KV array included, travels through the object store.

        (A ``ray.put`` ref inside the reply would not do: Serve pickles replies, so the ref's
        owner would free the KV before the decode replica fetched it.)
        """
        self.publisher.ensure_running()
        try:
            result = await self.engine.prefill(request.request_id, list(request.prompt_ids), request.sampling)
        except asyncio.CancelledError:
            self.metrics.requests.labels(self.role, "cancelled").inc()
            raise
        except Exception:
            self.metrics.requests.labels(self.role, "error").inc()
            raise
        self.metrics.prefill_seconds.observe(result.prefill_s)
        self.metrics.requests.labels(self.role, "ok").inc()
        return dataclasses.replace(result, sent_at=time.time())

    async def generate(self, request: GenerateRequest) -> AsyncIterator[list[int]]:
        """Decode or colocated role: stream the generated token ids, several per message when available."""
        self.publisher.ensure_running()
        status = "error"
        try:
            async for tokens in _coalesce(self._tokens(request)):
                yield tokens
            status = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        finally:
            self.metrics.requests.labels(self.role, status).inc()

    async def complete(self, request: GenerateRequest) -> list[int]:
        """Decode or colocated role, unary: every generated token id in one reply (no stream messages)."""
        self.publisher.ensure_running()
        status = "error"
        try:
            async with contextlib.aclosing(self._tokens(request)) as stream:  # cancelled: leave the batch now
                tokens = [token async for token in stream]
            status = "ok"
            return tokens
        except asyncio.CancelledError:
            status = "cancelled"
            raise
        finally:
            self.metrics.requests.labels(self.role, status).inc()

    async def _tokens(self, request: GenerateRequest) -> AsyncIterator[int]:
        if self.role == "colocated":
            async for token in self.engine.generate(request.request_id, list(request.prompt_ids), request.sampling):
                yield token
            return
        prefilled = await self._prefill.prefill.remote(request)
        # The reply (KV included) came through the object store; wall clocks agree on one machine
        # and, NTP-synced, closely enough across nodes.
        self.metrics.kv_seconds.observe(max(0.0, time.time() - prefilled.sent_at))
        yield prefilled.first_token
        self.metrics.kv_bytes.inc(prefilled.kv_bytes)
        self.metrics.kv_bytes_per_request.observe(prefilled.kv_bytes)
        async for token in self.engine.decode(prefilled, request.sampling):
            yield token


def freeze_startup_heap() -> None:
    """Hide what start-up allocated (Ray, torch, transformers, the model) from the cyclic garbage collector.

    A replica holds ~500k long-lived objects after start-up; a full collection walks them all and
    took ~0.5 s on 2 loaded cores, stalling every request in flight. Frozen, collections walk only
    what requests allocate. (Instagram's fix for the same stall.) Call at the end of ``__init__``.
    """
    gc.collect()
    gc.freeze()


async def _coalesce(tokens: AsyncIterator[int]) -> AsyncIterator[list[int]]:
    """Yield lists of every token ready since the last yield: fewer stream messages when decode outpaces the network.

    Closing this generator closes ``tokens`` (so a client disconnect leaves the batch).
    """
    buffer: list[int] = []
    ready = asyncio.Event()
    done: list[BaseException | None] = []

    async def pump() -> None:
        try:
            async for token in tokens:
                buffer.append(token)
                ready.set()
            done.append(None)
        except Exception as exc:  # handed to the consumer below, which re-raises it
            done.append(exc)
        finally:
            ready.set()

    task = asyncio.get_running_loop().create_task(pump())
    try:
        while True:
            await ready.wait()
            ready.clear()
            if buffer:
                chunk, buffer[:] = list(buffer), []
                yield chunk
            if done and not buffer:
                if done[0] is not None:
                    raise EngineError(str(done[0])) from done[0]
                return
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await tokens.aclose()

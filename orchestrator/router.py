"""The Serve ingress: OpenAI-compatible HTTP in, token streams from the decode pool out.

It tokenizes (and applies the chat template), refuses bad input with an OpenAI-style
4xx before any engine work, streams SSE, turns token ids back into text with stop
strings, and records TTFT / TPOT / latency. A client that disconnects cancels its
request on the decode and prefill servers (Serve propagates the cancellation).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse
from prometheus_client import CollectorRegistry, generate_latest
from transformers import AutoTokenizer

from orchestrator.config import FlowtideConfig
from orchestrator.detokenize import IncrementalDetokenizer
from orchestrator.openai_api import (
    APIError,
    ChatCompletionRequest,
    CompletionRequest,
    completion_body,
    new_id,
    usage,
)
from workers.engines.base import SamplingParams
from workers.servers import GenerateRequest, LLMServer, freeze_startup_heap
from workers.telemetry import MetricsPublisher, RouterMetrics

log = logging.getLogger(__name__)

api = FastAPI(title="Flowtide", description="OpenAI-compatible endpoint of a Flowtide cluster.")


@api.exception_handler(APIError)
async def _api_error(_: Request, exc: APIError) -> JSONResponse:
    return JSONResponse(exc.body(), status_code=exc.status)


@api.exception_handler(RequestValidationError)
async def _validation_error(_: Request, exc: RequestValidationError) -> JSONResponse:
    errors = exc.errors()
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p != "body"]
    if first.get("type") == "json_invalid":
        message = f"request body is not valid JSON: {first.get('msg')}"
    else:
        message = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'] if p != 'body') or 'body'}: {e['msg']}" for e in errors
        )
    return JSONResponse(APIError(400, message, param=".".join(loc) or None).body(), status_code=400)


class Router:
    """The ingress deployment; ``decode`` is the DecodeServer (or colocated server) handle."""

    def __init__(self, config: dict[str, Any], model_path: str, decode: Any = None, metrics_hub: Any = None,
                 fused_server: dict[str, Any] | None = None, prefill: Any = None) -> None:
        """``decode`` is the decode (or colocated) server's Serve handle; or, fused, ``fused_server`` holds
        the :class:`LLMServer` arguments (``prefill``: the prefill handle) and the server runs in this
        replica, one Serve hop fewer."""
        if (decode is None) == (fused_server is None):
            raise ValueError("give the Router either a decode handle or fused_server arguments")
        self.config = FlowtideConfig.model_validate(config)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        self.decode = decode
        self._local = (LLMServer(**fused_server, prefill=prefill, metrics_hub=metrics_hub)
                       if fused_server is not None else None)
        self._registry = CollectorRegistry()
        self.metrics = RouterMetrics(self._registry)
        self.publisher = MetricsPublisher(metrics_hub, f"router-{os.getpid()}", self._registry,
                                          self.config.serving.metrics_push_interval_s)
        freeze_startup_heap()

    async def check_health(self) -> None:
        self.publisher.ensure_running()
        if self._local is not None:
            await self._local.check_health()

    # -- endpoints (bound to ``api`` by the app builder through serve.ingress) --------

    @api.get("/health")
    async def health(self) -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/metrics")
    async def metrics_endpoint(self) -> PlainTextResponse:
        if self.publisher.hub is None:
            text = generate_latest(self._registry).decode()
        else:
            await self.publisher.push_now()  # so this scrape includes the router's latest figures
            text = await self.publisher.hub.collect.remote()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @api.get("/v1/models")
    async def models(self) -> dict[str, Any]:
        name = self.config.model.served_name
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "flowtide"}]}

    @api.post("/v1/completions")
    async def completions(self, body: CompletionRequest, raw: Request):
        prompt_ids = self._encode_prompt(body.prompt)
        return await self._serve(body, prompt_ids, raw, chat=False, endpoint="completions")

    @api.post("/v1/chat/completions")
    async def chat_completions(self, body: ChatCompletionRequest, raw: Request):
        messages = [m.model_dump(include={"role", "content"}) for m in body.messages]
        prompt_ids = self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(prompt_ids, dict) or hasattr(prompt_ids, "input_ids"):
            prompt_ids = prompt_ids["input_ids"]
        if body.max_completion_tokens is not None and body.max_tokens is None:
            body.max_tokens = body.max_completion_tokens
        return await self._serve(body, list(prompt_ids), raw, chat=True, endpoint="chat")

    # -- the request path -----------------------------------------------------------

    def _encode_prompt(self, prompt: str | list[int]) -> list[int]:
        if isinstance(prompt, str):
            return self.tokenizer(prompt, add_special_tokens=False).input_ids
        vocab = len(self.tokenizer)
        if any(not 0 <= t < vocab for t in prompt):
            raise APIError(400, f"prompt token ids must lie in [0, {vocab})", param="prompt")
        return list(prompt)

    def _validate(self, body, prompt_ids: list[int]) -> SamplingParams:
        model_cfg = self.config.model
        if body.model != model_cfg.served_name:
            raise APIError(404, f"model {body.model!r} does not exist; this server serves {model_cfg.served_name!r}",
                           param="model", code="model_not_found")
        if not prompt_ids:
            raise APIError(400, "prompt is empty", param="prompt")
        if len(prompt_ids) > model_cfg.max_prompt_tokens:
            raise APIError(400, f"prompt has {len(prompt_ids)} tokens; the limit is {model_cfg.max_prompt_tokens}",
                           param="prompt", code="context_length_exceeded")
        max_tokens = body.max_tokens or model_cfg.default_max_tokens
        if max_tokens > model_cfg.max_output_tokens:
            raise APIError(400, f"max_tokens {max_tokens} exceeds the limit {model_cfg.max_output_tokens}",
                           param="max_tokens")
        if len(prompt_ids) + max_tokens > model_cfg.max_model_len:
            raise APIError(400, f"prompt ({len(prompt_ids)}) + max_tokens ({max_tokens}) exceeds the context length "
                                f"{model_cfg.max_model_len}", param="max_tokens", code="context_length_exceeded")
        return SamplingParams(max_tokens=max_tokens, temperature=body.temperature, seed=body.seed,
                              ignore_eos=body.ignore_eos)

    async def _serve(self, body, prompt_ids: list[int], raw: Request, chat: bool, endpoint: str):
        self.publisher.ensure_running()
        try:
            sampling = self._validate(body, prompt_ids)
        except APIError:
            self.metrics.requests.labels(endpoint, "rejected").inc()
            raise
        request = GenerateRequest(new_id("cmpl"), tuple(prompt_ids), sampling)
        self.metrics.prompt_tokens.inc(len(prompt_ids))
        events = self._run(request, body.stop, endpoint, body.stream)
        if body.stream:
            return StreamingResponse(
                self._sse(events, request, body, chat), media_type="text/event-stream",
                headers={"Cache-Control": "no-cache"},
            )
        text, finish, completion_tokens = [], None, 0
        async for piece, finish, completion_tokens in events:
            text.append(piece)
        response = completion_body(request.request_id, body.model, "".join(text), finish, chat, streaming=False)
        response["usage"] = usage(len(prompt_ids), completion_tokens)
        return response

    async def _run(self, request: GenerateRequest, stops: list[str], endpoint: str, streaming: bool
                   ) -> AsyncIterator[tuple[str, str | None, int]]:
        """Yield ``(text, finish_reason or None, completion tokens so far)``; the last item has a finish reason."""
        start = time.perf_counter()
        first_at = None
        detok = IncrementalDetokenizer(self.tokenizer, stops)
        eos = self.tokenizer.eos_token_id
        # Without stop strings, nothing can end a request early, so a non-streaming request takes
        # one unary call: no per-chunk stream messages between the decode server and here.
        chunks = self._decode_chunks(request, unary=not streaming and not stops)
        status = "error"
        tail = ""
        self.metrics.inflight.inc()
        try:
            async for tokens in chunks:
                if first_at is None:
                    first_at = time.perf_counter()
                    self.metrics.ttft.observe(first_at - start)
                hit_eos = eos is not None and eos in tokens and not request.sampling.ignore_eos
                if hit_eos:
                    tokens = tokens[: tokens.index(eos) + 1]
                text = detok.push(tokens)
                detok.stopped |= hit_eos
                if detok.stopped:
                    tail = text
                    break
                yield text, None, len(detok.token_ids)
            finish = "stop" if detok.stopped else "length"
            yield tail + detok.flush(), finish, len(detok.token_ids)
            status = "ok"
        except (asyncio.CancelledError, GeneratorExit):
            status = "cancelled"
            raise
        finally:
            await chunks.aclose()  # cancels the request on the decode (and prefill) server if still running
            self.metrics.inflight.dec()
            self.metrics.requests.labels(endpoint, status).inc()
            n = len(detok.token_ids)
            end = time.perf_counter()
            if status == "ok":
                self.metrics.latency.observe(end - start)
                self.metrics.generation_tokens.inc(n)
                if first_at is not None and n > 1:
                    self.metrics.tpot.observe((end - first_at) / (n - 1))

    async def _decode_chunks(self, request: GenerateRequest, unary: bool) -> AsyncIterator[list[int]]:
        """Token-id chunks from the decode server (in-process when fused); closing this cancels the request there."""
        if self._local is not None:
            if unary:
                yield await self._local.complete(request)
                return
            async with contextlib.aclosing(self._local.generate(request)) as stream:
                async for chunk in stream:
                    yield chunk
            return
        response = (self.decode.complete.remote(request) if unary
                    else self.decode.options(stream=True).generate.remote(request))
        finished = False
        try:
            if unary:
                yield await response
            else:
                async for chunk in response:
                    yield chunk
            finished = True
        finally:
            if not finished:
                response.cancel()

    async def _sse(self, events, request: GenerateRequest, body, chat: bool) -> AsyncIterator[str]:
        completion_tokens = 0
        if chat:
            first = completion_body(request.request_id, body.model, "", None, chat=True, streaming=True)
            yield _sse_line(first)
        async for text, finish, completion_tokens in events:
            if text or finish:
                yield _sse_line(completion_body(request.request_id, body.model, text, finish, chat, streaming=True))
        if body.include_usage:
            tail = completion_body(request.request_id, body.model, "", None, chat, streaming=True)
            tail["choices"] = []
            tail["usage"] = usage(len(request.prompt_ids), completion_tokens)
            yield _sse_line(tail)
        yield "data: [DONE]\n\n"


def _sse_line(payload: dict[str, Any]) -> str:
    return f"data: {json.dumps(payload, separators=(',', ':'))}\n\n"

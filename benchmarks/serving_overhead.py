"""How much latency Flowtide's control plane adds to a request, against the engine alone and a naive Serve app.

In one run, with the tiny model so engine time is small:
  (a) the engine called in-process (no Ray, no HTTP): the work itself;
  (b) the full path: HTTP -> DecodeServer (router fused in) -> PrefillServer -> KV hand-off -> decode -> HTTP,
      and the same with the router as its own deployment on the head (one more hop);
  (c) a naive Serve composition: HTTP -> ingress -> prefill -> decode, plain handle calls, no engine work:
      the floor a straightforward three-deployment Serve app sets. It runs twice: first on a local
      cluster of its own with Serve's defaults (its Python proxy: what a straightforward app gets),
      alone on the machine; then beside Flowtide on Flowtide's cluster behind the same HAProxy
      ingress as (b) (like for like).
One cluster runs at a time, as on a real host. Within each phase requests go down every path in
rotating order, round after round, with (a) in every round, so whatever else loads the machine
loads all alike; added latency of (b) = its latency minus (a)'s in the same round. Reports p50/p99
and sustained requests/s of short requests, as ratios against (c), and writes JSON.

    python benchmarks/serving_overhead.py --requests 300 --json results/serving_overhead.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from pathlib import Path

import orchestrator  # noqa: F401  (loopback before ray)
import httpx
import numpy as np
import ray
from fastapi import FastAPI
from ray import serve
from ray.serve.config import HTTPOptions, ProxyLocation
from rich.console import Console
from rich.progress import track
from rich.table import Table

from orchestrator.app import build_app, deploy
from orchestrator.cluster import LocalCluster, connect
from orchestrator.config import load_config
from workers.engines.base import SamplingParams
from workers.engines.transformers import TransformersEngine
from workers.tiny_model import tiny_model_path

console = Console()
PROMPT = "hello world"
MAX_TOKENS = 4

naive_api = FastAPI()


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {"pool": "decode"}})
class NaiveDecode:
    async def __call__(self, x: dict) -> dict:
        return x


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {"pool": "prefill"}})
class NaivePrefill:
    async def __call__(self, x: dict) -> dict:
        return x


@serve.deployment(ray_actor_options={"num_cpus": 0, "label_selector": {"pool": "head"}})
@serve.ingress(naive_api)
class NaiveIngress:
    def __init__(self, prefill, decode) -> None:
        self.prefill, self.decode = prefill, decode

    @naive_api.post("/v1/completions")
    async def complete(self, body: dict) -> dict:
        return await self.decode.remote(await self.prefill.remote(body))


def deploy_naive() -> None:
    """The naive composition, at /naive on the connected cluster's Serve."""
    serve.run(NaiveIngress.bind(NaivePrefill.bind(), NaiveDecode.bind()), name="naive", route_prefix="/naive")


def percentiles(xs: list[float]) -> dict[str, float]:
    return {"p50_ms": float(np.percentile(xs, 50) * 1e3), "p99_ms": float(np.percentile(xs, 99) * 1e3),
            "mean_ms": float(statistics.fmean(xs) * 1e3)}


def interleaved_latencies(model_path: str, urls: dict[str, str], body: dict, n: int) -> dict[str, list[float]]:
    """Per round, one request down each path in rotating order, so load on the machine hits all alike."""
    from transformers import AutoTokenizer

    ids = AutoTokenizer.from_pretrained(model_path)(PROMPT, add_special_tokens=False).input_ids
    engine = TransformersEngine(model_path)
    sampling = SamplingParams(max_tokens=MAX_TOKENS, ignore_eos=True)
    loop = asyncio.new_event_loop()

    def engine_call() -> None:
        async def run() -> list[int]:
            return [t async for t in engine.generate("b", ids, sampling)]

        assert len(loop.run_until_complete(run())) == MAX_TOKENS

    out: dict[str, list[float]] = {"engine": [], **{name: [] for name in urls}}
    with httpx.Client(timeout=60) as client:
        calls = {"engine": engine_call,
                 **{name: (lambda url=url: client.post(url, json=body).raise_for_status()) for name, url in urls.items()}}
        for call in calls.values():  # warm connections, replicas and the engine
            for _ in range(5):
                call()
        names = list(calls)
        for i in track(range(n), description="interleaved requests", console=console):
            for name in names[i % len(names):] + names[: i % len(names)]:
                start = time.perf_counter()
                calls[name]()
                out[name].append(time.perf_counter() - start)
    loop.run_until_complete(engine.shutdown())  # stops its batch loop before the event loop closes
    loop.close()
    return out


def throughput(url: str, body: dict, duration_s: float, concurrency: int) -> float:
    async def worker(client: httpx.AsyncClient, deadline: float) -> int:
        done = 0
        while time.perf_counter() < deadline:
            (await client.post(url, json=body)).raise_for_status()
            done += 1
        return done

    async def main() -> float:
        limits = httpx.Limits(max_connections=concurrency)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            start = time.perf_counter()
            counts = await asyncio.gather(*[worker(client, start + duration_s) for _ in range(concurrency)])
            return sum(counts) / (time.perf_counter() - start)

    return asyncio.run(main())


def start_default_serve_cluster(port: int) -> LocalCluster:
    """A second local cluster running the naive composition under Serve's default ingress (its Python proxy)."""
    config = load_config(**{"serving.http_port": port, "serving.http_proxy": "ray", "cluster.pools.train.nodes": 0})
    cluster = LocalCluster(config.cluster, serving=config.serving).start()
    connect(cluster.address)
    serve.start(proxy_location=ProxyLocation.HeadOnly, http_options=HTTPOptions(host="127.0.0.1", port=port))
    deploy_naive()
    ray.shutdown()  # the app keeps running; the driver moves on to Flowtide's cluster
    return cluster


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--throughput-s", type=float, default=15.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--port", type=int, default=8311)
    parser.add_argument("--json", default="results/serving_overhead.json")
    args = parser.parse_args()

    model_path = str(tiny_model_path())
    config = load_config(**{"serving.http_port": args.port})
    body = {"model": config.model.served_name, "prompt": PROMPT, "max_tokens": MAX_TOKENS, "ignore_eos": True}
    rps: dict[str, float] = {}
    # Phase 1: the naive composition on a cluster with Serve's defaults, alone on the machine.
    naive_url = f"http://127.0.0.1:{args.port + 1}/naive/v1/completions"
    with console.status("starting a default-Serve cluster for the naive composition"):
        cluster = start_default_serve_cluster(args.port + 1)
    try:
        naive_lat = interleaved_latencies(model_path, {"naive": naive_url}, body, args.requests)
        with console.status(f"throughput of naive, {args.concurrency} concurrent clients"):
            rps["naive"] = throughput(naive_url, body, args.throughput_s, args.concurrency)
    finally:
        cluster.shutdown()
    # Phase 2: Flowtide's cluster, alone, as an operator runs it (the naive app beside it behind the same ingress).
    try:
        with console.status(f"starting Flowtide's cluster ({config.serving.http_proxy} ingress) and deploying"):
            cluster = LocalCluster(config.cluster, serving=config.serving).start()
            connect(cluster.address)
            base = deploy(config, model_path)
            on_head = config.model_copy(deep=True)
            on_head.serving.ingress, on_head.serving.app_name = "head", "router_on_head"
            serve.run(build_app(on_head, model_path), name="router_on_head", route_prefix="/router_on_head")
            deploy_naive()
        urls = {"flowtide": f"{base}/v1/completions", "router_on_head": f"{base}/router_on_head/v1/completions",
                "naive_same_ingress": f"{base}/naive/v1/completions"}
        lat = interleaved_latencies(model_path, urls, body, args.requests)
        for name in ("flowtide", "naive_same_ingress"):
            with console.status(f"throughput of {name}, {args.concurrency} concurrent clients"):
                rps[name] = throughput(urls[name], body, args.throughput_s, args.concurrency)
    finally:
        if ray.is_initialized():
            serve.shutdown()
        cluster.shutdown()

    engine, ours, naive = lat["engine"], lat["flowtide"], naive_lat["naive"]
    added = [max(0.0, b - a) for a, b in zip(engine, ours)]  # same round, same load
    added_head = [max(0.0, b - a) for a, b in zip(engine, lat["router_on_head"])]
    result = {
        "machine": "2 cores (shared), no GPU",
        "model": "embedded tiny Llama", "prompt": PROMPT, "max_tokens": MAX_TOKENS, "requests": args.requests,
        "http_proxy": config.serving.http_proxy,
        "engine_in_process": percentiles(engine),
        "engine_in_process_naive_phase": percentiles(naive_lat["engine"]),
        "flowtide_full_path": percentiles(ours),
        "flowtide_added": percentiles(added),
        "router_on_head_full_path": percentiles(lat["router_on_head"]),
        "router_on_head_added": percentiles(added_head),
        "naive_serve_composition": percentiles(naive),
        "naive_same_ingress": percentiles(lat["naive_same_ingress"]),
        "throughput_rps": {**rps, "concurrency": args.concurrency},
    }
    naive_p50 = result["naive_serve_composition"]["p50_ms"]
    result["ratios"] = {
        "added_p50_vs_naive_p50": result["flowtide_added"]["p50_ms"] / naive_p50,
        "added_p99_vs_naive_p99": result["flowtide_added"]["p99_ms"] / result["naive_serve_composition"]["p99_ms"],
        "added_p50_vs_naive_same_ingress_p50":
            result["flowtide_added"]["p50_ms"] / result["naive_same_ingress"]["p50_ms"],
        "router_on_head_added_p50_vs_naive_p50": result["router_on_head_added"]["p50_ms"] / naive_p50,
        "throughput_vs_naive": rps["flowtide"] / rps["naive"],
        "throughput_vs_naive_same_ingress": rps["flowtide"] / rps["naive_same_ingress"],
    }
    result["targets"] = {
        "added_p50_le_0.8x_naive": result["ratios"]["added_p50_vs_naive_p50"] <= 0.8,
        "added_p99_le_30ms": result["flowtide_added"]["p99_ms"] <= 30.0,
        "throughput_ge_50rps": rps["flowtide"] >= 50.0,
    }

    table = Table(title="serving overhead (ms per request, sequential)")
    for col in ("path", "p50", "p99", "mean"):
        table.add_column(col)
    for key in ("engine_in_process_naive_phase", "engine_in_process", "flowtide_full_path", "flowtide_added",
                "router_on_head_full_path", "router_on_head_added", "naive_serve_composition", "naive_same_ingress"):
        r = result[key]
        table.add_row(key, f"{r['p50_ms']:.1f}", f"{r['p99_ms']:.1f}", f"{r['mean_ms']:.1f}")
    console.print(table)
    console.print(f"throughput ({args.concurrency} clients): "
                  + ", ".join(f"{name} {value:.1f} req/s" for name, value in rps.items()))
    console.print(f"ratios: {json.dumps(result['ratios'], indent=None)}")
    console.print(f"targets met: {result['targets']}")
    for path in {Path(args.json), Path("results/serving_overhead.json")}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2))
    console.print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

"""One real local multi-pool Ray cluster per test session, with the disaggregated and colocated apps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from tests.conftest import free_port


@dataclass
class Service:
    cluster: object
    base_url: str  # disaggregated, router fused into the decode replicas
    colocated_url: str  # colocated, separate Router deployment on the head
    config: object


@pytest.fixture(scope="session")
def service(tiny_model_dir):
    from ray import serve

    from orchestrator.app import build_app, deploy
    from orchestrator.cluster import LocalCluster, connect
    from orchestrator.config import load_config

    config = load_config(**{"serving.http_port": free_port(), "model.max_output_tokens": 2000})
    cluster = LocalCluster(config.cluster, serving=config.serving).start()
    try:
        connect(cluster.address)
        base = deploy(config, tiny_model_dir)
        colocated = config.model_copy(deep=True)
        colocated.serving.mode = "colocated"
        colocated.serving.app_name = "colocated"
        colocated.serving.route_prefix = "/colocated"
        colocated.serving.ingress = "head"  # the separate Router deployment, so both topologies are tested
        serve.run(build_app(colocated, tiny_model_dir), name="colocated", route_prefix="/colocated")
        yield Service(cluster, base, f"{base}/colocated", config)
    finally:
        try:
            serve.shutdown()
        finally:
            cluster.shutdown()


@pytest.fixture(scope="session")
def reference(tiny_model_dir):
    """Greedy continuations of the tiny model from a direct transformers ``generate``: the ground truth."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)

    def generate(prompt: str, n: int) -> str:
        ids = tok(prompt, add_special_tokens=False).input_ids
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=None, pad_token_id=tok.pad_token_id)
        return tok.decode(out[0, len(ids):], skip_special_tokens=True)

    return generate

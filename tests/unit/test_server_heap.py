"""A server hides its start-up heap from the garbage collector (a full collection over it stalls requests)."""

from __future__ import annotations

import gc

from workers.servers import LLMServer


def test_server_freezes_its_start_up_heap(tiny_model_dir):
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    server = LLMServer("colocated", "transformers", tiny_model_dir)
    try:
        assert gc.get_freeze_count() > 50_000  # torch's, transformers' and the model's objects
        collected = {id(o) for o in gc.get_objects()}  # what a collection would still walk
        assert id(server) not in collected and id(server.engine.model) not in collected
    finally:
        gc.unfreeze()

"""Incremental detokenization and stop strings, against the tokenizer's own full decode."""

import re

import pytest
from transformers import AutoTokenizer

from orchestrator.detokenize import IncrementalDetokenizer


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def stream(tok, ids, stops, chunk):
    d = IncrementalDetokenizer(tok, stops)
    out = ""
    for i in range(0, len(ids), chunk):
        out += d.push(ids[i : i + chunk])
        if d.stopped:
            break
    return out + d.flush(), d


@pytest.mark.parametrize("chunk", [1, 2, 5])
def test_streamed_text_equals_full_decode_including_split_characters(tok, chunk):
    ids = tok("héllo wörld ✓ — done", add_special_tokens=False).input_ids + list(range(3, 40))
    out, d = stream(tok, ids, [], chunk)
    assert out == tok.decode(ids, skip_special_tokens=True)
    assert not d.stopped


@pytest.mark.parametrize("chunk", [1, 3, 7])
def test_stop_string_is_never_sent_and_text_ends_before_it(tok, chunk):
    ids = list(range(3, 200))
    full = tok.decode(ids, skip_special_tokens=True)
    stop = re.findall(r"[a-z]{3}", full[20:])[0]
    out, d = stream(tok, ids, [stop, "zzzzqq"], chunk)
    assert d.stopped
    assert out == full[: full.find(stop)]


def test_multibyte_character_is_held_until_complete(tok):
    ids = tok("✓", add_special_tokens=False).input_ids
    assert len(ids) > 1, "the check needs a character split across tokens"
    d = IncrementalDetokenizer(tok, [])
    assert d.push(ids[:1]) == ""
    assert d.push(ids[1:]) + d.flush() == "✓"

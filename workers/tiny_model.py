"""The embedded default model: a tiny Llama with seeded random weights and a locally trained tokenizer.

Nothing can be downloaded at run time, so the first run builds a real Hugging Face
checkpoint directory (config, safetensors, tokenizer.json, chat template) and caches it;
every later run, and every engine (built-in or vLLM), loads it like any local checkpoint.
The build is deterministic: same seed, same corpus, same files.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import fcntl

TINY_MODEL_VERSION = "tiny-llama-v2"
CACHE_DIR_ENV = "FLOWTIDE_CACHE_DIR"
SEED = 0
SPECIAL_TOKENS = ("<|pad|>", "<|bos|>", "<|eos|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>{{ message['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
# Words for the tokenizer's training corpus: enough to learn merges for common English and code.
_WORDS = (
    "the of and to in is was for on that with as by at from it an be this are or his have not which but had "
    "they were one all their has been would there can more when will other if about into time only new some "
    "could these two may first then do any like my now over such our man me even most made after also did many "
    "before must through back years where much your way well down should because each just those people how too "
    "little state good very make world still own see men work long get here between both life being under never "
    "day same another know while last might us great old year off come since against go came right used take "
    "three cluster serve ray prefill decode token model request latency gpu power train peer node pool queue batch "
    "def return import class self print for while if else elif try except with lambda yield async await none true "
    "false hello world what why how who answer question please thank you tell me story write code python"
).split()


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_DIR_ENV, Path.home() / ".cache" / "flowtide"))


def tiny_model_path() -> Path:
    """The cached checkpoint directory, built on first use (safe under concurrent callers)."""
    target = cache_root() / "models" / TINY_MODEL_VERSION
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{TINY_MODEL_VERSION}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (target / "config.json").exists():
            with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
                build_tiny_model(Path(tmp) / "model")
                shutil.rmtree(target, ignore_errors=True)
                os.replace(Path(tmp) / "model", target)
    return target


def _corpus(lines: int = 4000) -> list[str]:
    import random

    rng = random.Random(SEED)
    return [" ".join(rng.choice(_WORDS) for _ in range(rng.randint(4, 16))) for _ in range(lines)]


def build_tokenizer(out_dir: Path, vocab_size: int = 1024):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<|pad|>", bos_token="<|bos|>", eos_token="<|eos|>"
    )
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_tiny_model(out_dir: Path) -> Path:
    """Write a tiny Llama checkpoint to ``out_dir``: 2 layers, hidden 64, ~1k vocab."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(out_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        # Head size 32: the smallest vLLM's CPU attention kernels accept (16 is refused).
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        # Peaked logits: greedy choices have wide margins, so batched and single-sequence
        # decoding agree despite float rounding.
        initializer_range=0.25,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
        torch_dtype="float32",
    )
    torch.manual_seed(SEED)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir, safe_serialization=True)
    return out_dir

"""Tiny models and synthetic samples shared by the trainer tests (no tests of its own)."""

from __future__ import annotations

import random
from pathlib import Path

import torch

TINY_VOCAB = 96
TINY_EOS = 2
TINY_MAX_POSITIONS = 256
TEST_THREADS = 1


def tiny_llama(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.set_num_threads(TEST_THREADS)
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=TINY_VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=TINY_MAX_POSITIONS,
                         bos_token_id=1, eos_token_id=TINY_EOS, pad_token_id=0, tie_word_embeddings=False,
                         initializer_range=0.3)   # big enough that logits can move past the final norm
    return LlamaForCausalLM(config)


def save_tiny_llama(folder: Path, seed: int = 0) -> Path:
    """A tokenizer-less model folder, the way a from-scratch test model is saved."""
    tiny_llama(seed).save_pretrained(folder)
    return folder


def synthetic_samples(count: int, *, seed: int = 0, min_len: int = 3, max_len: int = 24) -> list[dict]:
    """Pull-API-shaped samples; about half end with EOS already (stopped), the rest do not (length)."""
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        prompt = [rng.randrange(3, TINY_VOCAB) for _ in range(rng.randint(min_len, max_len))]
        completion = [rng.randrange(3, TINY_VOCAB) for _ in range(rng.randint(min_len, max_len))]
        stopped = index % 2 == 0
        if stopped:
            completion.append(TINY_EOS)
        samples.append({"cursor": 10 * (index + 1), "prompt_id": f"p{index}", "sample_index": 0,
                        "prompt": "", "completion": "", "prompt_token_ids": prompt,
                        "completion_token_ids": completion, "num_tokens": len(completion),
                        "finish_reason": "stop" if stopped else "length", "kept": True})
    return samples

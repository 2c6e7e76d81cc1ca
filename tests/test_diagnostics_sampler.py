"""The reference sampler: vLLM's distribution, the pull API's shape, and a correct KV cache."""

from __future__ import annotations

import pytest
import torch

from diagnostics.truncation import truncated_distribution
from tests.reference_sampler import SamplingParams, next_token, sample

torch.set_num_threads(1)
VOCAB, EOS = 24, 2
PULL_API_FIELDS = {"cursor", "prompt_id", "sample_index", "prompt", "completion", "prompt_token_ids",
                   "completion_token_ids", "num_tokens", "finish_reason", "kept", "filter_reason",
                   "adapter", "created_at"}


@pytest.fixture(scope="module")
def model():
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64,
                         eos_token_id=EOS)
    return LlamaForCausalLM(config).eval()


def _greedy_without_cache(model, prompt: list[int], steps: int) -> list[int]:
    tokens = list(prompt)
    with torch.inference_mode():
        for _ in range(steps):
            tokens.append(int(model(input_ids=torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt):]


def test_greedy_with_cache_and_left_padding_matches_a_plain_recompute(model):
    prompts = [[5, 6, 7, 8], [9], [3, 4]]        # different lengths: exercises left padding
    params = SamplingParams(temperature=0.0, max_tokens=6)
    samples = sample(model, prompts, params)
    for prompt, got in zip(prompts, samples):
        assert got["completion_token_ids"] == _greedy_without_cache(model, prompt, 6)


def test_samples_have_the_pull_api_shape_and_stop_on_eos(model):
    params = SamplingParams(n=3, temperature=2.0, max_tokens=12, seed=7, stop_token_ids=[EOS])
    samples = sample(model, [[5, 6], [7]], params, prompt_ids=["a", "b"])
    assert [s["cursor"] for s in samples] == list(range(1, 7))
    assert [(s["prompt_id"], s["sample_index"]) for s in samples][:3] == [("a", 0), ("a", 1), ("a", 2)]
    for s in samples:
        assert set(s) == PULL_API_FIELDS
        assert s["num_tokens"] == len(s["completion_token_ids"])
        ended_on_eos = s["completion_token_ids"][-1] == EOS
        assert s["finish_reason"] == ("stop" if ended_on_eos else "length")
        assert EOS not in s["completion_token_ids"][:-1]


def test_sampling_is_deterministic_for_a_seed(model):
    params = SamplingParams(n=2, temperature=1.5, top_k=5, top_p=0.9, max_tokens=8, seed=3)
    assert ([s["completion_token_ids"] for s in sample(model, [[1, 2]], params)]
            == [s["completion_token_ids"] for s in sample(model, [[1, 2]], params)])


def test_next_token_draws_from_the_truncated_distribution():
    logits = torch.tensor([[2.0, 1.5, 1.0, 0.0, -1.0, -3.0]]).repeat(20_000, 1)
    params = SamplingParams(temperature=1.6, top_k=4, top_p=0.8)
    drawn = next_token(logits, params, torch.Generator().manual_seed(0))
    frequencies = torch.bincount(drawn, minlength=6).float() / drawn.numel()
    expected = truncated_distribution(logits[:1], 1.6, 4, 0.8)[0]
    assert torch.allclose(frequencies, expected, atol=0.015)
    assert frequencies[expected == 0].sum() == 0      # nothing outside S, ever


@pytest.mark.parametrize("field,value", [("top_p", 0.0), ("top_k", 0), ("temperature", -1.0), ("n", 0)])
def test_bad_params_are_rejected_by_name(field, value):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**{field: value})

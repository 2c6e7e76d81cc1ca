"""A reference sampler for HF causal LMs that vLLM cannot load (tiny models built inside tests).

The production path samples with vLLM through the sampling service. This sampler exists so that the
mechanism test can run SSD end to end on a from-scratch model: it draws from exactly the
distribution vLLM draws from (temperature, then min-p, top-k, top-p, via `diagnostics.truncation`,
which follows vLLM's semantics) and returns samples in the pull API's shape (docs/api.md), so the
trainer consumes them exactly as it consumes the service's samples.

Differences from vLLM that do not change the distribution: one torch.Generator seeded once per call
draws every token (vLLM seeds per request), and no penalties or stop strings are supported.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from common.protocol import DEFAULT_MAX_N as MAX_N
from common.protocol import MAX_TEMPERATURE, MIN_P_DISABLED, TOP_K_DISABLED, TOP_P_DISABLED
from diagnostics.truncation import GREEDY_TEMPERATURE, truncated_distribution

DEFAULT_BATCH_SIZE = 64
DEFAULT_MAX_TOKENS = 256           # a model with no context limit of its own: a bound for the tests


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_k: int = TOP_K_DISABLED
    top_p: float = TOP_P_DISABLED
    min_p: float = MIN_P_DISABLED
    max_tokens: int = DEFAULT_MAX_TOKENS
    seed: int = 0
    stop_token_ids: Sequence[int] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        _require(1 <= self.n <= MAX_N, "n", f"must be in [1, {MAX_N}]", self.n)
        _require(0 <= self.temperature <= MAX_TEMPERATURE, "temperature", f"must be in [0, {MAX_TEMPERATURE}]",
                 self.temperature)
        _require(self.top_k == TOP_K_DISABLED or self.top_k >= 1, "top_k", "must be -1 (off) or >= 1", self.top_k)
        _require(0 < self.top_p <= 1, "top_p", "must be in (0, 1]", self.top_p)
        _require(0 <= self.min_p <= 1, "min_p", "must be in [0, 1]", self.min_p)
        _require(self.max_tokens >= 1, "max_tokens", "must be >= 1", self.max_tokens)
        _require(self.seed >= 0, "seed", "must be >= 0", self.seed)


def _require(ok: bool, name: str, rule: str, value: Any) -> None:
    if not ok:
        raise ValueError(f"{name} {rule}, got {value!r}")


def next_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """One token per row of logits [B, V], drawn as vLLM would draw it."""
    if params.temperature < GREEDY_TEMPERATURE:
        return logits.argmax(dim=-1)
    probs = truncated_distribution(logits, params.temperature, params.top_k, params.top_p, params.min_p)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _left_padded(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Left padding lines up every prompt's last token, so one step extends all rows at once.
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(list(prompt), dtype=torch.long)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _positions(mask: torch.Tensor) -> torch.Tensor:
    return (mask.cumsum(dim=-1) - 1).clamp_min(0)


@torch.inference_mode()
def _generate_batch(model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams,
                    generator: torch.Generator) -> list[tuple[list[int], str]]:
    """Completion token ids (EOS included when hit) and finish reason, per prompt."""
    ids, mask = _left_padded(prompts, pad_id=0)
    out = model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=True)
    cache, logits = out.past_key_values, out.logits[:, -1, :].float()
    completions: list[list[int]] = [[] for _ in prompts]
    finished = torch.zeros(len(prompts), dtype=torch.bool)
    stop_ids = torch.tensor(list(params.stop_token_ids), dtype=torch.long)
    for _ in range(params.max_tokens):
        tokens = next_token(logits, params, generator)
        for row in torch.nonzero(~finished).flatten().tolist():
            completions[row].append(int(tokens[row]))
        finished |= torch.isin(tokens, stop_ids)
        if bool(finished.all()):
            break
        mask = torch.cat([mask, torch.ones((len(prompts), 1), dtype=torch.long)], dim=-1)
        out = model(input_ids=tokens.unsqueeze(-1), attention_mask=mask, past_key_values=cache,
                    position_ids=_positions(mask)[:, -1:], use_cache=True)
        cache, logits = out.past_key_values, out.logits[:, -1, :].float()
    return [(c, "stop" if c and c[-1] in params.stop_token_ids else "length") for c in completions]


def _sample_dict(cursor: int, prompt_id: str, index: int, prompt_ids: Sequence[int], completion: list[int],
                 finish_reason: str, tokenizer: Any | None) -> dict[str, Any]:
    decode = tokenizer.decode if tokenizer is not None else (lambda ids: " ".join(map(str, ids)))
    return {
        "cursor": cursor, "prompt_id": prompt_id, "sample_index": index,
        "prompt": decode(list(prompt_ids)), "completion": decode(completion),
        "prompt_token_ids": list(prompt_ids), "completion_token_ids": completion,
        "num_tokens": len(completion), "finish_reason": finish_reason,
        "kept": True, "filter_reason": None, "adapter": None, "created_at": time.time(),
    }


def sample(model: torch.nn.Module, prompts: Sequence[Sequence[int]], params: SamplingParams, *,
           prompt_ids: Sequence[str] | None = None, tokenizer: Any | None = None,
           batch_size: int = DEFAULT_BATCH_SIZE) -> list[dict[str, Any]]:
    """`params.n` completions per prompt, as pull-API sample dicts with cursors 1, 2, ...

    Deterministic for a given (model, prompts, params, batch_size): one generator seeded with
    `params.seed` draws all tokens in order.
    """
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    prompt_ids = list(prompt_ids) if prompt_ids is not None else [f"p{i}" for i in range(len(prompts))]
    generator = torch.Generator().manual_seed(params.seed)
    jobs = [(pid, index, list(p)) for pid, p in zip(prompt_ids, prompts) for index in range(params.n)]
    samples = []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        results = _generate_batch(model.eval(), [p for _, _, p in chunk], params, generator)
        for (pid, index, prompt), (completion, reason) in zip(chunk, results):
            samples.append(_sample_dict(len(samples) + 1, pid, index, prompt, completion, reason, tokenizer))
    return samples

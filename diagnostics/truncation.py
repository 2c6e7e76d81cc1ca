"""Temperature, top-k, top-p and min-p with vLLM's semantics, as one shared function.

The sampling service samples with vLLM; the diagnostics must compute the *same* truncation support
S that those samples were drawn from, and the reference sampler (used only where vLLM cannot load a
model, e.g. tiny test models) must draw from the same distribution. So all three use this module.

vLLM's order (v1 `Sampler.sample` and `apply_top_k_top_p`):
  1. temperature: logits / T (T below GREEDY_TEMPERATURE means greedy argmax);
  2. min-p: drop tokens whose probability is below min_p * (top probability);
  3. top-k: sort ascending, keep every token whose logit is >= the k-th largest logit (ties are
     kept, so S may hold more than k tokens);
  4. top-p: on the softmax of what top-k kept, sorted ascending, drop each token whose cumulative
     probability (itself included) is <= 1 - top_p; the most likely token is always kept.
"""

from __future__ import annotations

import torch

from common.protocol import MIN_P_DISABLED, TOP_K_DISABLED, TOP_P_DISABLED

GREEDY_TEMPERATURE = 1e-5   # vLLM's _SAMPLING_EPS: below this a request is greedy


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Logits divided by T, in float32. Greedy (T ~ 0) callers should use argmax instead."""
    if temperature < GREEDY_TEMPERATURE:
        raise ValueError(f"temperature {temperature} means greedy decoding; there is no distribution to scale")
    return logits.float() / temperature


def truncation_mask(logits: torch.Tensor, temperature: float, top_k: int = TOP_K_DISABLED,
                    top_p: float = TOP_P_DISABLED, min_p: float = MIN_P_DISABLED) -> torch.Tensor:
    """Boolean mask [..., V]: True for the tokens vLLM could sample (the truncation support S)."""
    if temperature < GREEDY_TEMPERATURE:
        return _argmax_mask(logits)
    scaled = apply_temperature(logits, temperature)
    keep = torch.ones_like(scaled, dtype=torch.bool)
    if min_p > MIN_P_DISABLED:
        keep &= _min_p_keep(scaled, min_p)
    scaled = scaled.masked_fill(~keep, float("-inf"))
    if top_k not in (TOP_K_DISABLED, 0) and top_k < scaled.shape[-1]:
        keep &= _top_k_keep(scaled, top_k)
        scaled = scaled.masked_fill(~keep, float("-inf"))
    if top_p < TOP_P_DISABLED:
        keep &= _top_p_keep(scaled, top_p)
    return keep


def truncated_distribution(logits: torch.Tensor, temperature: float, top_k: int = TOP_K_DISABLED,
                           top_p: float = TOP_P_DISABLED, min_p: float = MIN_P_DISABLED) -> torch.Tensor:
    """The distribution vLLM samples from: softmax(logits / T) restricted to S and renormalised."""
    if temperature < GREEDY_TEMPERATURE:
        return _argmax_mask(logits).float()
    keep = truncation_mask(logits, temperature, top_k, top_p, min_p)
    scaled = apply_temperature(logits, temperature).masked_fill(~keep, float("-inf"))
    return torch.softmax(scaled, dim=-1)


def _argmax_mask(logits: torch.Tensor) -> torch.Tensor:
    mask = torch.zeros_like(logits, dtype=torch.bool)
    return mask.scatter_(-1, logits.argmax(dim=-1, keepdim=True), True)


def _min_p_keep(scaled: torch.Tensor, min_p: float) -> torch.Tensor:
    probs = torch.softmax(scaled, dim=-1)
    return probs >= min_p * probs.amax(dim=-1, keepdim=True)


def _top_k_keep(scaled: torch.Tensor, top_k: int) -> torch.Tensor:
    kth_largest = scaled.topk(top_k, dim=-1).values[..., -1:]
    return scaled >= kth_largest


def _top_p_keep(scaled: torch.Tensor, top_p: float) -> torch.Tensor:
    sorted_logits, order = scaled.sort(dim=-1, descending=False)
    cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
    drop_sorted = cumulative <= 1.0 - top_p
    drop_sorted[..., -1] = False  # the most likely token always survives
    drop = torch.zeros_like(drop_sorted).scatter_(-1, order, drop_sorted)
    return ~drop

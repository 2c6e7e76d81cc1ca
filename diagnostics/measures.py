"""Per-position measures of a next-token distribution, and the seed's loss decomposition.

Every function takes tensors shaped [N, V] (N positions, V vocabulary) and returns [N]. They are
pure, so the unit tests can check them on hand-made distributions. The formulas are written out,
with the reasoning, in docs/diagnostics.md.

Notation: p is the base model's distribution at temperature 1, S the truncation support that SSD's
sampler used (T_train, top-k, top-p, computed from p), K = p(S) the kept mass, and
pi = p^(1/T) restricted to S and renormalised: exactly the distribution SSD's samples come from.
"""

from __future__ import annotations

import torch

# Probabilities are clamped here before a log: a token with p = 0 contributes 0 * log 0 = 0 anyway,
# and float32 softmax never returns exact zeros for finite logits, so this only guards -inf logits.
LOG_FLOOR = 1e-30
# Rényi entropy of order a has a removable singularity at a = 1 (it becomes Shannon entropy).
RENYI_ORDER_ONE_TOLERANCE = 1e-6


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy in nats."""
    return -(probs * probs.clamp_min(LOG_FLOOR).log()).sum(dim=-1)


def top1_prob(probs: torch.Tensor) -> torch.Tensor:
    return probs.amax(dim=-1)


def mass_outside(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Probability mass on tokens where `keep` is False (the distractor tail)."""
    return (probs * (~keep)).sum(dim=-1)


def mass_outside_token(probs: torch.Tensor, token_ids: torch.Tensor) -> torch.Tensor:
    """1 - probs[token]: the tail mass outside one chosen token (the lock's correct token)."""
    return 1.0 - probs.gather(-1, token_ids.unsqueeze(-1)).squeeze(-1)


def restrict(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """probs restricted to `keep` and renormalised (p|S)."""
    kept = probs * keep
    return kept / kept.sum(dim=-1, keepdim=True).clamp_min(LOG_FLOOR)


def renyi_entropy(probs: torch.Tensor, order: float) -> torch.Tensor:
    """H_a(p) = log(sum p^a) / (1 - a); Shannon entropy at a = 1."""
    if abs(order - 1.0) < RENYI_ORDER_ONE_TOLERANCE:
        return entropy(probs)
    log_probs = probs.clamp_min(LOG_FLOOR).log()
    # logsumexp(a * log p) over tokens with p > 0; zero-probability tokens add nothing to sum p^a.
    weighted = (order * log_probs).masked_fill(probs <= 0, float("-inf"))
    return torch.logsumexp(weighted, dim=-1) / (1.0 - order)


def kl_divergence(q: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """D_KL(q || p) in nats; tokens with q = 0 contribute nothing."""
    ratio = q.clamp_min(LOG_FLOOR).log() - p.clamp_min(LOG_FLOOR).log()
    return (q * ratio).masked_fill(q <= 0, 0.0).sum(dim=-1)


def tempered_on_support(probs: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """pi = p^(1/T) restricted to S, renormalised: the distribution SSD's sampler draws from."""
    log_probs = probs.clamp_min(LOG_FLOOR).log() / temperature
    return torch.softmax(log_probs.masked_fill(~keep, float("-inf")), dim=-1)


# -- the seed's decomposition ------------------------------------------------------------------

def support_compression(probs: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """-log KeptMass = -log p(S): the loss a model with distribution p pays just because SSD's
    samples never leave S. Zero when S holds all of p's mass."""
    return -(probs * keep).sum(dim=-1).clamp_min(LOG_FLOOR).log()


def head_reshaping(probs: torch.Tensor, keep: torch.Tensor, temperature: float) -> torch.Tensor:
    """(1 - T) * H_{1/T}(p|S): the Rényi entropy of order 1/T of the retained head, scaled.
    Zero when S holds one token; for T > 1 it is negative and largest in size on a flat head."""
    return (1.0 - temperature) * renyi_entropy(restrict(probs, keep), 1.0 / temperature)


def kl_anchor(model_probs: torch.Tensor, teacher_probs: torch.Tensor, keep: torch.Tensor,
              temperature: float) -> torch.Tensor:
    """D_KL(q|S || pi): how far a model's head on S (q restricted to S) is from the training target
    pi built from the teacher p. Zero when q's head already equals the target."""
    target = tempered_on_support(teacher_probs, keep, temperature)
    return kl_divergence(restrict(model_probs, keep), target)


def free_energy(model_probs: torch.Tensor, teacher_probs: torch.Tensor, keep: torch.Tensor,
                temperature: float) -> torch.Tensor:
    """E_{v~q|S}[-log p(v)] - T * H(q|S): the left side of the exact identity

        free_energy = support_compression + head_reshaping + T * kl_anchor

    (derivation in docs/diagnostics.md). Used by the tests to check the three terms add up."""
    head = restrict(model_probs, keep)
    cross = -(head * teacher_probs.clamp_min(LOG_FLOOR).log()).masked_fill(head <= 0, 0.0).sum(dim=-1)
    return cross - temperature * entropy(head)

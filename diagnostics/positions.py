"""Per-position next-token distributions of the base and the SSD model on held-out samples.

For each sample (prompt token ids + completion token ids, as the pull API returns them) we run one
teacher-forced forward pass per model, float32, no grad, and read the distribution that predicts
each completion token. Only small per-position numbers are kept (see `PositionTable`): the full
[positions x vocabulary] tensors of a real model would not fit in memory.

The SSD model is either the base plus a peft LoRA adapter (one model in memory; the base's
distributions come from the same weights with the adapter disabled) or any second HF causal LM.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics import measures
from diagnostics.config import AnalysisConfig
from diagnostics.truncation import truncation_mask

log = logging.getLogger(__name__)

BYTES_PER_FLOAT32 = 4
LOGIT_COPIES_PER_POSITION = 6   # logits of two models plus softmax/sort temporaries, per position


# -- input samples -----------------------------------------------------------------------------

@dataclass(frozen=True)
class HeldOutSample:
    """One sample reduced to what the diagnostics need."""
    sample_id: str
    prompt_token_ids: tuple[int, ...]
    completion_token_ids: tuple[int, ...]


def parse_sample(raw: Mapping[str, Any], fallback_id: str) -> HeldOutSample:
    """Read a pull-API sample dict (docs/api.md); only the two token-id lists are required."""
    for key in ("prompt_token_ids", "completion_token_ids"):
        value = raw.get(key)
        if not isinstance(value, list) or not all(isinstance(t, int) and t >= 0 for t in value):
            raise ValueError(f"sample {fallback_id}: {key!r} must be a list of non-negative ints")
    sample_id = raw.get("cursor", raw.get("prompt_id", fallback_id))
    if "prompt_id" in raw and "sample_index" in raw:
        sample_id = f"{raw['prompt_id']}#{raw['sample_index']}"
    return HeldOutSample(str(sample_id), tuple(raw["prompt_token_ids"]), tuple(raw["completion_token_ids"]))


def select_samples(raw_samples: Iterable[Mapping[str, Any]], max_samples: int) -> list[HeldOutSample]:
    """The first `max_samples` kept samples with at least one completion token."""
    chosen = []
    for index, raw in enumerate(raw_samples):
        if raw.get("kept", True) is False:
            continue  # filtered by the job's ml-ssd filters; the pull API hides these by default too
        sample = parse_sample(raw, fallback_id=str(index))
        if sample.completion_token_ids:
            chosen.append(sample)
        if len(chosen) >= max_samples:
            break
    return chosen


# -- the two models ----------------------------------------------------------------------------

class ModelPair:
    """Gives base and SSD logits for a batch. With an adapter, both come from one PeftModel."""

    def __init__(self, base: torch.nn.Module, ssd: torch.nn.Module | None = None):
        self.base = base.eval()
        self.ssd = ssd.eval() if ssd is not None else None
        self._uses_adapter = ssd is None
        if self._uses_adapter and not hasattr(base, "disable_adapter"):
            raise ValueError("without a second model, `base` must be a peft model holding the SSD adapter")

    @property
    def vocab_size(self) -> int:
        return int(self.base.get_output_embeddings().weight.shape[0])  # type: ignore[operator]

    @property
    def context_length(self) -> int | None:
        return getattr(self.base.config, "max_position_embeddings", None)

    def base_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        context = self.base.disable_adapter() if self._uses_adapter else nullcontext()  # type: ignore[operator]
        with context:
            return _forward(self.base, input_ids, attention_mask)

    def ssd_logits(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return _forward(self.ssd if self.ssd is not None else self.base, input_ids, attention_mask)


def _forward(model: torch.nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()


def load_causal_lm(name_or_path: str | Path) -> torch.nn.Module:
    """An HF causal LM in float32 (`demo` resolves to the bundled demo model)."""
    from transformers import AutoModelForCausalLM

    from common.models import resolve_model
    return AutoModelForCausalLM.from_pretrained(resolve_model(str(name_or_path)), dtype=torch.float32).eval()


def load_adapted_lm(name_or_path: str | Path, adapter_dir: str | Path) -> torch.nn.Module:
    """The base model with a LoRA adapter merged in: an SSD round's model as a plain module (the
    base of the next round's comparison)."""
    from peft import PeftModel

    return PeftModel.from_pretrained(load_causal_lm(name_or_path), str(adapter_dir)).merge_and_unload().eval()


def load_model_pair(base_model: str | Path | torch.nn.Module, adapter: str | Path | None = None,
                    ssd_model: str | Path | torch.nn.Module | None = None) -> ModelPair:
    """Exactly one of `adapter` (a peft LoRA folder) and `ssd_model` names the SSD model."""
    if (adapter is None) == (ssd_model is None):
        raise ValueError("give exactly one of adapter (a LoRA folder) and ssd_model (a second model)")
    base = base_model if isinstance(base_model, torch.nn.Module) else load_causal_lm(base_model)
    if adapter is not None:
        from peft import PeftModel
        return ModelPair(PeftModel.from_pretrained(base, str(adapter)).eval())
    assert ssd_model is not None
    ssd = ssd_model if isinstance(ssd_model, torch.nn.Module) else load_causal_lm(ssd_model)
    return ModelPair(base, ssd)


# -- per-position results ----------------------------------------------------------------------

@dataclass
class PositionTable:
    """One row per scored completion position. `base_*` is before SSD, `ssd_*` after.

    Distribution measures (top1, entropy, tails) are at `settings.t_eval`; the decomposition
    terms use the models' temperature-1 distributions and the support S (see docs/diagnostics.md).
    """
    sample_id: np.ndarray            # [N] str
    completion_index: np.ndarray     # [N] position inside the completion
    token_id: np.ndarray             # [N] the token the sample actually has there
    support_size: np.ndarray         # [N] |S|
    base_top1: np.ndarray
    ssd_top1: np.ndarray
    base_entropy: np.ndarray
    ssd_entropy: np.ndarray
    base_head_entropy: np.ndarray    # entropy of the distribution restricted to S (spread among survivors)
    ssd_head_entropy: np.ndarray
    base_lock_tail: np.ndarray       # mass outside the base's top-1 token
    ssd_lock_tail: np.ndarray        # SSD mass outside that same token
    base_fork_tail: np.ndarray       # mass outside S
    ssd_fork_tail: np.ndarray
    base_compression: np.ndarray     # -log p(S)
    ssd_compression: np.ndarray      # -log q(S)
    base_head: np.ndarray            # (1 - T_train) H_{1/T_train}(p|S)
    ssd_head: np.ndarray             # the same for q
    base_kl: np.ndarray              # D_KL(p|S || pi)
    ssd_kl: np.ndarray               # D_KL(q|S || pi)
    base_top_ids: np.ndarray         # [N, k] base's top tokens
    base_top_probs: np.ndarray       # [N, k] their base probabilities
    ssd_probs_at_base_top: np.ndarray  # [N, k] SSD probabilities of those same tokens
    ssd_top_ids: np.ndarray
    ssd_top_probs: np.ndarray
    base_probs_at_ssd_top: np.ndarray

    def __len__(self) -> int:
        return int(self.token_id.shape[0])

    @classmethod
    def concat(cls, parts: Sequence[dict[str, np.ndarray]]) -> PositionTable:
        names = [f.name for f in dataclasses.fields(cls)]
        if not parts:
            return cls(**{n: np.zeros((0,), dtype=np.float32) for n in names})
        return cls(**{n: np.concatenate([part[n] for part in parts]) for n in names})


def measure_positions(base_logits: torch.Tensor, ssd_logits: torch.Tensor,
                      settings: AnalysisConfig) -> dict[str, torch.Tensor]:
    """All per-position measures for logits [N, V] of the two models at the same positions."""
    base_t = torch.softmax(base_logits / settings.t_eval, dim=-1)
    ssd_t = torch.softmax(ssd_logits / settings.t_eval, dim=-1)
    base_1 = torch.softmax(base_logits, dim=-1)
    ssd_1 = torch.softmax(ssd_logits, dim=-1)
    support = truncation_mask(base_logits, settings.t_train, settings.top_k, settings.top_p)
    base_argmax = base_t.argmax(dim=-1)
    t_train = settings.t_train
    out = {
        "support_size": support.sum(dim=-1),
        "base_top1": measures.top1_prob(base_t), "ssd_top1": measures.top1_prob(ssd_t),
        "base_entropy": measures.entropy(base_t), "ssd_entropy": measures.entropy(ssd_t),
        "base_head_entropy": measures.entropy(measures.restrict(base_t, support)),
        "ssd_head_entropy": measures.entropy(measures.restrict(ssd_t, support)),
        "base_lock_tail": measures.mass_outside_token(base_t, base_argmax),
        "ssd_lock_tail": measures.mass_outside_token(ssd_t, base_argmax),
        "base_fork_tail": measures.mass_outside(base_t, support),
        "ssd_fork_tail": measures.mass_outside(ssd_t, support),
        "base_compression": measures.support_compression(base_1, support),
        "ssd_compression": measures.support_compression(ssd_1, support),
        "base_head": measures.head_reshaping(base_1, support, t_train),
        "ssd_head": measures.head_reshaping(ssd_1, support, t_train),
        "base_kl": measures.kl_anchor(base_1, base_1, support, t_train),
        "ssd_kl": measures.kl_anchor(ssd_1, base_1, support, t_train),
    }
    out.update(_top_tokens(base_t, ssd_t, settings.top_tokens_kept))
    return out


def _top_tokens(base_t: torch.Tensor, ssd_t: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    k = min(k, base_t.shape[-1])
    base_top = base_t.topk(k, dim=-1)
    ssd_top = ssd_t.topk(k, dim=-1)
    return {
        "base_top_ids": base_top.indices, "base_top_probs": base_top.values,
        "ssd_probs_at_base_top": ssd_t.gather(-1, base_top.indices),
        "ssd_top_ids": ssd_top.indices, "ssd_top_probs": ssd_top.values,
        "base_probs_at_ssd_top": base_t.gather(-1, ssd_top.indices),
    }


# -- batching ----------------------------------------------------------------------------------

def _scored_length(sample: HeldOutSample, settings: AnalysisConfig, context_length: int | None) -> int:
    """How many completion tokens of this sample we score (cut to the setting and the context)."""
    n = min(len(sample.completion_token_ids), settings.max_completion_tokens)
    if context_length is not None:
        n = min(n, context_length - len(sample.prompt_token_ids))
    return max(n, 0)


def _batches(samples: Sequence[HeldOutSample], lengths: Sequence[int], vocab_size: int,
             max_logits_mb: int) -> list[list[int]]:
    """Group sample indices (longest first) so that each batch's logits fit the memory budget."""
    budget_positions = max_logits_mb * 2**20 // (vocab_size * BYTES_PER_FLOAT32 * LOGIT_COPIES_PER_POSITION)
    order = sorted(range(len(samples)), key=lambda i: -(len(samples[i].prompt_token_ids) + lengths[i]))
    batches: list[list[int]] = []
    for i in order:
        if lengths[i] <= 0:
            continue
        if batches and (len(batches[-1]) + 1) * _batch_width(samples, lengths, batches[-1]) <= budget_positions:
            batches[-1].append(i)  # sorted longest first, so adding i never widens the batch
        else:
            batches.append([i])
    return batches


def _batch_width(samples: Sequence[HeldOutSample], lengths: Sequence[int], batch: list[int]) -> int:
    return max(len(samples[i].prompt_token_ids) + lengths[i] for i in batch)


def _right_padded(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    # Right padding keeps every real token at its true position id, so no position_ids are needed.
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for row, tokens in enumerate(rows):
        ids[row, :len(tokens)] = torch.tensor(tokens, dtype=torch.long)
        mask[row, :len(tokens)] = 1
    return ids, mask


def _score_batch(pair: ModelPair, samples: Sequence[HeldOutSample], lengths: Sequence[int],
                 batch: list[int], settings: AnalysisConfig) -> dict[str, np.ndarray]:
    # Input is prompt + completion minus its last token; logits at index i predict token i + 1.
    rows, reads = [], []
    for i in batch:
        s = samples[i]
        sequence = list(s.prompt_token_ids) + list(s.completion_token_ids[:lengths[i]])
        rows.append(sequence[:-1] if len(sequence) > 1 else sequence)
        first = 1 if not s.prompt_token_ids else 0  # nothing predicts a first token with no prompt
        reads.append([(j, len(s.prompt_token_ids) + j - 1) for j in range(first, lengths[i])])
    if not any(reads):
        return {}
    ids, mask = _right_padded(rows, pad_id=0)  # pad id is arbitrary: masked and never read
    base_logits, ssd_logits = pair.base_logits(ids, mask), pair.ssd_logits(ids, mask)
    row_index = torch.tensor([r for r, read in enumerate(reads) for _ in read], dtype=torch.long)
    col_index = torch.tensor([col for read in reads for _, col in read], dtype=torch.long)
    picked_base, picked_ssd = base_logits[row_index, col_index], ssd_logits[row_index, col_index]
    del base_logits, ssd_logits
    out = {k: v.cpu().numpy() for k, v in measure_positions(picked_base, picked_ssd, settings).items()}
    out["sample_id"] = np.array([samples[batch[r]].sample_id for r, read in enumerate(reads) for _ in read])
    out["completion_index"] = np.array([j for read in reads for j, _ in read], dtype=np.int64)
    out["token_id"] = np.array([samples[batch[r]].completion_token_ids[j]
                                for r, read in enumerate(reads) for j, _ in read], dtype=np.int64)
    return out


def score_positions(pair: ModelPair, samples: Sequence[HeldOutSample], settings: AnalysisConfig,
                    progress: Callable[[int, int], None] | None = None) -> PositionTable:
    """Teacher-forced measures at every scored completion position of every sample."""
    lengths = [_scored_length(s, settings, pair.context_length) for s in samples]
    skipped = sum(1 for n in lengths if n <= 0)
    if skipped:
        log.warning("skipped %d sample(s) whose prompt fills the model's context", skipped)
    batches = _batches(samples, lengths, pair.vocab_size, settings.max_logits_mb)
    parts = []
    for done, batch in enumerate(batches, start=1):
        if part := _score_batch(pair, samples, lengths, batch, settings):
            parts.append(part)
        if progress is not None:
            progress(done, len(batches))
    return PositionTable.concat(parts)

"""`diagnose()`: held-out samples + base model + SSD model -> lock/fork statistics.

    from diagnostics import diagnose, write_report_section
    result = diagnose(samples, base_model="demo", adapter="runs/r1/adapter", t_train=1.6)
    markdown = write_report_section(result, "runs/r1/report")

`samples` are pull-API sample dicts (docs/api.md): only `prompt_token_ids` and
`completion_token_ids` are required; samples with `kept: false` are skipped.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diagnostics.config import AnalysisConfig
from diagnostics.positions import PositionTable, load_model_pair, score_positions, select_samples
from diagnostics.summary import ClassSummary, ExamplePosition, classify, pick_examples, summarize

log = logging.getLogger(__name__)

# Whitespace made visible in token labels, so that " x" and "x" and "\n" read differently.
VISIBLE_WHITESPACE = {" ": "␣", "\n": "\\n", "\t": "\\t"}


@dataclass
class DiagnosticsResult:
    settings: AnalysisConfig
    table: PositionTable          # one row per scored position
    labels: np.ndarray            # [N] "lock" / "fork" / "other"
    summaries: dict[str, ClassSummary]
    examples: list[ExamplePosition]
    num_samples: int
    base_name: str
    ssd_name: str

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: settings, per-class means and examples (not the per-position rows)."""
        return {
            "settings": dataclasses.asdict(self.settings),
            "num_samples": self.num_samples, "num_positions": len(self.table),
            "base": self.base_name, "ssd": self.ssd_name,
            "classes": {name: s.to_dict() for name, s in self.summaries.items()},
            "examples": [e.to_dict() for e in self.examples],
        }


def token_text_function(tokenizer: Any | None) -> Callable[[int], str]:
    """Token id -> display string; `#id` when there is no tokenizer."""
    if tokenizer is None:
        return lambda token_id: f"#{token_id}"

    def text(token_id: int) -> str:
        decoded = tokenizer.decode([token_id])
        for raw, shown in VISIBLE_WHITESPACE.items():
            decoded = decoded.replace(raw, shown)
        return decoded or f"#{token_id}"
    return text


def _try_load_tokenizer(base_model: Any) -> Any | None:
    if isinstance(base_model, torch.nn.Module):
        return None
    try:
        from transformers import AutoTokenizer

        from common.models import resolve_model
        return AutoTokenizer.from_pretrained(resolve_model(str(base_model)))
    except Exception as exc:  # a model folder without a tokenizer is fine: tokens show as ids
        log.info("no tokenizer for %s (%s); example tokens are shown as ids", base_model, exc)
        return None


def _describe(model: Any) -> str:
    if model is None:
        return "none"
    if isinstance(model, torch.nn.Module):
        return getattr(getattr(model, "config", None), "_name_or_path", "") or type(model).__name__
    return str(model)


def diagnose(samples: Iterable[Mapping[str, Any]], *, base_model: str | Path | torch.nn.Module,
             adapter: str | Path | None = None, ssd_model: str | Path | torch.nn.Module | None = None,
             settings: AnalysisConfig | None = None, tokenizer: Any | None = None,
             progress: Callable[[int, int], None] | None = None, **overrides: Any) -> DiagnosticsResult:
    """Score every completion position of `samples` under base and SSD, classify, summarise.

    The SSD model is `adapter` (a peft LoRA folder applied to `base_model`) or `ssd_model` (any HF
    causal LM, a path or a loaded module). `overrides` replace fields of `settings`, e.g.
    `t_eval=1.1`. `tokenizer` (anything with `.decode(list[int])`) labels the example tokens;
    by default the base model folder's tokenizer is used when it has one.
    """
    settings = dataclasses.replace(settings or AnalysisConfig(), **overrides)
    chosen = select_samples(samples, settings.max_samples)
    if not chosen:
        raise ValueError("no usable samples: each needs prompt_token_ids and a non-empty completion_token_ids")
    tokenizer = tokenizer if tokenizer is not None else _try_load_tokenizer(base_model)
    pair = load_model_pair(base_model, adapter=adapter, ssd_model=ssd_model)
    table = score_positions(pair, chosen, settings, progress=progress)
    labels = classify(table.base_top1, table.base_entropy, settings)
    return DiagnosticsResult(
        settings=settings, table=table, labels=labels, summaries=summarize(table, labels),
        examples=pick_examples(table, labels, settings.examples_per_class, token_text_function(tokenizer)),
        num_samples=len(chosen), base_name=_describe(base_model),
        ssd_name=_describe(adapter if adapter is not None else ssd_model))

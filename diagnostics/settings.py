"""The knobs of a diagnostics run: temperatures, truncation, class thresholds, and size limits.

One dataclass, `AnalysisSettings`, so that `diagnose()` callers (the `ssd run` report) and the
`ssd diagnose` command (whose `DiagnoseConfig` extends it with input paths) share defaults and bounds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from common.config import ConfigError

# -- defaults ----------------------------------------------------------------------------------
DEFAULT_TEMPERATURE = 1.0            # compare the models' own distributions unless told otherwise
DEFAULT_TRAIN_TEMPERATURE = 1.6      # the SSD model cards' T_train (ml-ssd's script default is 1.5)
DEFAULT_TOP_K = 20                   # ml-ssd's truncation at T_train
DEFAULT_TOP_P = 0.8
DEFAULT_LOCK_MIN_TOP1 = 0.9          # issue 5: a lock has base top-1 >= 0.9
DEFAULT_FORK_MIN_ENTROPY = 1.0       # nats; about e^1 ~ 2.7 equally likely options
DEFAULT_FORK_MAX_TOP1 = 0.5          # issue 5: ... and no option above one half
DEFAULT_MAX_SAMPLES = 64             # a CPU forward pass of the demo model costs ~ms per token
DEFAULT_MAX_COMPLETION_TOKENS = 512  # per sample; later positions are cut
DEFAULT_EXAMPLES_PER_CLASS = 2       # bar-chart examples per class: the typical one and the extreme one
DEFAULT_TOP_TOKENS_KEPT = 8          # tokens remembered per position for the bar charts
DEFAULT_MAX_LOGITS_MB = 512          # memory for one forward pass's logits; sets the batch size

# -- bounds ------------------------------------------------------------------------------------
MIN_TEMPERATURE = 0.05               # below this the distribution is a near-argmax: nothing to compare
MAX_TEMPERATURE = 10.0               # the sampling API's own bound
MAX_TOP_K = 1_000_000
MAX_SAMPLES = 1_000_000
MAX_COMPLETION_TOKENS = 131_072
MAX_EXAMPLES_PER_CLASS = 16          # a figure with more panels is unreadable
MAX_TOP_TOKENS_KEPT = 64
MIN_LOGITS_MB = 1
MAX_LOGITS_MB = 65_536


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class AnalysisSettings:
    temperature: float = field(default=DEFAULT_TEMPERATURE, metadata=_help(
        "temperature T at which base and SSD distributions are compared (entropy, top-1, tails)"))
    train_temperature: float = field(default=DEFAULT_TRAIN_TEMPERATURE, metadata=_help(
        "T_train of the SSD round: builds the truncation support S and the decomposition"))
    top_k: int = field(default=DEFAULT_TOP_K, metadata=_help(
        "top-k of the SSD sampler (-1 = off), for the support S"))
    top_p: float = field(default=DEFAULT_TOP_P, metadata=_help(
        "top-p of the SSD sampler (1.0 = off), for the support S and the fork tail"))
    lock_min_top1: float = field(default=DEFAULT_LOCK_MIN_TOP1, metadata=_help(
        "a position is a lock when the base top-1 probability is >= this"))
    fork_min_entropy: float = field(default=DEFAULT_FORK_MIN_ENTROPY, metadata=_help(
        "a fork needs base entropy (nats) >= this ..."))
    fork_max_top1: float = field(default=DEFAULT_FORK_MAX_TOP1, metadata=_help(
        "... and base top-1 probability < this"))
    max_samples: int = field(default=DEFAULT_MAX_SAMPLES, metadata=_help(
        "use at most this many samples (the first ones in the file)"))
    max_completion_tokens: int = field(default=DEFAULT_MAX_COMPLETION_TOKENS, metadata=_help(
        "score at most this many completion positions per sample"))
    examples_per_class: int = field(default=DEFAULT_EXAMPLES_PER_CLASS, metadata=_help(
        "example positions drawn as bar charts, per class"))
    top_tokens_kept: int = field(default=DEFAULT_TOP_TOKENS_KEPT, metadata=_help(
        "top tokens remembered per position (for the bar charts)"))
    max_logits_mb: int = field(default=DEFAULT_MAX_LOGITS_MB, metadata=_help(
        "memory budget (MiB) for one batch's logits; sets how many samples share a forward pass"))

    def __post_init__(self) -> None:
        validate_settings(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _in_range(name: str, value: float, low: float, high: float, *, low_open: bool = False) -> None:
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    above_low = is_number and (value > low if low_open else value >= low)
    bracket = "(" if low_open else "["
    _check(is_number and above_low and value <= high,
           f"{name} must be in {bracket}{low}, {high}], got {value!r}")


def validate_settings(s: AnalysisSettings) -> None:
    """Raise ConfigError naming the first field that is out of bounds."""
    _in_range("temperature", s.temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    _in_range("train_temperature", s.train_temperature, MIN_TEMPERATURE, MAX_TEMPERATURE)
    _check(isinstance(s.top_k, int) and (s.top_k == -1 or 1 <= s.top_k <= MAX_TOP_K),
           f"top_k must be -1 (off) or in [1, {MAX_TOP_K}], got {s.top_k!r}")
    _in_range("top_p", s.top_p, 0.0, 1.0, low_open=True)
    _in_range("lock_min_top1", s.lock_min_top1, 0.0, 1.0, low_open=True)
    _check(isinstance(s.fork_min_entropy, (int, float)) and s.fork_min_entropy >= 0,
           f"fork_min_entropy must be >= 0 nats, got {s.fork_min_entropy!r}")
    _in_range("fork_max_top1", s.fork_max_top1, 0.0, 1.0, low_open=True)
    _check(s.fork_max_top1 <= s.lock_min_top1,
           f"fork_max_top1 ({s.fork_max_top1}) must be <= lock_min_top1 ({s.lock_min_top1}) "
           "so that no position is both a lock and a fork")
    _in_range("max_samples", s.max_samples, 1, MAX_SAMPLES)
    _in_range("max_completion_tokens", s.max_completion_tokens, 1, MAX_COMPLETION_TOKENS)
    _in_range("examples_per_class", s.examples_per_class, 0, MAX_EXAMPLES_PER_CLASS)
    _in_range("top_tokens_kept", s.top_tokens_kept, 1, MAX_TOP_TOKENS_KEPT)
    _in_range("max_logits_mb", s.max_logits_mb, MIN_LOGITS_MB, MAX_LOGITS_MB)

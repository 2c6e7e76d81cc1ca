"""The knobs of a diagnostics run: temperatures, truncation, class thresholds, and size limits.

`AnalysisConfig` is what `diagnose()` needs, so that its callers (the `ssd run` report) and the
`ssd diagnose` command (whose `DiagnoseConfig` extends it with input paths) share defaults and bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path

from common.config import ConfigError, check_range, help_meta, require
from common.protocol import MAX_TEMPERATURE, TOP_K_DISABLED

# -- defaults ----------------------------------------------------------------------------------
DEFAULT_TEMPERATURE = 1.0            # compare the models' own distributions unless told otherwise
DEFAULT_T_TRAIN = 1.6      # the SSD model cards' T_train (ml-ssd's script default is 1.5)
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
MAX_TOP_K = 1_000_000
MAX_SAMPLES = 1_000_000
MAX_COMPLETION_TOKENS = 131_072
MAX_EXAMPLES_PER_CLASS = 16          # a figure with more panels is unreadable
MAX_TOP_TOKENS_KEPT = 64
DEFAULT_THREADS = 1                  # the vLLM service shares 2 cores; a 2nd OpenMP thread spin-waits (~40x slower)
MAX_THREADS = 256
MIN_LOGITS_MB = 1
MAX_LOGITS_MB = 65_536


@dataclass
class AnalysisConfig:
    t_eval: float = field(default=DEFAULT_TEMPERATURE, metadata=help_meta(
        "temperature at which base and SSD distributions are compared (entropy, top-1, tails); "
        "`ssd run` uses its T_eval, 1.0 compares the models' own distributions"))
    t_train: float = field(default=DEFAULT_T_TRAIN, metadata=help_meta(
        "T_train of the SSD round: builds the truncation support S and the decomposition"))
    top_k: int = field(default=DEFAULT_TOP_K, metadata=help_meta(
        "top-k of the SSD sampler (-1 = off), for the support S"))
    top_p: float = field(default=DEFAULT_TOP_P, metadata=help_meta(
        "top-p of the SSD sampler (1.0 = off), for the support S and the fork tail"))
    lock_min_top1: float = field(default=DEFAULT_LOCK_MIN_TOP1, metadata=help_meta(
        "a position is a lock when the base top-1 probability is >= this"))
    fork_min_entropy: float = field(default=DEFAULT_FORK_MIN_ENTROPY, metadata=help_meta(
        "a fork needs base entropy (nats) >= this ..."))
    fork_max_top1: float = field(default=DEFAULT_FORK_MAX_TOP1, metadata=help_meta(
        "... and base top-1 probability < this"))
    max_samples: int = field(default=DEFAULT_MAX_SAMPLES, metadata=help_meta(
        "use at most this many samples (the first ones in the file)"))
    max_completion_tokens: int = field(default=DEFAULT_MAX_COMPLETION_TOKENS, metadata=help_meta(
        "score at most this many completion positions per sample"))
    examples_per_class: int = field(default=DEFAULT_EXAMPLES_PER_CLASS, metadata=help_meta(
        "example positions drawn as bar charts, per class"))
    top_tokens_kept: int = field(default=DEFAULT_TOP_TOKENS_KEPT, metadata=help_meta(
        "top tokens remembered per position (for the bar charts)"))
    max_logits_mb: int = field(default=DEFAULT_MAX_LOGITS_MB, metadata=help_meta(
        "memory budget (MiB) for one batch's logits; sets how many samples share a forward pass"))

    def __post_init__(self) -> None:
        validate_settings(self)


def validate_settings(s: AnalysisConfig) -> None:
    """Raise ConfigError naming the first field that is out of bounds."""
    check_range("t_eval", s.t_eval, MIN_TEMPERATURE, MAX_TEMPERATURE)
    check_range("t_train", s.t_train, MIN_TEMPERATURE, MAX_TEMPERATURE)
    require(isinstance(s.top_k, int) and (s.top_k == TOP_K_DISABLED or 1 <= s.top_k <= MAX_TOP_K),
           f"top_k must be -1 (off) or in [1, {MAX_TOP_K}], got {s.top_k!r}")
    check_range("top_p", s.top_p, 0.0, 1.0, low_open=True)
    check_range("lock_min_top1", s.lock_min_top1, 0.0, 1.0, low_open=True)
    require(isinstance(s.fork_min_entropy, (int, float)) and s.fork_min_entropy >= 0,
           f"fork_min_entropy must be >= 0 nats, got {s.fork_min_entropy!r}")
    check_range("fork_max_top1", s.fork_max_top1, 0.0, 1.0, low_open=True)
    require(s.fork_max_top1 <= s.lock_min_top1,
           f"fork_max_top1 ({s.fork_max_top1}) must be <= lock_min_top1 ({s.lock_min_top1}) "
           "so that no position is both a lock and a fork")
    check_range("max_samples", s.max_samples, 1, MAX_SAMPLES)
    check_range("max_completion_tokens", s.max_completion_tokens, 1, MAX_COMPLETION_TOKENS)
    check_range("examples_per_class", s.examples_per_class, 0, MAX_EXAMPLES_PER_CLASS)
    check_range("top_tokens_kept", s.top_tokens_kept, 1, MAX_TOP_TOKENS_KEPT)
    check_range("max_logits_mb", s.max_logits_mb, MIN_LOGITS_MB, MAX_LOGITS_MB)


@dataclass
class DiagnoseConfig(AnalysisConfig):
    """`ssd diagnose`: the analysis settings plus where the models, samples and outputs are."""
    base_model: str = field(default="demo", metadata=help_meta("base model: 'demo', an HF folder or hub id"))
    adapter: Path | None = field(default=None, metadata=help_meta(
        "peft LoRA folder: the SSD model is base + this adapter"))
    ssd_model: str | None = field(default=None, metadata=help_meta(
        "or: a second full HF model as the SSD model (instead of --adapter)"))
    samples_file: Path | None = field(default=None, metadata=help_meta(
        "held-out samples, JSONL, one pull-API sample per line (needs prompt/completion_token_ids)"))
    output_dir: Path = field(default=Path("runs/diagnostics"), metadata=help_meta("where to write the report"))
    threads: int = field(default=DEFAULT_THREADS, metadata=help_meta("torch CPU threads"))

    def __post_init__(self) -> None:
        super().__post_init__()
        self.output_dir = Path(self.output_dir)
        if self.samples_file is None:
            raise ConfigError("samples_file is required: a JSONL file of held-out samples")
        self.samples_file = Path(self.samples_file)
        require(self.samples_file.exists(), f"samples file not found: {self.samples_file}")
        if (self.adapter is None) == (self.ssd_model is None):
            raise ConfigError("give exactly one of adapter (a LoRA folder) and ssd_model (a second model)")
        check_range("threads", self.threads, 1, MAX_THREADS)


def analysis_config(config: DiagnoseConfig) -> AnalysisConfig:
    """The AnalysisConfig part of a DiagnoseConfig (so results do not carry input paths)."""
    return AnalysisConfig(**{f.name: getattr(config, f.name) for f in fields(AnalysisConfig)})

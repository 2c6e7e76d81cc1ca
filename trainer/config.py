"""The trainer's settings: one typed dataclass, loadable from YAML and overridable by CLI flags.

    ssd train --config train.yaml --lr 1e-4 --lora-rank 8

Every bound below is a named constant so that an error can say exactly which limit was crossed.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.config import ConfigError

# -- bounds (inclusive) ------------------------------------------------------------------------
MAX_LORA_RANK = 512                 # larger ranks stop being "low rank" and exceed every server's max_lora_rank
MAX_LORA_DROPOUT = 0.9              # 1.0 would zero the adapter's input
MAX_LEARNING_RATE = 1.0             # anything above diverges; 1.0 is already absurd for AdamW
MAX_MIN_LR_RATIO = 1.0
MIN_MAX_SEQ_LEN = 8                 # room for a prompt token, a completion token and EOS
MAX_MAX_SEQ_LEN = 131_072
MAX_MICRO_BATCH_SIZE = 4096
MAX_GRAD_ACCUM = 4096
MAX_EPOCHS = 1000
MAX_BUCKET_WINDOW = 1_000_000       # samples held in memory at once for length bucketing
MAX_PAGE_SIZE = 1000                # the pull API's own limit
MAX_KEEP_CHECKPOINTS = 1000
MAX_PAD_TO_MULTIPLE = 128
LORA_TARGETS_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults suit the demo model on a CPU."""

    # -- what to train, and on which samples -----------------------------------------------------
    model: str = field(default="demo", metadata=_help(
        "base model: 'demo', an HF model folder, or a hub id"))
    sampler_url: str = field(default="http://127.0.0.1:8000", metadata=_help(
        "sampling service URL: samples are pulled from it, adapters pushed to it"))
    job_id: str | None = field(default=None, metadata=_help(
        "sampling job whose samples to train on (pulled with the cursor API while it runs)"))
    samples_file: Path | None = field(default=None, metadata=_help(
        "train from a JSONL export of samples instead of the service (one pull-API sample per line)"))
    # -- LoRA --------------------------------------------------------------------------------------
    lora_rank: int = field(default=16, metadata=_help("LoRA rank r"))
    lora_alpha: float = field(default=32.0, metadata=_help("LoRA alpha (the update is scaled by alpha/r)"))
    lora_dropout: float = field(default=0.0, metadata=_help("dropout on the LoRA input"))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS_ALL_LINEAR), metadata=_help(
        "comma-separated module names that get LoRA (default: every linear layer of a Llama block)"))
    # -- optimisation ------------------------------------------------------------------------------
    lr: float = field(default=1e-4, metadata=_help("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.0, metadata=_help("AdamW weight decay"))
    warmup_steps: int = field(default=10, metadata=_help("linear warm-up steps from 0 to lr"))
    min_lr_ratio: float = field(default=0.1, metadata=_help(
        "cosine decay ends at lr * min_lr_ratio"))
    epochs: int = field(default=1, metadata=_help("passes over the samples (ignored when max_steps > 0)"))
    max_steps: int = field(default=0, metadata=_help(
        "optimizer steps to run; 0 = derive from epochs (needs the job finished to count its samples)"))
    micro_batch_size: int = field(default=8, metadata=_help("most sequences in one forward pass"))
    micro_batch_tokens: int = field(default=4096, metadata=_help(
        "most padded tokens (sequences x longest length) in one forward pass; must be >= max_seq_len"))
    grad_accum: int = field(default=4, metadata=_help("micro-batches per optimizer step"))
    max_seq_len: int = field(default=1024, metadata=_help(
        "prompt + completion tokens kept; longer samples lose the prompt's start first"))
    grad_clip: float = field(default=1.0, metadata=_help("clip the gradient norm to this; 0 = off"))
    seed: int = field(default=0, metadata=_help("seed for LoRA init, dropout and data order"))
    bucket_window: int = field(default=256, metadata=_help(
        "samples sorted by length together to form micro-batches (larger = less padding)"))
    pad_to_multiple: int = field(default=0, metadata=_help(
        "pad each micro-batch's length to a multiple of this; 0 = auto (8 on GPU for aligned "
        "tensor-core and attention kernels, 1 on CPU where padding is pure waste)"))
    gradient_checkpointing: bool = field(default=False, metadata=_help(
        "recompute activations in backward: less memory, about 30%% more compute"))
    # -- output, checkpoints, push -----------------------------------------------------------------
    output_dir: Path = field(default=Path("runs/train"), metadata=_help(
        "run folder: checkpoints/, adapter/, metrics.jsonl"))
    save_every: int = field(default=50, metadata=_help("checkpoint every N steps; 0 = only at the end"))
    keep_checkpoints: int = field(default=2, metadata=_help("complete checkpoints to keep"))
    resume: bool = field(default=False, metadata=_help(
        "continue from the newest complete checkpoint in output_dir"))
    push: bool = field(default=False, metadata=_help("upload the adapter to sampler_url"))
    push_every: int = field(default=0, metadata=_help(
        "also push every K steps (needs push); 0 = only at the end"))
    adapter_name: str = field(default="ssd", metadata=_help("adapter name (the alias) on the server"))
    page_size: int = field(default=100, metadata=_help("samples per pull-API page"))

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.samples_file is not None:
            self.samples_file = Path(self.samples_file)
        if isinstance(self.target_modules, str):
            self.target_modules = [name for name in self.target_modules.split(",") if name]
        validate(self)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _in_range(name: str, value: float, low: float, high: float) -> None:
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
           and low <= value <= high, f"{name} must be in [{low}, {high}], got {value!r}")


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first field that is out of bounds."""
    _in_range("lora_rank", config.lora_rank, 1, MAX_LORA_RANK)
    _check(config.lora_alpha > 0, f"lora_alpha must be > 0, got {config.lora_alpha!r}")
    _in_range("lora_dropout", config.lora_dropout, 0.0, MAX_LORA_DROPOUT)
    _check(bool(config.target_modules), "target_modules must name at least one module")
    _check(0 < config.lr <= MAX_LEARNING_RATE, f"lr must be in (0, {MAX_LEARNING_RATE}], got {config.lr!r}")
    _in_range("weight_decay", config.weight_decay, 0.0, 1.0)
    _check(config.warmup_steps >= 0, f"warmup_steps must be >= 0, got {config.warmup_steps!r}")
    _in_range("min_lr_ratio", config.min_lr_ratio, 0.0, MAX_MIN_LR_RATIO)
    _in_range("epochs", config.epochs, 1, MAX_EPOCHS)
    _check(config.max_steps >= 0, f"max_steps must be >= 0 (0 = use epochs), got {config.max_steps!r}")
    _in_range("micro_batch_size", config.micro_batch_size, 1, MAX_MICRO_BATCH_SIZE)
    _in_range("grad_accum", config.grad_accum, 1, MAX_GRAD_ACCUM)
    _in_range("max_seq_len", config.max_seq_len, MIN_MAX_SEQ_LEN, MAX_MAX_SEQ_LEN)
    _check(config.micro_batch_tokens >= config.max_seq_len,
           f"micro_batch_tokens ({config.micro_batch_tokens}) must be >= max_seq_len ({config.max_seq_len}) "
           "so that the longest sample fits in a micro-batch")
    _check(config.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {config.grad_clip!r}")
    _check(config.seed >= 0, f"seed must be >= 0, got {config.seed!r}")
    _in_range("pad_to_multiple", config.pad_to_multiple, 0, MAX_PAD_TO_MULTIPLE)
    _in_range("bucket_window", config.bucket_window, 1, MAX_BUCKET_WINDOW)
    _check(config.save_every >= 0, f"save_every must be >= 0, got {config.save_every!r}")
    _in_range("keep_checkpoints", config.keep_checkpoints, 1, MAX_KEEP_CHECKPOINTS)
    _check(config.push_every >= 0, f"push_every must be >= 0, got {config.push_every!r}")
    _check(config.push or config.push_every == 0, "push_every needs push: true")
    _in_range("page_size", config.page_size, 1, MAX_PAGE_SIZE)
    _check(bool(config.adapter_name) and "@" not in config.adapter_name and "/" not in config.adapter_name,
           f"adapter_name must be non-empty without '@' or '/', got {config.adapter_name!r}")
    # Having neither is fine here: `train()` may be handed a SampleSource directly.
    _check(config.job_id is None or config.samples_file is None,
           "set only one of job_id and samples_file")


def with_overrides(config: TrainConfig, **changes) -> TrainConfig:
    """A validated copy of `config` with some fields changed."""
    return dataclasses.replace(config, **changes)

"""The trainer's settings: one typed dataclass, loadable from YAML and overridable by CLI flags.

    ssd train --config train.yaml --lr 1e-4 --lora-rank 8

Every bound below is a named constant so that an error can say exactly which limit was crossed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from common.config import check_range, help_meta, require
from common.protocol import DEFAULT_ADAPTER_ALIAS, DEFAULT_PAGE_SIZE, DEFAULT_URL, MAX_PAGE_SIZE

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
MAX_STALL_TIMEOUT_S = 7 * 24 * 3600.0
MAX_KEEP_CHECKPOINTS = 1000
MAX_PAD_TO_MULTIPLE = 128
DEFAULT_MICRO_BATCH_TOKENS = 4096   # what micro_batch_tokens: 0 means, unless max_seq_len is longer
LORA_TARGETS_ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
# What to do with a sample longer than max_seq_len. The paper and TRL never train a target on a
# context it was not sampled with, so the default skips it; cutting the prompt's start was the old way.
OVERLONG_SKIP = "skip"
OVERLONG_CUT_COMPLETION = "cut_completion"
OVERLONG_CUT_PROMPT_START = "cut_prompt_start"
OVERLONG_CHOICES = (OVERLONG_SKIP, OVERLONG_CUT_COMPLETION, OVERLONG_CUT_PROMPT_START)
# How the model is spread over ranks under torchrun (WORLD_SIZE > 1); one process ignores it.
PARALLEL_DDP = "ddp"
PARALLEL_FSDP = "fsdp"
PARALLEL_CHOICES = (PARALLEL_DDP, PARALLEL_FSDP)
DIST_BACKEND_CHOICES = ("auto", "gloo", "nccl")
# The frozen base's weights. The LoRA weights, their gradients and AdamW's state are float32 either way.
BASE_DTYPE_CHOICES = ("float32", "bfloat16")


@dataclass
class TrainConfig:
    """Everything one training run needs. Defaults suit the demo model on a CPU."""

    # -- what to train, and on which samples -----------------------------------------------------
    model: str = field(default="demo", metadata=help_meta(
        "base model: 'demo', an HF model folder, or a hub id"))
    sampler_url: str = field(default=DEFAULT_URL, metadata=help_meta(
        "sampling service URL: samples are pulled from it, adapters pushed to it"))
    api_key: str | None = field(default=None, repr=False, metadata=help_meta(
        "the sampling service's API key (default: the SSD_API_KEY environment variable); never saved"))
    job_id: str | None = field(default=None, metadata=help_meta(
        "sampling job whose samples to train on (pulled with the cursor API while it runs)"))
    samples_file: Path | None = field(default=None, metadata=help_meta(
        "train from a JSONL export of samples instead of the service (one pull-API sample per line)"))
    # -- LoRA --------------------------------------------------------------------------------------
    lora_rank: int = field(default=16, metadata=help_meta("LoRA rank r"))
    lora_alpha: float = field(default=32.0, metadata=help_meta("LoRA alpha (the update is scaled by alpha/r)"))
    lora_dropout: float = field(default=0.0, metadata=help_meta("dropout on the LoRA input"))
    target_modules: list[str] = field(default_factory=lambda: list(LORA_TARGETS_ALL_LINEAR), metadata=help_meta(
        "comma-separated module names that get LoRA (default: every linear layer of a Llama block)"))
    # -- optimisation ------------------------------------------------------------------------------
    lr: float = field(default=1e-4, metadata=help_meta("peak learning rate (AdamW)"))
    weight_decay: float = field(default=0.0, metadata=help_meta("AdamW weight decay"))
    warmup_steps: int = field(default=10, metadata=help_meta("linear warm-up steps from 0 to lr"))
    min_lr_ratio: float = field(default=0.1, metadata=help_meta(
        "cosine decay ends at lr * min_lr_ratio"))
    epochs: int = field(default=1, metadata=help_meta("passes over the samples (ignored when max_steps > 0)"))
    max_steps: int = field(default=0, metadata=help_meta(
        "optimizer steps to run; 0 = derive from epochs (needs the job finished to count its samples)"))
    micro_batch_size: int = field(default=8, metadata=help_meta("most sequences in one forward pass"))
    micro_batch_tokens: int = field(default=0, metadata=help_meta(
        "most padded tokens (sequences x longest length) in one forward pass; must be >= max_seq_len; "
        f"0 = the larger of {DEFAULT_MICRO_BATCH_TOKENS} and max_seq_len"))
    grad_accum: int = field(default=4, metadata=help_meta(
        "micro-batches per optimizer step on each rank (a step takes grad_accum x world size of them)"))
    max_seq_len: int = field(default=1024, metadata=help_meta(
        "most prompt + completion tokens in one sequence (the paper trains on 65536; 1024 suits a CPU)"))
    overlong: str = field(default=OVERLONG_SKIP, metadata=help_meta(
        "a sample longer than max_seq_len: 'skip' it (the paper's and TRL's choice: the prompt is never "
        "cut), 'cut_completion' (keep the prompt, cut the completion's end, no EOS target), or "
        "'cut_prompt_start' (the old default: drop the prompt's start)"))
    eos_on_truncated: bool = field(default=False, metadata=help_meta(
        "give a sample that hit the sampler's max_tokens (finish_reason 'length') an EOS target; off by "
        "default, as in the paper and TRL's SSD trainer, since such a sample did not end"))
    grad_clip: float = field(default=1.0, metadata=help_meta("clip the gradient norm to this; 0 = off"))
    seed: int = field(default=0, metadata=help_meta("seed for LoRA init, dropout and data order"))
    bucket_window: int = field(default=256, metadata=help_meta(
        "samples sorted by length together to form micro-batches (larger = less padding)"))
    pad_to_multiple: int = field(default=0, metadata=help_meta(
        "pad each micro-batch's length to a multiple of this; 0 = auto (8 on GPU for aligned "
        "tensor-core and attention kernels, 1 on CPU where padding is pure waste)"))
    gradient_checkpointing: bool = field(default=False, metadata=help_meta(
        "recompute activations in backward: less memory, about 30%% more compute"))
    base_dtype: str = field(default="float32", metadata=help_meta(
        "dtype the frozen base model is loaded in: bfloat16 halves its memory (a 30B base: 61 instead "
        "of 122 GB); the LoRA weights and the optimizer stay float32"))
    # -- several processes (torchrun) -----------------------------------------------------------
    parallel: str = field(default=PARALLEL_DDP, metadata=help_meta(
        "under torchrun: 'ddp' keeps a whole model on each rank and all-reduces the LoRA gradients; "
        "'fsdp' shards the base weights across ranks, for a model that does not fit on one device"))
    dist_backend: str = field(default="auto", metadata=help_meta(
        "torch.distributed backend under torchrun: auto = nccl on CUDA, gloo on CPU"))
    # -- output, checkpoints, push -----------------------------------------------------------------
    output_dir: Path = field(default=Path("runs/train"), metadata=help_meta(
        "run folder: checkpoints/, adapter/, metrics.jsonl"))
    save_every: int = field(default=50, metadata=help_meta("checkpoint every N steps; 0 = only at the end"))
    keep_checkpoints: int = field(default=2, metadata=help_meta("complete checkpoints to keep"))
    resume: bool = field(default=False, metadata=help_meta(
        "continue from the newest complete checkpoint in output_dir"))
    push: bool = field(default=False, metadata=help_meta("upload the adapter to sampler_url"))
    push_every: int = field(default=0, metadata=help_meta(
        "also push every K steps (needs push); 0 = only at the end"))
    init_adapter: Path | None = field(default=None, metadata=help_meta(
        "start from this peft adapter folder instead of a fresh LoRA (same rank and targets)"))
    adapter_name: str = field(default=DEFAULT_ADAPTER_ALIAS, metadata=help_meta(
        "adapter name (the alias) on the server"))
    page_size: int = field(default=DEFAULT_PAGE_SIZE, metadata=help_meta("samples per pull-API page"))
    stall_timeout_s: float = field(default=1800.0, metadata=help_meta(
        "give up when the job makes no progress (no new sample, no finished prompt) for this long"))

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if self.samples_file is not None:
            self.samples_file = Path(self.samples_file)
        if self.init_adapter is not None:
            self.init_adapter = Path(self.init_adapter)
        if isinstance(self.target_modules, str):
            self.target_modules = [name for name in self.target_modules.split(",") if name]
        if self.micro_batch_tokens == 0:
            self.micro_batch_tokens = max(DEFAULT_MICRO_BATCH_TOKENS, self.max_seq_len)
        validate(self)


def validate(config: TrainConfig) -> None:
    """Raise ConfigError naming the first field that is out of bounds."""
    check_range("lora_rank", config.lora_rank, 1, MAX_LORA_RANK)
    require(config.lora_alpha > 0, f"lora_alpha must be > 0, got {config.lora_alpha!r}")
    check_range("lora_dropout", config.lora_dropout, 0.0, MAX_LORA_DROPOUT)
    require(bool(config.target_modules), "target_modules must name at least one module")
    require(0 < config.lr <= MAX_LEARNING_RATE, f"lr must be in (0, {MAX_LEARNING_RATE}], got {config.lr!r}")
    check_range("weight_decay", config.weight_decay, 0.0, 1.0)
    require(config.warmup_steps >= 0, f"warmup_steps must be >= 0, got {config.warmup_steps!r}")
    check_range("min_lr_ratio", config.min_lr_ratio, 0.0, MAX_MIN_LR_RATIO)
    check_range("epochs", config.epochs, 1, MAX_EPOCHS)
    require(config.max_steps >= 0, f"max_steps must be >= 0 (0 = use epochs), got {config.max_steps!r}")
    check_range("micro_batch_size", config.micro_batch_size, 1, MAX_MICRO_BATCH_SIZE)
    check_range("grad_accum", config.grad_accum, 1, MAX_GRAD_ACCUM)
    check_range("max_seq_len", config.max_seq_len, MIN_MAX_SEQ_LEN, MAX_MAX_SEQ_LEN)
    require(config.micro_batch_tokens >= config.max_seq_len,
           f"micro_batch_tokens ({config.micro_batch_tokens}) must be >= max_seq_len ({config.max_seq_len}) "
           "so that the longest sample fits in a micro-batch")
    require(config.overlong in OVERLONG_CHOICES,
           f"overlong must be one of {', '.join(OVERLONG_CHOICES)}, got {config.overlong!r}")
    require(config.parallel in PARALLEL_CHOICES,
           f"parallel must be one of {', '.join(PARALLEL_CHOICES)}, got {config.parallel!r}")
    require(config.base_dtype in BASE_DTYPE_CHOICES,
           f"base_dtype must be one of {', '.join(BASE_DTYPE_CHOICES)}, got {config.base_dtype!r}")
    require(config.dist_backend in DIST_BACKEND_CHOICES,
           f"dist_backend must be one of {', '.join(DIST_BACKEND_CHOICES)}, got {config.dist_backend!r}")
    require(config.grad_clip >= 0, f"grad_clip must be >= 0 (0 = off), got {config.grad_clip!r}")
    require(config.seed >= 0, f"seed must be >= 0, got {config.seed!r}")
    check_range("pad_to_multiple", config.pad_to_multiple, 0, MAX_PAD_TO_MULTIPLE)
    check_range("bucket_window", config.bucket_window, 1, MAX_BUCKET_WINDOW)
    require(config.save_every >= 0, f"save_every must be >= 0, got {config.save_every!r}")
    check_range("keep_checkpoints", config.keep_checkpoints, 1, MAX_KEEP_CHECKPOINTS)
    require(config.push_every >= 0, f"push_every must be >= 0, got {config.push_every!r}")
    require(config.push or config.push_every == 0, "push_every needs push: true")
    check_range("page_size", config.page_size, 1, MAX_PAGE_SIZE)
    check_range("stall_timeout_s", config.stall_timeout_s, 1.0, MAX_STALL_TIMEOUT_S)
    require(bool(config.adapter_name) and "@" not in config.adapter_name and "/" not in config.adapter_name,
           f"adapter_name must be non-empty without '@' or '/', got {config.adapter_name!r}")
    # Having neither is fine here: `train()` may be handed a SampleSource directly.
    require(config.job_id is None or config.samples_file is None,
           "set only one of job_id and samples_file")


"""The application's settings: `SamplingConfig` (`ssd sample`, `ssd jobs start`) and `RunConfig`
(`ssd run`). Both load from YAML with flag overrides (`common.config`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import check_range, help_meta, require
from common.protocol import (
    DEFAULT_ADAPTER_ALIAS,
    DEFAULT_MAX_N,
    DEFAULT_URL,
    FILL_CONTEXT,
    MAX_DROP_SHORTEST_FRACTION,
    MAX_TEMPERATURE,
    TOP_K_DISABLED,
    wire_max_tokens,
)
from evaluation.config import DEFAULT_T_EVAL
from evaluation.sweep import DEFAULT_SWEEP_CONCURRENCY, MAX_SWEEP_CONCURRENCY
from ssd.prompt_datasets import DEDUP_NORMALIZED, FORMAT_AUTO, PromptDataConfig
from trainer.config import MAX_LORA_RANK

MAX_ROUNDS = 20
MAX_PROMPTS = 10_000_000
DEFAULT_T_TRAIN = 1.6             # the SSD model cards' T_train (ml-ssd's script default is 1.5)
DEFAULT_TOP_K = 20                # ml-ssd's truncation, at T_train and T_eval
DEFAULT_TOP_P = 0.8
DEFAULT_DROP_SHORTEST_FRACTION = 0.1   # ml-ssd: drop the shortest 10% of the non-empty samples
DEFAULT_PLAN_TOKENS_PER_S = 2500.0   # a stated assumption, not a measurement: change it for your hardware
ROUND_START_FRESH = "fresh"
ROUND_START_CONTINUE = "continue"
ROUND_STARTS = (ROUND_START_FRESH, ROUND_START_CONTINUE)


@dataclass
class SamplingConfig:
    """What `ssd sample` and `ssd jobs start` send: from YAML (`--config`), overridden by flags."""

    url: str = field(default=DEFAULT_URL, metadata=help_meta("the sampling service"))
    n: int = field(default=1, metadata=help_meta("samples per prompt"))
    temperature: float = field(default=1.0, metadata=help_meta("0 = greedy"))
    top_k: int = field(default=TOP_K_DISABLED, metadata=help_meta("-1 = off"))
    top_p: float = field(default=1.0, metadata=help_meta("nucleus truncation"))
    min_p: float = field(default=0.0, metadata=help_meta("min-p truncation"))
    max_tokens: int = field(default=FILL_CONTEXT, metadata=help_meta(
        "new tokens per sample; 0 = the rest of the model's context"))
    adapter: str | None = field(default=None, metadata=help_meta("adapter alias (`ssd`) or version (`ssd@v2`)"))
    drop_shortest_fraction: float = field(default=DEFAULT_DROP_SHORTEST_FRACTION, metadata=help_meta(
        "jobs: ml-ssd's shortest-X filter"))

    def __post_init__(self) -> None:
        check_range("n", self.n, 1, DEFAULT_MAX_N)
        check_range("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        check_range("drop_shortest_fraction", self.drop_shortest_fraction, 0.0, MAX_DROP_SHORTEST_FRACTION)

    def params(self) -> dict[str, Any]:
        return {"n": self.n, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "max_tokens": wire_max_tokens(self.max_tokens), "adapter": self.adapter}


@dataclass
class RunConfig:
    """One `ssd run`: the base model, the sampling, training and evaluation settings of each round."""

    model: str = field(default="demo", metadata=help_meta("base model: `demo`, an HF folder or a hub id"))
    output_dir: Path = field(default=Path("runs/ssd"), metadata=help_meta("everything the run writes"))
    sampler_url: str | None = field(default=None, metadata=help_meta(
        "a running service; default: start one for the run (data under OUTPUT_DIR/service)"))
    rounds: int = field(default=1, metadata=help_meta("SSD rounds; round r samples from round r-1's adapter"))
    adapter_name: str = field(default=DEFAULT_ADAPTER_ALIAS, metadata=help_meta(
        "the alias the adapters are served under"))
    round_start: str = field(default=ROUND_START_FRESH, metadata=help_meta(
        "fresh: each round trains a new LoRA on the base | continue: round r starts from round r-1's adapter"))
    # step 1: sample
    prompts_file: Path | None = field(default=None, metadata=help_meta(
        "training prompts: a JSONL ({id, prompt|messages}), or rStar-Coder seed_sft parquet/arrow/JSONL "
        "(a file or a folder); default: the built-in demo set"))
    prompts_format: str = field(default=FORMAT_AUTO, metadata=help_meta("auto | jsonl | rstar"))
    stdin_template: Path | None = field(default=None, metadata=help_meta(
        "rstar: template for stdin problems ({{ question }}); default: ssd/templates/stdin_prompt.txt"))
    function_template: Path | None = field(default=None, metadata=help_meta(
        "rstar: template for function problems ({{ question }}, {{ starter_code }})"))
    dedup: str = field(default=DEDUP_NORMALIZED, metadata=help_meta("none | exact | normalized"))
    shuffle_seed: int | None = field(default=None, metadata=help_meta("shuffle the prompts; none = file order"))
    num_prompts: int = field(default=0, metadata=help_meta("train on the first N prompts (after the held-out "
                                                          "ones are set aside); 0 = all"))
    heldout_prompts: int = field(default=16, metadata=help_meta(
        "prompts kept out of training and sampled for the diagnostics; 0 = no diagnostics"))
    t_train: float = field(default=DEFAULT_T_TRAIN, metadata=help_meta("sampling temperature for the training data"))
    top_k: int = field(default=DEFAULT_TOP_K, metadata=help_meta("truncation at T_train and T_eval (-1 = off)"))
    top_p: float = field(default=DEFAULT_TOP_P, metadata=help_meta("truncation at T_train and T_eval"))
    samples_per_prompt: int = field(default=1, metadata=help_meta("samples per training prompt"))
    sample_max_tokens: int = field(default=FILL_CONTEXT, metadata=help_meta(
        "new tokens per training sample; 0 = the rest of the model's context"))
    drop_shortest_fraction: float = field(default=DEFAULT_DROP_SHORTEST_FRACTION, metadata=help_meta(
        "ml-ssd: drop the shortest X of samples"))
    # step 2: train
    train_config: Path | None = field(default=None, metadata=help_meta("YAML of trainer settings (TrainConfig)"))
    lora_rank: int = field(default=16, metadata=help_meta("LoRA rank"))
    lr: float = field(default=2e-4, metadata=help_meta("peak learning rate"))
    epochs: int = field(default=1, metadata=help_meta("passes over the samples"))
    max_seq_len: int = field(default=FILL_CONTEXT, metadata=help_meta(
        "prompt + completion tokens per training sequence; 0 = the service's context, which holds every sample"))
    # step 3: evaluate
    benchmark: str = field(default="humaneval", metadata=help_meta("humaneval | livecodebench"))
    benchmark_path: str | None = field(default=None, metadata=help_meta("local benchmark file (LiveCodeBench)"))
    eval_date_from: str | None = field(default=None, metadata=help_meta(
        "LiveCodeBench: first contest date, YYYY-MM-DD (v6 in the paper: 2025-02-01)"))
    eval_date_to: str | None = field(default=None, metadata=help_meta(
        "LiveCodeBench: last contest date, YYYY-MM-DD (v6 in the paper: 2025-05-31)"))
    eval_limit: int | None = field(default=None, metadata=help_meta("evaluate the first N problems; default all"))
    t_eval: float = field(default=DEFAULT_T_EVAL, metadata=help_meta("evaluation temperature"))
    eval_n: int = field(default=1, metadata=help_meta("repeats per problem (pass@k needs n >= k)"))
    eval_repeat_seeds: str = field(default="auto", metadata=help_meta(
        "repeat i with seed i, as ml-ssd: auto (on a GPU service) | true | false"))
    eval_max_tokens: int = field(default=FILL_CONTEXT, metadata=help_meta(
        "new tokens per answer; 0 = the rest of the model's context"))
    sweep_temperatures: list[float] = field(default_factory=list, metadata=help_meta(
        "T_eval values for the sweep plot, comma-separated; empty = no sweep"))
    sweep_limit: int | None = field(default=40, metadata=help_meta("problems per sweep point"))
    sweep_n: int = field(default=1, metadata=help_meta("repeats per problem at each sweep point"))
    sweep_concurrency: int = field(default=DEFAULT_SWEEP_CONCURRENCY, metadata=help_meta(
        "sweep points evaluated at once (keeps the engine's batch full)"))
    eval_workers: int = field(default=2, metadata=help_meta("sandboxes in parallel"))
    plan_tokens_per_s: float = field(default=DEFAULT_PLAN_TOKENS_PER_S, metadata=help_meta(
        "--dry-run: output tokens/s the service is assumed to sustain, for the hours estimate"))

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        check_range("rounds", self.rounds, 1, MAX_ROUNDS)
        check_range("t_train", self.t_train, 0.0, MAX_TEMPERATURE)
        check_range("t_eval", self.t_eval, 0.0, MAX_TEMPERATURE)
        check_range("drop_shortest_fraction", self.drop_shortest_fraction, 0.0, MAX_DROP_SHORTEST_FRACTION)
        check_range("num_prompts", self.num_prompts, 0, MAX_PROMPTS)
        check_range("heldout_prompts", self.heldout_prompts, 0, MAX_PROMPTS)
        check_range("sweep_n", self.sweep_n, 1, DEFAULT_MAX_N)
        check_range("sweep_concurrency", self.sweep_concurrency, 1, MAX_SWEEP_CONCURRENCY)
        check_range("lora_rank", self.lora_rank, 1, MAX_LORA_RANK)
        for name in ("sample_max_tokens", "eval_max_tokens", "max_seq_len"):   # 0: what the context holds
            check_range(name, getattr(self, name), FILL_CONTEXT, float("inf"))
        check_range("plan_tokens_per_s", self.plan_tokens_per_s, 0, float("inf"), low_open=True)
        require(self.round_start in ROUND_STARTS,
                f"round_start must be one of {ROUND_STARTS}, got {self.round_start!r}")
        require(self.eval_repeat_seeds in ("auto", "true", "false"),
                f"eval_repeat_seeds must be auto, true or false, got {self.eval_repeat_seeds!r}")
        self.prompt_data()   # the prompt settings are checked where they are defined
        require(all(0 <= t <= MAX_TEMPERATURE for t in self.sweep_temperatures),
                f"sweep_temperatures must be in [0, {MAX_TEMPERATURE}], got {self.sweep_temperatures}")

    def prompt_data(self) -> PromptDataConfig:
        """The prompt-loading settings (the held-out split and `num_prompts` apply afterwards)."""
        return PromptDataConfig(prompts_file=self.prompts_file, prompts_format=self.prompts_format,
                                stdin_template=self.stdin_template, function_template=self.function_template,
                                dedup=self.dedup, shuffle_seed=self.shuffle_seed)

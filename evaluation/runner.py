"""`evaluate(client, config)`: generate answers through the sampling service, check them in the
sandbox, score them, and write samples.jsonl / problems.jsonl / summary.json.

Generation and checking overlap: each batch of problems is one `/v1/samples` request (n answers per
problem), and its answers go to the sandbox pool while the next batch is being generated.
"""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from tqdm import tqdm

from common.config import to_dict
from common.jsonl import read_jsonl
from common.protocol import wire_max_tokens
from evaluation.benchmarks import Benchmark, Problem, get_benchmark
from evaluation.config import ANSWER_FIELDS, EvalConfig
from evaluation.execution import CheckResult, check_answer
from evaluation.metrics import SAMPLES_FILE, SUMMARY_FILE, Scores, score, write_results
from evaluation.sandbox import ensure_isolation


class Sampler(Protocol):
    """What `evaluate` needs from `client.SamplerClient` (a fake with this method works in tests)."""

    def sample(self, *, messages: list[list[dict]] | None = None, **params: Any) -> dict[str, Any]: ...


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
    params = {"n": config.n, "temperature": config.t_eval, "top_k": config.top_k, "top_p": config.top_p,
              "max_tokens": wire_max_tokens(config.max_tokens), "adapter": config.adapter}
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
        future = pool.submit(check_answer, problem, text, self.limits, self.benchmark.uses_import_header,
                             output_check=self.config.output_check, extraction=self.config.code_extraction)
        future.add_done_callback(self.on_checked)
        row = {"problem_id": problem.id, "sample_index": sample_index, "difficulty": problem.difficulty,
               "completion": text, "finish_reason": completion.get("finish_reason"),
               "num_tokens": completion.get("num_tokens"), "temperature": self.config.t_eval,
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
    """Up to `requests_in_flight` batches are sampled at once, so the engine's batch does not drain
    while one request waits on its longest answer; answers are checked in problem order."""
    params = _sampling_params(run.config)
    batches = list(_batches(problems, run.config.batch_size))

    def sample(batch: list[Problem]) -> list[tuple[int, dict[str, Any]]]:
        return list(_responses(client, batch, params, run.config.repeat_seeds))

    requests = ThreadPoolExecutor(max_workers=run.config.requests_in_flight)
    try:
        futures = [requests.submit(sample, batch) for batch in batches]
        for batch, future in zip(batches, futures, strict=True):
            for sample_offset, response in future.result():
                run.record_response(response)
                for result in response["results"]:
                    problem = batch[result["index"]]
                    for index, completion in enumerate(result["completions"]):
                        run.submit(pool, problem, sample_offset + index, completion)
    finally:
        # A failed batch (or Ctrl-C) cancels those not yet sent and returns at once, not after the
        # requests in flight finish.
        requests.shutdown(wait=False, cancel_futures=True)


def _responses(client: Sampler, batch: list[Problem], params: dict[str, Any], repeat_seeds: bool):
    """(first sample index, response) for one batch. With `repeat_seeds`, as ml-ssd does, repeat i is
    its own request with seed i, so every repeat can be reproduced alone; otherwise one request
    asks for all n (the CPU engine refuses seeds)."""
    messages = [p.messages for p in batch]
    if not repeat_seeds:
        yield 0, client.sample(messages=messages, **params)
        return
    for repeat in range(params["n"]):
        yield repeat, client.sample(messages=messages, **(params | {"n": 1, "seed": repeat}))


def evaluate(client: Sampler, config: EvalConfig) -> EvalResult:
    """Evaluate the base model (or `config.adapter`) at `config.t_eval` on the chosen problems."""
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


def reuse_run(earlier_dir: str | Path, config: EvalConfig) -> EvalResult | None:
    """`config`'s run, taken from an earlier run instead of sampled: possible when the earlier one
    used the same model and answer settings (ANSWER_FIELDS), covered every problem `config` selects,
    and drew at least `config.n` answers for each. The first n answers of each problem are kept, and
    scored and written as `evaluate` would. None when the earlier run cannot stand in."""
    earlier_dir = Path(earlier_dir)
    summary_path, samples_path = earlier_dir / SUMMARY_FILE, earlier_dir / SAMPLES_FILE
    if not (summary_path.exists() and samples_path.exists()):
        return None
    summary = json.loads(summary_path.read_text())
    earlier = summary.get("config", {})
    wanted = to_dict(config)
    if any(earlier.get(name) != wanted[name] for name in ANSWER_FIELDS):
        return None
    problems = load_benchmark(config).problems(limit=config.limit, ids=config.problems, difficulty=config.difficulty)
    by_problem: dict[str, list[dict[str, Any]]] = {p.id: [] for p in problems}
    for row in read_jsonl(samples_path):
        if row["problem_id"] in by_problem and row["sample_index"] < config.n:
            by_problem[row["problem_id"]].append(row)
    if not problems or any(len(rows) != config.n for rows in by_problem.values()):
        return None
    rows = [row for p in problems for row in sorted(by_problem[p.id], key=lambda r: r["sample_index"])]
    scores = score(rows, config.ks, seed=config.seed)
    out_dir = Path(config.output_dir) / config.resolved_run_name()
    write_results(out_dir, rows, scores, {
        "config": to_dict(config), "reused_from": str(earlier_dir), "served_adapter": summary.get("served_adapter"),
        "usage": {}, "elapsed_s": 0.0, "num_problems": len(problems), "isolation": summary.get("isolation")})
    return EvalResult(config, scores, out_dir, 0.0, summary.get("served_adapter"))


def format_summary(scores: Scores, title: str = "") -> str:
    """A plain-text table: metric, value and 95% CI, overall then per difficulty."""
    lines = [title] if title else []
    lines.append(f"{'subset':<10} {'metric':<8} {'value':>7}   {'95% CI':<17} problems")
    groups = [("all", scores.overall, scores.num_problems)]
    counts: dict[str | None, int] = {}
    for problem in scores.problems:
        counts[problem.difficulty] = counts.get(problem.difficulty, 0) + 1
    groups += [(d, m, counts.get(d, 0)) for d, m in scores.by_difficulty.items()]
    for subset, metrics, count in groups:
        for name, metric in metrics.items():
            ci = f"[{100 * metric.ci_low:5.1f}, {100 * metric.ci_high:5.1f}]"
            lines.append(f"{subset:<10} {name:<8} {100 * metric.value:6.1f}%   {ci:<17} {count}")
    return "\n".join(lines)

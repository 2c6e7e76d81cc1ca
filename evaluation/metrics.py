"""pass@k, difficulty breakdown, bootstrap confidence intervals, and the JSONL results a run leaves
behind so it can be re-scored without generating again.

The estimator is the unbiased one from the Codex paper (and ml-ssd): with n samples of which c pass,
pass@k = 1 − C(n−c, k) / C(n, k), computed as the product 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which stays
exact-ish in floating point where the binomials overflow.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from common.jsonl import read_jsonl, write_jsonl

DEFAULT_KS = (1, 5)
BOOTSTRAP_RESAMPLES = 1000
CI_LEVEL = 0.95
SAMPLES_FILE = "samples.jsonl"
PROBLEMS_FILE = "problems.jsonl"
SUMMARY_FILE = "summary.json"


def pass_at_k(n: int, c: int, k: int) -> float:
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got n={n}, c={c}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0          # every k-subset holds at least one correct sample
    return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))


@dataclass
class ProblemScore:
    problem_id: str
    difficulty: str | None
    n: int
    c: int
    pass_at: dict[str, float]       # "pass@1" -> value


@dataclass
class Metric:
    value: float
    ci_low: float
    ci_high: float


@dataclass
class Scores:
    num_problems: int
    num_samples: int
    ks: list[int]
    overall: dict[str, Metric]                                  # "pass@1" -> Metric
    by_difficulty: dict[str, dict[str, Metric]] = field(default_factory=dict)
    problems: list[ProblemScore] = field(default_factory=list)

    def to_dict(self, include_problems: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not include_problems:
            out.pop("problems")
        return out


def bootstrap_ci(values: np.ndarray, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                 level: float = CI_LEVEL) -> tuple[float, float]:
    """Percentile interval of the mean over problems resampled with replacement."""
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(resamples, len(values)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(means, tail)), float(np.percentile(means, 100 - tail))


def _metric(values: list[float], seed: int) -> Metric:
    array = np.asarray(values, dtype=float)
    low, high = bootstrap_ci(array, seed=seed)
    return Metric(float(array.mean()) if len(array) else float("nan"), low, high)


def _aggregate(problems: list[ProblemScore], ks: list[int], seed: int) -> dict[str, Metric]:
    out = {}
    for k in ks:
        values = [p.pass_at[f"pass@{k}"] for p in problems if f"pass@{k}" in p.pass_at]
        if values and len(values) == len(problems):   # pass@k only where every problem has n >= k
            out[f"pass@{k}"] = _metric(values, seed)
    return out


def score_problems(sample_rows: Iterable[dict[str, Any]], ks: Iterable[int] = DEFAULT_KS) -> list[ProblemScore]:
    """Group per-sample rows (problem_id, difficulty, passed) into per-problem pass@k."""
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in sample_rows:
        grouped[row["problem_id"]].append(row)
    scores = []
    for problem_id, rows in grouped.items():
        n, c = len(rows), sum(bool(r["passed"]) for r in rows)
        pass_at = {f"pass@{k}": pass_at_k(n, c, k) for k in ks if k <= n}
        scores.append(ProblemScore(problem_id, rows[0].get("difficulty"), n, c, pass_at))
    return scores


def score(sample_rows: Iterable[dict[str, Any]], ks: Iterable[int] = DEFAULT_KS, *, seed: int = 0) -> Scores:
    rows = list(sample_rows)
    ks = sorted(set(int(k) for k in ks))
    problems = score_problems(rows, ks)
    by_difficulty: dict[str, list[ProblemScore]] = defaultdict(list)
    for problem in problems:
        if problem.difficulty:
            by_difficulty[problem.difficulty].append(problem)
    return Scores(
        num_problems=len(problems), num_samples=len(rows), ks=ks, overall=_aggregate(problems, ks, seed),
        by_difficulty={d: _aggregate(group, ks, seed) for d, group in sorted(by_difficulty.items())},
        problems=problems,
    )


def write_results(out_dir: str | Path, sample_rows: list[dict[str, Any]], scores: Scores,
                  extra_summary: dict[str, Any] | None = None) -> Path:
    """samples.jsonl (one row per sample), problems.jsonl (per problem), summary.json (the numbers)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_jsonl(out_dir / SAMPLES_FILE, sample_rows)
    write_jsonl(out_dir / PROBLEMS_FILE, (asdict(p) for p in scores.problems))
    summary = (extra_summary or {}) | {"scores": scores.to_dict()}
    (out_dir / SUMMARY_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return out_dir


def rescore(path: str | Path, ks: Iterable[int] | None = None, *, seed: int | None = None) -> Scores:
    """Recompute every number from a run's samples.jsonl (a run directory or the file itself), with
    the run's own ks and seed unless given."""
    path = Path(path)
    samples_path = path / SAMPLES_FILE if path.is_dir() else path
    summary_path = samples_path.with_name(SUMMARY_FILE)
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    config = summary.get("config", {})
    ks = list(ks) if ks else config.get("ks", list(DEFAULT_KS))
    seed = seed if seed is not None else config.get("seed", 0)
    return score(read_jsonl(samples_path), ks, seed=seed)

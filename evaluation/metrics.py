"""pass@k, difficulty breakdown, bootstrap confidence intervals, and the JSONL results a run leaves
behind so it can be re-scored without generating again.

The estimator is the unbiased one from the Codex paper (and ml-ssd): with n samples of which c pass,
pass@k = 1 − C(n−c, k) / C(n, k), computed as the product 1 − ∏_{i=n−c+1}^{n} (1 − k/i), which stays
exact-ish in floating point where the binomials overflow.
"""

from __future__ import annotations

import itertools
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import NormalDist
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


# -- paired before/after comparison ------------------------------------------------------------
# Before and after are evaluated on the same problems, so the comparison is per problem: each
# problem's own difference in pass@1 removes the (large) spread in difficulty between problems that
# two unpaired intervals both carry.

PERMUTATION_RESAMPLES = 10_000
EXACT_PERMUTATION_MAX = 16      # up to 2^16 sign patterns are enumerated; beyond, Monte Carlo
MDE_ALPHA = 0.05
MDE_POWER = 0.8


@dataclass
class PairedComparison:
    """Per-problem before/after comparison of pass@1 (see `paired_comparison`)."""

    num_problems: int              # problems present in both runs
    unmatched: int                 # problems present in only one run (left out)
    repeats_before: float          # mean samples per problem
    repeats_after: float
    before: float                  # mean pass@1 over the common problems
    after: float
    difference: float              # after - before = mean of the per-problem differences
    ci_low: float                  # paired bootstrap percentile interval of the difference
    ci_high: float
    improved: int                  # problems whose pass@1 went up / down (the sign test's data)
    worsened: int
    sign_test_p: float             # exact two-sided binomial test on improved vs worsened
    permutation_p: float           # two-sided paired sign-flip permutation test on the mean difference
    difference_sd: float           # sample standard deviation of the per-problem differences
    mde: float                     # minimum detectable effect at this run's problems and repeats
    sampling_variance: float | None    # part of Var(difference) due to finite repeats (None: 1 repeat)
    per_sample_variance: float | None  # the same for one sample per side: sampling_variance at 1 repeat
    ci_level: float = CI_LEVEL
    alpha: float = MDE_ALPHA
    power: float = MDE_POWER

    def mde_at(self, num_problems: int, repeats: int | None = None) -> float | None:
        """The minimum detectable effect projected to `num_problems` problems and `repeats` samples per
        problem on each side (default: this run's). The variance of a problem's difference splits into
        a between-problem part (true pass rates and effects differ by problem) and a sampling part that
        shrinks as 1/repeats; the split needs at least 2 repeats, so with 1 repeat only `num_problems`
        can change (None otherwise)."""
        variance = self.difference_sd ** 2
        if repeats is not None:
            if self.sampling_variance is None or self.per_sample_variance is None:
                return None
            between = max(variance - self.sampling_variance, 0.0)
            variance = between + self.per_sample_variance / repeats
        return minimum_detectable_effect(math.sqrt(variance), num_problems, self.alpha, self.power)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def minimum_detectable_effect(difference_sd: float, num_problems: int, alpha: float = MDE_ALPHA,
                              power: float = MDE_POWER) -> float:
    """MDE = (z_{1-alpha/2} + z_{power}) * sd_d / sqrt(N): the smallest true mean difference in pass@1
    that a two-sided level-`alpha` test on the mean of N per-problem differences (standard deviation
    sd_d) detects with probability `power` (normal approximation). For alpha 0.05 and power 0.8 the
    factor is 1.960 + 0.842 = 2.802."""
    if num_problems < 1:
        raise ValueError(f"need at least one problem, got {num_problems}")
    z = NormalDist()
    return (z.inv_cdf(1 - alpha / 2) + z.inv_cdf(power)) * difference_sd / math.sqrt(num_problems)


def sign_test_p(improved: int, worsened: int) -> float:
    """Exact two-sided sign test: P(a Binomial(m, 1/2) count is at least as far from m/2 as the
    observed one), m = improved + worsened; ties (problems that did not change) are left out."""
    m = improved + worsened
    if m == 0:
        return 1.0
    tail = sum(math.comb(m, k) for k in range(min(improved, worsened) + 1))
    return min(1.0, 2 * tail / 2 ** m)


def permutation_p(differences: np.ndarray, *, seed: int, resamples: int = PERMUTATION_RESAMPLES) -> float:
    """Two-sided paired permutation test of mean difference 0: under the null, each problem's
    difference is as likely to have either sign. Exact over all sign patterns of the non-zero
    differences when there are at most EXACT_PERMUTATION_MAX of them, else `resamples` random
    patterns with the (count + 1) / (resamples + 1) estimate."""
    nonzero = differences[differences != 0]
    if len(nonzero) == 0:
        return 1.0
    observed = abs(nonzero.sum()) - 1e-12 * len(nonzero)     # float slack: ties count as extreme
    if len(nonzero) <= EXACT_PERMUTATION_MAX:
        patterns = np.array(list(itertools.product((1.0, -1.0), repeat=len(nonzero))))
        return float(np.mean(np.abs(patterns @ nonzero) >= observed))
    rng = np.random.default_rng(seed)
    extreme = 0
    for start in range(0, resamples, 1000):                    # chunks bound the memory
        signs = rng.choice((1.0, -1.0), size=(min(1000, resamples - start), len(nonzero)))
        extreme += int(np.sum(np.abs(signs @ nonzero) >= observed))
    return (extreme + 1) / (resamples + 1)


def _pass1_by_problem(problems: Iterable[ProblemScore | dict[str, Any]]) -> dict[str, tuple[int, int]]:
    out = {}
    for problem in problems:
        row = asdict(problem) if isinstance(problem, ProblemScore) else problem
        out[str(row["problem_id"])] = (int(row["n"]), int(row["c"]))
    return out


def _sampling_variances(before: list[tuple[int, int]],
                        after: list[tuple[int, int]]) -> tuple[float | None, float | None]:
    """(at the run's repeats, at one repeat): the mean over problems of the estimated Var(pass@1 before)
    + Var(pass@1 after) that finite repeats cause. With r repeats Var(p̂) = p(1-p)/r, and p(1-p) is
    estimated without bias by p̂(1-p̂)·r/(r-1). Needs r >= 2 everywhere (else None, None)."""
    if any(n < 2 for n, _ in before + after):
        return None, None

    def bernoulli(n: int, c: int) -> float:
        p = c / n
        return p * (1 - p) * n / (n - 1)

    pairs = list(zip(before, after))
    at_run = float(np.mean([bernoulli(*b) / b[0] + bernoulli(*a) / a[0] for b, a in pairs]))
    per_sample = float(np.mean([bernoulli(*b) + bernoulli(*a) for b, a in pairs]))
    return at_run, per_sample


def paired_comparison(before: Iterable[ProblemScore | dict[str, Any]],
                      after: Iterable[ProblemScore | dict[str, Any]], *, seed: int = 0,
                      resamples: int = BOOTSTRAP_RESAMPLES, level: float = CI_LEVEL, alpha: float = MDE_ALPHA,
                      power: float = MDE_POWER) -> PairedComparison:
    """Compare two runs' per-problem results (`Scores.problems`, or rows of their problems.jsonl)
    problem by problem. A problem's pass@1 is c / n; its difference is after - before. The CI
    resamples problems with replacement (keeping each problem's pair together)."""
    before_map, after_map = _pass1_by_problem(before), _pass1_by_problem(after)
    common = sorted(before_map.keys() & after_map.keys())
    if not common:
        raise ValueError("the two runs have no problem in common: a paired comparison needs the same problems")
    b = [before_map[p] for p in common]
    a = [after_map[p] for p in common]
    b_pass = np.array([c / n for n, c in b])
    a_pass = np.array([c / n for n, c in a])
    diff = a_pass - b_pass
    low, high = bootstrap_ci(diff, seed=seed, resamples=resamples, level=level)
    sd = float(diff.std(ddof=1)) if len(diff) > 1 else 0.0
    improved, worsened = int(np.sum(diff > 0)), int(np.sum(diff < 0))
    sampling, per_sample = _sampling_variances(b, a)
    return PairedComparison(
        num_problems=len(common), unmatched=len(before_map.keys() ^ after_map.keys()),
        repeats_before=float(np.mean([n for n, _ in b])), repeats_after=float(np.mean([n for n, _ in a])),
        before=float(b_pass.mean()), after=float(a_pass.mean()), difference=float(diff.mean()),
        ci_low=low, ci_high=high, improved=improved, worsened=worsened,
        sign_test_p=sign_test_p(improved, worsened), permutation_p=permutation_p(diff, seed=seed),
        difference_sd=sd, mde=minimum_detectable_effect(sd, len(common), alpha, power),
        sampling_variance=sampling, per_sample_variance=per_sample, ci_level=level, alpha=alpha, power=power)


def load_problem_scores(path: str | Path) -> list[dict[str, Any]]:
    """The per-problem rows of a run (its directory or its problems.jsonl)."""
    path = Path(path)
    return read_jsonl(path / PROBLEMS_FILE if path.is_dir() else path)


def compare_runs(before_dir: str | Path, after_dir: str | Path, *, seed: int = 0) -> PairedComparison:
    return paired_comparison(load_problem_scores(before_dir), load_problem_scores(after_dir), seed=seed)


def paired_markdown(comparison: PairedComparison, before_label: str = "before",
                    after_label: str = "after") -> str:
    """A markdown table of a paired comparison, pass@1 in percent."""
    c = comparison
    level = f"{100 * c.ci_level:g}%"
    header = (f"| problems | repeats | {before_label} pass@1 | {after_label} pass@1 | difference | "
              f"{level} CI (paired bootstrap) | improved / worsened | sign test p | permutation p | "
              f"MDE (α {c.alpha:g}, power {c.power:g}) |")
    repeats = f"{c.repeats_before:g}" if c.repeats_before == c.repeats_after else \
        f"{c.repeats_before:g} / {c.repeats_after:g}"
    row = (f"| {c.num_problems} | {repeats} | {100 * c.before:.1f}% | {100 * c.after:.1f}% | "
           f"{100 * c.difference:+.1f} pts | [{100 * c.ci_low:+.1f}, {100 * c.ci_high:+.1f}] | "
           f"{c.improved} / {c.worsened} | {_p(c.sign_test_p)} | {_p(c.permutation_p)} | "
           f"{100 * c.mde:.1f} pts |")
    return "\n".join([header, "|" + "---|" * header.count(" | ") + "---|", row])


def _p(value: float) -> str:
    return f"{value:.2g}" if value >= 0.001 else "< 0.001"

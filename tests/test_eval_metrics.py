"""The pass@k estimator against the closed form, bootstrap CIs, and the JSONL round trip."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from evaluation.metrics import (
    PairedComparison,
    bootstrap_ci,
    compare_runs,
    minimum_detectable_effect,
    paired_comparison,
    paired_markdown,
    pass_at_k,
    permutation_p,
    read_jsonl,
    rescore,
    score,
    sign_test_p,
    write_results,
)


def closed_form(n: int, c: int, k: int) -> float:
    return 1.0 - comb(n - c, k) / comb(n, k)


@pytest.mark.parametrize("n,c,k", [(1, 0, 1), (1, 1, 1), (10, 0, 1), (10, 10, 1), (10, 10, 5), (10, 3, 1),
                                   (10, 3, 5), (10, 7, 5), (10, 6, 5), (20, 1, 5), (20, 19, 10), (5, 2, 5),
                                   (200, 13, 100), (16, 4, 16)])
def test_estimator_matches_closed_form(n, c, k):
    assert pass_at_k(n, c, k) == pytest.approx(closed_form(n, c, k), abs=1e-12)


def test_estimator_edge_cases():
    assert pass_at_k(10, 10, 5) == 1.0          # n = c
    assert pass_at_k(10, 0, 5) == 0.0           # c = 0
    assert pass_at_k(10, 7, 5) == 1.0           # k > n - c: every subset holds a correct sample
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)   # pass@1 is the plain fraction
    with pytest.raises(ValueError):
        pass_at_k(3, 1, 4)                      # k > n is undefined
    with pytest.raises(ValueError):
        pass_at_k(3, 4, 1)


def test_estimator_stable_for_large_n():
    # The binomials overflow floats here; the product form does not.
    value = pass_at_k(2000, 3, 1000)
    assert 0.0 < value <= 1.0
    assert value == pytest.approx(1 - (1000 * 999 * 998) / (2000 * 1999 * 1998), rel=1e-9)


def _rows(results: dict[str, tuple[str | None, list[bool]]]):
    return [{"problem_id": pid, "sample_index": i, "difficulty": diff, "passed": ok}
            for pid, (diff, flags) in results.items() for i, ok in enumerate(flags)]


def test_score_breakdown_and_ks():
    rows = _rows({"a": ("easy", [True] * 5), "b": ("hard", [False] * 5), "c": ("hard", [True, False, False, False, False])})
    scores = score(rows, ks=[1, 5, 10], seed=0)
    assert set(scores.overall) == {"pass@1", "pass@5"}       # k=10 > n is dropped
    assert scores.overall["pass@1"].value == pytest.approx((1 + 0 + 0.2) / 3)
    assert scores.overall["pass@5"].value == pytest.approx(2 / 3)
    assert scores.by_difficulty["easy"]["pass@1"].value == 1.0
    assert scores.by_difficulty["hard"]["pass@1"].value == pytest.approx(0.1)
    metric = scores.overall["pass@1"]
    assert metric.ci_low <= metric.value <= metric.ci_high


def test_bootstrap_is_seeded_and_sane():
    values = np.array([0.0, 1.0] * 50)
    assert bootstrap_ci(values, seed=1) == bootstrap_ci(values, seed=1)
    low, high = bootstrap_ci(values, seed=1)
    assert 0.35 < low < 0.5 < high < 0.65
    assert bootstrap_ci(np.ones(10), seed=0) == (1.0, 1.0)


def test_jsonl_round_trip_rescoring_is_identical(tmp_path):
    rng = np.random.default_rng(0)
    rows = _rows({f"p{i}": (["easy", "medium", "hard"][i % 3], list(rng.random(6) < 0.4)) for i in range(30)})
    rows = [r | {"passed": bool(r["passed"]), "completion": "x", "status": "passed" if r["passed"] else "failed"} for r in rows]
    scores = score(rows, ks=[1, 5], seed=7)
    write_results(tmp_path, rows, scores, {"config": {"ks": [1, 5], "seed": 7}})
    assert read_jsonl(tmp_path / "samples.jsonl") == rows
    again = rescore(tmp_path)
    assert again.to_dict(include_problems=True) == scores.to_dict(include_problems=True)
    assert rescore(tmp_path / "samples.jsonl").overall == scores.overall


# -- paired comparison ---------------------------------------------------------------------------

def _problem_rows(counts: list[int], n: int, prefix: str = "p") -> list[dict]:
    return [{"problem_id": f"{prefix}{i}", "difficulty": None, "n": n, "c": c} for i, c in enumerate(counts)]


@pytest.mark.parametrize("improved, worsened, expected", [
    (10, 0, 2 / 1024), (0, 10, 2 / 1024), (5, 5, 1.0), (0, 0, 1.0),
    (8, 2, 2 * (1 + 10 + 45) / 1024),           # 2 * P(X <= 2), X ~ Binomial(10, 1/2)
])
def test_sign_test_is_the_exact_binomial(improved, worsened, expected):
    assert sign_test_p(improved, worsened) == pytest.approx(expected)


def test_permutation_test_enumerates_small_cases_exactly():
    # three problems up by 1, two unchanged: of the 8 sign patterns only all-up and all-down are as extreme
    assert permutation_p(np.array([1.0, 1.0, 1.0, 0.0, 0.0]), seed=0) == pytest.approx(0.25)
    assert permutation_p(np.array([0.5, -0.5]), seed=0) == pytest.approx(1.0)
    assert permutation_p(np.zeros(4), seed=0) == 1.0


def test_permutation_test_samples_large_cases():
    all_up = np.full(30, 0.25)                   # exact p is 2 / 2^30: the estimate is its floor 1/(R+1)
    assert permutation_p(all_up, seed=0, resamples=2000) == pytest.approx(1 / 2001)
    balanced = np.array([1.0, -1.0] * 20)        # mean difference exactly 0: every pattern is as extreme
    assert permutation_p(balanced, seed=0, resamples=2000) == pytest.approx(1.0)


def test_paired_comparison_of_known_runs():
    before = _problem_rows([0, 1, 2, 3, 4, 4], n=4) + [{"problem_id": "only-before", "n": 4, "c": 0}]
    after = _problem_rows([1, 2, 3, 4, 4, 3], n=4)
    comparison = paired_comparison(before, after, seed=1)
    assert (comparison.num_problems, comparison.unmatched) == (6, 1)
    assert comparison.repeats_before == comparison.repeats_after == 4
    assert comparison.before == pytest.approx(14 / 24) and comparison.after == pytest.approx(17 / 24)
    assert comparison.difference == pytest.approx(3 / 24)
    assert (comparison.improved, comparison.worsened) == (4, 1)
    assert comparison.sign_test_p == pytest.approx(2 * (1 + 5) / 32)
    assert comparison.ci_low <= comparison.difference <= comparison.ci_high
    differences = np.array([1, 1, 1, 1, 0, -1]) / 4
    assert comparison.difference_sd == pytest.approx(differences.std(ddof=1))


def test_a_constant_difference_has_a_degenerate_interval():
    comparison = paired_comparison(_problem_rows([1, 2, 3], n=4), _problem_rows([2, 3, 4], n=4))
    assert (comparison.ci_low, comparison.ci_high) == pytest.approx((0.25, 0.25))
    assert comparison.mde == 0.0


def test_pairing_finds_an_effect_that_overlapping_unpaired_intervals_hide():
    # 40 problems of very different difficulty; after solves one more sample in 4 on half of them.
    rng = np.random.default_rng(3)
    before_counts = list(rng.integers(0, 8, size=40))
    after_counts = [min(c + (2 if i % 2 == 0 else 0), 8) for i, c in enumerate(before_counts)]
    before, after = _problem_rows(before_counts, n=8), _problem_rows(after_counts, n=8)
    unpaired_before, unpaired_after = score(_samples(before), ks=[1]), score(_samples(after), ks=[1])
    assert unpaired_after.overall["pass@1"].ci_low < unpaired_before.overall["pass@1"].ci_high   # overlap
    comparison = paired_comparison(before, after, seed=0)
    assert comparison.ci_low > 0 and comparison.sign_test_p < 0.01 and comparison.permutation_p < 0.01


def _samples(problem_rows: list[dict]) -> list[dict]:
    return [{"problem_id": r["problem_id"], "difficulty": None, "passed": j < r["c"]}
            for r in problem_rows for j in range(r["n"])]


def test_minimum_detectable_effect_is_detected_with_the_stated_power():
    sd, problems = 0.3, 100
    mde = minimum_detectable_effect(sd, problems)
    assert mde == pytest.approx(2.8016 * sd / 10, rel=1e-4)       # (z_0.975 + z_0.8) * sd / sqrt(N)
    # Simulated runs whose true mean difference is the MDE: a two-sided 5% z-test rejects ~80% of them.
    rng = np.random.default_rng(0)
    means = rng.normal(mde, sd, size=(4000, problems)).mean(axis=1)
    assert np.mean(means / (sd / np.sqrt(problems)) > 1.96) == pytest.approx(0.8, abs=0.03)


def test_mde_projection_to_more_repeats_matches_a_run_with_more_repeats():
    rng = np.random.default_rng(7)
    problems = 4000
    p_before = rng.uniform(0, 1, problems)
    p_after = np.clip(p_before + rng.normal(0.05, 0.1, problems), 0, 1)

    def run(repeats: int) -> PairedComparison:
        return paired_comparison(_problem_rows(list(rng.binomial(repeats, p_before)), n=repeats),
                                 _problem_rows(list(rng.binomial(repeats, p_after)), n=repeats), resamples=10)

    projected = run(4).mde_at(100, repeats=16)
    measured = run(16).mde_at(100)
    assert projected == pytest.approx(measured, rel=0.08)
    unequal = paired_comparison(_problem_rows(list(rng.binomial(4, p_before)), n=4),     # 4 before, 16 after
                                _problem_rows(list(rng.binomial(16, p_after)), n=16), resamples=10)
    assert (unequal.repeats_before, unequal.repeats_after) == (4, 16)
    assert unequal.mde_at(100, repeats=16) == pytest.approx(measured, rel=0.08)
    assert run(4).mde_at(100, repeats=16) < run(4).mde_at(100)      # more repeats, smaller MDE
    single = run(1)
    assert single.sampling_variance is None and single.mde_at(100, repeats=4) is None
    assert single.mde_at(400) == pytest.approx(single.mde / 2 * np.sqrt(problems / 100))


def test_paired_comparison_needs_common_problems():
    with pytest.raises(ValueError, match="no problem in common"):
        paired_comparison(_problem_rows([1], n=2, prefix="a"), _problem_rows([1], n=2, prefix="b"))


def test_paired_comparison_reads_run_directories_and_renders_markdown(tmp_path):
    for name, counts in (("base", [0, 1, 2, 0]), ("ssd", [1, 2, 2, 1])):
        rows = _samples(_problem_rows(counts, n=2))
        write_results(tmp_path / name, rows, score(rows, ks=[1]))
    comparison = compare_runs(tmp_path / "base", tmp_path / "ssd")
    assert comparison.difference == pytest.approx(3 / 8)
    table = paired_markdown(comparison, "base", "SSD").splitlines()
    assert len(table) == 3 and table[0].count("|") == table[1].count("|") == table[2].count("|")
    assert "SSD pass@1" in table[0] and "+37.5 pts" in table[2] and "3 / 0" in table[2]

"""The pass@k estimator against the closed form, bootstrap CIs, and the JSONL round trip."""

from __future__ import annotations

from math import comb

import numpy as np
import pytest

from evaluation.metrics import bootstrap_ci, pass_at_k, read_jsonl, rescore, score, write_results


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

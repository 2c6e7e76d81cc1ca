"""All 164 HumanEval canonical solutions score pass@1 = 100% in the sandbox; empty and wrong answers
score 0%. Uses 2 sandbox workers (the CPU is shared with the engine)."""

from __future__ import annotations

import pytest

from evaluation.benchmarks import get_benchmark
from evaluation.execution import check_many
from evaluation.metrics import score

WORKERS = 2


@pytest.fixture(scope="module")
def problems():
    return get_benchmark("humaneval").problems()


def _pass_at_1(problems, answers):
    results = check_many(list(zip(problems, answers)), workers=WORKERS)
    rows = [{"problem_id": p.id, "passed": r.passed} for p, r in zip(problems, results)]
    return score(rows, ks=[1]).overall["pass@1"].value, results


def test_canonical_solutions_all_pass(problems):
    value, results = _pass_at_1(problems, [p.metadata["canonical_solution"] for p in problems])
    failures = [(p.id, r.status, r.reason) for p, r in zip(problems, results) if not r.passed]
    assert failures == [] and value == 1.0


def test_canonical_solutions_as_full_fenced_functions_pass(problems):
    # The format a chat model answers in: the whole function inside a python fence.
    subset = problems[::8]
    answers = [f"Sure!\n```python\n{p.prompt}{p.metadata['canonical_solution']}```\nDone." for p in subset]
    value, _ = _pass_at_1(subset, answers)
    assert value == 1.0


def test_empty_answers_all_fail(problems):
    value, results = _pass_at_1(problems, [""] * len(problems))
    assert value == 0.0
    assert all(r.status in ("failed", "error") for r in results)


def test_wrong_answers_all_fail(problems):
    # Another problem's canonical solution: plausible code, wrong function.
    shifted = [problems[(i + 1) % len(problems)].metadata["canonical_solution"] for i in range(len(problems))]
    value, _ = _pass_at_1(problems, shifted)
    assert value == 0.0

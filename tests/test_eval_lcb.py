"""The LiveCodeBench fixture: reference solutions score 100% on both test types, wrong ones 0%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.benchmarks import get_benchmark
from evaluation.execution import check_answer, check_many, stdout_matches
from evaluation.metrics import score
from evaluation.sandbox import SandboxLimits

FIXTURES = Path(__file__).resolve().parent.parent / "evaluation" / "fixtures"


@pytest.fixture(scope="module")
def bench():
    return get_benchmark("livecodebench", path=FIXTURES / "lcb_fixture.jsonl")


@pytest.fixture(scope="module")
def solutions():
    rows = [json.loads(line) for line in (FIXTURES / "lcb_fixture_solutions.jsonl").read_text().splitlines()]
    return {row["question_id"]: row for row in rows}


def _run(bench, solutions, which):
    problems = bench.problems()
    results = check_many([(p, solutions[p.id][which]) for p in problems], workers=2,
                         use_header=bench.uses_import_header)
    rows = [{"problem_id": p.id, "difficulty": p.difficulty, "passed": r.passed} for p, r in zip(problems, results)]
    return problems, results, score(rows, ks=[1])


def test_reference_solutions_score_100(bench, solutions):
    problems, results, scores = _run(bench, solutions, "reference")
    assert [(p.id, r.reason) for p, r in zip(problems, results) if not r.passed] == []
    assert {p.test_type for p in problems} == {"stdin", "functional"}
    assert scores.overall["pass@1"].value == 1.0
    assert set(scores.by_difficulty) == {"easy", "medium", "hard"}


def test_wrong_solutions_score_0(bench, solutions):
    _, results, scores = _run(bench, solutions, "wrong")
    assert scores.overall["pass@1"].value == 0.0
    assert all(r.reason for r in results)


def test_functional_timeout_and_missing_method(bench):
    problem = next(p for p in bench.problems() if p.id == "fx-func-profit")
    fast = SandboxLimits(timeout_s=1.0)
    slow = "class Solution:\n    def maxProfit(self, prices):\n        while True: pass\n"
    assert check_answer(problem, slow, fast, use_header=True).status == "timeout"
    missing = check_answer(problem, "class Solution:\n    pass\n", fast, use_header=True)
    assert missing.status == "error" and "maxProfit" in missing.reason


def test_stdin_program_raising_is_an_error(bench):
    problem = next(p for p in bench.problems() if p.id == "fx-stdin-sum")
    result = check_answer(problem, "raise ValueError('boom')", use_header=True)
    assert result.status == "error" and "boom" in result.reason


@pytest.mark.parametrize("got,expected,ok", [("3\n", "3", True), ("1.0000001\n", "1.0", True), ("1 2\n\n", "1 2\n", True),
                                             ("1 2", "1  2", True), ("1\n2", "1 2", False), ("abc", "abd", False)])
def test_stdout_comparison(got, expected, ok):
    assert stdout_matches(got, expected) is ok

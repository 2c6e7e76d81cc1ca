"""The one interface every benchmark loader implements.

A loader turns a benchmark's own file format into `Problem`s. Everything downstream (prompting, code
extraction, the sandbox, metrics) only sees `Problem`, so adding a benchmark means writing one loader
class and registering it (see docs/evaluation.md, "Adding a benchmark").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

TestType = Literal["functional", "stdin"]
DIFFICULTIES = ("easy", "medium", "hard")


@dataclass(frozen=True)
class TestCase:
    """One input/output pair. For stdin tests `input` is fed to stdin and `output` is the expected
    stdout. For functional (LeetCode-style) tests `input` holds one JSON value per line (one per
    argument) and `output` one JSON value (the expected return value)."""

    __test__ = False   # not a pytest test class, despite the name

    input: str
    output: str


@dataclass
class Problem:
    id: str
    messages: list[dict[str, str]]          # the chat prompt sent to the model
    test_type: TestType
    tests: list[TestCase] = field(default_factory=list)
    check_code: str | None = None           # HumanEval-style assertion program, run after the solution
    entry_point: str | None = None          # function (HumanEval) or Solution method (LeetCode) name
    starter_code: str = ""
    prompt: str = ""                        # the benchmark's raw prompt (HumanEval: signature + docstring)
    difficulty: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class Benchmark:
    """Base class: a named, ordered collection of problems. Subclasses implement `load()`."""

    name: str = "benchmark"
    # Benchmarks whose programs expect LiveCodeBench's import header (typing, collections, ...).
    uses_import_header: bool = False

    def load(self) -> list[Problem]:
        raise NotImplementedError

    def problems(self, *, limit: int | None = None, ids: Iterable[str] | None = None,
                 difficulty: str | None = None) -> list[Problem]:
        """The loaded problems, filtered by id list, difficulty and then truncated to `limit`."""
        selected = self.load()
        if ids:
            wanted = list(ids)
            by_id = {p.id: p for p in selected}
            missing = [i for i in wanted if i not in by_id]
            if missing:
                raise KeyError(f"{self.name}: unknown problem id(s) {missing[:5]}")
            selected = [by_id[i] for i in wanted]
        if difficulty:
            selected = [p for p in selected if p.difficulty == difficulty]
        if limit is not None:
            selected = selected[:limit]
        return selected

"""Benchmark loaders behind one interface, and a registry to find them by name.

    from evaluation.benchmarks import get_benchmark
    problems = get_benchmark("humaneval").problems(limit=3)
    lcb = get_benchmark("livecodebench", path="test6.jsonl", date_from="2025-02-01", date_to="2025-05-31")
"""

from __future__ import annotations

from collections.abc import Callable

from evaluation.benchmarks.base import DIFFICULTIES, Benchmark, Problem, TestCase
from evaluation.benchmarks.humaneval import HumanEval
from evaluation.benchmarks.livecodebench import LiveCodeBench, decode_private_tests, safe_unpickle

_REGISTRY: dict[str, Callable[..., Benchmark]] = {}


def register_benchmark(name: str, factory: Callable[..., Benchmark]) -> None:
    """Make `get_benchmark(name, **opts)` call `factory(**opts)`."""
    _REGISTRY[name.lower()] = factory


def available_benchmarks() -> list[str]:
    return sorted(_REGISTRY)


def get_benchmark(name: str, **opts) -> Benchmark:
    try:
        factory = _REGISTRY[name.lower()]
    except KeyError:
        raise KeyError(f"unknown benchmark {name!r}; available: {available_benchmarks()}") from None
    return factory(**opts)


register_benchmark("humaneval", HumanEval)
register_benchmark("livecodebench", LiveCodeBench)
register_benchmark("lcb", LiveCodeBench)

__all__ = ["DIFFICULTIES", "Benchmark", "HumanEval", "LiveCodeBench", "Problem", "TestCase",
           "available_benchmarks", "decode_private_tests", "get_benchmark", "register_benchmark",
           "safe_unpickle"]

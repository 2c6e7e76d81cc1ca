"""LiveCodeBench `code_generation_lite`, read from a local JSONL file the user provides.

Each line holds `question_content`, `starter_code`, `difficulty`, `contest_date`, `public_test_cases`
(a JSON list of {"input", "output", "testtype"}), `private_test_cases` (the same list as JSON, pickled,
zlib-compressed and base64-encoded) and `metadata` (JSON; `func_name` for functional problems).

The private tests are unpickled with a restricted unpickler that refuses every global, so a crafted
file can yield plain data (str, bytes, numbers, lists, dicts, tuples) but can never call a function.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import pickle
import zlib
from datetime import date, datetime
from pathlib import Path
from typing import Any

from evaluation.benchmarks.base import DIFFICULTIES, Benchmark, Problem, TestCase
from evaluation.prompts import lcb_messages

MAX_FILE_BYTES = 4 * 1024 ** 3             # refuse absurd inputs instead of reading them
MAX_PRIVATE_TESTS_BYTES = 512 * 1024 ** 2  # decompressed size cap: stops zlib bombs
TESTTYPES = ("stdin", "functional")


class UnsafePickleError(pickle.UnpicklingError):
    """The pickle asked for a global (a class or function): refused."""


class _PlainDataUnpickler(pickle.Unpickler):
    """Plain data needs no globals: str, bytes, int, float, list, dict, tuple, bool and None all have
    their own opcodes. Refusing `find_class` therefore refuses every object constructor and callable."""

    def find_class(self, module: str, name: str) -> Any:
        raise UnsafePickleError(f"refused global {module}.{name} in pickled test data")

    def persistent_load(self, pid: Any) -> Any:
        raise UnsafePickleError("refused persistent id in pickled test data")


def safe_unpickle(data: bytes) -> Any:
    return _PlainDataUnpickler(io.BytesIO(data)).load()


def _bounded_decompress(data: bytes) -> bytes:
    decompressor = zlib.decompressobj()
    out = decompressor.decompress(data, MAX_PRIVATE_TESTS_BYTES)
    if decompressor.unconsumed_tail:
        raise ValueError(f"private tests decompress to more than {MAX_PRIVATE_TESTS_BYTES} bytes")
    return out


def decode_private_tests(encoded: str) -> list[dict[str, Any]]:
    """Plain JSON first (some LCB releases store it so), else base64 → zlib → safe pickle → JSON."""
    if not encoded:
        return []
    try:
        return json.loads(encoded)
    except json.JSONDecodeError:
        pass
    try:
        raw = base64.b64decode(encoded.encode("ascii"), validate=False)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"private tests are not base64: {exc}") from exc
    payload = safe_unpickle(_bounded_decompress(raw))
    if isinstance(payload, bytes):
        payload = payload.decode("utf-8")
    if isinstance(payload, str):
        payload = json.loads(payload)
    if not isinstance(payload, list):
        raise ValueError(f"private tests decode to {type(payload).__name__}, expected a list")
    return payload


def encode_private_tests(tests: list[dict[str, Any]]) -> str:
    """The inverse, the way LiveCodeBench stores them (used to build the fixture)."""
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode("ascii")


def _parse_date(text: str | date | None) -> date | None:
    if text is None or text == "":
        return None
    if isinstance(text, date):
        return text if not isinstance(text, datetime) else text.date()
    return datetime.fromisoformat(str(text).replace("Z", "")).date()


def _test_cases(raw_tests: list[dict[str, Any]]) -> tuple[list[TestCase], set[str]]:
    cases, kinds = [], set()
    for raw in raw_tests:
        kinds.add(raw.get("testtype", "stdin"))
        cases.append(TestCase(input=str(raw["input"]), output=str(raw["output"])))
    return cases, kinds


class LiveCodeBench(Benchmark):
    name = "livecodebench"
    uses_import_header = True

    def __init__(self, path: str | Path | None = None, *, date_from: str | date | None = None,
                 date_to: str | date | None = None, include_public: bool = True):
        if path is None:
            raise ValueError("livecodebench needs a local JSONL file: pass --benchmark-path")
        self.path = Path(path)
        self.date_from, self.date_to = _parse_date(date_from), _parse_date(date_to)
        self.include_public = include_public
        self._cache: list[Problem] | None = None

    def load(self) -> list[Problem]:
        if self._cache is None:
            self._cache = [p for p in self._read() if self._in_window(p)]
        return list(self._cache)

    def _read(self) -> list[Problem]:
        if self.path.stat().st_size > MAX_FILE_BYTES:
            raise ValueError(f"{self.path} is larger than {MAX_FILE_BYTES} bytes")
        problems = []
        with self.path.open(encoding="utf-8") as handle:
            for line_no, line in enumerate(handle, 1):
                if line.strip():
                    problems.append(self._to_problem(json.loads(line), line_no))
        return problems

    def _in_window(self, problem: Problem) -> bool:
        when = _parse_date(problem.metadata.get("contest_date"))
        if when is None:
            return self.date_from is None and self.date_to is None
        if self.date_from and when < self.date_from:
            return False
        return not (self.date_to and when > self.date_to)

    def _to_problem(self, raw: dict[str, Any], line_no: int) -> Problem:
        public = json.loads(raw.get("public_test_cases") or "[]")
        private = decode_private_tests(raw.get("private_test_cases") or "")
        tests, kinds = _test_cases((public if self.include_public else []) + private)
        metadata = json.loads(raw.get("metadata") or "{}")
        test_type = "functional" if "functional" in kinds else "stdin"
        if len(kinds) > 1 or not kinds <= set(TESTTYPES):
            raise ValueError(f"{self.path}:{line_no}: unsupported test types {sorted(kinds)}")
        difficulty = (raw.get("difficulty") or "").lower() or None
        if difficulty is not None and difficulty not in DIFFICULTIES:
            raise ValueError(f"{self.path}:{line_no}: unknown difficulty {difficulty!r}")
        starter = raw.get("starter_code") or ""
        return Problem(
            id=str(raw.get("question_id") or f"line{line_no}"),
            messages=lcb_messages(raw["question_content"], starter), test_type=test_type, tests=tests,  # type: ignore[arg-type]
            entry_point=metadata.get("func_name"), starter_code=starter, prompt=raw["question_content"],
            difficulty=difficulty,
            metadata={"contest_date": raw.get("contest_date"), "platform": raw.get("platform"),
                      "title": raw.get("question_title"), **metadata},
        )

"""Loaders, the safe unpickler, prompt formats and code extraction."""

from __future__ import annotations

import base64
import json
import os
import pickle
import zlib
from pathlib import Path

import pytest

from evaluation.benchmarks import available_benchmarks, decode_private_tests, get_benchmark, safe_unpickle
from evaluation.benchmarks.livecodebench import UnsafePickleError, encode_private_tests
from evaluation.prompts import LCB_FORMAT_STARTER, LCB_FORMAT_STDIN, extract_code, humaneval_program

FIXTURE = Path(__file__).resolve().parent.parent / "evaluation" / "fixtures" / "lcb_fixture.jsonl"


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/ssd-evil-pickle",))


def test_registry_knows_both_benchmarks():
    assert {"humaneval", "livecodebench"} <= set(available_benchmarks())
    with pytest.raises(KeyError, match="unknown benchmark"):
        get_benchmark("nope")


def test_humaneval_loads_all_164_from_the_package():
    problems = get_benchmark("humaneval").problems()
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.entry_point == "has_close_elements"
    assert "```python" in first.messages[0]["content"] and first.prompt in first.messages[0]["content"]
    assert first.check_code.rstrip().endswith("check(has_close_elements)")


def test_problem_selection():
    bench = get_benchmark("humaneval")
    assert [p.id for p in bench.problems(limit=2)] == ["HumanEval/0", "HumanEval/1"]
    assert [p.id for p in bench.problems(ids=["HumanEval/5", "HumanEval/3"])] == ["HumanEval/5", "HumanEval/3"]
    with pytest.raises(KeyError):
        bench.problems(ids=["HumanEval/999"])


def test_lcb_fixture_decodes_both_test_types():
    problems = {p.id: p for p in get_benchmark("livecodebench", path=FIXTURE).problems()}
    assert len(problems) == 6
    stdin, functional = problems["fx-stdin-lis"], problems["fx-func-window"]
    assert stdin.test_type == "stdin" and len(stdin.tests) == 4 and stdin.entry_point is None
    assert functional.test_type == "functional" and functional.entry_point == "minSubArrayLen"
    assert functional.tests[1].input == '4\n[1, 4, 4]' and functional.tests[1].output == "1"
    assert {p.difficulty for p in problems.values()} == {"easy", "medium", "hard"}
    assert LCB_FORMAT_STARTER in functional.messages[-1]["content"]
    assert functional.starter_code.rstrip() in functional.messages[-1]["content"]
    assert LCB_FORMAT_STDIN in stdin.messages[-1]["content"]
    assert stdin.messages[0]["role"] == "system"


def test_lcb_date_window_and_difficulty():
    window = get_benchmark("lcb", path=FIXTURE, date_from="2025-02-01", date_to="2025-05-31")
    assert sorted(p.id for p in window.problems()) == ["fx-func-profit", "fx-func-window", "fx-stdin-lis", "fx-stdin-mean"]
    assert [p.id for p in window.problems(difficulty="hard")] == ["fx-stdin-mean"]


def test_lcb_needs_a_path():
    with pytest.raises(ValueError, match="local JSONL"):
        get_benchmark("livecodebench")


def test_private_tests_round_trip_and_plain_json():
    tests = [{"input": "1\n", "output": "2\n", "testtype": "stdin"}]
    assert decode_private_tests(encode_private_tests(tests)) == tests
    assert decode_private_tests(json.dumps(tests)) == tests


def test_safe_unpickle_accepts_plain_data():
    data = {"a": [1, 2.5, "x", b"y", (3, None, True)]}
    assert safe_unpickle(pickle.dumps(data)) == data


def test_safe_unpickle_rejects_a_malicious_pickle(tmp_path):
    evil = pickle.dumps(_Evil())
    with pytest.raises(UnsafePickleError, match="refused global"):
        safe_unpickle(evil)
    encoded = base64.b64encode(zlib.compress(evil)).decode()
    with pytest.raises(UnsafePickleError):
        decode_private_tests(encoded)
    assert not Path("/tmp/ssd-evil-pickle").exists()
    # A malicious file fails to load rather than executing anything.
    row = json.loads(FIXTURE.read_text().splitlines()[0]) | {"private_test_cases": encoded}
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(row) + "\n")
    with pytest.raises(UnsafePickleError):
        get_benchmark("livecodebench", path=bad).problems()


def test_safe_unpickle_rejects_zlib_bomb(monkeypatch):
    import evaluation.benchmarks.livecodebench as lcb
    monkeypatch.setattr(lcb, "MAX_PRIVATE_TESTS_BYTES", 1000)
    encoded = base64.b64encode(zlib.compress(pickle.dumps("x" * 100_000))).decode()
    with pytest.raises(ValueError, match="decompress"):
        decode_private_tests(encoded)


@pytest.mark.parametrize("text,expected", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    ("Here:\n```py\ndef f(x):\n    return x\n```\nusage:\n```python\nf(1)\n```", "def f(x):\n    return x\n"),
    ("```python\na = 1\n```\n```python\nb = 2\n```", "b = 2\n"),                  # tie: the last
    ("```\nuntagged = True\n```", "untagged = True\n"),
    ("```text\nnot code\n```\n```python\ncode = 1\n```", "code = 1\n"),
    ("```python\ndef cut_off():\n    return", "def cut_off():\n    return"),     # truncated by max_tokens
    ("    return x + 1\n", "    return x + 1\n"),                                  # no fence: raw text
    ("", ""),
])
def test_extract_code_longest(text, expected):
    assert extract_code(text, "longest") == expected


@pytest.mark.parametrize("text,expected", [
    ("```python\ndef f():\n    return 1\n```", "def f():\n    return 1\n"),
    # the last block is the answer, even when it is a short usage example (ml-ssd, LiveCodeBench)
    ("Here:\n```py\ndef f(x):\n    return x\n```\nusage:\n```python\nf(1)\n```", "f(1)\n"),
    ("```python\nlong_solution = 1\nmore = 2\n```\n```\nshort = 3\n```", "short = 3\n"),   # any tag
    ("```text\nnot code\n```\n```python\ncode = 1\n```", "code = 1\n"),
    ("```python\nfirst = 1\n```\nthen:\n```python\ndef cut_off():\n    return", "first = 1\n"),  # unclosed
    ("```python\ndef cut_off():\n    return", ""),                  # only an unclosed block: no code
    ("    return x + 1\n", "    return x + 1\n"),                  # no fence at all: bare code
    ("", ""),
])
def test_extract_code_last_is_the_default(text, expected):
    assert extract_code(text) == expected


def test_extract_code_refuses_an_unknown_rule():
    with pytest.raises(ValueError, match="longest"):
        extract_code("x", "first")


def test_humaneval_program_forms():
    prompt = "from typing import List\n\ndef helper():\n    return 2\n\ndef f(x: List[int]) -> int:\n    \"\"\"doc\"\"\"\n"
    full = "```python\ndef f(x: List[int]) -> int:\n    return helper() + len(x)\n```"
    program = humaneval_program(prompt, full, "f")
    assert program.startswith(prompt) and "return helper() + len(x)" in program
    namespace: dict = {}
    exec(program, namespace)   # trusted test input: checks the program is well formed
    assert namespace["f"]([1]) == 3
    body = "    return len(x)\n"
    assert humaneval_program(prompt, body, "f") == prompt + body

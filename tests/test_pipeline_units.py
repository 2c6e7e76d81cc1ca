"""Fast tests of `ssd run`'s bookkeeping: stage records, prompt split, report helpers."""

from __future__ import annotations

import json

import pytest

from client.pipeline import PipelineError, RunConfig, RunState, load_prompts
from client.report import comparison_table, sample_statistics
from common.config import ConfigError


def test_a_recorded_stage_is_not_run_again(tmp_path):
    calls = []
    state = RunState(tmp_path / "state.json")
    assert state.stage("round-1/sample", lambda: calls.append(1) or {"job_id": "j"}) == {"job_id": "j"}
    reopened = RunState(tmp_path / "state.json")  # as after a crash and a re-run
    assert reopened.stage("round-1/sample", lambda: calls.append(2) or {"job_id": "other"}) == {"job_id": "j"}
    assert calls == [1]


def test_a_failing_stage_records_nothing(tmp_path):
    state = RunState(tmp_path / "state.json")
    with pytest.raises(PipelineError):
        state.stage("round-1/train", lambda: (_ for _ in ()).throw(PipelineError("trainer exited 1")))
    assert "round-1/train" not in RunState(tmp_path / "state.json").data


def test_heldout_prompts_never_reach_training(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"task {i}"}) + "\n" for i in range(10)))
    train, heldout = load_prompts(RunConfig(prompts_file=path, heldout_prompts=3, num_prompts=0))
    assert [p["id"] for p in heldout] == ["p7", "p8", "p9"]
    assert {p["id"] for p in train}.isdisjoint(p["id"] for p in heldout) and len(train) == 7
    assert train[0]["messages"] == [{"role": "user", "content": "task 0"}]
    limited, _ = load_prompts(RunConfig(prompts_file=path, heldout_prompts=3, num_prompts=2))
    assert [p["id"] for p in limited] == ["p0", "p1"]


def test_the_builtin_prompts_load_by_default():
    train, heldout = load_prompts(RunConfig(heldout_prompts=16))
    assert len(train) >= 300 and len(heldout) == 16


@pytest.mark.parametrize("changes", [{"rounds": 0}, {"t_train": -1.0}, {"drop_shortest_fraction": 1.0}])
def test_bad_run_config_is_refused(changes):
    with pytest.raises(ConfigError):
        RunConfig(**changes)


def _metric(value: float) -> dict:
    return {"value": value, "ci_low": value - 0.01, "ci_high": value + 0.01}


def test_comparison_table_shows_each_metric_and_difficulty_with_the_change():
    before = {"overall": {"pass@1": _metric(0.10)}, "by_difficulty": {"hard": {"pass@1": _metric(0.05)}}}
    after = {"overall": {"pass@1": _metric(0.15)}, "by_difficulty": {"hard": {"pass@1": _metric(0.10)}}}
    rows = comparison_table(before, after)
    assert rows[2] == "| all | pass@1 | 10.0 [9.0, 11.0] | 15.0 [14.0, 16.0] | +5.0 |"
    assert rows[3].startswith("| hard | pass@1 |") and rows[3].endswith("+5.0 |")


def test_sample_statistics_count_filters_truncation_and_missing_code():
    samples = [
        {"completion": "```python\ndef f():\n    return 1\n```", "num_tokens": 10, "kept": True, "finish_reason": "stop"},
        {"completion": "def g(x):\n    return x", "num_tokens": 8, "kept": True, "finish_reason": "length"},
        {"completion": "Das ist falsch, questo e un errore", "num_tokens": 9, "kept": True, "finish_reason": "stop"},
        {"completion": "", "num_tokens": 0, "kept": False, "filter_reason": "empty", "finish_reason": "stop"},
    ]
    stats = sample_statistics(samples)
    assert (stats["written"], stats["kept"], stats["filtered"], stats["truncated"]) == (4, 3, {"empty": 1}, 1)
    assert stats["no_code_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["mean_tokens"] == 9.0

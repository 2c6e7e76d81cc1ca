"""Fast tests of `ssd run`'s bookkeeping: stage records, prompt split, report helpers."""

from __future__ import annotations

import json

import pytest

from common.config import ConfigError
from ssd.config import RunConfig
from ssd.pipeline import PipelineError
from ssd.prompts import read_prompt_file, split_heldout
from ssd.report import comparison_table, sample_statistics
from ssd.state import EvalStage, SampleStage, StateFile, StateFileError, TrainStage, load_state


def test_a_recorded_stage_is_not_run_again(tmp_path):
    calls = []
    state_file = StateFile(tmp_path / "state.json")
    sampled = SampleStage("j", "s.jsonl", 3, 3, 3, 3, 0, 30, 1.0)
    rnd = state_file.state.round(1)
    assert state_file.stage(rnd, "sample", "round-1/sample", lambda: calls.append(1) or sampled) == sampled
    reopened = StateFile(tmp_path / "state.json")  # as after a crash and a re-run
    again = reopened.stage(reopened.state.round(1), "sample", "round-1/sample", lambda: calls.append(2) or None)
    assert again == sampled and isinstance(again, SampleStage) and calls == [1]


def test_a_failing_stage_records_nothing(tmp_path):
    state_file = StateFile(tmp_path / "state.json")
    with pytest.raises(PipelineError):
        state_file.stage(state_file.state.round(1), "train", "round-1/train",
                         lambda: (_ for _ in ()).throw(PipelineError("trainer exited 1")))
    assert StateFile(tmp_path / "state.json").state.round(1).train is None


def test_the_state_round_trips_through_json_with_its_types(tmp_path):
    state_file = StateFile(tmp_path / "state.json")
    state_file.state.baseline = EvalStage(None, "runs/x/round-0/eval", {"overall": {}})
    state_file.state.round(2).train = TrainStage("a", "m.jsonl")
    state_file.save()
    loaded = load_state(tmp_path / "state.json")
    assert loaded == state_file.state and isinstance(loaded.rounds[1].train, TrainStage)
    assert loaded.rounds[0].train is None and loaded.rounds[1].number == 2


def test_a_state_file_from_another_version_is_refused_with_advice(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"round-0/eval": {}}))
    with pytest.raises(StateFileError, match="new --output-dir"):
        StateFile(tmp_path / "state.json")


def test_heldout_prompts_never_reach_training(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"task {i}"}) + "\n" for i in range(10)))
    train, heldout = split_heldout(read_prompt_file(path), heldout=3, limit=0)
    assert [p["id"] for p in heldout] == ["p7", "p8", "p9"]
    assert {p["id"] for p in train}.isdisjoint(p["id"] for p in heldout) and len(train) == 7
    assert train[0]["messages"] == [{"role": "user", "content": "task 0"}]
    limited, _ = split_heldout(read_prompt_file(path), heldout=3, limit=2)
    assert [p["id"] for p in limited] == ["p0", "p1"]


def test_the_builtin_prompts_load_by_default():
    train, heldout = split_heldout(read_prompt_file(None), heldout=16)
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
        {"completion": "```python\ndef f():\n    return 1\n```", "num_tokens": 10, "kept": True,
         "finish_reason": "stop"},
        {"completion": "def g(x):\n    return x", "num_tokens": 8, "kept": True, "finish_reason": "length"},
        {"completion": "Das ist falsch, questo e un errore", "num_tokens": 9, "kept": True, "finish_reason": "stop"},
        {"completion": "", "num_tokens": 0, "kept": False, "filter_reason": "empty", "finish_reason": "stop"},
    ]
    stats = sample_statistics(samples)
    assert (stats["written"], stats["kept"], stats["filtered"], stats["truncated"]) == (4, 3, {"empty": 1}, 1)
    assert stats["no_code_share"] == pytest.approx(1 / 3, abs=1e-3)
    assert stats["mean_tokens"] == 9.0

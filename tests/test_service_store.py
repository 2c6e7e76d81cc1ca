"""The durable store: atomic prompt results, stable pages, filters, restart."""

from __future__ import annotations

import pytest

from sampler_service.store import Completion, PromptResult, Store


def _result(idx: int, texts: list[str]) -> PromptResult:
    completions = [Completion(text=t, token_ids=list(range(len(t))), finish_reason="stop") for t in texts]
    return PromptResult(idx, f"p{idx}", f"prompt {idx}", [1, 2, 3], completions, None)


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "store.sqlite3")
    yield s
    s.close()


def _job(store: Store, count: int, filters: dict | None = None) -> str:
    return store.create_job("t", {"n": 1, "max_tokens": 8}, filters or {"drop_empty": True},
                            [(f"p{i}", f"prompt {i}") for i in range(count)])


def test_a_recorded_prompt_is_no_longer_pending_and_counts_add_up(store):
    job_id = _job(store, 3)
    store.record_prompt_result(job_id, _result(1, ["abc", "de"]), {"drop_empty": True}, 0.5)
    assert [idx for idx, _, _ in store.pending_prompts(job_id)] == [0, 2]
    job = store.get_job(job_id)
    assert (job["prompts_done"], job["samples_written"], job["samples_kept"], job["output_tokens"]) == (1, 2, 2, 5)
    assert job["tokens_per_s"] == pytest.approx(10.0)


def test_recording_the_same_prompt_twice_is_refused(store):
    job_id = _job(store, 1)
    store.record_prompt_result(job_id, _result(0, ["abc"]), {}, 0.1)
    with pytest.raises(Exception):
        store.record_prompt_result(job_id, _result(0, ["abc"]), {}, 0.1)
    assert store.get_job(job_id)["samples_written"] == 1  # the failed write left nothing behind


def test_empty_completions_are_filtered_and_hidden_by_default(store):
    job_id = _job(store, 1)
    store.record_prompt_result(job_id, _result(0, ["code", "   ", ""]), {"drop_empty": True}, 0.1)
    kept = store.samples_page(job_id, 0, 10, include_filtered=False)
    everything = store.samples_page(job_id, 0, 10, include_filtered=True)
    assert [s["completion"] for s in kept] == ["code"]
    assert [s["filter_reason"] for s in everything] == [None, "empty", "empty"]
    assert store.get_job(job_id)["samples_filtered"] == 2


@pytest.mark.parametrize("order", ["increasing", "decreasing"])
def test_shortest_fraction_is_cut_over_the_whole_job_when_it_ends(store, order):
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.25}
    job_id = _job(store, 20, filters)
    lengths = list(range(1, 21)) if order == "increasing" else list(range(20, 0, -1))
    for idx, length in enumerate(lengths):
        store.record_prompt_result(job_id, _result(idx, ["x" * length]), filters, 0.1)
    # Until the job ends no sample's fate is known, so none is handed out.
    assert store.samples_page(job_id, 0, 100, include_filtered=False) == []
    store.finish_job(job_id, "completed")
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    dropped = sorted(s["num_tokens"] for s in everything if s["filter_reason"] == "shortest")
    assert dropped == [1, 2, 3, 4, 5]  # exactly the shortest 25 %, whatever the arrival order
    job = store.get_job(job_id)
    assert (job["status"], job["samples_kept"], job["samples_filtered"]) == ("completed", 15, 5)


def test_pages_are_stable_and_cursors_increase(store):
    job_id = _job(store, 5)
    for idx in range(5):
        store.record_prompt_result(job_id, _result(idx, ["a" * (idx + 1), "b"]), {}, 0.1)
    first = store.samples_page(job_id, 0, 4, False)
    assert first == store.samples_page(job_id, 0, 4, False)
    second = store.samples_page(job_id, first[-1]["cursor"], 100, False)
    cursors = [s["cursor"] for s in first + second]
    assert cursors == sorted(cursors) and len(cursors) == 10
    assert not store.has_samples_after(job_id, cursors[-1], False)


def test_jobs_and_adapters_survive_reopening(tmp_path):
    path = tmp_path / "store.sqlite3"
    store = Store(path)
    job_id = _job(store, 2)
    store.set_status(job_id, "running")
    store.record_prompt_result(job_id, _result(0, ["abc"]), {}, 0.1)
    version, lora_id = store.next_adapter_version("ssd")
    store.add_adapter_version("ssd", version, lora_id, "/x", 8)
    store.set_alias("ssd", version)
    store.close()

    reopened = Store(path)
    assert reopened.active_job_ids() == [job_id]
    assert [idx for idx, _, _ in reopened.pending_prompts(job_id)] == [1]
    assert reopened.aliases() == {"ssd": 1}
    assert reopened.next_adapter_version("ssd") == (2, 2)
    reopened.close()


def test_a_cancelled_job_is_not_completed_later(store):
    job_id = _job(store, 1)
    store.finish_job(job_id, "cancelled")
    store.finish_job(job_id, "completed")
    assert store.get_job(job_id)["status"] == "cancelled"

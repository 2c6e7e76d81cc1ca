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


def _record_texts_with_tokens(store: Store, job_id: str, filters: dict, items: list[tuple[str, int]]) -> None:
    for idx, (text, num_tokens) in enumerate(items):
        completion = Completion(text=text, token_ids=list(range(num_tokens)), finish_reason="stop")
        store.record_prompt_result(job_id, PromptResult(idx, f"p{idx}", "q", [1], [completion], None), filters, 0.1)


# Characters and tokens rank these completions in opposite orders: "a" * 40 is one long run of few
# tokens, "x y" is short text of many tokens.
_CHARS_VS_TOKENS = [("a" * 40, 2), ("b" * 30, 3), ("x y", 50), ("z w", 40)]


@pytest.mark.parametrize("shortest_by, dropped", [("chars", {"x y", "z w"}), ("tokens", {"a" * 40, "b" * 30})])
def test_shortest_fraction_measures_characters_by_default_and_tokens_on_request(store, shortest_by, dropped):
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.5, "shortest_by": shortest_by}
    job_id = _job(store, len(_CHARS_VS_TOKENS), filters)
    _record_texts_with_tokens(store, job_id, filters, _CHARS_VS_TOKENS)
    store.finish_job(job_id, "completed")
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    assert {s["completion"] for s in everything if s["filter_reason"] == "shortest"} == dropped


def test_shortest_fraction_defaults_to_characters_when_the_job_does_not_say(store):
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.5}     # a job stored without `shortest_by`
    job_id = _job(store, len(_CHARS_VS_TOKENS), filters)
    _record_texts_with_tokens(store, job_id, filters, _CHARS_VS_TOKENS)
    store.finish_job(job_id, "completed")
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    assert {s["completion"] for s in everything if s["filter_reason"] == "shortest"} == {"x y", "z w"}


def test_shortest_fraction_keeps_every_completion_tied_at_the_cut(store):
    # 10 % of 10 is one sample, but the three shortest have the same length: ml-ssd keeps all three.
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.1, "shortest_by": "chars"}
    texts = ["abc", "def", "ghi"] + ["x" * n for n in range(10, 17)]
    job_id = _job(store, len(texts), filters)
    _record_texts_with_tokens(store, job_id, filters, [(t, 1) for t in texts])
    store.finish_job(job_id, "completed")
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    assert [s["filter_reason"] for s in everything] == [None] * 10


def test_the_cut_counts_characters_not_bytes(store):
    # "éééé" is 4 characters and 8 bytes in UTF-8; by characters it is the shortest and is dropped.
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.25, "shortest_by": "chars"}
    texts = ["éééé", "abcde", "abcdef", "abcdefg"]
    job_id = _job(store, len(texts), filters)
    _record_texts_with_tokens(store, job_id, filters, [(t, 1) for t in texts])
    store.finish_job(job_id, "completed")
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    assert [s["completion"] for s in everything if s["filter_reason"] == "shortest"] == ["éééé"]


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

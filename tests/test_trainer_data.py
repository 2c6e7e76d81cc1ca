"""Tokenization, the prompt mask, length bucketing and the deterministic data order."""

from __future__ import annotations

import json
from collections import Counter

import httpx
import pytest

from client import JobStalled, SamplerClient
from tests.test_trainer_fixtures import TINY_EOS, synthetic_samples
from trainer.data import (
    IGNORE_INDEX,
    HttpSampleSource,
    JsonlSampleSource,
    ListSampleSource,
    MicroBatchStream,
    SampleEncoder,
    bucket_by_length,
    collate,
    eos_token_ids,
)

MAX_SEQ_LEN = 64


def encoder(max_seq_len: int = MAX_SEQ_LEN, tokenizer=None) -> SampleEncoder:
    return SampleEncoder(eos_ids=[TINY_EOS], max_seq_len=max_seq_len, tokenizer=tokenizer)


def stream(samples, *, seed=0, window=8, max_sequences=4, max_padded_tokens=128, epochs=1):
    return MicroBatchStream(ListSampleSource(samples), encoder(), window=window, max_sequences=max_sequences,
                            max_padded_tokens=max_padded_tokens, seed=seed, pad_id=0, epochs=epochs)


@pytest.mark.parametrize("sample", synthetic_samples(6))
def test_prompt_is_masked_and_eos_is_the_last_target(sample):
    encoded = encoder()(sample)
    prompt_len = len(sample["prompt_token_ids"])
    labels = encoded.labels
    assert encoded.num_prompt_tokens == prompt_len
    assert labels[:prompt_len] == [IGNORE_INDEX] * prompt_len          # no prompt token carries loss
    assert IGNORE_INDEX not in labels[prompt_len:]                       # every completion token does
    assert encoded.input_ids[-1] == TINY_EOS and labels[-1] == TINY_EOS
    completion = sample["completion_token_ids"]
    expected = completion if completion[-1] == TINY_EOS else completion + [TINY_EOS]
    assert encoded.input_ids[prompt_len:] == expected                    # EOS appended once, never twice


def test_truncation_keeps_the_prompt_end_and_the_mask_matches():
    sample = {"cursor": 1, "prompt_token_ids": list(range(10, 60)), "completion_token_ids": [7] * 30}
    encoded = encoder(max_seq_len=40)(sample)
    assert len(encoded) == 40 and encoded.truncated
    assert encoded.input_ids[:encoded.num_prompt_tokens] == list(range(60 - 9, 60))   # the prompt's end
    assert encoded.labels.count(IGNORE_INDEX) == encoded.num_prompt_tokens == 9


def test_completion_longer_than_max_seq_len_keeps_one_prompt_token():
    sample = {"cursor": 1, "prompt_token_ids": [5, 6, 7], "completion_token_ids": [9] * 100}
    encoded = encoder(max_seq_len=16)(sample)
    assert len(encoded) == 16 and encoded.num_prompt_tokens == 1 and encoded.input_ids[0] == 7


class CharTokenizer:
    """Stands in for an HF tokenizer: one id per character."""
    def __call__(self, text, add_special_tokens=True):
        assert add_special_tokens is False          # the prompt is already chat-template rendered
        return {"input_ids": [3 + ord(char) % 50 for char in text]}


def test_text_is_tokenized_only_when_ids_are_missing():
    sample = {"cursor": 1, "prompt": "<user>hi<assistant>", "completion": "def f(): pass"}
    encoded = encoder(tokenizer=CharTokenizer())(sample)
    assert encoded.num_prompt_tokens == len(sample["prompt"])
    assert len(encoded) == len(sample["prompt"]) + len(sample["completion"]) + 1
    with pytest.raises(ValueError, match="no prompt_token_ids"):
        encoder()(sample)


def test_eos_falls_back_to_the_model_config():
    class Config:
        eos_token_id = [7, 8]
    assert eos_token_ids(None, Config()) == [7, 8]
    with pytest.raises(ValueError, match="no EOS"):
        eos_token_ids(None, None)


def test_collated_labels_mask_prompt_and_padding():
    encoded = [encoder()(sample) for sample in synthetic_samples(5)]
    batch = collate(encoded, pad_id=0)
    for row, sample in enumerate(encoded):
        labels = batch.labels[row].tolist()
        assert labels[:sample.num_prompt_tokens] == [IGNORE_INDEX] * sample.num_prompt_tokens
        assert labels[len(sample):] == [IGNORE_INDEX] * (batch.input_ids.shape[1] - len(sample))
        assert (batch.labels[row] != IGNORE_INDEX).sum() == len(sample) - sample.num_prompt_tokens
    assert batch.num_tokens == sum(len(sample) for sample in encoded)


def test_buckets_respect_both_budgets_and_lose_no_sample():
    encoded = [encoder()(sample) for sample in synthetic_samples(50, max_len=30)]
    batches = bucket_by_length(encoded, max_sequences=4, max_padded_tokens=100)
    for batch in batches:
        assert len(batch) <= 4
        assert len(batch) * max(len(sample) for sample in batch) <= 100
    assert sorted(s.cursor for batch in batches for s in batch) == sorted(s.cursor for s in encoded)


def test_stream_covers_every_sample_once_per_epoch_and_reports_padding():
    samples = synthetic_samples(37)
    data = stream(samples, epochs=2)
    seen = Counter(cursor for batch, _ in data for cursor in batch.cursors)
    assert seen == Counter({sample["cursor"]: 2 for sample in samples})
    assert 0.7 < data.stats.efficiency <= 1.0
    assert data.micro_batches_per_epoch() * 2 == len(list(stream(samples, epochs=2)))


def test_order_is_deterministic_and_resumes_exactly_from_any_position():
    samples = synthetic_samples(40)
    full = [(batch.cursors, position) for batch, position in stream(samples, seed=3, epochs=2)]
    assert full == [(batch.cursors, position) for batch, position in stream(samples, seed=3, epochs=2)]
    assert [c for c, _ in full] != [c for c, _ in stream_list(samples, seed=4)]
    for cut in (1, 5, len(full) // 2, len(full) - 1):
        resumed = [batch.cursors for batch, _ in stream(samples, seed=3, epochs=2).iterate(full[cut - 1][1])]
        assert resumed == [cursors for cursors, _ in full[cut:]]


def stream_list(samples, seed):
    return [(batch.cursors, position) for batch, position in stream(samples, seed=seed, epochs=2)]


def test_empty_source_is_an_error():
    with pytest.raises(ValueError, match="no samples"):
        list(stream([]))


def test_jsonl_source_reads_an_export(tmp_path):
    samples = synthetic_samples(5)
    path = tmp_path / "samples.jsonl"
    path.write_text("\n".join(json.dumps(sample) for sample in samples) + "\n\n")
    assert [s["cursor"] for s in JsonlSampleSource(path)] == [s["cursor"] for s in samples]
    assert [s["cursor"] for s in JsonlSampleSource(path, after=20)] == [30, 40, 50]


def pull_api(samples, empty_pages_first=2):
    """An httpx transport that answers the pull API as the service does while a job still samples:
    empty pages first. Returns (transport, the `after` of every page request)."""
    calls = []
    state = {"empty_left": empty_pages_first}

    def handler(request: httpx.Request) -> httpx.Response:
        if not request.url.path.endswith("/samples"):
            return httpx.Response(200, json={"status": "running", "prompts_done": 0, "num_prompts": 1})
        after, limit = int(request.url.params["after"]), int(request.url.params["limit"])
        calls.append(after)
        if state["empty_left"]:
            state["empty_left"] -= 1
            return httpx.Response(200, json={"samples": [], "next_cursor": after, "has_more": True,
                                             "job_status": "running"})
        page = [s for s in samples if s["cursor"] > after][:limit]
        next_cursor = page[-1]["cursor"] if page else after
        has_more = any(s["cursor"] > next_cursor for s in samples)
        return httpx.Response(200, json={"samples": page, "next_cursor": next_cursor, "has_more": has_more,
                                         "job_status": "completed"})

    return httpx.MockTransport(handler), calls


def test_http_source_waits_on_a_running_job_and_pages_with_the_cursor():
    samples = synthetic_samples(7)
    transport, calls = pull_api(samples)
    with SamplerClient("http://test", transport=transport) as client:
        source = HttpSampleSource(client, "job_1", page_size=3, poll_s=0)
        assert [s["cursor"] for s in source] == [s["cursor"] for s in samples]
        assert calls == [0, 0, 0, 30, 60]
        assert [s["cursor"] for s in source.iter_from(50)] == [60, 70]


def test_http_source_gives_up_on_a_stalled_job_and_names_it():
    transport, _ = pull_api([], empty_pages_first=10**9)
    with SamplerClient("http://test", transport=transport) as client:
        source = HttpSampleSource(client, "job_stuck", poll_s=0.01, stall_timeout_s=0.2)
        with pytest.raises(JobStalled, match="job_stuck"):
            list(source)


def test_padding_to_a_multiple_stays_within_the_budget():
    encoded = [encoder()(sample) for sample in synthetic_samples(30, max_len=30)]
    for batch in bucket_by_length(encoded, max_sequences=8, max_padded_tokens=128, pad_to_multiple=8):
        collated = collate(batch, pad_id=0, pad_to_multiple=8)
        assert collated.input_ids.shape[1] % 8 == 0 and collated.num_padded_tokens <= 128

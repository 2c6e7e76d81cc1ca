"""The durable store, on SQLite and on a real PostgreSQL: atomic and idempotent prompt results,
stable pages, filters, leases and their expiry, the last prompt completing the job, restart."""

from __future__ import annotations

import threading
import time

import pytest

from sampler_service.store import Completion, PromptResult, SQLiteStore, Store, open_store

LEASE_S = 30.0


def _result(idx: int, texts: list[str]) -> PromptResult:
    completions = [Completion(text=t, token_ids=list(range(len(t))), finish_reason="stop") for t in texts]
    return PromptResult(idx, f"p{idx}", f"prompt {idx}", [1, 2, 3], completions, None)


@pytest.fixture(params=["sqlite", "postgres"])
def store_spec(request, tmp_path) -> str:
    if request.param == "sqlite":
        return str(tmp_path / "store.sqlite3")
    return request.getfixturevalue("pg_url")


@pytest.fixture
def store(store_spec, tmp_path):
    s = open_store(store_spec, tmp_path)
    yield s
    s.close()


@pytest.fixture
def pg_pair(pg_url, tmp_path):
    """Two stores on one database: two replicas' views."""
    a, b = open_store(pg_url, tmp_path), open_store(pg_url, tmp_path)
    yield a, b
    a.close()
    b.close()


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


def test_recording_the_same_prompt_twice_writes_it_once(store):
    job_id = _job(store, 2)
    assert store.record_prompt_result(job_id, _result(0, ["abc", "x"]), {}, 0.1) == 2
    assert store.record_prompt_result(job_id, _result(0, ["other", "y"]), {}, 0.1) is None
    job = store.get_job(job_id)
    assert (job["prompts_done"], job["samples_written"]) == (1, 2)
    assert [s["completion"] for s in store.samples_page(job_id, 0, 10, True)] == ["abc", "x"]


def test_empty_completions_are_filtered_and_hidden_by_default(store):
    job_id = _job(store, 1)
    store.record_prompt_result(job_id, _result(0, ["code", "   ", ""]), {"drop_empty": True}, 0.1)
    kept = store.samples_page(job_id, 0, 10, include_filtered=False)
    everything = store.samples_page(job_id, 0, 10, include_filtered=True)
    assert [s["completion"] for s in kept] == ["code"]
    assert [s["filter_reason"] for s in everything] == [None, "empty", "empty"]
    assert store.get_job(job_id)["samples_filtered"] == 2


@pytest.mark.parametrize("order", ["increasing", "decreasing"])
def test_shortest_fraction_is_cut_over_the_whole_job_when_the_last_prompt_lands(store, order):
    filters = {"drop_empty": True, "drop_shortest_fraction": 0.25}
    job_id = _job(store, 20, filters)
    lengths = list(range(1, 21)) if order == "increasing" else list(range(20, 0, -1))
    for idx, length in enumerate(lengths[:-1]):
        store.record_prompt_result(job_id, _result(idx, ["x" * length]), filters, 0.1)
    # Until the job ends no sample's fate is known, so none is handed out.
    assert store.samples_page(job_id, 0, 100, include_filtered=False) == []
    assert store.get_job(job_id)["status"] == "queued"
    store.record_prompt_result(job_id, _result(19, ["x" * lengths[-1]]), filters, 0.1)
    everything = store.samples_page(job_id, 0, 100, include_filtered=True)
    dropped = sorted(s["num_tokens"] for s in everything if s["filter_reason"] == "shortest")
    assert dropped == [1, 2, 3, 4, 5]  # exactly the shortest 25 %, whatever the arrival order
    job = store.get_job(job_id)
    assert (job["status"], job["samples_kept"], job["samples_filtered"]) == ("completed", 15, 5)
    assert store.finish_job(job_id, "completed") is False  # already finished, by the last write


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


def test_a_cancelled_job_is_not_completed_later(store):
    job_id = _job(store, 2)
    assert store.finish_job(job_id, "cancelled") is True
    assert store.finish_job(job_id, "completed") is False
    assert store.record_prompt_result(job_id, _result(0, ["late"]), {}, 0.1) is None
    job = store.get_job(job_id)
    assert (job["status"], job["samples_written"]) == ("cancelled", 0)


# -- leases ------------------------------------------------------------------------------------

def test_leases_are_disjoint_and_in_index_order(store):
    job_id = _job(store, 5)
    first = store.lease_prompts(job_id, "r1", 3, LEASE_S)
    second = store.lease_prompts(job_id, "r2", 3, LEASE_S)
    assert [idx for idx, _, _ in first] == [0, 1, 2]
    assert [idx for idx, _, _ in second] == [3, 4]
    assert store.lease_prompts(job_id, "r3", 3, LEASE_S) == []
    assert store.lease_owners(job_id) == {0: "r1", 1: "r1", 2: "r1", 3: "r2", 4: "r2"}


def test_an_expired_lease_is_taken_over_and_a_heartbeat_keeps_one(store):
    job_id = _job(store, 2)
    # Sleeps only ever run long: "dead" has surely expired; "alive" keeps a second of slack.
    store.lease_prompts(job_id, "dead", 1, 2.0)
    store.lease_prompts(job_id, "alive", 1, 2.0)
    time.sleep(1.2)
    store.heartbeat("alive", 2.0)  # pushes only its own lease forward
    time.sleep(1.0)
    taken = store.lease_prompts(job_id, "rescuer", 5, LEASE_S)
    assert [idx for idx, _, _ in taken] == [0]
    assert store.lease_owners(job_id) == {0: "rescuer", 1: "alive"}


def test_released_leases_and_done_prompts(store):
    job_id = _job(store, 3)
    store.lease_prompts(job_id, "r1", 3, LEASE_S)
    store.record_prompt_result(job_id, _result(0, ["a"]), {}, 0.1)
    store.release_leases("r1")
    assert [idx for idx, _, _ in store.lease_prompts(job_id, "r2", 5, LEASE_S)] == [1, 2]
    assert store.unfinished_prompts(job_id) == 2


def test_live_replicas_follow_heartbeats(store):
    store.heartbeat("a", 2.0)
    store.heartbeat("b", 2.0)
    assert store.live_replicas(2.0) == ["a", "b"]
    time.sleep(1.2)
    store.heartbeat("b", 2.0)
    time.sleep(1.0)
    assert store.live_replicas(2.0) == ["b"]
    store.remove_replica("b")
    assert store.live_replicas(2.0) == []


# -- PostgreSQL: two replicas on one database --------------------------------------------------

def test_concurrent_leases_from_two_replicas_never_overlap(pg_pair):
    a, b = pg_pair
    job_id = _job(a, 200)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def lease_all(name: str, store: Store) -> None:
        while batch := store.lease_prompts(job_id, name, 7, LEASE_S):
            got[name].extend(idx for idx, _, _ in batch)

    threads = [threading.Thread(target=lease_all, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(got["a"] + got["b"]) == list(range(200))
    assert got["a"] and got["b"]  # both made progress: SKIP LOCKED let neither wait for the other


def test_two_replicas_racing_on_every_prompt_write_each_once_and_complete_the_job_once(pg_pair):
    a, b = pg_pair
    count = 40
    job_id = _job(a, count)
    outcomes: dict[str, list] = {"a": [], "b": []}

    def write_all(name: str, store: Store) -> None:
        for idx in range(count):
            outcomes[name].append(store.record_prompt_result(job_id, _result(idx, [f"{name}{idx}", "z"]), {}, 0.1))

    threads = [threading.Thread(target=write_all, args=(n, s)) for n, s in (("a", a), ("b", b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # Per prompt, exactly one writer won; the other wrote nothing.
    assert all((x is None) != (y is None) for x, y in zip(outcomes["a"], outcomes["b"]))
    job = a.get_job(job_id)
    assert (job["status"], job["prompts_done"], job["samples_written"]) == ("completed", count, 2 * count)
    rows = b.samples_page(job_id, 0, 1000, True)
    assert len({(s["prompt_idx"], s["sample_index"]) for s in rows}) == len(rows) == 2 * count
    # A page read through either replica is the same page, in cursor order.
    assert a.samples_page(job_id, 10, 25, False) == b.samples_page(job_id, 10, 25, False)
    assert [s["cursor"] for s in rows] == sorted(s["cursor"] for s in rows)


def test_a_reader_polling_while_two_replicas_write_never_skips_a_cursor(pg_pair):
    a, b = pg_pair
    count = 60
    job_id = _job(a, count)
    seen: list[int] = []
    done = threading.Event()

    def write(store: Store, indices: range) -> None:
        for idx in indices:
            store.record_prompt_result(job_id, _result(idx, ["s1", "s2", "s3"]), {}, 0.01)

    def read() -> None:
        after = 0
        while True:
            finished = done.is_set()
            page = a.samples_page(job_id, after, 7, True)
            seen.extend(s["cursor"] for s in page)
            after = page[-1]["cursor"] if page else after
            if finished and not page:
                return

    reader = threading.Thread(target=read)
    writers = [threading.Thread(target=write, args=(a, range(0, count, 2))),
               threading.Thread(target=write, args=(b, range(1, count, 2)))]
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert len(seen) == 3 * count == len(set(seen))  # every sample pulled once, none skipped


def test_sqlite_reopened_keeps_jobs_and_adapters_and_frees_old_leases(tmp_path):
    path = tmp_path / "store.sqlite3"
    store = SQLiteStore(path)
    job_id = _job(store, 3)
    store.mark_running(job_id)
    store.lease_prompts(job_id, "crashed", 3, LEASE_S)
    store.record_prompt_result(job_id, _result(0, ["abc"]), {}, 0.1)
    version, lora_id = store.create_adapter_version("ssd", 8, "/x")
    store.move_alias("ssd", version)
    store.close()

    reopened = SQLiteStore(path)
    assert reopened.active_job_ids() == [job_id]
    # One process owns the file, so the crashed run's leases are void at once.
    assert [idx for idx, _, _ in reopened.lease_prompts(job_id, "new", 5, LEASE_S)] == [1, 2]
    assert reopened.aliases() == {"ssd": 1}
    assert reopened.create_adapter_version("ssd", 8, "/y") == (2, 2)
    reopened.close()


def test_a_sqlite_store_from_before_leases_is_migrated_on_open(tmp_path):
    import sqlite3

    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript("""
        CREATE TABLE job_prompts (job_id TEXT NOT NULL, idx INTEGER NOT NULL, prompt_id TEXT NOT NULL,
            input TEXT NOT NULL, done INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (job_id, idx));
        CREATE TABLE adapters (name TEXT NOT NULL, version INTEGER NOT NULL, lora_id INTEGER NOT NULL UNIQUE,
            path TEXT NOT NULL, rank INTEGER NOT NULL, created_at REAL NOT NULL, PRIMARY KEY (name, version));
        INSERT INTO adapters VALUES ('ssd', 1, 1, '/x', 8, 0.0);
    """)
    old.close()
    store = SQLiteStore(path)
    job_id = _job(store, 2)
    assert [idx for idx, _, _ in store.lease_prompts(job_id, "r", 5, LEASE_S)] == [0, 1]
    assert store.adapter_versions()[0]["state"] == "ready"  # versions from before stay servable
    store.close()


def test_adapter_versions_acks_and_alias(store, tmp_path):
    v1, id1 = store.create_adapter_version("ssd", 8, "/a")
    v2, id2 = store.create_adapter_version("ssd", 8, "/b")
    assert (v1, v2) == (1, 2) and id2 == id1 + 1
    store.ack_adapter("ssd", v2, "r1", None)
    store.ack_adapter("ssd", v2, "r2", "boom")
    store.ack_adapter("ssd", v2, "r2", None)  # a retry overwrites
    assert store.adapter_acks("ssd", v2) == {"r1": None, "r2": None}
    assert store.alias_of("ssd") is None
    store.move_alias("ssd", v2)
    assert store.alias_of("ssd") == 2
    states = {v["version"]: v["state"] for v in store.adapter_versions()}
    assert states == {1: "uploading", 2: "ready"}
    store.delete_adapter("ssd")
    assert store.adapter_versions() == [] and store.aliases() == {}


def test_prompts_the_context_cut_are_counted_on_the_job(store):
    job_id = _job(store, 3)
    store.record_prompt_result(job_id, _result(0, ["abc"]), {}, 0.1)
    clamped = _result(1, ["ab"])
    clamped.clamped = True
    store.record_prompt_result(job_id, clamped, {}, 0.1)
    too_long = PromptResult(2, "p2", "a long prompt", [1] * 9, [], None, too_long=True)
    store.record_prompt_result(job_id, too_long, {}, 0.0)
    job = store.get_job(job_id)
    assert (job["prompts_clamped"], job["prompts_too_long"], job["samples_written"]) == (1, 1, 2)
    assert job["status"] == "completed"

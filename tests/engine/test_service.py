"""The sampling service against the real vLLM engine with the demo model."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from tests.server_harness import TEST_MAX_BODY_BYTES, TEST_MAX_MODEL_LEN, TEST_MAX_N, TEST_MAX_QUEUE, auth_headers

pytestmark = pytest.mark.engine

CHAT = [[{"role": "user", "content": "Write a Python function that returns the square of a number."}]]


@pytest.fixture(scope="module")
def http(sampler_url: str):
    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
        yield client


def post_samples(http: httpx.Client, **body) -> httpx.Response:
    return http.post("/v1/samples", json=body)


def test_health_and_metrics(http):
    health = http.get("/health")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    post_samples(http, prompts=["def f():"], max_tokens=4, temperature=0)
    text = http.get("/metrics").text
    for name in ("ssd_queue_depth", "ssd_requests_total", "ssd_generated_tokens_total", "ssd_tokens_per_second",
                 "ssd_errors_total"):
        assert name in text
    generated = [line for line in text.splitlines() if line.startswith("ssd_generated_tokens_total ")]
    assert float(generated[0].split()[1]) >= 4


def test_chat_sampling_returns_n_completions_with_counts(http):
    response = post_samples(http, messages=CHAT * 2, n=3, temperature=1.6, top_k=20, top_p=0.8, max_tokens=24)
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == [0, 1]
    for result in body["results"]:
        assert result["prompt"].rstrip().endswith("assistant")  # the chat template was applied
        assert len(result["completions"]) == 3
        for completion in result["completions"]:
            assert completion["num_tokens"] == len(completion["token_ids"]) <= 24
            assert completion["finish_reason"] in ("stop", "length")
    assert body["usage"]["completion_tokens"] == sum(
        c["num_tokens"] for r in body["results"] for c in r["completions"])


def test_raw_prompt_greedy_is_deterministic_and_logprobs_are_consistent(http):
    first = post_samples(http, prompts=["def fibonacci(n):"], temperature=0, max_tokens=16, logprobs=3).json()
    second = post_samples(http, prompts=["def fibonacci(n):"], temperature=0, max_tokens=16, logprobs=3).json()
    a, b = first["results"][0]["completions"][0], second["results"][0]["completions"][0]
    assert a["token_ids"] == b["token_ids"]
    assert len(a["logprobs"]) == a["num_tokens"]
    for token_id, position in zip(a["token_ids"], a["logprobs"]):
        assert position["token_id"] == token_id
        # greedy: the sampled token is the most likely one
        assert position["logprob"] == pytest.approx(max(position["top"].values()), abs=1e-5)


@pytest.mark.parametrize("body, param", [
    ({"temperature": -0.5}, "temperature"),
    ({"top_p": 0.0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -2}, "top_k"),
    ({"top_k": 0}, "top_k"),
    ({"n": 0}, "n"),
    ({"n": TEST_MAX_N + 1}, "n"),
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": TEST_MAX_MODEL_LEN}, "max_tokens"),
    ({"prompts": []}, "prompts"),
    ({"prompts": "not a list"}, "prompts"),
    ({"temperature": "hot"}, "temperature"),
    ({"n": 2.5}, "n"),
    ({"min_p": 2}, "min_p"),
    ({"logprobs": 99}, "logprobs"),
    ({"stop": [""]}, "stop"),
    ({"temprature": 1.0}, "temprature"),
    ({"messages": [[{"role": "robot", "content": "hi"}]], "prompts": None}, "messages.0.0.role"),
])
def test_invalid_fields_get_400_naming_the_field(http, body, param):
    full = {"prompts": ["def f():"], "max_tokens": 4} | body
    full = {k: v for k, v in full.items() if v is not None}
    response = http.post("/v1/samples", json=full)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request"
    assert error["param"] == param
    assert error["message"]


def test_body_that_is_not_json_gets_400(http):
    response = http.post("/v1/samples", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400


def test_seed_is_refused_with_400_and_the_engine_stays_alive(http):
    response = post_samples(http, prompts=["def f():"], seed=1234, max_tokens=8, temperature=1.0)
    # The CPU build crashes on per-request seeds; the service refuses them instead of dying.
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "seed"
    assert http.get("/health").status_code == 200
    assert post_samples(http, prompts=["def f():"], max_tokens=4).status_code == 200


def test_unknown_adapter_and_job_get_404(http):
    assert post_samples(http, prompts=["x"], adapter="missing").status_code == 404
    assert http.get("/v1/jobs/job_missing").status_code == 404
    assert http.delete("/v1/jobs/job_missing").status_code == 404
    assert http.get("/v1/jobs/job_missing/samples").status_code == 404
    assert http.delete("/v1/adapters/missing").status_code == 404


def test_oversized_body_gets_413(http):
    big = {"prompts": ["x" * (TEST_MAX_BODY_BYTES + 10)]}
    response = http.post("/v1/samples", content=json.dumps(big).encode(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "payload_too_large"


def test_full_queue_gets_503_with_retry_after(http):
    response = post_samples(http, prompts=["def f():"] * (TEST_MAX_QUEUE + 1), max_tokens=2)
    assert response.status_code == 503
    assert int(response.headers["retry-after"]) >= 1
    assert response.json()["error"]["type"] == "overloaded"


def _queue_depth(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("ssd_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no ssd_queue_depth metric")


def test_client_disconnect_aborts_the_generation(sampler_url, http):
    body = {"prompts": ["Count from one to a thousand:"], "max_tokens": TEST_MAX_MODEL_LEN - 32,
            "ignore_eos": True, "temperature": 1.0}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(sampler_url + "/v1/samples", json=body, timeout=httpx.Timeout(2.0, connect=5.0),
                   headers=auth_headers())
    # ~1000 tokens take far longer than this on the CPU; the slot frees only if the request was aborted.
    deadline = time.monotonic() + 10
    while _queue_depth(http) > 0 and time.monotonic() < deadline:
        time.sleep(0.25)
    assert _queue_depth(http) == 0


def _prompts(count: int) -> list[dict]:
    return [{"id": f"task-{i}", "messages": [{"role": "user", "content": f"Write a Python function number {i}."}]}
            for i in range(count)]


def _pull_all(http: httpx.Client, job_id: str, limit: int = 7, include_filtered: bool = False) -> list[dict]:
    samples, cursor = [], 0
    while True:
        page = http.get(f"/v1/jobs/{job_id}/samples",
                        params={"after": cursor, "limit": limit, "include_filtered": include_filtered}).json()
        samples += page["samples"]
        cursor = page["next_cursor"]
        if not page["has_more"]:
            return samples
        if not page["samples"]:
            time.sleep(0.5)


def test_job_runs_pulls_while_running_and_pages_are_stable(http):
    created = http.post("/v1/jobs", json={"prompts": _prompts(12), "n": 2, "temperature": 1.6, "top_k": 20,
                                           "top_p": 0.8, "max_tokens": 32, "name": "t",
                                           "filters": {"drop_empty": True, "drop_shortest_fraction": 0.1}})
    assert created.status_code == 201, created.text
    job_id = created.json()["id"]
    samples = _pull_all(http, job_id)  # starts while the job is still running
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed"
    assert job["prompts_done"] == 12 and job["samples_written"] == 24
    assert job["samples_kept"] + job["samples_filtered"] == 24
    assert len(samples) == job["samples_kept"]
    everything = _pull_all(http, job_id, include_filtered=True)
    assert len(everything) == 24
    assert {(s["prompt_id"], s["sample_index"]) for s in everything} == {
        (f"task-{i}", k) for i in range(12) for k in range(2)}
    for sample in everything:
        assert sample["kept"] == (sample["filter_reason"] is None)
        assert sample["num_tokens"] == len(sample["completion_token_ids"])
    first = http.get(f"/v1/jobs/{job_id}/samples", params={"after": 3, "limit": 5}).json()
    again = http.get(f"/v1/jobs/{job_id}/samples", params={"after": 3, "limit": 5}).json()
    assert first == again
    assert job_id in [j["id"] for j in http.get("/v1/jobs").json()["jobs"]]
    assert job["tokens_per_s"] > 0


def test_job_validation_errors(http):
    duplicate = http.post("/v1/jobs", json={"prompts": [{"id": "a", "prompt": "x"}, {"id": "a", "prompt": "y"}]})
    assert duplicate.status_code == 400
    empty = http.post("/v1/jobs", json={"prompts": []})
    assert empty.status_code == 400 and empty.json()["error"]["param"] == "prompts"
    both = http.post("/v1/jobs", json={"prompts": [{"id": "a"}]})
    assert both.status_code == 400
    bad_filter = http.post("/v1/jobs", json={"prompts": [{"id": "a", "prompt": "x"}],
                                              "filters": {"drop_shortest_fraction": 2}})
    assert bad_filter.status_code == 400 and bad_filter.json()["error"]["param"] == "filters.drop_shortest_fraction"
    assert http.get("/v1/jobs/x/samples", params={"limit": 0}).status_code == 400


def test_cancel_stops_a_job(http):
    job_id = http.post("/v1/jobs", json={"prompts": _prompts(40), "max_tokens": 64}).json()["id"]
    time.sleep(1.0)
    cancelled = http.delete(f"/v1/jobs/{job_id}").json()
    assert cancelled["status"] == "cancelled"
    written = cancelled["samples_written"]
    time.sleep(2.0)
    job = http.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "cancelled" and job["samples_written"] == written < 40
    assert http.get("/health").status_code == 200


def test_job_survives_kill9_and_restart_without_loss_or_duplicates(sampler_server, http):
    count = 24
    job_id = http.post("/v1/jobs", json={"prompts": _prompts(count), "n": 2, "temperature": 1.2,
                                          "max_tokens": 48, "filters": {"drop_empty": False}}).json()["id"]
    deadline = time.monotonic() + 300
    while http.get(f"/v1/jobs/{job_id}").json()["prompts_done"] < 3 and time.monotonic() < deadline:
        time.sleep(0.2)
    before = http.get(f"/v1/jobs/{job_id}").json()
    assert 3 <= before["prompts_done"] < count, "kill the job mid-way: raise the prompt count if it finished"

    sampler_server.kill9()
    sampler_server.start()

    with httpx.Client(base_url=sampler_server.url, timeout=300, headers=auth_headers()) as fresh:
        samples = _pull_all(fresh, job_id, include_filtered=True)
        job = fresh.get(f"/v1/jobs/{job_id}").json()
    assert job["status"] == "completed"
    keys = [(s["prompt_id"], s["sample_index"]) for s in samples]
    assert len(keys) == len(set(keys)) == count * 2  # nothing lost, nothing twice
    assert job["samples_written"] == count * 2 and job["prompts_done"] == count
    cursors = [s["cursor"] for s in samples]
    assert cursors == sorted(cursors)

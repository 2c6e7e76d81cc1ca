"""max_tokens against the real engine's context (TEST_MAX_MODEL_LEN): left out, each prompt gets the
rest of its context; asked past it, a request gets a 400 that says so and a job lowers it and counts
the prompt; a prompt longer than the context is counted, never sampled. Nothing is cut silently."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.server_harness import TEST_MAX_MODEL_LEN, auth_headers

pytestmark = pytest.mark.engine

LONG_PROMPT = "word " * 1000            # 1001 demo-model tokens: a little room left in a 1024 context
TOO_LONG_PROMPT = "word " * 1100        # 1101 tokens: no room at all
JOB_TIMEOUT_S = 300


@pytest.fixture(scope="module")
def http(sampler_url: str):
    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
        yield client


def test_no_max_tokens_fills_the_rest_of_the_context(http):
    response = http.post("/v1/samples", json={"prompts": [LONG_PROMPT], "temperature": 0, "ignore_eos": True})
    assert response.status_code == 200, response.text
    result = response.json()["results"][0]
    room = TEST_MAX_MODEL_LEN - len(result["prompt_token_ids"])
    assert 0 < room < 100
    completion = result["completions"][0]
    assert completion["num_tokens"] == room and completion["finish_reason"] == "length"


def test_max_tokens_past_the_context_is_a_400_that_says_so(http):
    response = http.post("/v1/samples", json={"prompts": [LONG_PROMPT], "max_tokens": 200})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "max_tokens"
    assert "exceeds the context length 1024" in error["message"] and "leave max_tokens out" in error["message"]
    no_room = http.post("/v1/samples", json={"prompts": [TOO_LONG_PROMPT]})
    assert no_room.status_code == 400 and "leaves no room" in no_room.json()["error"]["message"]


def _finished_job(http: httpx.Client, body: dict) -> dict:
    created = http.post("/v1/jobs", json=body | {"temperature": 0, "ignore_eos": True,
                                                 "filters": {"drop_empty": False, "drop_shortest_fraction": 0}})
    assert created.status_code == 201, created.text
    deadline = time.monotonic() + JOB_TIMEOUT_S
    while (job := http.get(f"/v1/jobs/{created.json()['id']}").json())["status"] != "completed":
        assert time.monotonic() < deadline and job["status"] in ("queued", "running"), job
        time.sleep(0.5)
    return job


def _samples(http: httpx.Client, job_id: str) -> dict[str, dict]:
    page = http.get(f"/v1/jobs/{job_id}/samples", params={"include_filtered": True}).json()
    return {s["prompt_id"]: s for s in page["samples"]}


def test_a_job_fills_the_context_and_counts_what_it_lowers_or_skips(http):
    prompts = [{"id": "long", "prompt": LONG_PROMPT}, {"id": "too-long", "prompt": TOO_LONG_PROMPT}]
    filled = _finished_job(http, {"prompts": prompts})
    assert (filled["prompts_clamped"], filled["prompts_too_long"]) == (0, 1)   # filling is what was asked
    sample = _samples(http, filled["id"])["long"]
    assert sample["num_tokens"] == TEST_MAX_MODEL_LEN - len(sample["prompt_token_ids"])

    lowered = _finished_job(http, {"prompts": prompts, "max_tokens": 200})
    assert (lowered["prompts_clamped"], lowered["prompts_too_long"]) == (1, 1)
    sample = _samples(http, lowered["id"])["long"]
    assert sample["num_tokens"] == TEST_MAX_MODEL_LEN - len(sample["prompt_token_ids"])
    assert set(_samples(http, lowered["id"])) == {"long"}

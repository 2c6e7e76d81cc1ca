"""A real round trip: sample a job on the demo model, train a few steps from the pull API, push,
and check that the alias now changes the output while the base model's does not."""

from __future__ import annotations

import httpx
import pytest

from tests.server_harness import auth_headers

pytestmark = pytest.mark.engine

PROMPT = "def reverse_words(sentence):"


def _greedy(http: httpx.Client, adapter: str | None) -> dict:
    body = {"prompts": [PROMPT], "temperature": 0, "max_tokens": 16, "ignore_eos": True, "logprobs": 1}
    if adapter:
        body["adapter"] = adapter
    response = http.post("/v1/samples", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_sample_train_push_changes_the_alias_but_not_the_base(sampler_url, demo_model_path, tmp_path):
    from trainer.config import TrainConfig
    from trainer.recipe import train

    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as http:
        base_before = _greedy(http, None)["results"][0]["completions"][0]
        prompts = [{"id": f"rt-{i}", "messages": [{"role": "user", "content": f"Write a Python function {name}."}]}
                   for i, name in enumerate(["add", "reverse", "count_vowels", "flatten", "merge", "rotate"])]
        job = http.post("/v1/jobs", json={"prompts": prompts, "temperature": 1.6, "top_k": 20, "top_p": 0.8,
                                          "max_tokens": 48}).json()

        # The trainer starts pulling while the job may still be running.
        result = train(TrainConfig(
            model=demo_model_path, sampler_url=sampler_url, job_id=job["id"], output_dir=tmp_path / "run",
            lora_rank=8, lora_alpha=16, lr=5e-3, warmup_steps=0, max_steps=4, micro_batch_size=3,
            grad_accum=1, max_seq_len=256, save_every=0, push=True, adapter_name="roundtrip"))

        assert result.steps == 4 and result.tokens > 0
        assert result.pushed["name"] == "roundtrip" and result.pushed["version"] >= 1
        served = _greedy(http, "roundtrip")
        assert served["adapter"]["name"] == "roundtrip"
        # A few steps need not flip a greedy token, but they always move the distribution: where the
        # greedy tokens are the same, their log-probabilities must differ.
        tuned = served["results"][0]["completions"][0]
        assert tuned["token_ids"] != base_before["token_ids"] or max(
            abs(a["logprob"] - b["logprob"]) for a, b in zip(tuned["logprobs"], base_before["logprobs"])) > 1e-3
        base_after = _greedy(http, None)["results"][0]["completions"][0]
        assert base_after["token_ids"] == base_before["token_ids"]
        assert [p["logprob"] for p in base_after["logprobs"]] == pytest.approx(
            [p["logprob"] for p in base_before["logprobs"]], abs=1e-4)
        http.delete("/v1/adapters/roundtrip")

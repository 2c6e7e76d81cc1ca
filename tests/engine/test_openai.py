"""The OpenAI-compatible endpoints and API keys against the real engine, driven by the official
`openai` client: completions, chat, streaming, n > 1, an adapter (and a hot reload) as the model,
errors, a disconnect mid-stream, and a key's cap on requests in flight with the client's own retry."""

from __future__ import annotations

import threading
import time

import httpx
import openai
import pytest

from tests.engine.test_adapters import make_adapter
from tests.server_harness import TEST_ADMIN_KEY, TEST_LIMITED_KEY, TEST_MAX_MODEL_LEN, TEST_SAMPLE_KEY, auth_headers

pytestmark = pytest.mark.engine

PROMPT = "def is_palindrome(s):"
CHAT = [{"role": "user", "content": "Write a Python function that reverses a string."}]


@pytest.fixture(scope="module")
def http(sampler_url: str):
    with httpx.Client(base_url=sampler_url, timeout=300, headers=auth_headers()) as client:
        yield client


def make_client(sampler_url: str, key: str = TEST_SAMPLE_KEY, **kwargs) -> openai.OpenAI:
    return openai.OpenAI(base_url=sampler_url + "/v1", api_key=key, timeout=300, **{"max_retries": 0, **kwargs})


@pytest.fixture(scope="module")
def oai(sampler_url: str) -> openai.OpenAI:
    return make_client(sampler_url)


def native_greedy(http: httpx.Client, *, prompts=None, messages=None, adapter=None, max_tokens=12) -> dict:
    body = {"prompts": prompts, "messages": messages, "adapter": adapter, "temperature": 0, "max_tokens": max_tokens}
    response = http.post("/v1/samples", json={k: v for k, v in body.items() if v is not None})
    assert response.status_code == 200, response.text
    return response.json()["results"][0]["completions"][0]


def test_completion_is_the_native_engine_path_with_usage(oai, http):
    out = oai.completions.create(model="demo", prompt=PROMPT, max_tokens=12, temperature=0, logprobs=2)
    native = native_greedy(http, prompts=[PROMPT])
    choice = out.choices[0]
    assert choice.text == native["text"] and choice.finish_reason == native["finish_reason"]
    assert out.object == "text_completion" and out.model == "demo"
    assert out.usage.completion_tokens == native["num_tokens"]
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens > native["num_tokens"]
    assert len(choice.logprobs.tokens) == native["num_tokens"]
    assert "".join(choice.logprobs.tokens) == choice.text
    for logprob, top in zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs):
        assert logprob == pytest.approx(max(top.values()), abs=1e-5)   # greedy picks the likeliest


def test_chat_with_n_and_token_ids_prompt(oai, http):
    out = oai.chat.completions.create(model="demo", messages=CHAT, n=3, temperature=1.2, top_p=0.9,
                                      max_tokens=10, extra_body={"top_k": 20, "min_p": 0.05})
    assert out.object == "chat.completion"
    assert [c.index for c in out.choices] == [0, 1, 2]
    for choice in out.choices:
        assert choice.message.role == "assistant" and isinstance(choice.message.content, str)
        assert choice.finish_reason in ("stop", "length")
    assert 3 <= out.usage.completion_tokens <= 30
    greedy = oai.chat.completions.create(model="demo", messages=CHAT, temperature=0, max_tokens=12,
                                         logprobs=True, top_logprobs=2)
    assert greedy.choices[0].message.content == native_greedy(http, messages=[CHAT])["text"]
    for position in greedy.choices[0].logprobs.content:
        assert len(position.top_logprobs) == 2
        assert position.logprob == pytest.approx(position.top_logprobs[0].logprob, abs=1e-5)
    # two prompts as token ids: choices are numbered across prompts
    ids = oai.completions.create(model="demo", prompt=[[1, 2, 3], [4, 5]], n=2, max_tokens=3)
    assert [c.index for c in ids.choices] == [0, 1, 2, 3] and ids.usage.prompt_tokens == 5


def test_streaming_completion_and_chat_match_the_non_streamed_text(oai):
    full = oai.completions.create(model="demo", prompt=PROMPT, max_tokens=16, temperature=0)
    chunks = list(oai.completions.create(model="demo", prompt=PROMPT, max_tokens=16, temperature=0, stream=True,
                                         stream_options={"include_usage": True}))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert len(pieces) > 1 and "".join(pieces) == full.choices[0].text
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    chat_full = oai.chat.completions.create(model="demo", messages=CHAT, max_tokens=16, temperature=0)
    stream = oai.chat.completions.create(model="demo", messages=CHAT, max_tokens=16, temperature=0, stream=True)
    deltas = [chunk.choices[0].delta for chunk in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == chat_full.choices[0].message.content


def test_adapter_alias_pinned_version_and_hot_reload(oai, http, demo_model_path, tmp_path):
    def upload(folder) -> dict:
        files = {f: (f, (folder / f).read_bytes()) for f in ("adapter_config.json", "adapter_model.safetensors")}
        response = http.post("/v1/adapters", data={"name": "oai"}, files=files)
        assert response.status_code == 201, response.text
        return response.json()

    first = upload(make_adapter(demo_model_path, tmp_path / "a", seed=1))
    try:
        ids = [m.id for m in oai.models.list().data]
        assert ids[0] == "demo" and "oai" in ids and first["alias"] in ids
        via_alias = oai.completions.create(model="oai", prompt=PROMPT, max_tokens=12, temperature=0)
        assert via_alias.choices[0].text == native_greedy(http, prompts=[PROMPT], adapter="oai")["text"]
        second = upload(make_adapter(demo_model_path, tmp_path / "b", seed=2))
        after = oai.completions.create(model="oai", prompt=PROMPT, max_tokens=12, temperature=0)
        pinned = oai.completions.create(model=second["alias"], prompt=PROMPT, max_tokens=12, temperature=0)
        assert after.choices[0].text == pinned.choices[0].text  # the alias serves the new version, no restart
        assert second["alias"] in [m.id for m in oai.models.list().data]
        chat = oai.chat.completions.create(model="oai", messages=CHAT, max_tokens=6, stream=True)
        assert any(chunk.choices[0].delta.content for chunk in chat)
    finally:
        http.delete("/v1/adapters/oai")
    with pytest.raises(openai.NotFoundError):
        oai.completions.create(model="oai", prompt=PROMPT, max_tokens=4)


def test_errors_keep_the_native_status_in_openai_shape(oai):
    with pytest.raises(openai.NotFoundError) as err:
        oai.chat.completions.create(model="no-such-model", messages=CHAT, max_tokens=4)
    assert err.value.status_code == 404 and err.value.body["code"] == "model_not_found"
    assert err.value.body["param"] == "model"
    cases = [(dict(temperature=-1), "temperature"), (dict(seed=7), "seed"), (dict(extra_body={"top_k": 0}), "top_k"),
             (dict(max_tokens=TEST_MAX_MODEL_LEN), "max_tokens"), (dict(extra_body={"best_of": 2}), "best_of"),
             (dict(n=99), "n")]
    for kwargs, param in cases:
        with pytest.raises(openai.BadRequestError) as err:
            oai.completions.create(model="demo", prompt=PROMPT, **{"max_tokens": 4, **kwargs})
        assert err.value.body["param"] == param, kwargs
        assert err.value.body["type"] == "invalid_request_error"


def test_keys_and_scopes_against_the_real_engine(sampler_url):
    with pytest.raises(openai.AuthenticationError):
        make_client(sampler_url, key="wrong-key-0123456789").models.list()
    with httpx.Client(base_url=sampler_url, timeout=60) as anonymous:
        assert anonymous.get("/health").status_code == 200
        assert anonymous.post("/v1/samples", json={"prompts": ["x"], "max_tokens": 2}).status_code == 401
        forbidden = anonymous.post("/v1/jobs", json={"prompts": [{"id": "a", "prompt": "x"}]},
                                   headers=auth_headers(TEST_SAMPLE_KEY))
        assert forbidden.status_code == 403
        ok = anonymous.post("/v1/samples", json={"prompts": ["x"], "max_tokens": 2},
                            headers=auth_headers(TEST_SAMPLE_KEY))
        assert ok.status_code == 200
    assert make_client(sampler_url, key=TEST_ADMIN_KEY).models.list().data


def _queue_depth(http: httpx.Client) -> float:
    for line in http.get("/metrics").text.splitlines():
        if line.startswith("ssd_queue_depth "):
            return float(line.split()[1])
    raise AssertionError("no ssd_queue_depth metric")


def _wait_idle(http: httpx.Client, seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while _queue_depth(http) > 0 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _queue_depth(http) == 0


def _long_stream(client: openai.OpenAI):
    """A stream that would run ~1000 tokens (minutes on a CPU) unless it is aborted."""
    return client.completions.create(model="demo", prompt="Count to a thousand:", max_tokens=TEST_MAX_MODEL_LEN - 32,
                                     temperature=1.0, stream=True, extra_body={"ignore_eos": True})


def test_disconnect_mid_stream_aborts_the_generation(oai, http):
    stream = _long_stream(oai)
    chunks = iter(stream)
    received = [next(chunks) for _ in range(3)]
    assert all(chunk.choices[0].finish_reason is None for chunk in received)
    assert _queue_depth(http) >= 1
    stream.close()
    _wait_idle(http)   # freed long before ~1000 tokens could have been generated: it was aborted
    assert oai.completions.create(model="demo", prompt=PROMPT, max_tokens=4).choices


def test_a_key_at_its_cap_gets_429_and_the_openai_client_retries(sampler_url, http):
    limited = make_client(sampler_url, key=TEST_LIMITED_KEY)
    holder = _long_stream(limited)          # the key's one request in flight
    next(iter(holder))
    with pytest.raises(openai.RateLimitError) as err:
        limited.completions.create(model="demo", prompt=PROMPT, max_tokens=4)
    assert int(err.value.response.headers["retry-after"]) >= 1
    statuses: list[int] = []
    retrying = make_client(sampler_url, key=TEST_LIMITED_KEY, max_retries=5, http_client=httpx.Client(
        timeout=300, event_hooks={"response": [lambda response: statuses.append(response.status_code)]}))
    threading.Timer(1.5, holder.close).start()   # the slot frees while the client is backing off
    out = retrying.completions.create(model="demo", prompt=PROMPT, max_tokens=4)
    assert out.choices and statuses[0] == 429 and statuses[-1] == 200
    _wait_idle(http)

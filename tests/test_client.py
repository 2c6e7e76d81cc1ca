"""The httpx client: retries, Retry-After, and errors that carry the server's message.

The server side is httpx's MockTransport: the thing under test is the client's behaviour."""

from __future__ import annotations

import asyncio

import httpx
import pytest

import client.api as api
from client import AsyncSamplerClient, BadRequest, NotFound, SamplerClient, ServiceUnavailable


def _client(handler, monkeypatch, sleeps: list[float]) -> SamplerClient:
    monkeypatch.setattr(api.time, "sleep", sleeps.append)
    sampler = SamplerClient("http://test", max_retries=3)
    sampler._http = httpx.Client(base_url="http://test", transport=httpx.MockTransport(handler))
    return sampler


def test_retries_503_honouring_retry_after(monkeypatch):
    calls, sleeps = [], []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if len(calls) < 3:
            return httpx.Response(503, headers={"Retry-After": "7"}, json={"error": {"type": "overloaded",
                                                                                      "message": "full"}})
        return httpx.Response(200, json={"results": []})

    sampler = _client(handler, monkeypatch, sleeps)
    assert sampler.sample(prompts=["x"], temperature=0.5) == {"results": []}
    assert len(calls) == 3 and sleeps == [7.0, 7.0]
    assert calls[0].read() == b'{"temperature":0.5,"prompts":["x"]}'


def test_gives_up_after_max_retries_with_a_clear_error(monkeypatch):
    sleeps: list[float] = []
    sampler = _client(lambda r: httpx.Response(503, json={"error": {"message": "loading"}}), monkeypatch, sleeps)
    with pytest.raises(ServiceUnavailable, match="loading"):
        sampler.health()
    assert sleeps == [0.5, 1.0, 2.0]  # exponential backoff without a Retry-After


def test_connection_errors_are_retried_then_reported(monkeypatch):
    def handler(request):
        raise httpx.ConnectError("refused")

    sleeps: list[float] = []
    with pytest.raises(ServiceUnavailable, match="cannot reach"):
        _client(handler, monkeypatch, sleeps).get_job("x")
    assert len(sleeps) == 3


def test_400_and_404_carry_the_servers_message_and_field(monkeypatch):
    def handler(request):
        if request.url.path == "/v1/samples":
            return httpx.Response(400, json={"error": {"type": "invalid_request", "message": "top_p: too big",
                                                       "param": "top_p"}})
        return httpx.Response(404, json={"error": {"type": "not_found", "message": "unknown job 'x'", "param": "id"}})

    sampler = _client(handler, monkeypatch, [])
    with pytest.raises(BadRequest) as info:
        sampler.sample(prompts=["x"], top_p=3)
    assert info.value.param == "top_p" and "too big" in str(info.value)
    with pytest.raises(NotFound, match="unknown job"):
        sampler.get_job("x")


def test_unknown_sampling_parameter_is_caught_before_sending(monkeypatch):
    sampler = _client(lambda r: httpx.Response(200, json={}), monkeypatch, [])
    with pytest.raises(TypeError, match="temprature"):
        sampler.sample(prompts=["x"], temprature=1.0)


def test_iter_samples_follows_pages_until_the_job_is_done(monkeypatch):
    pages = {0: {"samples": [{"cursor": 1}, {"cursor": 2}], "next_cursor": 2, "has_more": True},
             2: {"samples": [], "next_cursor": 2, "has_more": True},
             }
    seen_after: list[int] = []

    def handler(request):
        after = int(request.url.params["after"])
        seen_after.append(after)
        if after == 2 and seen_after.count(2) > 1:
            return httpx.Response(200, json={"samples": [{"cursor": 3}], "next_cursor": 3, "has_more": False})
        return httpx.Response(200, json=pages[after])

    sleeps: list[float] = []
    sampler = _client(handler, monkeypatch, sleeps)
    assert [s["cursor"] for s in sampler.iter_samples("job")] == [1, 2, 3]
    assert seen_after == [0, 2, 2] and len(sleeps) == 1


def test_the_async_client_offers_every_method_of_the_sync_one():
    def public(cls):
        return {name for name in dir(cls) if not name.startswith("_") and callable(getattr(cls, name))}

    assert public(SamplerClient) - {"close"} == public(AsyncSamplerClient) - {"aclose"}


def test_async_client_pages_waits_and_raises_like_the_sync_one():
    pages = iter([{"samples": [{"cursor": 1}], "next_cursor": 1, "has_more": True},
                  {"samples": [{"cursor": 2}], "next_cursor": 2, "has_more": False}])

    def handler(request):
        if request.url.path.endswith("/samples"):
            return httpx.Response(200, json=next(pages))
        return httpx.Response(404, json={"error": {"type": "not_found", "message": "unknown job 'x'", "param": "id"}})

    async def run():
        async with AsyncSamplerClient("http://test", transport=httpx.MockTransport(handler)) as sampler:
            cursors = [s["cursor"] async for s in sampler.iter_samples("job", poll_s=0)]
            with pytest.raises(NotFound, match="unknown job"):
                await sampler.get_job("x")
            return cursors

    assert asyncio.run(run()) == [1, 2]


def test_the_api_key_is_sent_as_a_bearer_token(monkeypatch):
    seen = []

    def handler(request):
        seen.append(request.headers.get("authorization"))
        return httpx.Response(200, json={"status": "ok"})

    monkeypatch.setenv("SSD_API_KEY", "from-env")
    SamplerClient("http://test", transport=httpx.MockTransport(handler)).health()
    SamplerClient("http://test", api_key="explicit", transport=httpx.MockTransport(handler)).health()
    assert seen == ["Bearer from-env", "Bearer explicit"]

"""Typed httpx clients, sync and async, for every endpoint of the sampling service.

    from client import SamplerClient
    with SamplerClient("http://127.0.0.1:8000") as sampler:
        out = sampler.sample(messages=[[{"role": "user", "content": "Write fizzbuzz."}]],
                             temperature=0.8, top_k=20, top_p=0.8, max_tokens=256)
        job = sampler.create_job(prompts=[{"id": "p1", "prompt": "..."}], temperature=1.6)
        for sample in sampler.iter_samples(job["id"]):
            ...

Both clients retry with exponential backoff on 503 and on connection errors, honour `Retry-After`,
and raise `APIError` subclasses that carry the server's message and the offending field.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Iterator

import httpx

from client.errors import APIError, BadRequest, NotFound, ServiceUnavailable

DEFAULT_TIMEOUT_S = 600.0          # sampling a long batch on a CPU takes minutes
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_RETRIES = 8
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
DEFAULT_PAGE_SIZE = 100
FOLLOW_POLL_S = 1.0

_SAMPLING_FIELDS = ("n", "temperature", "top_k", "top_p", "min_p", "max_tokens", "stop", "seed",
                    "adapter", "logprobs", "ignore_eos")


def _sampling_body(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(_SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {sorted(unknown)}")
    return {k: v for k, v in params.items() if v is not None}


def _sample_body(prompts: list[str] | None, messages: list[list[dict]] | None, params: dict[str, Any]) -> dict:
    body = _sampling_body(params)
    if prompts is not None:
        body["prompts"] = prompts
    if messages is not None:
        body["messages"] = messages
    return body


def _job_body(prompts: list[dict[str, Any]], filters: dict[str, Any] | None, name: str | None,
              params: dict[str, Any]) -> dict:
    body = _sampling_body(params) | {"prompts": prompts}
    if filters is not None:
        body["filters"] = filters
    if name is not None:
        body["name"] = name
    return body


def _raise_for_error(response: httpx.Response) -> None:
    if response.status_code < 400:
        return
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    message = error.get("message") or response.text[:500] or response.reason_phrase
    args = (response.status_code, error.get("type", "error"), message, error.get("param"))
    if response.status_code == 400:
        raise BadRequest(*args)
    if response.status_code == 404:
        raise NotFound(*args)
    if response.status_code == 503:
        raise ServiceUnavailable(f"HTTP 503 {args[1]}: {message}")
    raise APIError(*args)


def _retry_delay(attempt: int, response: httpx.Response | None) -> float:
    if response is not None and (header := response.headers.get("retry-after")):
        try:
            return min(float(header), BACKOFF_MAX_S)
        except ValueError:
            pass
    return min(BACKOFF_BASE_S * 2 ** attempt, BACKOFF_MAX_S)


def _adapter_upload(name: str, adapter_dir: str | Path, *, by_path: bool) -> dict[str, Any]:
    adapter_dir = Path(adapter_dir)
    if by_path:
        return {"json": {"name": name, "path": str(adapter_dir.resolve())}}
    files = {fname: (fname, (adapter_dir / fname).read_bytes())
             for fname in ("adapter_config.json", "adapter_model.safetensors")}
    return {"data": {"name": name}, "files": files}


class SamplerClient:
    """Blocking client. Use as a context manager, or call `close()`."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.Client(base_url=self.base_url,
                                  timeout=httpx.Timeout(timeout_s, connect=DEFAULT_CONNECT_TIMEOUT_S))

    def __enter__(self) -> "SamplerClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = None
        for attempt in range(self.max_retries + 1):
            try:
                response = self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == self.max_retries:
                    raise ServiceUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
                time.sleep(_retry_delay(attempt, None))
                continue
            if response.status_code == 503 and attempt < self.max_retries:
                time.sleep(_retry_delay(attempt, response))
                continue
            break
        _raise_for_error(response)
        return response.json()

    # -- service -----------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return self._request("GET", "/health")

    def wait_until_healthy(self, timeout_s: float = 600.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                response = self._http.get("/health")
                if response.status_code == 200:
                    return response.json()
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{self.base_url} not healthy after {timeout_s:.0f}s")
            time.sleep(FOLLOW_POLL_S)

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, *, prompts: list[str] | None = None, messages: list[list[dict]] | None = None,
               **params: Any) -> dict[str, Any]:
        return self._request("POST", "/v1/samples", json=_sample_body(prompts, messages, params))

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, *, prompts: list[dict[str, Any]], filters: dict[str, Any] | None = None,
                   name: str | None = None, **params: Any) -> dict[str, Any]:
        return self._request("POST", "/v1/jobs", json=_job_body(prompts, filters, name, params))

    def get_job(self, job_id: str) -> dict[str, Any]:
        return self._request("GET", f"/v1/jobs/{job_id}")

    def list_jobs(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/jobs")["jobs"]

    def cancel_job(self, job_id: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/jobs/{job_id}")

    def samples_page(self, job_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE_SIZE,
                     include_filtered: bool = False) -> dict[str, Any]:
        query = {"after": after, "limit": limit, "include_filtered": str(include_filtered).lower()}
        return self._request("GET", f"/v1/jobs/{job_id}/samples", params=query)

    def iter_samples(self, job_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE_SIZE,
                     follow: bool = True, include_filtered: bool = False) -> Iterator[dict[str, Any]]:
        """Yield samples in cursor order (kept ones unless `include_filtered`). With `follow`, wait
        for a running job to finish."""
        while True:
            page = self.samples_page(job_id, after=after, limit=limit, include_filtered=include_filtered)
            yield from page["samples"]
            after = page["next_cursor"]
            if not page["has_more"]:
                return
            if not page["samples"]:
                if not follow:
                    return
                time.sleep(FOLLOW_POLL_S)

    def wait_for_job(self, job_id: str, *, poll_s: float = FOLLOW_POLL_S, on_progress=None) -> dict[str, Any]:
        while True:
            job = self.get_job(job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in ("completed", "failed", "cancelled"):
                return job
            time.sleep(poll_s)

    # -- adapters ----------------------------------------------------------------------------
    def upload_adapter(self, name: str, adapter_dir: str | Path, *, by_path: bool = False) -> dict[str, Any]:
        return self._request("POST", "/v1/adapters", **_adapter_upload(name, adapter_dir, by_path=by_path))

    def list_adapters(self) -> list[dict[str, Any]]:
        return self._request("GET", "/v1/adapters")["adapters"]

    def delete_adapter(self, name: str) -> dict[str, Any]:
        return self._request("DELETE", f"/v1/adapters/{name}")


class AsyncSamplerClient:
    """The same API as `SamplerClient`, for asyncio code (concurrent evaluation, load tests)."""

    def __init__(self, base_url: str = "http://127.0.0.1:8000", *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 max_retries: int = DEFAULT_MAX_RETRIES, max_connections: int = 256):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.AsyncClient(
            base_url=self.base_url, timeout=httpx.Timeout(timeout_s, connect=DEFAULT_CONNECT_TIMEOUT_S),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections))

    async def __aenter__(self) -> "AsyncSamplerClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        response = None
        for attempt in range(self.max_retries + 1):
            try:
                response = await self._http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError) as exc:
                if attempt == self.max_retries:
                    raise ServiceUnavailable(f"cannot reach {self.base_url}: {exc}") from exc
                await asyncio.sleep(_retry_delay(attempt, None))
                continue
            if response.status_code == 503 and attempt < self.max_retries:
                await asyncio.sleep(_retry_delay(attempt, response))
                continue
            break
        _raise_for_error(response)
        return response.json()

    async def health(self) -> dict[str, Any]:
        return await self._request("GET", "/health")

    async def sample(self, *, prompts: list[str] | None = None, messages: list[list[dict]] | None = None,
                     **params: Any) -> dict[str, Any]:
        return await self._request("POST", "/v1/samples", json=_sample_body(prompts, messages, params))

    async def create_job(self, *, prompts: list[dict[str, Any]], filters: dict[str, Any] | None = None,
                         name: str | None = None, **params: Any) -> dict[str, Any]:
        return await self._request("POST", "/v1/jobs", json=_job_body(prompts, filters, name, params))

    async def get_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("GET", f"/v1/jobs/{job_id}")

    async def cancel_job(self, job_id: str) -> dict[str, Any]:
        return await self._request("DELETE", f"/v1/jobs/{job_id}")

    async def samples_page(self, job_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE_SIZE,
                           include_filtered: bool = False) -> dict[str, Any]:
        query = {"after": after, "limit": limit, "include_filtered": str(include_filtered).lower()}
        return await self._request("GET", f"/v1/jobs/{job_id}/samples", params=query)

    async def upload_adapter(self, name: str, adapter_dir: str | Path, *, by_path: bool = False) -> dict[str, Any]:
        return await self._request("POST", "/v1/adapters", **_adapter_upload(name, adapter_dir, by_path=by_path))

    async def list_adapters(self) -> list[dict[str, Any]]:
        return (await self._request("GET", "/v1/adapters"))["adapters"]

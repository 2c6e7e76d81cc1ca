"""Typed httpx clients, sync and async, for every endpoint of the sampling service.

    from client import SamplerClient
    with SamplerClient("http://127.0.0.1:8000") as sampler:
        out = sampler.sample(messages=[[{"role": "user", "content": "Write fizzbuzz."}]],
                             temperature=0.8, top_k=20, top_p=0.8, max_tokens=256)
        job = sampler.create_job(prompts=[{"id": "p1", "prompt": "..."}], temperature=1.6)
        for sample in sampler.iter_samples(job["id"]):
            ...

`AsyncSamplerClient` has the same methods, to be awaited (`async for` for `iter_samples`).

Why one core: every endpoint, its retries and its error handling are written once, in `_Endpoints`,
as generators that *yield* what they need done (send this request, sleep this long, hand the caller
this sample) and receive the result. The two clients only differ in how they do those steps, with
`httpx.Client` and `time.sleep` or with `httpx.AsyncClient` and `asyncio.sleep`, so they cannot drift
apart. Both retry with exponential backoff on 503 and on connection errors, honour `Retry-After`,
and raise `APIError` subclasses that carry the server's message and the offending field.
"""

from __future__ import annotations

import asyncio
import functools
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import httpx

from client.errors import APIError, BadRequest, JobStalled, NotFound, ServiceUnavailable
from common.protocol import ADAPTER_FILES, DEFAULT_PAGE_SIZE, DEFAULT_URL, FINAL_JOB_STATUSES, SAMPLING_FIELDS

DEFAULT_TIMEOUT_S = 600.0          # sampling a long batch on a CPU takes minutes
DEFAULT_CONNECT_TIMEOUT_S = 5.0
DEFAULT_MAX_RETRIES = 8
DEFAULT_HEALTH_TIMEOUT_S = 600.0   # a first engine start compiles and loads the model
DEFAULT_MAX_CONNECTIONS = 256
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 30.0
FOLLOW_POLL_S = 1.0
API_KEY_ENV = "SSD_API_KEY"
# Errors after which the request certainly did not reach a handler, so a retry cannot duplicate it.
_RETRIED_TRANSPORT_ERRORS = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError)


# -- the steps an endpoint asks its driver to do ---------------------------------------------------

@dataclass(frozen=True)
class _Send:
    """One HTTP attempt. The driver answers with the response, or the transport error it raised."""

    method: str
    path: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    probe: bool = False       # a health probe: any transport error is an answer ("not up yet")


@dataclass(frozen=True)
class _Sleep:
    seconds: float


@dataclass(frozen=True)
class _Yield:
    """A value for the caller of an iterator endpoint (`iter_samples`)."""

    value: Any


# Each endpoint is a generator of steps, but the clients expose it as a plain method (or an awaitable,
# or an iterator), so to the type checker its result is `Any`.
_Step: TypeAlias = Any


def _sampling_body(params: dict[str, Any]) -> dict[str, Any]:
    unknown = set(params) - set(SAMPLING_FIELDS)
    if unknown:
        raise TypeError(f"unknown sampling parameter(s): {sorted(unknown)}; known: {list(SAMPLING_FIELDS)}")
    return {k: v for k, v in params.items() if v is not None}


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
    files = {fname: (fname, (adapter_dir / fname).read_bytes()) for fname in ADAPTER_FILES}
    return {"data": {"name": name}, "files": files}


class _Endpoints:
    """Every endpoint, once. Methods are generators of steps; the clients below drive them.

    A subclass replaces each public name with its driven form, so one endpoint calls another as
    `_Endpoints.get_job(self, ...)`, the generator, never `self.get_job(...)`."""

    base_url: str
    max_retries: int

    def _request(self, method: str, path: str, **kwargs: Any) -> _Step:
        outcome: Any = None
        for attempt in range(self.max_retries + 1):
            outcome = yield _Send(method, path, kwargs)
            last = attempt == self.max_retries
            if isinstance(outcome, Exception):
                if last:
                    raise ServiceUnavailable(f"cannot reach {self.base_url}: {outcome}") from outcome
                yield _Sleep(_retry_delay(attempt, None))
            elif outcome.status_code == 503 and not last:
                yield _Sleep(_retry_delay(attempt, outcome))
            else:
                break
        _raise_for_error(outcome)
        return outcome.json()

    # -- service -----------------------------------------------------------------------------
    def health(self) -> _Step:
        return (yield from self._request("GET", "/health"))

    def wait_until_healthy(self, timeout_s: float = DEFAULT_HEALTH_TIMEOUT_S,
                           still_starting: Callable[[], None] | None = None) -> _Step:
        """Poll /health until it answers 200. `still_starting` may raise to stop early (the
        server process died, say)."""
        deadline = time.monotonic() + timeout_s
        while True:
            outcome = yield _Send("GET", "/health", probe=True)
            if not isinstance(outcome, Exception) and outcome.status_code == 200:
                return outcome.json()
            if still_starting is not None:
                still_starting()
            if time.monotonic() > deadline:
                raise ServiceUnavailable(f"{self.base_url} not healthy after {timeout_s:.0f}s")
            yield _Sleep(FOLLOW_POLL_S)

    # -- sampling ----------------------------------------------------------------------------
    def sample(self, *, prompts: list[str] | None = None, messages: list[list[dict]] | None = None,
               **params: Any) -> _Step:
        body = _sampling_body(params)
        if prompts is not None:
            body["prompts"] = prompts
        if messages is not None:
            body["messages"] = messages
        return (yield from self._request("POST", "/v1/samples", json=body))

    # -- jobs --------------------------------------------------------------------------------
    def create_job(self, *, prompts: list[dict[str, Any]], filters: dict[str, Any] | None = None,
                   name: str | None = None, **params: Any) -> _Step:
        body = _sampling_body(params) | {"prompts": prompts}
        if filters is not None:
            body["filters"] = filters
        if name is not None:
            body["name"] = name
        return (yield from self._request("POST", "/v1/jobs", json=body))

    def get_job(self, job_id: str) -> _Step:
        return (yield from self._request("GET", f"/v1/jobs/{job_id}"))

    def list_jobs(self) -> _Step:
        return (yield from self._request("GET", "/v1/jobs"))["jobs"]

    def cancel_job(self, job_id: str) -> _Step:
        return (yield from self._request("DELETE", f"/v1/jobs/{job_id}"))

    def samples_page(self, job_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE_SIZE,
                     include_filtered: bool = False) -> _Step:
        query = {"after": after, "limit": limit, "include_filtered": str(include_filtered).lower()}
        return (yield from self._request("GET", f"/v1/jobs/{job_id}/samples", params=query))

    def iter_samples(self, job_id: str, *, after: int = 0, limit: int = DEFAULT_PAGE_SIZE,
                     follow: bool = True, include_filtered: bool = False,
                     stall_timeout_s: float | None = None, poll_s: float = FOLLOW_POLL_S) -> _Step:
        """Samples in cursor order (kept ones unless `include_filtered`), from `after` on. With
        `follow`, wait while the job runs. With `stall_timeout_s`, raise `JobStalled` when neither a
        new sample nor a finished prompt has appeared for that long: no replica works on the job."""
        watch = _StallWatch(job_id, stall_timeout_s)
        while True:
            page = yield from _Endpoints.samples_page(self, job_id, after=after, limit=limit,
                                                      include_filtered=include_filtered)
            for sample in page["samples"]:
                yield _Yield(sample)
            after = page["next_cursor"]
            if not page["has_more"] or (not page["samples"] and not follow):
                return
            if page["samples"]:
                watch.progress()
            else:
                if watch.enabled:
                    watch.check((yield from _Endpoints.get_job(self, job_id)))
                yield _Sleep(poll_s)

    def wait_for_job(self, job_id: str, *, poll_s: float = FOLLOW_POLL_S,
                     on_progress: Callable[[dict], None] | None = None) -> _Step:
        """Poll until the job reaches a final status; `on_progress(job)` sees every poll."""
        while True:
            job = yield from _Endpoints.get_job(self, job_id)
            if on_progress is not None:
                on_progress(job)
            if job["status"] in FINAL_JOB_STATUSES:
                return job
            yield _Sleep(poll_s)

    # -- adapters ----------------------------------------------------------------------------
    def upload_adapter(self, name: str, adapter_dir: str | Path, *, by_path: bool = False) -> _Step:
        return (yield from self._request("POST", "/v1/adapters", **_adapter_upload(name, adapter_dir, by_path=by_path)))

    def list_adapters(self) -> _Step:
        return (yield from self._request("GET", "/v1/adapters"))["adapters"]

    def delete_adapter(self, name: str) -> _Step:
        return (yield from self._request("DELETE", f"/v1/adapters/{name}"))


class _StallWatch:
    """Tells a slow job from a dead one: progress is a new sample or a newly finished prompt."""

    def __init__(self, job_id: str, timeout_s: float | None):
        self.job_id = job_id
        self.timeout_s = timeout_s
        self.enabled = timeout_s is not None
        self.last_progress = time.monotonic()
        self.prompts_done = -1

    def progress(self) -> None:
        self.last_progress = time.monotonic()

    def check(self, job: dict[str, Any]) -> None:
        if job["prompts_done"] != self.prompts_done:
            self.prompts_done = job["prompts_done"]
            self.progress()
        elif self.timeout_s is not None and time.monotonic() - self.last_progress > self.timeout_s:
            raise JobStalled(f"job {self.job_id} made no progress for {self.timeout_s:.0f}s (status "
                             f"{job['status']}, {job['prompts_done']}/{job['num_prompts']} prompts): is any "
                             f"sampler replica working on it?")


class _Run:
    """An endpoint in progress: iterating gives its steps; set `reply` to answer the current one.
    When the endpoint returns, iteration stops and `result` holds what it returned."""

    def __init__(self, steps: _Step):
        self.steps = steps
        self.reply: Any = None
        self.result: Any = None

    def __iter__(self) -> _Run:
        return self

    def __next__(self) -> Any:
        reply, self.reply = self.reply, None
        try:
            return self.steps.send(reply)
        except StopIteration as done:
            self.result = done.value
            raise


_ITERATORS = frozenset({"iter_samples"})
_PUBLIC = tuple(name for name in vars(_Endpoints) if not name.startswith("_"))


def _auth_headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"Authorization": f"Bearer {key}"} if key else {}


def _timeout(timeout_s: float) -> httpx.Timeout:
    return httpx.Timeout(timeout_s, connect=DEFAULT_CONNECT_TIMEOUT_S)


class SamplerClient(_Endpoints):
    """Blocking client. Use as a context manager, or call `close()`. `api_key` defaults to the
    `SSD_API_KEY` environment variable; `transport` replaces the network (tests)."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 transport: httpx.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        self._http = httpx.Client(base_url=self.base_url, timeout=_timeout(timeout_s),
                                  headers=_auth_headers(api_key), transport=transport)

    def __enter__(self) -> SamplerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _do(self, step: Any) -> Any:
        if isinstance(step, _Sleep):
            return time.sleep(step.seconds)
        try:
            return self._http.request(step.method, step.path, **step.kwargs)
        except httpx.TransportError as exc:
            if step.probe or isinstance(exc, _RETRIED_TRANSPORT_ERRORS):
                return exc
            raise

    def _drive(self, steps: _Step) -> Any:
        run = _Run(steps)
        for step in run:
            run.reply = self._do(step)
        return run.result

    def _drive_iter(self, steps: _Step) -> Iterator[Any]:
        run = _Run(steps)
        for step in run:
            if isinstance(step, _Yield):
                yield step.value
            else:
                run.reply = self._do(step)


class AsyncSamplerClient(_Endpoints):
    """The same methods as `SamplerClient`, awaited; `iter_samples` is an async iterator."""

    def __init__(self, base_url: str = DEFAULT_URL, *, api_key: str | None = None,
                 timeout_s: float = DEFAULT_TIMEOUT_S, max_retries: int = DEFAULT_MAX_RETRIES,
                 max_connections: int = DEFAULT_MAX_CONNECTIONS, transport: httpx.AsyncBaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        self.max_retries = max_retries
        limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
        self._http = httpx.AsyncClient(base_url=self.base_url, timeout=_timeout(timeout_s),
                                       headers=_auth_headers(api_key), limits=limits, transport=transport)

    async def __aenter__(self) -> AsyncSamplerClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _do(self, step: Any) -> Any:
        if isinstance(step, _Sleep):
            return await asyncio.sleep(step.seconds)
        try:
            return await self._http.request(step.method, step.path, **step.kwargs)
        except httpx.TransportError as exc:
            if step.probe or isinstance(exc, _RETRIED_TRANSPORT_ERRORS):
                return exc
            raise

    async def _drive(self, steps: _Step) -> Any:
        run = _Run(steps)
        for step in run:
            run.reply = await self._do(step)
        return run.result

    async def _drive_iter(self, steps: _Step) -> AsyncIterator[Any]:
        run = _Run(steps)
        for step in run:
            if isinstance(step, _Yield):
                yield step.value
            else:
                run.reply = await self._do(step)


def _bind(cls: type, name: str) -> None:
    """Expose `_Endpoints.<name>` on `cls`, run by `cls`'s driver, with its signature and docstring."""
    endpoint = getattr(_Endpoints, name)
    drive = "_drive_iter" if name in _ITERATORS else "_drive"

    @functools.wraps(endpoint)
    def method(self: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(self, drive)(endpoint(self, *args, **kwargs))

    setattr(cls, name, method)


for _cls in (SamplerClient, AsyncSamplerClient):
    for _name in _PUBLIC:
        _bind(_cls, _name)

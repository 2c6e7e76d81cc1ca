"""The HTTP surface: routes, request size limits, and the app's life cycle.

Handlers only validate, delegate and shape responses; `engine`, `jobs`, `adapters` and `store` do
the work. Every error goes through `errors.py`; every route but /health (and /metrics, unless
`metrics_require_key`) needs an API key with a scope when keys are configured (`auth.py`). The
OpenAI-compatible routes live in `openai_api.py`.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ValidationError

from common.models import resolve_model
from common.protocol import (
    ADAPTER_FILES,
    ADAPTER_NAME_PATTERN,
    DEFAULT_PAGE_SIZE,
    FINAL_JOB_STATUSES,
    MAX_PAGE_SIZE,
    SCOPE_ADMIN,
    SCOPE_SAMPLE,
)
from sampler_service import openai_api
from sampler_service.adapters import AdapterRegistry
from sampler_service.auth import InFlightReleaser, KeyRing, check_bind, load_keys, require_scope
from sampler_service.config import ServiceConfig
from sampler_service.engine import Engine
from sampler_service.errors import (
    InvalidRequest,
    NotFound,
    PayloadTooLarge,
    error_response,
    install_error_handlers,
    invalid_request_from,
)
from sampler_service.jobs import JobRunner
from sampler_service.metrics import Metrics
from sampler_service.schemas import AdapterPathRequest, ErrorBody, JobRequest, SampleRequest, is_valid_adapter_name
from sampler_service.store import Store, default_replica_id, open_store

log = logging.getLogger("sampler_service")

MAX_JOBS_LISTED = 1000
DISCONNECT_POLL_S = 0.5
ADAPTERS_PATH = "/v1/adapters"


class ServiceState:
    """Everything the handlers share, built once per app."""

    def __init__(self, config: ServiceConfig):
        self.config = config
        keys = load_keys(config.api_keys_file)
        check_bind(config.host, keys)   # before anything starts: an open API must stay on loopback
        self.keyring = KeyRing(keys, config.max_in_flight_per_key)
        self.adapter_roots = [Path(d).resolve() for d in config.adapter_dir]
        self.model_name = config.model
        self.model_path = resolve_model(config.model)
        self.metrics = Metrics()
        self.store = open_store(config.store, config.data_dir)
        self.replica_id = config.replica_id or default_replica_id(config.port)
        self.engine = Engine(config, self.model_path)
        self.adapters = AdapterRegistry(self.store, self.engine, config.data_dir / "adapters",
                                        self.model_path, config.max_lora_rank, replica_id=self.replica_id,
                                        lease_s=config.lease_s, sync_timeout_s=config.adapter_sync_timeout_s)
        self.jobs = JobRunner(self.store, self.engine, self.adapters, self.metrics, config.job_concurrency,
                              self.replica_id, config.lease_s)
        self.started_at = time.time()

    async def start_engine(self) -> None:
        try:
            await self.engine.start()
            await self.adapters.restore()
            self.jobs.resume_all()
            log.info("engine ready: %s", self.model_path)
        except Exception as exc:
            log.exception("engine failed to start")
            self.engine.startup_error = f"the engine failed to start: {type(exc).__name__}: {exc}"


def create_app(config: ServiceConfig) -> FastAPI:
    state = ServiceState(config)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Start the engine in the background so /health answers 503 "loading" meanwhile.
        starter = asyncio.create_task(state.start_engine())
        yield
        starter.cancel()
        await state.jobs.shutdown()
        await state.adapters.shutdown()
        state.engine.shutdown()
        state.store.close()

    app = FastAPI(title="SSD sampling service", version="0.1.0", lifespan=lifespan,
                  description="Temperature-shifted, truncated sampling at scale for Simple Self-Distillation.")
    app.state.ssd = state
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=config.max_body_bytes,
                       per_path={ADAPTERS_PATH: config.max_adapter_bytes})
    app.add_middleware(RequestCounter, metrics=state.metrics)
    app.add_middleware(InFlightReleaser)
    _add_routes(app, state)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, less its 422 answers: validation errors are 400 here (`ERRORS`)."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        app.openapi_schema = schema
    return app.openapi_schema


def _error(description: str) -> dict:
    return {"model": ErrorBody, "description": description}


# The error answers every keyed route may give, declared so that clients (and the schema fuzzer) know them.
ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("Invalid request: `error.param` names the field"),
    401: _error("Missing or unknown API key"),
    403: _error("The API key lacks the route's scope"),
    404: _error("Unknown job, adapter or model"),
    413: _error("Request body too large"),
    429: _error("This key's requests in flight are at its cap; see Retry-After"),
    503: _error("Engine loading, dead or queue full; see Retry-After"),
}


class BodySizeLimit:
    """Answer 413 to a body larger than the limit, whether declared up front or streamed.
    Adapter uploads get their own, larger limit (`per_path`)."""

    def __init__(self, app: Any, max_bytes: int, per_path: dict[str, int]):
        self.app = app
        self.max_bytes = max_bytes
        self.per_path = per_path

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.per_path.get(scope["path"].rstrip("/"), self.max_bytes)
        too_large = PayloadTooLarge(f"the request body exceeds {limit} bytes")
        declared = dict(scope.get("headers", [])).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await error_response(too_large, scope["path"])(scope, receive, send)
        seen = 0

        async def limited_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > limit:
                raise too_large
            return message

        await self.app(scope, limited_receive, send)


class RequestCounter:
    """Count responses by route and status. Pure ASGI on purpose: Starlette's BaseHTTPMiddleware
    wraps `receive` in a way that hides client disconnects from the handlers."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        status = {"code": 500}

        async def send_and_record(message: dict) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            endpoint = getattr(scope.get("route"), "path", "unmatched")
            self.metrics.requests.labels(endpoint=endpoint, status=str(status["code"])).inc()
            if status["code"] >= 400:
                self.metrics.errors.labels(type=str(status["code"])).inc()


async def _parse(model: type[BaseModel], request: Request) -> Any:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidRequest("the body is not valid JSON") from None
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        raise invalid_request_from(list(exc.errors())) from None


async def _cancel_on_disconnect(request: Request, coro: Any) -> Any:
    """Await `coro`, cancelling it (and so aborting its engine requests) if the client goes away."""
    task = asyncio.ensure_future(coro)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL_S)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                return Response(status_code=499)
    except asyncio.CancelledError:
        task.cancel()
        raise


def _add_routes(app: FastAPI, state: ServiceState) -> None:
    _health_routes(app, state)
    _sampling_routes(app, state)
    _job_routes(app, state)
    _adapter_routes(app, state)
    openai_api.register(app, state, _cancel_on_disconnect, ERRORS)


SAMPLE = [require_scope(SCOPE_SAMPLE)]
ADMIN = [require_scope(SCOPE_ADMIN)]


def _health_routes(app: FastAPI, state: ServiceState) -> None:
    engine = state.engine

    @app.get("/health", summary="Liveness of the engine (open: no key needed)",
             responses={503: _error("Engine loading or dead; see Retry-After")})
    async def health() -> JSONResponse:
        """200 `{"status": "ok", "model": ...}` when the engine serves; 503 with `status` `loading`
        or `dead` otherwise."""
        if engine.ready:
            return JSONResponse({"status": "ok", "model": state.model_name, "model_path": state.model_path,
                                 "device": "cpu" if engine.is_cpu else "gpu", "max_model_len": engine.max_model_len,
                                 "uptime_s": round(time.time() - state.started_at, 1)})
        status = "dead" if engine.dead or engine.startup_error else "loading"
        return JSONResponse({"status": status, "model": state.model_name, "error": engine.startup_error},
                            status_code=503, headers={"Retry-After": "5"})

    metrics_guard = SAMPLE if state.config.metrics_require_key else []

    @app.get("/metrics", summary="Prometheus metrics", dependencies=metrics_guard, response_class=PlainTextResponse,
             responses={401: ERRORS[401], 403: ERRORS[403], 429: ERRORS[429]} if metrics_guard else {})
    async def metrics() -> Response:
        """Prometheus' text format. Open unless the server runs with `metrics_require_key`."""
        return PlainTextResponse(state.metrics.render(engine.admission.in_flight),
                                 media_type="text/plain; version=0.0.4")


def _sampling_routes(app: FastAPI, state: ServiceState) -> None:
    engine = state.engine

    @app.post("/v1/samples", summary="Sample completions synchronously", dependencies=SAMPLE, responses=ERRORS)
    async def sample(body: SampleRequest, request: Request) -> Any:
        """Sample `n` completions for each prompt. Body: `prompts` (raw strings) or `messages`
        (chat conversations), plus sampling parameters. Example:
        `{"messages": [[{"role": "user", "content": "Write fizzbuzz."}]], "n": 2, "temperature": 1.6,
        "top_k": 20, "top_p": 0.8, "max_tokens": 128}` → `{"results": [{"index": 0, "prompt": ...,
        "prompt_token_ids": [...], "completions": [{"text", "token_ids", "num_tokens",
        "finish_reason", "logprobs"}]}], "adapter": {"name", "version"} | null, "usage": {...}}`.
        See docs/api.md for every field and bound."""
        engine.require_ready()
        params = body.sampling_dict()
        sampling_params = engine.sampling_params(params)
        rendered = [engine.render(item) for item in body.inputs()]
        per_prompt = [engine.with_max_tokens(sampling_params, engine.check_fits(ids, body.max_tokens))
                      for _, ids in rendered]
        return await _cancel_on_disconnect(request, _generate_all(state, rendered, per_prompt, body.adapter))


def _job_routes(app: FastAPI, state: ServiceState) -> None:
    engine, store, adapters, jobs = state.engine, state.store, state.adapters, state.jobs

    @app.post("/v1/jobs", status_code=201, summary="Start a sampling job", dependencies=ADMIN, responses=ERRORS)
    async def create_job(body: JobRequest) -> Any:
        """Start an asynchronous job over `prompts` (each `{"id", "prompt" | "messages"}`) with the
        sampling parameters and ml-ssd's `filters` (`drop_empty`, `drop_shortest_fraction`).
        Returns the job object; poll `GET /v1/jobs/{id}` and pull `GET /v1/jobs/{id}/samples`."""
        engine.require_ready()
        params = body.sampling_dict()
        engine.sampling_params(params)
        if body.adapter is not None:
            await adapters.resolve_latest(body.adapter)
        prompts = [(item.id, item.input()) for item in body.prompts]
        job_id = await asyncio.to_thread(store.create_job, body.name, params, body.filters.model_dump(), prompts)
        jobs.start(job_id)
        return await asyncio.to_thread(store.get_job, job_id)

    @app.get("/v1/jobs", summary="List jobs, newest first", dependencies=SAMPLE, responses=ERRORS)
    async def list_jobs() -> Any:
        return {"jobs": await asyncio.to_thread(store.list_jobs, MAX_JOBS_LISTED)}

    @app.get("/v1/jobs/{job_id}", summary="A job's status, progress and throughput", dependencies=SAMPLE,
             responses=ERRORS)
    async def get_job(job_id: str) -> Any:
        return await _job_or_404(store, job_id)

    @app.delete("/v1/jobs/{job_id}", summary="Cancel a job", dependencies=ADMIN, responses=ERRORS)
    async def cancel_job(job_id: str) -> Any:
        """Cancel a queued or running job; its in-flight prompts are aborted in the engine. Samples
        already written stay readable."""
        return await jobs.cancel(job_id)

    @app.get("/v1/jobs/{job_id}/samples", summary="Pull a page of samples (the trainer's API)", dependencies=SAMPLE,
             responses=ERRORS)
    async def samples_page(job_id: str, after: int = Query(0, ge=0),
                           limit: int = Query(DEFAULT_PAGE_SIZE, ge=1, le=MAX_PAGE_SIZE),
                           include_filtered: bool = False) -> Any:
        """Samples with `cursor > after`, in cursor order. The same `after` always gives the same
        samples; `has_more` is false only once the job is finished and nothing lies past
        `next_cursor`. Works while the job runs."""
        job = await _job_or_404(store, job_id)  # read status first: a final status means all rows exist
        rows = await asyncio.to_thread(store.samples_page, job_id, after, limit, include_filtered)
        next_cursor = rows[-1]["cursor"] if rows else after
        finished = job["status"] in FINAL_JOB_STATUSES
        has_more = (not finished) or await asyncio.to_thread(store.has_samples_after, job_id, next_cursor,
                                                             include_filtered)
        return {"job_id": job_id, "job_status": job["status"], "samples": rows, "next_cursor": next_cursor,
                "has_more": has_more}


def _adapter_routes(app: FastAPI, state: ServiceState) -> None:
    engine, adapters = state.engine, state.adapters

    @app.post(ADAPTERS_PATH, status_code=201, summary="Upload a LoRA adapter as a new version", dependencies=ADMIN,
              responses=ERRORS, openapi_extra={"requestBody": _ADAPTER_UPLOAD_BODY})
    async def upload_adapter(request: Request) -> Any:
        """Multipart (`name` + files `adapter_config.json`, `adapter_model.safetensors`) or JSON
        `{"name", "path"}`. Validates, loads under a new version, then moves the alias. Returns
        `{"name", "version", "alias", "rank", "path"}`. On failure: 400, and the previous version
        keeps serving. A `path` must lie under one of the server's `--adapter-dir` directories."""
        engine.require_ready()
        if not state.config.enable_lora:
            raise InvalidRequest("this server was started without LoRA support", param="adapter")
        content_type = request.headers.get("content-type", "")
        if content_type.startswith("multipart/"):
            version = await _upload_multipart(adapters, request)
        else:
            body = await _parse(AdapterPathRequest, request)
            version = await adapters.upload(body.name, _allowed_adapter_path(state.adapter_roots, body.path))
        return {"name": version.name, "version": version.version, "alias": version.ref, "rank": version.rank,
                "path": version.path}

    @app.get("/v1/adapters", summary="List adapters, versions and alias targets", dependencies=SAMPLE,
             responses=ERRORS)
    async def list_adapters() -> Any:
        return {"adapters": await asyncio.to_thread(adapters.describe)}  # reads the store

    @app.delete("/v1/adapters/{name}", summary="Unload an adapter", dependencies=ADMIN, responses=ERRORS)
    async def delete_adapter(name: str) -> Any:
        return await adapters.delete(name)


# The upload route reads its body by hand (multipart or JSON); this declares both for the schema.
_ADAPTER_UPLOAD_BODY = {"required": True, "content": {
    "multipart/form-data": {"schema": {
        "type": "object", "required": ["name", *ADAPTER_FILES],
        "properties": {"name": {"type": "string", "pattern": ADAPTER_NAME_PATTERN},
                       **{field: {"type": "string", "format": "binary"} for field in ADAPTER_FILES}}}},
    "application/json": {"schema": AdapterPathRequest.model_json_schema()}}}


def _allowed_adapter_path(roots: list[Path], raw: str) -> Path:
    """The adapter folder `raw` names, if it and its files lie under an operator-listed directory
    once symlinks and `..` are resolved. Anything else is a 400 and nothing is read."""
    if not roots:
        raise InvalidRequest("this server loads adapters by path only from directories its operator lists "
                             "(`ssd serve --adapter-dir DIR`), and none is listed: upload the files instead",
                             param="path")
    source = Path(raw)
    if not source.is_absolute():
        raise InvalidRequest("the adapter path must be absolute", param="path")
    resolved = [source.resolve(), *((source / name).resolve() for name in ADAPTER_FILES)]
    if not all(any(p.is_relative_to(root) for root in roots) for p in resolved):
        raise InvalidRequest(f"adapter path {raw!r} lies outside the allowed adapter directories "
                             f"(symlinks and `..` are resolved first)", param="path")
    if not resolved[0].is_dir():
        raise InvalidRequest(f"adapter path {raw!r} is not a directory the server can read", param="path")
    return resolved[0]


async def _job_or_404(store: Store, job_id: str) -> dict:
    job = await asyncio.to_thread(store.get_job, job_id)
    if job is None:
        raise NotFound(f"unknown job {job_id!r}", param="id")
    return job


async def _generate_all(state: ServiceState, rendered: list[tuple[str, list[int]]], per_prompt: list[Any],
                        adapter_ref: str | None) -> dict:
    engine = state.engine
    async with state.adapters.lease(adapter_ref) as adapter:
        lora = adapter.lora_request() if adapter else None
        engine.admission.try_enter(len(rendered))
        try:
            results = await asyncio.gather(*(engine.generate(ids, params, lora)
                                             for (_, ids), params in zip(rendered, per_prompt, strict=True)))
        finally:
            await engine.admission.leave(len(rendered))
    completion_tokens = sum(len(c.token_ids) for r in results for c in r.completions)
    state.metrics.record_tokens(completion_tokens)
    return {
        "model": state.model_name,
        "adapter": {"name": adapter.name, "version": adapter.version} if adapter else None,
        "results": [_result_json(i, text, result) for i, ((text, _), result) in enumerate(zip(rendered, results))],
        "usage": {"prompt_tokens": sum(len(ids) for _, ids in rendered), "completion_tokens": completion_tokens},
    }


def _result_json(index: int, prompt_text: str, result: Any) -> dict:
    completions = [{"text": c.text, "token_ids": c.token_ids, "num_tokens": len(c.token_ids),
                    "finish_reason": c.finish_reason, "logprobs": lp}
                   for c, lp in zip(result.completions, result.logprobs)]
    return {"index": index, "prompt": prompt_text, "prompt_token_ids": result.prompt_token_ids,
            "completions": completions}


async def _upload_multipart(adapters: AdapterRegistry, request: Request) -> Any:
    form = await request.form()
    name = form.get("name")
    if not isinstance(name, str) or not is_valid_adapter_name(name):
        raise InvalidRequest("a valid adapter `name` form field is required", param="name")
    staging = Path(tempfile.mkdtemp(prefix="ssd-adapter-"))
    try:
        for field in ADAPTER_FILES:
            upload = form.get(field)
            if upload is None or isinstance(upload, str):
                raise InvalidRequest(f"the multipart body needs a file field {field!r}", param=field)
            (staging / field).write_bytes(await upload.read())
        return await adapters.upload(name, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)

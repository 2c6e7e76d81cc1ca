"""OpenAI-compatible endpoints: `GET /v1/models`, `POST /v1/completions`, `POST /v1/chat/completions`.

They are a second face on the same engine, the same admission queue and the same adapter leases as
the native API, so that standard harnesses (lm-evaluation-harness `local-completions`, evalplus,
the `openai` client, chat UIs) can score a served adapter. `model` picks what serves: the base
model's name, an adapter alias (resolved when the request is admitted, so a hot reload takes effect
for the next request), or a pinned version `name@vN`. Errors keep the native status codes in
OpenAI's shape (`errors.error_response`).

Streaming is server-sent events ending in `data: [DONE]`. A client that goes away closes the event
stream, which aborts its generations in the engine (`SSEResponse`).
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from common.protocol import (
    OPENAI_CHAT_PATH,
    OPENAI_COMPLETIONS_PATH,
    OPENAI_DEFAULT_MAX_TOKENS,
    OPENAI_MODELS_PATH,
    SCOPE_SAMPLE,
    SSE_DONE,
)
from sampler_service.auth import require_scope
from sampler_service.engine import StreamDelta
from sampler_service.errors import InvalidRequest, NotFound, ServiceError
from sampler_service.schemas import ChatCompletionRequest, CompletionRequest, OpenAISamplingFields

if TYPE_CHECKING:
    from sampler_service.api import ServiceState

OWNER = "ssd-toolkit"


class ModelNotFound(NotFound):
    error_type = "model_not_found"


# -- shared steps ---------------------------------------------------------------------------------

def adapter_for_model(state: ServiceState, model: str) -> str | None:
    """None for the base model, else the adapter reference `model` names. 404 when it names nothing."""
    if model in (state.model_name, state.model_path):
        return None
    try:
        state.adapters.resolve(model)
    except (NotFound, ValueError):
        raise ModelNotFound(f"the model {model!r} does not exist; GET {OPENAI_MODELS_PATH} lists the served ones",
                            param="model") from None
    return model


def list_models(state: ServiceState) -> dict:
    created = int(state.started_at)
    base = {"id": state.model_name, "object": "model", "created": created, "owned_by": OWNER,
            "root": state.model_path, "parent": None}
    data = [base]
    for family in state.adapters.describe():
        if family["current_version"] is not None:
            data.append({"id": family["name"], "object": "model", "created": created, "owned_by": OWNER,
                         "root": family["alias"], "parent": state.model_name})
        for version in family["versions"]:
            if version["loaded"]:
                ref = f"{family['name']}@v{version['version']}"
                data.append({"id": ref, "object": "model", "created": int(version["created_at"]),
                             "owned_by": OWNER, "root": ref, "parent": state.model_name})
    return {"object": "list", "data": data}


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _completion_logprobs(state: ServiceState, positions: list[dict] | None, offset: int = 0) -> dict | None:
    """OpenAI's legacy completions logprobs: parallel lists keyed by token text."""
    if positions is None:
        return None
    decode = state.engine.decode_tokens
    tokens = decode([p["token_id"] for p in positions])
    offsets = []
    for token in tokens:
        offsets.append(offset)
        offset += len(token)
    top = [dict(zip(decode([int(t) for t in p["top"]]), p["top"].values())) for p in positions]
    return {"tokens": tokens, "token_logprobs": [p["logprob"] for p in positions], "top_logprobs": top,
            "text_offset": offsets}


def _chat_logprobs(state: ServiceState, positions: list[dict] | None, top_n: int) -> dict | None:
    if positions is None:
        return None
    decode = state.engine.decode_tokens
    content = []
    for position, token in zip(positions, decode([p["token_id"] for p in positions])):
        ranked = sorted(position["top"].items(), key=lambda item: -item[1])[:top_n]
        names = decode([int(t) for t, _ in ranked])
        content.append({"token": token, "logprob": position["logprob"], "bytes": list(token.encode()),
                        "top_logprobs": [{"token": name, "logprob": lp, "bytes": list(name.encode())}
                                         for name, (_, lp) in zip(names, ranked)]})
    return {"content": content}


class _Prepared:
    """A request that passed every check: its prompts as token ids and its engine parameters."""

    def __init__(self, body: OpenAISamplingFields, adapter: str | None, prompt_ids: list[list[int]],
                 sampling_params: Any, logprobs_top: int | None):
        self.body = body
        self.adapter = adapter
        self.prompt_ids = prompt_ids
        self.sampling_params = sampling_params
        self.logprobs_top = logprobs_top
        self.id_prefix = "chatcmpl" if isinstance(body, ChatCompletionRequest) else "cmpl"
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())

    @property
    def prompt_tokens(self) -> int:
        return sum(len(ids) for ids in self.prompt_ids)


def _prepare_completion(state: ServiceState, body: CompletionRequest) -> _Prepared:
    engine = state.engine
    engine.require_ready()
    adapter = adapter_for_model(state, body.model)
    prompt_ids = []
    for item in body.prompt_items():
        if isinstance(item, str):
            prompt_ids.append(engine.render(item)[1])
        else:
            engine.check_token_ids(item, "prompt")
            prompt_ids.append(item)
    max_tokens = body.max_tokens or OPENAI_DEFAULT_MAX_TOKENS
    return _finish_prepare(state, body, adapter, prompt_ids, max_tokens, body.logprobs, body.logprobs)


def _prepare_chat(state: ServiceState, body: ChatCompletionRequest) -> _Prepared:
    engine = state.engine
    engine.require_ready()
    adapter = adapter_for_model(state, body.model)
    _, ids = engine.render(body.conversation())
    max_tokens = body.max_completion_tokens or body.max_tokens   # None: the rest of the context
    top = (body.top_logprobs or 0) if body.logprobs else None
    return _finish_prepare(state, body, adapter, [ids], max_tokens, top, top)


def _finish_prepare(state: ServiceState, body: OpenAISamplingFields, adapter: str | None,
                    prompt_ids: list[list[int]], max_tokens: int | None, logprobs: int | None,
                    logprobs_top: int | None) -> _Prepared:
    """`max_tokens` None (chat only, one conversation): the rest of the context."""
    engine = state.engine
    fitted = []
    for ids in prompt_ids:
        if not ids:
            raise InvalidRequest("a prompt has no tokens", param="prompt")
        fitted.append(engine.check_fits(ids, max_tokens))
    params = engine.sampling_params(body.sampling_dict(max_tokens or min(fitted), logprobs), stream=body.stream)
    return _Prepared(body, adapter, prompt_ids, params, logprobs_top)


# -- non-streaming ------------------------------------------------------------------------------

async def _generate(state: ServiceState, prepared: _Prepared) -> list[Any]:
    engine = state.engine
    async with state.adapters.lease(prepared.adapter) as adapter:
        lora = adapter.lora_request() if adapter else None
        engine.admission.try_enter(len(prepared.prompt_ids))
        try:
            return await asyncio.gather(*(engine.generate(ids, prepared.sampling_params, lora)
                                          for ids in prepared.prompt_ids))
        finally:
            await engine.admission.leave(len(prepared.prompt_ids))


async def _completion_json(state: ServiceState, prepared: _Prepared) -> dict:
    results = await _generate(state, prepared)
    chat = isinstance(prepared.body, ChatCompletionRequest)
    choices: list[dict[str, Any]] = []
    for result in results:  # OpenAI numbers the choices of every prompt in one sequence
        for completion, positions in zip(result.completions, result.logprobs):
            choice: dict[str, Any] = {"index": len(choices), "finish_reason": completion.finish_reason}
            if chat:
                choice["message"] = {"role": "assistant", "content": completion.text}
                choice["logprobs"] = _chat_logprobs(state, positions, prepared.logprobs_top or 0)
            else:
                choice["text"] = completion.text
                choice["logprobs"] = _completion_logprobs(state, positions)
            choices.append(choice)
    completion_tokens = sum(len(c.token_ids) for r in results for c in r.completions)
    state.metrics.record_tokens(completion_tokens)
    return {"id": prepared.id, "object": "chat.completion" if chat else "text_completion",
            "created": prepared.created, "model": prepared.body.model, "choices": choices,
            "usage": _usage(prepared.prompt_tokens, completion_tokens)}


# -- streaming ----------------------------------------------------------------------------------

class _EngineStreams:
    """Every prompt's engine stream, pumped by its own task into one queue, so that `n` completions
    of several prompts interleave as the engine produces them."""

    def __init__(self, state: ServiceState, prepared: _Prepared, lora: Any):
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tasks = [asyncio.create_task(self._pump(state, i, ids, prepared.sampling_params, lora))
                      for i, ids in enumerate(prepared.prompt_ids)]

    async def _pump(self, state: ServiceState, index: int, ids: list[int], params: Any, lora: Any) -> None:
        try:
            async for deltas in state.engine.stream(ids, params, lora):
                self.queue.put_nowait((index, deltas))
            self.queue.put_nowait((index, None))
        except Exception as exc:  # handed to the consumer, which ends the stream with an error event
            self.queue.put_nowait((index, exc))

    async def deltas(self) -> AsyncIterator[tuple[int, list[StreamDelta]]]:
        remaining = len(self.tasks)
        while remaining:
            index, item = await self.queue.get()
            if item is None:
                remaining -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield index, item

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class SSEResponse(StreamingResponse):
    """Server-sent events whose clean-up always runs: Starlette may stop iterating the body (the
    client went away) without closing it, and an unclosed stream would keep the engine generating."""

    def __init__(self, events: AsyncIterator[str], cleanup: Callable[[], Awaitable[None]]):
        super().__init__(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
        self._cleanup = cleanup

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.body_iterator.aclose()  # type: ignore[attr-defined]
            await self._cleanup()


def _sse(payload: dict | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


async def _stream_response(state: ServiceState, prepared: _Prepared) -> SSEResponse:
    engine = state.engine
    stack = AsyncExitStack()
    adapter = await stack.enter_async_context(state.adapters.lease(prepared.adapter))
    count = len(prepared.prompt_ids)
    try:
        engine.admission.try_enter(count)
    except ServiceError:
        await stack.aclose()
        raise
    streams = _EngineStreams(state, prepared, adapter.lora_request() if adapter else None)

    async def cleanup() -> None:
        await streams.close()
        await engine.admission.leave(count)
        await stack.aclose()

    return SSEResponse(_events(state, prepared, streams), cleanup)


async def _events(state: ServiceState, prepared: _Prepared, streams: _EngineStreams) -> AsyncIterator[str]:
    chat = isinstance(prepared.body, ChatCompletionRequest)
    n = prepared.body.n
    head = {"id": prepared.id, "object": "chat.completion.chunk" if chat else "text_completion",
            "created": prepared.created, "model": prepared.body.model}
    if chat:  # OpenAI's first chunk names the role
        yield _sse(head | {"choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                        "logprobs": None, "finish_reason": None} for i in range(n)]})
    completion_tokens = 0
    try:
        async for prompt_index, deltas in streams.deltas():
            choices = []
            for delta in deltas:
                completion_tokens += len(delta.token_ids)
                choices.append(_stream_choice(state, prepared, prompt_index * n + delta.index, delta, chat))
            if choices:
                yield _sse(head | {"choices": choices})
    except ServiceError as exc:
        yield _sse({"error": {"message": exc.message, "type": "server_error", "param": exc.param,
                              "code": exc.error_type}})
    state.metrics.record_tokens(completion_tokens)
    if prepared.body.include_usage:
        yield _sse(head | {"choices": [], "usage": _usage(prepared.prompt_tokens, completion_tokens)})
    yield _sse(SSE_DONE)


def _stream_choice(state: ServiceState, prepared: _Prepared, index: int, delta: StreamDelta, chat: bool) -> dict:
    if chat:
        return {"index": index, "delta": {"content": delta.text},
                "logprobs": _chat_logprobs(state, delta.logprobs, prepared.logprobs_top or 0),
                "finish_reason": delta.finish_reason}
    return {"index": index, "text": delta.text, "logprobs": _completion_logprobs(state, delta.logprobs),
            "finish_reason": delta.finish_reason}


# -- routes -------------------------------------------------------------------------------------

_STREAM_OR_JSON = {200: {"description": "A completion object, or with `stream: true` server-sent events "
                                        "ending in `data: [DONE]`",
                         "content": {"application/json": {"schema": {"type": "object"}},
                                     "text/event-stream": {"schema": {"type": "string"}}}}}


def register(app: FastAPI, state: ServiceState, cancel_on_disconnect: Callable[[Request, Any], Awaitable[Any]],
             responses: dict) -> None:
    """Add the three routes. `cancel_on_disconnect` is the native API's guard for non-streamed calls."""
    sample = [require_scope(SCOPE_SAMPLE)]

    @app.get(OPENAI_MODELS_PATH, summary="OpenAI: the served model ids", dependencies=sample,
             responses=responses, tags=["openai"])
    async def models() -> Any:
        """The base model, every adapter alias and every loaded pinned version `name@vN`."""
        return list_models(state)

    @app.post(OPENAI_COMPLETIONS_PATH, summary="OpenAI: text completions", dependencies=sample,
              responses=responses | _STREAM_OR_JSON, tags=["openai"])
    async def completions(body: CompletionRequest, request: Request) -> Any:
        """`{"model": "ssd", "prompt": "def fib(n):", "max_tokens": 64, "temperature": 0.8, "top_k": 20}`
        → `{"id", "object": "text_completion", "choices": [{"index", "text", "logprobs", "finish_reason"}],
        "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}`."""
        prepared = _prepare_completion(state, body)
        if body.stream:
            return await _stream_response(state, prepared)
        return await cancel_on_disconnect(request, _completion_json(state, prepared))

    @app.post(OPENAI_CHAT_PATH, summary="OpenAI: chat completions", dependencies=sample,
              responses=responses | _STREAM_OR_JSON, tags=["openai"])
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Any:
        """`{"model": "demo", "messages": [{"role": "user", "content": "Write fizzbuzz."}], "n": 2}` →
        `{"id", "object": "chat.completion", "choices": [{"index", "message": {"role", "content"},
        "logprobs", "finish_reason"}], "usage": {...}}`."""
        prepared = _prepare_chat(state, body)
        if body.stream:
            return await _stream_response(state, prepared)
        return await cancel_on_disconnect(request, _completion_json(state, prepared))

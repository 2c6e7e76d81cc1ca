"""Request bodies and their bounds. Validation happens here, once, at the service boundary.

Pydantic runs in strict mode with unknown fields forbidden, so `"n": "3"` and a misspelt
`"temprature"` are both 400s that name the field. The bounds are the wire contract's
(`common.protocol`); the ones that depend on the server's config (`max_n`) or on the model (context
length) are checked where the request is admitted (`sampler_service.engine`).
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from common.protocol import (
    ADAPTER_NAME_PATTERN,
    ADAPTER_REF_PATTERN,
    CHAT_ROLES,
    DEFAULT_SHORTEST_BY,
    MAX_CHAT_MESSAGES,
    MAX_DROP_SHORTEST_FRACTION,
    MAX_JOB_NAME_CHARS,
    MAX_LOGPROBS,
    MAX_MODEL_ID_CHARS,
    MAX_PENALTY,
    MAX_PROMPT_ID_CHARS,
    MAX_PROMPTS_PER_JOB,
    MAX_PROMPTS_PER_REQUEST,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    MIN_P_DISABLED,
    SAMPLING_FIELDS,
    SHORTEST_BY_CHOICES,
    TOP_K_DISABLED,
    TOP_P_DISABLED,
)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


def _encodable(text: str) -> str:
    # JSON may carry lone UTF-16 surrogates ("\ud800"); the tokenizer cannot encode them.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("the text holds a lone UTF-16 surrogate; send valid Unicode") from None
    return text


Text = Annotated[str, AfterValidator(_encodable)]
# A raw prompt goes to the model as-is, so it needs at least one token: an empty string has none.
PromptText = Annotated[str, Field(min_length=1), AfterValidator(_encodable)]


class ChatMessage(_Strict):
    role: Literal[CHAT_ROLES]  # type: ignore[valid-type]  # a tuple subscript is Literal["system", ...]
    content: Text


class SamplingFields(_Strict):
    """The sampling parameters shared by /v1/samples and /v1/jobs."""

    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_k: int = Field(TOP_K_DISABLED, ge=TOP_K_DISABLED)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)   # null: the rest of the context, per prompt
    stop: list[Text] | None = Field(None, max_length=MAX_STOP_STRINGS)
    seed: int | None = Field(None, ge=0)
    adapter: str | None = Field(None, pattern=ADAPTER_REF_PATTERN)
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    ignore_eos: bool = False

    @field_validator("top_k")
    @classmethod
    def _top_k_not_zero(cls, value: int) -> int:
        if value == 0:
            raise ValueError("top_k must be -1 (disabled) or >= 1, got 0")
        return value

    @field_validator("stop")
    @classmethod
    def _stop_strings_sane(cls, value: list[str] | None) -> list[str] | None:
        for item in value or []:
            if not item or len(item) > MAX_STOP_STRING_CHARS:
                raise ValueError(f"each stop string must have 1..{MAX_STOP_STRING_CHARS} characters")
        return value

    def sampling_dict(self) -> dict:
        return {name: getattr(self, name) for name in SAMPLING_FIELDS}


# The contract names the fields; this model must declare exactly those.
assert tuple(SamplingFields.model_fields) == SAMPLING_FIELDS, "SamplingFields drifted from common.protocol"


class SampleRequest(SamplingFields):
    prompts: list[PromptText] | None = Field(None, min_length=1, max_length=MAX_PROMPTS_PER_REQUEST)
    messages: list[list[ChatMessage]] | None = Field(None, min_length=1, max_length=MAX_PROMPTS_PER_REQUEST)

    @model_validator(mode="after")
    def _exactly_one_input(self) -> SampleRequest:
        if (self.prompts is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompts` or `messages`")
        items = self.prompts if self.prompts is not None else self.messages
        if not items:
            raise ValueError("the prompt list is empty")
        for conversation in self.messages or []:
            if not conversation:
                raise ValueError("a conversation in `messages` is empty")
        return self

    def inputs(self) -> list[str | list[dict]]:
        if self.prompts is not None:
            return list(self.prompts)
        return [[m.model_dump() for m in conv] for conv in self.messages or []]


class JobPrompt(_Strict):
    id: str = Field(min_length=1, max_length=MAX_PROMPT_ID_CHARS)
    prompt: PromptText | None = None
    messages: list[ChatMessage] | None = None

    @model_validator(mode="after")
    def _exactly_one_input(self) -> JobPrompt:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError(f"prompt {self.id!r}: give exactly one of `prompt` or `messages`")
        if self.messages is not None and not self.messages:
            raise ValueError(f"prompt {self.id!r}: `messages` is empty")
        return self

    def input(self) -> str | list[dict]:
        if self.prompt is not None:
            return self.prompt
        return [m.model_dump() for m in self.messages or []]


class JobFilters(_Strict):
    """apple/ml-ssd's filters: drop empty completions, then the shortest fraction, measured in
    characters (ml-ssd) or tokens (`shortest_by`); ties at the cut are kept."""

    drop_empty: bool = True
    drop_shortest_fraction: float = Field(0.0, ge=0.0, le=MAX_DROP_SHORTEST_FRACTION)
    shortest_by: Literal[SHORTEST_BY_CHOICES] = DEFAULT_SHORTEST_BY  # type: ignore[valid-type]


class JobRequest(SamplingFields):
    prompts: list[JobPrompt] = Field(min_length=1, max_length=MAX_PROMPTS_PER_JOB)
    filters: JobFilters = Field(default_factory=JobFilters)  # type: ignore[arg-type]
    name: str | None = Field(None, max_length=MAX_JOB_NAME_CHARS)

    @model_validator(mode="after")
    def _prompts_valid(self) -> JobRequest:
        if not self.prompts:
            raise ValueError("the prompt list is empty")
        seen: set[str] = set()
        for item in self.prompts:
            if item.id in seen:
                raise ValueError(f"prompt id {item.id!r} appears twice")
            seen.add(item.id)
        return self


class AdapterPathRequest(_Strict):
    name: str = Field(pattern=ADAPTER_NAME_PATTERN)
    path: str = Field(min_length=1)


def is_valid_adapter_name(name: str) -> bool:
    return re.fullmatch(ADAPTER_NAME_PATTERN, name) is not None


# -- the OpenAI-compatible endpoints -------------------------------------------------------------
# Field names and defaults are OpenAI's; the bounds are the native API's. vLLM's extras `top_k`,
# `min_p` and `ignore_eos` sit at the top level. OpenAI fields this server cannot honour are not declared, so sending
# one is a 400 that names it rather than a silently different answer.

class StreamOptions(_Strict):
    include_usage: bool = False


class OpenAISamplingFields(_Strict):
    model: str = Field(min_length=1, max_length=MAX_MODEL_ID_CHARS)
    n: int = Field(1, ge=1)
    temperature: float | None = Field(None, ge=0.0, le=MAX_TEMPERATURE)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    top_k: int | None = Field(None, ge=TOP_K_DISABLED)
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    stop: Text | list[Text] | None = None
    seed: int | None = Field(None, ge=0)
    presence_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    frequency_penalty: float = Field(0.0, ge=-MAX_PENALTY, le=MAX_PENALTY)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, max_length=MAX_JOB_NAME_CHARS)   # accepted for compatibility; unused
    ignore_eos: bool = False     # vLLM's extra, as in the native API

    _top_k_not_zero = field_validator("top_k")(SamplingFields._top_k_not_zero.__func__)  # type: ignore[attr-defined]

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        stops = [value] if isinstance(value, str) else value
        if stops is not None and len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        return SamplingFields._stop_strings_sane(stops)

    def sampling_dict(self, max_tokens: int, logprobs: int | None) -> dict:
        """The native sampling parameters (`SAMPLING_FIELDS`) this request means."""
        return {"n": self.n, "temperature": 1.0 if self.temperature is None else self.temperature,
                "top_k": TOP_K_DISABLED if self.top_k is None else self.top_k,
                "top_p": TOP_P_DISABLED if self.top_p is None else self.top_p,
                "min_p": MIN_P_DISABLED if self.min_p is None else self.min_p,
                "max_tokens": max_tokens, "stop": self.stop, "seed": self.seed, "adapter": None,
                "logprobs": logprobs, "ignore_eos": self.ignore_eos,
                "presence_penalty": self.presence_penalty, "frequency_penalty": self.frequency_penalty}

    @property
    def include_usage(self) -> bool:
        return self.stream_options is not None and self.stream_options.include_usage


class CompletionRequest(OpenAISamplingFields):
    """`prompt` is a string, a list of strings, a list of token ids, or a list of such lists."""

    prompt: PromptText | list[PromptText] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1)       # null: OpenAI's default, 16
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt_sane(cls, value: str | list) -> str | list:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > MAX_PROMPTS_PER_REQUEST:
            raise ValueError(f"give 1..{MAX_PROMPTS_PER_REQUEST} prompts")
        for item in items:
            if isinstance(item, list) and not item:
                raise ValueError("a token-id prompt is empty")
            if isinstance(item, int) and item < 0 or isinstance(item, list) and min(item) < 0:
                raise ValueError("token ids must be >= 0")
        return value

    @field_validator("echo")
    @classmethod
    def _no_echo(cls, value: bool) -> bool:
        if value:
            raise ValueError("echo (prompt log-probabilities) is not supported; score with generation tasks")
        return value

    def prompt_items(self) -> list[str | list[int]]:
        """One entry per prompt: a string, or a list of token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if self.prompt and isinstance(self.prompt[0], int):
            return [list(self.prompt)]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class OpenAIChatMessage(_Strict):
    role: Literal[CHAT_ROLES]  # type: ignore[valid-type]
    content: Text | list[TextPart]
    name: str | None = Field(None, max_length=MAX_PROMPT_ID_CHARS)   # accepted; chat templates ignore it

    def as_native(self) -> dict:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatCompletionRequest(OpenAISamplingFields):
    messages: list[OpenAIChatMessage] = Field(min_length=1, max_length=MAX_CHAT_MESSAGES)
    max_tokens: int | None = Field(None, ge=1)               # null: the rest of the context
    max_completion_tokens: int | None = Field(None, ge=1)    # OpenAI's newer name for max_tokens
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs: true")
        return self

    def conversation(self) -> list[dict]:
        return [m.as_native() for m in self.messages]


# -- responses, for the OpenAPI schema ----------------------------------------------------------

class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None      # set on the OpenAI-compatible paths


class ErrorBody(BaseModel):
    """Every error answer: the native `{"error": {"type", "message", "param"}}`, or OpenAI's
    `{"error": {"message", "type", "param", "code"}}` on the OpenAI-compatible paths."""

    error: ErrorDetail

"""Request bodies and their bounds. Validation happens here, once, at the service boundary.

Pydantic runs in strict mode with unknown fields forbidden, so `"n": "3"` and a misspelt
`"temprature"` are both 400s that name the field. The bounds are the wire contract's
(`common.protocol`); the ones that depend on the server's config (`max_n`) or on the model (context
length) are checked where the request is admitted (`sampler_service.engine`).
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from common.protocol import (
    ADAPTER_NAME_PATTERN,
    ADAPTER_REF_PATTERN,
    CHAT_ROLES,
    DEFAULT_MAX_TOKENS,
    DEFAULT_SHORTEST_BY,
    MAX_DROP_SHORTEST_FRACTION,
    MAX_JOB_NAME_CHARS,
    MAX_LOGPROBS,
    MAX_PROMPT_ID_CHARS,
    MAX_PROMPTS_PER_JOB,
    MAX_PROMPTS_PER_REQUEST,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_TEMPERATURE,
    SAMPLING_FIELDS,
    SHORTEST_BY_CHOICES,
    TOP_K_DISABLED,
)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid")


class ChatMessage(_Strict):
    role: Literal[CHAT_ROLES]  # type: ignore[valid-type]  # a tuple subscript is Literal["system", ...]
    content: str


class SamplingFields(_Strict):
    """The sampling parameters shared by /v1/samples and /v1/jobs."""

    n: int = Field(1, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=MAX_TEMPERATURE)
    top_k: int = Field(TOP_K_DISABLED, ge=TOP_K_DISABLED)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    max_tokens: int = Field(DEFAULT_MAX_TOKENS, ge=1)
    stop: list[str] | None = Field(None, max_length=MAX_STOP_STRINGS)
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
    prompts: list[str] | None = Field(None, min_length=1, max_length=MAX_PROMPTS_PER_REQUEST)
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
    prompt: str | None = None
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
    filters: JobFilters = Field(default_factory=JobFilters)
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

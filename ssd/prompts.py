"""Prompt files: the one parser for `{"id", "prompt" | "messages"}` JSONL, and the built-in demo set.

A bare `prompt` becomes a single user turn of a chat (the chat template is applied by the service),
unless `chat=False` asks for raw text, as `ssd jobs start --raw` does.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

from common.errors import SSDError
from common.jsonl import iter_jsonl

BUILTIN_PROMPTS = "demo_prompts.jsonl"


class PromptFileError(SSDError):
    """A prompt file is missing, malformed, or holds too few prompts for the run."""


def prompt_item(row: dict[str, Any], line: int, *, chat: bool = True) -> dict[str, Any]:
    """One job prompt (`{"id", "messages"}` or `{"id", "prompt"}`) from one file row. Columnar
    readers fill a missing field with None, so None counts as absent."""
    pid = row.get("id")
    item: dict[str, Any] = {"id": str(pid) if pid not in (None, "") else f"prompt-{line}"}
    messages, prompt = row.get("messages"), row.get("prompt")
    if messages:
        item["messages"] = [{"role": m["role"], "content": m["content"]} for m in messages]
    elif not isinstance(prompt, str) or not prompt.strip():
        raise PromptFileError(f"line {line}: needs a non-empty `prompt` or `messages`")
    elif chat:
        item["messages"] = [{"role": "user", "content": prompt}]
    else:
        item["prompt"] = prompt
    return item


def builtin_prompts_path() -> Path:
    """The built-in demo prompt set (398 short Python tasks, none from HumanEval)."""
    return Path(str(resources.files("ssd.data").joinpath(BUILTIN_PROMPTS)))


def read_prompt_file(path: Path | None, *, chat: bool = True) -> list[dict[str, Any]]:
    """Every prompt of a JSONL file, in file order; `None` reads the built-in demo set."""
    source = Path(path) if path is not None else builtin_prompts_path()
    if not source.is_file():
        raise PromptFileError(f"prompt file not found: {source}")
    return [prompt_item(row, line, chat=chat) for line, row in enumerate(iter_jsonl(source), start=1)]  # type: ignore[arg-type]


def split_heldout(prompts: list[dict[str, Any]], heldout: int, limit: int = 0) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts): the last `heldout` are kept out of training, then the
    first `limit` of the rest are trained on (0 = all)."""
    held = prompts[len(prompts) - heldout:] if heldout else []
    train = prompts[:len(prompts) - len(held)]
    if limit:
        train = train[:limit]
    if not train:
        raise PromptFileError(f"no training prompts left after holding out {heldout} for the diagnostics")
    return train, held

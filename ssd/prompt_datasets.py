"""Training prompts from local files: rStar-Coder's `seed_sft` layout or the generic prompts JSONL.

The files are read through HF `datasets` (parquet, JSONL or arrow, a single file, a folder of shards,
or a folder written by `Dataset.save_to_disk`) and never downloaded: a hub id is not a path, and a
path that does not exist is an error.

Two layouts:

* **rstar**: one row per problem (or per solution of a problem) with a `question` column, an optional
  `starter_code` column and an optional `question_id`. A row with starter code is a function-call
  problem (LeetCode style) and is rendered with the function template; the others read stdin and write
  stdout and use the stdin template. This is how ml-ssd turns `seed_sft` into prompts.
* **jsonl**: the generic format the toolkit has always read: `{"id": ..., "prompt": "..."}` or
  `{"id": ..., "messages": [...]}` per line. A bare prompt becomes one user message.

Templates are plain text files with `{{ question }}` and `{{ starter_code }}` placeholders, the same
placeholders as ml-ssd's `self_distillation_prompt_*.j2` files, so those can be pointed at directly.
The built-in ones live in `ssd/templates/`.

Then, in this order: de-duplication (first occurrence wins), a seeded shuffle, and `limit`.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import ConfigError, help_meta, require
from ssd.prompts import PromptFileError, prompt_item

FORMAT_AUTO = "auto"
FORMAT_JSONL = "jsonl"
FORMAT_RSTAR = "rstar"
FORMATS = (FORMAT_AUTO, FORMAT_JSONL, FORMAT_RSTAR)

DEDUP_NONE = "none"
DEDUP_EXACT = "exact"
DEDUP_NORMALIZED = "normalized"       # case and whitespace folded
DEDUP_CHOICES = (DEDUP_NONE, DEDUP_EXACT, DEDUP_NORMALIZED)

TEMPLATES_DIR = Path(__file__).resolve().parent / "templates"
DEFAULT_STDIN_TEMPLATE = TEMPLATES_DIR / "stdin_prompt.txt"
DEFAULT_FUNCTION_TEMPLATE = TEMPLATES_DIR / "function_prompt.txt"

_QUESTION = re.compile(r"\{\{\s*question\s*\}\}")
_STARTER = re.compile(r"\{\{\s*starter_code\s*\}\}")
# File suffix -> the `datasets` builder that reads it.
_BUILDERS = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".arrow": "arrow"}
_RSTAR_COLUMNS = ("question_id", "question", "starter_code")
_FUNCTION_KEY = "_function_style"     # carried until the prompts are final, then counted and dropped


@dataclass
class PromptDataConfig:
    prompts_file: Path | None = field(default=None, metadata=help_meta(
        "local parquet / JSONL / arrow file or folder of them (never downloaded)"))
    prompts_format: str = field(default=FORMAT_AUTO, metadata=help_meta(
        "auto | jsonl ({id, prompt|messages} lines) | rstar (rStar-Coder seed_sft columns)"))
    stdin_template: Path | None = field(default=None, metadata=help_meta(
        "rstar: template for stdin problems ({{ question }}); default: the built-in one"))
    function_template: Path | None = field(default=None, metadata=help_meta(
        "rstar: template for starter-code problems ({{ question }}, {{ starter_code }}); default: built-in"))
    dedup: str = field(default=DEDUP_NORMALIZED, metadata=help_meta(
        "none | exact | normalized (case and whitespace folded)"))
    limit: int | None = field(default=None, metadata=help_meta("keep at most this many prompts (after dedup)"))
    shuffle_seed: int | None = field(default=None, metadata=help_meta("shuffle with this seed; none = file order"))

    def __post_init__(self) -> None:
        for name in ("prompts_file", "stdin_template", "function_template"):
            if isinstance(getattr(self, name), str):
                setattr(self, name, Path(getattr(self, name)))
        require(self.prompts_format in FORMATS, f"prompts_format must be one of {FORMATS}, got {self.prompts_format!r}")
        require(self.dedup in DEDUP_CHOICES, f"dedup must be one of {DEDUP_CHOICES}, got {self.dedup!r}")
        if self.limit is not None:
            require(isinstance(self.limit, int) and self.limit >= 1, f"limit must be >= 1, got {self.limit!r}")
        if self.shuffle_seed is not None:
            require(isinstance(self.shuffle_seed, int) and self.shuffle_seed >= 0,
                    f"shuffle_seed must be an integer >= 0, got {self.shuffle_seed!r}")


@dataclass
class LoadedPrompts:
    """The prompts and what happened on the way (for the plan and the report)."""

    prompts: list[dict[str, Any]]      # {"id": str, "messages": [...]}
    source: str
    prompts_format: str                # the resolved layout: jsonl | rstar
    rows_read: int
    duplicates_dropped: int
    function_style: int = 0            # rstar: prompts rendered with the function template


def load_prompt_dataset(config: PromptDataConfig, default_file: Path | None = None) -> list[dict[str, Any]]:
    """The prompts of `config` as `{"id", "messages"}` dicts (`default_file` when no file is set)."""
    return read_prompt_dataset(config, default_file).prompts


def read_prompt_dataset(config: PromptDataConfig, default_file: Path | None = None) -> LoadedPrompts:
    path = config.prompts_file or default_file
    if path is None:
        raise ConfigError("prompts_file is not set")
    rows = _read_rows(Path(path))
    fmt = _resolve_format(config.prompts_format, rows, path)
    if fmt == FORMAT_RSTAR:
        stdin_t, function_t = _templates(config)
        prompts = _rstar_prompts(rows, stdin_t, function_t)
    else:
        prompts = _jsonl_prompts(rows, path)
    unique = _dedup(prompts, config.dedup)
    duplicates = len(prompts) - len(unique)
    if config.shuffle_seed is not None:
        random.Random(config.shuffle_seed).shuffle(unique)
    if config.limit is not None:
        unique = unique[:config.limit]
    _make_ids_unique(unique)
    function_style = sum(bool(p.pop(_FUNCTION_KEY, False)) for p in unique)
    return LoadedPrompts(unique, str(path), fmt, len(rows), duplicates, function_style)


# -- reading -----------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        raise ConfigError(f"prompts_file {path} does not exist (prompt datasets are read from local files, "
                          "never downloaded: fetch the dataset first and give its path)")
    import datasets  # deferred: a heavy import that only this path needs

    if path.is_dir() and ((path / "dataset_info.json").exists() or (path / "state.json").exists()):
        loaded = datasets.load_from_disk(str(path))
        if isinstance(loaded, datasets.DatasetDict):
            loaded = loaded[next(iter(loaded))]
        return loaded.to_list()
    builder, files = _data_files(path)
    kwargs: dict[str, Any] = {}
    if builder == "parquet":
        kwargs["columns"] = _parquet_columns(files)   # seed_sft also holds long responses: skip them
    try:
        dataset = datasets.load_dataset(builder, data_files=[str(f) for f in files], split="train", **kwargs)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the file's fault; say which file
        raise ConfigError(f"cannot read {path} as {builder}: {exc}") from exc
    return dataset.to_list()


def _data_files(path: Path) -> tuple[str, list[Path]]:
    files = sorted(p for p in path.rglob("*") if p.suffix in _BUILDERS) if path.is_dir() else [path]
    if not files or any(f.suffix not in _BUILDERS for f in files):
        raise ConfigError(f"{path}: expected .parquet, .jsonl, .json or .arrow files")
    builders = {_BUILDERS[f.suffix] for f in files}
    if len(builders) > 1:
        raise ConfigError(f"{path} mixes file types {sorted(builders)}; point at one kind")
    return builders.pop(), files


def _parquet_columns(files: list[Path]) -> list[str] | None:
    """The rStar columns when the files have a `question` column, else all columns (None)."""
    import pyarrow.parquet as pq

    names = set(pq.read_schema(files[0]).names)
    return [c for c in _RSTAR_COLUMNS if c in names] if "question" in names else None


def _resolve_format(fmt: str, rows: list[dict[str, Any]], path: Path) -> str:
    if not rows:
        raise ConfigError(f"{path} holds no rows")
    columns = set(rows[0])
    if fmt == FORMAT_AUTO:
        if "question" in columns:
            return FORMAT_RSTAR
        if columns & {"prompt", "messages"}:
            return FORMAT_JSONL
        raise ConfigError(f"{path}: cannot tell the layout from columns {sorted(columns)}; expected "
                          "`question` (rstar) or `prompt`/`messages` (jsonl)")
    needed = {"question"} if fmt == FORMAT_RSTAR else {"prompt", "messages"}
    require(bool(columns & needed), f"{path}: prompts_format {fmt} needs a column among {sorted(needed)}, "
                                    f"found {sorted(columns)}")
    return fmt


# -- layouts -----------------------------------------------------------------------------------

def _templates(config: PromptDataConfig) -> tuple[str, str]:
    stdin_t = _read_template(config.stdin_template or DEFAULT_STDIN_TEMPLATE, ("question",))
    function_t = _read_template(config.function_template or DEFAULT_FUNCTION_TEMPLATE,
                                ("question", "starter_code"))
    return stdin_t, function_t


def _read_template(path: Path, placeholders: tuple[str, ...]) -> str:
    if not path.is_file():
        raise ConfigError(f"template {path} does not exist")
    text = path.read_text(encoding="utf-8")
    patterns = {"question": _QUESTION, "starter_code": _STARTER}
    for name in placeholders:
        # A template without the placeholder would silently drop the problem (or its starter code).
        require(patterns[name].search(text) is not None, f"template {path} has no {{{{ {name} }}}} placeholder")
    return text


def render(template: str, question: str, starter_code: str = "") -> str:
    """Fill a template's placeholders (a function, so a replacement text is never read as a regex)."""
    text = _QUESTION.sub(lambda _: question.strip(), template)
    return _STARTER.sub(lambda _: starter_code.rstrip(), text).strip()


def _rstar_prompts(rows: list[dict[str, Any]], stdin_t: str, function_t: str) -> list[dict]:
    prompts = []
    for index, row in enumerate(rows):
        question, starter = row.get("question"), row.get("starter_code") or ""
        if not isinstance(question, str) or not question.strip():
            continue                                            # a row without a problem is no prompt
        is_function = bool(starter.strip())
        content = render(function_t, question, starter) if is_function else render(stdin_t, question)
        pid = row.get("question_id")
        prompts.append({"id": str(pid) if pid not in (None, "") else f"rstar-{index}",
                        "messages": [{"role": "user", "content": content}], _FUNCTION_KEY: is_function})
    return prompts


def _jsonl_prompts(rows: list[dict[str, Any]], path: Path) -> list[dict]:
    try:
        return [prompt_item(row, index + 1) for index, row in enumerate(rows)]
    except PromptFileError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


# -- selection ---------------------------------------------------------------------------------

def normalize(text: str) -> str:
    """Case-folded, whitespace runs collapsed to one space: the key of normalised de-duplication."""
    return " ".join(text.split()).casefold()


def _dedup(prompts: list[dict], how: str) -> list[dict]:
    if how == DEDUP_NONE:
        return list(prompts)
    seen: set[str] = set()
    unique = []
    for prompt in prompts:
        text = "\n\x00".join(m["content"] for m in prompt["messages"])
        key = normalize(text) if how == DEDUP_NORMALIZED else text
        if key not in seen:
            seen.add(key)
            unique.append(prompt)
    return unique


def _make_ids_unique(prompts: list[dict]) -> None:
    """The service refuses a job with a repeated prompt id; rStar rows of one problem share theirs."""
    counts: dict[str, int] = {}
    for prompt in prompts:
        base = prompt["id"]
        counts[base] = counts.get(base, 0) + 1
        if counts[base] > 1:
            prompt["id"] = f"{base}#{counts[base]}"

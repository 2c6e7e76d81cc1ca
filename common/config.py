"""Typed dataclass configs that load from YAML and take CLI flag overrides.

Every tool in the project (service, trainer, evaluation, `ssd run`) describes its settings as one
dataclass. This module turns such a dataclass into argparse flags, so a user can write

    ssd train --config train.yaml --lr 1e-4 --lora-rank 8

and get YAML values overridden by flags, with the dataclass defaults underneath both. Precedence:
defaults < YAML < flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from common.errors import EXIT_USAGE, SSDError

T = TypeVar("T")


class ConfigError(SSDError, ValueError):
    """A config file or flag holds a value that does not fit the dataclass."""

    exit_code = EXIT_USAGE


def help_meta(text: str) -> dict[str, str]:
    """Field metadata: `field(default=..., metadata=help_meta("..."))` becomes the flag's --help."""
    return {"help": text}


def require(ok: bool, message: str) -> None:
    """Raise ConfigError(message) unless `ok`: every config check in the project goes through here."""
    if not ok:
        raise ConfigError(message)


def check_range(name: str, value: object, low: float, high: float, *, low_open: bool = False) -> None:
    """`low <= value <= high` (`low < value` with `low_open`) for a finite number, else a ConfigError
    naming the field and its bounds."""
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    above_low = is_number and (value > low if low_open else value >= low)  # type: ignore[operator]
    ok = is_number and above_low and value <= high  # type: ignore[operator]
    require(ok, f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """Return (inner type, is_optional) for `X | None` / `Optional[X]`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


def _converter(tp: Any):
    inner, _ = _unwrap_optional(tp)
    origin = typing.get_origin(inner)
    if origin in (list, tuple):
        (item,) = typing.get_args(inner)[:1] or (str,)
        item_conv = _converter(item)
        return lambda text: [item_conv(part) for part in text.split(",") if part != ""]
    if inner is bool:
        return _parse_bool
    if inner in (int, float, str):
        return inner
    if inner is Path:
        return Path
    return str


def add_dataclass_flags(parser: argparse.ArgumentParser, cls: type, *, skip: tuple[str, ...] = ()) -> None:
    """Add one `--kebab-case` flag per dataclass field. Defaults are left as None so that
    we can tell "flag given" from "flag absent" when merging with YAML."""
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        if field.name in skip or not field.init:
            continue
        help_text = field.metadata.get("help", "")
        default = _field_default(field)
        if default is not dataclasses.MISSING:
            help_text = f"{help_text} (default: {default})".strip()
        parser.add_argument(
            _flag(field.name), dest=field.name, type=_converter(hints[field.name]),
            default=None, help=help_text, metavar=field.name.upper(),
        )


def _field_default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return field.default_factory()  # type: ignore[misc]
    return dataclasses.MISSING


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def build_config(cls: type[T], yaml_values: dict[str, Any] | None = None,
                 flag_values: dict[str, Any] | None = None) -> T:
    """Merge defaults < YAML < flags into an instance of `cls`, rejecting unknown keys."""
    known = {f.name for f in dataclasses.fields(cls) if f.init}  # type: ignore[arg-type]
    merged: dict[str, Any] = {}
    for source_name, values in (("config file", yaml_values or {}), ("flags", flag_values or {})):
        for key, value in values.items():
            key = key.replace("-", "_")
            if key not in known:
                if source_name == "flags":
                    continue  # argparse namespaces carry other subcommand flags
                raise ConfigError(f"unknown key {key!r} in {source_name}; known keys: {sorted(known)}")
            if value is not None:
                merged[key] = _coerce(cls, key, value)
    try:
        return cls(**merged)
    except TypeError as exc:
        raise ConfigError(str(exc)) from exc


def _coerce(cls: type, key: str, value: Any) -> Any:
    tp = typing.get_type_hints(cls)[key]
    inner, _ = _unwrap_optional(tp)
    if inner is Path and isinstance(value, str):
        return Path(value)
    if inner is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if inner in (int, float, str, bool) and not isinstance(value, inner):
        raise ConfigError(f"{key}: expected {inner.__name__}, got {type(value).__name__} {value!r}")
    return value


def config_from_args(cls: type[T], args: argparse.Namespace) -> T:
    """Build `cls` from a parsed namespace that has an optional `config` (YAML path) attribute."""
    return build_config(cls, load_yaml(getattr(args, "config", None)), vars(args))


def to_dict(config: Any) -> dict[str, Any]:
    """A YAML/JSON-friendly dict of a config (Paths become strings)."""
    out = {}
    for key, value in dataclasses.asdict(config).items():
        out[key] = str(value) if isinstance(value, Path) else value
    return out

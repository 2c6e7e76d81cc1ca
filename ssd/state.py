"""The typed record of one `ssd run`, kept in `<output_dir>/state.json`.

Each stage writes its result into a field when it finishes, and the file is replaced atomically, so
a re-run after a crash skips what is set and resumes the rest. The pipeline writes this state and
the report reads it; neither knows the file's layout beyond these dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from common.errors import SSDError

STATE_FILE = "state.json"
STATE_VERSION = 2
T = TypeVar("T")


class StateFileError(SSDError):
    """state.json cannot be read as this version's run state."""


@dataclass
class SampleStage:
    job_id: str
    samples_file: str
    exported: int
    num_prompts: int
    samples_written: int
    samples_kept: int
    samples_filtered: int
    output_tokens: int
    tokens_per_s: float
    prompts_clamped: int = 0       # max_tokens cut to what the context left
    prompts_too_long: int = 0      # no room left at all: no samples


@dataclass
class TrainStage:
    adapter_dir: str
    metrics: str


@dataclass
class PushStage:
    name: str
    version: int
    alias: str


@dataclass
class EvalStage:
    adapter: str | None
    run_dir: str
    scores: dict[str, Any]


@dataclass
class SweepStage:
    sweep_file: str


@dataclass
class DiagnoseStage:
    section: str


@dataclass
class RoundState:
    number: int
    sample_job_id: str | None = None     # recorded before waiting, so a crash resumes the same job
    sample: SampleStage | None = None
    train: TrainStage | None = None
    push: PushStage | None = None
    eval: EvalStage | None = None

    @property
    def key(self) -> str:
        return f"round-{self.number}"


@dataclass
class RunState:
    version: int = STATE_VERSION
    baseline: EvalStage | None = None    # the base model, before round 1
    rounds: list[RoundState] = field(default_factory=list)
    sweep: SweepStage | None = None      # after the last round
    heldout_job_id: str | None = None
    heldout: SampleStage | None = None
    diagnose: DiagnoseStage | None = None

    def round(self, number: int) -> RoundState:
        """Round `number` (1-based), created empty the first time it is asked for."""
        while len(self.rounds) < number:
            self.rounds.append(RoundState(number=len(self.rounds) + 1))
        return self.rounds[number - 1]

    def finished_rounds(self) -> list[RoundState]:
        return [r for r in self.rounds if r.eval is not None]


class StateFile:
    """A RunState bound to its file: `stage()` runs a stage once and saves its result."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.state = load_state(self.path) if self.path.exists() else RunState()

    def save(self) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(dataclasses.asdict(self.state), indent=2))
        os.replace(tmp, self.path)

    def stage(self, owner: Any, name: str, label: str, run: Callable[[], T]) -> T:
        """`owner.<name>` if a previous run set it; else run the stage, store its result there, save."""
        done = getattr(owner, name)
        if done is not None:
            print(f"[ssd run] {label}: done earlier, skipped")
            return done
        print(f"[ssd run] {label} ...", flush=True)
        result = run()
        setattr(owner, name, result)
        self.save()
        return result


def load_state(path: Path) -> RunState:
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise StateFileError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
        raise StateFileError(f"{path} is not a version-{STATE_VERSION} run state; "
                             "start the run in a new --output-dir")
    return _from_dict(RunState, data)


def _from_dict(cls: type[T], data: dict[str, Any]) -> T:
    hints = typing.get_type_hints(cls)
    values = {f.name: _convert(hints[f.name], data[f.name]) for f in dataclasses.fields(cls)  # type: ignore[arg-type]
              if f.name in data}
    return cls(**values)


def _convert(tp: Any, value: Any) -> Any:
    """Rebuild nested dataclasses (and lists and optionals of them) from their JSON form."""
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(inner[0], value) if len(inner) == 1 else value
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_convert(item, v) for v in value]
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _from_dict(tp, value)
    return value

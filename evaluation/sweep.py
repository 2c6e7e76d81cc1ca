"""Temperature studies: a T_eval sweep, and a (T_train, T_eval) grid that reports T_eff = T_train × T_eval.

The paper's claim under test: tuning the base model's temperature alone cannot match SSD. So every
study evaluates the base model over the same T_eval values as the SSD adapter(s), and the report puts
the base model's best temperature beside SSD's.

The base model has no T_train; its T_eff is T_eval (it samples its own distribution at T_eval).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from common.config import check_range
from evaluation.config import EvalConfig
from evaluation.metrics import Metric
from evaluation.runner import EvalResult, Sampler, evaluate, reuse_run

SWEEP_FILE = "sweep.json"
MAX_SWEEP_POINTS = 64
MAX_SWEEP_CONCURRENCY = 16
DEFAULT_SWEEP_CONCURRENCY = 4
BASE_LABEL = "base"


@dataclass
class SweepPoint:
    label: str                   # "base" or the adapter's label (e.g. "ssd T_train=1.6")
    adapter: str | None
    t_train: float | None
    t_eval: float
    metrics: dict[str, Metric]
    run_dir: str
    by_difficulty: dict[str, dict[str, Metric]] = field(default_factory=dict)
    reused_from: str | None = None   # an earlier run's folder, when this point was taken from it

    @property
    def t_eff(self) -> float:
        return self.t_eval * (self.t_train if self.t_train is not None else 1.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"t_eff": self.t_eff}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SweepPoint:
        def metrics(raw): return {k: Metric(**v) for k, v in raw.items()}
        return cls(label=data["label"], adapter=data["adapter"], t_train=data["t_train"], t_eval=data["t_eval"],
                   metrics=metrics(data["metrics"]), run_dir=data["run_dir"],
                   by_difficulty={d: metrics(m) for d, m in data.get("by_difficulty", {}).items()},
                   reused_from=data.get("reused_from"))


# An earlier run that may stand in for a point, by (adapter or None, T_eval): e.g. the main
# evaluation at T_eval, whose first answers on the sweep's problems are such a point already.
Earlier = Mapping[tuple[str | None, float], str | Path]


def _point(result: EvalResult, label: str, t_train: float | None, reused_from: str | None = None) -> SweepPoint:
    return SweepPoint(label=label, adapter=result.config.adapter, t_train=t_train, t_eval=result.config.t_eval,
                      metrics=result.scores.overall, run_dir=str(result.output_dir),
                      by_difficulty=result.scores.by_difficulty, reused_from=reused_from)


def _point_config(base: EvalConfig, adapter: str | None, temperature: float, study_dir: Path) -> EvalConfig:
    return dataclasses.replace(base, adapter=adapter, t_eval=temperature, output_dir=str(study_dir),
                               run_name=f"{adapter or BASE_LABEL}-T{temperature:g}")


def _check_size(temperatures: list[float], runs: int) -> None:
    if not temperatures:
        raise ValueError("a sweep needs at least one temperature")
    if len(temperatures) * runs > MAX_SWEEP_POINTS:
        raise ValueError(f"{len(temperatures) * runs} runs exceed MAX_SWEEP_POINTS={MAX_SWEEP_POINTS}")


def temperature_sweep(client: Sampler, config: EvalConfig, temperatures: list[float], *,
                      adapter: str | None = None, t_train: float | None = None,
                      include_base: bool = True, concurrency: int = 1,
                      earlier: Earlier | None = None) -> list[SweepPoint]:
    """Evaluate the base model (and `adapter`, if given) at every T_eval in `temperatures`. A point
    with a run in `earlier` that can stand in for it (`reuse_run`) is taken from that run."""
    runs: list[tuple[str, str | None, float | None]] = [(BASE_LABEL, None, None)] if include_base else []
    if adapter:
        runs.append((_adapter_label(adapter, t_train), adapter, t_train))
    return _study(client, config, temperatures, runs, concurrency, earlier or {})


def temperature_grid(client: Sampler, config: EvalConfig, temperatures: list[float],
                     adapters_by_t_train: dict[float, str], *, include_base: bool = True,
                     concurrency: int = 1) -> list[SweepPoint]:
    """One SSD adapter per T_train, each evaluated at every T_eval: the (T_train, T_eval) grid."""
    runs: list[tuple[str, str | None, float | None]] = [(BASE_LABEL, None, None)] if include_base else []
    runs += [(_adapter_label(a, t), a, t) for t, a in sorted(adapters_by_t_train.items())]
    return _study(client, config, temperatures, runs, concurrency, {})


def _adapter_label(adapter: str, t_train: float | None) -> str:
    return f"{adapter} (T_train={t_train:g})" if t_train is not None else adapter


def _study(client: Sampler, config: EvalConfig, temperatures: list[float],
           runs: list[tuple[str, str | None, float | None]], concurrency: int, earlier: Earlier) -> list[SweepPoint]:
    """Evaluate every (run, T_eval) point, `concurrency` of them at once. One point is a single
    batch of requests, and the engine waits on its longest answer; points in flight together keep
    its batch full (in the demo on the CPU, 4 base-model points at once took half the time of
    one after another)."""
    _check_size(temperatures, len(runs))
    check_range("concurrency", concurrency, 1, MAX_SWEEP_CONCURRENCY)
    study_dir = Path(config.output_dir) / (config.run_name or f"{config.benchmark}-sweep")
    todo = [(label, adapter, t_train, t) for label, adapter, t_train in runs for t in temperatures]
    done: dict[int, SweepPoint] = {}

    def finish(index: int, result: EvalResult, reused_from: str | None = None) -> None:
        label, _, t_train, _ = todo[index]
        done[index] = _point(result, label, t_train, reused_from)
        save_points([done[i] for i in sorted(done)], study_dir)   # a crash keeps the points done so far

    to_sample = []
    for index, (_, adapter, _, t) in enumerate(todo):
        source = earlier.get((adapter, t))
        reused = reuse_run(source, _point_config(config, adapter, t, study_dir)) if source else None
        if reused is not None:
            finish(index, reused, str(source))
        else:
            to_sample.append(index)
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = {pool.submit(evaluate, client, _point_config(config, todo[i][1], todo[i][3], study_dir)): i
                   for i in to_sample}
        for future in as_completed(futures):
            finish(futures[future], future.result())
    finally:
        # On Ctrl-C or an error, return at once: waiting here would hold the caller (and the
        # service it will stop) until the points in flight finish.
        pool.shutdown(wait=False, cancel_futures=True)
    return [done[i] for i in sorted(done)]


def save_points(points: list[SweepPoint], study_dir: str | Path) -> Path:
    study_dir = Path(study_dir)
    study_dir.mkdir(parents=True, exist_ok=True)
    path = study_dir / SWEEP_FILE
    path.write_text(json.dumps([p.to_dict() for p in points], indent=2) + "\n")
    return path


def load_points(path: str | Path) -> list[SweepPoint]:
    path = Path(path)
    path = path / SWEEP_FILE if path.is_dir() else path
    return [SweepPoint.from_dict(row) for row in json.loads(path.read_text())]


def parse_temperatures(text: str) -> list[float]:
    values = [float(part) for part in text.split(",") if part.strip()]
    if any(v < 0 for v in values):
        raise ValueError(f"temperatures must be >= 0, got {values}")
    return values


def parse_grid(text: str) -> dict[float, str]:
    """'1.6=ssd-t16,2.0=ssd-t20' → {1.6: 'ssd-t16', 2.0: 'ssd-t20'}."""
    grid = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        t_train, sep, adapter = part.partition("=")
        if not sep or not adapter:
            raise ValueError(f"grid entries look like T_TRAIN=ADAPTER, got {part!r}")
        grid[float(t_train)] = adapter
    return grid

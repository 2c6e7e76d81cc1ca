"""`ssd run --dry-run`: the resolved plan of a run, printed without loading weights or starting a
service. It counts prompts and problems from the local files when they are there, bounds the tokens
to sample and evaluate, and turns them into accelerator-hours at a stated throughput."""

from __future__ import annotations

from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from common.config import ConfigError
from common.models import context_length, local_model_config
from ssd.config import RunConfig
from ssd.prompt_datasets import read_prompt_dataset
from ssd.prompts import builtin_prompts_path

SECONDS_PER_HOUR = 3600.0


@dataclass
class Plan:
    prompts_source: str
    prompts_found: bool
    train_prompts: int
    heldout_prompts: int
    duplicates_dropped: int
    problems: int | None              # None: the benchmark file is not on this machine
    context: int | None               # the model's own context, from its local config.json
    sample_tokens: int | None         # upper bound: every sample runs to max_tokens; None: unknown here
    eval_tokens: int | None
    config: RunConfig

    def hours(self, tokens: int) -> float:
        return tokens / self.config.plan_tokens_per_s / SECONDS_PER_HOUR


def make_plan(config: RunConfig) -> Plan:
    prompts, found, source, duplicates = _count_prompts(config)
    heldout = min(config.heldout_prompts, prompts)
    train = prompts - heldout
    if config.num_prompts:
        train = min(train, config.num_prompts)
    rounds = config.rounds
    context = context_length(local_model_config(config.model))
    # max_tokens 0 fills the context: a sample then runs to at most the whole context.
    per_sample = config.sample_max_tokens or context
    per_answer = config.eval_max_tokens or context
    sample_tokens = None
    if per_sample is not None:
        sample_tokens = rounds * (train * config.samples_per_prompt + heldout) * per_sample
    problems = _count_problems(config)
    eval_tokens = None
    if problems is not None and per_answer is not None:
        per_eval = min(problems, config.eval_limit or problems) * config.eval_n * per_answer
        sweep_problems = min(problems, config.sweep_limit or problems)
        sweep = 2 * len(config.sweep_temperatures) * sweep_problems * config.sweep_n * per_answer
        eval_tokens = (rounds + 1) * per_eval + sweep
    return Plan(source, found, train, heldout, duplicates, problems, context, sample_tokens, eval_tokens, config)


def _count_prompts(config: RunConfig) -> tuple[int, bool, str, int]:
    path = config.prompts_file or builtin_prompts_path()
    if not Path(path).exists():
        # A planning machine need not hold the data: count what the config asks for.
        return config.num_prompts + config.heldout_prompts, False, str(path), 0
    loaded = read_prompt_dataset(config.prompt_data(), default_file=builtin_prompts_path())
    return len(loaded.prompts), True, loaded.source, loaded.duplicates_dropped


def _count_problems(config: RunConfig) -> int | None:
    from evaluation.config import EvalConfig
    from evaluation.runner import load_benchmark

    if config.benchmark_path and not Path(config.benchmark_path).exists():
        return None
    try:
        benchmark = load_benchmark(EvalConfig(benchmark=config.benchmark, benchmark_path=config.benchmark_path,
                                              date_from=config.eval_date_from, date_to=config.eval_date_to))
        return len(benchmark.problems(limit=config.eval_limit))
    except (ConfigError, FileNotFoundError, ValueError):
        return None


def format_plan(plan: Plan) -> str:
    cfg = plan.config
    where = "" if plan.prompts_found else " (not on this machine: counted from num_prompts + heldout_prompts)"
    problems = plan.problems if plan.problems is not None else "unknown (benchmark file not on this machine)"
    window = f"{cfg.eval_date_from or 'start'} .. {cfg.eval_date_to or 'end'}"
    lines = [
        f"plan for `ssd run` on {cfg.model} ({cfg.rounds} round(s), round_start {cfg.round_start})",
        f"  prompts        {plan.prompts_source}{where}",
        f"                 {plan.train_prompts} train + {plan.heldout_prompts} held out "
        f"({plan.duplicates_dropped} duplicates dropped, dedup {cfg.dedup})",
        f"  sample         T_train {cfg.t_train:g}, top_k {cfg.top_k}, top_p {cfg.top_p:g}, "
        f"{cfg.samples_per_prompt} sample(s) per prompt, max_tokens {_tokens(cfg.sample_max_tokens, plan)}",
        f"                 drop empty, then the shortest {cfg.drop_shortest_fraction:g} by characters",
        f"  train          LoRA r={cfg.lora_rank}, lr {cfg.lr:g}, {cfg.epochs} epoch(s), max_seq_len "
        f"{_tokens(cfg.max_seq_len, plan, what='the service context')}",
        f"  evaluate       {cfg.benchmark} at T_eval {cfg.t_eval:g}, {cfg.eval_n} repeat(s), max_tokens "
        f"{_tokens(cfg.eval_max_tokens, plan)}, problems {problems}",
        f"                 LCB window {window}; repeat seeds {cfg.eval_repeat_seeds}",
        f"  tokens         sample <= {_count(plan.sample_tokens)}, evaluate <= {_count(plan.eval_tokens)}",
        f"  time           at {cfg.plan_tokens_per_s:,.0f} output tokens/s: "
        f"sample <= {_hours(plan, plan.sample_tokens)}, evaluate <= {_hours(plan, plan.eval_tokens)}",
        "  settings",
        *(f"    {f.name:<22} {_show(getattr(cfg, f.name))}" for f in fields(cfg)),
    ]
    return "\n".join(lines)


def _show(value: Any) -> str:
    return "-" if value is None else str(value)


def _tokens(value: int, plan: Plan, *, what: str = "the rest of the context") -> str:
    """A token limit as set, or what 0 (fill the context) comes to for this model."""
    if value:
        return str(value)
    known = f"{plan.context:,} tokens, from the model's config" if plan.context else "unknown until the model loads"
    return f"0 = {what} ({known})"


def _count(tokens: int | None) -> str:
    return f"{tokens:,}" if tokens is not None else "unknown"


def _hours(plan: Plan, tokens: int | None) -> str:
    return f"{plan.hours(tokens):.1f} h" if tokens is not None else "unknown"

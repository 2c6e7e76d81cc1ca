"""`ssd eval`: evaluate a model or adapter, run temperature studies, or re-score a finished run.
`python -m evaluation.cli ...` runs it alone.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from client.api import SamplerClient
from common.cli import add_config_flags, add_subcommand, standalone_main
from common.config import config_from_args
from evaluation.config import EvalConfig
from evaluation.metrics import rescore
from evaluation.runner import evaluate, format_summary
from evaluation.sweep import DEFAULT_SWEEP_CONCURRENCY

EPILOG = """\
examples:
  # pass@1 of the base model on 20 HumanEval problems at T_eval 0.8
  ssd eval --limit 20 --t-eval 0.8

  # an SSD adapter, 10 samples per problem, pass@1 and pass@5
  ssd eval --adapter ssd --n 10 --ks 1,5 --t-eval 1.1

  # LiveCodeBench v6 window from a local code_generation_lite file
  ssd eval --benchmark livecodebench --benchmark-path test6.jsonl \\
           --date-from 2025-02-01 --date-to 2025-05-31 --n 10 --max-tokens 4096

  # T_eval sweep, base model and the adapter on the same axes (PNG plots + report.md)
  ssd eval --sweep 0.6,0.8,1.0,1.2 --adapter ssd --limit 40

  # (T_train, T_eval) grid: one adapter per T_train, T_eff = T_train x T_eval
  ssd eval --sweep 0.6,0.8,1.0 --grid 1.2=ssd-t12,1.6=ssd-t16,2.0=ssd-t20

  # settings from YAML, flags override; re-score a finished run without generating
  ssd eval --config eval.yaml --workers 2
  ssd eval --rescore runs/eval/humaneval-base-T0.8 --ks 1
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_subcommand(
        subparsers, "eval", help="pass@k on HumanEval / LiveCodeBench through the sampling service", epilog=EPILOG,
        description="Generate answers through the sampling service, run them in the sandbox and report "
                    "pass@k with 95% bootstrap CIs. Precedence: defaults < --config YAML < flags.")
    add_config_flags(parser, EvalConfig)
    parser.add_argument("--sweep", metavar="T1,T2,...", help="evaluate at each T_eval (base, plus --adapter)")
    parser.add_argument("--grid", metavar="T_TRAIN=ADAPTER,...", help="with --sweep: one adapter per T_train")
    parser.add_argument("--t-train", type=float, metavar="T", help="with --sweep: the adapter's T_train")
    parser.add_argument("--no-base", action="store_true", help="with --sweep: skip the base model")
    parser.add_argument("--sweep-concurrency", type=int, default=DEFAULT_SWEEP_CONCURRENCY, metavar="N",
                        help=f"with --sweep: points evaluated at once (default {DEFAULT_SWEEP_CONCURRENCY})")
    parser.add_argument("--rescore", metavar="PATH", help="re-score a run directory or samples.jsonl")
    parser.add_argument("--report", metavar="SWEEP_DIR", help="rebuild the plots and report.md from a sweep")
    parser.set_defaults(func=run_eval_command)
    return parser


def _rescore_command(args: argparse.Namespace) -> int:
    scores = rescore(args.rescore, ks=args.ks)
    print(format_summary(scores, f"re-scored {args.rescore}"))
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from evaluation.report import write_report
    from evaluation.sweep import load_points
    path = write_report(load_points(args.report), Path(args.report))
    print(f"report: {path}")
    return 0


def _sweep_command(client, config: EvalConfig, args: argparse.Namespace) -> int:
    from evaluation.report import best_points, write_report
    from evaluation.sweep import parse_grid, parse_temperatures, temperature_grid, temperature_sweep
    temperatures = parse_temperatures(args.sweep)
    if args.grid:
        points = temperature_grid(client, config, temperatures, parse_grid(args.grid), include_base=not args.no_base,
                                  concurrency=args.sweep_concurrency)
    else:
        points = temperature_sweep(client, config, temperatures, adapter=config.adapter, t_train=args.t_train,
                                   include_base=not args.no_base, concurrency=args.sweep_concurrency)
    study_dir = Path(points[0].run_dir).parent
    report = write_report(points, study_dir, title=f"Temperature study: {config.benchmark}")
    print(f"{'model':<28} {'T_eval':>6} {'T_eff':>6} {'pass@1':>7}")
    for p in points:
        metric = p.metrics.get("pass@1")
        print(f"{p.label:<28} {p.t_eval:>6g} {p.t_eff:>6g} {100 * metric.value if metric else float('nan'):>6.1f}%")
    for label, p in best_points(points).items():
        print(f"best {label}: T_eval {p.t_eval:g} → pass@1 {100 * p.metrics['pass@1'].value:.1f}%")
    print(f"report: {report}")
    return 0


def run_eval_command(args: argparse.Namespace) -> int:
    if args.rescore:
        return _rescore_command(args)
    if args.report:
        return _report_command(args)
    config = config_from_args(EvalConfig, args)
    with SamplerClient(config.sampler_url) as client:
        if args.sweep:
            return _sweep_command(client, config, args)
        result = evaluate(client, config)
    print(format_summary(result.scores, f"{config.benchmark} · {config.adapter or 'base'} · T_eval {config.t_eval:g}"
                                        f" · n {config.n} · {result.elapsed_s:.0f}s"))
    print(f"results: {result.output_dir}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main(register, "eval", "evaluation.cli", argv)


if __name__ == "__main__":
    sys.exit(main())

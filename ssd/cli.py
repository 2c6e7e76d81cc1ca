"""The `ssd` command: the root of every subcommand, and the application's own ones.

A subcommand lives in the `cli.py` of the package that does its work:

  serve     sampler_service/cli.py     the sampling service
  train     trainer/cli.py             the LoRA trainer worker
  eval      evaluation/cli.py          pass@k, temperature sweeps
  diagnose  diagnostics/cli.py         lock/fork statistics before and after SSD
  sample    ssd/cli.py                 one-off sampling through the service
  jobs      ssd/cli.py                 start, watch, cancel and export sampling jobs
  run       ssd/cli.py                 a whole SSD experiment, restartable (ssd/pipeline.py)
  report    ssd/cli.py                 rebuild an experiment's report
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from client.api import API_KEY_ENV, SamplerClient
from common.cli import add_config_flags, add_subcommand, run_command
from common.config import config_from_args
from common.protocol import DEFAULT_URL, JOB_FAILED
from diagnostics import cli as diagnostics_cli
from evaluation import cli as evaluation_cli
from sampler_service import cli as service_cli
from ssd.config import RunConfig, SamplingConfig
from ssd.jobs import export_samples, wait_with_progress
from ssd.prompts import read_prompt_file
from trainer import cli as trainer_cli

SAMPLE_EXAMPLES = """examples:
  ssd sample "def fibonacci(n):" --max-tokens 64 --temperature 0
  ssd sample --chat "Write a Python function that reverses a string." --n 4 --temperature 1.6 --top-k 20 --top-p 0.8
  ssd sample --config t_train.yaml --chat "Write quicksort."      # YAML settings, flags override them
"""

JOBS_EXAMPLES = """examples:
  ssd jobs start prompts.jsonl --temperature 1.6 --top-k 20 --top-p 0.8 --max-tokens 512 --wait
  ssd jobs list
  ssd jobs show job_0123456789abcdef
  ssd jobs export job_0123456789abcdef samples.jsonl
  ssd jobs cancel job_0123456789abcdef

prompts.jsonl holds one {"id": ..., "prompt": ...} or {"id": ..., "messages": [...]} per line;
a line with only "prompt" is sent as a chat message with --chat.
"""

RUN_EXAMPLES = """examples:
  ssd run --config configs/demo.yaml                 # the demo: one round on SmolLM2-135M, CPU, ~30 min
  ssd run --model Qwen/Qwen3-4B-Instruct-2507 --prompts-file rstar_seed_sft.jsonl \\
          --t-train 1.6 --t-eval 1.1 --benchmark livecodebench --benchmark-path lcb_v6.jsonl \\
          --sampler-url http://gpu-box:8000 --output-dir runs/qwen4b
  ssd run --config configs/demo.yaml --rounds 3      # iterated SSD: each round samples the last adapter

Re-running the same command after a crash resumes at the first unfinished stage.
"""


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    add_config_flags(parser, SamplingConfig)
    _api_key_flag(parser)


def _register_sample(subparsers: argparse._SubParsersAction) -> None:
    parser = add_subcommand(subparsers, "sample", help="sample completions for one prompt", epilog=SAMPLE_EXAMPLES)
    parser.add_argument("prompt", nargs="?", help="raw prompt text")
    parser.add_argument("--chat", help="send this text as a user message through the chat template")
    _add_sampling_flags(parser)
    parser.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.chat is None):
        print("give a prompt, or --chat TEXT", file=sys.stderr)
        return 2
    settings = config_from_args(SamplingConfig, args)
    with SamplerClient(settings.url, api_key=args.api_key) as sampler:
        if args.chat is not None:
            out = sampler.sample(messages=[[{"role": "user", "content": args.chat}]], **settings.params())
        else:
            out = sampler.sample(prompts=[args.prompt], **settings.params())
    for i, completion in enumerate(out["results"][0]["completions"]):
        print(f"--- sample {i} ({completion['num_tokens']} tokens, {completion['finish_reason']}) ---")
        print(completion["text"])
    return 0


def _register_jobs(subparsers: argparse._SubParsersAction) -> None:
    parser = add_subcommand(subparsers, "jobs", help="start, list, watch, cancel and export sampling jobs",
                            epilog=JOBS_EXAMPLES)
    actions = parser.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", help="start a job from a prompts JSONL file")
    start.add_argument("prompts", type=Path)
    start.add_argument("--chat", action="store_true", default=True, help="wrap bare prompts as user messages")
    start.add_argument("--raw", dest="chat", action="store_false", help="send bare prompts as raw text")
    start.add_argument("--name")
    start.add_argument("--wait", action="store_true", help="show a progress bar until the job ends")
    _add_sampling_flags(start)
    _url_flag(actions.add_parser("list", help="list jobs"))
    for name, text in (("show", "show a job"), ("cancel", "cancel a job"), ("wait", "wait for a job")):
        _url_flag(actions.add_parser(name, help=text)).add_argument("job_id")
    export = _url_flag(actions.add_parser("export", help="write a job's kept samples to JSONL"))
    export.add_argument("job_id")
    export.add_argument("output", type=Path)
    parser.set_defaults(func=_run_jobs)


def _url_flag(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--url", default=DEFAULT_URL, help="the sampling service")
    _api_key_flag(parser)
    return parser


def _api_key_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--api-key", default=None, help=f"the service's API key (default: ${API_KEY_ENV})")


def _run_jobs(args: argparse.Namespace) -> int:
    if args.action == "start":
        return _start_job(args)
    with SamplerClient(args.url, api_key=args.api_key) as sampler:
        if args.action == "list":
            for job in sampler.list_jobs():
                print(f"{job['id']}  {job['status']:<10} {job['prompts_done']:>6}/{job['num_prompts']:<6} "
                      f"kept {job['samples_kept']:<6} {job['tokens_per_s']:>8.1f} tok/s  {job['name'] or ''}")
        elif args.action == "show":
            print(json.dumps(sampler.get_job(args.job_id), indent=2))
        elif args.action == "cancel":
            print(json.dumps(sampler.cancel_job(args.job_id), indent=2))
        elif args.action == "wait":
            wait_with_progress(sampler, args.job_id)
        elif args.action == "export":
            count = export_samples(sampler, args.job_id, args.output)
            print(f"wrote {count} samples to {args.output}")
    return 0


def _start_job(args: argparse.Namespace) -> int:
    settings = config_from_args(SamplingConfig, args)
    with SamplerClient(settings.url, api_key=args.api_key) as sampler:
        job = sampler.create_job(prompts=read_prompt_file(args.prompts, chat=args.chat), name=args.name,
                                 filters={"drop_empty": True,
                                          "drop_shortest_fraction": settings.drop_shortest_fraction},
                                 **settings.params())
        print(job["id"])
        if args.wait:
            job = wait_with_progress(sampler, job["id"])
    return 0 if job["status"] != JOB_FAILED else 1

def _register_run(subparsers: argparse._SubParsersAction) -> None:
    parser = add_subcommand(subparsers, "run", epilog=RUN_EXAMPLES,
                            help="a whole SSD experiment: eval, sample, train, reload, eval, report")
    add_config_flags(parser, RunConfig)
    _api_key_flag(parser)
    parser.add_argument("--dry-run", action="store_true",
                        help="print the resolved plan (prompts, tokens, hours, every setting) and exit")
    parser.set_defaults(func=_run_command)
    report = add_subcommand(subparsers, "report", help="rebuild an experiment's report from its recorded results",
                            epilog="example:\n  ssd report runs/demo")
    report.add_argument("output_dir", type=Path)
    report.set_defaults(func=_report_command)


def _run_command(args: argparse.Namespace) -> int:
    config = config_from_args(RunConfig, args)
    if args.dry_run:
        from ssd.plan import format_plan, make_plan

        print(format_plan(make_plan(config)))
        return 0
    from ssd.pipeline import run_experiment  # heavy imports only when a run starts

    print(f"[ssd run] report: {run_experiment(config, api_key=args.api_key)}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from ssd.pipeline import rebuild_report

    print(rebuild_report(args.output_dir))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssd", description="Simple Self-Distillation for code models.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for package_cli in (service_cli, trainer_cli, evaluation_cli, diagnostics_cli):
        package_cli.register(subparsers)
    _register_sample(subparsers)
    _register_jobs(subparsers)
    _register_run(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

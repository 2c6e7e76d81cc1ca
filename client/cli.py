"""The `ssd` command. Each part of the project registers its own subcommand here:

  serve     sampler_service.server      the sampling service
  sample    client.cli                  one-off sampling through the service
  jobs      client.cli                  start, watch, cancel and export sampling jobs
  train     trainer.cli                 the LoRA trainer worker
  eval      evaluation.cli              pass@k, temperature sweeps
  run       client.pipeline             a whole SSD experiment, restartable
  report    client.pipeline             rebuild an experiment's report
  diagnose  diagnostics.cli             lock/fork statistics before and after SSD
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

from dataclasses import dataclass, field

from client.api import SamplerClient
from client.errors import SSDClientError
from common.config import add_dataclass_flags, config_from_args

DEFAULT_URL = "http://127.0.0.1:8000"
PROGRESS_TTY_INTERVAL_S = 0.1
PROGRESS_LOG_INTERVAL_S = 30.0
SUBCOMMAND_MODULES = ("sampler_service.server", "trainer.cli", "evaluation.cli", "client.pipeline",
                      "diagnostics.cli")

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


@dataclass
class SamplingSettings:
    """What `ssd sample` and `ssd jobs start` send: from YAML (`--config`), overridden by flags."""

    url: str = field(default=DEFAULT_URL, metadata={"help": "the sampling service"})
    n: int = field(default=1, metadata={"help": "samples per prompt"})
    temperature: float = field(default=1.0, metadata={"help": "0 = greedy"})
    top_k: int = field(default=-1, metadata={"help": "-1 = off"})
    top_p: float = field(default=1.0, metadata={"help": "nucleus truncation"})
    min_p: float = field(default=0.0, metadata={"help": "min-p truncation"})
    max_tokens: int = field(default=256, metadata={"help": "new tokens per sample"})
    adapter: str | None = field(default=None, metadata={"help": "adapter alias (`ssd`) or version (`ssd@v2`)"})
    drop_shortest_fraction: float = field(default=0.1, metadata={"help": "jobs: ml-ssd's shortest-X filter"})

    def params(self) -> dict:
        return {"n": self.n, "temperature": self.temperature, "top_k": self.top_k, "top_p": self.top_p,
                "min_p": self.min_p, "max_tokens": self.max_tokens, "adapter": self.adapter}


def _add_sampling_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML file with SamplingSettings fields")
    add_dataclass_flags(parser, SamplingSettings)


def _register_sample(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("sample", help="sample completions for one prompt", epilog=SAMPLE_EXAMPLES,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("prompt", nargs="?", help="raw prompt text")
    parser.add_argument("--chat", help="send this text as a user message through the chat template")
    _add_sampling_flags(parser)
    parser.set_defaults(func=_run_sample)


def _run_sample(args: argparse.Namespace) -> int:
    if (args.prompt is None) == (args.chat is None):
        print("give a prompt, or --chat TEXT", file=sys.stderr)
        return 2
    settings = config_from_args(SamplingSettings, args)
    with SamplerClient(settings.url) as sampler:
        if args.chat is not None:
            out = sampler.sample(messages=[[{"role": "user", "content": args.chat}]], **settings.params())
        else:
            out = sampler.sample(prompts=[args.prompt], **settings.params())
    for i, completion in enumerate(out["results"][0]["completions"]):
        print(f"--- sample {i} ({completion['num_tokens']} tokens, {completion['finish_reason']}) ---")
        print(completion["text"])
    return 0


def read_prompt_file(path: Path, *, chat: bool) -> list[dict]:
    """Read `{"id", "prompt" | "messages"}` lines; with `chat`, wrap a bare prompt as a user turn."""
    prompts = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SystemExit(f"{path}:{number}: not valid JSON: {exc}")
        item = {"id": str(row.get("id", number))}
        if "messages" in row:
            item["messages"] = row["messages"]
        elif chat:
            item["messages"] = [{"role": "user", "content": row["prompt"]}]
        else:
            item["prompt"] = row["prompt"]
        prompts.append(item)
    return prompts


def _register_jobs(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("jobs", help="start, list, watch, cancel and export sampling jobs",
                                   epilog=JOBS_EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    return parser


def _run_jobs(args: argparse.Namespace) -> int:
    if args.action == "start":
        return _start_job(args)
    with SamplerClient(args.url) as sampler:
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
    settings = config_from_args(SamplingSettings, args)
    with SamplerClient(settings.url) as sampler:
        job = sampler.create_job(prompts=read_prompt_file(args.prompts, chat=args.chat), name=args.name,
                                 filters={"drop_empty": True, "drop_shortest_fraction": settings.drop_shortest_fraction},
                                 **settings.params())
        print(job["id"])
        if args.wait:
            job = wait_with_progress(sampler, job["id"])
    return 0 if job["status"] != "failed" else 1


def wait_with_progress(sampler: SamplerClient, job_id: str) -> dict:
    from tqdm import tqdm

    job = sampler.get_job(job_id)
    # In a log file rather than a terminal, one line every 30 s instead of one per poll.
    interval = PROGRESS_TTY_INTERVAL_S if sys.stderr.isatty() else PROGRESS_LOG_INTERVAL_S
    with tqdm(total=job["num_prompts"], desc=f"sampling {job_id}", unit="prompt", mininterval=interval) as bar:
        def update(current: dict) -> None:
            bar.set_postfix(kept=current["samples_kept"], tok_s=current["tokens_per_s"], refresh=False)
            bar.update(current["prompts_done"] - bar.n)
        job = sampler.wait_for_job(job_id, on_progress=update)
    return job


def export_samples(sampler: SamplerClient, job_id: str, output: Path, *, include_filtered: bool = False) -> int:
    """Write a finished job's samples to JSONL atomically; returns how many were written."""
    output.parent.mkdir(parents=True, exist_ok=True)
    count = 0
    tmp = output.with_suffix(output.suffix + ".tmp")
    with tmp.open("w") as handle:
        for sample in sampler.iter_samples(job_id, include_filtered=include_filtered):
            handle.write(json.dumps(sample) + "\n")
            count += 1
    tmp.rename(output)
    return count


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ssd", description="Simple Self-Distillation for code models.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_name in SUBCOMMAND_MODULES:
        importlib.import_module(module_name).register(subparsers)
    _register_sample(subparsers)
    _register_jobs(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SSDClientError as exc:
        print(f"ssd {args.command}: {exc}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as exc:
        print(f"ssd {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

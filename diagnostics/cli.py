"""The `diagnose` subcommand. `client/cli.py` calls `register(subparsers)`; `python -m diagnostics.cli`
runs it alone. Heavy imports (torch, transformers) happen only when the command runs."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from common.config import ConfigError, add_dataclass_flags, config_from_args, to_dict
from diagnostics.settings import AnalysisSettings

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_BAD_CONFIG = 2                 # argparse's own code for a usage error
DEFAULT_THREADS = 1                 # the vLLM service shares these 2 cores; a 2nd OpenMP thread then spin-waits (measured ~40x slower)
MAX_THREADS = 256
REPORT_FILENAME = "diagnostics.md"
SUMMARY_FILENAME = "diagnostics.json"

EPILOG = """\
examples:
  # held-out samples: any pull-API export, e.g. a base-model job on prompts that were NOT trained on
  ssd jobs export job_0123456789abcdef heldout.jsonl

  # base vs base+LoRA adapter, at the SSD round's T_train truncation (1.6 / top-k 20 / top-p 0.8)
  ssd diagnose --base-model demo --adapter runs/round1/train/adapter \\
      --samples-file heldout.jsonl --output-dir runs/round1/diagnostics

  # compare at the evaluation temperature, stricter locks, a quick look at 16 samples
  ssd diagnose --base-model demo --adapter runs/round1/train/adapter --samples-file heldout.jsonl \\
      --temperature 1.1 --lock-min-top1 0.95 --max-samples 16

  # two full models instead of an adapter; everything else from YAML, one flag overriding it
  ssd diagnose --config diagnose.yaml --ssd-model path/to/merged-model --fork-min-entropy 1.5

precedence: dataclass defaults < --config YAML < flags. Writes into --output-dir:
  diagnostics.md (tables + embedded plots), diagnostics.json (settings, per-class means, examples),
  and the PNGs. Lock: base top-1 >= --lock-min-top1. Fork: base entropy >= --fork-min-entropy and
  top-1 < --fork-max-top1. Formulas and how to read the plots: docs/diagnostics.md.
"""


@dataclass
class DiagnoseConfig(AnalysisSettings):
    """`ssd diagnose`: the analysis settings plus where the models, samples and outputs are."""
    base_model: str = field(default="demo", metadata={"help": "base model: 'demo', an HF folder or hub id"})
    adapter: Path | None = field(default=None, metadata={
        "help": "peft LoRA folder: the SSD model is base + this adapter"})
    ssd_model: str | None = field(default=None, metadata={
        "help": "or: a second full HF model as the SSD model (instead of --adapter)"})
    samples_file: Path | None = field(default=None, metadata={
        "help": "held-out samples, JSONL, one pull-API sample per line (needs prompt/completion_token_ids)"})
    output_dir: Path = field(default=Path("runs/diagnostics"), metadata={"help": "where to write the report"})
    threads: int = field(default=DEFAULT_THREADS, metadata={"help": "torch CPU threads"})

    def __post_init__(self) -> None:
        super().__post_init__()
        self.output_dir = Path(self.output_dir)
        if self.samples_file is None:
            raise ConfigError("samples_file is required: a JSONL file of held-out samples")
        if (self.adapter is None) == (self.ssd_model is None):
            raise ConfigError("give exactly one of adapter (a LoRA folder) and ssd_model (a second model)")
        if not 1 <= self.threads <= MAX_THREADS:
            raise ConfigError(f"threads must be in [1, {MAX_THREADS}], got {self.threads!r}")


def analysis_settings(config: DiagnoseConfig) -> AnalysisSettings:
    """The AnalysisSettings part of a DiagnoseConfig (so results do not carry input paths)."""
    from dataclasses import fields
    return AnalysisSettings(**{f.name: getattr(config, f.name) for f in fields(AnalysisSettings)})


def read_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Pull-API samples from JSONL: one sample per line, or whole pull-API pages ({"samples": [...]})."""
    with Path(path).open() as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}:{line_number}: not valid JSON: {exc}") from exc
            yield from record["samples"] if isinstance(record.get("samples"), list) else [record]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        "diagnose", help="lock/fork statistics of base vs SSD model on held-out samples",
        description="Score every completion position of held-out samples under the base and the SSD "
                    "model; classify locks and forks; report tails, entropy, top-1 and the seed's "
                    "loss decomposition, with plots.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, metavar="YAML", help="YAML file with DiagnoseConfig fields")
    add_dataclass_flags(parser, DiagnoseConfig)
    parser.set_defaults(func=run_diagnose_command)
    return parser


def run_diagnose_command(args: argparse.Namespace) -> int:
    try:
        config = config_from_args(DiagnoseConfig, args)
    except ConfigError as exc:
        print(f"ssd diagnose: bad config: {exc}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    if not config.samples_file.exists():
        print(f"ssd diagnose: samples file not found: {config.samples_file}", file=sys.stderr)
        return EXIT_BAD_CONFIG
    try:
        report_path = run_diagnose(config)
    except (ValueError, OSError) as exc:
        print(f"ssd diagnose: {exc}", file=sys.stderr)
        return EXIT_FAILED
    print(f"report: {report_path}")
    return EXIT_OK


def run_diagnose(config: DiagnoseConfig) -> Path:
    """Run the analysis and write diagnostics.md, diagnostics.json and the PNGs; return the .md path."""
    import torch

    from diagnostics.analysis import diagnose
    from diagnostics.report import write_report_section

    torch.set_num_threads(config.threads)
    result = diagnose(read_samples(config.samples_file), base_model=config.base_model, adapter=config.adapter,
                      ssd_model=config.ssd_model, settings=analysis_settings(config),
                      progress=lambda done, total: print(f"\rscored batch {done}/{total}", end="", file=sys.stderr))
    print(file=sys.stderr)
    config.output_dir.mkdir(parents=True, exist_ok=True)
    markdown = write_report_section(result, config.output_dir, heading="#")
    report_path = config.output_dir / REPORT_FILENAME
    report_path.write_text(markdown + "\n")
    summary = result.to_dict() | {"config": to_dict(config)}
    (config.output_dir / SUMMARY_FILENAME).write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(line for line in markdown.splitlines() if line.startswith("|")))
    return report_path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ssd")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["diagnose", *(sys.argv[1:] if argv is None else argv)])
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())

"""The `diagnose` subcommand: `ssd diagnose`, or `python -m diagnostics.cli` alone. Heavy imports
(torch, transformers) happen only when the command runs."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from common.cli import add_config_flags, add_subcommand, standalone_main
from common.config import config_from_args, to_dict
from common.jsonl import iter_jsonl
from diagnostics.config import DiagnoseConfig, analysis_config

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


def read_samples(path: Path) -> Iterator[dict[str, Any]]:
    """Pull-API samples from JSONL: one sample per line, or whole pull-API pages ({"samples": [...]})."""
    for record in iter_jsonl(path):
        yield from record["samples"] if isinstance(record.get("samples"), list) else [record]


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_subcommand(
        subparsers, "diagnose", help="lock/fork statistics of base vs SSD model on held-out samples", epilog=EPILOG,
        description="Score every completion position of held-out samples under the base and the SSD "
                    "model; classify locks and forks; report tails, entropy, top-1 and the seed's "
                    "loss decomposition, with plots.")
    add_config_flags(parser, DiagnoseConfig)
    parser.set_defaults(func=run_diagnose_command)
    return parser


def run_diagnose_command(args: argparse.Namespace) -> int:
    config = config_from_args(DiagnoseConfig, args)
    print(f"report: {run_diagnose(config)}")
    return 0


def run_diagnose(config: DiagnoseConfig) -> Path:
    """Run the analysis and write diagnostics.md, diagnostics.json and the PNGs; return the .md path."""
    import torch

    from diagnostics.analysis import diagnose
    from diagnostics.report import write_report_section

    torch.set_num_threads(config.threads)
    assert config.samples_file is not None   # DiagnoseConfig requires it
    result = diagnose(read_samples(config.samples_file), base_model=config.base_model, adapter=config.adapter,
                      ssd_model=config.ssd_model, settings=analysis_config(config),
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
    return standalone_main(register, "diagnose", "diagnostics.cli", argv)


if __name__ == "__main__":
    sys.exit(main())

"""The `train` subcommand: `ssd train`, or `python -m trainer` alone (as `ssd run` starts it)."""

from __future__ import annotations

import argparse

from common.cli import add_config_flags, add_subcommand, standalone_main
from common.config import config_from_args
from trainer.config import TrainConfig

EPILOG = """\
examples:
  # train on a sampling job while it is still sampling, push the adapter when done
  ssd train --job-id job_123 --model demo --max-steps 100 --push true --output-dir runs/round1

  # everything from a YAML file, one value overridden by a flag
  ssd train --config train.yaml --lr 5e-5

  # offline, from a JSONL export of the pull API (one sample per line)
  ssd train --samples-file samples.jsonl --epochs 2 --lora-rank 8 --output-dir runs/offline

  # continue after a crash or kill -9: picks the newest COMPLETE checkpoint in --output-dir
  ssd train --config train.yaml --resume

precedence: dataclass defaults < --config YAML < flags. Outputs in --output-dir:
  adapter/ (adapter_config.json + adapter_model.safetensors), checkpoints/step-N/, metrics.jsonl
"""


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    parser = add_subcommand(
        subparsers, "train", help="fine-tune a LoRA adapter on a job's samples (SSD step 2)", epilog=EPILOG,
        description="Fine-tune a LoRA adapter with cross-entropy on sampled completions (prompt tokens masked).")
    add_config_flags(parser, TrainConfig, skip=("resume",))
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue from the newest complete checkpoint in output_dir")
    parser.set_defaults(func=run_train_command)
    return parser


def run_train_command(args: argparse.Namespace) -> int:
    config = config_from_args(TrainConfig, args)
    from trainer.recipe import train  # torch is imported only when training really starts

    result = train(config)
    print(f"adapter: {result.adapter_dir}")
    print(f"steps: {result.steps}  final loss: {result.final_loss:.4f}  metrics: {result.metrics_path}")
    if result.pushed:
        print(f"serving: {result.pushed.get('alias')} (version {result.pushed.get('version')})")
    return 0


def main(argv: list[str] | None = None) -> int:
    return standalone_main(register, "train", "trainer", argv)

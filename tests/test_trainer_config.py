"""TrainConfig: YAML + flag precedence, and clear errors for bad values."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from common.config import ConfigError, config_from_args
from common.errors import EXIT_USAGE
from trainer import cli
from trainer.config import LORA_TARGETS_ALL_LINEAR, MAX_LORA_RANK, TrainConfig


def parse(argv: list[str]) -> TrainConfig:
    parser = argparse.ArgumentParser()
    subparsers = parser.add_subparsers(dest="command")
    cli.register(subparsers)
    args = parser.parse_args(["train", *argv])
    assert args.func is cli.run_train_command
    return config_from_args(TrainConfig, args)


def test_defaults_target_every_linear_layer():
    config = TrainConfig(samples_file="x.jsonl")
    assert config.target_modules == list(LORA_TARGETS_ALL_LINEAR)
    assert isinstance(config.output_dir, Path) and isinstance(config.samples_file, Path)


def test_yaml_loads_and_flags_override(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("model: demo\njob_id: job_1\nlr: 0.0002\nlora_rank: 8\nmax_steps: 40\n"
                    "target_modules: [q_proj, v_proj]\n")
    config = parse(["--config", str(path), "--lr", "5e-5", "--push", "true", "--resume"])
    assert config.job_id == "job_1" and config.lora_rank == 8 and config.max_steps == 40
    assert config.lr == 5e-5 and config.push is True and config.resume is True
    assert config.target_modules == ["q_proj", "v_proj"]
    assert parse(["--config", str(path), "--target-modules", "o_proj,up_proj"]).target_modules == ["o_proj", "up_proj"]
    assert parse(["--config", str(path)]).resume is False


@pytest.mark.parametrize("changes, field", [
    ({"lora_rank": 0}, "lora_rank"),
    ({"lora_rank": MAX_LORA_RANK + 1}, "lora_rank"),
    ({"lora_dropout": 1.0}, "lora_dropout"),
    ({"lr": 0.0}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"min_lr_ratio": 1.5}, "min_lr_ratio"),
    ({"grad_accum": 0}, "grad_accum"),
    ({"max_seq_len": 4}, "max_seq_len"),
    ({"micro_batch_tokens": 100, "max_seq_len": 512}, "micro_batch_tokens"),
    ({"warmup_steps": -1}, "warmup_steps"),
    ({"push_every": 5}, "push_every"),
    ({"adapter_name": "ssd@v2"}, "adapter_name"),
    ({"job_id": "job_1"}, "job_id"),            # together with samples_file
    ({"target_modules": []}, "target_modules"),
    ({"page_size": 5000}, "page_size"),
])
def test_bad_values_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        TrainConfig(**({"samples_file": "x.jsonl"} | changes))


def test_wrong_types_and_unknown_keys_in_yaml_are_errors(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("lora_rank: eight\n")
    with pytest.raises(ConfigError, match="lora_rank"):
        parse(["--config", str(path)])
    path.write_text("lora_rnak: 8\n")
    with pytest.raises(ConfigError, match="lora_rnak"):
        parse(["--config", str(path)])


def test_cli_exits_2_with_a_clear_message(capsys):
    assert cli.main(["--samples-file", "x.jsonl", "--lora-rank", "0"]) == EXIT_USAGE
    assert "lora_rank" in capsys.readouterr().err
    assert cli.main(["--model", "demo"]) == EXIT_USAGE   # no samples source at all
    assert "job_id or samples_file" in capsys.readouterr().err


def test_help_has_worked_examples(capsys):
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--resume" in out and "--samples-file" in out

"""The paper recipes load and dry-run as written, on a machine without their weights or data."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load_yaml
from ssd.config import RunConfig
from trainer.config import TrainConfig

REPO = Path(__file__).resolve().parent.parent
RECIPES = sorted((REPO / "configs" / "paper").glob("qwen3-*.yaml"))


def test_there_are_paper_recipes():
    assert {p.name for p in RECIPES} >= {"qwen3-4b-instruct.yaml", "qwen3-30b-a3b-instruct.yaml"}


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_recipe_dry_runs_with_the_papers_settings(recipe):
    proc = subprocess.run([sys.executable, "-m", "ssd.cli", "run", "--config", str(recipe), "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert "T_train 1.6, top_k 20, top_p 0.8, 1 sample(s) per prompt, max_tokens 65536" in out
    assert "LCB window 2025-02-01 .. 2025-05-31" in out
    assert "10000 train" in out and "max_tokens 32768" in out


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_a_recipes_trainer_settings_are_valid(recipe):
    run = RunConfig(**load_yaml(recipe))
    values = load_yaml(run.train_config) | {"model": run.model, "samples_file": "samples.jsonl",
                                            "lora_rank": run.lora_rank, "lr": run.lr, "max_seq_len": run.max_seq_len}
    train = TrainConfig(**values)
    assert train.micro_batch_size * train.grad_accum == 32    # the paper's batch of 32 samples

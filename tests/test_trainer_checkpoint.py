"""Crash-safe checkpoints: incomplete ones are ignored, and kill -9 + resume ends with the same adapter."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from common.config import ConfigError
from tests.test_trainer_fixtures import save_tiny_llama, synthetic_samples, tiny_llama
from trainer import ListSampleSource, TrainConfig, train
from trainer import checkpoint as ckpt

REPO_ROOT = Path(__file__).resolve().parent.parent
KILL_AFTER_STEP = 20
SUBPROCESS_TIMEOUT_S = 180
POLL_S = 0.02
ADAPTER_ATOL = 1e-6


def adapter_tensors(adapter_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def assert_same_adapter(first: Path, second: Path) -> None:
    a, b = adapter_tensors(first), adapter_tensors(second)
    assert a.keys() == b.keys() and a
    for name in a:
        assert torch.allclose(a[name], b[name], atol=ADAPTER_ATOL, rtol=1e-5), name
    assert any(t.abs().sum() > 0 for name, t in a.items() if "lora_B" in name)   # it really trained


def config(tmp_path, name, **changes) -> TrainConfig:
    values = dict(output_dir=tmp_path / name, max_steps=12, micro_batch_size=4, micro_batch_tokens=256,
                  max_seq_len=64, grad_accum=2, lr=1e-2, warmup_steps=2, save_every=3, keep_checkpoints=10,
                  lora_rank=4, lora_dropout=0.1)   # dropout: resume must restore the RNG too
    return TrainConfig(**(values | changes))


def test_only_complete_checkpoints_count(tmp_path):
    folder = tmp_path / "checkpoints"
    ckpt.write_checkpoint(folder, 5, lambda d: (d / "x").write_text("5"), keep=3)
    (folder / ckpt.step_dir_name(9)).mkdir()                       # renamed, crashed before COMPLETE
    (folder / f"{ckpt.TMP_PREFIX}step-000012-999").mkdir()          # crashed while writing
    assert ckpt.latest_checkpoint(folder).name == "step-000005"
    removed = {path.name for path in ckpt.remove_incomplete(folder)}
    assert removed == {"step-000009", ".tmp-step-000012-999"}
    assert [path.name for path in folder.iterdir()] == ["step-000005"]


def test_keeps_only_the_last_k(tmp_path):
    folder = tmp_path / "checkpoints"
    for step in range(1, 6):
        ckpt.write_checkpoint(folder, step, lambda d: None, keep=2)
    assert [path.name for path in ckpt.complete_checkpoints(folder)] == ["step-000004", "step-000005"]


def test_resume_from_a_middle_checkpoint_reproduces_the_adapter(tmp_path):
    samples = synthetic_samples(30)
    straight = train(config(tmp_path, "straight"), ListSampleSource(samples), model=tiny_llama())
    interrupted = train(config(tmp_path, "resumed"), ListSampleSource(samples), model=tiny_llama())
    # Pretend the process died just after step 6 had been checkpointed, and half of step 9 was written.
    checkpoints = interrupted.checkpoint_dir.parent
    for path in checkpoints.iterdir():
        if int(path.name.split("-")[1]) > 6:
            shutil.rmtree(path)
    (checkpoints / ckpt.step_dir_name(9)).mkdir()
    shutil.rmtree(interrupted.adapter_dir)
    resumed = train(config(tmp_path, "resumed", resume=True), ListSampleSource(samples), model=tiny_llama())
    assert resumed.steps == 12
    assert_same_adapter(straight.adapter_dir, resumed.adapter_dir)
    metric_steps = [json.loads(line)["step"] for line in resumed.metrics_path.read_text().splitlines()]
    assert metric_steps == list(range(1, 13))                       # re-run steps are not logged twice


def test_existing_checkpoints_need_resume(tmp_path):
    samples = synthetic_samples(10)
    train(config(tmp_path, "run", max_steps=3), ListSampleSource(samples), model=tiny_llama())
    with pytest.raises(ConfigError, match="--resume"):
        train(config(tmp_path, "run", max_steps=3), ListSampleSource(samples), model=tiny_llama())


# -- the real thing: SIGKILL a training process, resume it in a new one --------------------------

def write_run_files(tmp_path: Path) -> tuple[Path, Path]:
    model_dir = save_tiny_llama(tmp_path / "tiny-model")
    samples_file = tmp_path / "samples.jsonl"
    samples_file.write_text("".join(json.dumps(s) + "\n" for s in synthetic_samples(200, max_len=40)))
    return model_dir, samples_file


def write_yaml(tmp_path: Path, name: str, model_dir: Path, samples_file: Path) -> Path:
    values = {"model": str(model_dir), "samples_file": str(samples_file), "output_dir": str(tmp_path / name),
              "max_steps": 100, "save_every": 10, "keep_checkpoints": 3, "micro_batch_size": 8,
              "micro_batch_tokens": 512, "max_seq_len": 64, "grad_accum": 2, "lr": 5e-3, "warmup_steps": 5,
              "lora_rank": 4, "lora_dropout": 0.1, "seed": 7}
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def start_trainer(config_path: Path, log_path: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1",
               PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen([sys.executable, "-m", "trainer", "--config", str(config_path), *extra],
                            cwd=REPO_ROOT, env=env, stdout=log_path.open("w"), stderr=subprocess.STDOUT)


def wait_for_checkpoint(process: subprocess.Popen, checkpoints: Path, step: int) -> None:
    deadline = time.monotonic() + SUBPROCESS_TIMEOUT_S
    while not ckpt.is_complete(checkpoints / ckpt.step_dir_name(step)):
        assert process.poll() is None, "the trainer exited before reaching the checkpoint"
        assert time.monotonic() < deadline, "timed out waiting for the checkpoint"
        time.sleep(POLL_S)


@pytest.mark.slow
def test_sigkill_then_resume_gives_the_same_adapter(tmp_path):
    model_dir, samples_file = write_run_files(tmp_path)
    straight_yaml = write_yaml(tmp_path, "straight", model_dir, samples_file)
    killed_yaml = write_yaml(tmp_path, "killed", model_dir, samples_file)
    straight = start_trainer(straight_yaml, tmp_path / "straight.log")   # runs alongside, one thread each
    victim = start_trainer(killed_yaml, tmp_path / "killed.log")

    wait_for_checkpoint(victim, tmp_path / "killed" / "checkpoints", KILL_AFTER_STEP)
    assert victim.poll() is None, "the run finished before it could be killed; make it longer"
    victim.send_signal(signal.SIGKILL)
    assert victim.wait(SUBPROCESS_TIMEOUT_S) == -signal.SIGKILL
    assert not (tmp_path / "killed" / "adapter").exists()

    resumed = start_trainer(killed_yaml, tmp_path / "resumed.log", "--resume")
    assert resumed.wait(SUBPROCESS_TIMEOUT_S) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert straight.wait(SUBPROCESS_TIMEOUT_S) == 0, (tmp_path / "straight.log").read_text()[-3000:]
    log = (tmp_path / "resumed.log").read_text()
    assert "resumed from" in log and "at step 0" not in log
    assert_same_adapter(tmp_path / "straight" / "adapter", tmp_path / "killed" / "adapter")
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 101))


def test_resuming_a_finished_run_changes_nothing(tmp_path):
    samples = synthetic_samples(10)
    first = train(config(tmp_path, "run", max_steps=4), ListSampleSource(samples), model=tiny_llama())
    before = adapter_tensors(first.adapter_dir)
    again = train(config(tmp_path, "run", max_steps=4, resume=True), ListSampleSource(samples), model=tiny_llama())
    assert again.steps == 4
    after = adapter_tensors(again.adapter_dir)
    assert all(torch.equal(before[name], after[name]) for name in before)

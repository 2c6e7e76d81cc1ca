"""`ssd run` end to end on a tiny configuration through the real service, and its resume after a
SIGKILL mid-round."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from evaluation.sweep import load_points
from ssd.state import RunState, load_state

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]
RUN_TIMEOUT_S = 1800


def _tiny_config(tmp_path: Path, sampler_url: str) -> Path:
    prompts = tmp_path / "prompts.jsonl"
    names = ["double", "is_even", "last_item", "join_words", "sum_list", "square", "first_char", "to_upper"]
    prompts.write_text("".join(json.dumps({"id": f"t{i}", "prompt": f"Write a Python function `{n}(x)`."}) + "\n"
                               for i, n in enumerate(names)))
    train_config = tmp_path / "train.yaml"
    train_config.write_text(yaml.safe_dump({"micro_batch_size": 2, "grad_accum": 1, "warmup_steps": 0,
                                            "save_every": 1, "max_steps": 3}))
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({
        "model": "demo", "sampler_url": sampler_url, "output_dir": str(tmp_path / "run"), "rounds": 2,
        "adapter_name": "pipeline", "prompts_file": str(prompts), "heldout_prompts": 2,
        "sample_max_tokens": 48, "drop_shortest_fraction": 0.0, "train_config": str(train_config),
        "lora_rank": 4, "lr": 1e-3, "max_seq_len": 256, "eval_limit": 2, "eval_max_tokens": 48,
        "t_eval": 0.7, "sweep_temperatures": [0.5, 0.7], "sweep_limit": 2}))
    return config


def _ssd_run(config: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ssd.cli", "run", "--config", str(config)], cwd=REPO,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _state(tmp_path: Path) -> RunState:
    path = tmp_path / "run" / "state.json"
    return load_state(path) if path.exists() else RunState()


def test_ssd_run_writes_the_report_and_resumes_after_sigkill(sampler_url, tmp_path):
    config = _tiny_config(tmp_path, sampler_url)

    # First attempt: killed once training has written a checkpoint, mid-round.
    first = _ssd_run(config)
    checkpoints = tmp_path / "run" / "round-1" / "train" / "checkpoints"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    while time.monotonic() < deadline and first.poll() is None:
        if checkpoints.exists() and any((c / "COMPLETE").exists() for c in checkpoints.iterdir()):
            break
        time.sleep(0.2)
    assert first.poll() is None, f"ssd run ended before it could be killed:\n{first.stdout.read()[-3000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _state(tmp_path)
    assert before.baseline is not None and before.round(1).sample is not None and before.round(1).train is None
    eval_mtime = (tmp_path / "run" / "round-0" / "eval" / "summary.json").stat().st_mtime

    # Second attempt: resumes at training and finishes.
    second = _ssd_run(config)
    output, _ = second.communicate(timeout=RUN_TIMEOUT_S)
    assert second.returncode == 0, output[-4000:]
    assert "round-0/eval: done earlier, skipped" in output
    assert "round-1/sample: done earlier, skipped" in output
    assert "resumed from" in output  # the trainer continued from its checkpoint

    after = _state(tmp_path)
    one, two = after.round(1), after.round(2)
    assert one.sample.job_id == before.round(1).sample.job_id  # not sampled again
    assert (tmp_path / "run" / "round-0" / "eval" / "summary.json").stat().st_mtime == eval_mtime
    assert one.push.name == "pipeline"
    # Round 2 samples from round 1's adapter and serves a new version.
    assert two.sample.job_id != one.sample.job_id
    assert two.push.version == one.push.version + 1
    assert two.eval.adapter == two.push.alias
    assert after.sweep is not None and after.heldout is not None and after.diagnose is not None
    # The sweep samples T_eval 0.5 for both models; at T_eval 0.7 it takes the main evaluations.
    reused = {(p.adapter, p.t_eval): p.reused_from for p in load_points(after.sweep.sweep_file)}
    assert reused == {(None, 0.5): None, (two.push.alias, 0.5): None,
                      (None, 0.7): after.baseline.run_dir, (two.push.alias, 0.7): two.eval.run_dir}
    # Round 2's diagnostics compare round 1's model (its teacher) with round 2's.
    assert "Paired, problem by problem" in (tmp_path / "run" / "report.md").read_text()

    report = (tmp_path / "run" / "report.md").read_text()
    assert "| all | pass@1 |" in report
    for figure in ("loss.png", "round-1-lengths.png", "round-2-lengths.png", "sweep_t_eval.png", "sweep_t_eff.png"):
        assert (tmp_path / "run" / "figures" / figure).stat().st_size > 0
    assert "report:" in output and "SSD round 1" in output and "SSD round 2" in output
    assert "### round-2:" in report
    assert "The points at T_eval 0.7 were not sampled again" in report

    # `ssd report` rebuilds the same report from the recorded state alone.
    rebuilt = subprocess.run([sys.executable, "-m", "ssd.cli", "report", str(tmp_path / "run")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert (tmp_path / "run" / "report.md").read_text() == report

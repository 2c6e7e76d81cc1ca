"""End to end: `ssd eval` on 3 HumanEval problems with the demo model through the real sampling
service. Needs the session-scoped `sampler_url` fixture (tests/conftest.py), which starts the service.

The demo model (SmolLM2-135M-Instruct) solves few HumanEval problems (docs/cpu-notes.md: 6% greedy), so
the test checks the plumbing — every sample generated, checked in the sandbox, scored and written —
not the score itself.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from evaluation.metrics import rescore

pytestmark = pytest.mark.engine

PROBLEM_IDS = "HumanEval/0,HumanEval/2,HumanEval/4"
SAMPLES_PER_PROBLEM = 2
CLI_TIMEOUT_S = 900       # 6 answers of <= 256 tokens on a 2-core CPU, with slack for a busy engine
VALID_STATUSES = {"passed", "failed", "timeout", "error", "blocked"}


def _ssd(*argv: str) -> subprocess.CompletedProcess:
    # `python -m ssd.cli` is exactly what the `ssd` console script runs.
    return subprocess.run([sys.executable, "-m", "ssd.cli", *argv], capture_output=True, text=True,
                          timeout=CLI_TIMEOUT_S, cwd=Path(__file__).resolve().parents[2])


def test_ssd_eval_humaneval_end_to_end(sampler_url, tmp_path):
    proc = _ssd("eval", "--sampler-url", sampler_url, "--problems", PROBLEM_IDS,
                "--n", str(SAMPLES_PER_PROBLEM), "--t-eval", "0.8", "--top-k", "20", "--top-p", "0.8",
                "--max-tokens", "256", "--ks", "1,2", "--workers", "2", "--batch-size", "3",
                "--output-dir", str(tmp_path), "--run-name", "e2e")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "pass@1" in proc.stdout and "pass@2" in proc.stdout

    run_dir = tmp_path / "e2e"
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 3 * SAMPLES_PER_PROBLEM
    assert {r["problem_id"] for r in rows} == set(PROBLEM_IDS.split(","))
    assert all(r["status"] in VALID_STATUSES for r in rows)
    assert all(r["finish_reason"] in ("stop", "length") for r in rows)
    assert sum(bool(r["completion"].strip()) for r in rows) >= 1      # the model said something

    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["usage"]["completion_tokens"] > 0
    assert summary["served_adapter"] is None                          # the base model served
    pass_at_1 = summary["scores"]["overall"]["pass@1"]["value"]
    assert 0.0 <= pass_at_1 <= 1.0
    assert pass_at_1 == pytest.approx(sum(r["passed"] for r in rows) / len(rows))
    assert rescore(run_dir).overall["pass@1"].value == pytest.approx(pass_at_1)


def test_evaluate_api_greedy_through_the_client(sampler_url, tmp_path):
    from client.api import SamplerClient
    from evaluation.config import EvalConfig
    from evaluation.runner import evaluate

    config = EvalConfig(problems=["HumanEval/0"], n=1, t_eval=0.0, max_tokens=256, ks=[1],
                        output_dir=str(tmp_path), sampler_url=sampler_url, workers=1)
    with SamplerClient(sampler_url) as client:
        result = evaluate(client, config)
    assert result.scores.num_samples == 1
    assert (result.output_dir / "problems.jsonl").exists()

"""`ssd sample` and `ssd jobs` against the real service: YAML settings, flag overrides, export."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.engine

REPO = Path(__file__).resolve().parents[2]


def ssd(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ssd.cli", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600)


def test_sample_takes_yaml_settings_and_flag_overrides(sampler_url, tmp_path):
    config = tmp_path / "sampling.yaml"
    config.write_text(yaml.safe_dump({"url": sampler_url, "n": 3, "temperature": 1.6, "top_k": 20, "top_p": 0.8,
                                      "max_tokens": 12}))
    proc = ssd("sample", "--config", str(config), "--n", "2", "--chat",
               "Write a Python function that adds two numbers.")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("--- sample ") == 2  # the flag beat the YAML's n: 3
    assert "12 tokens" in proc.stdout or "stop" in proc.stdout


def test_bad_setting_gives_a_clear_error_not_a_traceback(sampler_url):
    proc = ssd("sample", "--url", sampler_url, "--top-p", "3", "def f():")
    assert proc.returncode == 1
    assert "top_p" in proc.stderr and "Traceback" not in proc.stderr


def test_jobs_start_wait_list_and_export(sampler_url, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"c{i}", "prompt": f"Write a Python function number {i}."}) + "\n"
                               for i in range(4)))
    started = ssd("jobs", "start", str(prompts), "--url", sampler_url, "--max-tokens", "16",
                  "--drop-shortest-fraction", "0", "--wait")
    assert started.returncode == 0, started.stderr
    job_id = started.stdout.split()[0]
    assert job_id.startswith("job_")
    listed = ssd("jobs", "list", "--url", sampler_url)
    assert job_id in listed.stdout and "completed" in listed.stdout
    out = tmp_path / "samples.jsonl"
    exported = ssd("jobs", "export", job_id, str(out), "--url", sampler_url)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert {r["prompt_id"] for r in rows} <= {f"c{i}" for i in range(4)} and rows
    assert all(r["kept"] for r in rows)

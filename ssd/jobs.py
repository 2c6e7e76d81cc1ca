"""Waiting for a sampling job with a progress bar, and exporting its samples: what `ssd jobs` and
`ssd run` both do with a job."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from tqdm import tqdm

from client.api import SamplerClient
from common.jsonl import write_jsonl

PROGRESS_TTY_INTERVAL_S = 0.1
PROGRESS_LOG_INTERVAL_S = 30.0     # in a log file, one line every 30 s instead of one per poll


def wait_with_progress(sampler: SamplerClient, job_id: str) -> dict[str, Any]:
    job = sampler.get_job(job_id)
    interval = PROGRESS_TTY_INTERVAL_S if sys.stderr.isatty() else PROGRESS_LOG_INTERVAL_S
    with tqdm(total=job["num_prompts"], desc=f"sampling {job_id}", unit="prompt", mininterval=interval) as bar:
        def update(current: dict[str, Any]) -> None:
            bar.set_postfix(kept=current["samples_kept"], tok_s=current["tokens_per_s"], refresh=False)
            bar.update(current["prompts_done"] - bar.n)
        return sampler.wait_for_job(job_id, on_progress=update)


def export_samples(sampler: SamplerClient, job_id: str, output: Path, *, include_filtered: bool = False) -> int:
    """Write a finished job's samples to JSONL atomically; returns how many were written."""
    return write_jsonl(output, sampler.iter_samples(job_id, include_filtered=include_filtered))

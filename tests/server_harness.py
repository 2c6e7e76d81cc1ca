"""The tests' one real sampling service: `client.local_server.LocalServer` with small limits, so
that tests can reach them cheaply."""

from __future__ import annotations

from pathlib import Path

from client.local_server import LocalServer

TEST_MAX_QUEUE = 48
TEST_MAX_BODY_BYTES = 2 * 1024 * 1024
TEST_MAX_N = 8
TEST_MAX_LORA_RANK = 32
TEST_MAX_MODEL_LEN = 1024
TEST_JOB_CONCURRENCY = 8   # prompts finish in waves, so a test can kill a job mid-way


def make_test_server(data_dir: Path, log_path: Path) -> LocalServer:
    return LocalServer("demo", data_dir, log_path, extra_args=[
        "--enforce-eager", "true", "--max-queue", str(TEST_MAX_QUEUE), "--max-body-bytes", str(TEST_MAX_BODY_BYTES),
        "--max-n", str(TEST_MAX_N), "--max-lora-rank", str(TEST_MAX_LORA_RANK),
        "--max-model-len", str(TEST_MAX_MODEL_LEN), "--job-concurrency", str(TEST_JOB_CONCURRENCY),
        "--kv-cache-gb", "1", "--log-level", "warning"])

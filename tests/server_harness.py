"""The tests' one real sampling service: `client.local_server.LocalServer` with small limits, so
that tests can reach them cheaply. It runs with API keys, as a deployed server would: every test
client sends one (the session fixture puts the admin key in SSD_API_KEY; raw httpx clients pass
`auth_headers()`)."""

from __future__ import annotations

from pathlib import Path

from client.local_server import LocalServer

TEST_MAX_QUEUE = 48
TEST_MAX_BODY_BYTES = 2 * 1024 * 1024
TEST_MAX_N = 8
TEST_MAX_LORA_RANK = 32
TEST_MAX_MODEL_LEN = 1024
TEST_JOB_CONCURRENCY = 8   # prompts finish in waves, so a test can kill a job mid-way
TEST_ADMIN_KEY = "test-admin-key-0123456789"
TEST_SAMPLE_KEY = "test-sample-key-0123456789"
TEST_LIMITED_KEY = "test-limited-key-0123456789"   # sample scope, one request in flight at most
TEST_LIMITED_CAP = 1
TEST_KEY_LINES = [f"{TEST_ADMIN_KEY} sample,admin", f"{TEST_SAMPLE_KEY} sample",
                  f"{TEST_LIMITED_KEY} sample {TEST_LIMITED_CAP}"]


def auth_headers(key: str = TEST_ADMIN_KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def make_test_server(data_dir: Path, log_path: Path, adapter_dir: Path) -> LocalServer:
    """`adapter_dir`: the one directory `POST /v1/adapters {"path"}` may load from."""
    keys_file = data_dir.parent / "api-keys.txt"
    keys_file.write_text("# the tests' keys\n" + "\n".join(TEST_KEY_LINES) + "\n")
    return LocalServer("demo", data_dir, log_path, extra_args=[
        "--api-keys-file", str(keys_file), "--adapter-dir", str(adapter_dir),
        "--enforce-eager", "true", "--max-queue", str(TEST_MAX_QUEUE), "--max-body-bytes", str(TEST_MAX_BODY_BYTES),
        "--max-n", str(TEST_MAX_N), "--max-lora-rank", str(TEST_MAX_LORA_RANK),
        "--max-model-len", str(TEST_MAX_MODEL_LEN), "--job-concurrency", str(TEST_JOB_CONCURRENCY),
        "--kv-cache-gb", "1", "--log-level", "warning"])

"""Starts the real sampling service (vLLM engine and all) as a subprocess for the tests.

One server per test session: engine start-up costs ~45 s on the CPU. The server runs in its own
process group so that `kill9()` takes down the API process *and* the engine worker together, the
way a crashed container would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

STARTUP_TIMEOUT_S = 600
SHUTDOWN_TIMEOUT_S = 30

# Small limits so the tests can reach them cheaply.
TEST_MAX_QUEUE = 48
TEST_MAX_BODY_BYTES = 2 * 1024 * 1024
TEST_MAX_N = 8
TEST_MAX_LORA_RANK = 32
TEST_MAX_MODEL_LEN = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerHandle:
    def __init__(self, data_dir: Path, log_path: Path, port: int | None = None):
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sampler_service", "--model", "demo", "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir), "--enforce-eager", "true",
                "--max-queue", str(TEST_MAX_QUEUE), "--max-body-bytes", str(TEST_MAX_BODY_BYTES),
                "--max-n", str(TEST_MAX_N), "--max-lora-rank", str(TEST_MAX_LORA_RANK),
                "--max-model-len", str(TEST_MAX_MODEL_LEN), "--kv-cache-gb", "1", "--log-level", "warning"]

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                        start_new_session=True, cwd=Path(__file__).resolve().parent.parent)
        self.wait_healthy()

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"the server exited with {self.process.returncode}; see {self.log_path}:\n"
                                   + self.log_path.read_text()[-3000:])
            try:
                if httpx.get(self.url + "/health", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(1)
        raise RuntimeError(f"the server was not healthy after {STARTUP_TIMEOUT_S}s; see {self.log_path}")

    def kill9(self) -> None:
        """SIGKILL the whole process group: no shutdown hook runs."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        self._wait_port_free()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=SHUTDOWN_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def _wait_port_free(self) -> None:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

"""Start and stop the sampling service as a child process: `ssd run` uses it when no `--sampler-url`
is given, and the tests use it for their one session server.

The child runs in its own process group, so stopping it (or `kill9()` in the crash tests) takes
down the API process and vLLM's engine worker together, as a crashed container would.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from client.api import SamplerClient
from client.errors import ServiceUnavailable

STARTUP_TIMEOUT_S = 900       # a first start compiles and loads the model; minutes on a CPU
SHUTDOWN_TIMEOUT_S = 30


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LocalServer:
    def __init__(self, model: str, data_dir: Path, log_path: Path, *, port: int | None = None,
                 extra_args: list[str] | None = None):
        self.model = model
        self.data_dir = Path(data_dir)
        self.log_path = Path(log_path)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        return [sys.executable, "-m", "sampler_service", "--model", self.model, "--host", "127.0.0.1",
                "--port", str(self.port), "--data-dir", str(self.data_dir), *self.extra_args]

    def start(self) -> LocalServer:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(self.command(), stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        self.wait_healthy()
        return self

    def wait_healthy(self) -> None:
        with SamplerClient(self.url) as probe:
            try:
                probe.wait_until_healthy(STARTUP_TIMEOUT_S, still_starting=self._raise_if_exited)
            except ServiceUnavailable:
                self.stop()
                raise RuntimeError(f"the sampling service was not healthy after {STARTUP_TIMEOUT_S}s; "
                                   f"see {self.log_path}") from None

    def _raise_if_exited(self) -> None:
        if self.process is not None and self.process.poll() is not None:
            tail = self.log_path.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"the sampling service exited with code {self.process.returncode}; "
                               f"last lines of {self.log_path}:\n{tail}")

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

    def __enter__(self) -> LocalServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_port_free(self) -> None:
        for _ in range(100):
            with socket.socket() as sock:
                if sock.connect_ex(("127.0.0.1", self.port)) != 0:
                    return
            time.sleep(0.1)

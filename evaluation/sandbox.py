"""Run untrusted programs in their own subprocesses. Generated code NEVER runs in the calling process.

Each program gets:
  * its own `python -I -S -B` interpreter (isolated: no user site, no PYTHON* variables, no .pth
    files, so not even the toolkit's editable install is importable, no bytecode writes), started in a fresh 0700 temporary directory that is also its HOME and TMPDIR;
  * a scrubbed environment (minimal PATH, no user HOME, single-threaded BLAS);
  * a new session (process group), killed as a whole on timeout and after every run;
  * where `unshare -rn` works, a new user + network namespace: only a loopback that is down, so no
    network even through native code;
  * rlimits set by `_sandbox_boot.py` before the program runs: CPU seconds, address space, file size
    (which also caps stdout/stderr, since both go to files), open files, processes (NPROC, enforced
    inside the user namespace even when the toolkit runs as root), no core dumps;
  * an audit hook (PEP 578) that ends the program on the first attempt to create a process, signal
    another process, open a socket or resolve a name, load native code with ctypes, write outside
    its directory, or read the project tree or the user's home.

Honest limits (see docs/evaluation.md): this contains accidents and naive escapes by model code,
not a determined attacker. The audit hook lives in the same interpreter as the program, so memory
corruption (or a C extension) could bypass it; files outside the denied roots stay readable; there
is no mount namespace, seccomp filter or cgroup. Run untrusted benchmarks in a container or VM.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

BOOT_SCRIPT = Path(__file__).with_name("_sandbox_boot.py")
PROJECT_ROOT = Path(__file__).resolve().parent.parent
EXIT_BLOCKED = 87                       # must match _sandbox_boot.EXIT_BLOCKED

DEFAULT_TIMEOUT_S = 6.0                 # per test, as in ml-ssd
DEFAULT_MEMORY_MB = 1024
DEFAULT_MAX_OUTPUT_BYTES = 16 * 1024 ** 2
DEFAULT_MAX_OPEN_FILES = 64
DEFAULT_EXTRA_PROCESSES = 64            # NPROC headroom above the user's current task count
STARTUP_SLACK_S = 2.0                   # interpreter start + imports, not charged to the test
CPU_SLACK_S = 1
MAX_WALL_S = 600.0                      # one process never lives longer than this
MAX_WORKERS = 64
MAX_STDERR_TAIL_BYTES = 2048
MAX_CONTROL_BYTES = 64 * 1024
TASK_COUNT_TTL_S = 5.0
SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"

Status = Literal["passed", "failed", "timeout", "error", "blocked"]


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    extra_processes: int = DEFAULT_EXTRA_PROCESSES
    use_namespaces: bool = True          # try `unshare -rn`; falls back silently where unavailable

    def __post_init__(self) -> None:
        if not 0 < self.timeout_s <= MAX_WALL_S:
            raise ValueError(f"timeout_s must be in (0, {MAX_WALL_S}], got {self.timeout_s}")
        if self.memory_mb < 64:
            raise ValueError(f"memory_mb must be >= 64, got {self.memory_mb}")


@dataclass
class ProcessOutcome:
    """What one sandboxed process did. `status` here is about the process, not the tests:
    'exited' (ran to the end), 'timeout', 'blocked', 'killed' (by a signal) or a verdict recorded by
    the bootstrap ('passed', 'failed', 'error')."""

    status: str
    reason: str = ""
    returncode: int | None = None
    exit_code: int | None = None         # the program's own exit status (script mode)
    stdout: str = ""
    stdout_truncated: bool = False
    stderr_tail: str = ""
    duration_s: float = 0.0
    records: list[dict[str, Any]] = field(default_factory=list)


@lru_cache(maxsize=1)
def namespaces_available() -> bool:
    """Whether `unshare -rn` (an unprivileged user + network namespace) works here."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        return subprocess.run([unshare, "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


_task_count_cache: tuple[float, int] = (0.0, 0)


def _user_task_count() -> int:
    """Threads + processes owned by our uid: RLIMIT_NPROC counts them all, so the limit must sit
    above what the user (e.g. a vLLM engine under the same uid) already runs."""
    global _task_count_cache
    now = time.monotonic()
    if now - _task_count_cache[0] < TASK_COUNT_TTL_S:
        return _task_count_cache[1]
    uid, count = os.getuid(), 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    count += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue      # the process ended while we looked
    _task_count_cache = (now, count)
    return count


def _scrubbed_env(sandbox_dir: str) -> dict[str, str]:
    return {"PATH": SANDBOX_PATH, "HOME": sandbox_dir, "TMPDIR": sandbox_dir, "LANG": "C.UTF-8",
            "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _read_only_roots() -> list[str]:
    """The interpreter's own files must stay readable for imports, even when they live under the
    project (a venv) or the user's home (pyenv)."""
    return sorted({sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix})


@lru_cache(maxsize=1)
def _site_packages() -> list[str]:
    import site
    return [p for p in site.getsitepackages() if os.path.isdir(p)]


def _denied_roots() -> list[str]:
    """The project tree, the user's home and the caller's working directory ('/' never: that would
    deny the whole system, and the sandbox directory is always allowed first)."""
    roots = {str(PROJECT_ROOT), os.path.expanduser("~"), os.getcwd()}
    return sorted(root for root in roots if root not in ("/", ""))


def _spec(payload: dict[str, Any], sandbox_dir: str, limits: SandboxLimits, wall_s: float) -> dict[str, Any]:
    nproc = _user_task_count() + limits.extra_processes
    return payload | {
        "sandbox_dir": sandbox_dir, "control_path": os.path.join(sandbox_dir, f".control-{secrets.token_hex(8)}"),
        "nonce": secrets.token_hex(16), "allow_read": _read_only_roots(), "deny_read": _denied_roots(),
        "per_test_timeout_s": limits.timeout_s, "site_packages": _site_packages(),
        "limits": {"cpu_s": int(wall_s) + CPU_SLACK_S, "memory_bytes": limits.memory_mb * 1024 ** 2,
                   "fsize_bytes": limits.max_output_bytes, "nofile": limits.max_open_files, "nproc": nproc},
    }


def _command(spec_path: str, limits: SandboxLimits) -> list[str]:
    # -S: no `site` processing. It saves ~35% of start-up (the .pth files, including the project's
    # editable-install finder) and keeps the toolkit itself unimportable; the bootstrap puts the
    # interpreter's site-packages on sys.path by hand so third-party imports (numpy) still work.
    python = [sys.executable, "-I", "-S", "-B", str(BOOT_SCRIPT), spec_path]
    if limits.use_namespaces and namespaces_available():
        return ["unshare", "-rn"] + python
    return python


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _read_head(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def _read_tail(path: str, limit: int) -> str:
    with open(path, "rb") as handle:
        handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
        return handle.read().decode("utf-8", "replace")


def _control_records(path: str, nonce: str) -> list[dict[str, Any]]:
    if not os.path.exists(path):
        return []
    text, _ = _read_head(path, MAX_CONTROL_BYTES)
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        # A result only counts with the nonce: the program cannot forge a pass by writing a record.
        if isinstance(record, dict) and (record.get("event") != "result" or record.get("nonce") == nonce):
            records.append(record)
    return records


def run_sandboxed(payload: dict[str, Any], *, stdin: str = "", limits: SandboxLimits = SandboxLimits(),
                  wall_timeout_s: float | None = None) -> ProcessOutcome:
    """Run one program (described by `payload`, see `_sandbox_boot.py`) in a fresh sandbox."""
    wall_s = min(wall_timeout_s or limits.timeout_s + STARTUP_SLACK_S, MAX_WALL_S)
    sandbox_dir = tempfile.mkdtemp(prefix="ssd-sandbox-")
    try:
        return _run_in_dir(payload, stdin, limits, wall_s, sandbox_dir)
    finally:
        shutil.rmtree(sandbox_dir, ignore_errors=True)


def _run_in_dir(payload: dict[str, Any], stdin: str, limits: SandboxLimits, wall_s: float,
                sandbox_dir: str) -> ProcessOutcome:
    spec = _spec(payload, sandbox_dir, limits, wall_s)
    paths = {name: os.path.join(sandbox_dir, f".{name}") for name in ("spec", "stdin", "stdout", "stderr")}
    with open(paths["spec"], "w", encoding="utf-8") as handle:
        json.dump(spec, handle)
    with open(paths["stdin"], "w", encoding="utf-8") as handle:
        handle.write(stdin)
    started = time.monotonic()
    timed_out = False
    with open(paths["stdin"], "rb") as fin, open(paths["stdout"], "wb") as fout, open(paths["stderr"], "wb") as ferr:
        proc = subprocess.Popen(_command(paths["spec"], limits), stdin=fin, stdout=fout, stderr=ferr,
                                cwd=sandbox_dir, env=_scrubbed_env(sandbox_dir), start_new_session=True,
                                close_fds=True)
        try:
            proc.wait(timeout=wall_s)
        except subprocess.TimeoutExpired:
            timed_out = True
        _kill_group(proc.pid)          # the whole group: stragglers die even after a normal exit
        proc.wait()
    duration = time.monotonic() - started
    return _outcome(proc.returncode, timed_out, duration, paths, spec, limits)


def _outcome(returncode: int, timed_out: bool, duration: float, paths: dict[str, str],
             spec: dict[str, Any], limits: SandboxLimits) -> ProcessOutcome:
    stdout, truncated = _read_head(paths["stdout"], limits.max_output_bytes)
    stderr_tail = _read_tail(paths["stderr"], MAX_STDERR_TAIL_BYTES)
    records = _control_records(spec["control_path"], spec["nonce"])
    out = ProcessOutcome(status="exited", returncode=returncode, stdout=stdout, stdout_truncated=truncated,
                         stderr_tail=stderr_tail, duration_s=duration, records=records)
    blocked = [r for r in records if r.get("event") == "blocked"]
    result = next((r for r in records if r.get("event") == "result"), None)
    if blocked:
        out.status, out.reason = "blocked", blocked[0].get("reason", "policy violation")
    elif timed_out:
        out.status, out.reason = "timeout", f"wall-clock timeout after {duration:.1f}s"
    elif result is not None:
        _apply_result(out, result)
    else:
        out.status, out.reason = "error", _abnormal_exit_reason(returncode, stderr_tail, truncated)
    return out


def _apply_result(out: ProcessOutcome, result: dict[str, Any]) -> None:
    if result.get("status") == "exited":
        out.exit_code = int(result.get("code") or 0)
        return
    out.status, out.reason = result.get("status", "error"), result.get("reason", "")


def _abnormal_exit_reason(returncode: int, stderr_tail: str, stdout_truncated: bool) -> str:
    if returncode is not None and returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.Signals._value2member_map_ else str(-returncode)
        if name == "SIGXFSZ" or stdout_truncated:
            return "output or file size limit exceeded"
        if name == "SIGXCPU":
            return "CPU time limit exceeded"
        return f"killed by {name}"
    last_line = stderr_tail.strip().splitlines()[-1:] or [""]
    return f"exited with status {returncode} before the tests finished {last_line[0][:200]}".strip()

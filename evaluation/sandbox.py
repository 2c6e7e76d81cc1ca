"""Run untrusted programs isolated by the kernel. Generated code NEVER runs in the calling process.

Isolation levels (recorded with every result, see `isolation_level`):

  * "bubblewrap" (the default where `bwrap` works): a warm pool of workers, one per slot, each a
    `python -I -S -B boot.py --serve` that bubblewrap started in new user, mount, PID, network, IPC,
    UTS and cgroup namespaces. The root is an empty read-only tmpfs with, read-only, only the
    interpreter's prefix, the system's shared libraries, the site-packages (at /opt/site-packages/N)
    and the boot script; the program's cwd, HOME and /tmp is a size-limited tmpfs of its own, its
    stdin/stdout/stderr live on a second one. bubblewrap loads a seccomp filter (ptrace, mount,
    keyctl, bpf, unshare, io_uring, ... refused) and dies with its parent. For each program the worker
    forks a child that sets its rlimits, adds a second seccomp filter (no new processes, exec, sockets,
    or signals to other pids), installs the audit hook and runs the program; afterwards the worker
    SIGKILLs everything else in its PID namespace and wipes both tmpfs mounts.
  * "namespaces" / "none" (fallback, with one loud warning; `require_isolation` makes it an error):
    one `python -I -S -B _sandbox_boot.py SPEC` per program in a fresh 0700 temp directory, under
    `unshare -rn` where that works ("namespaces": user + network namespace) or not at all ("none"),
    with the same rlimits, the seccomp filters and the audit hook, but the host's file system.

Either way: a scrubbed environment, rlimits (CPU, address space, file size which also caps stdout and
stderr, open files, no core), a wall-clock timeout enforced from outside the program, and the audit
hook (PEP 578) as a second layer. What is and is not isolated: docs/evaluation.md.
"""

from __future__ import annotations

import atexit
import json
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from evaluation import _sandbox_boot as boot

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

BWRAP_ENV = "SSD_SANDBOX_BWRAP"         # path of the bwrap binary; a missing file forces the fallback
BUBBLEWRAP, NAMESPACES, NONE = "bubblewrap", "namespaces", "none"
SANDBOX_BOOT = "/opt/ssd-sandbox/boot.py"
SANDBOX_SITE_PACKAGES = "/opt/site-packages"
SANDBOX_UID = 65534                     # "nobody" inside the user namespace: no capabilities there
DEFAULT_TMPFS_MB = 64                   # the program's cwd and /tmp
IO_SLACK_BYTES = 64 * 1024 ** 2         # the I/O tmpfs holds stdin, stdout and stderr
WORKER_START_TIMEOUT_S = 30.0
WORKER_REPLY_SLACK_S = 5.0              # the worker enforces the wall clock; this is for a stuck worker
SYSTEM_LIBRARY_DIRS = ("/usr/lib", "/usr/lib64", "/usr/lib32", "/usr/local/lib")
LIBRARY_LINKS = ("/lib", "/lib64", "/lib32")


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = DEFAULT_TIMEOUT_S
    memory_mb: int = DEFAULT_MEMORY_MB
    max_output_bytes: int = DEFAULT_MAX_OUTPUT_BYTES
    max_open_files: int = DEFAULT_MAX_OPEN_FILES
    extra_processes: int = DEFAULT_EXTRA_PROCESSES
    use_namespaces: bool = True          # fallback only: try `unshare -rn`
    require_isolation: bool = False      # refuse to run without bubblewrap instead of falling back

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
    isolation: str = ""


class IsolationUnavailable(ValueError):
    """`require_isolation` was set and bubblewrap does not work here."""


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


def bwrap_path() -> str | None:
    """The bwrap binary: $SSD_SANDBOX_BWRAP when set (tests point it at a missing file), else PATH."""
    configured = os.environ.get(BWRAP_ENV)
    if configured is not None:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("bwrap")


@lru_cache(maxsize=4)
def _bwrap_probe(bwrap: str) -> str:
    """'' when a worker's sandbox can start here, else why not (e.g. user namespaces are disabled)."""
    command = _bwrap_command(bwrap, DEFAULT_TMPFS_MB * 1024 ** 2, IO_SLACK_BYTES, seccomp_fd=None)
    command = command[:-2] + ["-c", "pass"]        # the interpreter starts; no worker
    try:
        probe = subprocess.run(command, capture_output=True, text=True, timeout=30, env=_scrubbed_env("/tmp"))
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    return "" if probe.returncode == 0 else (probe.stderr.strip() or f"exit status {probe.returncode}")


def isolation_level() -> str:
    """'bubblewrap' where bwrap works, else 'namespaces' (unshare -rn) or 'none'."""
    bwrap = bwrap_path()
    if bwrap is not None and not _bwrap_probe(bwrap):
        return BUBBLEWRAP
    return NAMESPACES if namespaces_available() else NONE


def _fallback_reason() -> str:
    bwrap = bwrap_path()
    if bwrap is None:
        return ("bwrap not found (install bubblewrap: `apt-get install bubblewrap`, or set "
                f"{BWRAP_ENV} to its path)")
    return f"bwrap ({bwrap}) cannot start a sandbox here: {_bwrap_probe(bwrap)[:300]}"


_warned_fallback = False


def ensure_isolation(limits: SandboxLimits) -> str:
    """The isolation level programs will run under. Without bubblewrap: IsolationUnavailable when
    `limits.require_isolation`, else one loud warning per process."""
    global _warned_fallback
    level = isolation_level()
    if level == BUBBLEWRAP:
        return level
    if limits.require_isolation:
        raise IsolationUnavailable(f"sandbox isolation is required but unavailable: {_fallback_reason()}")
    if not _warned_fallback:
        _warned_fallback = True
        warnings.warn(f"SANDBOX FALLBACK: {_fallback_reason()}. Model-written code now runs with isolation "
                      f"level '{level}': rlimits, seccomp and an in-process audit hook, on the host's file "
                      "system. Use --require-isolation true to refuse this.", RuntimeWarning, stacklevel=2)
    return level


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
    # RLIMIT_FSIZE one byte above the output cap: a program that reached the cap reads as truncated.
    nproc = _user_task_count() + limits.extra_processes
    return payload | {
        "sandbox_dir": sandbox_dir, "control_path": os.path.join(sandbox_dir, f".control-{secrets.token_hex(8)}"),
        "nonce": secrets.token_hex(16), "allow_read": _read_only_roots(), "deny_read": _denied_roots(),
        "per_test_timeout_s": limits.timeout_s, "site_packages": _site_packages(),
        "limits": {"cpu_s": int(wall_s) + CPU_SLACK_S, "memory_bytes": limits.memory_mb * 1024 ** 2,
                   "fsize_bytes": limits.max_output_bytes + 1, "nofile": limits.max_open_files, "nproc": nproc},
    }


def _command(spec_path: str, limits: SandboxLimits) -> list[str]:
    # -S: no `site` processing. It saves ~35% of start-up (the .pth files, including the project's
    # editable-install finder) and keeps the toolkit itself unimportable; the bootstrap puts the
    # interpreter's site-packages on sys.path by hand so third-party imports (numpy) still work.
    python = [sys.executable, "-I", "-S", "-B", str(BOOT_SCRIPT), spec_path]
    if limits.use_namespaces and namespaces_available():
        return ["unshare", "-rn"] + python
    return python


# --- bubblewrap: the warm worker pool --------------------------------------------------------------

def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


@lru_cache(maxsize=1)
def _runtime_binds() -> tuple[tuple[tuple[str, str], ...], tuple[str, ...]]:
    """(host path, sandbox path) read-only binds for the interpreter and its libraries, and the
    site-packages directories as the sandbox sees them. A venv's site-packages live in the project
    tree, so they are mounted at a neutral path and the tree itself stays out of sight."""
    roots = sorted({os.path.realpath(p) for p in (sys.base_prefix, sys.base_exec_prefix)})
    binds = [(root, root) for root in roots]
    python = os.path.realpath(sys.executable)
    if not any(_under(python, root) for root in roots):
        binds.append((python, python))
    for directory in SYSTEM_LIBRARY_DIRS:
        if os.path.isdir(directory) and not os.path.islink(directory) and not any(_under(directory, r) for r in roots):
            binds.append((directory, directory))
    site_paths = []
    for index, path in enumerate(_site_packages()):
        real = os.path.realpath(path)
        if any(_under(real, root) for root in roots):
            site_paths.append(real)
        else:
            target = f"{SANDBOX_SITE_PACKAGES}/{index}"
            binds.append((real, target))
            site_paths.append(target)
    return tuple(binds), tuple(site_paths)


@lru_cache(maxsize=4)
def _bwrap_options(bwrap: str) -> frozenset[str]:
    """The options this bwrap knows. `--disable-userns` (0.8), `--size` and `--perms` are newer than
    some distributions' bwrap (Ubuntu 22.04 has 0.6); without them the sandbox still starts, with
    nested user namespaces left to seccomp (which refuses `unshare` and new processes) and tmpfs
    mounts bounded by the kernel's default size (half the RAM) and RLIMIT_FSIZE per file."""
    try:
        text = subprocess.run([bwrap, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return frozenset()
    return frozenset(word for word in text.split() if word.startswith("--"))


def _tmpfs(options: frozenset[str], size: int, target: str) -> list[str]:
    sized = ["--size", str(size)] if "--size" in options else []
    private = ["--perms", "0700"] if "--perms" in options else []
    return sized + private + ["--tmpfs", target]


def _bwrap_command(bwrap: str, tmpfs_bytes: int, io_bytes: int, seccomp_fd: int | None) -> list[str]:
    binds, _ = _runtime_binds()
    options = _bwrap_options(bwrap)
    command = [bwrap, "--unshare-user", "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts",
               "--unshare-cgroup-try", "--die-with-parent", "--new-session",
               "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--hostname", "sandbox"]
    if "--disable-userns" in options:
        command.append("--disable-userns")
    for source, target in binds:
        command += ["--ro-bind", source, target]
    for link in LIBRARY_LINKS:
        if os.path.islink(link):
            command += ["--symlink", os.readlink(link), link]
        elif os.path.isdir(link):
            command += ["--ro-bind", link, link]
    command += ["--ro-bind", str(BOOT_SCRIPT), SANDBOX_BOOT, "--proc", "/proc", "--dev", "/dev",
                *_tmpfs(options, tmpfs_bytes, boot.WORK_DIR), *_tmpfs(options, io_bytes, boot.IO_DIR),
                "--remount-ro", "/", "--chdir", boot.WORK_DIR]
    if seccomp_fd is not None:
        command += ["--seccomp", str(seccomp_fd)]
    return command + [os.path.realpath(sys.executable), "-I", "-S", "-B", SANDBOX_BOOT, "--serve"]


def _seccomp_fd() -> int | None:
    program = boot.seccomp_filter(boot.SANDBOX_DENIED)
    if program is None:
        return None
    fd = os.memfd_create("ssd-sandbox-seccomp", 0)     # not CLOEXEC: bwrap reads it
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


# bwrap --die-with-parent uses PR_SET_PDEATHSIG, which fires when the *thread* that started it ends:
# workers are started from one long-lived thread, never from a short-lived pool thread. One per
# process: a forked evaluator gets its own thread (threads do not survive fork) and its own workers.
_spawners: dict[int, ThreadPoolExecutor] = {}
_pools: dict[tuple[int, int, int], _Pool] = {}
_pools_lock = threading.Lock()


def _spawner() -> ThreadPoolExecutor:
    pid = os.getpid()
    with _pools_lock:
        if pid not in _spawners:
            _spawners[pid] = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ssd-sandbox-spawner")
        return _spawners[pid]


def _spawn(command: list[str], seccomp_fd: int | None) -> subprocess.Popen:
    try:
        return subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env=_scrubbed_env(boot.WORK_DIR), start_new_session=True,
                                pass_fds=() if seccomp_fd is None else (seccomp_fd,))
    finally:
        if seccomp_fd is not None:
            os.close(seccomp_fd)


class WorkerDied(RuntimeError):
    pass


_GONE = "the sandbox worker was gone before the program was sent"
_DIED = "the sandbox worker died"


class _Worker:
    """One bubblewrap sandbox with a warm interpreter that forks a child per program."""

    def __init__(self, tmpfs_bytes: int, io_bytes: int):
        bwrap = bwrap_path()
        if bwrap is None:
            raise WorkerDied(_fallback_reason())
        command = _bwrap_command(bwrap, tmpfs_bytes, io_bytes, seccomp_fd := _seccomp_fd())
        self.proc = _spawner().submit(_spawn, command, seccomp_fd).result()
        self.chunks: list[bytes] = []
        self.programs = 0
        ready = self._read(time.monotonic() + WORKER_START_TIMEOUT_S)
        if not isinstance(ready, dict) or ready.get("event") != "ready":
            self.close()
            raise WorkerDied(f"the sandbox worker did not start: {ready!r}")

    def _read(self, deadline: float) -> dict[str, Any] | str:
        """The next reply, or a string saying why there is none."""
        fd = self.proc.stdout.fileno()
        while not self.chunks or b"\n" not in self.chunks[-1]:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                return "the sandbox worker stopped answering"
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                return _DIED
            self.chunks.append(chunk)
        data = b"".join(self.chunks)
        line, rest = data.split(b"\n", 1)
        self.chunks = [rest] if rest else []
        try:
            return json.loads(line)
        except ValueError:
            return "the sandbox worker sent garbage"

    def run(self, request: dict[str, Any], wall_s: float) -> dict[str, Any] | str:
        try:
            self.proc.stdin.write(json.dumps(request).encode() + b"\n")
            self.proc.stdin.flush()
        except OSError:
            return _GONE
        self.programs += 1
        return self._read(time.monotonic() + wall_s + WORKER_REPLY_SLACK_S)

    def close(self) -> None:
        _kill_group(self.proc.pid)
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        self.proc.wait()


class _Pool:
    """Idle workers of one tmpfs size. A worker that misbehaved is closed, never reused."""

    def __init__(self, tmpfs_bytes: int, io_bytes: int):
        self.sizes = (tmpfs_bytes, io_bytes)
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()

    def acquire(self) -> _Worker:
        with self.lock:
            if self.idle:
                return self.idle.pop()
        return _Worker(*self.sizes)

    def release(self, worker: _Worker, healthy: bool) -> None:
        if not healthy:
            worker.close()
            return
        with self.lock:
            self.idle.append(worker)

    def close(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.close()


def _pool_for(limits: SandboxLimits) -> _Pool:
    # Keyed by pid too: a forked evaluator must not talk to its parent's workers over shared pipes.
    sizes = (DEFAULT_TMPFS_MB * 1024 ** 2, 2 * limits.max_output_bytes + IO_SLACK_BYTES)
    with _pools_lock:
        if (os.getpid(), *sizes) not in _pools:
            _pools[(os.getpid(), *sizes)] = _Pool(*sizes)
        return _pools[(os.getpid(), *sizes)]


@atexit.register
def close_workers() -> None:
    """Stop this process's idle workers (they would die with it anyway)."""
    with _pools_lock:
        pools = [pool for key, pool in _pools.items() if key[0] == os.getpid()]
    for pool in pools:
        pool.close()


def _run_in_worker(payload: dict[str, Any], stdin: str, limits: SandboxLimits, wall_s: float) -> ProcessOutcome:
    binds, site_paths = _runtime_binds()
    spec = _spec(payload, boot.WORK_DIR, limits, wall_s) | {
        "control_path": f"{boot.IO_DIR}/control", "site_packages": list(site_paths),
        "allow_read": sorted({target for _, target in binds})}
    request = {"spec": spec, "stdin": stdin, "wall_s": wall_s, "max_output_bytes": limits.max_output_bytes}
    outcome = _reply_outcome(_exchange(_pool_for(limits), request, wall_s), spec["nonce"])
    outcome.isolation = BUBBLEWRAP
    return outcome


def _exchange(pool: _Pool, request: dict[str, Any], wall_s: float) -> dict[str, Any] | str:
    worker = pool.acquire()
    reply = worker.run(request, wall_s)
    if reply in (_GONE, _DIED):
        # An idle worker may have died unseen (the pipe takes a moment to close), so one fresh worker
        # gets one more try. A program that kills its worker (none can under seccomp) would run twice.
        worker.close()
        worker = pool.acquire()
        reply = worker.run(request, wall_s)
    pool.release(worker, healthy=isinstance(reply, dict) and reply.get("clean") is True)
    return reply


def _reply_outcome(reply: dict[str, Any] | str, nonce: str) -> ProcessOutcome:
    if isinstance(reply, str):
        return ProcessOutcome(status="error", reason=f"{reply}; it was replaced")
    if "error" in reply:
        return ProcessOutcome(status="error", reason=f"sandbox: {reply['error']}")
    return _outcome(reply["returncode"], reply["timed_out"], reply["duration_s"], reply["stdout"],
                    reply["stdout_truncated"], reply["stderr_tail"], _parse_records(reply["control"], nonce))


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


def _parse_records(text: str, nonce: str) -> list[dict[str, Any]]:
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
    """Run one program (described by `payload`, see `_sandbox_boot.py`) in a fresh sandbox: a child
    of a warm bubblewrap worker, or (fallback) a subprocess of its own."""
    wall_s = min(wall_timeout_s or limits.timeout_s + STARTUP_SLACK_S, MAX_WALL_S)
    level = ensure_isolation(limits)
    if level == BUBBLEWRAP:
        return _run_in_worker(payload, stdin, limits, wall_s)
    sandbox_dir = tempfile.mkdtemp(prefix="ssd-sandbox-")
    try:
        outcome = _run_in_dir(payload, stdin, limits, wall_s, sandbox_dir)
    finally:
        shutil.rmtree(sandbox_dir, ignore_errors=True)
    outcome.isolation = level
    return outcome


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
    stdout, truncated = _read_head(paths["stdout"], limits.max_output_bytes)
    control = _read_head(spec["control_path"], MAX_CONTROL_BYTES)[0] if os.path.exists(spec["control_path"]) else ""
    return _outcome(proc.returncode, timed_out, duration, stdout, truncated,
                    _read_tail(paths["stderr"], MAX_STDERR_TAIL_BYTES), _parse_records(control, spec["nonce"]))


def _outcome(returncode: int, timed_out: bool, duration: float, stdout: str, truncated: bool,
             stderr_tail: str, records: list[dict[str, Any]]) -> ProcessOutcome:
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
        known = -returncode in signal.Signals._value2member_map_
        name = signal.Signals(-returncode).name if known else str(-returncode)
        if name == "SIGXFSZ" or stdout_truncated:
            return "output or file size limit exceeded"
        if name == "SIGXCPU":
            return "CPU time limit exceeded"
        return f"killed by {name}"
    last_line = stderr_tail.strip().splitlines()[-1:] or [""]
    return f"exited with status {returncode} before the tests finished {last_line[0][:200]}".strip()

"""The issue's escapes against the real bubblewrap sandbox, most of them after the program has first
switched the audit hook off through `gc` (so that what stops them is the kernel: namespaces, the
read-only mounts, seccomp, rlimits). Each must come back as a failed sample with a reason, leave
nothing on the host (no file, no process, no connection), and the evaluator must carry on.

As root (CI), bubblewrap is installed by scripts/setup.sh, so its absence fails here instead of skipping.
"""

from __future__ import annotations

import ast
import os
import secrets
import socket
import textwrap
from pathlib import Path

import pytest

from evaluation import _sandbox_boot, sandbox
from evaluation.benchmarks.base import Problem, TestCase
from evaluation.execution import check_answer
from evaluation.sandbox import BUBBLEWRAP, PROJECT_ROOT, SandboxLimits, isolation_level, run_sandboxed

LIMITS = SandboxLimits(timeout_s=2.0, memory_mb=512, max_output_bytes=1024 * 1024)
# The five-line attack: find the policy object among the GC's objects and make its hook a no-op.
BYPASS = textwrap.dedent("""
    import gc
    for _obj in gc.get_objects():
        if type(_obj).__name__ == "Policy":
            _obj.busy = True
""")
EXPECTED = "6\n"


@pytest.fixture(scope="module", autouse=True)
def bubblewrap():
    if isolation_level() != BUBBLEWRAP:
        message = f"bubblewrap does not work here: {sandbox._fallback_reason()}"
        if os.geteuid() == 0:
            pytest.fail(message + " (scripts/setup.sh installs it when run as root)")
        pytest.skip(message)


def _problem() -> Problem:
    return Problem(id="escape", messages=[], test_type="stdin", tests=[TestCase("3\n", EXPECTED)])


def _check(code: str, *, bypass: bool = True):
    """One answer through the evaluator's own path; returns the CheckResult."""
    program = (BYPASS if bypass else "") + textwrap.dedent(code)
    return check_answer(_problem(), f"```python\n{program}\n```", LIMITS)


def _run(code: str, *, bypass: bool = True):
    """The same, one level down, to see the program's stdout."""
    program = (BYPASS if bypass else "") + textwrap.dedent(code)
    return run_sandboxed({"mode": "script", "solution": program, "header": ""}, stdin="3\n", limits=LIMITS)


def _descendants() -> dict[int, tuple[int, str]]:
    """pid -> (ppid, command line) for every process below this test process."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        table[int(entry)] = (int(stat.rsplit(")", 1)[1].split()[1]), cmdline)
    below, frontier = {}, {os.getpid()}
    while frontier:
        children = {pid for pid, (ppid, _) in table.items() if ppid in frontier and pid not in below}
        below.update({pid: table[pid] for pid in children})
        frontier = children
    return below


def _is_bwrap(cmdline: str) -> bool:
    return cmdline.startswith(("bwrap ", f"{sandbox.bwrap_path()} "))


def _worker_interpreters() -> set[int]:
    """The pool's `--serve` interpreters (bubblewrap's own command lines mention `--serve` too)."""
    return {pid for pid, (_, cmdline) in _descendants().items() if "--serve" in cmdline and not _is_bwrap(cmdline)}


def _stray_processes() -> list[str]:
    """Sandbox processes below us that are not a pool worker (bwrap, its init, and the `--serve`
    interpreter whose parent is bwrap's init). A program's leftover would be a fork of the worker, or
    anything else inside a bwrap tree, or a one-shot `_sandbox_boot.py` interpreter. Other processes
    of the test session (servers other tests started) are not ours to judge."""
    procs = _descendants()

    def in_sandbox(pid: int) -> bool:
        while pid in procs:
            pid = procs[pid][0]
            if _is_bwrap(procs.get(pid, (0, ""))[1]):
                return True
        return False

    strays = []
    for pid, (ppid, cmdline) in procs.items():
        if _is_bwrap(cmdline) or ("--serve" in cmdline and _is_bwrap(procs.get(ppid, (0, ""))[1])):
            continue
        if in_sandbox(pid) or "_sandbox_boot" in cmdline:
            strays.append(f"{pid}: {cmdline}")
    return strays


def _assert_contained(result, *, reason: str | None = None) -> None:
    assert not result.passed and result.status != "passed" and result.reason, result
    if reason is not None:
        assert reason in result.reason, result
    assert _stray_processes() == []
    assert _check("print(6)", bypass=False).passed          # the evaluator carries on


def test_the_bypass_really_disables_the_audit_hook():
    # Without the bypass `os.listdir('/')` of a path outside the sandbox is fine anyway, so test a
    # call the hook always refuses: with the bypass it reaches the kernel, which refuses it instead.
    assert _check("import os\nos.fork()\n", bypass=False).status == "blocked"
    outcome = _run("import os\ntry:\n    os.fork()\nexcept OSError as exc:\n    print('kernel:', exc)\n")
    assert outcome.status == "exited" and "kernel: [Errno 1] Operation not permitted" in outcome.stdout


def test_writes_to_host_tmp_and_home_and_reading_the_project_tree():
    token = secrets.token_hex(8)
    host_tmp, host_home = Path("/tmp") / f"ssd-escape-{token}", Path.home() / f"ssd-escape-{token}"
    code = f"""
        import os
        for path in ({str(host_tmp)!r}, {str(host_home)!r}):
            try:
                open(path, "w").write("escaped")
                print("wrote", path)
            except OSError as exc:
                print("refused", path, exc)
        print(open({str(PROJECT_ROOT / 'pyproject.toml')!r}).read())
    """
    outcome = _run(code)
    assert "refused " + str(host_home) in outcome.stdout             # /root is read-only
    assert outcome.status == "error" and "FileNotFoundError" in outcome.reason   # the project is not there
    assert "ssd-toolkit" not in outcome.stdout
    result = _check(code)
    _assert_contained(result, reason="FileNotFoundError")
    assert not host_tmp.exists() and not host_home.exists()


def test_ctypes_straight_into_libc():
    listener = _listener()
    port = listener.getsockname()[1]
    code = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        fd = libc.open({str(PROJECT_ROOT / 'pyproject.toml').encode()!r}, 0)
        print("open", fd, ctypes.get_errno())
        sock = libc.socket(2, 1, 0)
        print("socket", sock, ctypes.get_errno())
        address = (2).to_bytes(2, "little") + ({port}).to_bytes(2, "big") + bytes([127, 0, 0, 1]) + bytes(8)
        print("connect", libc.connect(sock, address, 16), ctypes.get_errno())
        print("fork", libc.fork(), ctypes.get_errno())
        print("kill", libc.kill(-1, 9), ctypes.get_errno())
    """
    assert _check(code, bypass=False).status == "blocked"           # the hook, when it is on
    lines = dict(line.split(" ", 1) for line in _run(code).stdout.splitlines())
    assert lines == {"open": "-1 2", "socket": "-1 1", "connect": "-1 9", "fork": "-1 1", "kill": "-1 1"}
    _assert_contained(_check(code), reason="wrong answer")
    _assert_no_connection(listener)


@pytest.mark.parametrize("bypass", [False, True])
def test_fork_bomb(bypass):
    code = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    result = _check(code, bypass=bypass)
    _assert_contained(result, reason="fork" if not bypass else "timed out")
    assert result.status == ("blocked" if not bypass else "timeout")


def test_memory_hog():
    result = _check("x = bytearray(4 * 1024 ** 3)\nprint(6)\n")
    _assert_contained(result, reason="MemoryError")


def test_four_gib_of_output():
    code = """
        import os
        chunk = b"x" * (1 << 20)
        for _ in range(4096):
            try:
                os.write(1, chunk)
            except OSError:
                pass
    """
    result = _check(code)
    _assert_contained(result, reason="output")
    assert result.duration_s < LIMITS.timeout_s + sandbox.STARTUP_SLACK_S + 1


@pytest.mark.parametrize("bypass", [False, True])
def test_killing_the_parent(bypass):
    result = _check("import os\nos.kill(os.getppid(), 9)\nos.kill(-1, 9)\nprint(6)\n", bypass=bypass)
    _assert_contained(result, reason="signalling" if not bypass else "PermissionError")
    os.kill(os.getpid(), 0)     # we are still here


def _listener() -> socket.socket:
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    return listener


def _assert_no_connection(listener: socket.socket) -> None:
    try:
        with pytest.raises(BlockingIOError):
            listener.accept()
    finally:
        listener.close()


@pytest.mark.parametrize("bypass", [False, True])
def test_connection_to_a_local_port(bypass):
    listener = _listener()
    code = f"""
        import socket
        socket.create_connection(("127.0.0.1", {listener.getsockname()[1]}), timeout=1).sendall(b"hello")
        print(6)
    """
    result = _check(code, bypass=bypass)
    _assert_contained(result, reason="network" if not bypass else "PermissionError")
    _assert_no_connection(listener)


def test_reading_a_secret_from_the_evaluators_environment(monkeypatch):
    secret = secrets.token_hex(16)
    monkeypatch.setenv("SSD_TEST_SECRET", secret)
    sandbox.close_workers()     # the next worker starts while the secret is in our environment
    code = """
        import os
        print(dict(os.environ))
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    print(pid, open(f"/proc/{pid}/environ", "rb").read())
                except OSError as exc:
                    print(pid, exc)
    """
    outcome = _run(code)
    assert outcome.status == "exited" and "SSD_TEST_SECRET" not in outcome.stdout
    assert secret not in outcome.stdout + outcome.stderr_tail
    result = _check(code)
    _assert_contained(result, reason="wrong answer")
    assert secret not in result.reason


def test_a_sleeping_child_left_behind():
    code = """
        import os, threading, time
        try:
            if os.fork() == 0:
                time.sleep(60)
        except OSError as exc:
            print("fork:", exc)
        threading.Thread(target=time.sleep, args=(60,), daemon=True).start()
        print(6)
    """
    outcome = _run(code)
    assert "fork: [Errno 1] Operation not permitted" in outcome.stdout
    result = _check(code)
    _assert_contained(result, reason="wrong answer")


def test_a_symlink_in_the_working_directory_pointing_outside():
    code = f"""
        import os
        os.symlink({str(PROJECT_ROOT)!r}, "project")
        os.symlink("/", "root")
        print(os.listdir("root"))
        print(open("project/pyproject.toml").read())
    """
    outcome = _run(code)
    assert "FileNotFoundError" in outcome.reason and "ssd-toolkit" not in outcome.stdout
    assert _check(code, bypass=False).status == "blocked"           # the hook refuses the protected read
    _assert_contained(_check(code), reason="FileNotFoundError")
    leftovers = _run("import os\nprint(sorted(os.listdir('.')), sorted(os.listdir('/tmp')))\n", bypass=False)
    assert leftovers.stdout.strip() == "[] []"                       # the next program's directory is clean


def test_what_the_program_sees():
    code = """
        import os
        print(sorted(os.listdir("/")))
        print(os.getuid(), sorted(p for p in os.listdir("/proc") if p.isdigit()))
        print(os.path.exists("/etc/shadow"), os.path.exists("/home"), os.path.exists("/root") and os.listdir("/root"))
        print(open("/proc/net/route").read().count("\\n"))
        for path in ("/usr/lib/escape", "/opt/escape"):
            try:
                open(path, "w")
            except OSError as exc:
                print(exc.errno)
        written = 0
        try:
            for index in range(200):
                with open(f"/tmp/fill-{index}", "wb") as handle:
                    handle.write(b"x" * (1 << 20))
                written += 1
        except OSError as exc:
            print("tmpfs full after", written, "MiB:", exc.errno)
    """
    lines = _run(code).stdout.splitlines()
    visible = {"usr", "lib", "lib64", "lib32", "opt", "root", "proc", "dev", "tmp", "io"}
    assert set(ast.literal_eval(lines[0])) <= visible
    uid, pids = lines[1].split(" ", 1)
    assert uid == "65534" and len(ast.literal_eval(pids)) <= 3      # bubblewrap's init, the worker, the program
    # /root holds at most the way down to the interpreter (a pyenv install), nothing of the user's home.
    under_root = sorted({Path(target).relative_to("/root").parts[0] for _, target in sandbox._runtime_binds()[0]
                         if target.startswith("/root/")})
    assert lines[2] == f"False False {under_root or False}"
    assert lines[3] == "1"                                  # the header only: no route at all
    assert lines[4:6] == ["30", "30"]                       # EROFS: the runtime is read-only
    written = int(lines[6].split()[3])
    assert lines[6].endswith(": 28") and written <= sandbox.DEFAULT_TMPFS_MB   # ENOSPC at the tmpfs size


def test_seccomp_refuses_kernel_interfaces():
    keyctl = _sandbox_boot._NR[os.uname().machine]["keyctl"]     # libc has no keyctl(): the raw call
    code = f"""
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        for name, args in (("ptrace", (16, 1, 0, 0)), ("unshare", (0x20000,)), ("syscall", ({keyctl}, 0, 0)),
                           ("mount", (b"none", b"/tmp", b"tmpfs", 0, None)), ("chroot", (b"/tmp",))):
            print(name, getattr(libc, name)(*args), ctypes.get_errno())
    """
    assert _run(code).stdout.split("\n")[:-1] == [f"{n} -1 1" for n in ("ptrace", "unshare", "syscall", "mount",
                                                                          "chroot")]


def test_cost_per_program_does_not_grow():
    # The same worker runs every program: its memory must not grow with the number of programs.
    def worker_rss_kib() -> int:
        return sum(int(line.split()[1]) for pid in _worker_interpreters()
                   for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("VmRSS"))
    sandbox.close_workers()
    for _ in range(20):
        _run("print(6)", bypass=False)
    early = worker_rss_kib()
    for _ in range(300):
        _run("x = [0] * 100000\nprint(6)", bypass=False)
    assert worker_rss_kib() <= early + 4096


def test_a_forked_evaluator_gets_its_own_workers():
    assert _check("print(6)", bypass=False).passed          # the parent has a warm worker
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            ok = _check("print(6)", bypass=False).passed and _check("print(7)", bypass=False).status == "failed"
            os.write(write_end, b"1" if ok else b"0")
        finally:
            os._exit(0)
    os.close(write_end)
    assert os.read(read_end, 1) == b"1"
    os.waitpid(pid, 0)
    assert _check("print(6)", bypass=False).passed          # and the parent's pool still works


def test_a_directory_the_worker_cannot_empty_gets_the_worker_replaced():
    sandbox.close_workers()
    assert _check("print(6)", bypass=False).passed
    (only_worker,) = _worker_interpreters()
    code = "import os\nos.makedirs('locked/inner')\nopen('locked/inner/f', 'w').write('x')\nos.chmod('locked', 0)\n"
    _assert_contained(_check(code, bypass=False), reason="wrong answer")
    assert only_worker not in _worker_interpreters()                      # replaced, and its tmpfs with it
    leftovers = _run("import os\nprint(sorted(os.listdir('.')))\n", bypass=False)
    assert leftovers.stdout.strip() == "[]"


def test_a_worker_that_died_while_idle_is_replaced():
    sandbox.close_workers()
    assert _check("print(6)", bypass=False).passed
    (only_worker,) = _worker_interpreters()
    os.kill(only_worker, 9)
    assert _check("print(6)", bypass=False).passed
    assert _stray_processes() == []


def test_an_older_bwrap_without_size_perms_or_disable_userns(tmp_path, monkeypatch):
    # Ubuntu 22.04 ships bwrap 0.6: the sandbox must still start there (a wrapper refuses the newer options).
    real = sandbox.bwrap_path()
    old = tmp_path / "bwrap"
    old.write_text(f"""#!/bin/sh
if [ "$1" = "--help" ]; then {real} --help | grep -v -e --size -e --perms -e --disable-userns; exit 0; fi
for arg in "$@"; do
  case "$arg" in --size|--perms|--disable-userns) echo "bwrap: Unknown option $arg" >&2; exit 1;; esac
done
exec {real} "$@"
""")
    old.chmod(0o755)
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(old))
    sandbox.close_workers()
    try:
        assert isolation_level() == BUBBLEWRAP
        assert _check("print(6)", bypass=False).passed
        outcome = _run("import os\ntry:\n    os.fork()\nexcept OSError as exc:\n    print(exc.errno)\n")
        assert outcome.stdout.strip() == "1"                 # seccomp still refuses new processes
    finally:
        sandbox.close_workers()                              # the next test gets the real bwrap's workers

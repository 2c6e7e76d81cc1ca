"""Runs INSIDE the sandbox, never as part of the toolkit (the toolkit imports it only to build the
seccomp filter it hands to bubblewrap). Two modes:

  * `python -I -S -B boot.py --serve`: the warm worker that bubblewrap starts once per slot (see
    `serve`). It forks one child per program;
  * `python -I -S -B _sandbox_boot.py SPEC`: one program in its own interpreter (the fallback without
    bubblewrap).

Either way the process that runs the program first applies the limits a process can only set on
itself (rlimits, a seccomp filter refusing new processes, exec, sockets and signals to others), then
installs an audit hook that refuses the same at the Python level plus file access outside its
directory, and only then runs the untrusted code.

Its verdicts go to a control file opened before the hook is installed; stdout and stderr belong to
the program. The first policy violation ends the process at once with EXIT_BLOCKED, so a program
cannot swallow the refusal with `except BaseException` and carry on.
"""

import json
import os
import resource
import signal
import struct
import sys
import time

EXIT_BLOCKED = 87
MAX_REASON_CHARS = 300

_ALWAYS_BLOCKED = {
    "os.fork": "process creation (fork)", "os.forkpty": "process creation (forkpty)",
    "os.system": "process creation (os.system)", "os.exec": "process creation (exec)",
    "os.posix_spawn": "process creation (posix_spawn)", "os.spawn": "process creation (spawn)",
    "subprocess.Popen": "process creation (subprocess)",
    "socket.__new__": "network access (socket)", "socket.connect": "network access (connect)",
    "socket.bind": "network access (bind)", "socket.getaddrinfo": "network access (DNS)",
    "socket.gethostbyname": "network access (DNS)", "socket.sendto": "network access (sendto)",
    "ctypes.dlsym": "native code (ctypes)", "ctypes.dlsym/handle": "native code (ctypes)",
    "ctypes.cdata": "native code (ctypes)",
}
_WRITE_EVENTS = {"os.remove": (0,), "os.rename": (0, 1), "os.rmdir": (0,), "os.mkdir": (0,),
                 "os.chmod": (0,), "os.chown": (0,), "os.link": (0, 1), "os.symlink": (1,),
                 "os.truncate": (0,), "os.utime": (0,), "shutil.rmtree": (0,), "os.chflags": (0,),
                 "os.setxattr": (0,), "os.removexattr": (0,)}
_LIST_EVENTS = {"os.listdir", "os.scandir"}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_WRITABLE_DEVICES = ("/dev/null",)


class TestTimeout(BaseException):
    """BaseException so that a solution's `except Exception` cannot swallow it."""


class Policy:
    def __init__(self, spec, control_fd):
        self.sandbox_dir = os.path.realpath(spec["sandbox_dir"])
        self.allow_read = [os.path.realpath(p) for p in spec["allow_read"]]
        self.deny_read = [os.path.realpath(p) for p in spec["deny_read"]]
        self.control_fd = control_fd
        self.own_pid = os.getpid()
        self.busy = False   # realpath inside the hook must not re-enter it

    def record(self, **fields):
        os.write(self.control_fd, (json.dumps(fields) + "\n").encode())

    def violation(self, reason):
        try:
            self.record(event="blocked", reason=reason[:MAX_REASON_CHARS])
        finally:
            os._exit(EXIT_BLOCKED)

    def _resolve(self, path):
        if isinstance(path, int):
            return None                                   # an already-open descriptor
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        return os.path.realpath(os.fspath(path))

    @staticmethod
    def _under(path, roots):
        return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)

    def check_write(self, event, path):
        resolved = self._resolve(path)
        if resolved is None or resolved in _WRITABLE_DEVICES or self._under(resolved, [self.sandbox_dir]):
            return
        self.violation(f"{event}: write outside the sandbox directory: {resolved}")

    def check_read(self, event, path):
        # A protected path stays protected even inside the sandbox directory: a checkout under /tmp
        # is under the bubblewrap sandbox's own /tmp. Only the runtime's allowed paths pass.
        resolved = self._resolve(path)
        if resolved is None or self._under(resolved, self.allow_read):
            return
        if self._under(resolved, self.deny_read):
            self.violation(f"{event}: read of a protected path: {resolved}")

    def hook(self, event, args):
        if self.busy:
            return
        self.busy = True
        try:
            self._dispatch(event, args)
        finally:
            self.busy = False

    def _dispatch(self, event, args):
        if event in _ALWAYS_BLOCKED:
            self.violation(f"{_ALWAYS_BLOCKED[event]} is not allowed")
        elif event in ("os.kill", "os.killpg"):
            if not (event == "os.kill" and args[0] == self.own_pid):
                self.violation(f"{event}({args[0]}, {args[1]}): signalling other processes is not allowed")
        elif event == "ctypes.dlopen":
            if args and args[0] is not None:   # `import ctypes` itself opens the main program (None)
                self.violation(f"native code (ctypes.dlopen {args[0]!r}) is not allowed")
        elif event == "open":
            self._check_open(args)
        elif event in _WRITE_EVENTS:
            for index in _WRITE_EVENTS[event]:
                if index < len(args) and args[index] is not None:
                    self.check_write(event, args[index])
        elif event in _LIST_EVENTS and args and args[0] is not None:
            self.check_read(event, args[0])

    def _check_open(self, args):
        path, mode, flags = (tuple(args) + (None, None, None))[:3]
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or (
            isinstance(flags, int) and flags & _WRITE_FLAGS)
        if writing:
            self.check_write("open", path)
        else:
            self.check_read("open", path)


def apply_rlimits(limits):
    for name, value in (("RLIMIT_CPU", limits["cpu_s"]), ("RLIMIT_AS", limits["memory_bytes"]),
                        ("RLIMIT_FSIZE", limits["fsize_bytes"]), ("RLIMIT_NOFILE", limits["nofile"]),
                        ("RLIMIT_NPROC", limits["nproc"]), ("RLIMIT_CORE", 0)):
        if value is not None:
            resource.setrlimit(getattr(resource, name), (value, value))


def _on_alarm(signum, frame):
    raise TestTimeout()


def _arm(seconds):
    signal.setitimer(signal.ITIMER_REAL, seconds)


def describe(exc):
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return text[:MAX_REASON_CHARS]


def run_solution(spec, namespace):
    """Run the header and the solution as __main__. Returns None, or a failure record."""
    _arm(spec["per_test_timeout_s"])
    try:
        if spec.get("header"):
            exec(compile(spec["header"], "<header>", "exec"), namespace)
        exec(compile(spec["solution"], "solution.py", "exec"), namespace)
    except TestTimeout:
        return {"status": "timeout", "reason": f"timed out after {spec['per_test_timeout_s']}s (wall clock)"}
    except SystemExit as exc:
        if spec["mode"] != "script":
            return {"status": "error", "reason": f"solution exited ({exc.code}) before the tests ran"}
        return {"status": "exited", "code": exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)}
    except BaseException as exc:  # noqa: BLE001 - any failure of untrusted code is a verdict
        return {"status": "error", "reason": describe(exc)}
    finally:
        _arm(0)
    return None


def run_check_code(spec, namespace):
    _arm(spec["per_test_timeout_s"])
    try:
        exec(compile(spec["check_code"], "check.py", "exec"), namespace)
    except TestTimeout:
        return {"status": "timeout", "reason": f"test timed out after {spec['per_test_timeout_s']}s"}
    except AssertionError as exc:
        return {"status": "failed", "reason": describe(exc) if str(exc) else "assertion failed"}
    except BaseException as exc:  # noqa: BLE001
        return {"status": "error", "reason": describe(exc)}
    finally:
        _arm(0)
    return {"status": "passed", "reason": ""}


def _normalise(value):
    if isinstance(value, tuple):
        return [_normalise(v) for v in value]
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def _equal(got, expected):
    if isinstance(got, float) or isinstance(expected, float):
        try:
            return abs(float(got) - float(expected)) <= 1e-6 * max(1.0, abs(float(expected)))
        except (TypeError, ValueError):
            return False
    if isinstance(got, list) and isinstance(expected, list):
        return len(got) == len(expected) and all(_equal(g, e) for g, e in zip(got, expected))
    return got == expected


def outputs_equal(got, expected, output_check):
    """LiveCodeBench ("exact"): a tuple counts as a list, then `==`. "tolerant": floats within 1e-6,
    tuples as lists at any depth."""
    if output_check == "tolerant":
        return _equal(_normalise(got), expected)
    return (list(got) if isinstance(got, tuple) else got) == expected


def _find_callable(namespace, name):
    solution_class = namespace.get("Solution")
    if solution_class is not None:
        return getattr(solution_class(), name)
    return namespace[name]      # a bare function of that name is accepted too


def run_functional_tests(spec, namespace):
    """LeetCode-style: one JSON value per input line, one per argument; compare the return value."""
    try:
        method = _find_callable(namespace, spec["method"])
    except BaseException as exc:  # noqa: BLE001
        return {"status": "error", "reason": f"cannot find {spec['method']}: {describe(exc)}"}
    for index, (raw_input, raw_output) in enumerate(spec["tests"]):
        args = [json.loads(line) for line in raw_input.split("\n") if line.strip()]
        expected = json.loads(raw_output)
        _arm(spec["per_test_timeout_s"])
        try:
            got = method(*args)
        except TestTimeout:
            return {"status": "timeout", "reason": f"test {index} timed out after {spec['per_test_timeout_s']}s"}
        except BaseException as exc:  # noqa: BLE001
            return {"status": "error", "reason": f"test {index}: {describe(exc)}"}
        finally:
            _arm(0)
        if not outputs_equal(got, expected, spec.get("output_check", "exact")):
            return {"status": "failed", "reason": f"test {index}: got {repr(got)[:100]}, expected {raw_output[:100]}"}
    return {"status": "passed", "reason": ""}


def _join_program_threads():
    """Competitive programs often run `main` in a thread with a bigger stack; wait for it the way the
    interpreter would at exit (the parent's wall-clock timeout still bounds this)."""
    threading = sys.modules.get("threading")
    if threading is None:
        return None
    try:
        threading._shutdown()
    except BaseException as exc:  # noqa: BLE001
        return {"status": "error", "reason": describe(exc)}
    return None


# ---------------------------------------------------------------------------------------------------
# seccomp: a tiny classic-BPF assembler, so that no library is needed inside or outside the sandbox.
# The evaluator builds the sandbox-wide filter with `seccomp_filter(SANDBOX_DENIED)` and hands it to
# bubblewrap (`--seccomp FD`); each program's process adds `PROGRAM_FILTER_DENIED` on top of it.

_ARCH = {"x86_64": 0xC000003E, "aarch64": 0xC00000B7}      # AUDIT_ARCH_*
_NR = {
    "x86_64": {"clone": 56, "fork": 57, "vfork": 58, "execve": 59, "execveat": 322, "kill": 62, "tkill": 200,
               "tgkill": 234, "socket": 41, "socketpair": 53, "ptrace": 101, "mount": 165, "umount2": 166,
               "pivot_root": 155, "chroot": 161, "keyctl": 250, "add_key": 248, "request_key": 249,
               "unshare": 272, "setns": 308, "bpf": 321, "perf_event_open": 298, "userfaultfd": 323,
               "process_vm_readv": 310, "process_vm_writev": 311, "kexec_load": 246, "kexec_file_load": 320,
               "init_module": 175, "finit_module": 313, "delete_module": 176, "reboot": 169, "swapon": 167,
               "swapoff": 168, "acct": 163, "open_by_handle_at": 304, "name_to_handle_at": 303,
               "io_uring_setup": 425, "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434,
               "pidfd_send_signal": 424, "pidfd_getfd": 438, "clone3": 435, "open_tree": 428,
               "move_mount": 429, "fsopen": 430, "fsconfig": 431, "fsmount": 432, "fspick": 433,
               "mount_setattr": 442, "quotactl": 179, "syslog": 103, "settimeofday": 164,
               "clock_settime": 227, "sethostname": 170, "setdomainname": 171, "iopl": 172, "ioperm": 173},
    "aarch64": {"clone": 220, "execve": 221, "execveat": 281, "kill": 129, "tkill": 130, "tgkill": 131,
                "socket": 198, "socketpair": 199, "ptrace": 117, "mount": 40, "umount2": 39, "pivot_root": 41,
                "chroot": 51, "keyctl": 219, "add_key": 217, "request_key": 218, "unshare": 97, "setns": 268,
                "bpf": 280, "perf_event_open": 241, "userfaultfd": 282, "process_vm_readv": 270,
                "process_vm_writev": 271, "kexec_load": 104, "kexec_file_load": 294, "init_module": 105,
                "finit_module": 273, "delete_module": 106, "reboot": 142, "swapon": 224, "swapoff": 225,
                "acct": 89, "open_by_handle_at": 265, "name_to_handle_at": 264, "io_uring_setup": 425,
                "io_uring_enter": 426, "io_uring_register": 427, "pidfd_open": 434, "pidfd_send_signal": 424,
                "pidfd_getfd": 438, "clone3": 435, "open_tree": 428, "move_mount": 429, "fsopen": 430,
                "fsconfig": 431, "fsmount": 432, "fspick": 433, "mount_setattr": 442, "quotactl": 60,
                "syslog": 116, "settimeofday": 170, "clock_settime": 112, "sethostname": 161,
                "setdomainname": 162},
}
# Refused for everything in the sandbox: debugging other processes, the kernel's mount, key, module and
# namespace machinery, io_uring (it bypasses seccomp), clocks and host names.
SANDBOX_DENIED = ("ptrace", "process_vm_readv", "process_vm_writev", "mount", "umount2", "pivot_root", "chroot",
                  "keyctl", "add_key", "request_key", "unshare", "setns", "bpf", "perf_event_open", "userfaultfd",
                  "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module", "reboot",
                  "swapon", "swapoff", "acct", "open_by_handle_at", "name_to_handle_at", "io_uring_setup",
                  "io_uring_enter", "io_uring_register", "pidfd_getfd", "open_tree", "move_mount", "fsopen",
                  "fsconfig", "fsmount", "fspick", "mount_setattr", "quotactl", "syslog", "settimeofday",
                  "clock_settime", "sethostname", "setdomainname", "iopl", "ioperm")
# Refused to the program on top: new processes (threads stay allowed), exec, sockets, signals to anyone else.
PROGRAM_FILTER_DENIED = ("fork", "vfork", "execve", "execveat", "socket", "socketpair", "tkill", "pidfd_open",
                         "pidfd_send_signal")
_EPERM, _ENOSYS = 1, 38
_RET_ALLOW, _RET_ERRNO = 0x7FFF0000, 0x00050000
_LD_ABS, _JEQ, _JGE, _JSET, _RET = 0x20, 0x15, 0x35, 0x45, 0x06
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16                      # struct seccomp_data (arg0's low 32 bits)
_CLONE_THREAD = 0x00010000
_X32_BIT = 0x40000000


def _ins(code, k, jt=0, jf=0):
    return struct.pack("<HBBI", code, jt, jf, k & 0xFFFFFFFF)


def _deny(nr, errno=_EPERM):
    return _ins(_JEQ, nr, 0, 1) + _ins(_RET, _RET_ERRNO | errno)


def _allow_arg0(nr, value):
    """`nr` is allowed only when its first argument's low 32 bits equal `value`, else EPERM."""
    return (_ins(_JEQ, nr, 0, 4) + _ins(_LD_ABS, _OFF_ARG0) + _ins(_JEQ, value, 0, 1) + _ins(_RET, _RET_ALLOW)
            + _ins(_RET, _RET_ERRNO | _EPERM))


def seccomp_filter(denied, own_pid=None, machine=None):
    """A BPF program (bytes) refusing `denied` with EPERM; with `own_pid`, also process creation (clone
    without CLONE_THREAD, clone3 as ENOSYS so that libc falls back to clone) and kill/tgkill of any pid
    but `own_pid`. None on an architecture without a table here."""
    machine = machine or os.uname().machine
    table = _NR.get(machine)
    if table is None:
        return None
    prog = _ins(_LD_ABS, _OFF_ARCH) + _ins(_JEQ, _ARCH[machine], 1, 0) + _ins(_RET, _RET_ERRNO | _EPERM)
    prog += _ins(_LD_ABS, _OFF_NR)
    if machine == "x86_64":      # the x32 ABI numbers its calls from 2**30: refuse it outright
        prog += _ins(_JGE, _X32_BIT, 0, 1) + _ins(_RET, _RET_ERRNO | _EPERM)
    prog += b"".join(_deny(table[name]) for name in denied if name in table)
    if own_pid is not None:
        prog += _deny(table["clone3"], _ENOSYS)
        prog += _ins(_JEQ, table["clone"], 0, 4) + _ins(_LD_ABS, _OFF_ARG0) + _ins(_JSET, _CLONE_THREAD, 0, 1)
        prog += _ins(_RET, _RET_ALLOW) + _ins(_RET, _RET_ERRNO | _EPERM)
        prog += _allow_arg0(table["kill"], own_pid) + _allow_arg0(table["tgkill"], own_pid)
    return prog + _ins(_RET, _RET_ALLOW)


def install_seccomp(denied, program=False):
    """Load a filter on this process (and its future threads). Returns whether it took."""
    prog = seccomp_filter(denied, own_pid=os.getpid() if program else None)
    if prog is None:
        return False
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)

    class SockFprog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

    buffer = ctypes.create_string_buffer(prog, len(prog))
    fprog = SockFprog(len(prog) // 8, ctypes.addressof(buffer))
    ulong = ctypes.c_ulong
    if libc.prctl(_PR_SET_NO_NEW_PRIVS, ulong(1), ulong(0), ulong(0), ulong(0)) != 0:
        return False
    return libc.prctl(_PR_SET_SECCOMP, ulong(_SECCOMP_MODE_FILTER), ctypes.byref(fprog), ulong(0), ulong(0)) == 0


def set_not_dumpable():
    """Other processes of the same uid (the programs) may then not open our /proc/PID/fd or ptrace us."""
    import ctypes
    ctypes.CDLL(None).prctl(_PR_SET_DUMPABLE, ctypes.c_ulong(0), ctypes.c_ulong(0), ctypes.c_ulong(0),
                            ctypes.c_ulong(0))


# ---------------------------------------------------------------------------------------------------
# Serve mode: the warm worker that bubblewrap starts once per slot. It runs no untrusted code itself:
# for each request it forks a child, which sets its limits, filters and audit hook and runs the
# program; then it kills everything else in the sandbox's PID namespace and wipes both tmpfs mounts.

WORK_DIR = "/tmp"            # the program's cwd, HOME and TMPDIR: a tmpfs of its own
IO_DIR = "/io"               # stdin, stdout, stderr and the control file: a second tmpfs
PRELOAD = ("string", "re", "datetime", "collections", "heapq", "bisect", "copy", "math", "random", "statistics",
           "itertools", "functools", "operator", "io", "json", "typing", "threading", "decimal", "fractions",
           "array", "ctypes", "shutil", "select")
_MAX_STDERR_TAIL = 2048
_MAX_CONTROL = 64 * 1024
_PR_SET_DUMPABLE, _PR_SET_SECCOMP, _PR_SET_NO_NEW_PRIVS, _PR_SET_CHILD_SUBREAPER = 4, 22, 38, 36
_SECCOMP_MODE_FILTER = 2


class _Channel:
    """Newline-delimited JSON on two raw descriptors (the programs never inherit them)."""

    def __init__(self, in_fd, out_fd):
        self.in_fd, self.out_fd, self.buffer = in_fd, out_fd, b""

    def read(self):
        while b"\n" not in self.buffer:
            chunk = os.read(self.in_fd, 1 << 20)
            if not chunk:
                return None
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def write(self, message):
        data = (json.dumps(message) + "\n").encode()
        while data:
            data = data[os.write(self.out_fd, data):]


def _io_path(name):
    return os.path.join(IO_DIR, name)


def _child(spec):
    """In the forked child: descriptors, limits, filters, then the program. Never returns."""
    try:
        for fd, name, flags in ((0, "stdin", os.O_RDONLY), (1, "stdout", os.O_WRONLY | os.O_CREAT | os.O_TRUNC),
                                (2, "stderr", os.O_WRONLY | os.O_CREAT | os.O_TRUNC)):
            os.dup2(os.open(_io_path(name), flags, 0o600), fd)
        control_fd = os.open(_io_path("control"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.closerange(3, control_fd)
        os.closerange(control_fd + 1, 1 << 16)
        os.chdir(WORK_DIR)
        os.setsid()
        apply_rlimits(spec["limits"])
        install_seccomp(PROGRAM_FILTER_DENIED, program=True)     # bubblewrap already loaded SANDBOX_DENIED
        run_program(spec, control_fd)
    except BaseException:  # noqa: BLE001 - the child must never fall back into the serve loop
        os._exit(70)


def _wait(pid, wall_s):
    """Wait for `pid` at most `wall_s` seconds, then SIGKILL it; (returncode, timed_out)."""
    if hasattr(os, "pidfd_open"):
        import select
        pidfd = os.pidfd_open(pid)
        timed_out = not select.select([pidfd], [], [], wall_s)[0]
        os.close(pidfd)
    else:                               # before Linux 5.3 / Python 3.9: poll
        deadline = time.monotonic() + wall_s
        while not (timed_out := time.monotonic() > deadline) and os.waitid(
                os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
            time.sleep(0.002)
    if timed_out:
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), timed_out


def _sweep():
    """SIGKILL every process of the sandbox but ourselves and bubblewrap's init (kill(-1) in a PID
    namespace reaches only that namespace), and reap the ones that were reparented to us."""
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def _wipe(root):
    """Empty a tmpfs mount; False when something stayed (e.g. a directory the program made
    unreadable): the evaluator then replaces the whole worker, and with it the mount."""
    import shutil
    for entry in os.listdir(root):
        path = os.path.join(root, entry)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError:
            pass
    return not os.listdir(root)


def _read(path, limit, tail=False):
    try:
        with open(path, "rb") as handle:
            if tail:
                handle.seek(max(0, os.fstat(handle.fileno()).st_size - limit))
            data = handle.read(limit + (0 if tail else 1))
    except OSError:
        return "", False
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


def handle(request):
    spec, limit = request["spec"], request["max_output_bytes"]
    with open(_io_path("stdin"), "w", encoding="utf-8") as handle_in:
        handle_in.write(request.get("stdin", ""))
    started = time.monotonic()
    pid = os.fork()
    if pid == 0:
        _child(spec)
    returncode, timed_out = _wait(pid, request["wall_s"])
    duration = time.monotonic() - started
    _sweep()
    stdout, truncated = _read(_io_path("stdout"), limit)
    stderr_tail, _ = _read(_io_path("stderr"), _MAX_STDERR_TAIL, tail=True)
    control, _ = _read(_io_path("control"), _MAX_CONTROL)
    clean = _wipe(WORK_DIR) & _wipe(IO_DIR)
    return {"returncode": returncode, "timed_out": timed_out, "duration_s": duration, "stdout": stdout,
            "stdout_truncated": truncated, "stderr_tail": stderr_tail, "control": control, "clean": clean}


def serve():
    # Only as the first process bubblewrap starts in a fresh PID namespace: kill(-1) must never run
    # where it would reach the host's processes.
    if os.getpid() != 2 or os.getppid() != 1:
        sys.exit("serve mode runs only inside a new PID namespace")
    channel = _Channel(os.dup(0), os.dup(1))
    null = os.open("/dev/null", os.O_RDWR)
    os.dup2(null, 0)
    os.dup2(null, 1)
    os.close(null)
    for name in PRELOAD:
        __import__(name)
    import ctypes
    set_not_dumpable()
    ctypes.CDLL(None).prctl(_PR_SET_CHILD_SUBREAPER, ctypes.c_ulong(1), ctypes.c_ulong(0), ctypes.c_ulong(0),
                            ctypes.c_ulong(0))
    probe = seccomp_filter(PROGRAM_FILTER_DENIED, own_pid=1) is not None
    channel.write({"event": "ready", "seccomp": probe})
    while (request := channel.read()) is not None:
        try:
            reply = handle(request)
        except OSError as exc:        # e.g. a stdin larger than the I/O tmpfs: this request fails, we go on
            _sweep()
            reply = {"error": describe(exc), "clean": _wipe(WORK_DIR) & _wipe(IO_DIR)}
        channel.write(reply)


def run_program(spec, control_fd):
    """Everything after the limits: the audit hook, the solution, the tests, the verdict. Never returns."""
    sys.path.extend(spec.get("site_packages", []))   # started with -S: no .pth processing
    signal.signal(signal.SIGALRM, _on_alarm)
    policy = Policy(spec, control_fd)
    nonce = spec["nonce"]
    sys.argv = ["solution.py"]
    sys.addaudithook(policy.hook)      # cannot be removed once added
    namespace = {"__name__": "__main__", "__builtins__": __builtins__}
    outcome = run_solution(spec, namespace)
    if outcome is None:
        if spec["mode"] == "check":
            outcome = run_check_code(spec, namespace)
        elif spec["mode"] == "functional":
            outcome = run_functional_tests(spec, namespace)
        else:
            outcome = _join_program_threads() or {"status": "exited", "code": 0}
    try:
        sys.stdout.flush()
    except BaseException:  # noqa: BLE001 - a closed or full stdout is the program's problem
        pass
    policy.record(event="result", nonce=nonce, **outcome)
    os._exit(0)                        # skip atexit handlers the program may have registered


def main():
    """One-shot mode (the fallback without bubblewrap): `python -I -S -B _sandbox_boot.py SPEC`."""
    spec_path = sys.argv[1]
    if spec_path == "--serve":
        return serve()
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.remove(spec_path)               # the tests' expected outputs are not left for the program
    control_fd = os.open(spec["control_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    apply_rlimits(spec["limits"])
    install_seccomp(SANDBOX_DENIED + PROGRAM_FILTER_DENIED, program=True)
    run_program(spec, control_fd)


if __name__ == "__main__":
    main()

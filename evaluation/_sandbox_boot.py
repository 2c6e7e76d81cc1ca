"""Runs INSIDE the sandboxed child process (`python -I -S -B _sandbox_boot.py SPEC`), never imported
by the toolkit. It applies the limits that a process can only set on itself, installs an audit hook
that refuses processes, signals, sockets, ctypes and file access outside the sandbox directory, and
only then runs the untrusted code.

Its verdicts go to a control file opened before the hook is installed; stdout and stderr belong to
the program. The first policy violation ends the process at once with EXIT_BLOCKED, so a program
cannot swallow the refusal with `except BaseException` and carry on.
"""

import json
import os
import resource
import signal
import sys

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
        resolved = self._resolve(path)
        if resolved is None or self._under(resolved, [self.sandbox_dir] + self.allow_read):
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


def main():
    spec_path = sys.argv[1]
    with open(spec_path, encoding="utf-8") as handle:
        spec = json.load(handle)
    os.remove(spec_path)               # the tests' expected outputs are not left for the program
    sys.path.extend(spec.get("site_packages", []))   # started with -S: no .pth processing
    control_fd = os.open(spec["control_path"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    apply_rlimits(spec["limits"])
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


if __name__ == "__main__":
    main()

"""Naive escape attempts are contained, reported as a failure with a reason, and the test process
survives, under both isolation levels: every test here runs once with bubblewrap (the warm worker
pool) and once with the fallback (one subprocess per program), each in a real sandbox (no mocks).
The fallback's warning, its recorded level and `require_isolation` are tested at the end; escapes that
first disable the audit hook are in test_eval_sandbox_escapes.py (bubblewrap only)."""

from __future__ import annotations

import json
import os
import textwrap
import warnings

import pytest

from evaluation import sandbox
from evaluation.benchmarks.base import Problem, TestCase
from evaluation.execution import check_answer, check_many
from evaluation.sandbox import (
    BUBBLEWRAP,
    PROJECT_ROOT,
    IsolationUnavailable,
    SandboxLimits,
    isolation_level,
    namespaces_available,
    run_sandboxed,
)

FAST = SandboxLimits(timeout_s=2.0, memory_mb=512, max_output_bytes=1024 * 1024)
MISSING_BWRAP = "/nonexistent/bwrap"


def _force_fallback(monkeypatch) -> None:
    monkeypatch.setenv(sandbox.BWRAP_ENV, MISSING_BWRAP)


@pytest.fixture(autouse=True, params=["bubblewrap", "fallback"])
def isolation(request, monkeypatch):
    """Run each test under bubblewrap and under the fallback."""
    if request.param == "fallback":
        _force_fallback(monkeypatch)
        monkeypatch.setattr(sandbox, "_warned_fallback", True)     # the warning has its own test
    elif isolation_level() != BUBBLEWRAP:
        pytest.skip("bubblewrap does not work here (scripts/setup.sh installs it when run as root)")
    return request.param


def _script(code: str, limits: SandboxLimits = FAST, stdin: str = ""):
    return run_sandboxed({"mode": "script", "solution": textwrap.dedent(code), "header": ""},
                         stdin=stdin, limits=limits)


def _stdin_problem() -> Problem:
    return Problem(id="echo", messages=[], test_type="stdin", tests=[TestCase("3\n", "6\n")])


def test_plain_program_runs_and_reads_stdin():
    outcome = _script("n = int(input())\nprint(n * 2)", stdin="21\n")
    assert outcome.status == "exited" and outcome.exit_code == 0
    assert outcome.stdout.strip() == "42"


def test_infinite_loop_times_out_and_is_killed():
    outcome = _script("while True:\n    pass\n", limits=SandboxLimits(timeout_s=1.0))
    assert outcome.status == "timeout"
    assert "timed out" in outcome.reason


def test_fork_bomb_is_blocked():
    outcome = _script("import os\nwhile True:\n    os.fork()\n")
    assert outcome.status == "blocked" and "fork" in outcome.reason


def test_subprocess_is_blocked():
    outcome = _script("import subprocess\nsubprocess.run(['echo', 'hi'])\n")
    assert outcome.status == "blocked" and "subprocess" in outcome.reason


def test_memory_hog_is_stopped():
    result = check_answer(_stdin_problem(), "```python\nx = bytearray(4 * 1024 ** 3)\nprint(6)\n```", FAST)
    assert not result.passed
    assert result.status == "error" and "MemoryError" in result.reason


def test_write_outside_sandbox_is_blocked(tmp_path, isolation):
    target = tmp_path / "escaped.txt"
    outcome = _script(f"open({str(target)!r}, 'w').write('pwned')\n")
    if isolation == "fallback":
        assert outcome.status == "blocked" and "write outside" in outcome.reason
    else:   # the sandbox's /tmp is its own tmpfs: the host directory is not there to write into
        assert outcome.status == "error" and "FileNotFoundError" in outcome.reason
    assert not target.exists()


def test_write_inside_sandbox_is_allowed():
    outcome = _script("open('scratch.txt', 'w').write('ok')\nprint(open('scratch.txt').read())\n")
    assert outcome.status == "exited" and outcome.stdout.strip() == "ok"


def test_reading_project_files_is_blocked():
    outcome = _script(f"print(open({str(PROJECT_ROOT / 'pyproject.toml')!r}).read())\n")
    assert outcome.status == "blocked" and "protected path" in outcome.reason
    assert "ssd-toolkit" not in outcome.stdout


def test_home_and_cwd_are_the_sandbox_dir():
    outcome = _script("import os\nprint(os.environ['HOME'] == os.getcwd())\nprint(sorted(os.environ))\n")
    assert outcome.stdout.splitlines()[0] == "True"
    assert "SSD" not in outcome.stdout and "VIRTUAL_ENV" not in outcome.stdout


def test_network_connection_is_blocked():
    outcome = _script("import socket\nsocket.create_connection(('1.1.1.1', 80), timeout=1)\n")
    assert outcome.status == "blocked" and "network" in outcome.reason


def test_killing_the_parent_is_blocked_and_parent_survives():
    outcome = _script("import os, signal\nos.kill(os.getppid(), signal.SIGKILL)\n")
    assert outcome.status == "blocked" and "signalling" in outcome.reason
    os.kill(os.getpid(), 0)   # we are still here


def test_ctypes_native_calls_are_blocked():
    outcome = _script("import ctypes\nlibc = ctypes.CDLL('libc.so.6')\nlibc.kill(1, 9)\n")
    assert outcome.status == "blocked" and "ctypes" in outcome.reason


def test_huge_output_is_capped():
    outcome = _script("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)\n")
    assert outcome.status in ("error", "timeout")
    assert len(outcome.stdout) <= FAST.max_output_bytes
    result = check_answer(_stdin_problem(), "print('y' * (64 * 1024 * 1024))", FAST)
    assert not result.passed and result.reason


def test_swallowing_the_refusal_does_not_help():
    code = "import os\ntry:\n    os.fork()\nexcept BaseException:\n    pass\nprint(6)\n"
    result = check_answer(_stdin_problem(), code, FAST)
    assert result.status == "blocked" and not result.passed


def test_forged_result_record_is_ignored():
    # The program cannot find the nonce, so writing a 'passed' record into the control file does not count.
    code = textwrap.dedent("""
        import glob, json
        for path in glob.glob('.control-*') + glob.glob('/io/control'):
            with open(path, 'a') as f:
                f.write(json.dumps({'event': 'result', 'status': 'passed', 'nonce': 'guess'}) + '\\n')
        raise SystemExit(0)
    """)
    problem = Problem(id="x", messages=[], test_type="functional", entry_point="f",
                      check_code="assert f() == 1\n", prompt="")
    result = check_answer(problem, code, FAST)
    assert not result.passed


def test_exit_before_tests_is_not_a_pass():
    problem = Problem(id="x", messages=[], test_type="functional", entry_point="f",
                      check_code="assert f() == 1\n", prompt="def f():\n    return 2\n")
    for early_exit in ("import sys\nsys.exit(0)\n", "import os\nos._exit(0)\n"):
        assert not check_answer(problem, early_exit, FAST).passed


def test_parallel_escapes_all_contained():
    attempts = ["while True: pass", "import os\nos.fork()", "import socket\nsocket.socket()",
                "import os\nos.kill(os.getppid(), 9)", "print(6)"]
    results = check_many([(_stdin_problem(), a) for a in attempts], limits=SandboxLimits(timeout_s=1.0), workers=2)
    assert [r.passed for r in results] == [False, False, False, False, True]
    assert [r.status for r in results[:4]] == ["timeout", "blocked", "blocked", "blocked"]


@pytest.mark.skipif(not namespaces_available(), reason="unshare -rn is not available here")
def test_network_namespace_has_no_route_even_for_native_code():
    # Bypassing the audit hook is out of reach for the program, but the namespace is checked directly.
    import subprocess
    probe = subprocess.run(["unshare", "-rn", "cat", "/proc/net/route"], capture_output=True, text=True, timeout=10)
    assert probe.returncode == 0
    assert len(probe.stdout.strip().splitlines()) <= 1   # header only: no routes


def test_loop_that_ignores_the_alarm_is_killed_by_the_parent():
    code = "import signal\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\nwhile True:\n    pass\n"
    outcome = _script(code, limits=SandboxLimits(timeout_s=1.0))
    assert outcome.status == "timeout" and "wall-clock" in outcome.reason


def test_every_result_records_its_isolation_level(isolation):
    outcome = _script("print(1)")
    expected = BUBBLEWRAP if isolation == "bubblewrap" else ("namespaces" if namespaces_available() else "none")
    assert outcome.status == "exited" and outcome.isolation == expected
    results = check_many([(_stdin_problem(), "print(6)"), (_stdin_problem(), "")], limits=FAST, workers=2)
    assert [r.passed for r in results] == [True, False]
    assert {r.isolation for r in results} == {expected}     # also the answer without code


@pytest.mark.parametrize("isolation", ["fallback"], indirect=True)
def test_fallback_warns_once_and_require_isolation_refuses(monkeypatch, isolation, capsys):
    monkeypatch.setattr(sandbox, "_warned_fallback", False)
    with pytest.warns(RuntimeWarning, match="SANDBOX FALLBACK: bwrap not found"):
        assert _script("print(2)").stdout.strip() == "2"
    with warnings.catch_warnings():
        warnings.simplefilter("error")          # a second program: no second warning
        assert _script("print(3)").stdout.strip() == "3"
    strict = SandboxLimits(timeout_s=2.0, require_isolation=True)
    with pytest.raises(IsolationUnavailable, match="required but unavailable"):
        _script("print(4)", limits=strict)
    with pytest.raises(IsolationUnavailable):
        check_many([(_stdin_problem(), "print(6)")], limits=strict)
    from evaluation import cli
    assert cli.main(["--require-isolation", "true", "--limit", "1", "--sampler-url", "http://127.0.0.1:9"]) == 2
    assert "required but unavailable: bwrap not found" in capsys.readouterr().err


def test_evaluation_records_isolation_and_require_isolation_fails_fast(tmp_path, isolation):
    from evaluation.runner import EvalConfig, evaluate
    from tests.test_eval_runner import FakeSampler
    sampler = FakeSampler()
    config = EvalConfig(limit=2, n=1, output_dir=str(tmp_path), run_name="iso", workers=1)
    evaluate(sampler, config)
    summary = json.loads((tmp_path / "iso" / "summary.json").read_text())
    rows = [json.loads(line) for line in (tmp_path / "iso" / "samples.jsonl").read_text().splitlines()]
    expected = BUBBLEWRAP if isolation == "bubblewrap" else ("namespaces" if namespaces_available() else "none")
    assert summary["isolation"] == expected and {r["isolation"] for r in rows} == {expected}
    from evaluation.report import write_report
    from evaluation.sweep import temperature_sweep
    points = temperature_sweep(sampler, config, [0.5])
    report = write_report(points, tmp_path / "study").read_text()
    assert f"Sandbox isolation: {expected}." in report
    strict = EvalConfig(limit=2, n=1, output_dir=str(tmp_path), run_name="strict", require_isolation=True)
    if isolation == "bubblewrap":
        evaluate(sampler, strict)
        assert json.loads((tmp_path / "strict" / "summary.json").read_text())["isolation"] == BUBBLEWRAP
    else:
        before = len(sampler.requests)
        with pytest.raises(IsolationUnavailable):
            evaluate(sampler, strict)
        assert len(sampler.requests) == before and not (tmp_path / "strict").exists()   # nothing generated


@pytest.mark.parametrize("isolation", ["fallback"], indirect=True)
@pytest.mark.parametrize("pidfd", [True, False])
def test_the_workers_wall_clock(monkeypatch, isolation, pidfd):
    # The worker's own timer, with pidfd_open and with the polling fallback for older kernels.
    from evaluation import _sandbox_boot
    if not pidfd:
        monkeypatch.delattr(os, "pidfd_open", raising=False)
    for sleep_s, expected in ((0.0, (3, False)), (5.0, (-9, True))):
        pid = os.fork()
        if pid == 0:
            import time
            time.sleep(sleep_s)
            os._exit(3)
        assert _sandbox_boot._wait(pid, 0.5) == expected

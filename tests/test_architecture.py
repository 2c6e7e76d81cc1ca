"""The layering is a checked contract: `lint-imports` passes on the tree, and an import that points
up a layer fails it. docs/architecture.md draws the layers."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("ssd", "sampler_service", "trainer", "evaluation", "diagnostics", "client", "common")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")

pytestmark = pytest.mark.skipif(not LINT_IMPORTS.exists(), reason="import-linter is not installed (make setup)")


def _lint(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, capture_output=True, text=True,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"}, timeout=300)


def _copy_tree(dest: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(REPO / package, dest / package, ignore=shutil.ignore_patterns("__pycache__", "*.jsonl"))
    shutil.copy(REPO / "pyproject.toml", dest / "pyproject.toml")
    return dest


def test_the_tree_keeps_every_layer_contract():
    result = _lint(REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "broken" in result.stdout and "0 broken" in result.stdout


@pytest.mark.parametrize("module, bad_import", [
    ("client/_probe.py", "import ssd.pipeline\n"),                 # the library importing the application
    ("common/_probe.py", "from client import SamplerClient\n"),    # the bottom importing a layer above
    ("trainer/_probe.py", "import evaluation.metrics\n"),           # one sibling importing another
    ("sampler_service/_probe.py", "import client.api\n"),          # the server importing its own client
])
def test_an_import_against_the_layers_fails_the_build(tmp_path, module, bad_import):
    root = _copy_tree(tmp_path)
    (root / module).write_text(bad_import)
    result = _lint(root)
    assert result.returncode != 0
    assert "BROKEN" in result.stdout and module.replace("/", ".").removesuffix(".py") in result.stdout

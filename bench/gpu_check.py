"""The trainer's checks that a CPU-only CI cannot run, in one go on a CUDA machine.

    python bench/gpu_check.py --out runs/gpu-check              # about 6 minutes on one H200

1. The trainer alone on the GPU (bf16 autocast, fused AdamW), at a Qwen3 shape with random weights
   (no download): the loss falls on a repeated set of samples, and a run killed (SIGKILL) just after
   a checkpoint and resumed ends with the adapter of an uninterrupted run.
2. `bench/training.py` against TRL's SFTTrainer at Qwen3-4B's shape, with the model FLOPs
   utilisation (skipped, with a note, when TRL is not installed).

Needs torch with CUDA, transformers and peft; TRL and datasets for step 2. Prints a summary and
writes it to OUT/summary.json. Not a test: the CI machines have no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench.training import synthetic_samples  # noqa: E402
from trainer import checkpoint as ckpt  # noqa: E402
from trainer.recipe import CHECKPOINTS_DIRNAME  # noqa: E402

# Qwen3-0.6B's shape (its config.json): big enough to use the GPU, quick to build and save.
QWEN3_06B_SHAPE = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                       num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=40960,
                       rope_theta=1_000_000.0, rms_norm_eps=1e-6, tie_word_embeddings=True, bos_token_id=151643,
                       eos_token_id=151645, pad_token_id=151643)
# --tiny: the same checks on a toy shape, on whatever device there is (a smoke run of this script).
TINY_SHAPE = QWEN3_06B_SHAPE | dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, head_dim=16,
                                    bos_token_id=1, eos_token_id=2, pad_token_id=1)
SAMPLES = 64
MAX_SEQ_LEN = 2048
STEPS = 24
SAVE_EVERY = 8
KILL_AFTER_STEP = 8
RESUME_SLACK = 2.0             # bf16 kernels on a GPU are not bit-reproducible: a rerun is the yardstick
EXACT = 1e-6                   # on a CPU both differences are 0
TRAIN_TIMEOUT_S = 600


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_model(folder: Path, shape: dict) -> None:
    from transformers import AutoConfig, AutoModelForCausalLM

    if (folder / "config.json").exists():
        return
    torch.manual_seed(0)
    config = AutoConfig.for_model("qwen3", **shape)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    model.save_pretrained(folder)


def write_samples(path: Path, shape: dict) -> None:
    samples = synthetic_samples(SAMPLES, shape["vocab_size"], shape["eos_token_id"], MAX_SEQ_LEN, seed=0)
    path.write_text("".join(json.dumps(sample) + "\n" for sample in samples))


def trainer_command(model: Path, samples: Path, output: Path, *extra: str) -> list[str]:
    # Several epochs over 64 samples: the loss must fall as the adapter learns them.
    return [sys.executable, "-m", "trainer", "--model", str(model), "--samples-file", str(samples),
            "--output-dir", str(output), "--max-seq-len", str(MAX_SEQ_LEN), "--micro-batch-size", "8",
            "--micro-batch-tokens", str(8 * MAX_SEQ_LEN), "--grad-accum", "1", "--max-steps", str(STEPS),
            "--epochs", "4", "--save-every", str(SAVE_EVERY), "--lr", "5e-4", "--warmup-steps", "2",
            "--lora-rank", "16", *extra]


def metrics(output: Path) -> list[dict]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines() if line.strip()]


def adapter_weights(output: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(output / "adapter" / "adapter_model.safetensors"))


def run_killed_then_resumed(command: list[str], output: Path, log: Path) -> float:
    """Start the run, SIGKILL it once a checkpoint past KILL_AFTER_STEP is complete, resume it.
    Returns the seconds it ran before the kill."""
    started = time.monotonic()
    with log.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True)
        while process.poll() is None:
            done = [int(p.name.split("-")[-1]) for p in ckpt.complete_checkpoints(output / CHECKPOINTS_DIRNAME)]
            if any(step >= KILL_AFTER_STEP for step in done):
                os.killpg(process.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        process.wait()
    ran = time.monotonic() - started
    with log.open("a") as out:
        subprocess.run([*command, "--resume"], stdout=out, stderr=subprocess.STDOUT, cwd=REPO, check=True,
                       timeout=TRAIN_TIMEOUT_S)
    return ran


def check_trainer(out: Path, shape: dict) -> dict:
    model, samples = out / "model-random", out / "samples.jsonl"
    build_model(model, shape)
    write_samples(samples, shape)
    # Two uninterrupted runs measure how far the GPU's own non-determinism moves the adapter; the
    # killed-and-resumed run must land no farther from the first than the second one does.
    whole, again = out / "whole", out / "again"
    for folder in (whole, again):
        with (out / f"{folder.name}.log").open("w") as log:
            subprocess.run(trainer_command(model, samples, folder), stdout=log, stderr=subprocess.STDOUT,
                           cwd=REPO, check=True, timeout=TRAIN_TIMEOUT_S)
    rows = metrics(whole)
    resumed = out / "resumed"
    ran = run_killed_then_resumed(trainer_command(model, samples, resumed), resumed, out / "resumed.log")
    a = adapter_weights(whole)
    resume_diff, control_diff = (max_abs_diff(a, adapter_weights(other)) for other in (resumed, again))
    result = {
        "steps": rows[-1]["step"], "first_loss": rows[0]["loss"], "last_loss": rows[-1]["loss"],
        "resumed_last_loss": metrics(resumed)[-1]["loss"],
        "tokens_per_s": sum(r["tokens_per_s"] for r in rows[1:]) / max(len(rows) - 1, 1),
        "killed_after_s": round(ran, 1), "resumed_steps": metrics(resumed)[-1]["step"],
        "resume_max_abs_diff": resume_diff, "rerun_max_abs_diff": control_diff,
        "adapter_max_abs": max(t.float().abs().max().item() for t in a.values()),
    }
    result["loss_fell"] = result["last_loss"] < result["first_loss"]
    result["resume_matches"] = resume_diff <= max(RESUME_SLACK * control_diff, EXACT)
    return result


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    if set(a) != set(b):
        return float("inf")
    return max((a[key].float() - b[key].float()).abs().max().item() for key in a)


def run_bench(out: Path) -> dict:
    try:
        import trl  # noqa: F401
    except ImportError:
        return {"skipped": "TRL is not installed"}
    figures = out / "bench.json"
    with (out / "bench.log").open("w") as log:
        done = subprocess.run([sys.executable, str(REPO / "bench" / "training.py"), "--shape", "qwen3-4b",
                               "--samples", "128", "--micro-batch", "4", "--max-seq-len", "2048",
                               "--json", str(figures)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    if done.returncode != 0:
        return {"failed": (out / "bench.log").read_text()[-3000:]}
    return json.loads(figures.read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/gpu-check"))
    parser.add_argument("--skip-bench", action="store_true")
    parser.add_argument("--tiny", action="store_true", help="a toy shape, any device: a smoke run of this script")
    args = parser.parse_args()
    if not torch.cuda.is_available() and not args.tiny:
        raise SystemExit("no CUDA device: these checks are for a GPU machine (--tiny runs them on a toy model)")
    args.out.mkdir(parents=True, exist_ok=True)
    summary = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               "torch": torch.__version__}
    summary["trainer"] = check_trainer(args.out, TINY_SHAPE if args.tiny else QWEN3_06B_SHAPE)
    print(json.dumps(summary, indent=2), flush=True)
    if not args.skip_bench:
        summary["bench"] = run_bench(args.out)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    trainer = summary["trainer"]
    return 0 if trainer["loss_fell"] and trainer["resume_matches"] else 1


if __name__ == "__main__":
    sys.exit(main())

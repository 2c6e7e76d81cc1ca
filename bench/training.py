"""Training throughput: this trainer against TRL's `SFTTrainer`, same samples, LoRA and optimizer.

    .venv/bin/python bench/training.py                          # CPU, demo model, 1 thread, 24 samples
    .venv/bin/python bench/training.py --samples 48 --random-weights
    python bench/training.py --shape qwen3-4b --samples 256 --micro-batch 4 --max-seq-len 2048   # GPU

Both trainers train one epoch over one fixed set of synthetic samples (random token ids; prompt and
completion lengths drawn like SSD's and scaled with --max-seq-len, a share of completions cut at the
sampler's max_tokens), encoded
once by our `SampleEncoder` so both see the same token ids and the same completion mask (no EOS on
a sample that hit max_tokens, as in the paper and TRL's SSD trainer). Same LoRA (rank, alpha, every
linear projection, no dropout), AdamW, lr, warm-up then cosine decay to 0, grad_accum 1.

TRL runs with its best settings for the job: completion-only loss, and packing with best-fit
decreasing (which turns padding-free on), rows of max_seq_len, `--micro-batch` rows per step; the
padding-free variant without packing (`--micro-batch` samples per step, no padding) runs too, and
the faster TRL variant is the one compared. Ours buckets by length (`--micro-batch` sequences of at
most max_seq_len tokens).

The runs go in both orders in one process (ours, TRL..., TRL... reversed, ours), so a change in
the machine's load hits both. Throughput is real (non-padding) tokens over the wall time of
`train()` (model loading and TRL's dataset preparation excluded; our final checkpoint and adapter
export included); tokens per CPU-second is printed too, as it is less disturbed by neighbours.
On a GPU the model FLOPs utilisation (MFU) is reported: see `flops_per_token`.
Not a test: it prints figures and a markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.models import resolve_model  # noqa: E402
from trainer.config import LORA_TARGETS_ALL_LINEAR, TrainConfig  # noqa: E402
from trainer.data import EncodedSample, ListSampleSource, SampleEncoder  # noqa: E402
from trainer.recipe import LoRAFinetuneRecipe  # noqa: E402

# Lengths at --max-seq-len 256, scaled with it: a rendered coding problem, then a solution whose
# length varies a lot; those over the budget hit max_tokens.
LENGTH_SCALE_AT = 256
PROMPT_TOKENS = (40, 120)
COMPLETION_TOKENS = (20, 260)
LR = 1e-4
WARMUP_STEPS = 2
SEED = 0
TRL_VARIANTS = ("packing", "padding_free")

# SmolLM2-135M's shape (the demo model), for machines without its files: speed does not depend on weights.
DEMO_SHAPE = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536,
                  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3, head_dim=64,
                  max_position_embeddings=8192, tie_word_embeddings=True, bos_token_id=1, eos_token_id=2,
                  pad_token_id=2)
# Qwen3-4B's shape (its config.json), random weights: the GPU comparison needs no download.
QWEN3_4B_SHAPE = dict(model_type="qwen3", vocab_size=151936, hidden_size=2560, intermediate_size=9728,
                      num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                      max_position_embeddings=40960, rope_theta=1_000_000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, pad_token_id=151643)
SHAPES = {"demo": DEMO_SHAPE, "qwen3-4b": QWEN3_4B_SHAPE}
# Dense bf16 peak of the accelerators we may be lent, in FLOP/s (vendor data sheets, no sparsity).
PEAK_BF16_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}


# -- data -----------------------------------------------------------------------------------------

def synthetic_samples(count: int, vocab_size: int, eos_id: int, max_seq_len: int, seed: int) -> list[dict]:
    """Pull-API samples. A completion that would pass max_seq_len is cut there by the 'sampler'
    (finish_reason 'length', no EOS), as SSD's samples hit max_tokens; the rest stopped on EOS."""
    rng = random.Random(seed)
    scale = max_seq_len / LENGTH_SCALE_AT
    prompt_range = [max(1, round(length * scale)) for length in PROMPT_TOKENS]
    completion_range = [max(1, round(length * scale)) for length in COMPLETION_TOKENS]
    samples = []
    for index in range(count):
        prompt = [rng.randrange(3, vocab_size) for _ in range(rng.randint(*prompt_range))]
        wanted = rng.randint(*completion_range)
        room = max_seq_len - len(prompt)
        stopped = wanted < room                  # room for the completion and its EOS
        completion = [rng.randrange(3, vocab_size) for _ in range(wanted if stopped else room)]
        samples.append({"cursor": index + 1, "prompt_token_ids": prompt,
                        "completion_token_ids": completion + ([eos_id] if stopped else []),
                        "finish_reason": "stop" if stopped else "length"})
    return samples


def encode(samples: list[dict], eos_id: int, max_seq_len: int) -> list[EncodedSample]:
    encoder = SampleEncoder(eos_ids=[eos_id], max_seq_len=max_seq_len)
    return [encoded for encoded in map(encoder, samples) if encoded is not None]


# -- models ---------------------------------------------------------------------------------------

def model_factory(args: argparse.Namespace) -> tuple[Callable[..., Any], Any]:
    """(build(attention) a fresh model, its config). Each trainer gets its own model: LoRA wraps it
    in place. `attention` is an HF attn_implementation; None keeps the default (sdpa)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    if args.shape or args.random_weights:
        shape = dict(SHAPES[args.shape or "demo"])
        config = AutoConfig.for_model(shape.pop("model_type"), **shape)

        def build(attention: str | None = None) -> Any:
            torch.manual_seed(SEED)
            device = "cuda" if torch.cuda.is_available() else "cpu"
            with torch.device(device):           # initialise on the GPU: a 4B model on the CPU takes minutes
                return AutoModelForCausalLM.from_config(config, dtype=torch.float32, attn_implementation=attention)
        return build, config
    path = resolve_model(args.model)
    config = AutoConfig.from_pretrained(path)

    def load(attention: str | None = None) -> Any:
        torch.manual_seed(SEED)
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=attention)
    return load, config


def trl_attention() -> str | None:
    """TRL's padding-free batches want a variable-length kernel (FlashAttention) on a GPU. Without
    it (and on a CPU) sdpa still keeps the packed samples apart, with a block-diagonal mask."""
    if not torch.cuda.is_available():
        return None
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return None
    return "flash_attention_2"


def id_tokenizer(vocab_size: int, pad_id: int, eos_id: int) -> Any:
    """A word-level tokenizer whose token i is '<i>'. SFTTrainer needs one for its pad token; the
    samples are already token ids, so nothing is ever tokenized with it."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    vocab = {f"<{index}>": index for index in range(vocab_size)}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=f"<{pad_id}>"))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token=f"<{pad_id}>", eos_token=f"<{eos_id}>",
                                   unk_token=f"<{pad_id}>")


def lora_config(args: argparse.Namespace) -> Any:
    from peft import LoraConfig
    return LoraConfig(r=args.lora_rank, lora_alpha=2.0 * args.lora_rank, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS_ALL_LINEAR), bias="none", task_type="CAUSAL_LM")


# -- the two trainers -----------------------------------------------------------------------------

def timed(run: Callable[[], Any]) -> tuple[Any, float, float]:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    started, cpu_started = time.perf_counter(), time.process_time()
    output = run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return output, time.perf_counter() - started, time.process_time() - cpu_started


def run_ours(build: Callable[[], Any], samples: list[dict], args: argparse.Namespace, workdir: Path) -> dict:
    config = TrainConfig(output_dir=workdir / "ours", epochs=1, max_steps=0, lr=LR, warmup_steps=WARMUP_STEPS,
                         min_lr_ratio=0.0, lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank,
                         micro_batch_size=args.micro_batch, micro_batch_tokens=args.micro_batch * args.max_seq_len,
                         grad_accum=1, max_seq_len=args.max_seq_len, bucket_window=len(samples), save_every=0,
                         seed=SEED, gradient_checkpointing=args.gradient_checkpointing)
    recipe = LoRAFinetuneRecipe(config, ListSampleSource(samples), model=build())
    recipe.setup()
    result, seconds, cpu_seconds = timed(recipe.train)
    shutil.rmtree(workdir / "ours", ignore_errors=True)
    return {"tokens": result.tokens, "seconds": seconds, "cpu_seconds": cpu_seconds, "steps": result.steps,
            "padding_efficiency": result.padding_efficiency, "final_loss": result.final_loss}


def run_trl(build: Callable[[], Any], encoded: list[EncodedSample], args: argparse.Namespace, workdir: Path,
            variant: str, model_config: Any) -> dict:
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    rows = [{"input_ids": sample.input_ids,
             "completion_mask": [0] * sample.num_prompt_tokens + [1] * (len(sample) - sample.num_prompt_tokens)}
            for sample in encoded]
    packing = variant == "packing"
    cuda = torch.cuda.is_available()
    trl_args = SFTConfig(
        output_dir=str(workdir / "trl"), per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP_STEPS,
        max_grad_norm=1.0, weight_decay=0.0, optim="adamw_torch_fused" if cuda else "adamw_torch",
        logging_steps=10_000, save_strategy="no", report_to=[], use_cpu=not cuda, bf16=cuda, seed=SEED,
        dataloader_num_workers=0, disable_tqdm=True, completion_only_loss=True,
        packing=packing, packing_strategy="bfd", padding_free=True,
        # Packing cuts rows at max_length; without packing the samples are already within max_seq_len.
        max_length=args.max_seq_len if packing else None,
        gradient_checkpointing=args.gradient_checkpointing)
    pad_id = model_config.pad_token_id if model_config.pad_token_id is not None else encoded[0].input_ids[-1]
    eos_id = model_config.eos_token_id if isinstance(model_config.eos_token_id, int) else pad_id
    trainer = SFTTrainer(model=build(trl_attention()), args=trl_args, train_dataset=Dataset.from_list(rows),
                         processing_class=id_tokenizer(model_config.vocab_size, pad_id, eos_id),
                         peft_config=lora_config(args))
    output, seconds, cpu_seconds = timed(trainer.train)
    shutil.rmtree(workdir / "trl", ignore_errors=True)
    return {"tokens": sum(len(sample) for sample in encoded), "seconds": seconds, "cpu_seconds": cpu_seconds,
            "steps": output.global_step, "padding_efficiency": 1.0, "final_loss": output.training_loss}


# -- model FLOPs utilisation ----------------------------------------------------------------------

def flops_per_token(model_config: Any, mean_length: float) -> float:
    """Training FLOPs per token for LoRA on a frozen base: forward 2P and backward to the activations
    2P over the P weights of every matmul (lm_head included); no weight gradient for frozen weights,
    and the LoRA matrices are negligible. Attention adds, per layer, 4·s·d forward (QK^T and AV, d =
    heads × head_dim), halved for causal masking, times 3 for forward + backward; s = mean length."""
    hidden, layers = model_config.hidden_size, model_config.num_hidden_layers
    head_dim = getattr(model_config, "head_dim", None) or hidden // model_config.num_attention_heads
    attention_width = model_config.num_attention_heads * head_dim
    kv_width = model_config.num_key_value_heads * head_dim
    per_layer = hidden * (2 * attention_width + 2 * kv_width) + 3 * hidden * model_config.intermediate_size
    matmul_params = layers * per_layer + hidden * model_config.vocab_size
    attention = layers * 3 * (4 * mean_length * attention_width) / 2
    return 4 * matmul_params + attention


def peak_flops(override_tflops: float | None) -> float | None:
    if override_tflops:
        return override_tflops * 1e12
    if not torch.cuda.is_available():
        return None
    name = torch.cuda.get_device_name()
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


# -- main -----------------------------------------------------------------------------------------

def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo", help="model folder or name (ignored with --shape)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="random weights in this model's shape, built from a config (no files needed)")
    parser.add_argument("--random-weights", action="store_true", help="same as --shape demo")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (both trainers)")
    parser.add_argument("--trl-variants", default=",".join(TRL_VARIANTS),
                        help=f"comma-separated TRL settings to run, of {', '.join(TRL_VARIANTS)}")
    parser.add_argument("--one-order", action="store_true", help="ours then TRL only (half the time)")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="both trainers")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the device's bf16 peak, for MFU")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    return parser.parse_args()


def main() -> int:
    args = parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("TQDM_DISABLE", "1")
    variants = [name for name in args.trl_variants.split(",") if name]
    unknown = set(variants) - set(TRL_VARIANTS)
    if unknown:
        raise SystemExit(f"unknown TRL variant(s): {sorted(unknown)}; choose from {TRL_VARIANTS}")
    build, model_config = model_factory(args)
    eos_id = model_config.eos_token_id if isinstance(model_config.eos_token_id, int) else model_config.eos_token_id[0]
    samples = synthetic_samples(args.samples, model_config.vocab_size, eos_id, args.max_seq_len, SEED)
    encoded = encode(samples, eos_id, args.max_seq_len)
    workdir = Path(tempfile.mkdtemp(prefix="ssd-bench-"))
    order = ["ours", *[f"trl-{name}" for name in variants]]
    if not args.one_order:
        order += list(reversed(order))            # A B C C B A: both orders in one run
    runs: list[tuple[str, dict]] = []
    for name in order:
        print(f"[bench] running {name}", file=sys.stderr, flush=True)
        if name == "ours":
            figures = run_ours(build, samples, args, workdir)
        else:
            figures = run_trl(build, encoded, args, workdir, name.removeprefix("trl-"), model_config)
        figures["tokens_per_s"] = figures["tokens"] / figures["seconds"]
        figures["tokens_per_cpu_s"] = figures["tokens"] / figures["cpu_seconds"]
        runs.append((name, figures))
        gc.collect()                              # the last run's model and optimizer state go first
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    shutil.rmtree(workdir, ignore_errors=True)
    report = summarize(runs, args, model_config, encoded)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


def summarize(runs: list[tuple[str, dict]], args: argparse.Namespace, model_config: Any,
              encoded: list[EncodedSample]) -> dict:
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} thread(s)"
    mean_length = sum(len(sample) for sample in encoded) / len(encoded)
    peak = peak_flops(args.peak_tflops)
    per_token = flops_per_token(model_config, mean_length)
    print("\n| run | trainer | steps | tokens | wall s | tokens/s | CPU s | tokens/CPU-s | MFU |\n"
          "|---|---|---|---|---|---|---|---|---|")
    for index, (name, figures) in enumerate(runs, start=1):
        figures["mfu"] = figures["tokens_per_s"] * per_token / peak if peak else None
        mfu = f"{figures['mfu']:.1%}" if figures["mfu"] is not None else "–"
        print(f"| {index} | {name} | {figures['steps']} | {figures['tokens']} | {figures['seconds']:.1f} | "
              f"{figures['tokens_per_s']:.1f} | {figures['cpu_seconds']:.1f} | {figures['tokens_per_cpu_s']:.1f} | "
              f"{mfu} |")

    def best(prefix: str, key: str) -> float:
        return max(figures[key] for name, figures in runs if name.startswith(prefix))

    def mean(prefix: str, key: str) -> float:
        values = [figures[key] for name, figures in runs if name == prefix]
        return sum(values) / len(values)

    trl_names = sorted({name for name, _ in runs if name.startswith("trl-")})
    best_trl = max(trl_names, key=lambda name: mean(name, "tokens_per_s"))
    ratio = mean("ours", "tokens_per_s") / mean(best_trl, "tokens_per_s")
    cpu_ratio = mean("ours", "tokens_per_cpu_s") / mean(best_trl, "tokens_per_cpu_s")
    print(f"\nratio (ours / {best_trl}, the faster TRL setting), means over both orders: {ratio:.2f}x wall, "
          f"{cpu_ratio:.2f}x CPU time; on {device}; {len(encoded)} samples, mean length {mean_length:.0f} tokens")
    print(f"best single runs: ours {best('ours', 'tokens_per_s'):.1f} tok/s, "
          f"TRL {best('trl-', 'tokens_per_s'):.1f} tok/s")
    return {"runs": [{"name": name, **figures} for name, figures in runs], "ratio": ratio,
            "cpu_time_ratio": cpu_ratio, "compared_with": best_trl, "device": device, "mean_length": mean_length,
            "flops_per_token": per_token, "peak_flops": peak, "trl_attention": trl_attention() or "sdpa",
            "args": {k: str(v) for k, v in vars(args).items()}}


if __name__ == "__main__":
    sys.exit(main())

"""Training throughput: this trainer against HF `Trainer` + peft, same data, LoRA config and lengths.

    .venv/bin/python bench/training.py                      # demo model, 80 samples, micro-batch 4 x 256
    .venv/bin/python bench/training.py --samples 160 --micro-batch 8

Both train one epoch over one fixed set of synthetic samples (random token ids with prompt and
completion lengths drawn like SSD's: a rendered problem, then a solution of widely varying length),
with LoRA r=16 on every linear layer, AdamW, cosine schedule, the same micro-batch size and max
sequence length, and the same prompt mask. Throughput counts real (non-padding) tokens per second
of `train()` wall time. Not a test: it prints figures and a markdown block for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.models import resolve_model  # noqa: E402
from trainer.config import LORA_TARGETS_ALL_LINEAR, TrainConfig  # noqa: E402
from trainer.data import IGNORE_INDEX, ListSampleSource, SampleEncoder, eos_token_ids  # noqa: E402
from trainer.recipe import LoRAFinetuneRecipe  # noqa: E402

PROMPT_TOKENS = (40, 120)            # a rendered coding problem, shortened to fit a CPU run
COMPLETION_TOKENS = (20, 220)        # solutions vary a lot in length; many hit the cap
LR = 1e-4
WARMUP_STEPS = 2
SEED = 0


def synthetic_samples(count: int, vocab_size: int, eos_id: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    samples = []
    for index in range(count):
        prompt = [rng.randrange(3, vocab_size) for _ in range(rng.randint(*PROMPT_TOKENS))]
        completion = [rng.randrange(3, vocab_size) for _ in range(rng.randint(*COMPLETION_TOKENS))] + [eos_id]
        samples.append({"cursor": index + 1, "prompt_token_ids": prompt, "completion_token_ids": completion})
    return samples


# SmolLM2-135M's shape, for machines that lack the model files: speed does not depend on the weights.
DEMO_SHAPE = dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                  num_attention_heads=9, num_key_value_heads=3, head_dim=64, max_position_embeddings=8192,
                  tie_word_embeddings=True, bos_token_id=1, eos_token_id=2, pad_token_id=2)


def write_random_demo(folder: Path) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    LlamaForCausalLM(LlamaConfig(**DEMO_SHAPE)).save_pretrained(folder)
    return str(folder)


def load_model(path: str):
    from transformers import AutoModelForCausalLM
    torch.manual_seed(SEED)
    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)


def run_ours(path: str, samples: list[dict], args, workdir: Path) -> dict:
    config = TrainConfig(model=path, output_dir=workdir / "ours", epochs=1, max_steps=0, lr=LR,
                         warmup_steps=WARMUP_STEPS, lora_rank=args.lora_rank, lora_alpha=2.0 * args.lora_rank,
                         micro_batch_size=args.micro_batch, micro_batch_tokens=args.micro_batch * args.max_seq_len,
                         grad_accum=1, max_seq_len=args.max_seq_len, bucket_window=len(samples), save_every=0,
                         seed=SEED, pad_to_multiple=args.pad_to_multiple)
    recipe = LoRAFinetuneRecipe(config, ListSampleSource(samples), model=load_model(path))
    recipe.setup()
    started, cpu_started = time.perf_counter(), time.process_time()
    result = recipe.train()
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    in_steps = sum(line["tokens"] / line["tokens_per_s"] for line in lines)
    print(f"ours: {in_steps:.1f}s inside optimizer steps, {elapsed - in_steps:.1f}s outside "
          "(data, logging, final checkpoint + export)", file=sys.stderr)
    return {"tokens": result.tokens, "seconds": elapsed, "cpu_seconds": cpu_seconds, "steps": result.steps,
            "seconds_in_steps": in_steps,
            "padding_efficiency": result.padding_efficiency, "final_loss": result.final_loss}


def run_hf_trainer(path: str, samples: list[dict], args, workdir: Path) -> dict:
    from peft import LoraConfig, get_peft_model
    from transformers import Trainer, TrainingArguments

    model = load_model(path)
    encoder = SampleEncoder(eos_ids=eos_token_ids(None, model.config), max_seq_len=args.max_seq_len)
    rows = [{"input_ids": e.input_ids, "labels": e.labels} for e in map(encoder, samples)]
    pad_id = encoder.eos_ids[0]
    padding = {"real": 0, "padded": 0}

    def collate(batch):                  # pad to the longest in the batch, like DataCollatorForSeq2Seq
        longest = max(len(row["input_ids"]) for row in batch)
        padding["real"] += sum(len(row["input_ids"]) for row in batch)
        padding["padded"] += longest * len(batch)
        def pad(seq, value):
            return seq + [value] * (longest - len(seq))
        return {"input_ids": torch.tensor([pad(r["input_ids"], pad_id) for r in batch]),
                "labels": torch.tensor([pad(r["labels"], IGNORE_INDEX) for r in batch]),
                "attention_mask": torch.tensor([pad([1] * len(r["input_ids"]), 0) for r in batch])}

    lora = LoraConfig(r=args.lora_rank, lora_alpha=2.0 * args.lora_rank, lora_dropout=0.0,
                      target_modules=list(LORA_TARGETS_ALL_LINEAR), bias="none", task_type="CAUSAL_LM")
    model = get_peft_model(model, lora)
    training_args = TrainingArguments(
        output_dir=str(workdir / "hf"), per_device_train_batch_size=args.micro_batch, gradient_accumulation_steps=1,
        num_train_epochs=1, learning_rate=LR, lr_scheduler_type="cosine", warmup_steps=WARMUP_STEPS,
        max_grad_norm=1.0, weight_decay=0.0, logging_steps=10_000, save_strategy="no", report_to=[],
        use_cpu=not torch.cuda.is_available(), bf16=torch.cuda.is_available(), seed=SEED,
        remove_unused_columns=False, dataloader_num_workers=0, disable_tqdm=True)
    trainer = Trainer(model=model, args=training_args, train_dataset=rows, data_collator=collate)
    started, cpu_started = time.perf_counter(), time.process_time()
    output = trainer.train()
    elapsed, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {"tokens": padding["real"], "seconds": elapsed, "cpu_seconds": cpu_seconds, "steps": output.global_step,
            "padding_efficiency": padding["real"] / padding["padded"], "final_loss": output.training_loss}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="demo")
    parser.add_argument("--samples", type=int, default=80)
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--max-seq-len", type=int, default=256)
    parser.add_argument("--lora-rank", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--ours-first", action="store_true", help="run our trainer before HF's")
    parser.add_argument("--pad-to-multiple", type=int, default=0, help="our trainer's setting (0 = auto)")
    parser.add_argument("--random-weights", action="store_true",
                        help="the demo model's shape with random weights (no model files needed)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    workdir = Path(tempfile.mkdtemp(prefix="ssd-bench-"))
    path = write_random_demo(workdir / "model") if args.random_weights else resolve_model(args.model)
    from transformers import AutoConfig
    model_config = AutoConfig.from_pretrained(path)
    samples = synthetic_samples(args.samples, model_config.vocab_size, eos_token_ids(None, model_config)[0], SEED)
    if args.ours_first:
        ours = run_ours(path, samples, args, workdir)
        hf = run_hf_trainer(path, samples, args, workdir)
    else:
        hf = run_hf_trainer(path, samples, args, workdir)
        ours = run_ours(path, samples, args, workdir)
    shutil.rmtree(workdir, ignore_errors=True)
    for figures in (ours, hf):
        figures["tokens_per_s"] = figures["tokens"] / figures["seconds"]
        # CPU time is far less disturbed than wall time when other jobs share the cores.
        figures["tokens_per_cpu_s"] = figures["tokens"] / figures["cpu_seconds"]
    ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
    cpu_ratio = ours["tokens_per_cpu_s"] / hf["tokens_per_cpu_s"]
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {args.threads} threads"
    report = {"ours": ours, "hf_trainer": hf, "ratio": ratio, "cpu_time_ratio": cpu_ratio, "device": device}
    print(json.dumps(report, indent=2))
    print("\n| trainer | steps | tokens | wall s | tokens/s | CPU s | tokens/CPU-s | padding efficiency |\n"
          "|---|---|---|---|---|---|---|---|")
    for name, figures in (("ssd trainer", ours), ("HF Trainer + peft", hf)):
        print(f"| {name} | {figures['steps']} | {figures['tokens']} | {figures['seconds']:.1f} | "
              f"{figures['tokens_per_s']:.1f} | {figures['cpu_seconds']:.1f} | {figures['tokens_per_cpu_s']:.1f} | "
              f"{figures['padding_efficiency']:.1%} |")
    print(f"\nratio (ssd / HF): {ratio:.2f}x wall, {cpu_ratio:.2f}x CPU time, on {device}")
    if args.json:
        args.json.write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())

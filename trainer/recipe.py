"""The SSD LoRA fine-tuning recipe: plain cross-entropy on the model's own samples.

    from trainer import TrainConfig, train, ListSampleSource
    result = train(TrainConfig(model="demo", output_dir="runs/r1", max_steps=20), ListSampleSource(samples))
    print(result.adapter_dir, result.final_loss)
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from client.api import SamplerClient
from common.config import ConfigError, to_dict
from common.jsonl import read_jsonl, write_jsonl
from common.protocol import ADAPTER_WEIGHTS_FILE
from trainer import checkpoint as ckpt
from trainer.config import TrainConfig
from trainer.data import (
    IGNORE_INDEX,
    DataPosition,
    HttpSampleSource,
    JsonlSampleSource,
    MicroBatch,
    MicroBatchStream,
    SampleEncoder,
    SampleSource,
    eos_token_ids,
)

ADAPTER_DIRNAME = "adapter"
CHECKPOINTS_DIRNAME = "checkpoints"
METRICS_FILENAME = "metrics.jsonl"
STATE_FILENAME = "trainer_state.json"
OPTIM_FILENAME = "optim_rng.pt"
GPU_PAD_TO_MULTIPLE = 8             # bf16 kernels and SDPA's fast paths want lengths aligned to 8
# Configs whose logits are not a plain lm_head(hidden): these take the model's full forward.
_LOGIT_TRANSFORM_ATTRS = ("final_logit_softcapping", "logit_scale", "output_multiplier_scale")


@dataclass
class TrainResult:
    adapter_dir: Path                # adapter_config.json + adapter_model.safetensors
    steps: int
    final_loss: float
    metrics_path: Path
    checkpoint_dir: Path | None      # the newest complete checkpoint
    tokens: int                      # non-padding tokens trained on
    padding_efficiency: float        # real tokens / padded tokens, over this process's batches
    pushed: dict[str, Any] | None    # the server's answer to the last push, if any


def lr_multiplier(step: int, *, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    """Linear warm-up to 1, then cosine decay to min_lr_ratio at total_steps. `step` counts
    completed optimizer steps, so step 0 is the first update (and gets a non-zero lr)."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class LoRAFinetuneRecipe:
    """Fine-tunes a LoRA adapter on SSD samples, one readable recipe.

    Features:
      - Data: samples from the service's pull API (trains while the job still samples), a JSONL
        export, or a list. Uses the service's token ids; re-tokenizes text only when ids are absent.
      - Loss: cross-entropy on completion tokens only (prompt labels are -100), EOS always a target;
        mean over all target tokens of the optimizer step, exact under gradient accumulation.
        On CPU the lm_head runs only on target positions, skipping the prompt's vocabulary matmul.
      - Batching: length-bucketed micro-batches within a token budget; padding efficiency reported.
      - Optimiser: AdamW on the LoRA weights, linear warm-up then cosine decay to min_lr_ratio,
        gradient accumulation, gradient-norm clipping.
      - Precision: bf16 autocast on CUDA, float32 on CPU. Optional gradient checkpointing.
      - Observability: tqdm bar (step, loss, lr, tok/s); metrics.jsonl with one line per step.
      - Checkpoints: crash-safe (temp folder, fsync, rename, COMPLETE marker), keep the last K.
        Resume restores adapter, optimizer, scheduler, RNG states, step and data position, so a
        `kill -9` + resume ends with the same adapter as an uninterrupted run.
      - Output: output_dir/adapter (peft format), replaced atomically; optional push to the
        sampling service at the end and every push_every steps.
    """

    def __init__(self, config: TrainConfig, source: SampleSource | None = None, *, model: Any = None,
                 tokenizer: Any = None, client: Any = None):
        self.config = config
        self.source = source
        self.model = model
        self.tokenizer = tokenizer
        self.client = client
        self.output_dir = Path(config.output_dir)
        self.checkpoints_dir = self.output_dir / CHECKPOINTS_DIRNAME
        self.metrics_path = self.output_dir / METRICS_FILENAME
        self.step = 0
        self.position = DataPosition()
        self.last_loss = float("nan")
        self.tokens_seen = 0
        self.last_push: dict[str, Any] | None = None

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Fail on a missing sample source before paying for loading the model.
        if self.source is None:
            self.source = _source_from_config(self.config, self.client)
        resume_from = self._checkpoint_to_resume()
        seed_everything(self.config.seed)       # before LoRA init, which draws from torch's RNG
        self._setup_model()
        self._setup_data()
        self.trainable = [param for param in self.model.parameters() if param.requires_grad]
        # The fused kernel is one launch for every LoRA tensor instead of several per tensor.
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                           fused=self.device.type == "cuda")
        self.total_steps = self._total_steps(resume_from)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(
            step, warmup_steps=self.config.warmup_steps, total_steps=self.total_steps,
            min_lr_ratio=self.config.min_lr_ratio))
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        self._trim_metrics()

    def _checkpoint_to_resume(self) -> Path | None:
        if not self.config.resume:
            if ckpt.complete_checkpoints(self.checkpoints_dir):
                raise ConfigError(f"{self.checkpoints_dir} already holds checkpoints; pass --resume to "
                                  "continue that run, or choose another output_dir")
            return None
        ckpt.remove_incomplete(self.checkpoints_dir)
        latest = ckpt.latest_checkpoint(self.checkpoints_dir)
        if latest is None:
            _log(f"resume: no complete checkpoint in {self.checkpoints_dir}; starting from step 0")
        return latest

    def _setup_model(self) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if self.model is None:
            self.model, loaded_tokenizer = _load_base_model(self.config.model)
            self.tokenizer = self.tokenizer or loaded_tokenizer
        if self.config.gradient_checkpointing:
            self.model.config.use_cache = False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not isinstance(self.model, PeftModel):
            lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,
                              lora_dropout=self.config.lora_dropout,
                              target_modules=list(self.config.target_modules), bias="none", task_type="CAUSAL_LM")
            self.model = get_peft_model(self.model, lora)
        self.model.to(self.device)
        self.model.train()
        self.causal_lm = self.model.get_base_model()
        # On a CPU the vocabulary matmul is a large share of the compute, so skipping it on prompt
        # and padding positions pays. On a GPU it measured no faster than the plain forward (the
        # gather and its backward cost what the skipped FLOPs saved), so the GPU keeps the plain path.
        self.fast_loss = self.device.type == "cpu" and _supports_target_only_logits(self.causal_lm)

    def _setup_data(self) -> None:
        config = self.config
        eos_ids = eos_token_ids(self.tokenizer, self.causal_lm.config)
        encoder = SampleEncoder(eos_ids=eos_ids, max_seq_len=config.max_seq_len, tokenizer=self.tokenizer)
        self.stream = MicroBatchStream(
            self.source, encoder, window=config.bucket_window, max_sequences=config.micro_batch_size,
            max_padded_tokens=config.micro_batch_tokens, seed=config.seed, pad_id=eos_ids[0],
            epochs=None if config.max_steps else config.epochs, pad_to_multiple=self._pad_to_multiple())

    def _pad_to_multiple(self) -> int:
        if self.config.pad_to_multiple:
            return self.config.pad_to_multiple
        return GPU_PAD_TO_MULTIPLE if self.device.type == "cuda" else 1

    def _total_steps(self, resume_from: Path | None) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        if resume_from is not None:       # the run's own count: no second pass over a live job
            return json.loads((resume_from / STATE_FILENAME).read_text())["total_steps"]
        micro_batches = self.config.epochs * self.stream.micro_batches_per_epoch()
        if micro_batches == 0:
            raise ValueError("the sample source yielded no samples")
        return math.ceil(micro_batches / self.config.grad_accum)

    # -- train --------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        config = self.config
        batches = self.stream.iterate(self.position)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True)
        try:
            while self.step < self.total_steps:
                step_batches = self._next_step_batches(batches)
                if not step_batches:
                    break                  # the data ran out before max_steps (epochs mode rounding)
                metrics = self._optimizer_step(step_batches)
                self._log_metrics(metrics, bar)
                if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if config.push_every and self.step % config.push_every == 0 and self.step < self.total_steps:
                    self._push(final=False)
        finally:
            bar.close()
        final_checkpoint = self.save_checkpoint()
        adapter_dir = self.export_adapter()
        if config.push:
            self._push(final=True)
        _log(f"done: {self.step} steps, final loss {self.last_loss:.4f}, padding efficiency "
             f"{self.stream.stats.efficiency:.1%}, adapter at {adapter_dir}")
        return TrainResult(adapter_dir=adapter_dir, steps=self.step, final_loss=self.last_loss,
                           metrics_path=self.metrics_path, checkpoint_dir=final_checkpoint,
                           tokens=self.tokens_seen, padding_efficiency=self.stream.stats.efficiency,
                           pushed=self.last_push)

    def _next_step_batches(self, batches: Iterator[tuple[MicroBatch, DataPosition]]) -> list[MicroBatch]:
        step_batches = []
        for batch, position in batches:
            step_batches.append(batch)
            self.position = position
            if len(step_batches) == self.config.grad_accum:
                break
        return step_batches

    def _optimizer_step(self, step_batches: list[MicroBatch]) -> dict[str, float]:
        started = time.perf_counter()
        # Every micro-batch is divided by the step's total target count, so the accumulated
        # gradient is the gradient of the mean over all target tokens, whatever the batch sizes.
        total_targets = max(1, sum(batch.num_targets for batch in step_batches))
        loss_sum = torch.zeros((), device=self.device)
        for batch in step_batches:
            with self._autocast():
                batch_loss_sum = self._loss_sum(batch)
            (batch_loss_sum / total_targets).backward()
            loss_sum += batch_loss_sum.detach()     # stays on the device: no sync per micro-batch
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # The step's single host-device sync: the GPU runs ahead of Python until here.
        loss_sum_value, grad_norm_value = torch.stack([loss_sum, grad_norm.float()]).tolist()
        self.step += 1
        self.last_loss = loss_sum_value / total_targets
        tokens = sum(batch.num_tokens for batch in step_batches)
        self.tokens_seen += tokens
        elapsed = time.perf_counter() - started
        return {"step": self.step, "loss": self.last_loss, "lr": lr, "grad_norm": grad_norm_value,
                "tokens": tokens, "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                "target_tokens": total_targets, "padding_efficiency": self.stream.stats.efficiency}

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()       # CPUs here have no fast bf16: stay in float32

    def _loss_sum(self, batch: MicroBatch) -> torch.Tensor:
        """Summed cross-entropy over the batch's target tokens."""
        # Target positions are found on the CPU, where the labels live: a boolean mask applied on
        # the GPU would force a sync. Position t predicts token t+1, hence the shift.
        shifted_labels = batch.labels[:, 1:]
        rows, cols = (shifted_labels != IGNORE_INDEX).nonzero(as_tuple=True)
        targets = shifted_labels[rows, cols].to(self.device, non_blocking=True)
        rows, cols = rows.to(self.device, non_blocking=True), cols.to(self.device, non_blocking=True)
        input_ids = batch.input_ids.to(self.device, non_blocking=True)
        attention_mask = batch.attention_mask.to(self.device, non_blocking=True)
        if self.fast_loss:
            hidden = self.causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = self.causal_lm.get_output_embeddings()(hidden[rows, cols])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]
        return F.cross_entropy(logits.float(), targets, reduction="sum")

    def _log_metrics(self, metrics: dict[str, float], bar: tqdm) -> None:
        with open(self.metrics_path, "a") as handle:
            handle.write(json.dumps(metrics) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}")

    def _trim_metrics(self) -> None:
        """Drop metric lines past the resumed step: those steps are about to be trained again."""
        if self.metrics_path.exists():
            write_jsonl(self.metrics_path, [row for row in read_jsonl(self.metrics_path) if row["step"] <= self.step])

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        existing = self.checkpoints_dir / ckpt.step_dir_name(self.step)
        if ckpt.is_complete(existing):
            return existing                # already saved at this step (e.g. save_every hit the end)
        path = ckpt.write_checkpoint(self.checkpoints_dir, self.step, self._write_checkpoint_contents,
                                     keep=self.config.keep_checkpoints)
        return path

    def _write_checkpoint_contents(self, folder: Path) -> None:
        self.model.save_pretrained(folder / ADAPTER_DIRNAME)
        torch.save({"optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
                    "rng": ckpt.capture_rng_state()}, folder / OPTIM_FILENAME)
        state = {"step": self.step, "total_steps": self.total_steps, "last_loss": self.last_loss,
                 "tokens_seen": self.tokens_seen, "position": vars(self.position),
                 "config": to_dict(self.config)}
        (folder / STATE_FILENAME).write_text(json.dumps(state, indent=2, default=str))

    def _load_checkpoint(self, folder: Path) -> None:
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        weights = load_file(str(folder / ADAPTER_DIRNAME / ADAPTER_WEIGHTS_FILE), device=str(self.device))
        result = set_peft_model_state_dict(self.model, weights)
        if getattr(result, "unexpected_keys", None):
            raise ValueError(f"checkpoint {folder} does not fit this LoRA config: "
                             f"unexpected keys {result.unexpected_keys[:3]}...")
        # Our own file, written by this recipe: full unpickling is needed for the RNG states. Load on
        # the CPU: RNG states must stay CPU ByteTensors; the optimizer moves its state to the params.
        extra = torch.load(folder / OPTIM_FILENAME, map_location="cpu", weights_only=False)
        self.optimizer.load_state_dict(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        ckpt.restore_rng_state(extra["rng"])
        state = json.loads((folder / STATE_FILENAME).read_text())
        self.step = state["step"]
        self.last_loss = state["last_loss"]
        self.tokens_seen = state["tokens_seen"]
        self.position = DataPosition(**state["position"])
        _log(f"resumed from {folder} at step {self.step}")

    # -- output -------------------------------------------------------------------------------------
    def export_adapter(self) -> Path:
        target = self.output_dir / ADAPTER_DIRNAME
        staged = self.output_dir / f"{ckpt.TMP_PREFIX}{ADAPTER_DIRNAME}-{os.getpid()}"
        self.model.save_pretrained(staged)
        ckpt.replace_dir_atomically(staged, target)
        return target

    def _push(self, *, final: bool) -> None:
        adapter_dir = self.export_adapter()
        try:
            self.last_push = push_adapter(self.config.sampler_url, self.config.adapter_name, adapter_dir,
                                          client=self.client)
        except Exception as exc:  # noqa: BLE001 - a mid-run push failure must not lose the training
            if final:
                raise
            _log(f"warning: push at step {self.step} failed ({exc}); training goes on")
            return
        _log(f"step {self.step}: pushed adapter; now serving {self.last_push.get('alias')} "
             f"(version {self.last_push.get('version')})")


def push_adapter(sampler_url: str, name: str, adapter_dir: Path, *, client: Any = None) -> dict[str, Any]:
    """Upload an adapter folder (multipart) and return the server's {name, version, alias, ...}."""
    if client is not None:
        return client.upload_adapter(name, adapter_dir)
    with SamplerClient(sampler_url) as sampler:
        return sampler.upload_adapter(name, adapter_dir)


def _load_base_model(name: str) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.models import resolve_model

    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        # The pull API carries token ids, so a tokenizer is only needed for text-only samples.
        _log(f"no tokenizer at {path} ({type(exc).__name__}); training from token ids only")
        tokenizer = None
    return model, tokenizer


def _supports_target_only_logits(causal_lm: Any) -> bool:
    config = causal_lm.config
    has_parts = callable(getattr(causal_lm, "get_decoder", None)) and causal_lm.get_output_embeddings() is not None
    return has_parts and not any(getattr(config, attr, None) for attr in _LOGIT_TRANSFORM_ATTRS)


def _source_from_config(config: TrainConfig, client: Any) -> SampleSource:
    if config.samples_file is not None:
        return JsonlSampleSource(config.samples_file)
    if config.job_id is not None:
        if client is None:
            client = SamplerClient(config.sampler_url)
        return HttpSampleSource(client, config.job_id, page_size=config.page_size,
                               stall_timeout_s=config.stall_timeout_s)
    raise ConfigError("no samples: set job_id or samples_file, or pass a SampleSource to train()")


def _log(message: str) -> None:
    print(f"[trainer] {message}", file=sys.stderr, flush=True)


def train(config: TrainConfig, source: SampleSource | None = None, *, model: Any = None,
          tokenizer: Any = None, client: Any = None) -> TrainResult:
    """Train a LoRA adapter and return where it is. `model` (an HF causal LM, or a PeftModel)
    replaces loading `config.model`; it is wrapped with LoRA in place. `source` replaces the one
    named by config.job_id / config.samples_file. `client` replaces SamplerClient(config.sampler_url)."""
    recipe = LoRAFinetuneRecipe(config, source, model=model, tokenizer=tokenizer, client=client)
    recipe.setup()
    return recipe.train()

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
from trainer import distributed
from trainer.config import PARALLEL_FSDP, TrainConfig
from trainer.data import (
    IGNORE_INDEX,
    DataPosition,
    DataStats,
    HttpSampleSource,
    JsonlSampleSource,
    MicroBatch,
    MicroBatchStream,
    PlannedBatch,
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
    padding_efficiency: float        # real tokens / padded tokens, over the run's micro-batches
    pushed: dict[str, Any] | None    # the server's answer to the last push, if any
    data_stats: dict[str, int] | None = None   # samples trained on, truncated, skipped, cut at max_tokens
    world_size: int = 1              # processes that trained (torchrun ranks)


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


class TargetLoss(torch.nn.Module):
    """The summed cross-entropy over a micro-batch's target positions. A module, so that DDP and
    FSDP wrap the whole forward: their hooks run on `forward`, not on the submodules called inside."""

    def __init__(self, model: Any, fast: bool):
        super().__init__()
        self.model = model               # the PeftModel
        self.fast = fast

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: torch.Tensor,
                cols: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        causal_lm = self.model.get_base_model()
        if self.fast:
            hidden = causal_lm.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            logits = causal_lm.get_output_embeddings()(hidden[rows, cols])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention_mask).logits[rows, cols]
        return F.cross_entropy(logits.float(), targets, reduction="sum")


class LoRAFinetuneRecipe:
    """Fine-tunes a LoRA adapter on SSD samples, one readable recipe.

    Features:
      - Data: samples from the service's pull API (trains while the job still samples), a JSONL
        export, or a list. Uses the service's token ids; re-tokenizes text only when ids are absent.
      - Semantics (as the paper and TRL's SSD trainer): a sample cut at the sampler's max_tokens gets
        no EOS target; a sample longer than max_seq_len is skipped (the prompt is never cut). Both
        are options; skips and cuts are counted in metrics.jsonl and the result.
      - Loss: cross-entropy on completion tokens only (prompt labels are -100); mean over all
        target tokens of the optimizer step, exact under gradient accumulation and across ranks.
        On CPU the lm_head runs only on target positions, skipping the prompt's vocabulary matmul.
      - Batching: length-bucketed micro-batches within a token budget; padding efficiency reported.
      - Optimiser: AdamW on the LoRA weights, linear warm-up then cosine decay to min_lr_ratio,
        gradient accumulation, gradient-norm clipping.
      - Precision: bf16 autocast on CUDA, float32 on CPU. Optional gradient checkpointing.
      - Several processes under torchrun: DDP (or FSDP, `parallel: fsdp`); every rank plans each
        step's micro-batches and trains on its share (micro-batch i goes to rank i mod world size);
        rank 0 alone writes metrics, checkpoints and the adapter, and pushes.
      - Observability: tqdm bar (step, loss, lr, tok/s); metrics.jsonl with one line per step.
      - Checkpoints: crash-safe (temp folder, fsync, rename, COMPLETE marker), keep the last K.
        Resume restores adapter, optimizer, scheduler, RNG states, step, data position and counts,
        so a `kill -9` + resume ends with the same adapter as an uninterrupted run.
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
        self.dist = distributed.DistContext()
        self.fsdp = False

    # -- setup --------------------------------------------------------------------------------------
    def setup(self) -> None:
        self.dist = distributed.init(self.config.dist_backend)
        self.device = self.dist.device()
        self.output_dir.mkdir(parents=True, exist_ok=True)
        # Fail on a missing sample source before paying for loading the model.
        if self.source is None:
            self.source = _source_from_config(self.config, self.client)
        resume_from = self._checkpoint_to_resume()
        seed_everything(self.config.seed)       # before LoRA init, which draws from torch's RNG: same on every rank
        self._setup_model()
        if self.dist.enabled:                   # dropout masks differ between ranks, as their data does
            torch.manual_seed(self.config.seed + self.dist.rank)
        self._setup_data()
        self.trainable = [param for param in self.model.parameters() if param.requires_grad]
        # The fused kernel is one launch for every LoRA tensor instead of several per tensor. FSDP's
        # sharded (DTensor) weights keep the default kernel, the one its tests cover.
        self.optimizer = torch.optim.AdamW(self.trainable, lr=self.config.lr, weight_decay=self.config.weight_decay,
                                           fused=self.device.type == "cuda" and not self.fsdp)
        self.total_steps = self._total_steps(resume_from)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda step: lr_multiplier(
            step, warmup_steps=self.config.warmup_steps, total_steps=self.total_steps,
            min_lr_ratio=self.config.min_lr_ratio))
        if resume_from is not None:
            self._load_checkpoint(resume_from)
        if self.dist.is_main:
            self._trim_metrics()

    def _checkpoint_to_resume(self) -> Path | None:
        if not self.config.resume:
            if ckpt.complete_checkpoints(self.checkpoints_dir):
                raise ConfigError(f"{self.checkpoints_dir} already holds checkpoints; pass --resume to "
                                  "continue that run, or choose another output_dir")
            return None
        if self.dist.is_main:
            ckpt.remove_incomplete(self.checkpoints_dir)
        self.dist.barrier()                     # every rank then sees the same newest checkpoint
        latest = ckpt.latest_checkpoint(self.checkpoints_dir)
        if latest is None:
            self._log(f"resume: no complete checkpoint in {self.checkpoints_dir}; starting from step 0")
        return latest

    def _setup_model(self) -> None:
        from peft import LoraConfig, PeftModel, get_peft_model

        if self.model is None:
            self.model, loaded_tokenizer = _load_base_model(self.config.model, getattr(torch, self.config.base_dtype))
            self.tokenizer = self.tokenizer or loaded_tokenizer
        if self.config.gradient_checkpointing:
            self.model.config.use_cache = False
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if not isinstance(self.model, PeftModel):
            lora = LoraConfig(r=self.config.lora_rank, lora_alpha=self.config.lora_alpha,  # type: ignore[arg-type]
                              lora_dropout=self.config.lora_dropout,
                              target_modules=list(self.config.target_modules), bias="none", task_type="CAUSAL_LM")
            self.model = get_peft_model(self.model, lora)
            if self.config.init_adapter is not None:
                self._start_from_adapter(self.config.init_adapter)
        self.model.train()
        self.causal_lm = self.model.get_base_model()
        # On a CPU the vocabulary matmul is a large share of the compute, so skipping it on prompt
        # and padding positions pays. On a GPU it measured no faster than the plain forward (the
        # gather and its backward cost what the skipped FLOPs saved), so the GPU keeps the plain path.
        self.fast_loss = self.device.type == "cpu" and _supports_target_only_logits(self.causal_lm)
        self.loss_module = self._wrap(TargetLoss(self.model, self.fast_loss))

    def _wrap(self, loss_module: TargetLoss) -> torch.nn.Module:
        """One process: the module as is. torchrun: DDP, or FSDP over the decoder layers."""
        self.fsdp = self.dist.enabled and self.config.parallel == PARALLEL_FSDP
        if self.fsdp:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

            mesh = init_device_mesh(self.device.type, (self.dist.world_size,))
            # A bfloat16 base with float32 LoRA weights: gather and compute everything in bfloat16,
            # as autocast would, and reduce the LoRA gradients in float32 into their float32 shards.
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
                if self.config.base_dtype == "bfloat16" else MixedPrecisionPolicy()
            # Each decoder layer is gathered just before it runs and freed after: one layer's full
            # weights at a time, instead of the whole model, is what lets a large model fit.
            for layer in getattr(self.causal_lm.get_decoder(), "layers", []):
                fully_shard(layer, mesh=mesh, mp_policy=policy)
            fully_shard(loss_module, mesh=mesh, mp_policy=policy)   # moves the (sharded) weights to the device
            return loss_module
        loss_module.to(self.device)
        if not self.dist.enabled:
            return loss_module
        from torch.nn.parallel import DistributedDataParallel

        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(loss_module, device_ids=device_ids)

    def _setup_data(self) -> None:
        config = self.config
        eos_ids = eos_token_ids(self.tokenizer, self.causal_lm.config)
        encoder = SampleEncoder(eos_ids=eos_ids, max_seq_len=config.max_seq_len, tokenizer=self.tokenizer,
                                overlong=config.overlong, eos_on_truncated=config.eos_on_truncated)
        assert self.source is not None          # setup() resolved it
        self.stream = MicroBatchStream(
            self.source, encoder, window=config.bucket_window, max_sequences=config.micro_batch_size,
            max_padded_tokens=config.micro_batch_tokens, seed=config.seed, pad_id=eos_ids[0],
            epochs=None if config.max_steps else config.epochs, pad_to_multiple=self._pad_to_multiple())

    def _pad_to_multiple(self) -> int:
        if self.config.pad_to_multiple:
            return self.config.pad_to_multiple
        return GPU_PAD_TO_MULTIPLE if self.device.type == "cuda" else 1

    @property
    def micro_batches_per_step(self) -> int:
        """Every rank trains grad_accum micro-batches per step, so a step takes this many in all."""
        return self.config.grad_accum * self.dist.world_size

    def _total_steps(self, resume_from: Path | None) -> int:
        if self.config.max_steps:
            return self.config.max_steps
        if resume_from is not None:       # the run's own count: no second pass over a live job
            return json.loads((resume_from / STATE_FILENAME).read_text())["total_steps"]
        micro_batches = self.config.epochs * self.stream.micro_batches_per_epoch()
        if micro_batches == 0:
            raise ValueError("the sample source yielded no samples")
        return math.ceil(micro_batches / self.micro_batches_per_step)

    # -- train --------------------------------------------------------------------------------------
    def train(self) -> TrainResult:
        config = self.config
        plans = self.stream.iterate_plans(self.position)
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train", unit="step", dynamic_ncols=True,
                   disable=True if not self.dist.is_main else None)
        try:
            while self.step < self.total_steps:
                step_plans = self._next_step_plans(plans)
                if not step_plans:
                    break                  # the data ran out before max_steps (epochs mode rounding)
                metrics = self._optimizer_step(step_plans)
                self._log_metrics(metrics, bar)
                if config.save_every and self.step % config.save_every == 0 and self.step < self.total_steps:
                    self.save_checkpoint()
                if config.push_every and self.step % config.push_every == 0 and self.step < self.total_steps:
                    self._push(final=False)
        finally:
            bar.close()
        final_checkpoint = self.save_checkpoint()
        adapter_dir = self.export_adapter()
        if config.push and self.dist.is_main:
            self._push(final=True, export=False)
        stats = self.stream.stats
        self._log(f"done: {self.step} steps, final loss {self.last_loss:.4f}, padding efficiency "
                  f"{stats.efficiency:.1%}, {stats.samples} samples trained on ({stats.skipped_samples} skipped "
                  f"as longer than max_seq_len, {stats.truncated_samples} cut, {stats.max_tokens_samples} cut at "
                  f"the sampler's max_tokens), adapter at {adapter_dir}")
        return TrainResult(adapter_dir=adapter_dir, steps=self.step, final_loss=self.last_loss,
                           metrics_path=self.metrics_path, checkpoint_dir=final_checkpoint,
                           tokens=self.tokens_seen, padding_efficiency=stats.efficiency,
                           pushed=self.last_push, data_stats=stats.counts(), world_size=self.dist.world_size)

    def close(self) -> None:
        """Leave the process group (torchrun); nothing to do for one process."""
        distributed.shutdown(self.dist)

    def _next_step_plans(self, plans: Iterator[tuple[PlannedBatch, DataPosition]]) -> list[PlannedBatch]:
        """The step's micro-batches, all ranks' together: every rank reads the same stream."""
        step_plans = []
        for plan, position in plans:
            step_plans.append(plan)
            self.position = position
            if len(step_plans) == self.micro_batches_per_step:
                break
        return step_plans

    def _optimizer_step(self, step_plans: list[PlannedBatch]) -> dict[str, float]:
        started = time.perf_counter()
        for plan in step_plans:
            self.stream.stats.add(plan, self.stream.pad_to_multiple)
        # Every micro-batch is divided by the step's total target count (all ranks'), so the
        # accumulated gradient is the gradient of the mean over all target tokens, whatever the batch
        # sizes. DDP and FSDP average gradients over ranks, hence the world-size factor.
        total_targets = max(1, sum(_num_targets(plan) for plan in step_plans))
        scale = self.dist.world_size / total_targets
        mine = step_plans[self.dist.rank::self.dist.world_size]
        # A rank left without a micro-batch (the data's last step) still joins the gradient
        # all-reduce, with a weight of zero.
        slots, weight = (mine, 1.0) if mine else (step_plans[:1], 0.0)
        loss_sum = torch.zeros((), device=self.device)
        for index, plan in enumerate(slots):
            with self._gradient_sync(index == len(slots) - 1):
                with self._autocast():
                    batch_loss_sum = self._loss_sum(self.stream.collate(plan))
                (batch_loss_sum * (scale * weight)).backward()
            loss_sum += batch_loss_sum.detach() * weight     # stays on the device: no sync per micro-batch
        max_norm = self.config.grad_clip if self.config.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, max_norm)
        if hasattr(grad_norm, "full_tensor"):                # FSDP: a DTensor over the ranks' shards
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        # The step's single host-device sync: the GPU runs ahead of Python until here.
        loss_sum_value, grad_norm_value = torch.stack([self.dist.sum_(loss_sum), grad_norm.float()]).tolist()
        self.step += 1
        self.last_loss = loss_sum_value / total_targets
        tokens = sum(len(sample) for plan in step_plans for sample in plan.samples)
        self.tokens_seen += tokens
        elapsed = time.perf_counter() - started
        return {"step": self.step, "loss": self.last_loss, "lr": lr, "grad_norm": grad_norm_value,
                "tokens": tokens, "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
                "target_tokens": total_targets, "padding_efficiency": self.stream.stats.efficiency,
                **self.stream.stats.counts(), "world_size": self.dist.world_size}

    def _gradient_sync(self, sync: bool):
        """All-reduce gradients only on a rank's last micro-batch of the step (one collective per step)."""
        if not self.dist.enabled:
            return contextlib.nullcontext()
        if self.fsdp:
            self.loss_module.set_requires_gradient_sync(sync)
            return contextlib.nullcontext()
        return contextlib.nullcontext() if sync else self.loss_module.no_sync()

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
        self._target_loss().fast = self.fast_loss      # `fast_loss` on the recipe is the switch
        return self.loss_module(input_ids, attention_mask, rows, cols, targets)

    def _target_loss(self) -> TargetLoss:
        return getattr(self.loss_module, "module", self.loss_module)  # type: ignore[arg-type]

    def _log_metrics(self, metrics: dict[str, float], bar: tqdm) -> None:
        if self.dist.is_main:
            with open(self.metrics_path, "a") as handle:
                handle.write(json.dumps(metrics) + "\n")
        bar.update(1)
        bar.set_postfix(loss=f"{metrics['loss']:.4f}", lr=f"{metrics['lr']:.2e}",
                        tok_s=f"{metrics['tokens_per_s']:.0f}")

    def _trim_metrics(self) -> None:
        """Drop metric lines past the resumed step: those steps are about to be trained again."""
        if self.metrics_path.exists():
            write_jsonl(self.metrics_path, [row for row in read_jsonl(self.metrics_path) if row["step"] <= self.step])

    def _log(self, message: str) -> None:
        if self.dist.is_main:
            _log(message)

    # -- checkpoints --------------------------------------------------------------------------------
    def save_checkpoint(self) -> Path:
        """Every rank calls this (FSDP gathers the shards); rank 0 alone writes."""
        existing = self.checkpoints_dir / ckpt.step_dir_name(self.step)
        if ckpt.is_complete(existing):
            return existing                # already saved at this step (e.g. save_every hit the end)
        adapter_state = self._adapter_state()
        optimizer_state = self._optimizer_state()
        rng_states = self.dist.gather(ckpt.capture_rng_state())

        def write_contents(folder: Path) -> None:
            self._save_adapter(folder / ADAPTER_DIRNAME, adapter_state)
            torch.save({"optimizer": optimizer_state, "scheduler": self.scheduler.state_dict(),
                        "rng_per_rank": rng_states}, folder / OPTIM_FILENAME)
            state = {"step": self.step, "total_steps": self.total_steps, "last_loss": self.last_loss,
                     "tokens_seen": self.tokens_seen, "position": vars(self.position),
                     "data_stats": vars(self.stream.stats), "world_size": self.dist.world_size,
                     "config": to_dict(self.config) | {"api_key": None}}  # a key never goes to disk
            (folder / STATE_FILENAME).write_text(json.dumps(state, indent=2, default=str))

        if self.dist.is_main:
            ckpt.write_checkpoint(self.checkpoints_dir, self.step, write_contents, keep=self.config.keep_checkpoints)
        self.dist.barrier()                # no rank runs ahead of a checkpoint it may have to resume from
        return existing

    def _adapter_state(self) -> dict[str, torch.Tensor] | None:
        """The trainable weights in full, for save_pretrained; None: let peft read the model."""
        if not self.fsdp:
            return None
        # Only the LoRA weights are gathered: the frozen base stays sharded.
        return {name: param.full_tensor().detach().cpu()
                for name, param in self.model.named_parameters() if param.requires_grad}

    def _optimizer_state(self) -> dict[str, Any]:
        if not self.fsdp:
            return self.optimizer.state_dict()    # DDP: every rank holds the same state
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        return get_optimizer_state_dict(self.loss_module, self.optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))

    def _save_adapter(self, folder: Path, adapter_state: dict[str, torch.Tensor] | None) -> None:
        if adapter_state is None:
            self.model.save_pretrained(folder)
        else:
            self.model.save_pretrained(folder, state_dict=adapter_state)

    def _load_checkpoint(self, folder: Path) -> None:
        from safetensors.torch import load_file

        weights = load_file(str(folder / ADAPTER_DIRNAME / ADAPTER_WEIGHTS_FILE), device="cpu")
        self._load_adapter(folder, weights)
        # Our own file, written by this recipe: full unpickling is needed for the RNG states. Load on
        # the CPU: RNG states must stay CPU ByteTensors; the optimizer moves its state to the params.
        extra = torch.load(folder / OPTIM_FILENAME, map_location="cpu", weights_only=False)
        self._load_optimizer(extra["optimizer"])
        self.scheduler.load_state_dict(extra["scheduler"])
        self._restore_rng(folder, extra.get("rng_per_rank") or [extra["rng"]])
        state = json.loads((folder / STATE_FILENAME).read_text())
        self.step = state["step"]
        self.last_loss = state["last_loss"]
        self.tokens_seen = state["tokens_seen"]
        self.position = DataPosition(**state["position"])
        self.stream.stats = DataStats(**state.get("data_stats", {}))
        self._log(f"resumed from {folder} at step {self.step}")

    def _start_from_adapter(self, folder: Path) -> None:
        """Begin from another run's adapter (`ssd run`'s round_start: continue). Before any
        sharding, so every rank loads the same full weights; a resumed checkpoint overrides them."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        path = Path(folder) / ADAPTER_WEIGHTS_FILE
        if not path.is_file():
            raise ConfigError(f"init_adapter: {path} does not exist")
        try:
            result = set_peft_model_state_dict(self.model, load_file(str(path), device="cpu"))
        except RuntimeError as exc:   # torch's "size mismatch" for another rank
            raise ConfigError(f"init_adapter {folder} does not fit this LoRA config: {exc}") from exc
        missing = [k for k in getattr(result, "missing_keys", []) if "lora_" in k]
        if getattr(result, "unexpected_keys", None) or missing:
            raise ConfigError(f"init_adapter {folder} does not fit this LoRA config (rank, targets): "
                              f"unexpected {list(result.unexpected_keys)[:2]}, missing {missing[:2]}")
        self._log(f"starting from the adapter in {folder}")

    def _load_adapter(self, folder: Path, weights: dict[str, torch.Tensor]) -> None:
        from peft import set_peft_model_state_dict

        if not self.fsdp:
            result = set_peft_model_state_dict(self.model, {k: v.to(self.device) for k, v in weights.items()})
            if getattr(result, "unexpected_keys", None):
                raise ValueError(f"checkpoint {folder} does not fit this LoRA config: "
                                 f"unexpected keys {result.unexpected_keys[:3]}...")
            return
        from torch.distributed.tensor import distribute_tensor

        adapter = self.model.active_adapter
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                key = name.replace(f".{adapter}.", ".")       # peft's files drop the adapter name
                if key not in weights:
                    raise ValueError(f"checkpoint {folder} does not fit this LoRA config: no {key}")
                full = weights[key].to(param.device, param.dtype)
                param.data.copy_(distribute_tensor(full, param.device_mesh, param.placements))

    def _load_optimizer(self, state: dict[str, Any]) -> None:
        if not self.fsdp:
            self.optimizer.load_state_dict(state)
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        set_optimizer_state_dict(self.loss_module, self.optimizer, state,
                                 options=StateDictOptions(full_state_dict=True))

    def _restore_rng(self, folder: Path, states: list[dict[str, Any]]) -> None:
        if len(states) != self.dist.world_size:
            # The data order does not depend on it; only dropout masks differ from the original run.
            self._log(f"warning: {folder} was written by {len(states)} ranks, this run has "
                      f"{self.dist.world_size}; dropout will not repeat the original run's masks")
        ckpt.restore_rng_state(states[self.dist.rank % len(states)])

    # -- output -------------------------------------------------------------------------------------
    def export_adapter(self) -> Path:
        """Every rank calls this; rank 0 writes output_dir/adapter."""
        target = self.output_dir / ADAPTER_DIRNAME
        adapter_state = self._adapter_state()
        if self.dist.is_main:
            staged = self.output_dir / f"{ckpt.TMP_PREFIX}{ADAPTER_DIRNAME}-{os.getpid()}"
            self._save_adapter(staged, adapter_state)
            ckpt.replace_dir_atomically(staged, target)
        self.dist.barrier()
        return target

    def _push(self, *, final: bool, export: bool = True) -> None:
        adapter_dir = self.export_adapter() if export else self.output_dir / ADAPTER_DIRNAME
        if not self.dist.is_main:
            return
        try:
            self.last_push = push_adapter(self.config.sampler_url, self.config.adapter_name, adapter_dir,
                                          client=self.client, api_key=self.config.api_key)
        except Exception as exc:  # noqa: BLE001 - a mid-run push failure must not lose the training
            if final:
                raise
            _log(f"warning: push at step {self.step} failed ({exc}); training goes on")
            return
        _log(f"step {self.step}: pushed adapter; now serving {self.last_push.get('alias')} "
             f"(version {self.last_push.get('version')})")


def _num_targets(plan: PlannedBatch) -> int:
    """Positions that carry loss, as MicroBatch.num_targets counts them, from lengths alone."""
    return sum(len(sample) - max(1, sample.num_prompt_tokens) for sample in plan.samples)


def push_adapter(sampler_url: str, name: str, adapter_dir: Path, *, client: Any = None,
                 api_key: str | None = None) -> dict[str, Any]:
    """Upload an adapter folder (multipart) and return the server's {name, version, alias, ...}.
    `api_key` None means the SSD_API_KEY environment variable."""
    if client is not None:
        return client.upload_adapter(name, adapter_dir)
    with SamplerClient(sampler_url, api_key=api_key) as sampler:
        return sampler.upload_adapter(name, adapter_dir)


def _load_base_model(name: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from common.models import resolve_model

    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
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
            client = SamplerClient(config.sampler_url, api_key=config.api_key)
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
    try:
        recipe.setup()
        return recipe.train()
    finally:
        recipe.close()

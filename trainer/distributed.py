"""The trainer's view of torch.distributed: one process, or a rank of a `torchrun` job.

    torchrun --nproc-per-node 4 -m trainer --config train.yaml

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; with WORLD_SIZE > 1 the recipe joins the process
group and shards each optimizer step's micro-batches across ranks. Without torchrun nothing here
touches torch.distributed, so a single process pays nothing for it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch

# Generous: rank 0 may spend minutes writing a checkpoint or pushing while the others wait.
COLLECTIVE_TIMEOUT = timedelta(minutes=30)


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes checkpoints, metrics and the adapter, and pushes it."""
        return self.rank == 0

    def device(self) -> torch.device:
        if not torch.cuda.is_available():
            return torch.device("cpu")
        return torch.device("cuda", self.local_rank)

    def barrier(self) -> None:
        if self.enabled:
            torch.distributed.barrier()

    def sum_(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce a tensor in place by sum (a no-op for one process)."""
        if self.enabled:
            torch.distributed.all_reduce(tensor, op=torch.distributed.ReduceOp.SUM)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's `value`, in rank order, on every rank (picklable objects, small)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(values, value)
        return values


def context_from_env() -> DistContext:
    """The rank layout torchrun set, or a single process."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    return DistContext(rank=int(os.environ["RANK"]), world_size=world_size,
                       local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def init(backend: str = "auto") -> DistContext:
    """Join torchrun's process group when there is one; `backend` 'auto' picks nccl on CUDA, gloo on CPU."""
    context = context_from_env()
    if not context.enabled:
        return context
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available():
        torch.cuda.set_device(context.local_rank)
    if not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend, timeout=COLLECTIVE_TIMEOUT)
    return context


def shutdown(context: DistContext) -> None:
    """Leave the group. No barrier: after a failure on one rank, the others may be inside another
    collective, and torchrun stops them anyway."""
    if context.enabled and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()

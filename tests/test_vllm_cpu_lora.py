"""The grouped CPU LoRA kernels compute what vLLM's reference kernels compute."""

from __future__ import annotations

import importlib

import pytest
import torch

from sampler_service import vllm_cpu_lora as ours


@pytest.fixture(scope="module")
def reference():
    import vllm.lora.ops.torch_ops.lora_ops as ops

    return importlib.reload(ops)  # the originals, even if the plugin patched this process


def _case(tokens=37, adapters=3, rank=8, width=24, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=gen)
    a = torch.randn(adapters, 1, rank, width, generator=gen)      # shrink weights, 4-D as vLLM stores them
    b = torch.randn(adapters, 1, width, rank, generator=gen)      # expand weights
    indices = torch.randint(0, adapters, (tokens,), generator=gen)
    return x, a, b, indices


def test_shrink_matches_reference(reference):
    x, a, _, indices = _case()
    expected, got = torch.zeros(37, 8), torch.zeros(37, 8)
    reference.bgmv_shrink(x, a, expected, indices, 0.5)
    ours.bgmv_shrink(x, a, got, indices, 0.5)
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize("add_inputs", [True, False])
def test_expand_and_expand_slice_match_reference(reference, add_inputs):
    _, _, b, indices = _case()
    h = torch.randn(37, 8)
    start = torch.randn(37, 60)
    expected, got = start.clone(), start.clone()
    reference.bgmv_expand(h, b, expected, indices, add_inputs)
    ours.bgmv_expand(h, b, got, indices, add_inputs)
    torch.testing.assert_close(got, expected)
    expected, got = start.clone(), start.clone()
    reference.bgmv_expand_slice(h, b, expected, indices, 10, 24, add_inputs)
    ours.bgmv_expand_slice(h, b, got, indices, 10, 24, add_inputs)
    torch.testing.assert_close(got, expected)


def test_rows_without_an_adapter_get_nothing():
    x, a, b, indices = _case()
    indices[::2] = -1
    shrunk = torch.full((37, 8), 7.0)
    ours.bgmv_shrink(x, a, shrunk, indices, 1.0)
    assert (shrunk[::2] == 0).all() and (shrunk[1::2] != 0).any()
    out = torch.ones(37, 24)
    ours.bgmv_expand(shrunk, b, out, indices, True)
    assert (out[::2] == 1).all()


def test_register_installs_the_kernels_where_the_cpu_wrapper_looks(reference):
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu

    ours.register()
    try:
        assert punica_cpu.bgmv_shrink is ours.bgmv_shrink
        assert reference.bgmv_expand_slice is ours.bgmv_expand_slice
    finally:
        importlib.reload(reference)
        importlib.reload(importlib.import_module("vllm.lora.ops.torch_ops"))
        importlib.reload(punica_cpu)

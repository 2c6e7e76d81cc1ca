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


def _linear_case(tokens=29, slots=3, rank=8, width=24, slices=(16, 8, 8), seed=1):
    """Stacked weights as vLLM keeps them for a fused layer (e.g. q, k, v): one A and B per slice."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, width, generator=gen)
    a = tuple(torch.randn(slots, 1, rank, width, generator=gen) for _ in slices)
    b = tuple(torch.randn(slots, 1, size, rank, generator=gen) for size in slices)
    return x, a, b, slices


def _reference_linear(y, x, a, b, scale, slices, indices):
    """vLLM's add_lora_linear semantics, token by token."""
    y = y.clone()
    for t, slot in enumerate(indices.tolist()):
        if slot < 0:
            continue
        offset = 0
        for a_i, b_i, size in zip(a, b, slices):
            y[t, offset: offset + size] += scale * (x[t] @ a_i[slot, 0].T) @ b_i[slot, 0].T
            offset += size
    return y


@pytest.mark.parametrize("pattern", ["one adapter", "adapter and base", "three adapters", "base only"])
def test_grouped_linear_lora_matches_token_by_token(pattern):
    x, a, b, slices = _linear_case()
    tokens = x.shape[0]
    indices = {"one adapter": torch.full((tokens,), 2),
               "adapter and base": torch.tensor([1, -1] * (tokens // 2) + [1]),
               "three adapters": torch.arange(tokens) % 3,
               "base only": torch.full((tokens,), -1)}[pattern]
    start = torch.randn(tokens, sum(slices))
    got = start.clone()
    ours.add_grouped_lora(got, x, a, b, 0.5, slices, ours.adapter_groups(indices))
    torch.testing.assert_close(got, _reference_linear(start, x, a, b, 0.5, slices, indices))
    if pattern == "base only":
        assert torch.equal(got, start)


def test_groups_name_every_adapter_token_once():
    indices = torch.tensor([0, -1, 1, 0, 1, -1])
    groups = ours.adapter_groups(indices)
    assert [slot for slot, _ in groups] == [0, 1]
    assert [rows.tolist() for _, rows in groups] == [[0, 3], [2, 4]]
    assert ours.adapter_groups(torch.tensor([1, 1, 1])) == [(1, None)]   # one adapter: no gather
    assert ours.adapter_groups(torch.tensor([-1, -1])) == []


def test_register_installs_the_grouped_wrapper_once():
    import vllm.lora.punica_wrapper.punica_cpu as punica_cpu
    from vllm.utils.import_utils import resolve_obj_by_qualname

    original = punica_cpu.PunicaWrapperCPU
    try:
        ours.register()
        installed = punica_cpu.PunicaWrapperCPU
        ours.register()
        assert punica_cpu.PunicaWrapperCPU is installed, "a second register() must not stack subclasses"
        # vLLM finds the wrapper through this name (vllm/lora/punica_wrapper/punica_selector.py).
        resolved = resolve_obj_by_qualname("vllm.lora.punica_wrapper.punica_cpu.PunicaWrapperCPU")
        assert resolved is installed and issubclass(resolved, original)
        assert getattr(resolved, "groups_tokens_once", False)
    finally:
        importlib.reload(punica_cpu)

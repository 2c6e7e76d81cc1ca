"""The service's context length comes from the model, capped on the CPU by the KV cache."""

from __future__ import annotations

import json

from common.models import resolve_model
from sampler_service.config import ServiceConfig
from sampler_service.engine import resolve_max_model_len


def _model(tmp_path, **config):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def test_an_explicit_context_wins(tmp_path):
    path = _model(tmp_path, max_position_embeddings=8192)
    assert resolve_max_model_len(ServiceConfig(max_model_len=1024), path, is_cpu=True) == 1024


def test_zero_means_the_models_own_context_when_the_cache_holds_it(tmp_path):
    path = _model(tmp_path, max_position_embeddings=4096, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, hidden_size=64)
    assert resolve_max_model_len(ServiceConfig(kv_cache_gb=1.0), path, is_cpu=True) == 4096


def test_the_cpu_cache_caps_a_long_context(tmp_path):
    # 2 (K, V) x 32 layers x 8 KV heads x 128 dims x 4 bytes = 256 KiB per token: 1 GiB holds 4096.
    path = _model(tmp_path, max_position_embeddings=262_144, num_hidden_layers=32, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, hidden_size=4096)
    assert resolve_max_model_len(ServiceConfig(kv_cache_gb=1.0), path, is_cpu=True) == 4096


def test_on_a_gpu_vllm_sizes_the_context(tmp_path):
    path = _model(tmp_path, max_position_embeddings=262_144)
    assert resolve_max_model_len(ServiceConfig(), path, is_cpu=False) == 0


def test_the_demo_model_gets_its_own_context_on_the_cpu():
    assert resolve_max_model_len(ServiceConfig(), resolve_model("demo"), is_cpu=True) == 8192

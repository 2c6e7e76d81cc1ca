"""The training loop: the loss only sees completion tokens, accumulation is exact, loss goes down,
the schedule is right, and the adapter is exported and pushed."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from common.config import ConfigError
from tests.test_trainer_fixtures import TINY_EOS, save_tiny_llama, synthetic_samples, tiny_llama
from trainer import ListSampleSource, TrainConfig, train
from trainer.data import SampleEncoder, collate
from trainer.recipe import LoRAFinetuneRecipe, lr_multiplier


def small_config(tmp_path, **changes) -> TrainConfig:
    values = dict(output_dir=tmp_path / "run", max_steps=4, micro_batch_size=4, micro_batch_tokens=256,
                  max_seq_len=64, grad_accum=2, lr=1e-2, warmup_steps=1, save_every=0, lora_rank=4)
    return TrainConfig(**(values | changes))


def ready_recipe(tmp_path, samples, **changes) -> LoRAFinetuneRecipe:
    recipe = LoRAFinetuneRecipe(small_config(tmp_path, **changes), ListSampleSource(samples), model=tiny_llama())
    recipe.setup()
    with torch.no_grad():   # LoRA B starts at zero; make the adapter matter for the gradient checks
        for name, param in recipe.model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return recipe


def encode(samples, max_seq_len=64):
    encoder = SampleEncoder(eos_ids=[TINY_EOS], max_seq_len=max_seq_len)
    return [encoder(sample) for sample in samples]


def test_loss_counts_completion_tokens_only(tmp_path):
    samples = synthetic_samples(4)
    recipe = ready_recipe(tmp_path, samples)
    batch = collate(encode(samples), pad_id=0)
    device = recipe.device                            # the recipe moves the model to CUDA where there is one
    logits = recipe.model(input_ids=batch.input_ids.to(device), attention_mask=batch.attention_mask.to(device)).logits
    expected = 0.0
    for row, sample in enumerate(encode(samples)):
        start = sample.num_prompt_tokens - 1          # the last prompt position predicts the first target
        predicted = logits[row, start:len(sample) - 1].float()
        targets = torch.tensor(sample.input_ids[start + 1:], device=device)
        expected += F.cross_entropy(predicted, targets, reduction="sum")
    assert batch.num_targets == sum(len(s) - s.num_prompt_tokens for s in encode(samples))
    assert torch.allclose(recipe._loss_sum(batch), expected, atol=1e-4)


def test_no_prompt_or_padding_position_carries_loss(tmp_path):
    """The gradient reaching the logits is zero at every position that predicts a prompt token or
    padding, and non-zero at every position that predicts a completion token (EOS included)."""
    samples = synthetic_samples(4)
    recipe = ready_recipe(tmp_path, samples)
    recipe.fast_loss = False                         # full logits, so every position is visible
    captured = {}
    lm_head = recipe.causal_lm.get_output_embeddings()
    lm_head.register_forward_hook(lambda module, args, out: captured.setdefault("logits", out).retain_grad())
    batch = collate(encode(samples), pad_id=0)
    recipe._loss_sum(batch).backward()
    grad_norm_per_position = captured["logits"].grad.abs().sum(-1)
    for row, sample in enumerate(encode(samples)):
        predicts_target = torch.zeros(batch.input_ids.shape[1], dtype=torch.bool)
        predicts_target[sample.num_prompt_tokens - 1:len(sample) - 1] = True
        assert (grad_norm_per_position[row][~predicts_target] == 0).all()
        assert (grad_norm_per_position[row][predicts_target] > 0).all()
        assert int(predicts_target.sum()) == len(sample) - sample.num_prompt_tokens


def test_target_only_logits_match_the_full_forward(tmp_path):
    samples = synthetic_samples(6)
    recipe = ready_recipe(tmp_path, samples)
    batch = collate(encode(samples), pad_id=0)
    fast = recipe._loss_sum(batch)
    recipe.fast_loss = False
    assert torch.allclose(fast, recipe._loss_sum(batch), atol=1e-4)


def test_accumulated_gradient_is_the_mean_over_all_target_tokens(tmp_path):
    samples = synthetic_samples(6)
    recipe = ready_recipe(tmp_path, samples)
    encoded = encode(samples)
    whole = collate(encoded, pad_id=0)
    (recipe._loss_sum(whole) / whole.num_targets).backward()
    reference = {n: p.grad.clone() for n, p in recipe.model.named_parameters() if p.requires_grad}
    recipe.optimizer.zero_grad(set_to_none=True)
    parts = [collate(encoded[:1], pad_id=0), collate(encoded[1:], pad_id=0)]   # very unequal sizes
    total = sum(part.num_targets for part in parts)
    for part in parts:
        (recipe._loss_sum(part) / total).backward()
    for name, param in recipe.model.named_parameters():
        if param.requires_grad:
            assert torch.allclose(param.grad, reference[name], atol=1e-6), name


def test_a_few_steps_reduce_loss_on_a_repeated_sample(tmp_path):
    repeated = [dict(synthetic_samples(1)[0], cursor=index + 1) for index in range(16)]
    result = train(small_config(tmp_path, max_steps=15, lr=3e-2, warmup_steps=2),
                   ListSampleSource(repeated),
                   model=tiny_llama())
    losses = [json.loads(line)["loss"] for line in result.metrics_path.read_text().splitlines()]
    assert len(losses) == 15 and result.steps == 15
    assert losses[-1] < 0.7 * losses[0]


def test_metrics_lines_carry_every_field(tmp_path):
    result = train(small_config(tmp_path), ListSampleSource(synthetic_samples(12)), model=tiny_llama())
    lines = [json.loads(line) for line in result.metrics_path.read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3, 4]
    for line in lines:
        assert {"step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s", "samples", "skipped_samples",
                "truncated_samples", "max_tokens_samples", "world_size"} <= set(line)
        assert line["tokens"] > 0 and line["grad_norm"] >= 0


def test_skips_and_cuts_reach_metrics_and_the_result(tmp_path):
    samples = synthetic_samples(24, max_len=30)
    too_long = sum(len(s["prompt_token_ids"]) + len(s["completion_token_ids"]) > 40 for s in samples)
    assert 0 < too_long < len(samples)
    result = train(small_config(tmp_path / "skip", max_steps=0, max_seq_len=40), ListSampleSource(samples),
                   model=tiny_llama())
    last = json.loads(result.metrics_path.read_text().splitlines()[-1])
    assert result.data_stats["skipped_samples"] == last["skipped_samples"] == too_long
    assert result.data_stats["samples"] == last["samples"] == len(samples) - too_long
    assert last["max_tokens_samples"] == result.data_stats["max_tokens_samples"] > 0
    cut = train(small_config(tmp_path / "cut", max_steps=0, max_seq_len=40, overlong="cut_completion"),
                ListSampleSource(samples), model=tiny_llama())
    assert cut.data_stats["truncated_samples"] == too_long and cut.data_stats["skipped_samples"] == 0
    assert cut.data_stats["samples"] == len(samples)


def test_trains_from_a_tokenizerless_model_folder_and_exports_peft_files(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    result = train(small_config(tmp_path, model=str(folder)), ListSampleSource(synthetic_samples(10)))
    assert (result.adapter_dir / "adapter_config.json").is_file()
    assert (result.adapter_dir / "adapter_model.safetensors").is_file()
    config = json.loads((result.adapter_dir / "adapter_config.json").read_text())
    assert config["r"] == 4 and set(config["target_modules"]) >= {"q_proj", "down_proj"}


def test_epochs_mode_counts_its_steps(tmp_path):
    samples = synthetic_samples(20)
    result = train(small_config(tmp_path, max_steps=0, epochs=2), ListSampleSource(samples), model=tiny_llama())
    lines = result.metrics_path.read_text().splitlines()
    assert result.steps == len(lines) >= 2
    assert result.tokens == 2 * sum(len(s) for s in encode(samples))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    kwargs = dict(warmup_steps=4, total_steps=20, min_lr_ratio=0.1)
    assert [lr_multiplier(step, **kwargs) for step in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_multiplier(4, **kwargs) == pytest.approx(1.0)
    assert lr_multiplier(20, **kwargs) == pytest.approx(0.1)
    decay = [lr_multiplier(step, **kwargs) for step in range(4, 21)]
    assert decay == sorted(decay, reverse=True)


class FakeSampler:
    def __init__(self):
        self.uploads = []

    def upload_adapter(self, name, adapter_dir):
        assert (adapter_dir / "adapter_model.safetensors").is_file()
        self.uploads.append(name)
        return {"name": name, "version": len(self.uploads), "alias": f"{name}@v{len(self.uploads)}", "rank": 4}


def test_push_at_the_end_and_every_k_steps(tmp_path, capsys):
    sampler = FakeSampler()
    result = train(small_config(tmp_path, max_steps=5, push=True, push_every=2, adapter_name="mine"),
                   ListSampleSource(synthetic_samples(12)), model=tiny_llama(), client=sampler)
    assert sampler.uploads == ["mine"] * 3          # steps 2 and 4, then the end
    assert result.pushed["alias"] == "mine@v3"
    assert "now serving mine@v3" in capsys.readouterr().err


def test_gradient_checkpointing_gives_the_same_training(tmp_path):
    samples = synthetic_samples(12)
    plain = train(small_config(tmp_path / "a"), ListSampleSource(samples), model=tiny_llama())
    checkpointed = train(small_config(tmp_path / "b", gradient_checkpointing=True), ListSampleSource(samples),
                         model=tiny_llama())
    assert checkpointed.final_loss == pytest.approx(plain.final_loss, rel=1e-4)


def test_a_bfloat16_base_keeps_float32_lora_weights_and_trains_alike(tmp_path):
    folder = save_tiny_llama(tmp_path / "tiny")
    samples = synthetic_samples(12)
    recipe = LoRAFinetuneRecipe(small_config(tmp_path / "b16", model=str(folder), base_dtype="bfloat16"),
                                ListSampleSource(samples))
    recipe.setup()
    frozen = {p.dtype for p in recipe.model.parameters() if not p.requires_grad}
    trained = {p.dtype for p in recipe.model.parameters() if p.requires_grad}
    assert frozen == {torch.bfloat16} and trained == {torch.float32}   # half the base's memory, not the adapter's
    half = recipe.train()
    full = train(small_config(tmp_path / "f32", model=str(folder)), ListSampleSource(samples))
    assert half.final_loss == pytest.approx(full.final_loss, rel=2e-2)   # bfloat16 rounding, the same training
    saved = load_file(str(half.adapter_dir / "adapter_model.safetensors"))
    assert {t.dtype for t in saved.values()} == {torch.float32}
    with pytest.raises(ConfigError, match="base_dtype"):
        small_config(tmp_path, base_dtype="float16")


def test_a_run_can_start_from_a_previous_adapter(tmp_path):
    """`ssd run --round-start continue`: round r begins where round r-1's adapter ended."""
    from safetensors.torch import load_file

    first = train(small_config(tmp_path / "r1"), ListSampleSource(synthetic_samples(12)), model=tiny_llama())
    before = load_file(str(first.adapter_dir / "adapter_model.safetensors"))
    recipe = LoRAFinetuneRecipe(small_config(tmp_path / "r2", init_adapter=first.adapter_dir),
                                ListSampleSource(synthetic_samples(12)), model=tiny_llama())
    recipe.setup()
    loaded = {name: param for name, param in recipe.model.named_parameters() if "lora_" in name}
    assert any(t.abs().sum() > 0 for name, t in before.items() if "lora_B" in name)   # a real, trained B
    for name, tensor in before.items():
        match = [p for n, p in loaded.items() if n.replace(".default", "").endswith(name.split("model.", 1)[-1])]
        assert match and torch.equal(match[0].detach().cpu(), tensor)


def test_an_adapter_of_another_rank_is_refused_by_name(tmp_path):
    first = train(small_config(tmp_path / "r1"), ListSampleSource(synthetic_samples(8)), model=tiny_llama())
    recipe = LoRAFinetuneRecipe(small_config(tmp_path / "r2", init_adapter=first.adapter_dir, lora_rank=8),
                                ListSampleSource(synthetic_samples(8)), model=tiny_llama())
    with pytest.raises(ConfigError, match="init_adapter .* does not fit"):
        recipe.setup()

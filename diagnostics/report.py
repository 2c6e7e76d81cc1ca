"""Plots (PNG) and the markdown section that the `ssd run` report and `ssd diagnose` embed.

Figures are built with `matplotlib.figure.Figure` directly (the Agg canvas, no pyplot), so that
drawing never touches global backend state or needs a display.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure

from common.plots import save_figure
from diagnostics.summary import FORK, LOCK, OTHER, ExamplePosition

if TYPE_CHECKING:
    from diagnostics.analysis import DiagnosticsResult

HISTOGRAM_BINS = 40
HISTOGRAM_SIZE_IN = (6.0, 3.4)
EXAMPLE_PANEL_SIZE_IN = (4.6, 3.2)
EXAMPLE_COLUMNS = 2
TOKEN_LABEL_MAX_CHARS = 12
BEFORE_COLOR, AFTER_COLOR = "#8da0cb", "#fc8d62"
DOCS_LINK = "docs/diagnostics.md"

LOCK_TAIL_PNG = "lock_tail_change.png"
FORK_ENTROPY_PNG = "fork_entropy_change.png"
FORK_TAIL_PNG = "fork_tail_change.png"
DECOMPOSITION_PNG = "decomposition.png"
EXAMPLES_PNG = "example_positions.png"


# -- plots -------------------------------------------------------------------------------------

def _histogram(changes: np.ndarray, title: str, xlabel: str, path: Path) -> None:
    fig = Figure(figsize=HISTOGRAM_SIZE_IN)
    ax = fig.add_subplot()
    ax.hist(changes, bins=HISTOGRAM_BINS, color=AFTER_COLOR, edgecolor="white")
    ax.axvline(0.0, color="black", linewidth=1)
    ax.axvline(float(np.mean(changes)), color="tab:red", linestyle="--", linewidth=1,
               label=f"mean {np.mean(changes):+.4f}")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("positions")
    ax.legend()
    save_figure(fig, path)


def _decomposition_plot(result: DiagnosticsResult, path: Path) -> None:
    terms = [("compression", "-log KeptMass"), ("head", "(1-T) H_1/T(.|S)"), ("kl", "KL(.|S || p^T|S)")]
    classes = [c for c in (LOCK, FORK, OTHER) if result.summaries[c].count]
    fig = Figure(figsize=(3.2 * max(len(classes), 1), 3.4))
    for i, name in enumerate(classes, start=1):
        ax = fig.add_subplot(1, len(classes), i)
        summary = result.summaries[name]
        x = np.arange(len(terms))
        ax.bar(x - 0.2, [summary.before[t] for t, _ in terms], 0.4, label="base", color=BEFORE_COLOR)
        ax.bar(x + 0.2, [summary.after[t] for t, _ in terms], 0.4, label="SSD", color=AFTER_COLOR)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set_xticks(x, [label for _, label in terms], rotation=20, fontsize=7)
        ax.set_title(f"{name} (n={summary.count})")
        if i == 1:
            ax.set_ylabel("nats (mean)")
            ax.legend(fontsize=7)
    save_figure(fig, path)


def _short(token: str) -> str:
    return token if len(token) <= TOKEN_LABEL_MAX_CHARS else token[:TOKEN_LABEL_MAX_CHARS - 1] + "…"


def _examples_plot(examples: list[ExamplePosition], path: Path) -> None:
    rows = -(-len(examples) // EXAMPLE_COLUMNS)
    width, height = EXAMPLE_PANEL_SIZE_IN
    fig = Figure(figsize=(width * EXAMPLE_COLUMNS, height * rows))
    for i, example in enumerate(examples, start=1):
        ax = fig.add_subplot(rows, EXAMPLE_COLUMNS, i)
        x = np.arange(len(example.bars))
        ax.bar(x - 0.2, [b.before for b in example.bars], 0.4, label="base", color=BEFORE_COLOR)
        ax.bar(x + 0.2, [b.after for b in example.bars], 0.4, label="SSD", color=AFTER_COLOR)
        ax.set_xticks(x, [_short(b.token) for b in example.bars], rotation=45, ha="right", fontsize=7)
        ax.set_ylim(0, 1)
        ax.set_title(f"{example.class_name}, {example.kind}: {example.change_name} "
                     f"{example.before:.3f} → {example.after:.3f}", fontsize=8)
        if i == 1:
            ax.legend(fontsize=7)
    save_figure(fig, path)


def write_plots(result: DiagnosticsResult, out_dir: Path) -> dict[str, Path]:
    """Draw every plot that has data; return {plot name: PNG path}."""
    out_dir.mkdir(parents=True, exist_ok=True)
    table, labels, written = result.table, result.labels, {}
    locks, forks = labels == LOCK, labels == FORK
    if locks.any():
        written["lock_tail"] = out_dir / LOCK_TAIL_PNG
        _histogram(table.ssd_lock_tail[locks] - table.base_lock_tail[locks],
                   "Locks: change in distractor mass (outside base top-1)", "after - before", written["lock_tail"])
    if forks.any():
        written["fork_entropy"] = out_dir / FORK_ENTROPY_PNG
        _histogram(table.ssd_entropy[forks] - table.base_entropy[forks],
                   "Forks: change in entropy (nats)", "after - before", written["fork_entropy"])
        written["fork_tail"] = out_dir / FORK_TAIL_PNG
        _histogram(table.ssd_fork_tail[forks] - table.base_fork_tail[forks],
                   "Forks: change in mass outside the support S", "after - before", written["fork_tail"])
    if len(table):
        written["decomposition"] = out_dir / DECOMPOSITION_PNG
        _decomposition_plot(result, written["decomposition"])
    if result.examples:
        written["examples"] = out_dir / EXAMPLES_PNG
        _examples_plot(result.examples, written["examples"])
    return written


# -- markdown ----------------------------------------------------------------------------------

def _fmt(value: float) -> str:
    return "–" if value is None or np.isnan(value) else f"{value:.4f}"


def _arrow(summary, measure: str) -> str:
    if not summary.count:
        return "–"
    before, after = summary.before[measure], summary.after[measure]
    return f"{_fmt(before)} → {_fmt(after)} ({after - before:+.4f})"


def _class_table(result: DiagnosticsResult) -> list[str]:
    total = max(len(result.table), 1)
    lines = ["| class | positions | distractor tail | entropy (nats) | entropy within S | top-1 prob | as predicted |",
             "|---|---|---|---|---|---|---|"]
    for name in (LOCK, FORK, OTHER):
        s = result.summaries[name]
        share = "–" if np.isnan(s.share_as_predicted) else f"{100 * s.share_as_predicted:.0f}%"
        lines.append(f"| {name} | {s.count} ({100 * s.count / total:.1f}%) | {_arrow(s, 'tail')} | "
                     f"{_arrow(s, 'entropy')} | {_arrow(s, 'head_entropy')} | {_arrow(s, 'top1')} | {share} |")
    return lines


def _decomposition_table(result: DiagnosticsResult) -> list[str]:
    lines = ["| class | support compression −log KeptMass | head reshaping (1−T)·H_1/T(·\\|S) | "
             "KL anchor D_KL(·\\|S ‖ p^T\\|S) |", "|---|---|---|---|"]
    for name in (LOCK, FORK, OTHER):
        s = result.summaries[name]
        lines.append(f"| {name} | {_arrow(s, 'compression')} | {_arrow(s, 'head')} | {_arrow(s, 'kl')} |")
    return lines


def _image(title: str, path: Path, relative_to: Path) -> str:
    return f"![{title}]({Path(os.path.relpath(path, relative_to)).as_posix()})"


def write_report_section(result: DiagnosticsResult, out_dir: str | Path, *,
                         relative_to: str | Path | None = None, heading: str = "##") -> str:
    """Write the PNGs into `out_dir` and return the markdown section that embeds them.

    Image links are relative to `relative_to` (the folder of the markdown file that will hold this
    section; default `out_dir`)."""
    out_dir = Path(out_dir)
    relative_to = Path(relative_to) if relative_to is not None else out_dir
    plots = write_plots(result, out_dir)
    s = result.settings
    lines = [
        f"{heading} Lock/fork diagnostics",
        "",
        f"{result.num_samples} held-out samples, {len(result.table)} completion positions; "
        f"base = `{result.base_name}`, SSD = `{result.ssd_name}`. Distributions compared at T = "
        f"{s.t_eval}; support S from the base at T_train = {s.t_train}, top-k {s.top_k}, "
        f"top-p {s.top_p}. Lock: base top-1 ≥ {s.lock_min_top1}. Fork: base entropy ≥ "
        f"{s.fork_min_entropy} nats and top-1 < {s.fork_max_top1}. Each cell is base → SSD (change).",
        "",
        "The distractor tail is the mass outside the base's top-1 token at locks, and outside S elsewhere. "
        "*Entropy within S* is the entropy of the distribution restricted to S and renormalised: the spread "
        "among the surviving options. *As predicted*: share of locks whose tail fell; share of forks that "
        "kept ≥ 90% of their entropy within S.",
        "",
        *_class_table(result),
        "",
        f"{heading}# The seed's decomposition, per class (nats, means)",
        "",
        "Computed on temperature-1 distributions with the base's support S; the SSD column re-evaluates "
        "each term with the SSD model in place of the base (a next round's starting point). "
        f"Definitions: `{DOCS_LINK}`.",
        "",
        *_decomposition_table(result),
        "",
    ]
    captions = {"lock_tail": "Change in distractor mass at locks",
                "fork_entropy": "Change in entropy at forks",
                "fork_tail": "Change in mass outside S at forks",
                "decomposition": "Decomposition terms, base vs SSD",
                "examples": "Example positions: base vs SSD probabilities of the top tokens"}
    for key, caption in captions.items():
        if key in plots:
            lines += [_image(caption, plots[key], relative_to), ""]
    if result.examples:
        lines.append("Examples per class: the position with the median change (*typical*) and then the "
                     "largest changes; they illustrate, the table above is the evidence.")
        lines.append("")
    return "\n".join(lines)

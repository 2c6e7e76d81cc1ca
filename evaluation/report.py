"""PNG plots and a markdown report for temperature studies (matplotlib, Agg backend: no display).

  pass1_vs_t_eval.png   pass@1 against T_eval, one line per model (base, each SSD adapter)
  pass1_vs_t_eff.png    pass@1 against T_eff = T_train × T_eval (base: T_eff = T_eval)
  report.md             both plots, a table of every point, and each model's best temperature
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from common.plots import pyplot, save_figure
from evaluation.sweep import BASE_LABEL, SweepPoint

FIGURE_SIZE = (6.4, 4.2)
REPORT_FILE = "report.md"


def _by_label(points: list[SweepPoint]) -> dict[str, list[SweepPoint]]:
    groups: dict[str, list[SweepPoint]] = defaultdict(list)
    for point in points:
        groups[point.label].append(point)
    return dict(groups)


def plot_metric(points: list[SweepPoint], axis: str, path: str | Path, metric: str = "pass@1") -> Path:
    """One line per model with 95% CI error bars; `axis` is 't_eval' or 't_eff'."""
    figure, ax = pyplot().subplots(figsize=FIGURE_SIZE)
    for label, group in _by_label(points).items():
        group = sorted((p for p in group if metric in p.metrics), key=lambda p: getattr(p, axis))
        if not group:
            continue
        xs = [getattr(p, axis) for p in group]
        ys = [100 * p.metrics[metric].value for p in group]
        errors = [[100 * (p.metrics[metric].value - p.metrics[metric].ci_low) for p in group],
                  [100 * (p.metrics[metric].ci_high - p.metrics[metric].value) for p in group]]
        style = "--" if label == BASE_LABEL else "-"
        ax.errorbar(xs, ys, yerr=errors, fmt="o" + style, capsize=3, label=label)
    ax.set_xlabel("T_eval" if axis == "t_eval" else "T_eff = T_train × T_eval")
    ax.set_ylabel(f"{metric} (%)")
    ax.set_title(f"{metric} against {'T_eval' if axis == 't_eval' else 'T_eff'} (95% bootstrap CI)")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(figure, path)


def best_points(points: list[SweepPoint], metric: str = "pass@1") -> dict[str, SweepPoint]:
    """Each model's best point (ties go to the lower temperature)."""
    best = {}
    for label, group in _by_label(points).items():
        scored = [p for p in group if metric in p.metrics]
        if scored:
            best[label] = max(sorted(scored, key=lambda p: p.t_eval), key=lambda p: p.metrics[metric].value)
    return best


def _fmt(point: SweepPoint, metric: str) -> str:
    m = point.metrics.get(metric)
    return "–" if m is None else f"{100 * m.value:.1f} [{100 * m.ci_low:.1f}, {100 * m.ci_high:.1f}]"


def _points_table(points: list[SweepPoint], metrics: list[str]) -> list[str]:
    header = "| model | T_train | T_eval | T_eff | " + " | ".join(f"{m} (95% CI)" for m in metrics) + " |"
    lines = [header, "|" + "---|" * (4 + len(metrics))]
    for p in sorted(points, key=lambda p: (p.label != BASE_LABEL, p.label, p.t_eval)):
        t_train = "–" if p.t_train is None else f"{p.t_train:g}"
        cells = " | ".join(_fmt(p, m) for m in metrics)
        lines.append(f"| {p.label} | {t_train} | {p.t_eval:g} | {p.t_eff:g} | {cells} |")
    return lines


def _verdict(best: dict[str, SweepPoint], metric: str) -> list[str]:
    base = best.get(BASE_LABEL)
    others = {label: p for label, p in best.items() if label != BASE_LABEL}
    if base is None or not others:
        return []
    label, top = max(others.items(), key=lambda item: item[1].metrics[metric].value)
    gap = 100 * (top.metrics[metric].value - base.metrics[metric].value)
    overlap = top.metrics[metric].ci_low <= base.metrics[metric].ci_high
    note = " The 95% intervals overlap, so the difference is not established." if overlap else ""
    return [f"Best SSD ({label}, T_eval {top.t_eval:g}) vs best base (T_eval {base.t_eval:g}): "
            f"{gap:+.1f} points of {metric}.{note}"]


def write_report(points: list[SweepPoint], out_dir: str | Path, *, title: str = "Temperature study",
                 metric: str = "pass@1") -> Path:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plot_metric(points, "t_eval", out_dir / "pass1_vs_t_eval.png", metric)
    plot_metric(points, "t_eff", out_dir / "pass1_vs_t_eff.png", metric)
    metrics = sorted({m for p in points for m in p.metrics}, key=lambda m: int(m.split("@")[1]))
    best = best_points(points, metric)
    lines = [f"# {title}", "", "![pass@1 vs T_eval](pass1_vs_t_eval.png)", "",
             "![pass@1 vs T_eff](pass1_vs_t_eff.png)", "", f"## Best temperature per model ({metric})", "",
             "| model | best T_eval | T_eff | " + f"{metric} (95% CI) |", "|---|---|---|---|"]
    lines += [f"| {label} | {p.t_eval:g} | {p.t_eff:g} | {_fmt(p, metric)} |" for label, p in best.items()]
    lines += ["", *_verdict(best, metric), "", "## Every point", "", *_points_table(points, metrics), ""]
    path = out_dir / REPORT_FILE
    path.write_text("\n".join(lines))
    return path

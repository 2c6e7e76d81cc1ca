"""Lock/fork classification, per-class before/after means, and the example positions to draw."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from diagnostics.config import AnalysisConfig
from diagnostics.positions import PositionTable

LOCK, FORK, OTHER = "lock", "fork", "other"
CLASSES = (LOCK, FORK, OTHER)

# The measures reported before/after for every class; `tail` is class-specific (below).
MEASURES = ("tail", "entropy", "head_entropy", "top1", "compression", "head", "kl")
# Which tail defines "distractor mass" for a class: outside top-1 at locks, outside S elsewhere.
TAIL_COLUMN = {LOCK: "lock_tail", FORK: "fork_tail", OTHER: "fork_tail"}


def classify(top1: np.ndarray, entropy: np.ndarray, settings: AnalysisConfig) -> np.ndarray:
    """Label each position lock / fork / other from the *base* distribution at settings.t_eval."""
    labels = np.full(top1.shape, OTHER, dtype=object)
    labels[top1 >= settings.lock_min_top1] = LOCK
    labels[(entropy >= settings.fork_min_entropy) & (top1 < settings.fork_max_top1)] = FORK
    return labels


@dataclass
class ClassSummary:
    """Means over one class's positions; `before` is the base model, `after` the SSD model."""
    name: str
    count: int
    before: dict[str, float] = field(default_factory=dict)
    after: dict[str, float] = field(default_factory=dict)
    # Share of positions that moved the way the seed predicts: at locks the tail fell; at forks the
    # spread among the options in S (entropy restricted to S) kept >= 90% of its value. Total
    # entropy is not the fork criterion: removing a junk tail rightly lowers it.
    share_as_predicted: float = float("nan")

    def to_dict(self) -> dict:
        return asdict(self)


FORK_ENTROPY_KEPT_FRACTION = 0.9   # "spread preserved" at a fork: head entropy after >= 90% of before


def column(table: PositionTable, name: str, which: str, class_name: str) -> np.ndarray:
    """A before ('base') or after ('ssd') column; `tail` resolves to the class's tail."""
    resolved = TAIL_COLUMN[class_name] if name == "tail" else name
    return getattr(table, f"{which}_{resolved}")


def summarize_class(table: PositionTable, labels: np.ndarray, class_name: str) -> ClassSummary:
    chosen = labels == class_name
    summary = ClassSummary(name=class_name, count=int(chosen.sum()))
    if summary.count == 0:
        return summary
    for measure in MEASURES:
        summary.before[measure] = float(column(table, measure, "base", class_name)[chosen].mean())
        summary.after[measure] = float(column(table, measure, "ssd", class_name)[chosen].mean())
    summary.share_as_predicted = _share_as_predicted(table, chosen, class_name)
    return summary


def _share_as_predicted(table: PositionTable, chosen: np.ndarray, class_name: str) -> float:
    if class_name == LOCK:
        return float((table.ssd_lock_tail[chosen] < table.base_lock_tail[chosen]).mean())
    if class_name == FORK:
        kept = table.ssd_head_entropy[chosen] >= FORK_ENTROPY_KEPT_FRACTION * table.base_head_entropy[chosen]
        return float(kept.mean())
    return float("nan")  # no prediction for unclassified positions


def summarize(table: PositionTable, labels: np.ndarray) -> dict[str, ClassSummary]:
    return {name: summarize_class(table, labels, name) for name in CLASSES}


# -- examples ----------------------------------------------------------------------------------

# The quantity whose change picks the examples of each class, and how the plots name it.
EXAMPLE_CHANGE = {LOCK: "lock_tail", FORK: "entropy"}
CHANGE_LABEL = {"lock_tail": "distractor mass", "entropy": "entropy"}


@dataclass
class TokenBar:
    token: str
    before: float
    after: float


@dataclass
class ExamplePosition:
    """One position drawn as a bar chart: the union of both models' top tokens."""
    class_name: str
    kind: str                 # "typical" (median change) or "largest change"
    sample_id: str
    completion_index: int
    actual_token: str
    change_name: str
    before: float
    after: float
    bars: list[TokenBar]

    def to_dict(self) -> dict:
        return asdict(self)


def pick_examples(table: PositionTable, labels: np.ndarray, per_class: int,
                  token_text) -> list[ExamplePosition]:
    """For each of lock and fork: the position with the median change, then the largest changes."""
    examples = []
    for class_name, change_column in EXAMPLE_CHANGE.items():
        rows = np.flatnonzero(labels == class_name)
        if rows.size == 0 or per_class == 0:
            continue
        before = getattr(table, f"base_{change_column}")[rows]
        after = getattr(table, f"ssd_{change_column}")[rows]
        for row, kind in _chosen_rows(rows, after - before, per_class):
            examples.append(_example(table, int(row), class_name, kind, change_column, token_text))
    return examples


def _chosen_rows(rows: np.ndarray, change: np.ndarray, per_class: int) -> list[tuple[int, str]]:
    by_change = np.argsort(change, kind="stable")
    chosen = [(rows[by_change[len(by_change) // 2]], "typical")]
    for i in np.argsort(-np.abs(change), kind="stable"):
        if len(chosen) >= per_class:
            break
        if rows[i] not in [r for r, _ in chosen]:
            chosen.append((rows[i], "largest change"))
    return chosen[:per_class]


def _example(table: PositionTable, row: int, class_name: str, kind: str, change_column: str,
             token_text) -> ExamplePosition:
    probs: dict[int, list[float]] = {}
    for token, before, after in zip(table.base_top_ids[row], table.base_top_probs[row],
                                    table.ssd_probs_at_base_top[row]):
        probs[int(token)] = [float(before), float(after)]
    for token, after, before in zip(table.ssd_top_ids[row], table.ssd_top_probs[row],
                                    table.base_probs_at_ssd_top[row]):
        probs.setdefault(int(token), [float(before), float(after)])
    # Keep the tokens that matter to either model, most probable first.
    ordered = sorted(probs.items(), key=lambda item: -max(item[1]))[:len(table.base_top_ids[row])]
    return ExamplePosition(
        class_name=class_name, kind=kind, sample_id=str(table.sample_id[row]),
        completion_index=int(table.completion_index[row]),
        actual_token=token_text(int(table.token_id[row])), change_name=CHANGE_LABEL[change_column],
        before=float(getattr(table, f"base_{change_column}")[row]),
        after=float(getattr(table, f"ssd_{change_column}")[row]),
        bars=[TokenBar(token_text(t), b, a) for t, (b, a) in ordered])

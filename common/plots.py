"""Headless matplotlib, and one way to save a figure: every report in the project draws through here."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FIGURE_DPI = 120


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend (servers and CI have no display); imported on first use."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: str | Path, *, dpi: int = FIGURE_DPI) -> Path:
    """Lay out, write the PNG, and free the figure (pyplot keeps every open figure alive)."""
    path = Path(path)
    figure.tight_layout()
    figure.savefig(path, dpi=dpi)
    pyplot().close(figure)
    return path

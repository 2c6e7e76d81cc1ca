"""Lock/fork diagnostics: how an SSD round reshaped the model's next-token distributions.

`diagnose()` scores held-out samples under the base and the SSD model; `write_report_section()`
draws the plots and returns the markdown section; `ssd diagnose` (diagnostics/cli.py) wraps both.
Imports are lazy so that `ssd --help` does not pay for torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["diagnose", "write_report_section", "DiagnosticsResult", "AnalysisConfig"]

if TYPE_CHECKING:
    from diagnostics.analysis import DiagnosticsResult, diagnose
    from diagnostics.config import AnalysisConfig
    from diagnostics.report import write_report_section

_HOMES = {"diagnose": "diagnostics.analysis", "DiagnosticsResult": "diagnostics.analysis",
          "write_report_section": "diagnostics.report", "AnalysisConfig": "diagnostics.config"}


def __getattr__(name: str) -> Any:
    if name not in _HOMES:
        raise AttributeError(f"module 'diagnostics' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_HOMES[name]), name)

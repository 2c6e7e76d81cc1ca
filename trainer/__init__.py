"""The SSD LoRA trainer: `train(TrainConfig(...), source)` or `ssd train --config train.yaml`.

Names are imported lazily so that `ssd --help` (which registers `trainer.cli`) does not pay for
importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "trainer.config",
    "train": "trainer.recipe",
    "TrainResult": "trainer.recipe",
    "LoRAFinetuneRecipe": "trainer.recipe",
    "push_adapter": "trainer.recipe",
    "SampleSource": "trainer.data",
    "HttpSampleSource": "trainer.data",
    "JsonlSampleSource": "trainer.data",
    "ListSampleSource": "trainer.data",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'trainer' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)

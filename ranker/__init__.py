"""The liquid-universe pairwise ranker: inputs, data, universe, split, pairs, model, training,
metrics, costs, checkpoints and the synthetic market. Never imports ray.

Submodules load on first use, so `import ranker; ranker.checkpoint.load(path)` works without
importing every module up front.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_SUBMODULES = ("backtest", "checkpoint", "config", "costs", "data", "device", "inputs", "metrics",
               "model", "overfit_stats", "pairs", "panel", "schema", "split", "storage", "synth",
               "train", "universe")  # fmt: skip
__all__ = list(_SUBMODULES)


def __getattr__(name: str) -> ModuleType:
    if name in _SUBMODULES:
        return importlib.import_module(f"ranker.{name}")
    raise AttributeError(f"module 'ranker' has no attribute {name!r}")

"""The time split: train / val / test over the liquid universe's dates, then news rows only."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ranker.config import ConfigError


@dataclass(frozen=True)
class SplitConfig:
    """Cumulative fractions of the universe's unique dates, as in the research notebook:
    train = dates[:int(n*train_end)], val = dates[int(n*train_end):int(n*val_end)], test = rest."""

    train_end: float = 0.7
    val_end: float = 0.8
    news_only: bool = True

    def __post_init__(self) -> None:
        if not (0.0 < self.train_end < self.val_end < 1.0):
            raise ConfigError([
                f"split: need 0 < train_end < val_end < 1, got train_end={self.train_end!r}, "
                f"val_end={self.val_end!r}"
            ])  # fmt: skip

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def split_dates(dates: np.ndarray, cfg: SplitConfig) -> tuple[np.datetime64, np.datetime64]:
    """The first val date and the first test date for the unique sorted `dates`.

    Raises:
        ValueError: a split would hold no dates.
    """
    n = len(dates)
    train_end = int(n * cfg.train_end)
    val_end = int(n * cfg.val_end)
    if train_end < 1 or val_end <= train_end or val_end >= n:
        raise ValueError(
            f"too few dates for the split: {n} liquid date(s) give train {train_end}, "
            f"val {max(val_end - train_end, 0)}, test {max(n - val_end, 0)} date(s). "
            f"Fix: provide more dates, or change split.train_end/split.val_end."
        )
    return dates[train_end], dates[val_end]


def has_news(emb: np.ndarray) -> np.ndarray:
    """(N,) bool: rows whose embedding has any non-zero value."""
    return np.any(emb != 0, axis=1)

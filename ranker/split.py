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


WINDOWS = ("expanding", "rolling")


@dataclass(frozen=True)
class WalkForwardConfig:
    """Walk-forward folds over the data's dates: `folds` consecutive test windows that together
    cover the last `test` share of the dates, each fold with its val window (`val` share of the
    dates) right before its test window and its train window before that: from the first date
    (`expanding`) or the `train` share of the dates (`rolling`). folds 0: the single split
    (`SplitConfig`)."""

    folds: int = 0
    window: str = "expanding"
    test: float = 0.4
    val: float = 0.1
    train: float = 0.4  # rolling only
    min_dates: int = 20  # the fewest dates any fold's train, val or test window may have

    def __post_init__(self) -> None:
        errors = []
        k = self.folds
        if not (isinstance(k, int) and not isinstance(k, bool) and (k == 0 or k >= 2)):
            errors.append(f"walk_forward.folds={k!r}: 0 (the single split) or an integer >= 2")
        if self.window not in WINDOWS:
            errors.append(f"walk_forward.window={self.window!r}: one of {list(WINDOWS)}")
        for name in ("test", "val", "train"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and not isinstance(v, bool) and 0 < v < 1):
                errors.append(f"walk_forward.{name}={v!r}: a share of the dates in (0, 1)")
        if (
            isinstance(self.test, float)
            and isinstance(self.val, float)
            and self.test + self.val >= 1
        ):
            errors.append(f"walk_forward.test + walk_forward.val = {self.test + self.val:g}: must "
                          f"leave dates to train on (below 1)")  # fmt: skip
        if not (isinstance(self.min_dates, int) and self.min_dates >= 2):
            errors.append(f"walk_forward.min_dates={self.min_dates!r}: an integer >= 2")
        if errors:
            raise ConfigError(errors)

    @property
    def on(self) -> bool:
        return self.folds >= 2

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class FoldWindow:
    """One fold's dates, as the first day of each window (day numbers since 1970, or any
    comparable date values); `end` is the first date after its test window (None: the data's
    end). Train is [train_start, val_start), val [val_start, test_start), test [test_start,
    end)."""

    index: int  # 1-based
    train_start: Any
    val_start: Any
    test_start: Any
    end: Any
    n_train: int
    n_val: int
    n_test: int


def _some(problems: list[str], shown: int = 3) -> str:
    """The first few of a list of problems, and how many more there are."""
    more = len(problems) - shown
    return "; ".join(problems[:shown]) + (
        f"; and {more} more fold(s) like them" if more > 0 else ""
    )


def fold_windows(dates: np.ndarray, cfg: WalkForwardConfig) -> list[FoldWindow]:
    """The folds over the unique sorted `dates`.

    Raises:
        ValueError: a fold would have fewer than `min_dates` dates in a window (naming the
            fold and its counts), or the train windows would start before the first date.
    """
    n, k = len(dates), cfg.folds
    test_start = n - int(n * cfg.test)
    cuts = [test_start + (n - test_start) * i // k for i in range(k + 1)]
    n_val, n_train = int(n * cfg.val), int(n * cfg.train)
    out, problems = [], []
    for i in range(k):
        t0, t1 = cuts[i], cuts[i + 1]
        v0 = t0 - n_val
        tr0 = 0 if cfg.window == "expanding" else v0 - n_train
        counts = {"train": v0 - max(tr0, 0), "val": n_val, "test": t1 - t0}
        if tr0 < 0 or min(counts.values()) < cfg.min_dates:
            early = (
                f" (its rolling train window would start {-tr0} date(s) early)" if tr0 < 0 else ""
            )
            problems.append(f"fold {i + 1} has {counts['train']} train, {counts['val']} val and "
                            f"{counts['test']} test date(s){early}")  # fmt: skip
            continue
        out.append(FoldWindow(i + 1, dates[tr0], dates[v0], dates[t0],
                              dates[t1] if t1 < n else None, *counts.values()))  # fmt: skip
    if problems:
        raise ValueError(
            f"walk-forward over {n} dates ({k} folds, {cfg.window}): {_some(problems)}; "
            f"each window needs {cfg.min_dates}+. Fix: fewer walk_forward.folds, a larger "
            f"walk_forward.test or val, or more dates."
        )
    return out

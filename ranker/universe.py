"""The liquid universe: which rows are liquid enough to trade.

Two rules, both on dollar volume (close × volume) from the prices file:
- `full_period` (the research notebook's): a symbol is liquid when its mean dollar volume over
  the whole prices file is at least `threshold`. Simple, but it looks ahead: a stock that became
  liquid in 2025 counts as liquid in 2021.
- `trailing` (point in time): a row is liquid when its symbol's mean dollar volume over the
  `window` trading days strictly before its feature_date is at least `threshold`. A row with fewer
  than `window` days of history is not liquid. No future prices are used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ranker.config import ConfigError

MODES = ("full_period", "trailing")
LIQUID_THRESHOLD = 50e6  # the notebook's rule: $50M mean daily dollar volume (close x volume)


@dataclass(frozen=True)
class UniverseConfig:
    mode: str = "full_period"
    threshold: float = LIQUID_THRESHOLD
    window: int = 60

    def __post_init__(self) -> None:
        errors = []
        if self.mode not in MODES:
            errors.append(f"universe.mode={self.mode!r}: must be one of {list(MODES)}")
        t = self.threshold
        if not (isinstance(t, int | float) and not isinstance(t, bool) and math.isfinite(t)
                and t >= 0):  # fmt: skip
            errors.append(f"universe.threshold={t!r}: must be a finite dollar amount >= 0")
        w = self.window
        if not (isinstance(w, int) and not isinstance(w, bool) and w >= 1):
            errors.append(f"universe.window={w!r}: must be a positive integer")
        if errors:
            raise ConfigError(errors)

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def liquid_rows(
    cfg: UniverseConfig,
    price_symbols: np.ndarray,
    price_days: np.ndarray,
    dollar_volume: np.ndarray,
    row_symbols: np.ndarray,
    row_days: np.ndarray,
    n_symbols: int,
) -> np.ndarray:
    """(N,) bool: the rows liquid under `cfg`'s rule (`full_period_liquid` of each row's
    symbol, or `trailing_liquid`).

    Args:
        price_symbols, price_days, dollar_volume: (M,) prices rows (symbol code, day number,
            close x volume), in the prices file's order.
        row_symbols, row_days: (N,) the rows to classify.
        n_symbols: number of symbol codes.
    """
    if cfg.mode == "full_period":
        liquid, _ = full_period_liquid(price_symbols, dollar_volume, n_symbols, cfg.threshold)
        return liquid[row_symbols]
    return trailing_liquid(price_symbols, price_days, dollar_volume, row_symbols, row_days,
                           cfg.threshold, cfg.window)  # fmt: skip


def full_period_liquid(
    price_symbols: np.ndarray, dollar_volume: np.ndarray, n_symbols: int, threshold: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per-symbol liquidity over the whole prices file.

    Args:
        price_symbols: (M,) int symbol code of each prices row.
        dollar_volume: (M,) close × volume of each prices row.
        n_symbols: number of symbol codes.
        threshold: minimum mean dollar volume.

    Returns:
        (liquid, mean_dv): (n_symbols,) bool, and (n_symbols,) float64 mean dollar volume
        (NaN for symbols with no prices rows).
    """
    total = np.bincount(price_symbols, weights=dollar_volume, minlength=n_symbols)
    count = np.bincount(price_symbols, minlength=n_symbols)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dv = total / count
    mean_dv[count == 0] = np.nan
    liquid = np.zeros(n_symbols, dtype=bool)
    has = count > 0
    liquid[has] = mean_dv[has] >= threshold
    return liquid, mean_dv


def trailing_liquid(
    price_symbols: np.ndarray,
    price_days: np.ndarray,
    dollar_volume: np.ndarray,
    row_symbols: np.ndarray,
    row_days: np.ndarray,
    threshold: float,
    window: int,
) -> np.ndarray:
    """Point-in-time liquidity of each row, from the `window` trading days before its date.

    Args:
        price_symbols, price_days, dollar_volume: (M,) prices rows (symbol code, day number,
            close × volume); any order.
        row_symbols, row_days: (N,) the rows to classify.
        threshold: minimum trailing mean dollar volume.
        window: number of the symbol's trading days (prices rows) strictly before the row's day.

    Returns:
        (N,) bool.
    """
    order = np.lexsort((price_days, price_symbols))
    sym = price_symbols[order].astype(np.int64)
    day = price_days[order].astype(np.int64)
    dv = dollar_volume[order].astype(np.float64)
    # Days fit in 32 bits, so (symbol, day) packs into one sortable int64 key.
    shift = np.int64(1) << np.int64(32)
    pkey = sym * shift + (day - day.min() if len(day) else 0)
    base = day.min() if len(day) else 0
    csum = np.concatenate([[0.0], np.cumsum(dv)])
    first = np.searchsorted(sym, np.arange(sym.max() + 1 if len(sym) else 0), side="left")

    rsym = row_symbols.astype(np.int64)
    rkey = rsym * shift + (row_days.astype(np.int64) - base)
    end = np.searchsorted(pkey, rkey, side="left")  # prices rows strictly before the row's day
    known = rsym < len(first)
    start_of_symbol = np.where(
        known, first[np.minimum(rsym, len(first) - 1)] if len(first) else 0, 0
    )
    start = end - window
    enough = known & (start >= start_of_symbol)
    start = np.maximum(start, 0)
    mean = (csum[end] - csum[start]) / window
    return enough & (mean >= threshold)


def timeline(
    days: np.ndarray, symbols: np.ndarray, masks: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The liquid set of each rule over time, and how the rules differ, per date.

    Args:
        days: (N,) int day number of each dataset row.
        symbols: (N,) int symbol code of each row.
        masks: rule name -> (N,) bool, the rows each rule keeps.

    Returns:
        `date` (n_dates,) datetime64[D] every date of the rows; per rule `<rule>_names` (how many
        symbols the rule keeps that date) and `<rule>_turnover` (names that entered or left
        since the date before, over twice the day before's count; 0 on the first date);
        with two rules, `differ` (symbols kept by exactly one of them).
    """
    dates, d = np.unique(days, return_inverse=True)
    _, s = np.unique(symbols, return_inverse=True)
    out: dict[str, np.ndarray] = {"date": dates.astype("datetime64[D]")}
    member = {}
    for rule, mask in masks.items():
        m = np.zeros((len(dates), int(s.max()) + 1 if len(s) else 0), dtype=bool)
        m[d[mask], s[mask]] = True
        member[rule] = m
        n = m.sum(axis=1)
        moved = np.zeros(len(dates))
        if len(dates) > 1:
            moved[1:] = (m[1:] ^ m[:-1]).sum(axis=1) / np.maximum(2 * n[:-1], 1)
        out[f"{rule}_names"] = n
        out[f"{rule}_turnover"] = moved
    if len(member) == 2:
        a, b = member.values()
        out["differ"] = (a ^ b).sum(axis=1)
    return out

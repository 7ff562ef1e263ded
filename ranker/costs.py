"""Trading costs of the daily top-k / bottom-k books, as pure numpy on a `metrics.Daily`.

Two models:

- flat (the research notebook's "Cost-Adjusted Analysis"): every day each book pays the round-trip
  trading cost `spread + 2 * impact`, as if it were rebuilt from scratch; the short book also pays
  `borrow / 252`.
- turnover-aware: each book pays the round-trip cost only on the fraction of its k names that were
  not in the same book on the previous kept date (the first date counts as a full rebuild); the
  short book still pays borrow on the whole book every day.

Break-even cost: the L/S net daily return is
`ls_net = ls_gross - c * (turnover_long + turnover_short) / 2 - borrow / 252 / 2`
for a round-trip trading cost c (= spread + 2 * impact). Its mean is zero at
`c* = (mean(ls_gross) - borrow / 252 / 2) / mean((turnover_long + turnover_short) / 2)`,
reported in bps (c* x 1e4). The flat model is the same with turnover 1 every day.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ranker.config import ConfigError
from ranker.metrics import ANN, Daily, annualized, sharpe

BPS = 1e4


@dataclass(frozen=True)
class CostModel:
    """Per-trade costs as fractions of the traded value.

    Attributes:
        spread: round-trip bid-ask spread (0.001 = 10 bps).
        impact: market impact each way (0.0005 = 5 bps), paid on entry and on exit.
        borrow: annual borrow fee on the short book (0.03 = 3%), charged every day.
    """

    spread: float = 0.001
    impact: float = 0.0005
    borrow: float = 0.03

    def __post_init__(self) -> None:
        errors = []
        for name in ("spread", "impact", "borrow"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                errors.append(f"costs.{name}={value!r}: must be a finite fraction >= 0")
        if errors:
            raise ConfigError(errors)

    @property
    def round_trip(self) -> float:
        """Cost of replacing a whole book once: spread + 2 * impact."""
        return self.spread + 2 * self.impact

    @property
    def borrow_daily(self) -> float:
        return self.borrow / ANN

    def as_dict(self) -> dict[str, float]:
        return {"spread": self.spread, "impact": self.impact, "borrow": self.borrow}


def breakeven_bps(ls_gross: np.ndarray, turnover: np.ndarray, borrow_daily: float) -> float:
    """Round-trip trading cost, in bps, at which the mean L/S net daily return is zero.

    Solves `mean(ls_gross) - c * mean(turnover) - borrow_daily / 2 = 0` for c (the short half of
    the L/S book pays the borrow).

    Args:
        ls_gross: (n,) daily L/S gross return.
        turnover: (n,) daily turnover averaged over the two books (1 = both fully replaced).
        borrow_daily: daily borrow fee on the short book.

    Returns:
        c * 1e4. Negative when borrow alone already makes the L/S lose money (mean gross <=
        borrow / 2), which keeps the value monotone in the gross return. NaN with no date. With
        zero mean turnover, trading costs never bite: +inf if the net of borrow is positive,
        -inf if negative, NaN if exactly zero.
    """
    ls_gross = np.asarray(ls_gross, dtype=np.float64)
    turnover = np.asarray(turnover, dtype=np.float64)
    if ls_gross.shape != turnover.shape:
        raise ValueError(f"ls_gross {ls_gross.shape} and turnover {turnover.shape} must match")
    if len(ls_gross) == 0:
        return float("nan")
    excess = float(np.mean(ls_gross)) - borrow_daily / 2
    mean_turnover = float(np.mean(turnover))
    if mean_turnover == 0:
        return math.copysign(math.inf, excess) if excess != 0 else float("nan")
    return excess / mean_turnover * BPS


@dataclass(frozen=True, eq=False)
class Turnover:
    """Daily turnover of the books: the fraction of the k names not held the previous kept date.

    Attributes:
        long: (n,) float64 long-book turnover; the first date is 1.
        short: (n,) float64 short-book turnover; the first date is 1.
        mean: (n,) float64 (long + short) / 2.
    """

    long: np.ndarray
    short: np.ndarray
    mean: np.ndarray


def _book_turnover(names: np.ndarray) -> np.ndarray:
    """(n, k) symbol ids per date -> (n,) fraction of each date's names absent the date before."""
    out = np.ones(len(names))
    if len(names) > 1:
        held = (names[1:, :, None] == names[:-1, None, :]).any(axis=2)  # (n-1, k, k) -> (n-1, k)
        out[1:] = (~held).mean(axis=1)
    return out


def books_turnover(long_symbols: np.ndarray, short_symbols: np.ndarray) -> Turnover:
    """Daily turnover from the symbols held: (n, k) ids of the long and the short book per date."""
    long = _book_turnover(np.asarray(long_symbols))
    short = _book_turnover(np.asarray(short_symbols))
    return Turnover(long=long, short=short, mean=(long + short) / 2)


def turnover(d: Daily, symbol_ids: np.ndarray) -> Turnover:
    """Daily turnover of the long and short books between consecutive kept dates.

    Args:
        d: per-date books from `metrics.daily`.
        symbol_ids: (N,) int symbol of each row the Daily's row indices point into (a Panel's
            `symbol_ids`).

    Returns:
        The `Turnover` series, one value per kept date.
    """
    symbol_ids = np.asarray(symbol_ids)
    if symbol_ids.shape != (d.n_rows,):
        raise ValueError(
            f"symbol_ids has shape {symbol_ids.shape}, expected ({d.n_rows},): one per row of the "
            "arrays the Daily was computed from"
        )
    return books_turnover(symbol_ids[d.long_rows], symbol_ids[d.short_rows])


def net_returns(
    long: np.ndarray, short: np.ndarray, to: Turnover, costs: CostModel
) -> dict[str, dict[str, np.ndarray]]:
    """Daily returns of the long, short and L/S books: gross, net of flat costs, net of
    turnover-aware costs. The one place the cost formulas are written.

    flat:     long - rt;                 short - rt - borrow/252
    turnover: long - turnover_long * rt; short - turnover_short * rt - borrow/252
    with rt = spread + 2 impact, and ls = (long + short) / 2 in each.

    Returns:
        {"gross" | "flat" | "turnover": {"long" | "short" | "ls": (n,) float64}}.
    """
    rt, borrow = costs.round_trip, costs.borrow_daily
    long, short = np.asarray(long, dtype=np.float64), np.asarray(short, dtype=np.float64)
    out = {
        "gross": {"long": long, "short": short},
        "flat": {"long": long - rt, "short": short - rt - borrow},
        "turnover": {"long": long - to.long * rt, "short": short - to.short * rt - borrow},
    }
    for books in out.values():
        books["ls"] = (books["long"] + books["short"]) / 2
    return out


def _net_metrics(prefix: str, books: dict[str, np.ndarray]) -> dict[str, float]:
    out: dict[str, float] = {}
    for side in ("long", "short", "ls"):
        out[f"{prefix}{side}_net_return"] = annualized(books[side])
        out[f"{prefix}{side}_net_sharpe"] = sharpe(books[side])
    return out


def flat_costs(d: Daily, costs: CostModel | None = None) -> dict[str, float]:
    """The notebook's flat cost model: both books fully traded every day (see `net_returns`).

    Args:
        d: per-date gross returns from `metrics.daily`.
        costs: the cost model (default `CostModel()`).

    Returns:
        long/short/ls `_net_return` (mean x 252; NaN with no date) and `_net_sharpe` (as
        `metrics.sharpe`), `breakeven_bps` (turnover 1 every day), and spread, impact, borrow.
    """
    costs = CostModel() if costs is None else costs
    full = Turnover(np.ones(len(d)), np.ones(len(d)), np.ones(len(d)))
    out = _net_metrics("", net_returns(d.long, d.short, full, costs)["flat"])
    out["breakeven_bps"] = breakeven_bps(d.ls, full.mean, costs.borrow_daily)
    return out | costs.as_dict()


def turnover_costs(
    d: Daily, symbol_ids: np.ndarray, costs: CostModel | None = None
) -> dict[str, float]:
    """Net returns when trading costs are paid only on the names that change (see
    `net_returns`).

    Args:
        d: per-date gross returns and books from `metrics.daily`.
        symbol_ids: (N,) int symbol of each row (see `turnover`).
        costs: the cost model (default `CostModel()`).

    Returns:
        `to_`-prefixed long/short/ls `_net_return` and `_net_sharpe` (as `flat_costs`),
        `mean_turnover`, `mean_long_turnover`, `mean_short_turnover` (NaN with no date) and
        `to_breakeven_bps` (see `breakeven_bps`).
    """
    costs = CostModel() if costs is None else costs
    to = turnover(d, symbol_ids)
    out = _net_metrics("to_", net_returns(d.long, d.short, to, costs)["turnover"])
    out["mean_turnover"] = float(np.mean(to.mean)) if len(d) else float("nan")
    out["mean_long_turnover"] = float(np.mean(to.long)) if len(d) else float("nan")
    out["mean_short_turnover"] = float(np.mean(to.short)) if len(d) else float("nan")
    out["to_breakeven_bps"] = breakeven_bps(d.ls, to.mean, costs.borrow_daily)
    return out


def cost_metrics(
    d: Daily, symbol_ids: np.ndarray, costs: CostModel | None = None
) -> dict[str, float]:
    """`flat_costs` and `turnover_costs` in one dict (their keys do not overlap)."""
    return flat_costs(d, costs) | turnover_costs(d, symbol_ids, costs)

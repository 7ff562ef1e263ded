"""A model's scores on one split as a backtest: the per-date IC and books, the notebook's
metrics, trading costs, and, on a synthetic market, the same metrics of the planted expected
return (the ceiling).

The one evaluation of a model on a held-out split: `liquid-search train`, the final model and
the baseline, the top configs of each stage and the benchmarks all call `backtest`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ranker.costs import CostModel, cost_metrics
from ranker.metrics import Daily, daily, evaluate_bounds, summarize
from ranker.panel import Panel


@dataclass(frozen=True, eq=False)
class Backtest:
    """The scores of one model on one Panel.

    Attributes:
        daily: per-date IC and books (`ranker.metrics.daily`), row indices into the Panel.
        metrics: `ranker.metrics.summarize` of `daily`.
        costs: `ranker.costs.cost_metrics` of `daily`: flat and turnover-aware net returns.
        oracle: `summarize` of the planted expected return on the same rows (synthetic markets
            only), else None.
    """

    daily: Daily
    metrics: dict[str, float]
    costs: dict[str, float]
    oracle: dict[str, float] | None


def backtest(panel: Panel, scores: np.ndarray, k: int, costs: CostModel | None = None) -> Backtest:
    """The backtest of `scores` (one per row of `panel`) with top/bottom-`k` books.

    Raises:
        ValueError: scores of the wrong length or with NaN, or k outside [1, 10].
    """
    d = daily(panel.bounds, scores, panel.returns, k=k)
    oracle = None
    if panel.oracle is not None:  # the one oracle statistic: synth.json's is the same function
        oracle = evaluate_bounds(panel.bounds, panel.oracle, panel.returns, k=k)
    return Backtest(d, summarize(d), cost_metrics(d, panel.symbol_ids, costs), oracle)

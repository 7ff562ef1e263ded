"""What a walk-forward run's folds say together (`results.WalkForward`).

- The out-of-sample record: the folds' test series (RUN_DIR/fold_<i>/final/final_test_daily.npz)
  concatenated in date order: IC Sharpe, mean IC with its t-statistic, the L/S book's Sharpe
  gross and net of both cost models (`ranker.costs.net_returns`; turnover across a fold
  boundary is the switch from one fold's book to the next's, as a trader would pay it).
- Search vs base across folds: each fold's difference of test mean IC (final minus base, over
  its seeds), their mean, standard error and how many folds each way.
- Selection stability: which point each stage chose in each fold, and how many folds agree.
"""

from __future__ import annotations

import itertools
import math
from collections import Counter

import numpy as np

from ranker.costs import CostModel, books_turnover, net_returns
from ranker.folds import Folds
from ranker.metrics import ANN, sharpe
from search.results import (
    AcrossFolds,
    FoldResult,
    Pooled,
    Stability,
    Summary,
    WalkForward,
    mean_std,
)
from search.rundir import RunDir, Series
from search.spec import SearchSpec


def concatenate(series: list[Series]) -> Series:
    """Consecutive, non-overlapping series as one, in date order.

    Raises:
        ValueError: two series overlap in dates.
    """
    ordered = sorted(series, key=lambda s: s.date[0] if len(s.date) else np.datetime64("NaT"))
    for a, b in itertools.pairwise(ordered):
        if len(a.date) and len(b.date) and a.date[-1] >= b.date[0]:
            raise ValueError(f"fold series overlap: {a.date[-1]} >= {b.date[0]}")
    return Series(*(np.concatenate([getattr(s, f) for s in ordered]) for f in
                    ("date", "ic", "long", "short", "ls", "long_symbols", "short_symbols")))  # fmt: skip


def pooled(z: Series, costs: CostModel) -> Pooled:
    """The record of one concatenated series (the project's Sharpe: `ranker.metrics.sharpe`)."""
    ic = z.ic[np.isfinite(z.ic)]
    mean, sd = (float(ic.mean()), float(ic.std())) if len(ic) else (0.0, 1.0)
    net = net_returns(z.long, z.short, books_turnover(z.long_symbols, z.short_symbols), costs)
    return Pooled(
        n_dates=len(z.date),
        ic_sharpe=mean / sd * math.sqrt(ANN) if sd > 0 else 0.0,
        mean_ic=mean,
        mean_ic_t=mean / (sd / math.sqrt(len(ic))) if sd > 0 and len(ic) > 1 else math.nan,
        ls_sharpe=sharpe(z.ls),
        ls_net_sharpe=sharpe(net["flat"]["ls"]),
        to_ls_net_sharpe=sharpe(net["turnover"]["ls"]),
        ls_return=float(np.mean(z.ls) * ANN) if len(z.ls) else math.nan,
    )


def _fold(i: int, s: Summary, folds: Folds) -> FoldResult:
    ds = folds.folds[i - 1]
    return FoldResult(
        index=i, train_dates=ds.info.train_dates or "-", val_dates=ds.info.val_dates or "-",
        test_dates=ds.info.test_dates or "-",
        choices={st.stage: dict(st.point) for st in s.stages},
        n_tied={st.stage: st.significance.n_tied for st in s.stages if st.significance},
        val=s.final.val, test=s.final.test, costs=s.final.costs,
        base_test=s.base.test if s.base else None,
        baseline_test=s.baseline.test if s.baseline else None,
        search_vs_base=s.search_vs_base, universes=s.universes,
    )  # fmt: skip


def across(results: list[FoldResult]) -> AcrossFolds | None:
    """Search vs base across folds (None when no fold trained its base config)."""
    diffs = [f.search_vs_base.by_metric["mean_ic"].diff for f in results if f.search_vs_base]
    if not diffs:
        return None
    spread = mean_std(diffs)
    better, worse = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
    se = spread.se
    how = (f"{abs(spread.mean) / se:.1f} standard errors" if math.isfinite(se) and se > 0
           else "no spread to judge it by")  # fmt: skip
    sentence = (
        f"Across {len(diffs)} folds the searched config's test mean IC minus the base config's "
        f"is {spread.mean:+.4f} ± {se:.4f} (standard error over folds, {how}); the search did "
        f"better in {better} fold(s), worse in {worse}."
    )
    return AcrossFolds(tuple(diffs), spread.mean, se, better, worse, sentence)


def stability(results: list[FoldResult]) -> Stability:
    stages = list(results[0].choices) if results else []
    choices = {st: tuple(f.choices.get(st, {}) for f in results) for st in stages}
    agree = {}
    for st, picks in choices.items():
        counts = Counter(tuple(sorted(p.items())) for p in picks)
        agree[st] = max(counts.values()) if counts else 0
    return Stability(choices, agree)


def pool(spec: SearchSpec, run_dir: RunDir, folds: Folds, summaries: list[Summary]) -> WalkForward:
    """The run's summary from its complete folds."""
    results = [_fold(w.index, s, folds) for w, s in zip(folds.windows, summaries, strict=True)]
    finals = [run_dir.fold(w.index).read_final_series("final", "test") for w in folds.windows]
    z = concatenate([s for s in finals if s is not None])
    return WalkForward(
        run_dir=run_dir.path, metric=spec.train.metric, window=spec.walk_forward.window,
        folds=tuple(results), pooled=pooled(z, spec.costs), pooled_base=None,
        across=across(results), stability=stability(results), costs_model=spec.costs,
    )  # fmt: skip

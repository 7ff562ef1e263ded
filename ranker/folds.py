"""Walk-forward folds of one load: the notebook's pipeline on several consecutive periods.

Each fold (`ranker.split.fold_windows`) trains before its val window, selects on the val window
right before its test window, and is tested on its own test window; the test windows are
consecutive, never overlap, and together cover the last part of the period. Each fold's universe
is decided from its own dates only: under the point-in-time rule (`trailing`) as of each date,
as always; under the full-period rule (the notebook's) from the prices of the fold's own dates,
its first train date to its test window's end, so the lookahead the rule admits stays inside the
fold.

The features are read once, for every row any fold uses, into one Panel (`Folds.base`, sorted
by date and symbol); each fold's splits are views of it (`Panel.subset`: their own returns and
symbols, the base's feature matrices), so the object store holds the features once, whatever
the number of folds.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from ranker.data import (
    DataError,
    DataInfo,
    Dataset,
    check_splits,
    date_range,
    liquid_rows_of,
    panel_of,
    read_block,
)
from ranker.inputs import Keys, open_inputs, outside_price_history, read_keys, rows_without_prices
from ranker.panel import Panel
from ranker.schema import FeatureColumns
from ranker.split import FoldWindow, SplitConfig, WalkForwardConfig, fold_windows
from ranker.universe import MODES, UniverseConfig, full_period_liquid
from ranker.universe import timeline as universe_timeline


@dataclass(frozen=True)
class Folds:
    """The folds of one load: every row's features once (`base`), and each fold's Dataset of
    views of it."""

    base: Panel
    windows: tuple[FoldWindow, ...]
    folds: tuple[Dataset, ...]
    columns: FeatureColumns
    universe: UniverseConfig
    walk_forward: WalkForwardConfig
    info: DataInfo  # the whole load's (its splits' fields: the first fold's train to last test)


def load_folds(
    source: str | os.PathLike,
    universe: UniverseConfig,
    walk_forward: WalkForwardConfig,
    *,
    news_only: bool = True,
    full_universe: bool = False,
    compare_universes: bool = False,
    log: Callable[[str], None] | None = None,
    threads: bool = True,
    bf16: bool = False,
) -> Folds:
    """Load the data once and cut it into walk-forward folds (see the module docstring).

    Args:
        full_universe: also build each fold's `full_train` (its train window, every symbol).
        compare_universes: also build each fold's test window under every universe rule, and
            the rules' liquid sets over the fold's dates.

    Raises:
        DataError: bad input (as `ranker.data.load`), or a fold without enough dates or names
            (naming the fold).
    """
    say = log or (lambda _msg: None)
    inputs = open_inputs(os.fspath(source))
    keys = read_keys(inputs, threads)
    liquid_rows_of(keys, universe, inputs.prices_uri)  # the whole file's universe: not empty
    try:
        windows = fold_windows(np.unique(keys.days), walk_forward)
    except ValueError as e:
        raise DataError(f"{inputs.dataset_uri}: {e}") from e
    masks = [_fold_masks(keys, universe, w, full_universe, compare_universes) for w in windows]
    union = np.logical_or.reduce([m for fold in masks for m in fold.values()])
    rows, block = read_block(inputs, keys, union, news_only, say, threads, bf16)
    symbols = tuple(str(s) for s in keys.symbols)
    base = panel_of(block, np.ones(len(rows), dtype=bool), symbols)
    # The base is the block sorted by (date, symbol): where each dataset row landed in it.
    order = np.lexsort((block.sym, block.days))
    at = np.full(len(keys.days), -1, dtype=np.int64)
    at[rows[order]] = np.arange(len(order))
    folds = []
    for w, fold in zip(windows, masks, strict=True):
        views = {name: _view(base, at, m) for name, m in fold.items()}
        _check_fold(views, w, inputs.dataset_uri)
        by_rule = {m: views[f"test_{m}"] for m in MODES if f"test_{m}" in views}
        timeline = None
        if compare_universes:
            in_fold = _in_window(keys.days, w.train_start, w.end)
            rules = {m: _rule_mask(keys, universe, w, m) & in_fold for m in MODES}
            timeline = universe_timeline(keys.days[in_fold], keys.sym[in_fold],
                                         {m: r[in_fold] for m, r in rules.items()})  # fmt: skip
        info = _fold_info(inputs.source, keys, views, block.oracle is not None)
        folds.append(Dataset(views["train"], views["val"], views["test"], inputs.columns, universe,
                             SplitConfig(news_only=news_only), views.get("full_train"), info,
                             by_rule or None, timeline))  # fmt: skip
    info = replace(folds[0].info, val_dates="-", test_dates=f"{folds[0].test.dates[0]} to "
                   f"{folds[-1].test.dates[-1]}")  # fmt: skip
    say(f"walk-forward: {len(windows)} folds ({walk_forward.window}); test windows "
        + ", ".join(f"{f.test.dates[0]}..{f.test.dates[-1]}" for f in folds)
        + f"; the features of {len(base):,} rows read once")  # fmt: skip
    return Folds(base, tuple(windows), tuple(folds), inputs.columns, universe, walk_forward, info)


def _in_window(days: np.ndarray, start: object, end: object | None) -> np.ndarray:
    ok = days >= start
    return ok if end is None else ok & (days < end)


def _rule_mask(keys: Keys, universe: UniverseConfig, w: FoldWindow, mode: str) -> np.ndarray:
    """(N,) bool: the rows liquid under `mode` for fold `w`: the full-period rule from the
    prices of the fold's own dates, the point-in-time rule as of each date."""
    if mode == "trailing":
        return liquid_rows_of(keys, replace(universe, mode="trailing"), "", "trailing")
    in_prices = _in_window(keys.p_days, w.train_start, w.end)
    liquid, _ = full_period_liquid(keys.p_sym[in_prices], (keys.close * keys.volume)[in_prices],
                                   len(keys.symbols), universe.threshold)  # fmt: skip
    return liquid[keys.sym]


def _fold_masks(
    keys: Keys, universe: UniverseConfig, w: FoldWindow, full: bool, compare: bool
) -> dict[str, np.ndarray]:
    """The dataset rows of each of a fold's splits."""
    liquid = _rule_mask(keys, universe, w, universe.mode)
    d = keys.days
    out = {
        "train": liquid & _in_window(d, w.train_start, w.val_start),
        "val": liquid & _in_window(d, w.val_start, w.test_start),
        "test": liquid & _in_window(d, w.test_start, w.end),
    }
    if full:
        out["full_train"] = _in_window(d, w.train_start, w.val_start)
    if compare:
        for m in MODES:
            rule = liquid if m == universe.mode else _rule_mask(keys, universe, w, m)
            out[f"test_{m}"] = rule & _in_window(d, w.test_start, w.end)
    return out


def _view(base: Panel, at: np.ndarray, mask: np.ndarray) -> Panel:
    """The rows `mask` (dataset rows) that the base kept (news rows), as a view of it."""
    pos = at[np.flatnonzero(mask)]
    return base.subset(np.sort(pos[pos >= 0]))


def _check_fold(views: dict[str, Panel], w: FoldWindow, uri: str) -> None:
    try:
        check_splits(views["train"], views["val"], views["test"], uri)
    except DataError as e:
        raise DataError(f"fold {w.index} (from {_day(w.train_start)}): {e}") from None


def _day(d: object) -> str:
    return str(np.datetime64(int(d), "D"))  # type: ignore[call-overload]


def _fold_info(source: str, keys: Keys, views: dict[str, Panel], has_oracle: bool) -> DataInfo:
    train, val, test = views["train"], views["val"], views["test"]
    full = views.get("full_train")
    return DataInfo(
        source=source, rows=len(keys.days), symbols=len(keys.symbols),
        liquid_rows=len(train) + len(val) + len(test),
        liquid_symbols=len(np.unique(np.concatenate([p.symbol_ids for p in (train, val, test)]))),
        rows_without_prices=int(rows_without_prices(keys).sum()), train_rows=len(train),
        val_rows=len(val), test_rows=len(test), train_dates=date_range(train),
        val_dates=date_range(val), test_dates=date_range(test),
        full_train_rows=len(full) if full is not None else None,
        rows_outside_price_history=int(outside_price_history(keys).sum()), has_oracle=has_oracle,
    )  # fmt: skip

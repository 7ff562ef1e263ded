"""Build the train / val / test Panels of one load: universe -> split -> news rows -> Panels.

The flow is one way: parquet -> validated schema (`ranker.inputs`) -> universe filter -> split ->
news filter -> Panels. The keys (dates, symbols, target) are read and checked first; the
universe and the split are decided on them; only then are the feature columns of the rows kept
streamed in (`ranker.inputs.read_features`), so the full table is never held in memory (and
never in pandas).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from ranker import schema
from ranker.inputs import (  # DataError is re-exported: callers catch ranker.data.DataError
    DataError,
    Inputs,
    Keys,
    open_inputs,
    outside_price_history,
    read_features,
    read_keys,
    read_oracle,
    rows_without_prices,
)
from ranker.panel import Panel
from ranker.schema import FeatureColumns
from ranker.split import SplitConfig, split_dates
from ranker.universe import MODES, UniverseConfig, full_period_liquid, liquid_rows
from ranker.universe import timeline as universe_timeline

__all__ = [
    "DataError",
    "DataInfo",
    "Dataset",
    "RowBlock",
    "check_splits",
    "date_range",
    "liquid_rows_of",
    "load",
    "panel_of",
    "read_block",
]


@dataclass(frozen=True)
class DataInfo:
    """What a load found, for run.json, summary.json and the report: the sizes of the data, of
    the universe and of each split.

    A document written before a field existed reads it as None (`from_dict`)."""

    source: str | None = None
    rows: int | None = None
    symbols: int | None = None
    liquid_rows: int | None = None
    liquid_symbols: int | None = None
    rows_without_prices: int | None = None
    train_rows: int | None = None
    val_rows: int | None = None
    test_rows: int | None = None
    train_dates: str | None = None  # "YYYY-MM-DD to YYYY-MM-DD"; "-" for an empty split
    val_dates: str | None = None
    test_dates: str | None = None
    full_train_rows: int | None = None  # None unless the load built `full_train`
    rows_outside_price_history: int | None = None
    has_oracle: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of run.json's and summary.json's `data` (the field names as keys)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataInfo:
        """`to_dict`'s object read back; a missing key is None, a key this version does not
        know (from a newer one) is left out."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass(frozen=True)
class Dataset:
    """The Panels of one load, plus what is needed to reproduce and describe it."""

    train: Panel
    val: Panel
    test: Panel
    columns: FeatureColumns
    universe: UniverseConfig
    split: SplitConfig
    full_train: Panel | None = None  # the full (not liquid) universe's train split, news only
    info: DataInfo = field(default_factory=DataInfo)
    # With `compare_universes`: the test split as each universe rule picks it ("full_period",
    # "trailing"; the spec's rule's is `test`), and the rules' liquid sets over time
    # (`ranker.universe.timeline`).
    test_by_rule: dict[str, Panel] | None = None
    universe_timeline: dict[str, np.ndarray] | None = None


@dataclass(frozen=True, eq=False)
class RowBlock:
    """Every row a load keeps (the union of its Panels' rows), in file order: the features and
    what the Panels need of the keys."""

    fund: np.ndarray  # (K, n_fund) float32
    price: np.ndarray  # (K, n_price) float32
    emb: np.ndarray  # (K, D) float32, or uint16 bfloat16 bits
    days: np.ndarray  # (K,) int64 feature_date as days since 1970-01-01
    sym: np.ndarray  # (K,) int32 codes into the load's symbols
    ret: np.ndarray  # (K,) float64 simple return
    oracle: np.ndarray | None  # (K,) float64 planted expected return (synthetic markets)


def load(
    source: str | os.PathLike,
    universe: UniverseConfig | None = None,
    split: SplitConfig | None = None,
    *,
    full_universe: bool = False,
    log: Callable[[str], None] | None = None,
    threads: bool = True,
    bf16: bool = False,
    compare_universes: bool = False,
) -> Dataset:
    """Load `ml_dataset.pqt` and `prices.pqt` from a directory or URI into Panels.

    Open and check the files -> read and check the keys -> the liquid universe -> the split
    dates -> stream the features of the rows kept -> Panels.

    Args:
        source: a local directory, or a URI pyarrow.fs understands (file://, s3://, gs://).
        universe: the liquid-universe rule (default: the notebook's full-period $50M rule).
        split: the date split (default 70/10/20, news rows only).
        full_universe: also build `full_train`, the full universe's train split (for the
            notebook's liquid-vs-full comparison); its dates end where the liquid val starts.
        log: called with one-line progress messages.
        threads: let pyarrow decode on several threads (False: this thread only).
        bf16: store the embeddings as bfloat16 (`Panel.emb_bf16`): half the memory, for
            `train.precision: bf16`. Rows, dates and every other array are the same.
        compare_universes: also build the test split under every universe rule
            (`Dataset.test_by_rule`) and the rules' liquid sets over time
            (`Dataset.universe_timeline`), with the config's threshold and window.

    Raises:
        DataError: a missing file or column, a non-numeric feature, a non-finite value,
            a duplicate (feature_date, symbol), an empty universe or too few dates.
    """
    universe = universe or UniverseConfig()
    split = split or SplitConfig()
    say = log or (lambda _msg: None)
    inputs = open_inputs(os.fspath(source))
    keys = read_keys(inputs, threads)
    liquid = liquid_rows_of(keys, universe, inputs.prices_uri)
    val_start, test_start = _split_starts(keys, liquid, split, inputs.dataset_uri)
    no_prices = rows_without_prices(keys)
    outside = outside_price_history(keys)
    say(_universe_line(keys, universe, liquid, no_prices, outside))
    want_full = full_universe & (keys.days < val_start)
    by_rule = {universe.mode: liquid}
    if compare_universes:
        by_rule = {m: liquid if m == universe.mode else liquid_rows_of(keys, universe, "", m)
                   for m in MODES}  # fmt: skip
    any_test = np.logical_or.reduce(list(by_rule.values())) & (keys.days >= test_start)
    rows, block = read_block(inputs, keys, liquid | want_full | any_test, split.news_only, say,
                              threads, bf16)  # fmt: skip
    symbols = tuple(str(s) for s in keys.symbols)
    days, kept_liquid = block.days, liquid[rows]
    train = panel_of(block, kept_liquid & (days < val_start), symbols)
    val = panel_of(block, kept_liquid & (days >= val_start) & (days < test_start), symbols)
    test = panel_of(block, kept_liquid & (days >= test_start), symbols)
    full_train = panel_of(block, want_full[rows], symbols) if full_universe else None
    test_by_rule = None
    if compare_universes:
        test_by_rule = {m: test if m == universe.mode else
                        panel_of(block, mask[rows] & (days >= test_start), symbols)
                        for m, mask in by_rule.items()}  # fmt: skip
    has_oracle = block.oracle is not None
    del block
    check_splits(train, val, test, inputs.dataset_uri)
    info = _describe(inputs.source, keys, liquid, no_prices, outside, has_oracle,
                     (train, val, test, full_train))  # fmt: skip
    timeline = universe_timeline(keys.days, keys.sym, by_rule) if compare_universes else None
    say(f"split (liquid, news only): train {len(train):,} rows ({date_range(train)}), "
        f"val {len(val):,} ({date_range(val)}), test {len(test):,} ({date_range(test)})")  # fmt: skip
    return Dataset(train, val, test, inputs.columns, universe, split, full_train, info,
                   test_by_rule, timeline)  # fmt: skip


def read_block(
    inputs: Inputs,
    keys: Keys,
    select: np.ndarray,
    news_only: bool,
    say: Callable[[str], None],
    threads: bool,
    bf16: bool,
) -> tuple[np.ndarray, RowBlock]:
    """The selected (news) rows' features, keys and oracle: (their positions in the dataset
    file, the block)."""
    feats = read_features(inputs.dataset, inputs.dataset_uri, inputs.columns, select, news_only,
                          keys, say, threads, bf16)  # fmt: skip
    rows = feats.rows
    days, sym = keys.days[rows], keys.sym[rows]
    oracle = read_oracle(inputs.source, days, sym, keys.symbol_array)
    block = RowBlock(fund=feats.fund, price=feats.price, emb=feats.emb, days=days, sym=sym,
                     ret=np.expm1(keys.target[rows]), oracle=oracle)  # fmt: skip
    return rows, block


def liquid_rows_of(
    keys: Keys, universe: UniverseConfig, prices_uri: str, mode: str | None = None
) -> np.ndarray:
    """(N,) bool: the dataset rows in the liquid universe; by `mode` when given (another rule,
    for comparison: it may be empty), else by the config's.

    Raises:
        DataError: the config's universe is empty.
    """
    dollar_volume = keys.close * keys.volume
    n_sym = len(keys.symbols)
    required = mode is None
    universe = universe if mode is None else replace(universe, mode=mode)
    liquid = liquid_rows(universe, keys.p_sym, keys.p_days, dollar_volume, keys.sym, keys.days,
                         n_sym)  # fmt: skip
    if required and not liquid.any():
        if universe.mode == "full_period":
            _, mean_dv = full_period_liquid(keys.p_sym, dollar_volume, n_sym, universe.threshold)
            hint = (
                f"the most liquid symbol's mean dollar volume is "
                f"${np.nanmax(mean_dv, initial=0):,.0f}"
            )
        else:
            hint = f"no row has {universe.window} trading days of history above it"
        raise DataError(
            f"{prices_uri}: the liquid universe is empty at universe.threshold=${universe.threshold:,.0f} "
            f"(mode {universe.mode}; {hint}). Fix: lower universe.threshold, or check that "
            f"{schema.PRICES_FILE} symbols match {schema.DATASET_FILE}."
        )
    return liquid


def _universe_line(
    keys: Keys,
    universe: UniverseConfig,
    liquid: np.ndarray,
    no_prices: np.ndarray,
    outside: np.ndarray,
) -> str:
    """What the universe rule kept, and the rows the prices' documented rules touched."""
    line = (
        f"universe {universe.mode} >= ${universe.threshold / 1e6:,.0f}M: {int(liquid.sum()):,} of "
        f"{len(keys.days):,} rows, {len(np.unique(keys.sym[liquid])):,} symbols, "
        f"{len(np.unique(keys.days[liquid])):,} dates"
    )
    if no_prices.any():
        line += f"; {int(no_prices.sum()):,} rows have no prices (not liquid)"
    if outside.any():
        line += (
            f"; {int(outside.sum()):,} rows fall outside their symbol's price history (judged "
            f"by the prices it has)"
        )
    return line


def _split_starts(
    keys: Keys, liquid: np.ndarray, split: SplitConfig, dataset_uri: str
) -> tuple[np.datetime64, np.datetime64]:
    """The first val and test day numbers, from the liquid rows' dates.

    Raises:
        DataError: too few liquid dates for the split.
    """
    try:
        return split_dates(np.unique(keys.days[liquid]), split)
    except ValueError as e:
        raise DataError(f"{dataset_uri}: {e}") from e


def check_splits(train: Panel, val: Panel, test: Panel, dataset_uri: str) -> None:
    """Every split has a date with enough names: 2 to pair (train), 10 for the metrics.

    Raises:
        DataError: a split without such a date.
    """
    for name, p in (("train", train), ("val", val), ("test", test)):
        sizes = np.diff(p.bounds)
        need = 2 if name == "train" else 10
        if len(p) == 0 or sizes.max() < need:
            raise DataError(
                f"{dataset_uri}: the {name} split has {len(p):,} liquid news row(s) and no date "
                f"with {need}+ names ({'pairs' if name == 'train' else 'metrics'} need them). "
                f"Fix: provide more symbols with news, or lower universe.threshold."
            )


def _describe(
    source: str,
    keys: Keys,
    liquid: np.ndarray,
    no_prices: np.ndarray,
    outside: np.ndarray,
    has_oracle: bool,
    panels: tuple[Panel, Panel, Panel, Panel | None],
) -> DataInfo:
    """What a load found: sizes of the data, the universe and each split (train, val, test,
    full_train)."""
    train, val, test, full_train = panels
    return DataInfo(
        source=source,
        rows=len(keys.days),
        symbols=len(keys.symbols),
        liquid_rows=int(liquid.sum()),
        liquid_symbols=len(np.unique(keys.sym[liquid])),
        rows_without_prices=int(no_prices.sum()),
        train_rows=len(train),
        val_rows=len(val),
        test_rows=len(test),
        train_dates=date_range(train),
        val_dates=date_range(val),
        test_dates=date_range(test),
        full_train_rows=len(full_train) if full_train is not None else None,
        rows_outside_price_history=int(outside.sum()),
        has_oracle=has_oracle,
    )


def date_range(p: Panel) -> str:
    return f"{p.dates[0]} to {p.dates[-1]}" if p.n_dates else "-"


def panel_of(base: RowBlock, mask: np.ndarray, symbols: tuple[str, ...]) -> Panel:
    """Rows `mask` of the kept block, sorted by (date, symbol), as a Panel."""
    idx = np.flatnonzero(mask)
    days, sym = base.days[idx], base.sym[idx]
    order = np.lexsort((sym, days))
    idx = idx[order]
    days = days[order]
    dates, counts = np.unique(days, return_counts=True)
    oracle = base.oracle
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        # The file was already in (date, symbol) order and the split is one run of rows:
        # slices are views, so the feature blocks are not copied a second time.
        take: Any = slice(int(idx[0]), int(idx[-1]) + 1)
    else:
        take = idx
    return Panel(
        fund=base.fund[take],
        price=base.price[take],
        emb=base.emb[take],
        returns=base.ret[idx],
        symbol_ids=base.sym[idx].astype(np.int32),
        dates=dates.astype("datetime64[D]"),
        bounds=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        symbols=symbols,
        oracle=None if oracle is None else oracle[idx],
    )

"""Read and validate the two parquet files and build the train / val / test Panels.

The flow is one way: parquet -> validated schema -> universe filter -> split -> news filter ->
Panels. The keys (dates, symbols, target) are read first; the ~800 feature columns are then
streamed batch by batch straight into row-major float32 arrays, keeping only the rows that are
used, so the full table is never held in memory (and never in pandas).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ranker import schema, storage
from ranker.panel import Panel, to_bf16_bits
from ranker.schema import FeatureColumns
from ranker.split import SplitConfig, split_dates
from ranker.universe import MODES, UniverseConfig, full_period_liquid, trailing_liquid
from ranker.universe import timeline as universe_timeline

BATCH_BYTES = 64 * 2**20  # decoded feature bytes per read: bounds the loader's working set


class DataError(ValueError):
    """Bad input data: the message names the file, the column, an example row and the fix."""


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
    info: dict[str, Any] = field(default_factory=dict)
    # With `compare_universes`: the test split as each universe rule picks it ("full_period",
    # "trailing"; the spec's rule's is `test`), and the rules' liquid sets over time
    # (`ranker.universe.timeline`).
    test_by_rule: dict[str, Panel] | None = None
    universe_timeline: dict[str, np.ndarray] | None = None


# ---------------------------------------------------------------- file access


def _open(source: str, name: str) -> tuple[pq.ParquetFile, str]:
    """Open `name` under a local directory or any URI pyarrow.fs understands."""
    uri = storage.join(source, name)
    try:
        fs, path = storage.filesystem(uri)
        info = fs.get_file_info(path)
        if info.type == pafs.FileType.NotFound:
            raise DataError(
                f"{uri}: file not found. Fix: point --data at a directory holding "
                f"{schema.DATASET_FILE} and {schema.PRICES_FILE} (or generate one with "
                f"`liquid-search synth DIR`)."
            )
        return pq.ParquetFile(fs.open_input_file(path)), uri
    except DataError:
        raise
    except (OSError, pa.ArrowInvalid) as e:
        raise DataError(
            f"{uri}: cannot be read as parquet ({e}). Fix: check the path and format."
        ) from e


def _require(pf: pq.ParquetFile, uri: str, columns: list[str], fix: str) -> None:
    names = set(pf.schema_arrow.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise DataError(f"{uri}: missing column(s) {missing}. Fix: {fix}")


def _require_numeric(pf: pq.ParquetFile, uri: str, columns: list[str]) -> None:
    sch = pf.schema_arrow
    for c in columns:
        t = sch.field(c).type
        if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
            raise DataError(
                f"{uri}: column {c!r} has type {t}, expected a number (float or int). "
                f"Fix: cast it to float32 when writing the file."
            )


def _to_days(col: pa.ChunkedArray | pa.Array, uri: str, name: str) -> np.ndarray:
    """Dates (date32, timestamp or ISO strings) -> int64 day numbers since 1970-01-01."""
    t = col.type
    try:
        if pa.types.is_date(t):
            days = pc.cast(col, pa.date32())
        elif pa.types.is_timestamp(t):
            days = pc.cast(pc.floor_temporal(col, unit="day"), pa.date32())
        elif pa.types.is_string(t) or pa.types.is_large_string(t):
            days = pc.cast(pc.strptime(col, format="%Y-%m-%d", unit="s"), pa.date32())
        else:
            raise DataError(
                f"{uri}: column {name!r} has type {t}, expected a date. Fix: write it as a date, "
                f"a timestamp or a YYYY-MM-DD string."
            )
    except pa.ArrowInvalid as e:
        raise DataError(f"{uri}: column {name!r} holds a value that is not a date ({e}).") from e
    if days.null_count:
        raise DataError(
            f"{uri}: column {name!r} has {days.null_count} missing date(s). Fix: drop those rows."
        )
    return _numpy(days.cast(pa.int32())).astype(np.int64)


def _numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """A column as numpy. A numeric column without nulls is read from its buffer (no copy):
    pyarrow's `to_numpy` imports pandas on first use (~0.2 s, which nothing else on the
    training path needs). Anything else goes through `to_numpy` (nulls become NaN)."""
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    t = col.type
    if not col.null_count and (pa.types.is_integer(t) or pa.types.is_floating(t)):
        kind = "f" if pa.types.is_floating(t) else "i" if pa.types.is_signed_integer(t) else "u"
        width = t.bit_width // 8
        return np.frombuffer(col.buffers()[1], dtype=f"{kind}{width}", count=len(col),
                             offset=col.offset * width)  # fmt: skip
    return col.to_numpy(zero_copy_only=False)


def _row_desc(days: np.ndarray, symbols: list[str], codes: np.ndarray, i: int) -> str:
    return (
        f"row {i} (feature_date={np.datetime64(int(days[i]), 'D')}, symbol={symbols[codes[i]]!r})"
    )


def _symbol_codes(
    *columns: tuple[pa.ChunkedArray, str],
) -> tuple[list[np.ndarray], pa.Array]:
    """Each symbol column as int32 codes into the sorted union of their values, and that union
    (an Arrow array); computed in Arrow.

    Raises:
        DataError: a symbol is missing (null).
    """
    strings = []
    for col, uri in columns:
        if col.null_count:
            raise DataError(
                f"{uri}: column {schema.SYMBOL!r} has {col.null_count} missing value(s). Fix: "
                f"drop those rows."
            )
        strings.append(pc.cast(col, pa.large_string()))
    union = pc.unique(pa.chunked_array([c for s in strings for c in s.chunks], pa.large_string()))
    union = union.take(pc.sort_indices(union))
    codes = [_numpy(pc.index_in(s, value_set=union)).astype(np.int32) for s in strings]
    return codes, union


# ---------------------------------------------------------------- loading


@dataclass(frozen=True, eq=False)
class _Inputs:
    """The two files, opened and their columns checked, and the resolved feature columns."""

    source: str
    dataset: pq.ParquetFile
    dataset_uri: str
    prices: pq.ParquetFile
    prices_uri: str
    columns: FeatureColumns


@dataclass(frozen=True, eq=False)
class _Keys:
    """The key columns of every dataset row and every prices row, as numpy, checked.

    Symbols are int32 codes into `symbols` (the sorted union of both files' symbols)."""

    days: np.ndarray  # (N,) int64 feature_date as days since 1970-01-01
    sym: np.ndarray  # (N,) int32
    target: np.ndarray  # (N,) float64 log return
    symbols: list[str]
    symbol_array: pa.Array
    p_days: np.ndarray  # (M,) int64
    p_sym: np.ndarray  # (M,) int32
    close: np.ndarray  # (M,) float64
    volume: np.ndarray  # (M,) float64

    def row(self, i: int) -> str:
        """Dataset row `i` named for a message."""
        return _row_desc(self.days, self.symbols, self.sym, i)


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
    inputs = _open_inputs(os.fspath(source))
    keys = _read_keys(inputs, threads)
    liquid = _liquid_rows(keys, universe, inputs.prices_uri)
    val_start, test_start = _split_starts(keys, liquid, split, inputs.dataset_uri)
    no_prices = _rows_without_prices(keys)
    outside = _outside_price_history(keys)
    say(_universe_line(keys, universe, liquid, no_prices, outside))
    want_full = full_universe & (keys.days < val_start)
    by_rule = {universe.mode: liquid}
    if compare_universes:
        by_rule = {m: liquid if m == universe.mode else _liquid_rows(keys, universe, "", m)
                   for m in MODES}  # fmt: skip
    any_test = np.logical_or.reduce(list(by_rule.values())) & (keys.days >= test_start)
    feats = _read_features(inputs.dataset, inputs.dataset_uri, inputs.columns,
                           liquid | want_full | any_test, split.news_only, keys, say, threads,
                           bf16)  # fmt: skip
    rows = feats.pop("rows")
    oracle = None
    if storage.is_file(storage.join(inputs.source, schema.ORACLE_FILE)):
        oracle = _read_oracle(inputs.source, keys.days[rows], keys.sym[rows], keys.symbol_array)
    block = {**feats, "days": keys.days[rows], "sym": keys.sym[rows],
             "ret": np.expm1(keys.target[rows]), "oracle": oracle}  # fmt: skip
    del feats  # the block holds the arrays now
    symbols = tuple(str(s) for s in keys.symbols)
    days, kept_liquid = block["days"], liquid[rows]
    train = _panel(block, kept_liquid & (days < val_start), symbols)
    val = _panel(block, kept_liquid & (days >= val_start) & (days < test_start), symbols)
    test = _panel(block, kept_liquid & (days >= test_start), symbols)
    full_train = _panel(block, want_full[rows], symbols) if full_universe else None
    test_by_rule = None
    if compare_universes:
        test_by_rule = {m: test if m == universe.mode else
                        _panel(block, mask[rows] & (days >= test_start), symbols)
                        for m, mask in by_rule.items()}  # fmt: skip
    del block
    _check_splits(train, val, test, inputs.dataset_uri)
    info = _describe(inputs.source, keys, liquid, no_prices, train, val, test, full_train)
    info |= {"rows_outside_price_history": int(outside.sum()), "has_oracle": oracle is not None}
    timeline = universe_timeline(keys.days, keys.sym, by_rule) if compare_universes else None
    say(f"split (liquid, news only): train {len(train):,} rows ({_date_range(train)}), "
        f"val {len(val):,} ({_date_range(val)}), test {len(test):,} ({_date_range(test)})")  # fmt: skip
    return Dataset(train, val, test, inputs.columns, universe, split, full_train, info,
                   test_by_rule, timeline)  # fmt: skip


def _open_inputs(source: str) -> _Inputs:
    """Open both files and check their columns: names, and numbers where numbers are due.

    Raises:
        DataError: a missing file or column, or a non-numeric feature, target or price.
        StorageError: an object store that cannot be reached, or a bucket that does not exist.
    """
    if storage.is_uri(source):
        storage.check_dir(source, what="data directory")
    elif os.path.isfile(source):
        raise DataError(
            f"{source} is a file; the data is a directory holding {schema.DATASET_FILE} and "
            f"{schema.PRICES_FILE}. Fix: point --data at that directory."
        )
    ds_file, ds_uri = _open(source, schema.DATASET_FILE)
    pr_file, pr_uri = _open(source, schema.PRICES_FILE)
    _require(ds_file, ds_uri, [schema.DATE, schema.SYMBOL, schema.TARGET],
             "the dataset needs feature_date, symbol and target_return (a log return).")  # fmt: skip
    try:
        columns = schema.resolve_features(ds_file.schema_arrow.names, ds_uri)
    except ValueError as e:
        raise DataError(str(e)) from e
    _require_numeric(ds_file, ds_uri, [schema.TARGET, *columns.all])
    _require(pr_file, pr_uri, [schema.SYMBOL, schema.PRICE_DATE, schema.CLOSE, schema.VOLUME],
             "the prices file needs symbol, date, close and volume.")  # fmt: skip
    _require_numeric(pr_file, pr_uri, [schema.CLOSE, schema.VOLUME])
    return _Inputs(source, ds_file, ds_uri, pr_file, pr_uri, columns)


def _read_keys(inputs: _Inputs, threads: bool) -> _Keys:
    """Read the dataset's keys and the prices, and check them.

    Raises:
        DataError: no rows, a missing symbol or date, a non-finite target, a missing,
            negative or non-finite price or volume, or a duplicate (feature_date, symbol).
    """
    ds_uri, pr_uri = inputs.dataset_uri, inputs.prices_uri
    keys = inputs.dataset.read(columns=[schema.DATE, schema.SYMBOL, schema.TARGET],
                               use_threads=threads)  # fmt: skip
    prices = inputs.prices.read(
        columns=[schema.SYMBOL, schema.PRICE_DATE, schema.CLOSE, schema.VOLUME], use_threads=threads
    )
    (row_sym, p_sym), symbol_array = _symbol_codes(
        (keys.column(schema.SYMBOL), ds_uri), (prices.column(schema.SYMBOL), pr_uri)
    )
    out = _Keys(
        days=_to_days(keys.column(schema.DATE), ds_uri, schema.DATE),
        sym=row_sym,
        target=_numpy(keys.column(schema.TARGET)).astype(np.float64),
        symbols=symbol_array.to_pylist(),
        symbol_array=symbol_array,
        p_days=_to_days(prices.column(schema.PRICE_DATE), pr_uri, schema.PRICE_DATE),
        p_sym=p_sym,
        close=_numpy(prices.column(schema.CLOSE)).astype(np.float64),
        volume=_numpy(prices.column(schema.VOLUME)).astype(np.float64),
    )
    del keys, prices
    _check_dataset_keys(out, ds_uri)
    _check_prices(out, pr_uri)
    return out


def _check_dataset_keys(k: _Keys, uri: str) -> None:
    """Raises DataError for an empty dataset, a non-finite target or a duplicate row."""
    if len(k.target) == 0:
        raise DataError(f"{uri}: the file has no rows. Fix: point --data at a non-empty dataset.")
    bad = ~np.isfinite(k.target)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{uri}: column {schema.TARGET!r} has {int(bad.sum())} non-finite value(s), e.g. "
            f"{k.row(i)} = {k.target[i]}. Fix: drop those rows or fill the returns."
        )
    # Duplicate (feature_date, symbol) rows would double-weight a name on a date.
    dup = _first_duplicate(k.days, k.sym, len(k.symbols))
    if dup is not None:
        raise DataError(
            f"{uri}: {dup[1]} duplicate (feature_date, symbol) row(s), e.g. {k.row(dup[0])}. Fix: "
            f"keep one row per symbol and date."
        )


def _check_prices(k: _Keys, uri: str) -> None:
    """The prices must describe the dataset's liquidity: positive closes, non-negative volumes,
    one row per (symbol, date), and dates that cover the dataset's feature dates.

    Raises:
        DataError: naming the problem, an example row and the fix.
    """

    def where(i: int) -> str:
        return f"row {i} (symbol={k.symbols[k.p_sym[i]]!r}, date={_day(k.p_days[i])})"

    for name, arr, ok in ((schema.CLOSE, k.close, k.close > 0),
                          (schema.VOLUME, k.volume, k.volume >= 0)):  # fmt: skip
        bad = ~(np.isfinite(arr) & ok)
        if bad.any():
            i = int(np.argmax(bad))
            rule = "positive" if name == schema.CLOSE else "zero or more"
            raise DataError(
                f"{uri}: column {name!r} has {int(bad.sum())} value(s) that are missing, "
                f"non-finite or not {rule}, e.g. {where(i)} = {arr[i]}. Fix: clean the prices file."
            )
    # A duplicate (symbol, date) would count a day twice in a symbol's mean dollar volume.
    dup = _first_duplicate(k.p_days, k.p_sym, len(k.symbols))
    if dup is not None:
        raise DataError(
            f"{uri}: {dup[1]} duplicate (symbol, date) row(s), e.g. {where(dup[0])}. Fix: keep "
            f"one row per symbol and date."
        )
    if len(k.p_days) == 0:
        raise DataError(f"{uri}: the file has no rows. Fix: provide the symbols' daily prices.")
    first, last = int(k.days.min()), int(k.days.max())
    p_first, p_last = int(k.p_days.min()), int(k.p_days.max())
    if p_first > first or p_last < last:
        raise DataError(
            f"{uri}: prices run from {_day(p_first)} to {_day(p_last)} but the dataset's feature "
            f"dates from {_day(first)} to {_day(last)}: the liquidity of the dates outside is "
            f"unknown. Fix: provide prices for the whole period of the dataset."
        )


def _first_duplicate(days: np.ndarray, sym: np.ndarray, n_sym: int) -> tuple[int, int] | None:
    """(a row whose (day, symbol) an earlier row already has, how many such rows), or None."""
    key = days * np.int64(n_sym) + sym
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    return (int(order[dup[0] + 1]), len(dup)) if len(dup) else None


def _day(d: int | np.integer) -> np.datetime64:
    return np.datetime64(int(d), "D")


def _outside_price_history(keys: _Keys) -> np.ndarray:
    """(N,) bool: dataset rows dated before their symbol's first price or after its last one
    (their liquidity comes from the prices the symbol has)."""
    n = len(keys.symbols)
    lo = np.full(n, np.iinfo(np.int64).max)
    hi = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(lo, keys.p_sym, keys.p_days)
    np.maximum.at(hi, keys.p_sym, keys.p_days)
    has = hi[keys.sym] >= lo[keys.sym]
    return has & ((keys.days < lo[keys.sym]) | (keys.days > hi[keys.sym]))


def _rows_without_prices(keys: _Keys) -> np.ndarray:
    """(N,) bool: dataset rows whose symbol has no row in the prices file."""
    in_prices = np.zeros(len(keys.symbols), dtype=bool)
    in_prices[keys.p_sym] = True
    return ~in_prices[keys.sym]


def _liquid_rows(
    keys: _Keys, universe: UniverseConfig, prices_uri: str, mode: str | None = None
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
    if universe.mode == "full_period":
        liquid_sym, mean_dv = full_period_liquid(keys.p_sym, dollar_volume, n_sym,
                                                 universe.threshold)  # fmt: skip
        liquid = liquid_sym[keys.sym]
        hint = (
            f"the most liquid symbol's mean dollar volume is ${np.nanmax(mean_dv, initial=0):,.0f}"
        )
    else:
        liquid = trailing_liquid(keys.p_sym, keys.p_days, dollar_volume, keys.sym, keys.days,
                                 universe.threshold, universe.window)  # fmt: skip
        hint = f"no row has {universe.window} trading days of history above it"
    if required and not liquid.any():
        raise DataError(
            f"{prices_uri}: the liquid universe is empty at universe.threshold=${universe.threshold:,.0f} "
            f"(mode {universe.mode}; {hint}). Fix: lower universe.threshold, or check that "
            f"{schema.PRICES_FILE} symbols match {schema.DATASET_FILE}."
        )
    return liquid


def _universe_line(
    keys: _Keys,
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
    keys: _Keys, liquid: np.ndarray, split: SplitConfig, dataset_uri: str
) -> tuple[np.datetime64, np.datetime64]:
    """The first val and test day numbers, from the liquid rows' dates.

    Raises:
        DataError: too few liquid dates for the split.
    """
    try:
        return split_dates(np.unique(keys.days[liquid]), split)
    except ValueError as e:
        raise DataError(f"{dataset_uri}: {e}") from e


def _check_splits(train: Panel, val: Panel, test: Panel, dataset_uri: str) -> None:
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
    keys: _Keys,
    liquid: np.ndarray,
    no_prices: np.ndarray,
    train: Panel,
    val: Panel,
    test: Panel,
    full_train: Panel | None,
) -> dict[str, Any]:
    """What a load found, for run.json and the report: sizes of the data, the universe and
    each split."""
    return {
        "source": source,
        "rows": len(keys.days),
        "symbols": len(keys.symbols),
        "liquid_rows": int(liquid.sum()),
        "liquid_symbols": len(np.unique(keys.sym[liquid])),
        "rows_without_prices": int(no_prices.sum()),
        "train_rows": len(train),
        "val_rows": len(val),
        "test_rows": len(test),
        "train_dates": _date_range(train),
        "val_dates": _date_range(val),
        "test_dates": _date_range(test),
        "full_train_rows": len(full_train) if full_train is not None else None,
    }


def _date_range(p: Panel) -> str:
    return f"{p.dates[0]} to {p.dates[-1]}" if p.n_dates else "-"


def _read_features(
    pf: pq.ParquetFile,
    uri: str,
    columns: FeatureColumns,
    select: np.ndarray,
    news_only: bool,
    keys: _Keys,
    say: Callable[[str], None],
    threads: bool,
    bf16: bool,
) -> dict[str, np.ndarray]:
    """Stream the feature columns, keeping the selected (news) rows as row-major float32 blocks.

    Each batch's columns are copied once into a column-major scratch matrix; the news rows are
    found there (a row with any non-zero embedding value), and only the selected news rows are
    then taken, already row-major, into the blocks the Panels use. Values are checked finite on
    the kept rows only (rows outside the universe may hold anything).

    Args:
        keys: the dataset's keys, to name a bad row.
        bf16: keep the embedding block as bfloat16 bits (uint16), converted batch by batch.
    """
    groups = {"emb": list(columns.emb), "fund": list(columns.fund), "price": list(columns.price)}
    # The blocks are allocated for every selected row and shrunk in place at the end: untouched
    # pages of a large allocation cost no memory, and no second copy of the kept rows is made.
    n_max = int(select.sum())
    out = {g: np.empty((n_max, len(cols)), dtype=np.float32) for g, cols in groups.items()}
    if bf16:
        out["emb"] = np.empty((n_max, len(columns.emb)), dtype=np.uint16)
    kept_rows: list[np.ndarray] = []
    kept = 0
    batch_rows = max(1024, BATCH_BYTES // (4 * len(columns.all)))
    scratch: dict[str, np.ndarray] = {}
    for offset, batch in _batches(pf, list(columns.all), select, batch_rows, threads):
        n = batch.num_rows
        idx = np.flatnonzero(select[offset : offset + n])
        if isinstance(batch, pa.Table):
            batch = batch.combine_chunks()
        arrays = dict(zip(batch.schema.names, batch.columns, strict=True))
        for g, cols in groups.items():
            if g not in scratch or scratch[g].shape[1] < n:
                scratch[g] = np.empty((len(cols), max(n, batch_rows)), dtype=np.float32)
            m = scratch[g][:, :n]  # (columns, rows): each column one contiguous copy
            for j, c in enumerate(cols):
                m[j] = _numpy(arrays[c])  # nulls become NaN, refused on the kept rows
            if g == "emb" and news_only:
                idx = idx[np.logical_or.reduce(m, axis=0)[idx]]
            # Taking rows of a (columns, rows) matrix yields them row-major: .T is contiguous.
            block = m[:, idx].T
            if not np.isfinite(block.sum(dtype=np.float64)):  # any NaN or inf in the block
                r, c = np.argwhere(~np.isfinite(block))[0]
                i = offset + int(idx[r])
                raise DataError(
                    f"{uri}: column {cols[c]!r} has a missing or non-finite value at "
                    f"{keys.row(i)}: {block[r, c]}. Fix: fill or "
                    f"drop non-finite features (z-scores should be finite; use 0 for missing)."
                )
            dest = out[g][kept : kept + len(idx)]
            dest[...] = to_bf16_bits(block) if dest.dtype == np.uint16 else block
        kept_rows.append(idx + offset)
        kept += len(idx)
        # Every reference to this batch's Arrow buffers goes before the next one is decoded: a
        # column held over (in `arrays`) keeps the whole batch alive, and the reader then
        # decodes into fresh memory (page faults) instead of the batch just freed.
        del batch, arrays, block
    for a in out.values():
        a.resize((kept, a.shape[1]), refcheck=False)
    out["rows"] = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    say(f"read {kept:,} rows x {len(columns.all)} features from {uri}")
    return out


def _batches(
    pf: pq.ParquetFile, columns: list[str], select: np.ndarray, batch_rows: int, threads: bool
) -> Any:
    """(first row, table) of about `batch_rows` rows at a time, on any row-group layout.

    Runs of consecutive small row groups are read in one call (a file written a date at a time
    has a thousand groups of a few hundred rows: one call each would cost more than the
    decoding); a group larger than a batch is streamed in batches of `batch_rows`. Groups with
    no selected row are skipped unread.
    """
    md = pf.metadata
    sizes = [md.row_group(i).num_rows for i in range(md.num_row_groups)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    run: list[int] = []

    def flush() -> Any:
        if run:
            table = pf.read_row_groups(run, columns=columns, use_threads=threads)
            yield int(starts[run[0]]), table
            run.clear()

    for i, size in enumerate(sizes):
        a, b = starts[i], starts[i + 1]
        if not select[a:b].any():
            yield from flush()
            continue
        if size > batch_rows:
            yield from flush()
            at = int(a)
            for rb in pf.iter_batches(batch_size=batch_rows, row_groups=[i], columns=columns,
                                      use_threads=threads):  # fmt: skip
                yield at, rb
                at += rb.num_rows
            continue
        if run and starts[i + 1] - starts[run[0]] > batch_rows:
            yield from flush()
        run.append(i)
    yield from flush()


def _read_oracle(
    source: str, days: np.ndarray, codes: np.ndarray, symbols: pa.Array
) -> np.ndarray | None:
    """The planted expected return of each kept row (synthetic markets), or None if any row
    has none."""
    pf, uri = _open(source, schema.ORACLE_FILE)
    if not {schema.DATE, schema.SYMBOL, schema.ORACLE} <= set(pf.schema_arrow.names):
        return None
    t = pf.read(columns=[schema.DATE, schema.SYMBOL, schema.ORACLE])
    o_sym = pc.index_in(pc.cast(t.column(schema.SYMBOL), pa.large_string()), value_set=symbols)
    if o_sym.null_count:  # rows of symbols the dataset does not have
        known = pc.is_valid(o_sym)
        t, o_sym = t.filter(known), o_sym.filter(known)
    o_days = _to_days(t.column(schema.DATE), uri, schema.DATE)
    n = np.int64(len(symbols))
    o_key = o_days * n + _numpy(o_sym).astype(np.int64)
    values = _numpy(t.column(schema.ORACLE)).astype(np.float64)
    order = np.argsort(o_key, kind="stable")
    o_key, values = o_key[order], values[order]
    want = days.astype(np.int64) * n + codes.astype(np.int64)
    pos = np.minimum(np.searchsorted(o_key, want), max(len(o_key) - 1, 0))
    if not len(o_key) or not np.array_equal(o_key[pos], want):
        return None
    return values[pos]


def _panel(base: dict[str, Any], mask: np.ndarray, symbols: tuple[str, ...]) -> Panel:
    """Rows `mask` of the kept block, sorted by (date, symbol), as a Panel."""
    idx = np.flatnonzero(mask)
    days, sym = base["days"][idx], base["sym"][idx]
    order = np.lexsort((sym, days))
    idx = idx[order]
    days = days[order]
    dates, counts = np.unique(days, return_counts=True)
    oracle = base["oracle"]
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx) and np.all(np.diff(idx) == 1):
        # The file was already in (date, symbol) order and the split is one run of rows:
        # slices are views, so the feature blocks are not copied a second time.
        take: Any = slice(int(idx[0]), int(idx[-1]) + 1)
    else:
        take = idx
    return Panel(
        fund=base["fund"][take],
        price=base["price"][take],
        emb=base["emb"][take],
        returns=base["ret"][idx],
        symbol_ids=base["sym"][idx].astype(np.int32),
        dates=dates.astype("datetime64[D]"),
        bounds=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
        symbols=symbols,
        oracle=None if oracle is None else oracle[idx],
    )

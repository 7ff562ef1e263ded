"""Read and validate the two parquet files and build the train / val / test Panels.

The flow is one way: parquet -> validated schema -> universe filter -> split -> news filter ->
Panels. The keys (dates, symbols, target) are read first; the ~800 feature columns are then
streamed batch by batch straight into row-major float32 arrays, keeping only the rows that are
used, so the full table is never held in memory (and never in pandas).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ranker import schema, storage
from ranker.panel import Panel
from ranker.schema import FeatureColumns
from ranker.split import SplitConfig, split_dates
from ranker.universe import UniverseConfig, full_period_liquid, trailing_liquid

BATCH_ROWS = 65_536
_FILL_ROWS = 2_048  # row block for the column -> row-major copy (fits in L2 at 768 columns)


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
    return days.to_numpy(zero_copy_only=False).astype("datetime64[D]").astype(np.int64)


def _row_desc(days: np.ndarray, symbols: np.ndarray, i: int) -> str:
    return f"row {i} (feature_date={np.datetime64(int(days[i]), 'D')}, symbol={str(symbols[i])!r})"


# ---------------------------------------------------------------- loading


def load(
    source: str | os.PathLike,
    universe: UniverseConfig | None = None,
    split: SplitConfig | None = None,
    *,
    full_universe: bool = False,
    log: Callable[[str], None] | None = None,
) -> Dataset:
    """Load `ml_dataset.pqt` and `prices.pqt` from a directory or URI into Panels.

    Args:
        source: a local directory, or a URI pyarrow.fs understands (file://, s3://, gs://).
        universe: the liquid-universe rule (default: the notebook's full-period $50M rule).
        split: the date split (default 70/10/20, news rows only).
        full_universe: also build `full_train`, the full universe's train split (for the
            notebook's liquid-vs-full comparison); its dates end where the liquid val starts.
        log: called with one-line progress messages.

    Raises:
        DataError: a missing file or column, a non-numeric feature, a non-finite value,
            a duplicate (feature_date, symbol), an empty universe or too few dates.
    """
    universe = universe or UniverseConfig()
    split = split or SplitConfig()
    say = log or (lambda _msg: None)
    source = os.fspath(source)

    ds_file, ds_uri = _open(source, schema.DATASET_FILE)
    pr_file, pr_uri = _open(source, schema.PRICES_FILE)
    names = ds_file.schema_arrow.names
    _require(
        ds_file,
        ds_uri,
        [schema.DATE, schema.SYMBOL, schema.TARGET],
        "the dataset needs feature_date, symbol and target_return (a log return).",
    )
    try:
        columns = schema.resolve_features(names, ds_uri)
    except ValueError as e:
        raise DataError(str(e)) from e
    _require_numeric(ds_file, ds_uri, [schema.TARGET, *columns.all])
    _require(
        pr_file,
        pr_uri,
        [schema.SYMBOL, schema.PRICE_DATE, schema.CLOSE, schema.VOLUME],
        "the prices file needs symbol, date, close and volume.",
    )
    _require_numeric(pr_file, pr_uri, [schema.CLOSE, schema.VOLUME])

    # Keys of every dataset row: cheap, three columns.
    keys = ds_file.read(columns=[schema.DATE, schema.SYMBOL, schema.TARGET])
    row_days = _to_days(keys.column(schema.DATE), ds_uri, schema.DATE)
    row_sym_str = keys.column(schema.SYMBOL).to_numpy(zero_copy_only=False).astype(str)
    target = keys.column(schema.TARGET).to_numpy(zero_copy_only=False).astype(np.float64)
    del keys
    n_rows = len(target)
    if n_rows == 0:
        raise DataError(
            f"{ds_uri}: the file has no rows. Fix: point --data at a non-empty dataset."
        )
    bad = ~np.isfinite(target)
    if bad.any():
        i = int(np.argmax(bad))
        raise DataError(
            f"{ds_uri}: column {schema.TARGET!r} has {int(bad.sum())} non-finite value(s), e.g. "
            f"{_row_desc(row_days, row_sym_str, i)} = {target[i]}. Fix: drop those rows or fill "
            f"the returns."
        )

    prices = pr_file.read(columns=[schema.SYMBOL, schema.PRICE_DATE, schema.CLOSE, schema.VOLUME])
    p_days = _to_days(prices.column(schema.PRICE_DATE), pr_uri, schema.PRICE_DATE)
    p_sym_str = prices.column(schema.SYMBOL).to_numpy(zero_copy_only=False).astype(str)
    close = prices.column(schema.CLOSE).to_numpy(zero_copy_only=False).astype(np.float64)
    volume = prices.column(schema.VOLUME).to_numpy(zero_copy_only=False).astype(np.float64)
    del prices
    for name, arr in ((schema.CLOSE, close), (schema.VOLUME, volume)):
        bad = ~np.isfinite(arr) | (arr < 0)
        if bad.any():
            i = int(np.argmax(bad))
            raise DataError(
                f"{pr_uri}: column {name!r} has {int(bad.sum())} missing, negative or non-finite "
                f"value(s), e.g. row {i} (symbol={str(p_sym_str[i])!r}, "
                f"date={np.datetime64(int(p_days[i]), 'D')}) = {arr[i]}. Fix: clean the prices file."
            )

    codes, symbols = pd.factorize(np.concatenate([row_sym_str, p_sym_str]), sort=True)
    row_sym = codes[:n_rows].astype(np.int32)
    p_sym = codes[n_rows:].astype(np.int32)
    n_sym = len(symbols)

    # Duplicate (feature_date, symbol) rows would double-weight a name on a date.
    pair_key = row_days * np.int64(n_sym) + row_sym
    order = np.argsort(pair_key, kind="stable")
    dup = np.flatnonzero(pair_key[order][1:] == pair_key[order][:-1])
    if len(dup):
        i = int(order[dup[0] + 1])
        raise DataError(
            f"{ds_uri}: {len(dup)} duplicate (feature_date, symbol) row(s), e.g. "
            f"{_row_desc(row_days, row_sym_str, i)}. Fix: keep one row per symbol and date."
        )

    # Universe.
    dollar_volume = close * volume
    in_prices = np.zeros(n_sym, dtype=bool)
    in_prices[p_sym] = True
    no_prices = ~in_prices[row_sym]
    if universe.mode == "full_period":
        liquid_sym, mean_dv = full_period_liquid(p_sym, dollar_volume, n_sym, universe.threshold)
        liquid = liquid_sym[row_sym]
        best = np.nanmax(mean_dv) if in_prices.any() else 0.0
    else:
        liquid = trailing_liquid(
            p_sym, p_days, dollar_volume, row_sym, row_days, universe.threshold, universe.window
        )
        best = float("nan")
    if not liquid.any():
        hint = (
            f"the most liquid symbol's mean dollar volume is ${best:,.0f}"
            if universe.mode == "full_period"
            else f"no row has {universe.window} trading days of history above it"
        )
        raise DataError(
            f"{pr_uri}: the liquid universe is empty at universe.threshold=${universe.threshold:,.0f} "
            f"(mode {universe.mode}; {hint}). Fix: lower universe.threshold, or check that "
            f"{schema.PRICES_FILE} symbols match {schema.DATASET_FILE}."
        )
    liquid_dates = np.unique(row_days[liquid])
    try:
        val_start, test_start = split_dates(liquid_dates, split)
    except ValueError as e:
        raise DataError(f"{ds_uri}: {e}") from e
    say(
        f"universe {universe.mode} >= ${universe.threshold / 1e6:,.0f}M: {int(liquid.sum()):,} of "
        f"{n_rows:,} rows, {len(np.unique(row_sym[liquid])):,} symbols, {len(liquid_dates):,} dates"
        + (
            f"; {int(no_prices.sum()):,} rows have no prices (not liquid)"
            if no_prices.any()
            else ""
        )
    )

    want_full = full_universe & (row_days < val_start)
    select = liquid | want_full
    feats = _read_features(
        ds_file, ds_uri, columns, select, split.news_only, row_days, row_sym_str, say
    )
    rows = feats["rows"]

    oracle = None
    if storage.is_file(storage.join(source, schema.ORACLE_FILE)):
        oracle = _read_oracle(source, row_days[rows], row_sym_str[rows])

    base = {
        "fund": feats["fund"],
        "price": feats["price"],
        "emb": feats["emb"],
        "rows": rows,
        "days": row_days[rows],
        "sym": row_sym[rows],
        "ret": np.expm1(target[rows]),
        "oracle": oracle,
    }
    symbols_t = tuple(str(s) for s in symbols)
    r_days = base["days"]
    r_liquid = liquid[rows]
    train = _panel(base, r_liquid & (r_days < val_start), symbols_t)
    val = _panel(base, r_liquid & (r_days >= val_start) & (r_days < test_start), symbols_t)
    test = _panel(base, r_liquid & (r_days >= test_start), symbols_t)
    full_train = _panel(base, want_full[rows], symbols_t) if full_universe else None
    del base, feats

    for name, p in (("train", train), ("val", val), ("test", test)):
        sizes = np.diff(p.bounds)
        need = 2 if name == "train" else 10
        if len(p) == 0 or sizes.max() < need:
            raise DataError(
                f"{ds_uri}: the {name} split has {len(p):,} liquid news row(s) and no date with "
                f"{need}+ names ({'pairs' if name == 'train' else 'metrics'} need them). Fix: "
                f"provide more symbols with news, or lower universe.threshold."
            )

    def _range(p: Panel) -> str:
        return f"{p.dates[0]} to {p.dates[-1]}" if p.n_dates else "-"

    info = {
        "source": source,
        "rows": n_rows,
        "symbols": n_sym,
        "liquid_rows": int(liquid.sum()),
        "liquid_symbols": len(np.unique(row_sym[liquid])),
        "rows_without_prices": int(no_prices.sum()),
        "train_rows": len(train),
        "val_rows": len(val),
        "test_rows": len(test),
        "train_dates": _range(train),
        "val_dates": _range(val),
        "test_dates": _range(test),
        "full_train_rows": len(full_train) if full_train is not None else None,
        "has_oracle": oracle is not None,
    }
    say(
        f"split (liquid, news only): train {len(train):,} rows ({_range(train)}), "
        f"val {len(val):,} ({_range(val)}), test {len(test):,} ({_range(test)})"
    )
    return Dataset(train, val, test, columns, universe, split, full_train, info)


def _read_features(
    pf: pq.ParquetFile,
    uri: str,
    columns: FeatureColumns,
    select: np.ndarray,
    news_only: bool,
    row_days: np.ndarray,
    row_sym: np.ndarray,
    say: Callable[[str], None],
) -> dict[str, np.ndarray]:
    """Stream the feature columns, keeping the selected (news) rows as row-major float32 blocks.

    The embedding block is built first so rows without news are dropped before the other
    blocks are built: only what the Panels need is ever materialised.
    """
    groups = {"emb": list(columns.emb), "fund": list(columns.fund), "price": list(columns.price)}
    parts: dict[str, list[np.ndarray]] = {k: [] for k in groups}
    kept_rows: list[np.ndarray] = []
    offset = 0
    for batch in _batches(pf, list(columns.all)):
        n = batch.num_rows
        idx = np.flatnonzero(select[offset : offset + n])
        for g, cols in groups.items():
            if not len(idx):
                break
            block = _rows_major([batch.column(c) for c in cols], idx)
            bad = ~np.isfinite(block)
            if bad.any():
                r, c = np.argwhere(bad)[0]
                i = offset + int(idx[r])
                raise DataError(
                    f"{uri}: column {cols[c]!r} has a non-finite value at "
                    f"{_row_desc(row_days, row_sym, i)}: {block[r, c]}. Fix: fill or drop "
                    f"non-finite features (z-scores should be finite; use 0 for missing)."
                )
            if g == "emb" and news_only:
                news = np.any(block != 0, axis=1)
                idx, block = idx[news], block[news]
            parts[g].append(block)
        if len(idx):
            kept_rows.append(idx + offset)
        offset += n
    out = {}
    for g in list(parts):
        # Concatenate one group at a time and free its blocks at once: the peak stays near one
        # copy of the kept rows instead of two.
        p = parts.pop(g)
        out[g] = np.concatenate(p) if p else np.zeros((0, len(groups[g])), np.float32)
        del p
    out["rows"] = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    say(f"read {len(out['rows']):,} rows x {len(columns.all)} features from {uri}")
    return out


def _batches(pf: pq.ParquetFile, columns: list[str]) -> Any:
    """Record batches of at most BATCH_ROWS rows, one row group decoded at a time.

    `iter_batches` reads ahead across row groups (4.4 GB resident for the 3 GB full-size
    synthetic file); reading row group by row group keeps one decoded row group in memory and
    decodes its columns in parallel.
    """
    for i in range(pf.metadata.num_row_groups):
        table = pf.read_row_group(i, columns=columns, use_threads=True)
        for start in range(0, table.num_rows, BATCH_ROWS):
            yield table.slice(start, BATCH_ROWS).combine_chunks().to_batches()[0]
        del table


def _rows_major(arrays: list[pa.Array], idx: np.ndarray) -> np.ndarray:
    """Columns -> a (len(idx), n_cols) row-major float32 block of the rows `idx`."""
    cols = [np.asarray(a.to_numpy(zero_copy_only=False), dtype=np.float32) for a in arrays]
    out = np.empty((len(idx), len(cols)), dtype=np.float32)
    full = len(idx) == len(cols[0]) if cols else True
    for r in range(0, len(idx), _FILL_ROWS):
        if full:
            out[r : r + _FILL_ROWS] = np.stack([c[r : r + _FILL_ROWS] for c in cols], axis=1)
        else:
            sl = idx[r : r + _FILL_ROWS]
            out[r : r + _FILL_ROWS] = np.stack([c[sl] for c in cols], axis=1)
    return out


def _read_oracle(source: str, days: np.ndarray, symbols: np.ndarray) -> np.ndarray | None:
    pf, uri = _open(source, schema.ORACLE_FILE)
    names = set(pf.schema_arrow.names)
    if not {schema.DATE, schema.SYMBOL, schema.ORACLE} <= names:
        return None
    t = pf.read(columns=[schema.DATE, schema.SYMBOL, schema.ORACLE])
    o = pd.DataFrame(
        {
            "d": _to_days(t.column(schema.DATE), uri, schema.DATE),
            "s": t.column(schema.SYMBOL).to_numpy(zero_copy_only=False).astype(str),
            "v": t.column(schema.ORACLE).to_numpy(zero_copy_only=False).astype(np.float64),
        }
    )
    want = pd.DataFrame({"d": days, "s": symbols})
    merged = want.merge(o, on=["d", "s"], how="left", validate="many_to_one")
    values = merged["v"].to_numpy()
    return None if np.isnan(values).any() else values


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

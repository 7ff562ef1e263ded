"""Open, read and validate the two parquet files (and a synthetic market's oracle).

What `ranker.data` assembles into Panels comes from here, checked: `open_inputs` opens both
files and checks their columns, `read_keys` reads and checks the key columns (dates, symbols,
target, prices), `read_features` streams the ~800 feature columns of the rows kept batch by batch
straight into row-major float32 blocks (never the whole table, never pandas), `read_oracle` the
planted expected return. Every problem is a `DataError` naming the file, the column, an example
row and the fix.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from ranker import schema, storage
from ranker.panel import to_bf16_bits
from ranker.schema import FeatureColumns

BATCH_BYTES = 64 * 2**20  # decoded feature bytes per read: bounds the loader's working set


class DataError(ValueError):
    """Bad input data: the message names the file, the column, an example row and the fix."""


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


# ---------------------------------------------------------------- the records


@dataclass(frozen=True, eq=False)
class Inputs:
    """The two files, opened and their columns checked, and the resolved feature columns."""

    source: str
    dataset: pq.ParquetFile
    dataset_uri: str
    prices: pq.ParquetFile
    prices_uri: str
    columns: FeatureColumns


@dataclass(frozen=True, eq=False)
class Keys:
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


@dataclass(frozen=True, eq=False)
class FeatureBlock:
    """The feature columns of the rows `read_features` kept, row-major, in file order."""

    fund: np.ndarray  # (K, n_fund) float32
    price: np.ndarray  # (K, n_price) float32
    emb: np.ndarray  # (K, D) float32, or uint16 bfloat16 bits
    rows: np.ndarray  # (K,) int64 the kept rows' positions in the dataset file


# ---------------------------------------------------------------- the keys


def open_inputs(source: str) -> Inputs:
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
    return Inputs(source, ds_file, ds_uri, pr_file, pr_uri, columns)


def read_keys(inputs: Inputs, threads: bool) -> Keys:
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
    out = Keys(
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


def _check_dataset_keys(k: Keys, uri: str) -> None:
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


def _check_prices(k: Keys, uri: str) -> None:
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


def outside_price_history(keys: Keys) -> np.ndarray:
    """(N,) bool: dataset rows dated before their symbol's first price or after its last one
    (their liquidity comes from the prices the symbol has)."""
    n = len(keys.symbols)
    lo = np.full(n, np.iinfo(np.int64).max)
    hi = np.full(n, np.iinfo(np.int64).min)
    np.minimum.at(lo, keys.p_sym, keys.p_days)
    np.maximum.at(hi, keys.p_sym, keys.p_days)
    has = hi[keys.sym] >= lo[keys.sym]
    return has & ((keys.days < lo[keys.sym]) | (keys.days > hi[keys.sym]))


def rows_without_prices(keys: Keys) -> np.ndarray:
    """(N,) bool: dataset rows whose symbol has no row in the prices file."""
    in_prices = np.zeros(len(keys.symbols), dtype=bool)
    in_prices[keys.p_sym] = True
    return ~in_prices[keys.sym]


# ---------------------------------------------------------------- the features and the oracle


def read_features(
    pf: pq.ParquetFile,
    uri: str,
    columns: FeatureColumns,
    select: np.ndarray,
    news_only: bool,
    keys: Keys,
    say: Callable[[str], None],
    threads: bool,
    bf16: bool,
) -> FeatureBlock:
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
    rows = np.concatenate(kept_rows) if kept_rows else np.zeros(0, np.int64)
    say(f"read {kept:,} rows x {len(columns.all)} features from {uri}")
    return FeatureBlock(fund=out["fund"], price=out["price"], emb=out["emb"], rows=rows)


def _batches(
    pf: pq.ParquetFile, columns: list[str], select: np.ndarray, batch_rows: int, threads: bool
) -> Iterator[tuple[int, pa.Table | pa.RecordBatch]]:
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

    def flush() -> Iterator[tuple[int, pa.Table]]:
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


def read_oracle(
    source: str, days: np.ndarray, codes: np.ndarray, symbols: pa.Array
) -> np.ndarray | None:
    """The planted expected return of each kept row (synthetic markets); None without an
    oracle file, or if any row has none."""
    if not storage.is_file(storage.join(source, schema.ORACLE_FILE)):
        return None
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

"""Loading: column resolution, the liquid universe, the split, and every bad-input error."""

from __future__ import annotations

import itertools
import shutil
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from ranker import schema
from ranker.data import DataError, load
from ranker.split import SplitConfig
from ranker.universe import UniverseConfig, trailing_liquid


def _copy_with(src: Path, dst: Path, edit) -> Path:
    """A copy of the market whose dataset table is passed through `edit(table) -> table`."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != schema.DATASET_FILE:
            shutil.copy(f, dst / f.name)
    table = pq.read_table(src / schema.DATASET_FILE)
    pq.write_table(edit(table), dst / schema.DATASET_FILE)
    return dst


def _set(table: pa.Table, name: str, values) -> pa.Table:
    i = table.schema.get_field_index(name)
    return table.set_column(i, name, values)


def test_features_resolved_like_the_notebook(tiny_dataset):
    cols = tiny_dataset.columns
    assert cols.price == schema.PRICE_FEATURES
    assert len(cols.fund) == 19 and schema.NEWS_COUNT not in cols.fund
    assert all(c.endswith("_z") for c in cols.fund)
    assert cols.emb == tuple(f"emb_{i}" for i in range(768))


def test_resolve_sorts_embeddings_numerically():
    names = ["feature_date", "symbol", "target_return", *schema.PRICE_FEATURES, "a_z",
             "news_count_z", "emb_10", "emb_2", "emb_0", "emb_1", *[f"emb_{i}" for i in range(3, 10)]]  # fmt: skip
    cols = schema.resolve_features(names)
    assert cols.emb[:4] == ("emb_0", "emb_1", "emb_2", "emb_3") and cols.emb[-1] == "emb_10"
    assert cols.fund == ("a_z",)


def test_panels_sorted_contiguous_news_only(tiny_dataset):
    for p in (tiny_dataset.train, tiny_dataset.val, tiny_dataset.test):
        assert p.fund.flags.c_contiguous and p.emb.flags.c_contiguous
        assert p.emb.dtype == np.float32
        assert np.all(np.diff(p.dates.astype(np.int64)) > 0)
        assert np.all(np.any(p.emb != 0, axis=1)), "rows without news must be dropped"
    d = tiny_dataset
    assert d.train.dates[-1] < d.val.dates[0] and d.val.dates[-1] < d.test.dates[0]


def test_split_matches_notebook_rule(tiny_market):
    """Split on the liquid universe's unique dates (news or not): [:int(.7n)], [int(.7n):int(.8n)]."""
    import pandas as pd

    df = pd.read_parquet(tiny_market / schema.DATASET_FILE, columns=["feature_date", "symbol"])
    pr = pd.read_parquet(tiny_market / schema.PRICES_FILE)
    dv = (pr["close"] * pr["volume"]).groupby(pr["symbol"]).mean()
    liquid = df[df["symbol"].map(dv) >= 50e6]
    dates = np.sort(liquid["feature_date"].unique())
    n = len(dates)
    ds = load(tiny_market, split=SplitConfig(news_only=False))
    assert ds.train.dates[0] == np.datetime64(dates[0], "D")
    assert ds.val.dates[0] == np.datetime64(dates[int(n * 0.7)], "D")
    assert ds.test.dates[0] == np.datetime64(dates[int(n * 0.8)], "D")
    assert len(ds.train) + len(ds.val) + len(ds.test) == len(liquid)


def test_full_universe_train_is_a_superset(tiny_dataset):
    full = tiny_dataset.full_train
    assert full is not None and len(full) > len(tiny_dataset.train)
    assert full.dates[-1] < tiny_dataset.val.dates[0]


def test_trailing_ignores_a_future_volume_spike():
    # One symbol, 100 quiet days at $1M/day, then a $10B/day spike on the last 10 days.
    days = np.arange(100)
    dv = np.where(days >= 90, 1e10, 1e6)
    sym = np.zeros(100, dtype=np.int64)
    rows = np.arange(100)
    liq = trailing_liquid(sym, days, dv, np.zeros(100, np.int64), rows, threshold=50e6, window=5)
    # Full-period mean is ~1e9 >= $50M: the notebook's rule calls every day liquid.
    assert dv.mean() >= 50e6
    assert not liq[:91].any(), "no row before the spike may see it"
    assert liq[95:].all(), "5 spike days in the window make it liquid"
    assert not liq[:5].any(), "rows without a full window are not liquid"


def test_trailing_mode_matches_pandas_rolling(tiny_market):
    import pandas as pd

    ds = load(tiny_market, UniverseConfig(mode="trailing", window=20))
    pr = pd.read_parquet(tiny_market / schema.PRICES_FILE).sort_values(["symbol", "date"])
    pr["dv"] = pr["close"] * pr["volume"]
    # Mean of the 20 trading days strictly before each date: rolling, then shifted one day.
    pr["trail"] = pr.groupby("symbol")["dv"].transform(lambda s: s.rolling(20).mean().shift(1))
    df = pd.read_parquet(tiny_market / schema.DATASET_FILE, columns=["feature_date", "symbol"])
    m = df.merge(pr[["symbol", "date", "trail"]], left_on=["symbol", "feature_date"],
                 right_on=["symbol", "date"], how="left")  # fmt: skip
    assert ds.info.liquid_rows == int((m["trail"] >= 50e6).sum())


def test_uri_source(tiny_market):
    ds = load(f"file://{tiny_market}")
    assert len(ds.train) > 0


# ---------------------------------------------------------------- bad input


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"ml_dataset.pqt: file not found.*liquid-search synth"):
        load(tmp_path)


def test_missing_column(tiny_market, tmp_path):
    src = _copy_with(tiny_market, tmp_path / "m", lambda t: t.drop_columns(["ret_1d_z"]))
    with pytest.raises(DataError, match=r"ml_dataset.pqt: missing price feature.*ret_1d_z.*Fix"):
        load(src)


def test_missing_target(tiny_market, tmp_path):
    src = _copy_with(tiny_market, tmp_path / "m", lambda t: t.drop_columns([schema.TARGET]))
    with pytest.raises(DataError, match=r"missing column\(s\) \['target_return'\]"):
        load(src)


def test_non_numeric_feature(tiny_market, tmp_path):
    def edit(t):
        return _set(t, "roe_z", pc.cast(t.column("roe_z"), pa.string()))

    src = _copy_with(tiny_market, tmp_path / "m", edit)
    with pytest.raises(DataError, match=r"column 'roe_z' has type string, expected a number.*Fix"):
        load(src)


def test_non_finite_feature_names_the_row(tiny_dataset, tiny_market, tmp_path):
    # Poison one embedding value of a liquid news row.
    sym = tiny_dataset.train.symbols[tiny_dataset.train.symbol_ids[3]]
    day = tiny_dataset.train.dates[np.searchsorted(tiny_dataset.train.bounds, 3, side="right") - 1]

    def edit(t):
        df_d = t.column("feature_date").to_numpy().astype("datetime64[D]")
        df_s = t.column("symbol").to_numpy(zero_copy_only=False)
        hit = np.flatnonzero((df_d == day) & (df_s == sym))
        assert len(hit) == 1
        v = t.column("emb_7").to_numpy().copy()
        v[hit[0]] = np.nan
        return _set(t, "emb_7", pa.array(v))

    src = _copy_with(tiny_market, tmp_path / "m", edit)
    with pytest.raises(
        DataError,
        match=rf"column 'emb_7' has a missing or non-finite value at row \d+ \(feature_date={day}, symbol='{sym}'\)",
    ):
        load(src)


def test_non_finite_target(tiny_market, tmp_path):
    def edit(t):
        v = t.column(schema.TARGET).to_numpy().copy()
        v[5] = np.inf
        return _set(t, schema.TARGET, pa.array(v))

    src = _copy_with(tiny_market, tmp_path / "m", edit)
    with pytest.raises(
        DataError, match=r"'target_return' has 1 non-finite value\(s\), e.g. row 5 \(feature_date="
    ):
        load(src)


def test_duplicate_rows(tiny_market, tmp_path):
    src = _copy_with(tiny_market, tmp_path / "m", lambda t: pa.concat_tables([t, t.slice(10, 1)]))
    with pytest.raises(
        DataError,
        match=r"1 duplicate \(feature_date, symbol\) row\(s\), e.g. row \d+ .*keep one row",
    ):
        load(src)


def test_empty_universe(tiny_market):
    with pytest.raises(
        DataError,
        match=r"liquid universe is empty at universe.threshold=\$1,000,000,000,000.*lower universe.threshold",
    ):
        load(tiny_market, UniverseConfig(threshold=1e12))


def test_too_few_dates(tiny_market, tmp_path):
    def edit(t):
        d = t.column("feature_date").to_numpy().astype("datetime64[D]")
        keep = d <= np.unique(d)[2]
        return t.filter(pa.array(keep))

    src = _copy_with(tiny_market, tmp_path / "m", edit)
    with pytest.raises(DataError, match=r"too few dates for the split: 3 liquid date\(s\)"):
        load(src)


def test_bad_prices(tiny_market, tmp_path):
    dst = tmp_path / "m"
    shutil.copytree(tiny_market, dst)
    t = pq.read_table(dst / schema.PRICES_FILE)
    v = t.column("volume").to_numpy().copy()
    v[0] = -1
    pq.write_table(_set(t, "volume", pa.array(v)), dst / schema.PRICES_FILE)
    with pytest.raises(
        DataError,
        match=r"prices.pqt: column 'volume' has 1 value\(s\) that are "
        r"missing, non-finite or not zero or more, e.g. row 0 \(symbol=",
    ):
        load(dst)


def _write_layout(src: Path, dst: Path, layout: str) -> Path:
    """The market with its dataset rewritten in a row-group layout real pipelines produce."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != schema.DATASET_FILE:
            shutil.copy(f, dst / f.name)
    table = pq.read_table(src / schema.DATASET_FILE)
    path = dst / schema.DATASET_FILE
    if layout == "per_date":  # one row group per date, as a daily pipeline appends them
        days = table.column(schema.DATE).to_numpy()
        cuts = [0, *(np.flatnonzero(days[1:] != days[:-1]) + 1), len(days)]
        with pq.ParquetWriter(path, table.schema) as w:
            for a, b in itertools.pairwise(cuts):
                w.write_table(table.slice(a, b - a))
    elif layout == "pandas":  # DataFrame.to_parquet's default
        table.to_pandas().to_parquet(path, index=False)
    elif layout == "single":
        pq.write_table(table, path, row_group_size=table.num_rows)
    else:  # rows in another order, in odd-sized groups
        perm = np.random.default_rng(0).permutation(table.num_rows)
        pq.write_table(table.take(perm), path, row_group_size=777)
    return dst


def _assert_same_panels(a, b) -> None:
    for name in ("train", "val", "test", "full_train"):
        pa_, pb = getattr(a, name), getattr(b, name)
        for f in ("fund", "price", "emb", "returns", "symbol_ids", "dates", "bounds", "oracle"):
            assert np.array_equal(getattr(pa_, f), getattr(pb, f)), (name, f)
        assert pa_.symbols == pb.symbols


@pytest.mark.parametrize("layout", ["per_date", "pandas", "single", "shuffled"])
def test_every_layout_loads_to_identical_panels(tiny_market, tiny_dataset, tmp_path, layout):
    ds = load(_write_layout(tiny_market, tmp_path / layout, layout), full_universe=True)
    _assert_same_panels(ds, tiny_dataset)


def test_small_batches_give_identical_panels(tiny_market, tiny_dataset, monkeypatch):
    """Batches of a few hundred rows (runs of row groups, groups split in batches) change
    nothing."""
    import ranker.inputs as inputs

    monkeypatch.setattr(inputs, "BATCH_BYTES", 400 * 796 * 4)
    _assert_same_panels(load(tiny_market, full_universe=True, threads=False), tiny_dataset)


def test_bf16_panels_hold_the_same_rows(tiny_market, tiny_dataset):
    from ranker.panel import from_bf16_bits

    ds = load(tiny_market, full_universe=True, bf16=True)
    for name in ("train", "val", "test", "full_train"):
        p16, p32 = getattr(ds, name), getattr(tiny_dataset, name)
        assert p16.emb_bf16 and not p32.emb_bf16
        assert p16.emb.nbytes * 2 == p32.emb.nbytes
        for f in ("fund", "price", "returns", "symbol_ids", "dates", "bounds"):
            assert np.array_equal(getattr(p16, f), getattr(p32, f)), (name, f)
        # bf16 keeps 8 bits of mantissa: within 2^-8 relative of the float32 value.
        back = from_bf16_bits(p16.emb)
        assert np.all(np.abs(back - p32.emb) <= np.abs(p32.emb) * 2.0**-8)


def test_null_feature_is_refused_by_row(tiny_market, tiny_dataset, tmp_path):
    """A null in a used row is refused with its row; one in a row outside the universe is not
    read at all (as a NaN there)."""
    t = pq.read_table(tiny_market / schema.DATASET_FILE)
    used = int(tiny_dataset.train.symbol_ids[0])  # a liquid symbol: its news rows are used
    sym = t.column(schema.SYMBOL).to_numpy(zero_copy_only=False).astype(str)
    emb = t.column("emb_3").to_numpy()
    row = int(np.flatnonzero((sym == tiny_dataset.train.symbols[used]) & (emb != 0))[0])

    def edit(table):
        mask = np.zeros(table.num_rows, dtype=bool)
        mask[row] = True
        return _set(table, "emb_3", pa.array(emb, mask=mask))

    src = _copy_with(tiny_market, tmp_path / "nulls", edit)
    with pytest.raises(
        DataError, match=rf"column 'emb_3' has a missing or non-finite value at row {row} "
    ):
        load(src)

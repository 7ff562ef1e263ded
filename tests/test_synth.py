"""The synthetic market generator: schema, determinism, atomic writes and the planted signal."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from scipy.stats import spearmanr

from ranker import synth
from ranker.backtest import backtest
from ranker.config import ConfigError
from ranker.data import load
from ranker.metrics import MIN_NAMES
from ranker.schema import (
    CLOSE,
    DATASET_FILE,
    DATE,
    NEWS_COUNT,
    ORACLE,
    ORACLE_FILE,
    PRICE_DATE,
    PRICE_FEATURES,
    PRICES_FILE,
    SYMBOL,
    TARGET,
    VOLUME,
    resolve_features,
)
from ranker.universe import LIQUID_THRESHOLD
from search.spec import SynthSpec

FILES = {DATASET_FILE, PRICES_FILE, ORACLE_FILE, synth.SUMMARY_FILE}


@pytest.fixture(scope="module")
def market(tmp_path_factory):
    """The typical test market: 80 symbols x 300 dates, strong signal, full-width embeddings."""
    out = tmp_path_factory.mktemp("synth")
    summary = synth.generate(out, n_symbols=80, n_dates=300, signal=4.0, seed=0)
    return out, summary


@pytest.fixture(scope="module")
def frames(market):
    """(dataset, prices) as pandas, with the oracle, a news flag and the $50M rule's class."""
    out, _ = market
    df = pd.read_parquet(out / DATASET_FILE)
    df[ORACLE] = pd.read_parquet(out / ORACLE_FILE)[ORACLE].to_numpy()
    emb = df[[c for c in df.columns if c.startswith("emb_")]].to_numpy()
    df["has_news"] = np.abs(emb).sum(axis=1) > 0
    prices = pd.read_parquet(out / PRICES_FILE)
    df["liquid"] = df[SYMBOL].map(_liquid_by_rule(prices)).to_numpy(dtype=bool)
    return df, prices


def _liquid_by_rule(prices: pd.DataFrame) -> pd.Series:
    """The notebook's universe rule: mean close*volume over the whole prices file >= $50M."""
    dollar = prices[CLOSE] * prices[VOLUME]
    return dollar.groupby(prices[SYMBOL]).mean() >= LIQUID_THRESHOLD


def _mean_ic(df: pd.DataFrame, score: str, min_names: int = MIN_NAMES) -> float:
    """Mean over dates of the Spearman IC of `score` against the realised simple return, by
    scipy, date by date."""
    ics = [
        spearmanr(g[score], np.expm1(g[TARGET]))[0]
        for _, g in df.groupby(DATE)
        if len(g) >= min_names
    ]
    return float(np.mean(ics))


def test_schema_and_dtypes(market):
    out, _ = market
    assert {p.name for p in out.iterdir()} == FILES
    schema = pq.read_schema(out / DATASET_FILE)
    feats = resolve_features(schema.names)
    assert feats.fund == synth.FUND_FEATURES and len(feats.fund) == 19
    assert all(name.endswith("_z") for name in feats.fund)
    assert feats.price == PRICE_FEATURES
    assert feats.emb == tuple(f"emb_{j}" for j in range(768))
    assert schema.field(DATE).type == pa.date32()
    assert schema.field(SYMBOL).type == pa.string()
    assert schema.field(TARGET).type == pa.float64()
    for name in (*feats.fund, *feats.price, NEWS_COUNT, *feats.emb):
        assert schema.field(name).type == pa.float32(), name
    prices = pq.read_schema(out / PRICES_FILE)
    assert [(f.name, f.type) for f in prices] == [
        (SYMBOL, pa.string()),
        (PRICE_DATE, pa.date32()),
        (CLOSE, pa.float64()),
        (VOLUME, pa.float64()),
    ]
    oracle = pq.read_schema(out / ORACLE_FILE)
    assert [(f.name, f.type) for f in oracle] == [
        (DATE, pa.date32()),
        (SYMBOL, pa.string()),
        (ORACLE, pa.float64()),
    ]


def test_oracle_rows_align_with_dataset(market):
    out, _ = market
    keys = pq.read_table(out / DATASET_FILE, columns=[DATE, SYMBOL])
    oracle = pq.read_table(out / ORACLE_FILE, columns=[DATE, SYMBOL])
    assert keys.equals(oracle)
    df = keys.to_pandas()
    assert not df.duplicated().any()
    assert df[DATE].is_monotonic_increasing


def test_summary_matches_files(market, frames):
    out, summary = market
    df, prices = frames
    saved = json.loads((out / synth.SUMMARY_FILE).read_text())
    assert saved["summary"] == summary
    assert saved["params"]["n_symbols"] == 80 and saved["params"]["signal"] == 4.0
    assert summary["rows"] == len(df)
    assert summary["symbols"] == df[SYMBOL].nunique() == prices[SYMBOL].nunique() == 80
    assert summary["dates"] == df[DATE].nunique() == 300
    assert summary["liquid_symbols"] == int(_liquid_by_rule(prices).sum())
    assert summary["liquid_rule_mismatches"] == 0
    liquid_news = df[df["liquid"] & df["has_news"]]
    assert summary["liquid_news_rows"] == len(liquid_news)
    # 14 liquid names, a third with news on a day: no date has MIN_NAMES liquid news names.
    assert liquid_news.groupby(DATE).size().max() < MIN_NAMES
    assert summary["oracle_ic_liquid_news"] is None


def test_oracle_figures_are_the_backtests(tiny_market):
    """On the tiny market (conftest's TINY), synth.json's oracle figures are the report's:
    `backtest(...).oracle` on the Panels of `load(dir)` (the default universe and split), to
    the last digit; and the all-dates IC is scipy's, date by date."""
    saved = json.loads((tiny_market / synth.SUMMARY_FILE).read_text())["summary"]
    assert saved["oracle"]["universe"]["threshold"] == LIQUID_THRESHOLD
    ds = load(tiny_market)
    for name in ("train", "val", "test"):
        panel = getattr(ds, name)
        oracle = backtest(panel, panel.oracle, k=5).oracle
        got = saved["oracle"][name]
        assert got["mean_ic"] == oracle["mean_ic"], name
        assert got["ic_sharpe"] == oracle["ic_sharpe"], name
        assert (got["n_dates"], got["rows"]) == (oracle["n_dates"], len(panel)), name
    df = pd.read_parquet(tiny_market / DATASET_FILE, columns=[DATE, SYMBOL, TARGET, "emb_0"])
    df[ORACLE] = pd.read_parquet(tiny_market / ORACLE_FILE)[ORACLE].to_numpy()
    liquid = df[SYMBOL].map(_liquid_by_rule(pd.read_parquet(tiny_market / PRICES_FILE)))
    rows = df[liquid.to_numpy(dtype=bool) & (df["emb_0"] != 0).to_numpy()]
    assert saved["oracle_ic_liquid_news"] == pytest.approx(_mean_ic(rows, ORACLE), abs=1e-12)


def test_a_market_too_short_to_split_has_no_split_figures(tmp_path):
    summary = synth.generate(tmp_path, n_symbols=10, n_dates=2, emb_dim=8)
    assert summary["oracle"]["test"] is None and summary["oracle_ic_liquid_news"] is None


def test_pinned_small_market(market):
    """The seeded test market must not drift (tests elsewhere are tuned on it)."""
    _, summary = market
    assert summary["rows"] == 7196
    assert summary["liquid_symbols"] == 14
    assert summary["liquid_news_rows"] == 1122


def test_same_seed_same_bytes_other_seed_differs(tmp_path):
    kwargs = dict(n_symbols=20, n_dates=30, emb_dim=8)
    synth.generate(tmp_path / "a", seed=3, **kwargs)
    synth.generate(tmp_path / "b", seed=3, **kwargs)
    synth.generate(tmp_path / "c", seed=4, **kwargs)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in (DATASET_FILE, PRICES_FILE, ORACLE_FILE):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes(), name


def test_embeddings_are_zero_exactly_without_news(frames):
    df, _ = frames
    emb = df[[c for c in df.columns if c.startswith("emb_")]].to_numpy()
    news = df["has_news"].to_numpy()
    assert 0.1 < news.mean() < 0.5
    assert (emb[~news] == 0.0).all()
    assert (emb[news] != 0.0).all(axis=1).mean() > 0.99  # dense, like real sentence embeddings
    np.testing.assert_allclose(np.linalg.norm(emb[news], axis=1), 1.0, atol=1e-5)
    # Every news row counts more articles than every row without news on the same date.
    by_date = df.groupby([DATE, "has_news"])[NEWS_COUNT].agg(["min", "max"]).unstack()
    both = by_date.dropna()
    assert (both[("min", True)] > both[("max", False)]).all()


def test_features_are_cross_sectionally_z_scored(frames):
    df, _ = frames
    cols = [*synth.FUND_FEATURES, *PRICE_FEATURES, NEWS_COUNT]
    by_date = df.groupby(DATE)[cols]
    assert by_date.mean().abs().max().max() < 0.02  # not exactly 0: clipped at +-5
    sd = by_date.std(ddof=0).mean()
    assert ((sd > 0.9) & (sd < 1.01)).all(), sd[(sd <= 0.9) | (sd >= 1.01)]
    assert np.isfinite(df[cols].to_numpy()).all()


def test_liquid_symbols_and_rows_near_target(tmp_path):
    summary = synth.generate(tmp_path, n_symbols=500, n_dates=60, emb_dim=8, seed=1)
    df = pd.read_parquet(tmp_path / DATASET_FILE, columns=[DATE, SYMBOL])
    liquid = df[SYMBOL].map(_liquid_by_rule(pd.read_parquet(tmp_path / PRICES_FILE)))
    assert summary["liquid_symbols"] == round(synth.LIQUID_FRACTION * 500) == 90
    assert 0.45 < liquid.mean() < 0.6  # ≈52% of rows come from the liquid ≈18% of symbols
    presence = df.groupby(SYMBOL).size().groupby(liquid.groupby(df[SYMBOL]).first()).mean() / 60
    assert presence[True] > 0.8 and presence[False] < 0.5
    assert 0.28 < summary["news_fraction_liquid"] < 0.4
    assert summary["news_fraction_illiquid"] < summary["news_fraction_liquid"]


def test_oracle_ic_is_weak_at_signal_1_and_strong_at_signal_4(tmp_path):
    kwargs = dict(n_symbols=600, n_dates=250, emb_dim=8, seed=2)
    weak = synth.generate(tmp_path / "weak", signal=1.0, **kwargs)
    strong = synth.generate(tmp_path / "strong", signal=4.0, **kwargs)
    assert 0.015 < weak["oracle_ic_liquid_news"] < 0.08
    assert 0.02 < weak["oracle_ic_illiquid_news"] < 0.12
    assert strong["oracle_ic_liquid_news"] > 0.1
    assert strong["oracle_ic_liquid_news"] > 2.5 * weak["oracle_ic_liquid_news"]
    # Recomputed from the files, as the project's metrics would see it.
    df = pd.read_parquet(tmp_path / "weak" / DATASET_FILE, columns=[DATE, SYMBOL, TARGET, "emb_0"])
    df[ORACLE] = pd.read_parquet(tmp_path / "weak" / ORACLE_FILE)[ORACLE].to_numpy()
    liquid = df[SYMBOL].map(_liquid_by_rule(pd.read_parquet(tmp_path / "weak" / PRICES_FILE)))
    rows = df[liquid.to_numpy(dtype=bool) & (df["emb_0"] != 0).to_numpy()]
    assert _mean_ic(rows, ORACLE) == pytest.approx(weak["oracle_ic_liquid_news"], abs=1e-12)


def test_liquid_and_illiquid_patterns_invert(frames):
    df, _ = frames
    liquid = df[df["liquid"]]
    illiquid = df[~df["liquid"]]
    assert np.corrcoef(liquid["ret_1d_z"], liquid[ORACLE])[0, 1] > 0.2  # continuation
    assert np.corrcoef(illiquid["ret_1d_z"], illiquid[ORACLE])[0, 1] < -0.3  # reversal
    # The quality x growth interaction flips sign too.
    inter = np.tanh(df["roe_z"] * df["revenue_growth_z"])
    assert np.corrcoef(inter[df["liquid"]], liquid[ORACLE])[0, 1] < 0
    assert np.corrcoef(inter[~df["liquid"]], illiquid[ORACLE])[0, 1] > 0


def test_oracle_is_the_planted_function_of_stored_features(frames):
    df, _ = frames
    rows = df[~df["has_news"]]
    fund = rows[list(synth.FUND_FEATURES)].to_numpy().T
    price = rows[list(PRICE_FEATURES)].to_numpy().T
    mu = synth._planted_mu(
        fund, price, np.zeros((3, len(rows))), np.zeros(len(rows), bool), rows["liquid"], 4.0
    )
    np.testing.assert_array_equal(mu, rows[ORACLE].to_numpy())


def test_prices_cover_lookback_and_match_targets(frames):
    df, prices = frames
    prices = prices.sort_values([SYMBOL, PRICE_DATE])
    first_row = df.groupby(SYMBOL)[DATE].min()
    last_row = df.groupby(SYMBOL)[DATE].max()
    before = prices[prices[PRICE_DATE] < prices[SYMBOL].map(first_row)].groupby(SYMBOL).size()
    assert (before == synth.LOOKBACK).all() and len(before) == 80
    after = prices[prices[PRICE_DATE] > prices[SYMBOL].map(last_row)].groupby(SYMBOL).size()
    assert (after == 1).all() and len(after) == 80
    assert (pd.to_datetime(prices[PRICE_DATE]).dt.day_of_week < 5).all()
    # close(next trading day) = close * exp(target_return)
    prices["next_close"] = prices.groupby(SYMBOL)[CLOSE].shift(-1)
    joined = df[[DATE, SYMBOL, TARGET]].merge(
        prices.rename(columns={PRICE_DATE: DATE}), on=[DATE, SYMBOL], validate="one_to_one"
    )
    assert len(joined) == len(df)
    np.testing.assert_allclose(
        joined["next_close"], joined[CLOSE] * np.exp(joined[TARGET]), rtol=1e-12
    )
    assert (prices[CLOSE] > 0).all() and (prices[VOLUME] >= 1).all()


def test_default_calendar_spans_the_research_period(tmp_path):
    summary = synth.generate(tmp_path, n_symbols=10, emb_dim=8)
    assert (summary["first_date"], summary["last_date"]) == ("2021-01-13", "2025-12-18")
    assert 1230 <= summary["dates"] <= 1250  # NYSE-like trading days, as in the research data


def test_failed_run_leaves_previous_files_and_no_temp_files(tmp_path):
    synth.generate(tmp_path, n_symbols=12, n_dates=10, emb_dim=8, seed=0)
    before = {name: (tmp_path / name).read_bytes() for name in FILES}

    def crash(msg: str) -> None:
        raise RuntimeError(f"interrupted at: {msg}")

    with pytest.raises(RuntimeError, match="interrupted"):
        synth.generate(tmp_path, n_symbols=12, n_dates=10, emb_dim=8, seed=1, log=crash, force=True)
    assert {p.name for p in tmp_path.iterdir()} == FILES
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    # Without force, a folder holding a market is refused, and left as it was.
    with pytest.raises(synth.SynthError, match=r"already holds ml_dataset\.pqt"):
        synth.generate(tmp_path, n_symbols=12, n_dates=10, emb_dim=8, seed=1)
    assert {name: (tmp_path / name).read_bytes() for name in FILES} == before
    # A successful run replaces them, leaving no temporary file either.
    synth.generate(tmp_path, n_symbols=12, n_dates=10, emb_dim=8, seed=1, force=True)
    assert {p.name for p in tmp_path.iterdir()} == FILES
    assert (tmp_path / DATASET_FILE).read_bytes() != before[DATASET_FILE]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_symbols": 5}, "n_symbols=5: must be an integer >= 10"),
        ({"scale": 0.0}, "scale=0.0"),
        ({"n_dates": 1}, "n_dates=1"),
        ({"signal": -1.0}, "signal=-1.0"),
        ({"emb_dim": 4}, "emb_dim=4"),
        ({"seed": -1}, "seed=-1"),
        ({"structure": "fancy"}, r"structure='fancy': must be one of \['simple', 'tuned'\]"),
        ({"start": "not-a-date"}, "ISO dates"),
        ({"start": "2025-01-01", "end": "2024-01-01", "n_dates": None}, "before start"),
    ],
)
def test_bad_parameters_are_rejected(tmp_path, kwargs, match):
    with pytest.raises(ValueError, match=match):
        synth.generate(tmp_path, **{"n_symbols": 12, "n_dates": 10, **kwargs})
    assert not any(tmp_path.iterdir())


# The default market (structure="simple") of n_symbols=40, n_dates=60, emb_dim=8, seed=0,
# signal=4.0, as generated before the `structure` switch: `_content_hash(file)[:16]`.
SIMPLE_HASHES = {
    "static": {DATASET_FILE: "8ec243fca71907c1", PRICES_FILE: "9ef880066f41b890",
               ORACLE_FILE: "6405a337972bb066"},
    "moving": {DATASET_FILE: "2f41168ca0b0cab0", PRICES_FILE: "7fb5462c2a54e808",
               ORACLE_FILE: "d900fb28346aa90a"},
}  # fmt: skip


def _content_hash(path) -> str:
    """sha256 of a parquet file's column names and values: its data, not its bytes (another
    pyarrow may write other metadata around the same data)."""
    table = pq.read_table(path)
    h = hashlib.sha256()
    for name in table.column_names:
        col = table.column(name)
        if pa.types.is_date(col.type):
            col = col.cast(pa.int32())
        values = col.to_numpy()
        h.update(name.encode())
        if values.dtype == object:
            h.update("\0".join(values).encode())
        else:
            h.update(np.ascontiguousarray(values).tobytes())
    return h.hexdigest()


@pytest.mark.parametrize("liquidity", ["static", "moving"])
def test_default_structure_is_the_market_before_the_switch(tmp_path, liquidity):
    summary = synth.generate(tmp_path, n_symbols=40, n_dates=60, emb_dim=8, seed=0, signal=4.0,
                             liquidity=liquidity)  # fmt: skip
    got = {name: _content_hash(tmp_path / name)[:16] for name in SIMPLE_HASHES[liquidity]}
    assert got == SIMPLE_HASHES[liquidity]
    saved = json.loads((tmp_path / synth.SUMMARY_FILE).read_text())
    assert saved["params"]["structure"] == "simple" and "tuned" not in summary


def test_tuned_structure_is_deterministic_and_shares_the_simple_draws(tmp_path):
    kwargs = dict(n_symbols=20, n_dates=30, emb_dim=8, seed=3)
    synth.generate(tmp_path / "a", structure="tuned", **kwargs)
    synth.generate(tmp_path / "b", structure="tuned", **kwargs)
    synth.generate(tmp_path / "simple", **kwargs)
    for name in FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for name in (DATASET_FILE, PRICES_FILE, ORACLE_FILE):
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "simple" / name).read_bytes()
    # The same draws from the same streams: the same rows, news and embeddings; other
    # fundamentals (they move faster) and returns.
    tuned = pq.read_table(tmp_path / "a" / DATASET_FILE)
    simple = pq.read_table(tmp_path / "simple" / DATASET_FILE)
    emb = [name for name in tuned.column_names if name.startswith("emb_")]
    assert tuned.select([DATE, SYMBOL, NEWS_COUNT, *emb]).equals(
        simple.select([DATE, SYMBOL, NEWS_COUNT, *emb])
    )
    assert not tuned.select(list(synth.FUND_FEATURES)).equals(
        simple.select(list(synth.FUND_FEATURES))
    )


@pytest.fixture(scope="module")
def tuned_frame(tmp_path_factory):
    """A tuned market big enough for >= 10 liquid news names a date (well under a second),
    as pandas with the oracle, a news flag and the $50M rule's class; and its summary."""
    out = tmp_path_factory.mktemp("tuned")
    summary = synth.generate(out, n_symbols=400, n_dates=120, emb_dim=8, seed=0,
                             structure="tuned")  # fmt: skip
    df = pd.read_parquet(out / DATASET_FILE)
    df[ORACLE] = pd.read_parquet(out / ORACLE_FILE)[ORACLE].to_numpy()
    df["has_news"] = df["emb_0"] != 0
    df["liquid"] = df[SYMBOL].map(_liquid_by_rule(pd.read_parquet(out / PRICES_FILE)))
    df["liquid"] = df["liquid"].to_numpy(dtype=bool)
    return df, summary


def _lag1_autocorrelation(df: pd.DataFrame, column: str) -> float:
    """Correlation of a column with its value on the symbol's previous date, over all rows."""
    wide = df.pivot(index=DATE, columns=SYMBOL, values=column).to_numpy()
    now, before = wide[1:].ravel(), wide[:-1].ravel()
    both = ~np.isnan(now) & ~np.isnan(before)
    return float(np.corrcoef(now[both], before[both])[0, 1])


def test_tuned_market_plants_what_the_docstring_says(tuned_frame, frames):
    df, summary = tuned_frame
    assert summary["liquid_rule_mismatches"] == 0
    # The oracle is the tuned planted function of the stored features (rows without news: no
    # news term).
    rows = df[~df["has_news"]]
    fund = rows[list(synth.FUND_FEATURES)].to_numpy().T
    price = rows[list(PRICE_FEATURES)].to_numpy().T
    mu = synth._planted_mu(fund, price, np.zeros((3, len(rows))), np.zeros(len(rows), bool),
                           rows["liquid"].to_numpy(), 1.0, "tuned")  # fmt: skip
    np.testing.assert_array_equal(mu, rows[ORACLE].to_numpy())
    # The pairs: no two features of a pair share a factor, none is one of the simple terms'.
    loading = dict(zip(synth.FUND_FEATURES, synth._FUND_LOADINGS, strict=True))
    simple_terms = {"fcf_yield_z", "roe_z", "revenue_growth_z", "debt_to_equity_z"}
    for a, b in synth.TUNED_FUND_PAIRS:
        assert loading[a] @ loading[b] == 0 and not {a, b} & simple_terms, (a, b)
    assert summary["tuned"]["fund_pairs"] == [list(p) for p in synth.TUNED_FUND_PAIRS]
    # The products of fundamentals carry most of the liquid names' expected return.
    liquid = df[df["liquid"]]
    products = synth._pair_sum(liquid[list(synth.FUND_FEATURES)].to_numpy().T, synth._F,
                               synth.TUNED_FUND_PAIRS)  # fmt: skip
    assert np.corrcoef(products, liquid[ORACLE])[0, 1] > 0.8
    # A strong signal (the simple market's is ≈0.02-0.05 at signal=1)...
    assert summary["oracle_ic_liquid_news"] > 0.15 and summary["oracle_ic_illiquid_news"] > 0.15
    # ...in fundamentals that move fast (≈0.2 + 0.8·0.5; the simple market's barely move)...
    tuned_ac = [_lag1_autocorrelation(df, name) for name in synth.FUND_FEATURES]
    assert 0.5 < min(tuned_ac) and max(tuned_ac) < 0.7
    simple_df, _ = frames
    assert _lag1_autocorrelation(simple_df, "pe_ratio_z") > 0.99
    # ...so that a name's past returns are no easy proxy for it.
    news = liquid[liquid["has_news"]]
    assert abs(_mean_ic(news, "ret_5d_z")) < 0.3 * _mean_ic(news, ORACLE)


def test_tuned_composes_with_moving_liquidity(tmp_path):
    """On a tuned market whose liquidity moves, a mover's oracle is the tuned relation plus the
    moving market's premium while it lasts (rows without news: no news term)."""
    summary = synth.generate(tmp_path, n_symbols=60, n_dates=80, emb_dim=8, seed=0,
                             liquidity="moving", structure="tuned")  # fmt: skip
    assert "tuned" in summary and summary["movers"]["risers"] > 0
    movers = summary["movers"]["symbols"]
    df = pd.read_parquet(tmp_path / DATASET_FILE)
    df[ORACLE] = pd.read_parquet(tmp_path / ORACLE_FILE)[ORACLE].to_numpy()
    rows = df[df[SYMBOL].isin(list(movers)) & (df["emb_0"] == 0)]
    kind = rows[SYMBOL].map(lambda name: movers[name]["kind"]).to_numpy()
    crosses = rows[SYMBOL].map(lambda name: movers[name]["crosses"]).to_numpy()
    date = rows[DATE].astype(str).to_numpy()
    phase = ((kind == "riser") & (date < crosses)).astype(float) - (
        (kind == "faller") & (date >= crosses)
    ).astype(float)
    assert (phase != 0).any()
    n = len(rows)
    mu = synth._planted_mu(rows[list(synth.FUND_FEATURES)].to_numpy().T,
                           rows[list(PRICE_FEATURES)].to_numpy().T, np.zeros((3, n)),
                           np.zeros(n, bool), np.ones(n, bool), 1.0, "tuned")  # fmt: skip
    np.testing.assert_allclose(mu + synth._MOVER_PREMIUM * phase, rows[ORACLE], rtol=1e-12)


def test_the_spec_checks_the_structure():
    assert SynthSpec(structure="tuned").structure == "tuned"
    with pytest.raises(ConfigError, match=r"data.synth.structure='fancy': must be one of"):
        SynthSpec(structure="fancy")

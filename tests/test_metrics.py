"""ranker.metrics against a plain per-date loop with the research notebook's definitions."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import spearmanr

from ranker import metrics
from ranker.metrics import ANN, daily, evaluate_bounds, spearman_by_date, summarize
from tests.reference import daily_by_date, evaluate

KEYS = [
    "ic_sharpe",
    "mean_ic",
    "long_return",
    "long_sharpe",
    "short_return",
    "short_sharpe",
    "ls_return",
    "ls_sharpe",
]


def seed_daily(dates, scores, returns, k=5):
    """The notebook's per-date loop: groupby date, skip < 10 names, spearmanr, nlargest/nsmallest.

    Returns one dict per kept date with the IC (NaN kept), long, short and the chosen rows.
    """
    df = pd.DataFrame({"feature_date": dates, "score": scores, "simple_return": returns})
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # spearmanr warns on constant input
        for _, group in df.groupby("feature_date"):
            if len(group) < 10:
                continue
            ic, _ = spearmanr(group["score"], group["simple_return"])
            top = group.nlargest(k, "score")
            bottom = group.nsmallest(k, "score")
            out.append(
                {
                    "ic": ic,
                    "long": top["simple_return"].mean(),
                    "short": -bottom["simple_return"].mean(),
                    "long_rows": set(top.index),
                    "short_rows": set(bottom.index),
                }
            )
    return out


def seed_evaluate(dates, scores, returns, k=5):
    """The notebook's `evaluate_model` summary (its formulas, including its fallbacks)."""
    days = seed_daily(dates, scores, returns, k)
    ics = [d["ic"] for d in days if not np.isnan(d["ic"])]
    mean_ic = np.mean(ics) if ics else 0
    ic_std = np.std(ics) if ics else 1
    ic_sharpe = mean_ic / ic_std * np.sqrt(252) if ic_std > 0 else 0
    long_arr = np.array([d["long"] for d in days])
    short_arr = np.array([d["short"] for d in days])
    ls_arr = (long_arr + short_arr) / 2

    def compute_sharpe(returns):
        if len(returns) < 2 or np.std(returns) == 0:
            return 0
        return np.mean(returns) / np.std(returns) * np.sqrt(252)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # np.mean([]) when no date is kept
        return {
            "ic_sharpe": ic_sharpe,
            "mean_ic": mean_ic,
            "long_return": np.mean(long_arr) * 252,
            "long_sharpe": compute_sharpe(long_arr),
            "short_return": np.mean(short_arr) * 252,
            "short_sharpe": compute_sharpe(short_arr),
            "ls_return": np.mean(ls_arr) * 252,
            "ls_sharpe": compute_sharpe(ls_arr),
        }


def random_market(seed: int):
    """Shuffled rows over ~30 dates with every awkward case the notebook's loop meets.

    Dates with < 10 names (skipped), exactly 10, constant scores (NaN IC, books still chosen by
    row order), constant returns, coarse tied scores and returns (ties across the top-k edge),
    +-inf scores, and float32 scores on odd seeds.
    """
    rng = np.random.default_rng(seed)
    n_dates = 30
    sizes = rng.integers(3, 60, n_dates)
    sizes[:4] = [4, 9, 10, 10]
    sizes[4:10] = np.maximum(sizes[4:10], 12)  # the special dates below are kept
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    dates = np.repeat(np.datetime64("2024-01-02") + np.arange(n_dates), sizes)
    scores = rng.standard_normal(len(dates))
    returns = rng.standard_normal(len(dates)) * 0.02

    def rows(d):
        return slice(bounds[d], bounds[d + 1])

    scores[rows(4)] = 0.3  # constant scores
    returns[rows(5)] = 0.01  # constant returns
    scores[rows(6)] = rng.integers(0, 3, sizes[6])  # heavy ties, also at the top-k edge
    returns[rows(7)] = np.round(returns[rows(7)], 2)  # tied returns
    scores[rows(7)] = np.round(scores[rows(7)])
    scores[bounds[8] : bounds[8] + 3] = [np.inf, np.inf, -np.inf]
    scores[bounds[9] + 1 : bounds[9] + 4] = np.max(scores[rows(9)])  # tie at the top
    if seed % 2:
        scores = scores.astype(np.float32)
    perm = rng.permutation(len(dates))
    return dates[perm], scores[perm], returns[perm]


@pytest.fixture(params=[None, 0.0, 1e9], ids=["auto", "flat_sort", "padded_sort"])
def sort_path(request, monkeypatch):
    """Run a test with the ranking's automatic, forced flat and forced padded algorithm."""
    if request.param is not None:
        monkeypatch.setattr(metrics, "_MAX_PAD_RATIO", request.param)
    return request.param


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_evaluate_matches_seed_loop(seed, sort_path):
    dates, scores, returns = random_market(seed)
    got = evaluate(dates, scores, returns)
    want = seed_evaluate(dates, scores, returns)
    for key in KEYS:
        assert got[key] == pytest.approx(want[key], abs=1e-9, rel=1e-9), key
        assert isinstance(got[key], float), key
    assert got["n_dates"] == len(seed_daily(dates, scores, returns))


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_daily_matches_seed_loop_per_date(seed, k, sort_path):
    dates, scores, returns = random_market(seed)
    d = daily_by_date(dates, scores, returns, k=k)
    want = seed_daily(dates, scores, returns, k=k)
    assert len(d) == len(want)
    np.testing.assert_allclose(d.ic, [w["ic"] for w in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.long, [w["long"] for w in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.short, [w["short"] for w in want], rtol=0, atol=1e-12)
    np.testing.assert_allclose(d.ls, (d.long + d.short) / 2)
    assert [set(r) for r in d.long_rows.tolist()] == [w["long_rows"] for w in want]
    assert [set(r) for r in d.short_rows.tolist()] == [w["short_rows"] for w in want]
    assert np.isnan(d.ic).sum() == 2  # the constant-scores and constant-returns dates
    # Books are ordered best first / worst first.
    s = scores[d.long_rows]
    assert np.all(s[:, :-1] >= s[:, 1:])
    s = scores[d.short_rows]
    assert np.all(s[:, :-1] <= s[:, 1:])


def test_sorted_panel_path_and_date_dtypes_agree():
    dates, scores, returns = random_market(2)
    order = np.argsort(dates, kind="stable")
    _, sizes = np.unique(dates, return_counts=True)
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    want = evaluate(dates, scores, returns)
    got = evaluate_bounds(bounds, scores[order], returns[order])
    assert got == want
    assert evaluate(dates.astype(str), scores, returns) == want
    assert evaluate(dates.astype("int64"), scores, returns) == want
    d = daily(bounds, scores[order], returns[order])
    assert np.all(d.date_idx == np.flatnonzero(sizes >= 10))


def test_spearman_by_date_matches_scipy(sort_path):
    rng = np.random.default_rng(7)
    sizes = np.array([12, 3, 40, 25, 10])
    bounds = np.concatenate([[0], np.cumsum(sizes)])
    x = np.round(rng.standard_normal(bounds[-1]), 1)  # many ties
    y = rng.standard_normal(bounds[-1])
    idx, ic = spearman_by_date(bounds, x, y)
    assert idx.tolist() == [0, 2, 3, 4]
    want = [spearmanr(x[bounds[d] : bounds[d + 1]], y[bounds[d] : bounds[d + 1]])[0] for d in idx]
    np.testing.assert_allclose(ic, want, rtol=0, atol=1e-12)


def test_pinned_two_dates():
    # Date A: scores 0..9, returns 0.01 * [0, 2, 1, 3, 4, 5, 6, 7, 9, 8]: two adjacent swaps, so
    # sum d^2 = 4 and IC = 1 - 6 * 4 / (10 * 99) = 966/990. Top 2 (scores 9, 8) earn 0.08 and 0.09,
    # bottom 2 (scores 0, 1) earn 0 and 0.02: long 0.085, short -0.01.
    # Date B: returns reversed, IC = -1; long (0 + 0.01)/2 = 0.005, short -(0.09 + 0.08)/2.
    # Date C: 5 names, skipped.
    s = np.arange(10.0)
    ra = 0.01 * np.array([0, 2, 1, 3, 4, 5, 6, 7, 9, 8])
    rb = 0.01 * np.arange(9, -1, -1)
    dates = np.repeat([1, 2, 3], [10, 10, 5])
    scores = np.concatenate([s, s, np.arange(5.0)])
    returns = np.concatenate([ra, rb, np.full(5, 0.5)])
    m = evaluate(dates, scores, returns, k=2)
    # mean IC = (966/990 - 1)/2 = -12/990; IC std (ddof 0) = (966/990 + 1)/2 = 978/990.
    assert m["mean_ic"] == pytest.approx(-12 / 990, abs=1e-12)
    assert m["ic_sharpe"] == pytest.approx(-12 / 978 * np.sqrt(252), abs=1e-12)
    assert m["ic_sharpe"] == pytest.approx(-0.194779, abs=1e-6)
    assert m["long_return"] == pytest.approx(0.045 * 252, abs=1e-12)  # 11.34
    assert m["long_sharpe"] == pytest.approx(0.045 / 0.04 * np.sqrt(252), abs=1e-9)  # 17.86
    assert m["short_return"] == pytest.approx(-0.0475 * 252, abs=1e-12)
    assert m["short_sharpe"] == pytest.approx(-0.0475 / 0.0375 * np.sqrt(252), abs=1e-9)
    assert m["ls_return"] == pytest.approx(-0.00125 * 252, abs=1e-12)  # (0.0375 - 0.04) / 2
    assert m["ls_sharpe"] == pytest.approx(-0.00125 / 0.03875 * np.sqrt(252), abs=1e-9)
    assert m["n_dates"] == 2


def test_no_date_has_enough_names():
    dates = np.repeat(np.arange(4), 9)
    rng = np.random.default_rng(0)
    scores, returns = rng.standard_normal(36), rng.standard_normal(36)
    m = evaluate(dates, scores, returns)
    want = seed_evaluate(dates, scores, returns)
    assert m["n_dates"] == 0
    for key in ["ic_sharpe", "mean_ic", "long_sharpe", "short_sharpe", "ls_sharpe"]:
        assert m[key] == 0.0 == want[key], key
    for key in ["long_return", "short_return", "ls_return"]:  # np.mean([]) in the notebook
        assert np.isnan(m[key]) and np.isnan(want[key]), key
    d = daily_by_date(dates, scores, returns)
    assert d.long_rows.shape == (0, 5) and d.ic.shape == (0,)
    assert evaluate(np.array([]), np.array([]), np.array([]))["n_dates"] == 0


def test_single_kept_date():
    rng = np.random.default_rng(3)
    dates = np.repeat([0, 1], [15, 4])
    scores, returns = rng.standard_normal(19), rng.standard_normal(19) * 0.01
    m = evaluate(dates, scores, returns)
    want = seed_evaluate(dates, scores, returns)
    assert m["n_dates"] == 1
    assert m["ic_sharpe"] == 0.0 and m["long_sharpe"] == 0.0 and m["ls_sharpe"] == 0.0
    top5 = np.argsort(-scores[:15])[:5]
    assert m["long_return"] == pytest.approx(returns[top5].mean() * ANN, abs=1e-12)
    for key in KEYS:
        assert m[key] == pytest.approx(want[key], abs=1e-12), key


def test_constant_scores_keep_first_rows():
    # pandas keep="first": with all scores tied, the books are the first k rows of the date.
    d = daily(np.array([0, 12]), np.zeros(12), np.arange(12.0), k=3)
    assert np.isnan(d.ic[0])
    assert d.long_rows.tolist() == [[0, 1, 2]] and d.short_rows.tolist() == [[0, 1, 2]]
    assert summarize(d)["mean_ic"] == 0.0 and summarize(d)["long_return"] == 1.0 * ANN


def test_bad_inputs_name_the_problem():
    bounds, x = np.array([0, 10]), np.arange(10.0)
    with pytest.raises(ValueError, match="NaN"):
        daily(bounds, np.where(x > 5, np.nan, x), x)
    with pytest.raises(ValueError, match="k=11"):
        daily(bounds, x, x, k=11)
    with pytest.raises(ValueError, match="0 to len"):
        daily(np.array([0, 9]), x, x)
    with pytest.raises(ValueError, match="same length"):
        daily(bounds, x, x[:5])
    with pytest.raises(ValueError, match="NaT"):
        evaluate(np.array(["2024-01-01", "NaT"], dtype="datetime64[D]"), x[:2], x[:2])


def test_one_million_rows_runs():
    # Speed sanity, not a timing assertion: 1M rows over 1,250 dates in one call.
    rng = np.random.default_rng(0)
    n, n_dates = 1_000_000, 1250
    bounds = np.linspace(0, n, n_dates + 1).astype(np.int64)
    scores = rng.standard_normal(n).astype(np.float32)
    returns = rng.standard_normal(n) * 0.02 + 1e-3 * scores
    m = evaluate_bounds(bounds, scores, returns)
    assert m["n_dates"] == n_dates
    assert m["mean_ic"] > 0.02  # the planted signal shows through

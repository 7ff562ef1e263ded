"""ranker.costs: the notebook's flat costs, turnover-aware costs and break-even costs."""

from __future__ import annotations

import numpy as np
import pytest

from ranker.costs import (
    CostModel,
    breakeven_bps,
    cost_metrics,
    flat_costs,
    turnover,
    turnover_costs,
)
from ranker.metrics import ANN, daily
from tests.reference import daily_by_date


def random_inputs(seed: int = 0, n_dates: int = 40, names: int = 30):
    """Rows of a fixed universe of `names` symbols over `n_dates` dates, sorted by date, with a
    persistent score (so the books overlap from day to day): (dates, scores, returns, symbols)."""
    rng = np.random.default_rng(seed)
    dates = np.repeat(np.arange(n_dates), names)
    symbol_ids = np.tile(np.arange(names, dtype=np.int32), n_dates)
    alpha = rng.standard_normal(names)[symbol_ids]
    scores = alpha + 0.5 * rng.standard_normal(len(dates))
    returns = 0.002 * alpha + 0.02 * rng.standard_normal(len(dates))
    return dates, scores, returns, symbol_ids


def random_daily(seed: int = 0):
    """A Daily of `random_inputs` and its per-row symbol ids."""
    dates, scores, returns, symbol_ids = random_inputs(seed)
    bounds = np.searchsorted(dates, np.arange(dates[-1] + 2))
    return daily(bounds, scores, returns), symbol_ids


def test_flat_costs_match_the_notebook_formula():
    d, _ = random_daily()
    spread, impact, borrow_daily = 0.001, 0.0005, 0.03 / 252
    long_net = d.long - (spread + impact * 2)
    short_net = d.short - (spread + impact * 2 + borrow_daily)
    ls_net = (long_net + short_net) / 2
    got = flat_costs(d)
    for name, x in [("long", long_net), ("short", short_net), ("ls", ls_net)]:
        assert got[f"{name}_net_return"] == pytest.approx(np.mean(x) * 252, abs=1e-12)
        assert got[f"{name}_net_sharpe"] == pytest.approx(
            np.mean(x) / np.std(x) * np.sqrt(252), abs=1e-9
        )
    assert (got["spread"], got["impact"], got["borrow"]) == (0.001, 0.0005, 0.03)


def test_flat_costs_use_the_given_model():
    d, _ = random_daily()
    free = flat_costs(d, CostModel(spread=0.0, impact=0.0, borrow=0.0))
    assert free["ls_net_return"] == pytest.approx(np.mean(d.ls) * ANN, abs=1e-12)
    dear = flat_costs(d, CostModel(spread=0.002, impact=0.001, borrow=0.0))
    assert dear["long_net_return"] == pytest.approx((np.mean(d.long) - 0.004) * ANN, abs=1e-12)


def three_days(long_scores_day3=None):
    """3 dates x 10 symbols, k = 5: score = symbol id, so the long book is symbols 5..9 and the
    short book 0..4 every day, unless day 3's scores are given."""
    sym = np.tile(np.arange(10), 3)
    scores = np.tile(np.arange(10.0), 3)
    if long_scores_day3 is not None:
        scores[20:] = long_scores_day3
    returns = np.linspace(-0.02, 0.03, 30)
    return daily(np.array([0, 10, 20, 30]), scores, returns, k=5), sym


def test_unchanged_books_pay_only_on_the_first_day():
    d, sym = three_days()
    to = turnover(d, sym)
    assert to.long.tolist() == [1.0, 0.0, 0.0] and to.short.tolist() == [1.0, 0.0, 0.0]
    c = CostModel()
    got = turnover_costs(d, sym, c)
    long_net = d.long - np.array([c.round_trip, 0, 0])
    short_net = d.short - np.array([c.round_trip, 0, 0]) - 0.03 / 252
    assert got["to_long_net_return"] == pytest.approx(np.mean(long_net) * 252, abs=1e-12)
    assert got["to_short_net_return"] == pytest.approx(np.mean(short_net) * 252, abs=1e-12)
    assert got["to_ls_net_return"] == pytest.approx(
        np.mean((long_net + short_net) / 2) * 252, abs=1e-12
    )
    assert got["mean_turnover"] == pytest.approx(1 / 3)


def test_partial_turnover_counts_changed_names():
    # Day 3 swaps the scores of symbols 4 and 5: long {4,6,7,8,9}, short {0,1,2,3,5}: 1 of 5 new.
    day3 = np.arange(10.0)
    day3[[4, 5]] = day3[[5, 4]]
    d, sym = three_days(day3)
    to = turnover(d, sym)
    assert to.long.tolist() == [1.0, 0.0, 0.2]
    assert to.short.tolist() == [1.0, 0.0, 0.2]
    assert to.mean.tolist() == [1.0, 0.0, 0.2]


def test_turnover_follows_symbols_not_rows():
    # The same market with shuffled rows: daily_by_date's row indices point into the shuffled
    # input, so turnover must be computed with the shuffled symbol ids and agree.
    dates, scores, returns, sym = random_inputs(seed=2)
    d_sorted, _ = random_daily(seed=2)
    perm = np.random.default_rng(0).permutation(len(dates))
    d_shuffled = daily_by_date(dates[perm], scores[perm], returns[perm])
    got = turnover(d_shuffled, sym[perm])
    want = turnover(d_sorted, sym)
    np.testing.assert_array_equal(got.long, want.long)
    np.testing.assert_array_equal(got.short, want.short)
    assert 0 < want.mean[1:].mean() < 1  # the books really overlap and really change


@pytest.mark.parametrize("kind", ["flat", "turnover"])
def test_net_ls_is_zero_at_the_breakeven_cost(kind):
    d, sym = random_daily(seed=3)
    assert np.mean(d.ls) > 0.03 / 252 / 2  # a profitable gross L/S, so break-even is positive
    metrics = cost_metrics(d, sym)
    c_bps = metrics["breakeven_bps"] if kind == "flat" else metrics["to_breakeven_bps"]
    assert c_bps > 0
    at_breakeven = CostModel(spread=c_bps / 1e4, impact=0.0, borrow=0.03)
    if kind == "flat":
        net = flat_costs(d, at_breakeven)["ls_net_return"]
    else:
        net = turnover_costs(d, sym, at_breakeven)["to_ls_net_return"]
    assert net == pytest.approx(0.0, abs=1e-12)
    # Any cost split between spread and impact gives the same round trip.
    split = CostModel(spread=c_bps / 2e4, impact=c_bps / 4e4, borrow=0.03)
    assert cost_metrics(d, sym, split)[
        "ls_net_return" if kind == "flat" else "to_ls_net_return"
    ] == (pytest.approx(0.0, abs=1e-12))


def test_breakeven_formula_and_edge_cases():
    gross = np.array([0.002, 0.0, 0.001])
    to = np.array([1.0, 0.5, 0.0])
    want = (0.001 - 0.03 / 252 / 2) / 0.5 * 1e4
    assert breakeven_bps(gross, to, 0.03 / 252) == pytest.approx(want, abs=1e-12)
    assert np.isnan(breakeven_bps(np.array([]), np.array([]), 0.0))
    # Borrow alone sinks it: the solved cost is negative.
    assert breakeven_bps(np.array([1e-5]), np.array([1.0]), 0.03 / 252) < 0
    # No trading at all: costs never bite.
    assert breakeven_bps(np.array([1e-3]), np.array([0.0]), 0.0) == np.inf
    assert breakeven_bps(np.array([-1e-3]), np.array([0.0]), 0.0) == -np.inf


def test_no_kept_dates_gives_nan_returns_and_zero_sharpes():
    d = daily(np.array([0, 5, 9]), np.arange(9.0), np.zeros(9))
    got = cost_metrics(d, np.arange(9))
    assert np.isnan(got["ls_net_return"]) and np.isnan(got["to_ls_net_return"])
    assert got["ls_net_sharpe"] == 0.0 and got["to_ls_net_sharpe"] == 0.0
    assert np.isnan(got["breakeven_bps"]) and np.isnan(got["mean_turnover"])


def test_bad_cost_inputs():
    with pytest.raises(ValueError, match="spread"):
        CostModel(spread=-0.001)
    with pytest.raises(ValueError, match="borrow"):
        CostModel(borrow=float("nan"))
    d, sym = three_days()
    with pytest.raises(ValueError, match=r"expected \(30,\)"):
        turnover(d, sym[:10])

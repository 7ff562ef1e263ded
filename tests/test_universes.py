"""The universe rules side by side on a market whose liquidity moves (`liquidity="moving"`), the
ensemble final model, and whether the search beat its starting point.

On the moving synthetic market the notebook's full-period rule and the point-in-time rule keep
different names on most dates, and the full-period rule's test metrics exceed the point-in-time
ones: it keeps names that have already dropped out of the liquid set (the generator plants their
decline, and their growth numbers show it). On the static market the two agree exactly.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ranker import checkpoint
from ranker.backtest import backtest
from ranker.data import load
from ranker.model import Ensemble, ModelConfig, MultiBranchRanker
from ranker.synth import SUMMARY_FILE, generate
from ranker.train import TrainConfig, fit, score
from ranker.universe import UniverseConfig
from search.final import compare_seeds
from search.results import ModelResult, mean_std

MOVING = {"n_symbols": 400, "n_dates": 250, "signal": 4.0, "seed": 0, "liquidity": "moving"}


@pytest.fixture(scope="module")
def moving_market(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("moving")
    generate(out, **MOVING)
    return out


def test_the_moving_market_says_who_moves_and_when(moving_market):
    facts = json.loads((moving_market / SUMMARY_FILE).read_text())
    movers = facts["summary"]["movers"]
    assert facts["params"]["liquidity"] == "moving"
    assert movers["risers"] > 5 and movers["fallers"] > 5
    kinds = [m["kind"] for m in movers["symbols"].values()]
    assert kinds.count("riser") == movers["risers"] and kinds.count("faller") == movers["fallers"]
    assert all(facts["summary"]["first_date"] <= m["crosses"] <= facts["summary"]["last_date"]
               for m in movers["symbols"].values())  # fmt: skip


def test_the_rules_differ_on_a_moving_market_and_agree_on_a_static_one(moving_market, tiny_market):
    moving = load(moving_market, compare_universes=True)
    t = moving.universe_timeline
    assert (t["differ"] > 0).mean() > 0.5, "the rules pick other names on most dates"
    assert t["differ"].mean() > 0.1 * t["trailing_names"].mean()
    static = load(tiny_market, compare_universes=True)
    assert static.universe_timeline["differ"].max() == 0
    a, b = static.test_by_rule["full_period"], static.test_by_rule["trailing"]
    assert np.array_equal(a.returns, b.returns) and np.array_equal(a.symbol_ids, b.symbol_ids)


def test_looking_ahead_flatters_the_test_metrics(moving_market):
    """A model trained on the notebook's universe scores higher on the full-period test set
    than on the point-in-time one, and so does the planted signal itself."""
    torch.set_num_threads(1)
    ds = load(moving_market, UniverseConfig("full_period"), compare_universes=True)
    r = fit(ModelConfig(), TrainConfig(epochs=10), ds.train, ds.val)
    got = {rule: backtest(p, score(r.model, p), 5) for rule, p in ds.test_by_rule.items()}
    full, trailing = got["full_period"], got["trailing"]
    assert full.metrics["mean_ic"] > trailing.metrics["mean_ic"] + 0.01, (
        full.metrics,
        trailing.metrics,
    )
    assert full.oracle["mean_ic"] > trailing.oracle["mean_ic"] + 0.01


def test_an_ensemble_checkpoint_scores_the_mean_of_its_members(tiny_dataset, tmp_path):
    cfg = ModelConfig(fund_hidden=8, price_hidden=8, news_hidden=8, n_embedding_dim=768)
    members = []
    for seed in range(3):
        torch.manual_seed(seed)
        members.append(MultiBranchRanker(cfg).eval())
    ens = Ensemble.from_states(cfg, [m.state_dict() for m in members])
    test = tiny_dataset.test
    want = np.mean([score(m, test) for m in members], axis=0)
    assert np.allclose(score(ens, test), want, rtol=1e-6, atol=1e-7)
    checkpoint.save(tmp_path / "m.pt", ens, tiny_dataset.columns)
    loaded = checkpoint.load(tmp_path / "m.pt")
    assert isinstance(loaded.model, Ensemble) and len(loaded.model.members) == 3
    assert np.array_equal(score(loaded.model, test), score(ens, test))
    # One seed (final.seeds=1): a plain model's checkpoint, scoring as that seed.
    one = Ensemble.from_states(cfg, [members[0].state_dict()])
    checkpoint.save(tmp_path / "one.pt", one, tiny_dataset.columns)
    loaded = checkpoint.load(tmp_path / "one.pt")
    assert isinstance(loaded.model, MultiBranchRanker) and loaded.payload["members"] == 1
    assert np.array_equal(score(loaded.model, test), score(members[0], test))


def test_search_vs_base_is_welchs_difference_and_says_which():
    def part(values):
        spread = mean_std(values)
        assert len(values) == 1 or spread.std == np.std(values, ddof=1)
        return dataclasses.replace(
            PART, seed_spread={k: spread for k in ("mean_ic", "ic_sharpe", "ls_sharpe")}
        )

    a, b = [0.030, 0.032, 0.031], [0.020, 0.021, 0.019]
    out = compare_seeds(part(a), part(b))
    se = math.sqrt(np.var(a, ddof=1) / 3 + np.var(b, ddof=1) / 3)
    assert out.by_metric["mean_ic"].diff == pytest.approx(np.mean(a) - np.mean(b))
    assert out.by_metric["mean_ic"].se == pytest.approx(se)
    assert "beat its starting point by more than the seed noise" in out.sentence
    noisy = compare_seeds(part([0.03, 0.01, 0.05]), part([0.02, 0.04, 0.0]))
    assert "within the seed noise" in noisy.sentence
    one = compare_seeds(part([0.03]), part([0.02]))
    assert "no noise to compare" in one.sentence and math.isnan(one.by_metric["mean_ic"].se)


# A model result with nothing in it but what compare_seeds reads (its seed spread).
PART = ModelResult(val={}, test={}, costs={}, members=(), seed_spread={}, best_epoch=0,
                   seconds=0.0, device="cpu", history=())  # fmt: skip

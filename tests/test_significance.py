"""Selection under noise: the Model Confidence Set and the SPA test (`arch`), checked against a
direct computation on a small case, on synthetic per-date series where the answer is known, and
on real stages: one whose configs are the same model with different seeds (everything tied, the
start not beaten, `spa` keeps it) and one where one config clearly learns and the start does not
(the set small, the start beaten, `spa` moves); the start is trained as an extra trial only where
it is not a grid point."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest
from arch.bootstrap import StationaryBootstrap

from ranker.significance import default_block, model_confidence_set, superior_predictive_ability
from search import spec as specmod
from search.analysis import selected_trial
from search.rundir import RunDir, Series
from search.significance import assess, start_point
from search.stage_overfit import selected_dsr
from search.stages import select
from search.trial_result import FINISHED, TrialResult, TrialRow
from tests.conftest import run_search, smoke_spec

METRICS0 = {"ic_sharpe": 1.0, "mean_ic": 0.01, "long_return": 0.0, "long_sharpe": 0.0,
            "short_return": 0.0, "short_sharpe": 0.0, "ls_return": 0.0, "ls_sharpe": 0.0}  # fmt: skip


# ---------------------------------------------------------------- the tests themselves (arch)


def test_spa_is_the_bootstrap_share_of_resampled_mean_differences_above_the_observed():
    """With one candidate, Hansen's statistic is the mean loss difference (benchmark minus
    candidate) studentized by one number on both sides, so the p-value is the share of
    stationary-bootstrap resamples whose re-centred mean difference exceeds the observed one:
    computed here directly from arch's own resampling with the same seed."""
    rng = np.random.default_rng(3)
    t = 120
    bench = rng.normal(0.0, 1.0, t)
    cand = bench - 0.15 + rng.normal(0.0, 1.0, t)
    got = superior_predictive_ability(bench, cand[:, None], reps=400, block=8, seed=11)
    d = bench - cand
    bs = StationaryBootstrap(8, d[:, None], seed=11)
    sims = np.array([x[0][0].mean() - d.mean() for x in bs.bootstrap(400)])
    assert got.pvalue_upper == pytest.approx(float((sims > d.mean()).mean()), abs=1e-12)
    assert (got.n_models, got.n_dates, got.block, got.reps) == (1, t, 8, 400)
    assert default_block(120) == 11 and default_block(1) == 1


def test_the_mcs_keeps_configs_alike_and_drops_the_clearly_worse():
    rng = np.random.default_rng(0)
    common = rng.normal(0, 1.0, (200, 1))
    alike = common + rng.normal(0, 0.3, (200, 6))  # six configs, one distribution
    tied = model_confidence_set(alike, 0.1, reps=500, seed=1)
    assert len(tied.included) >= 5, tied
    worse = alike.copy()
    worse[:, 1:] += 0.5  # all but the first clearly worse (higher loss)
    small = model_confidence_set(worse, 0.1, reps=500, seed=1)
    assert small.included == (0,), small
    assert all(small.pvalues[i] < 0.1 for i in range(1, 6))
    with pytest.raises(ValueError, match="finite"):
        model_confidence_set(np.full((5, 2), np.nan))


# ---------------------------------------------------------------- a stage's rows and series


def _stage(points: list[float]) -> specmod.StageSpec:
    return specmod.StageSpec("training", {"learning_rate": tuple(points)})


def _rows_and_series(stage, means: dict[float, float], t: int = 150, seed: int = 0):
    """A finished trial per point (and the start's, when it is not one), whose val IC series
    has the given mean; noise is shared across points, as configs of one model share it."""
    rng = np.random.default_rng(seed)
    dates = np.datetime64("2024-01-01") + np.arange(t)
    shared = rng.normal(0, 0.05, t)
    rows, series = [], {}
    for i, (lr, mu) in enumerate(means.items()):
        ic = mu + shared + rng.normal(0, 0.02, t)
        tid = f"t{i}"
        best = {**METRICS0, "ic_sharpe": float(ic.mean() / ic.std() * math.sqrt(252)),
                "mean_ic": float(ic.mean())}  # fmt: skip
        result = TrialResult(epoch=2, train_loss=0.69, metrics=best, best_epoch=2,
                             best_metrics=best, train_seconds=1.0, restored=0, node_id="n",
                             device="cpu", data_zero_copy=True)  # fmt: skip
        rows.append(TrialRow(tid, {"learning_rate": lr}, 0, 0, FINISHED, "", result, "ck"))
        z = np.zeros(t)
        books = np.zeros((t, 5), np.int32)
        series[tid] = Series(dates, ic, z, z, z, books, books)
    return rows, series


def _spec(rule: str):
    sp = smoke_spec(Path("/unused"))
    return dataclasses.replace(sp, selection=dataclasses.replace(sp.selection, rule=rule))


def test_alike_configs_are_tied_and_the_start_is_kept_under_spa():
    stage = _stage([1e-3, 2e-3, 3e-3, 4e-3])
    rows, series = _rows_and_series(stage, dict.fromkeys([1e-3, 2e-3, 3e-3, 4e-3], 0.02))
    start = {"learning_rate": 1e-3}
    sig = assess(_spec("best"), stage, rows, series, start, moved=False)
    assert sig.skipped is None and sig.n_points == 4 and sig.n_tied >= 3
    assert not sig.beat_start and sig.spa_pvalue > 0.05 and sig.start_is_grid_point
    sp = _spec("spa")
    b = select(sp, stage, rows, start, series, sp.model, sp.train, 0.0)
    assert b.point == start and not b.significance.moved, "spa keeps the start"
    best = select(_spec("best"), stage, rows, start, series, sp.model, sp.train, 0.0)
    assert best.point == max(rows, key=lambda r: r.best_metrics["ic_sharpe"]).point


def test_one_clearly_better_config_beats_the_start_and_spa_moves_to_it():
    stage = _stage([1e-3, 2e-3, 3e-3])
    rows, series = _rows_and_series(stage, {1e-3: 0.0, 2e-3: 0.0, 3e-3: 0.03})
    start = {"learning_rate": 1e-3}
    sp = _spec("spa")
    b = select(sp, stage, rows, start, series, sp.model, sp.train, 0.0)
    sig = b.significance
    assert sig.beat_start and sig.spa_pvalue < 0.01 and sig.tied == ({"learning_rate": 3e-3},)
    assert b.point == {"learning_rate": 3e-3} and sig.moved
    assert "1 of 3 configs are statistically tied with the winner" in sig.sentence()


def test_the_start_point_is_the_base_config_in_grid_units():
    sp = smoke_spec(Path("/unused"))
    arch, train, drop = sp.stages
    assert start_point(sp, arch, sp.model, sp.train) == {"latent_scale": 1.0}
    assert start_point(sp, train, sp.model, sp.train) == {"learning_rate": 1e-3}
    assert start_point(sp, drop, sp.model, sp.train) == {"news_dropout": 0.1}
    assert drop.contains({"news_dropout": 0.1}) and not drop.contains({"news_dropout": 0.2})


# ---------------------------------------------------------------- real stages


def test_a_stage_of_one_model_with_other_seeds_is_all_tied(tiny_market, ray_local, tmp_path):
    """Every config is the same model trained with another seed: nothing beats the start (the
    spec's seed 0, no grid point: trained as the extra trial), nearly all are tied, `spa` keeps
    the start, and the stage's deflated Sharpe tests the start's own trial."""
    sp = smoke_spec(tiny_market, **{
        "params.train_seed": "{set: train.seed}",
        "stages": "[{name: seeds, grid: {train_seed: [1, 2, 3, 4]}}]",
        "final.seeds": "1", "final.baseline": "false", "final.compare_base": "false",
        "selection.rule": "spa",
    })  # fmt: skip
    run_search(sp, tmp_path / "r", stop_after="seeds")
    st = RunDir(str(tmp_path / "r")).load().stage("seeds")
    assert len(st.rows) == 5, "four grid points and the start (seed 0), no grid point"
    assert [r.point["train_seed"] for r in st.rows] == [1, 2, 3, 4, 0]
    sig = st.best.significance
    assert sig.start == {"train_seed": 0} and not sig.start_is_grid_point
    assert sig.n_points == 4 and sig.n_tied >= 3 and not sig.beat_start, sig
    assert st.best.point == {"train_seed": 0} and not sig.moved
    run = RunDir(str(tmp_path / "r")).load()
    assert selected_trial(run, "seeds") == "start_r0"
    dsr = selected_dsr(run, ["seeds"], "start_r0")
    assert dsr.n_trials == 5 and dsr.trial_id == "start_r0" and not dsr.skipped, dsr


def test_a_stage_where_one_config_learns_beats_a_start_that_does_not(
    tiny_market, ray_local, tmp_path
):
    """From a start whose learning rate is far too high to learn (0.3), the one config with a
    sane one (1e-3) beats it by far more than noise; the start is a grid point, so no extra
    trial."""
    sp = smoke_spec(tiny_market, **{
        "split.train_end": "0.5",  # 75 val dates: power enough for a test over dates
        "train.learning_rate": "0.3",
        "stages": "[{name: training, grid: {learning_rate: [0.3, 3.0, 1.0e-3]}}]",
        "final.seeds": "1", "final.baseline": "false", "final.compare_base": "false",
        "selection.rule": "spa",
    })  # fmt: skip
    run_search(sp, tmp_path / "r", stop_after="training")
    st = RunDir(str(tmp_path / "r")).load().stage("training")
    assert len(st.rows) == 3, "the start is a grid point: no extra trial"
    sig = st.best.significance
    assert sig.beat_start and sig.moved and st.best.point == {"learning_rate": 1e-3}, sig
    assert sig.tied == ({"learning_rate": 1e-3},), sig

"""The overfitting analysis of a run against direct computations on the run's own files."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ranker.metrics import evaluate_bounds
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.overfit_stats import deflated_sharpe_ratio
from ranker.train import METRICS, score
from search.analysis import analyze, point_table, selected_trial, top_test
from search.errors import RunDirError
from search.results import PBO
from search.rundir import RunDir, Series, dumps
from search.stage_overfit import blocks_for, selected_dsr, series_pbo, stage_pbo

STAGES = ["architecture", "training", "dropout"]


def _csv(run_dir: Path, stage: str) -> list[dict[str, str]]:
    with open(run_dir / stage / "results.csv") as f:
        return list(csv.DictReader(f))


def _model(ckpt: Path) -> MultiBranchRanker:
    state = torch.load(ckpt / "state.pt", weights_only=True)
    model = MultiBranchRanker(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["best_state"])
    return model


def _run(path: Path):
    return RunDir(str(path)).load()


# --- PBO ----------------------------------------------------------------------------------------


def test_blocks_for_lowers_s_to_an_even_half_of_t():
    assert blocks_for(25, 16) == 16
    assert blocks_for(15, 16) == 6  # 15 // 2 = 7 -> 6
    assert blocks_for(12, 16) == 6
    assert blocks_for(3, 16) == 0


def test_stage_pbo_on_a_run(smoke_run: Path):
    for st in STAGES:
        n_done = sum(r["status"] == "TERMINATED" for r in _csv(smoke_run, st))
        r = stage_pbo(_run(smoke_run), st)
        assert r.skipped is None, r
        assert 0.0 <= r.pbo <= 1.0
        assert r.n_trials == n_done == 2
        assert r.n_blocks == 16 and r.n_dates >= 16
        assert r.n_dates_used == (r.n_dates // 16) * 16
        assert r.n_combinations == 12870  # C(16, 8)


def test_stage_pbo_lowers_s_when_dates_are_few(smoke_run: Path):
    run = _run(smoke_run)
    t = stage_pbo(run, "architecture").n_dates
    r = stage_pbo(run, "architecture", n_blocks=2 * t + 2)
    assert r.n_blocks == blocks_for(t, 2 * t + 2) == (t // 2) - (t // 2) % 2
    assert r.n_dates_used == (t // r.n_blocks) * r.n_blocks
    assert 0.0 <= r.pbo <= 1.0


def _series(dates: np.ndarray, ic: np.ndarray) -> Series:
    n = len(dates)
    zeros, books = np.zeros(n), np.zeros((n, 5), np.int32)
    return Series(dates.astype("datetime64[D]"), ic, zeros, zeros, zeros, books, books)


def test_series_pbo_aligns_dates_and_skips_with_a_reason():
    rng = np.random.default_rng(0)
    day = np.datetime64("2024-01-01") + np.arange(30)
    a = _series(day, rng.normal(0.05, 0.1, 30))
    ic_b = rng.normal(0.05, 0.1, 28)
    ic_b[5] = np.nan  # date 7 undefined for b: dropped for everyone
    b = _series(day[2:][::-1], ic_b[::-1])  # any order: aligned on the dates themselves
    dead = _series(day, np.full(30, np.nan))
    r = series_pbo({"a": a, "b": b, "dead": dead}, n_blocks=16)
    assert r.n_trials == 2 and r.trials_without_ic == ("dead",)
    assert r.n_dates == 27 and r.n_blocks == 16 and 0 <= r.pbo <= 1 and r.skipped is None

    r = series_pbo({"a": a})
    assert np.isnan(r.pbo) and "N=1" in r.skipped


# --- DSR ----------------------------------------------------------------------------------------


def _sharpe(ic: np.ndarray) -> float:
    x = ic[np.isfinite(ic)]
    return float(x.mean() / x.std())  # the project's Sharpe: ddof=0


def test_selected_dsr_deflates_by_every_trial_so_far(smoke_run: Path):
    run = _run(smoke_run)
    sel = selected_trial(run, "training")
    r = selected_dsr(run, STAGES[:2], sel)
    series = run.trial_series("architecture") | run.trial_series("training")
    sharpes = [_sharpe(s.ic) for s in series.values()]
    ref = deflated_sharpe_ratio(series[sel].ic, n_trials=4, trial_sharpes=sharpes)
    assert r.n_trials == 4 and r.trial_id == sel
    assert r.dsr == pytest.approx(ref["dsr"], abs=1e-12)
    assert r.sharpe == pytest.approx(ref["sharpe"], abs=1e-12)
    assert r.dsr <= r.psr

    # On the same real series and trial-Sharpe variance, more trials deflate more.
    ic, var = series[sel].ic, r.sharpe_variance
    dsrs = [deflated_sharpe_ratio(ic, n, sharpe_variance=var)["dsr"] for n in (1, 2, 4, 16, 256)]
    assert dsrs[0] == pytest.approx(r.psr, abs=1e-12)
    assert all(x > y for x, y in itertools.pairwise(dsrs)), dsrs


def test_selected_dsr_rejects_an_unknown_trial(smoke_run: Path):
    with pytest.raises(RunDirError, match="no val series"):
        selected_dsr(_run(smoke_run), ["architecture"], "nope_00000")


# --- val against test ---------------------------------------------------------------------------


def test_top_test_agrees_with_scoring_the_checkpoint_directly(smoke_run: Path, tiny_dataset):
    test, val = tiny_dataset.test, tiny_dataset.val
    rows = {r["trial_id"]: r for r in _csv(smoke_run, "architecture")}
    run = _run(smoke_run)
    tops = top_test(run, "architecture", test, k=5, n=5)
    assert [t.rank for t in tops] == [1, 2]
    assert tops[0].value >= tops[1].value
    assert tops[0].selected and tops[0].point == run.stage("architecture").best.point
    for t in tops:
        (trial,) = t.trials
        row = rows[trial.trial_id]
        model = _model(smoke_run / row["checkpoint"])
        direct = evaluate_bounds(test.bounds, score(model, test), test.returns, k=5)
        assert trial.test == pytest.approx(direct, rel=1e-9, abs=1e-12)
        assert t.test == pytest.approx({k: v for k, v in direct.items() if k != "n_dates"})
        # best_state is the evaluation whose val metrics results.csv records.
        on_val = evaluate_bounds(val.bounds, score(model, val), val.returns, k=5)
        for m in METRICS:
            assert trial.val[m] == pytest.approx(float(row["best_" + m]), rel=1e-9)
            assert on_val[m] == pytest.approx(float(row["best_" + m]), rel=1e-5, abs=1e-9)


# --- replicates ---------------------------------------------------------------------------------


def test_point_table_is_the_numpy_mean_and_sample_std_over_replicates(grid_run: Path):
    rows = _csv(grid_run, "architecture")
    # The stage's start (news_alpha 0.8, the base config's) is no grid point: its two
    # replicates are trained beside the grid as the SPA test's benchmark, and are no candidate.
    bench = [r for r in rows if float(r["news_alpha"]) == 0.8]
    assert len(bench) == 2 and {float(r["latent_scale"]) for r in bench} == {1.0}
    rows = [r for r in rows if r not in bench]
    run = _run(grid_run)
    table = point_table(run, "architecture")
    assert len(table) == 4 and len(rows) == 8
    for p in table:
        mine = [r for r in rows if float(r["latent_scale"]) == p.point["latent_scale"]
                and float(r["news_alpha"]) == p.point["news_alpha"]]  # fmt: skip
        assert p.n == len(mine) == 2 and sorted(p.trial_ids) == sorted(r["trial_id"] for r in mine)
        for m in METRICS:
            vals = np.array([float(r["best_" + m]) for r in mine])
            assert p.mean[m] == pytest.approx(vals.mean(), abs=1e-12)
            assert p.std[m] == pytest.approx(vals.std(ddof=1), abs=1e-12)
    best = run.stage("architecture").best
    (chosen,) = [p for p in table if p.selected]
    assert chosen.value == pytest.approx(best.value, abs=1e-12)
    assert chosen.std["ic_sharpe"] == pytest.approx(best.replicate_std, abs=1e-12)


def test_analyze_a_partial_run_writes_strict_json(grid_run: Path, tiny_dataset):
    run = _run(grid_run)
    out = analyze(run, tiny_dataset.test, k=5, n_top=2)
    run.dir.write_analysis(out)
    text = (grid_run / "analysis.json").read_text()
    assert "NaN" not in text and json.loads(text)["n_trials"] == out.n_trials
    back = run.dir.read_analysis()
    assert dumps(back.to_dict()) == dumps(out.to_dict()), "it reads back as the record it was"
    assert (
        isinstance(back.stages[0].pbo, PBO)
        and back.stages[0].points[0].mean == out.stages[0].points[0].mean
    )
    (st,) = out.stages
    assert out.final is None, "no final model on a run stopped after a stage"
    assert st.pbo.n_trials == 8 and st.dsr.n_trials == 8 == out.n_trials
    assert [t.n for t in st.top_test] == [2, 2]
    assert st.top_test[0].selected
    ts = [t.test["ic_sharpe"] for t in st.top_test[0].trials]
    assert st.top_test[0].test_std["ic_sharpe"] == pytest.approx(np.std(ts, ddof=1), abs=1e-12)

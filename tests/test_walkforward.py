"""Walk-forward: folds that tile the period and never look at their own test window, one copy
of the data, a pooled record that is the folds' series concatenated, a smoke run of two folds
side by side, one fold's stage rerun, and a walk-forward interrupted by Ctrl-C and resumed that
ends as an uninterrupted one."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from ranker.folds import load_folds
from ranker.split import WalkForwardConfig, fold_windows
from ranker.universe import UniverseConfig
from search.pooling import concatenate, pooled
from search.rundir import RunDir
from search.store import put_view
from tests.conftest import SMOKE, run_search, smoke_spec
from tests.faults import faulted_driver, interrupt

WF = {"walk_forward.folds": "2", "walk_forward.test": "0.4", "walk_forward.val": "0.1",
      "stages": "[{name: architecture, grid: {latent_scale: [0.5, 1.0]}}, "
                "{name: training, grid: {learning_rate: [1.0e-3, 2.0e-3]}}]",
      "final.seeds": "2", "final.baseline": "false"}  # fmt: skip


@pytest.mark.parametrize("window", ["expanding", "rolling"])
def test_the_test_windows_tile_the_end_of_the_period_and_nothing_looks_into_them(window):
    dates = np.arange(1000)
    cfg = WalkForwardConfig(folds=4, window=window, test=0.4, val=0.1, train=0.3)
    folds = fold_windows(dates, cfg)
    assert [f.index for f in folds] == [1, 2, 3, 4]
    assert folds[0].test_start == 600 and folds[-1].end is None
    for a, b in itertools.pairwise(folds):
        assert a.end == b.test_start, "consecutive, without a gap or an overlap"
    assert sum(f.n_test for f in folds) == 400
    for f in folds:
        assert f.train_start < f.val_start < f.test_start and f.n_val == 100
        assert f.val_start == f.test_start - 100, "the val window is right before the test"
        if window == "rolling":
            assert f.n_train == 300 and f.train_start == f.val_start - 300
        else:
            assert f.train_start == 0


def test_a_fold_without_enough_dates_is_named():
    with pytest.raises(ValueError, match=r"fold 1 has 30 train, 10 val and 15 test date\(s\)"):
        fold_windows(np.arange(100), WalkForwardConfig(folds=4, test=0.6, val=0.1))


def test_each_fold_decides_its_universe_and_splits_from_its_own_dates(tiny_market, tmp_path):
    """No fold's train or val rows are on or after its test window's first date; under the
    full-period rule a fold's liquid names come from its own dates' prices: prices changed after
    the first fold's test window leave that fold exactly as it was."""
    cfg = WalkForwardConfig(folds=2, test=0.4, val=0.1)
    uni = UniverseConfig()
    folds = load_folds(tiny_market, uni, cfg, full_universe=True, compare_universes=True)
    for w, ds in zip(folds.windows, folds.folds, strict=True):
        test0 = ds.test.dates[0]
        assert ds.train.dates[-1] < ds.val.dates[0] <= ds.val.dates[-1] < test0
        assert ds.full_train.dates[-1] < ds.val.dates[0]
        assert np.datetime64(int(w.test_start), "D") == test0
    # Prices after fold 1's test window: every symbol made hugely liquid there.
    end = np.datetime64(int(folds.windows[0].end), "D")
    prices = pq.read_table(tiny_market / "prices.pqt").to_pandas()
    prices.loc[prices["date"] >= end, "volume"] *= 1e6
    moved = tmp_path / "moved"
    moved.mkdir()
    (moved / "ml_dataset.pqt").symlink_to(tiny_market / "ml_dataset.pqt")
    prices.to_parquet(moved / "prices.pqt", index=False)
    again = load_folds(moved, uni, cfg, full_universe=True, compare_universes=True)
    a, b = folds.folds[0], again.folds[0]
    for name in ("train", "val", "test"):
        pa_, pb = getattr(a, name), getattr(b, name)
        assert np.array_equal(pa_.symbol_ids, pb.symbol_ids) and np.array_equal(pa_.dates, pb.dates)
    assert len(again.folds[1].train) > len(folds.folds[1].train), "the later fold does see them"


def test_the_folds_share_one_copy_of_the_features(tiny_market, ray_local):
    folds = load_folds(tiny_market, UniverseConfig(),
                       WalkForwardConfig(folds=2, test=0.4, val=0.1), full_universe=True)  # fmt: skip
    import ray

    base_ref = ray.put(folds.base)
    own = 0
    for ds in folds.folds:
        for p in (ds.train, ds.val, ds.test, ds.full_train):
            ref = put_view(base_ref, p)
            got = ref.get()
            assert np.shares_memory(got.emb, ray.get(base_ref).emb), "a view of the one copy"
            assert np.array_equal(got.returns, p.returns) and np.array_equal(got.rows, p.rows)
            own += sum(a.nbytes for a in (p.returns, p.symbol_ids, p.rows, p.bounds))
    assert own < 0.05 * folds.base.nbytes, (own, folds.base.nbytes)


def test_the_pooled_record_is_the_folds_series_concatenated():
    from ranker.costs import CostModel
    from search.rundir import Series

    rng = np.random.default_rng(0)

    def series(start: str, n: int) -> Series:
        d = np.datetime64(start) + np.arange(n)
        books = rng.integers(0, 50, (n, 5)).astype(np.int32)
        ls = rng.normal(0.001, 0.01, n)
        return Series(d, rng.normal(0.02, 0.1, n), ls, ls, ls, books, books[::-1])

    a, b = series("2024-01-01", 30), series("2024-02-15", 40)
    z = concatenate([b, a])
    assert np.array_equal(z.date, np.concatenate([a.date, b.date]))
    assert np.array_equal(z.ic, np.concatenate([a.ic, b.ic]))
    p = pooled(z, CostModel())
    ic = z.ic
    assert p.mean_ic == pytest.approx(ic.mean()) and p.n_dates == 70
    assert p.ic_sharpe == pytest.approx(ic.mean() / ic.std() * np.sqrt(252))
    assert p.mean_ic_t == pytest.approx(ic.mean() / (ic.std() / np.sqrt(70)))
    with pytest.raises(ValueError, match="overlap"):
        concatenate([a, series("2024-01-20", 5)])


@pytest.fixture(scope="module")
def wf_run(tiny_market, ray_local, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("runs") / "wf"
    run_search(smoke_spec(tiny_market, **WF), run_dir)
    return run_dir


def test_a_walk_forward_run_pools_its_folds(wf_run: Path):
    run = RunDir(str(wf_run)).load()
    wf = run.summary
    assert run.walk_forward and type(wf).__name__ == "WalkForward" and len(wf.folds) == 2
    for f in wf.folds:
        fold = RunDir(str(wf_run / f"fold_{f.index}")).load()
        assert fold.fold["index"] == f.index and fold.summary.final.test == f.test
        assert [st.name for st in fold.finished] == ["architecture", "training"]
    series = [RunDir(str(wf_run / f"fold_{i}")).read_final_series("final", "test") for i in (1, 2)]
    assert wf.pooled == pooled(concatenate(series), run.spec.costs)
    assert wf.across is not None and len(wf.across.diffs) == 2
    assert set(wf.stability.choices) == {"architecture", "training"}
    r = subprocess.run([sys.executable, "-m", "search.cli", "status", str(wf_run)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0 and "[walk-forward] pooled out of sample over" in r.stdout
    assert "==== fold 2 ====" in r.stdout and "folds agree" in r.stdout
    assert (wf_run / "report.html").is_file() and (
        wf_run / "report" / "walk_forward_returns.png"
    ).is_file()
    log = (wf_run / "fold_1" / "architecture" / "results.csv").read_text()
    assert log.count("\n") == 3, "a fold's stage is a stage of its own"


def test_one_folds_stage_reruns_alone(wf_run: Path, tiny_market, tmp_path):
    import shutil

    copy = tmp_path / "wf"
    shutil.copytree(wf_run, copy)
    sp = RunDir(str(copy)).read_spec()
    run_search(sp, copy, rerun=["training"], stop_after="training", fold=2)
    again = RunDir(str(copy / "fold_2")).load().stage("training")
    assert again.dir == "training.v2"
    assert again.best.point == RunDir(str(wf_run / "fold_2")).read_best("training").point
    assert not (copy / "fold_1" / "training.v2").exists(), "the other fold is left as it is"


def test_a_walk_forward_interrupted_and_resumed_ends_as_an_uninterrupted_one(
    wf_run: Path, tiny_market, tmp_path, spawns_ray
):
    """Ctrl-C while both folds' training stage hangs a trial; resume: every fold ends with the
    uninterrupted run's rows and pooled record."""
    marker = tmp_path / "hung"
    fault = {"stage": "training", "point": {"learning_rate": 2e-3}, "epoch": 1, "mode": "hang",
             "marker": str(marker)}  # fmt: skip
    args = ["run", "--config", str(SMOKE), "--storage", str(tmp_path), "--name", "wf",
            f"data.source={tiny_market}", *(f"{k}={v}" for k, v in WF.items())]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    with faulted_driver(fault, args, tmp_path / "run.log", env) as proc:
        out = interrupt(proc, tmp_path / "run.log", settle=2)
    assert proc.returncode == 130, out[-3000:]
    # Our last line names the command that resumes (Ray may log a line of its own after it, as
    # the process exits: "2026-... INFO worker.py ...").
    ours = [ln for ln in out.strip().splitlines() if not re.match(r"\d{4}-\d\d-\d\d \d", ln)]
    assert "liquid-search resume" in ours[-1] and "Traceback" not in out, out[-3000:]
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(tmp_path / "wf")],
                       env=env, capture_output=True, text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # The folds' stages of one name start side by side; each stages its files on its own (a
    # shared staging directory shows as Tune's syncer failing, with a traceback).
    assert "Traceback" not in r.stderr and "sync command failed" not in r.stderr, r.stderr[-3000:]
    got, want = RunDir(str(tmp_path / "wf")).load(), RunDir(str(wf_run)).load()
    assert got.summary.pooled == want.summary.pooled
    for i in (1, 2):
        a = RunDir(str(tmp_path / "wf" / f"fold_{i}")).load()
        b = RunDir(str(wf_run / f"fold_{i}")).load()
        for st in ("architecture", "training"):
            assert [r.best_metrics for r in a.stage(st).rows] == [
                r.best_metrics for r in b.stage(st).rows
            ], (i, st)

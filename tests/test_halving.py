"""Successive halving (`search.halving`): the decision itself on known values, and on a real
stage: the same spec cuts the same points, a cut trial is STOPPED (not failed) with its best
evaluation kept, and a halving stage interrupted by Ctrl-C and resumed ends as an uninterrupted
one."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from search.halving import cuts, rungs
from search.rundir import RunDir
from tests.conftest import SMOKE, run_search, smoke_spec
from tests.faults import faulted_driver, interrupt

GRID = "[{name: architecture, grid: {latent_scale: [0.5, 1.0, 2.0], news_alpha: [0.6, 0.8, 1.0]}}]"
HALVING = {"stages": GRID, "halving.reduction": "3", "train.epochs": "3", "train.eval_every": "1",
           "final.seeds": "1", "final.baseline": "false", "final.compare_base": "false"}  # fmt: skip


def test_rungs_are_the_evaluations_but_the_last():
    assert rungs(15, 5) == [5, 10] and rungs(3, 1) == [1, 2] and rungs(5, 5) == []


def test_cuts_keep_the_top_third_at_each_rung_and_break_ties_by_grid_order():
    mean = lambda v: float(np.mean(v))  # noqa: E731
    values = {p: {1: [float(p % 5)], 2: [float(p)]} for p in range(9)}
    got = cuts(values, [1, 2], 3, mean)
    # rung 1: p % 5 = 0,1,2,3,4,0,1,2,3: the top 3 are p=4 (4), p=3 (3), p=8 (3)
    kept1 = {3, 4, 8}
    assert {p for p, r in got.items() if r == 1} == set(range(9)) - kept1
    assert {p for p, r in got.items() if r == 2} == {3, 4}  # p=8 is the best at rung 2
    tie = {p: {1: [1.0]} for p in range(4)}
    assert cuts(tie, [1], 2, mean) == {2: 1, 3: 1}, "equal values: the first in grid order stay"
    partial = {0: {1: [1.0]}, 1: {}}
    assert cuts(partial, [1], 2, mean) == {}, "a rung is decided once every point has reached it"
    nan = {0: {1: [math.nan]}, 1: {1: [0.1]}}
    assert cuts(nan, [1], 2, mean) == {0: 1}


def _rows(run_dir: Path):
    st = RunDir(str(run_dir)).load().stage("architecture")
    return st, {tuple(sorted(r.point.items())): r for r in st.rows}


@pytest.fixture(scope="module")
def clean(tiny_market, ray_local, tmp_path_factory) -> Path:
    """The halving stage run once, uninterrupted, in this process."""
    run_dir = tmp_path_factory.mktemp("halving") / "clean"
    run_search(smoke_spec(tiny_market, **HALVING), run_dir, stop_after="architecture")
    return run_dir


def test_a_halving_stage_cuts_the_same_points_every_time(tiny_market, clean, tmp_path):
    run_search(smoke_spec(tiny_market, **HALVING), tmp_path / "b", stop_after="architecture")
    (st, a), (_, b) = _rows(clean), _rows(tmp_path / "b")
    assert {k: (r.status, r.epoch) for k, r in a.items()} == {
        k: (r.status, r.epoch) for k, r in b.items()
    }
    assert [r.best_metrics for r in a.values()] == [r.best_metrics for r in b.values()]
    status = [r.status for r in a.values()]
    assert status.count("STOPPED") == 8 and status.count("TERMINATED") == 1, status
    assert sorted(r.epoch for r in a.values()) == [1] * 6 + [2] * 2 + [3]
    assert st.best.point == next(dict(k) for k, r in a.items() if r.status == "TERMINATED")
    # A cut trial keeps the series of its best evaluation: it was a candidate.
    assert len(RunDir(str(clean)).load().trial_series("architecture")) == 9


def _cli_run(market: Path, storage: Path, name: str) -> tuple[list[str], dict[str, str]]:
    args = ["run", "--config", str(SMOKE), "--storage", str(storage), "--name", name,
            f"data.source={market}", "max_concurrent=1",
            *(f"{k}={v}" for k, v in HALVING.items())]  # fmt: skip
    return args, {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}


def test_a_halving_stage_resumed_after_ctrl_c_ends_as_an_uninterrupted_one(
    tiny_market, clean, tmp_path, spawns_ray
):
    """Ctrl-C while the second rung is being reached (points paused at it, others stopped at
    the first), then resume: the same points are cut at the same rungs, every trial ends with
    the uninterrupted run's metrics."""
    marker = tmp_path / "hung"
    # The last of the three points that reach the second rung hangs in its second epoch: the
    # other two stand paused at that rung, six were stopped at the first.
    fault = {
        "stage": "architecture",
        "point": {"latent_scale": 2.0, "news_alpha": 1.0},
        "epoch": 2,
        "mode": "hang",
        "before_report": True,
        "marker": str(marker),
    }
    args, env = _cli_run(tiny_market, tmp_path, "cut")
    with faulted_driver(fault, args, tmp_path / "cut.log", env) as proc:
        out = interrupt(proc, tmp_path / "cut.log", settle=2)
    assert proc.returncode == 130, out[-3000:]
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(tmp_path / "cut")],
                       env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (_, want), (_, cut) = _rows(clean), _rows(tmp_path / "cut")
    assert {k: (r.status, r.epoch) for k, r in cut.items()} == {
        k: (r.status, r.epoch) for k, r in want.items()
    }
    for k, row in want.items():
        assert cut[k].best_metrics == pytest.approx(row.best_metrics, abs=1e-9), k

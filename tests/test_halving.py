"""Successive halving (`search.halving`): the decision itself on known values, and on a real
stage: the same spec cuts the same points, a cut trial is STOPPED (not failed) with its best
evaluation kept, and a halving stage interrupted by Ctrl-C and resumed ends as an uninterrupted
one."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from search.halving import cuts, rungs
from search.rundir import RunDir
from tests.conftest import FAULTS, SMOKE, run_search, smoke_spec

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


def test_a_halving_stage_cuts_the_same_points_every_time(tiny_market, ray_local, tmp_path):
    sp = smoke_spec(tiny_market, **HALVING)
    for name in ("a", "b"):
        run_search(sp, tmp_path / name, stop_after="architecture")
    (st, a), (_, b) = _rows(tmp_path / "a"), _rows(tmp_path / "b")
    assert {k: (r.status, r.epoch) for k, r in a.items()} == {
        k: (r.status, r.epoch) for k, r in b.items()
    }
    assert [r.best_metrics for r in a.values()] == [r.best_metrics for r in b.values()]
    status = [r.status for r in a.values()]
    assert status.count("STOPPED") == 8 and status.count("TERMINATED") == 1, status
    assert sorted(r.epoch for r in a.values()) == [1] * 6 + [2] * 2 + [3]
    assert st.best.point == next(dict(k) for k, r in a.items() if r.status == "TERMINATED")
    # A cut trial keeps the series of its best evaluation: it was a candidate.
    assert len(RunDir(str(tmp_path / "a")).load().trial_series("architecture")) == 9


def _cli_run(market: Path, storage: Path, name: str, fault: dict | None = None):
    args = ["run", "--config", str(SMOKE), "--storage", str(storage), "--name", name,
            f"data.source={market}", "max_concurrent=1",
            *(f"{k}={v}" for k, v in HALVING.items())]  # fmt: skip
    cli = [sys.executable, "-m", "search.cli"] if fault is None else [
        sys.executable, str(FAULTS), json.dumps(fault)]  # fmt: skip
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    return [*cli, *args], env


def test_a_halving_stage_resumed_after_ctrl_c_ends_as_an_uninterrupted_one(
    tiny_market, tmp_path, spawns_ray
):
    """Ctrl-C while the second rung is being reached (points paused at it, others stopped at
    the first), then resume: the same points are cut at the same rungs, every trial ends with
    the uninterrupted run's metrics."""
    clean_args, env = _cli_run(tiny_market, tmp_path, "clean")
    assert subprocess.run(clean_args, env=env, capture_output=True, timeout=400).returncode == 0
    marker = tmp_path / "hung"
    fault = {"stage": "architecture", "point": {"latent_scale": 2.0}, "epoch": 2, "mode": "hang",
             "marker": str(marker)}  # fmt: skip
    args, env = _cli_run(tiny_market, tmp_path, "cut", fault)
    with open(tmp_path / "cut.log", "w") as log:
        proc = subprocess.Popen(args, env=env, stdout=log, stderr=log, start_new_session=True)
    try:
        deadline = time.time() + 300
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, (
                tmp_path / "cut.log"
            ).read_text()[-3000:]
            time.sleep(0.2)
        time.sleep(2)  # Tune's snapshot (every second) records the trial at its checkpoint
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, (tmp_path / "cut.log").read_text()[-3000:]
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(tmp_path / "cut")],
                       env=env, capture_output=True, text=True, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    (_, clean), (_, cut) = _rows(tmp_path / "clean"), _rows(tmp_path / "cut")
    assert {k: (r.status, r.epoch) for k, r in cut.items()} == {
        k: (r.status, r.epoch) for k, r in clean.items()
    }
    for k, row in clean.items():
        assert cut[k].best_metrics == pytest.approx(row.best_metrics, abs=1e-9), k

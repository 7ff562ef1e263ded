"""Interrupts and resumes: the guarantees the README states, checked by waiting for states.

A stage of six trials runs one trial at a time; an injected fault (`tests/faults.py`) makes the
fourth trial hang right after its epoch-2 checkpoint. The tests wait until that trial is stuck and Tune's own record of
the experiment (its snapshot, read through `tune.ExperimentAnalysis`) shows the finished trials
and the stuck one's checkpoint; then they interrupt the driver (Ctrl-C, or SIGKILL) and resume:
- every trial ends at its full epochs and the stage is selected from all six;
- a trial that had finished is not trained again (its reported results are the same rows);
- the stuck trial continues from its checkpoint, and every trial ends exactly as `fit` called
  directly on its config ends (an uninterrupted run).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from search.rundir import RunDir
from tests.conftest import SMOKE
from tests.faults import faulted_driver
from tests.test_api import assert_view_matches_status

GRID = "stages.architecture.grid={latent_scale: [0.5, 1.0], news_alpha: [0.6, 0.8, 1.0]}"
# The resume guarantees are about a stage: the run is that one stage and a one-seed final model.
ONE_STAGE = (
    "stages=[{name: architecture, grid: {latent_scale: [0.5, 1.0], news_alpha: [0.6, 0.8, 1.0]}}]"
)
STUCK = {
    "latent_scale": 1.0,
    "news_alpha": 0.8,
}  # the fourth of the six: Tune varies the first key fastest
EPOCHS = 4


def _args(market: Path, storage: Path, name: str) -> list[str]:
    """The run's `liquid-search` arguments (the faulted driver runs them, `tests/faults.py`)."""
    return ["run", "--config", str(SMOKE), "--storage", str(storage), "--name", name,
            f"data.source={market}", ONE_STAGE, f"train.epochs={EPOCHS}", "max_concurrent=1",
            "final.baseline=false", "final.seeds=1", "final.compare_base=false"]  # fmt: skip


def _env(**extra: str) -> dict[str, str]:
    # RAY_ADDRESS=local: a private Ray even if a `ray start` cluster runs on this machine.
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local", **extra}


def _snapshot(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """Tune's record of each trial (status, last reported epoch, reports), by trial id."""
    from ray import tune

    try:
        ea = tune.ExperimentAnalysis(str(stage_dir))
    except ValueError:  # no snapshot yet
        return {}
    out = {}
    for t in ea.trials:
        df = ea.trial_dataframes.get(t.trial_id)
        out[t.trial_id] = {
            "status": t.status,
            "config": dict(t.config),
            "epoch": int((t.last_result or {}).get("epoch", 0)),
            "reports": []
            if df is None or not len(df)
            else df[["epoch", "ic_sharpe"]].values.tolist(),
        }
    return out


def _interrupt_when_stuck(
    market: Path, storage: Path, name: str, sig: int, while_stuck: Callable[[], None] | None = None
) -> tuple[dict, str]:
    """Run until the stuck trial hangs after epoch 2 with Tune's snapshot showing it and the
    three trials before it finished; then send `sig` to the driver (its whole process group for
    SIGKILL, as when a machine dies). Returns the snapshot taken just before, and the output."""
    marker = storage / f"{name}.hung"
    fault = {"stage": "architecture", "point": STUCK, "epoch": 2, "mode": "hang",
             "marker": str(marker)}  # fmt: skip
    log_path = storage / f"{name}.log"
    storage.mkdir(parents=True, exist_ok=True)
    stage_dir = storage / name / "architecture"
    snap: dict = {}

    def stuck() -> bool:
        snap.clear()
        snap.update(_snapshot(stage_dir))
        done = [t for t in snap.values() if t["status"] == "TERMINATED"]
        return len(done) == 3 and any(
            t["config"] == STUCK and t["epoch"] == 2 for t in snap.values()
        )

    with faulted_driver(fault, _args(market, storage, name), log_path, _env(), stuck) as proc:
        if while_stuck is not None:
            while_stuck()
        if sig == signal.SIGKILL:
            os.killpg(proc.pid, signal.SIGKILL)
        else:
            proc.send_signal(sig)  # Ctrl-C reaches the driver (Tune stops the trials itself)
        proc.wait(timeout=120)
    return snap, log_path.read_text()


def _check_resumed(
    market: Path, storage: Path, name: str, before: dict, clean: dict, killed: bool = False
) -> None:
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(storage / name)],
                       capture_output=True, text=True, env=_env(), timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    # A killed driver leaves its lease behind; the resume takes it over, saying so.
    took_over = f"{storage / name}: taking over the lease of `liquid-search run`"
    assert (took_over in r.stderr) == killed, r.stderr[-3000:]
    assert not (storage / name / "lease.json").exists()
    after = _snapshot(storage / name / "architecture")
    st = RunDir(str(storage / name)).load().stage("architecture")
    assert st.done and len(st.rows) == 6
    assert all(x.status == "TERMINATED" and x.epoch == EPOCHS for x in st.rows), st.rows
    for row in st.rows:
        was = before.get(row.trial_id, {"status": "NOT CREATED"})
        if was["status"] == "TERMINATED":  # finished before: not trained again
            assert after[row.trial_id]["reports"] == was["reports"], row.trial_id
            assert row.result.restored == 0
        elif row.point == STUCK:  # continued from its epoch-2 checkpoint
            assert row.result.restored == 1 and [e for e, _ in after[row.trial_id]["reports"]][
                :2
            ] == [
                1,
                2,
            ]
        # Every trial ends as in an uninterrupted run (training is deterministic per epoch).
        ref = clean[tuple(sorted(row.point.items()))]
        assert row.best_metrics == pytest.approx({k: ref[k] for k in row.best_metrics}, abs=1e-9,
                                            nan_ok=True), row.point  # fmt: skip
    assert (storage / name / "summary.json").is_file()


@pytest.fixture(scope="module")
def clean_run(tiny_market: Path) -> dict[tuple, dict[str, float]]:
    """How an uninterrupted run ends each architecture trial (its best val metrics, by grid
    point): `fit` called directly, as the trainable calls it, with the trial's configs and one
    thread (a 1-CPU trial's)."""
    import itertools

    import torch

    from ranker.train import fit
    from search import spec as specmod
    from search.source import data_source, load_data

    sp = specmod.load(SMOKE, [f"data.source={tiny_market}", GRID, f"train.epochs={EPOCHS}",
                              "final.baseline=false"])  # fmt: skip
    ds = load_data(sp, data_source(sp, None), baseline=False, compare=False)
    (stage,) = [st for st in sp.stages if st.name == "architecture"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out = {}
        for values in itertools.product(*stage.grid.values()):
            point = dict(zip(stage.grid, values, strict=True))
            mc, tc, _ = specmod.trial_configs(sp, sp.model, sp.train, point)
            out[tuple(sorted(point.items()))] = fit(mc, tc, ds.train, ds.val).metrics
    finally:
        torch.set_num_threads(threads)
    return out


def test_ctrl_c_mid_stage_then_resume(tiny_market, tmp_path, clean_run, spawns_ray):
    def in_flight() -> None:  # the Python API reads the stage in flight as status prints it
        view = assert_view_matches_status(str(tmp_path / "r"))
        assert view.state == "running"
        assert set(view.trials("architecture")["status"]) >= {"TERMINATED", "RUNNING"}

    before, out = _interrupt_when_stuck(tiny_market, tmp_path, "r", signal.SIGINT, in_flight)
    last = out.strip().splitlines()[-1]
    assert last.startswith("error: stage 'architecture' was interrupted with 3 of 6 trials "
                           "unfinished; nothing was selected from it."), out[-3000:]  # fmt: skip
    assert f"liquid-search resume {tmp_path / 'r'}" in last and "Traceback" not in out
    run = RunDir(str(tmp_path / "r")).load()
    assert not run.stage("architecture").done and run.info.outcome == "interrupted"
    _check_resumed(tiny_market, tmp_path, "r", before, clean_run)


def _stop_first_trial(
    market: Path, storage: Path, name: str, *signals: int
) -> tuple[int, str, float]:
    """Run until the first trial hangs after epoch 1, then send `signals` to the driver half a
    second apart. Returns its exit code, its output and the seconds it took after the last."""
    marker = storage / f"{name}.hung"
    fault = {"stage": "architecture", "point": {"latent_scale": 0.5, "news_alpha": 0.6},
             "epoch": 1, "mode": "hang", "marker": str(marker)}  # fmt: skip
    log = storage / f"{name}.log"
    storage.mkdir(parents=True, exist_ok=True)
    with faulted_driver(fault, _args(market, storage, name), log, _env()) as proc:
        for i, sig in enumerate(signals):
            if i:
                time.sleep(0.5)
            proc.send_signal(sig)
        t = time.time()
        proc.wait(timeout=120)
    err = log.read_text()
    return proc.returncode, err, time.time() - t


def test_sigterm_is_an_interrupt_too(tiny_market, tmp_path, spawns_ray):
    """A scheduler's stop (SIGTERM: `timeout`, `ray job stop`, Kubernetes) stops the run as
    Ctrl-C does: Tune saves its trials, the run is recorded as interrupted, one line names
    `resume`, exit 130."""
    code, err, _ = _stop_first_trial(tiny_market, tmp_path, "t", signal.SIGTERM)
    last = err.strip().splitlines()[-1]
    assert code == 130, err[-3000:]
    assert last.startswith("error: stage 'architecture' was interrupted"), err[-3000:]
    assert f"liquid-search resume {tmp_path / 't'}" in last and "Traceback" not in err
    run = RunDir(str(tmp_path / "t")).load()
    assert not run.stage("architecture").done and run.info.outcome == "interrupted"


def test_sigkill_mid_stage_then_resume(tiny_market, tmp_path, clean_run, spawns_ray):
    before, _ = _interrupt_when_stuck(tiny_market, tmp_path, "r", signal.SIGKILL)
    run = RunDir(str(tmp_path / "r")).load()
    assert not run.stage("architecture").done and run.info.ended is None  # no chance to say
    assert (tmp_path / "r" / "lease.json").is_file(), "a killed driver cannot give its lease back"
    _check_resumed(tiny_market, tmp_path, "r", before, clean_run, killed=True)


def test_second_ctrl_c_stops_at_once_without_a_traceback(tiny_market, tmp_path, spawns_ray):
    """Ctrl-C twice while a trial hangs: the run stops at once with one line and exit 130."""
    code, err, seconds = _stop_first_trial(tiny_market, tmp_path, "r2", signal.SIGINT,
                                           signal.SIGINT)  # fmt: skip
    assert code == 130, err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    assert "liquid-search resume" in err.strip().splitlines()[-1]
    assert seconds < 30

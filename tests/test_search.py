"""The staged search on a local Ray: artifacts, chaining, stage reruns, failures, resume."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from ranker import checkpoint
from search import driver
from search.stages import read_best, read_results
from tests.conftest import SMOKE, smoke_spec

STAGES = ["architecture", "training", "dropout"]


def test_full_run_writes_every_artifact(smoke_run: Path):
    for f in ("spec.yaml", "run.json", "summary.json", "final/model.pt",
              "final/final_test_daily.npz", "final/baseline_test_daily.npz"):  # fmt: skip
        assert (smoke_run / f).is_file(), f
    for st in STAGES:
        rows = read_results(str(smoke_run), st)
        assert len(rows) == 2 and all(r["status"] == "TERMINATED" for r in rows)
        assert all(r["data_zero_copy"] == "True" for r in rows), (
            "trials must read the object store's copy"
        )
        best = read_best(str(smoke_run), st)
        assert best["trials"] == 2 and best["errors"] == 0
        assert best["value"] == max(float(r["ic_sharpe"]) for r in rows)
    s = json.loads((smoke_run / "summary.json").read_text())
    assert [x["stage"] for x in s["stages"]] == STAGES
    assert set(s["final"]) >= {"val", "test", "costs", "model", "train"}
    assert s["final"]["train"]["epochs"] == 2  # the spec's final.epochs
    assert set(s["baseline"]["test"]) >= {"ic_sharpe", "mean_ic", "ls_sharpe"}
    assert "ls_net_sharpe" in s["final"]["costs"] and "to_ls_net_sharpe" in s["final"]["costs"]
    # The checkpoint is the final model and reproduces its test metrics.
    ranker = checkpoint.load(s["checkpoint"])
    assert ranker.metrics["test"] == s["final"]["test"]
    assert ranker.model.config.to_dict() == s["final"]["model"]
    raw = torch.load(s["checkpoint"], weights_only=True)
    assert raw["universe"]["threshold"] == 50e6


def test_each_stage_starts_from_the_previous_best(smoke_run: Path):
    arch, train, drop = (read_best(str(smoke_run), s) for s in STAGES)
    # Stage 2 searches only training keys: its model is stage 1's best model.
    assert train["model"] == arch["model"]
    # Stage 3 keeps stage 2's best training config, searching only dropout.
    assert {k: drop["train"][k] for k in ("learning_rate", "weight_decay", "label_smoothing")} == {
        k: train["train"][k] for k in ("learning_rate", "weight_decay", "label_smoothing")}  # fmt: skip
    # And every trial of stage 2 really trained stage 1's best architecture.
    for r in read_results(str(smoke_run), "training"):
        ck = sorted(Path(r["path"]).glob("checkpoint_*"))[-1]
        point = json.loads((ck / "point.json").read_text())
        assert point["model"] == arch["model"]
    s = json.loads((smoke_run / "summary.json").read_text())
    assert s["final"]["model"] == {**drop["model"]}


def test_status_prints_stages_and_trials(smoke_run: Path):
    r = subprocess.run([sys.executable, "-m", "search.cli", "status", str(smoke_run)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    for st in STAGES:
        assert f"[{st}] 2/2 trials, 0 failed; done: best ic_sharpe" in r.stdout
    assert "[final]" in r.stdout and "[baseline: full universe]" in r.stdout


def test_stage_rerun_alone_gives_the_same_best(smoke_run: Path, tiny_market, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(smoke_run, run_dir)
    before = {s: (run_dir / s / "best.json").stat().st_mtime_ns for s in STAGES}
    summary_before = (run_dir / "summary.json").read_bytes()
    lines: list[str] = []
    out = driver.run(driver.load_spec(str(run_dir)), str(run_dir), source=str(tiny_market),
                     rerun=["training"], stop_after="training", log=lines.append)  # fmt: skip
    assert out is None
    assert (run_dir / "architecture" / "best.json").stat().st_mtime_ns == before["architecture"]
    assert (run_dir / "dropout" / "best.json").stat().st_mtime_ns == before["dropout"]
    assert (run_dir / "training" / "best.json").stat().st_mtime_ns != before["training"]
    assert (run_dir / "summary.json").read_bytes() == summary_before, "nothing after the stage runs"
    assert len(list(run_dir.glob("training.replaced-*"))) == 1, "the old results are kept aside"
    old, new = read_best(str(smoke_run), "training"), read_best(str(run_dir), "training")
    assert new["point"] == old["point"] and new["value"] == pytest.approx(old["value"], abs=1e-9)
    assert any("[architecture] already done" in ln for ln in lines)


def test_failing_trial_is_reported_and_stage_completes(
    tiny_market, ray_local, tmp_path, monkeypatch
):
    monkeypatch.setenv("LIQUID_SEARCH_FAULT", json.dumps(
        {"stage": "architecture", "point": {"latent_scale": 0.5}, "epoch": 1, "mode": "always"}))  # fmt: skip
    sp = smoke_spec(tiny_market, max_failures=1)
    run_dir = tmp_path / "run"
    lines: list[str] = []
    driver.run(sp, str(run_dir), stop_after="architecture", log=lines.append)
    rows = {float(r["latent_scale"]): r for r in read_results(str(run_dir), "architecture")}
    assert rows[0.5]["status"] == "ERROR" and "InjectedFault" in rows[0.5]["error"]
    assert rows[1.0]["status"] == "TERMINATED"
    best = read_best(str(run_dir), "architecture")
    assert best["point"] == {"latent_scale": 1.0} and best["errors"] == 1
    assert any("latent_scale=0.5 | FAILED" in ln for ln in lines)


def test_retried_trial_resumes_from_its_checkpoint(tiny_market, ray_local, tmp_path, monkeypatch):
    sp = smoke_spec(tiny_market)
    clean = tmp_path / "clean"
    driver.run(sp, str(clean), stop_after="architecture", log=lambda _m: None)
    monkeypatch.setenv("LIQUID_SEARCH_FAULT", json.dumps(
        {"stage": "architecture", "point": {"latent_scale": 0.5}, "epoch": 1, "mode": "once"}))  # fmt: skip
    faulty = tmp_path / "faulty"
    driver.run(sp, str(faulty), stop_after="architecture", log=lambda _m: None)
    a = {float(r["latent_scale"]): r for r in read_results(str(clean), "architecture")}
    b = {float(r["latent_scale"]): r for r in read_results(str(faulty), "architecture")}
    assert b[0.5]["status"] == "TERMINATED" and b[0.5]["restored"] == "1"
    assert b[0.5]["epochs"] == "2"
    # Resuming from the epoch-1 checkpoint continues exactly as the uninterrupted trial.
    assert float(b[0.5]["ic_sharpe"]) == pytest.approx(float(a[0.5]["ic_sharpe"]), abs=1e-9)


def _trial_results(stage_dir: Path) -> dict[str, str]:
    """Each trial directory's result.json text, by trial directory name."""
    return {p.parent.name: p.read_text() for p in stage_dir.glob("*/result.json")}


def _finished(stage_dir: Path, epochs: int) -> list[str]:
    done = []
    for name, text in _trial_results(stage_dir).items():
        lines = [json.loads(ln) for ln in text.splitlines() if ln.strip()]
        if lines and lines[-1].get("epoch") == epochs:
            done.append(name)
    return done


def test_sigkill_mid_stage_then_resume(tiny_market, tmp_path):
    """Kill the driver (and its local Ray) with SIGKILL mid-stage; `resume` finishes the run with
    every trial and without redoing the finished ones."""
    storage = tmp_path / "runs"
    # RAY_ADDRESS=local: a private Ray even if a `ray start` cluster runs on this machine.
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local"}
    grid = "stages.architecture.grid={latent_scale: [0.5, 1.0], news_alpha: [0.6, 0.8, 1.0]}"
    args = [sys.executable, "-m", "search.cli", "run", "--config", str(SMOKE), "--storage",
            str(storage), "--name", "r", f"data.source={tiny_market}", grid, "train.epochs=4",
            "max_concurrent=1"]  # fmt: skip
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen(
        args, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
    )
    stage_dir = storage / "r" / "architecture"
    deadline = time.time() + 240
    try:
        while time.time() < deadline and len(_finished(stage_dir, 4)) < 2:
            assert proc.poll() is None, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        assert len(_finished(stage_dir, 4)) >= 2, (tmp_path / "first.log").read_text()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert not (stage_dir / "best.json").exists(), "the kill must land mid-stage"
    finished = set(_finished(stage_dir, 4))
    snapshot = {k: v for k, v in _trial_results(stage_dir).items() if k in finished}

    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", str(storage / "r")],
                       capture_output=True, text=True, env=env, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    rows = read_results(str(storage / "r"), "architecture")
    assert len(rows) == 6 and all(x["status"] == "TERMINATED" for x in rows)
    after = _trial_results(stage_dir)
    for name, text in snapshot.items():
        assert after[name] == text, f"finished trial {name} was redone"
    assert (storage / "r" / "summary.json").exists()

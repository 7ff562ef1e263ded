"""The staged search on a local Ray: artifacts, chaining, stage reruns, failures, resume."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ranker import checkpoint
from ranker.backtest import backtest
from ranker.train import score
from search.rundir import POINT_FILE, RunDir
from search.source import load_data
from tests import faults
from tests.conftest import FAULTS, SMOKE, Lines, run_search, smoke_spec

STAGES = ["architecture", "training", "dropout"]


def test_full_run_writes_every_artifact(smoke_run: Path):
    for f in ("spec.yaml", "run.json", "summary.json", "analysis.json", "report.html",
              "final/model.pt", "final/final_test_daily.npz", "final/baseline_test_daily.npz",
              "final/final_val_daily.npz"):  # fmt: skip
        assert (smoke_run / f).is_file(), f
    run = RunDir(str(smoke_run)).load()
    for st in run.stages:
        assert st.done and len(st.rows) == 2
        assert all(r.status == "TERMINATED" and r.result.device == "cpu" for r in st.rows)
        assert all(r.result.data_zero_copy for r in st.rows), "trials read the object store's copy"
        # Each row records its latest checkpoint, relative to the run directory, and it is there.
        for r in st.rows:
            assert r.checkpoint.startswith(f"{st.name}/{st.name}_{r.trial_id}/checkpoint_")
            assert (smoke_run / r.checkpoint / "state.pt").is_file()
        assert st.best.trials == 2 and st.best.errors == 0
        assert st.best.value == max(r.best_metrics["ic_sharpe"] for r in st.rows)
    s = run.summary
    assert (s.schema, s.version) == ("liquid-search/summary", 2)
    assert [x.stage for x in s.stages] == STAGES
    assert s.final.train["epochs"] == 2 and s.final.device == "cpu"  # the spec's final.epochs
    assert set(s.baseline.test) >= {"ic_sharpe", "mean_ic", "ls_sharpe"}
    assert "ls_net_sharpe" in s.final.costs and "to_ls_net_sharpe" in s.final.costs
    # The final model is the ensemble of final.seeds seeds (3 by default); the base config and
    # the baseline were trained with as many; the test set under each universe rule.
    assert [x.seed for x in s.final.members] == [0, 1000, 2000]
    assert len(s.baseline.members) == 3 and len(s.base.members) == 3
    assert set(s.search_vs_base.by_metric) == {"mean_ic", "ic_sharpe", "ls_sharpe"}
    assert set(s.universes.by_rule) == {"full_period", "trailing"}
    assert s.universes.names_differ_per_test_day == 0, "a static market: the rules agree"
    # The checkpoint is the final model and reproduces its test metrics, scored again.
    ranker = checkpoint.load(s.checkpoint)
    assert ranker.metrics["test"] == pytest.approx(s.final.test, nan_ok=True)
    assert ranker.model.config.to_dict() == s.final.model
    assert len(ranker.model.members) == 3
    test = load_data(run.spec, run.info.source, compare=False).test
    rescored = backtest(test, score(ranker.model, test), run.spec.train.k).metrics
    assert rescored == pytest.approx(s.final.test, abs=1e-12, nan_ok=True)
    raw = torch.load(s.checkpoint, weights_only=True)
    assert raw["universe"]["threshold"] == 50e6
    # Strict JSON everywhere (NaN is written as null).
    for f in ("summary.json", "analysis.json", "run.json"):
        json.loads((smoke_run / f).read_text(), parse_constant=lambda c: pytest.fail(c))


def test_each_stage_starts_from_the_previous_best(smoke_run: Path):
    run = RunDir(str(smoke_run)).load()
    arch, train, drop = (run.stage(s).best for s in STAGES)
    # Stage 2 searches only training keys: its model is stage 1's best model.
    assert train.model == arch.model
    # Stage 3 keeps stage 2's best training config, searching only dropout.
    keys = ("learning_rate", "weight_decay", "label_smoothing")
    assert {k: drop.train[k] for k in keys} == {k: train.train[k] for k in keys}
    # And every trial of stage 2 really trained stage 1's best architecture.
    for r in run.stage("training").rows:
        point = json.loads((Path(run.dir.resolve(r.checkpoint)) / POINT_FILE).read_text())
        assert point["model"] == arch.model
    assert run.summary.final.model == {**drop.model}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 300):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


def test_status_prints_stages_and_trials(smoke_run: Path):
    r = _cli("status", str(smoke_run), timeout=60)
    assert r.returncode == 0, r.stderr
    for st in STAGES:
        assert f"[{st}] 2/2 done, 0 running, 0 pending, 0 failed; done: best ic_sharpe" in r.stdout
    assert "[final] ensemble of 3 seed(s)" in r.stdout and "[baseline] full-universe" in r.stdout
    assert "import ray" not in r.stderr


def test_stage_rerun_alone_gives_the_same_best(smoke_run: Path, tmp_path):
    run_dir = tmp_path / "copy"
    shutil.copytree(smoke_run, run_dir)
    before = {s: (run_dir / s / "best.json").stat().st_mtime_ns for s in STAGES}
    summary_before = (run_dir / "summary.json").read_bytes()
    sp = RunDir(str(run_dir)).read_spec()
    with Lines() as lines:
        out = run_search(sp, run_dir, rerun=["training"], stop_after="training")
    assert out is None
    assert (run_dir / "architecture" / "best.json").stat().st_mtime_ns == before["architecture"]
    assert (run_dir / "dropout" / "best.json").stat().st_mtime_ns == before["dropout"]
    # The rerun ran in a new attempt directory; the first attempt is untouched.
    assert (run_dir / "training" / "best.json").stat().st_mtime_ns == before["training"]
    assert (run_dir / "training.v2" / "best.json").is_file()
    assert json.loads((run_dir / "stages.json").read_text()) == {"training": "training.v2"}
    assert (run_dir / "summary.json").read_bytes() == summary_before, "nothing after the stage runs"
    old = RunDir(str(smoke_run)).read_best("training")
    new = RunDir(str(run_dir)).read_best("training")
    assert new.point == old.point and new.value == pytest.approx(old.value, abs=1e-9)
    assert any("[architecture] already done" in ln for ln in lines)


def test_failing_trial_is_reported_and_stage_completes(
    tiny_market, ray_local, tmp_path, monkeypatch
):
    faults.inject(monkeypatch, {"stage": "architecture", "point": {"latent_scale": 0.5},
                                "epoch": 1, "mode": "always"})  # fmt: skip
    sp = smoke_spec(tiny_market, max_failures=1)
    with Lines() as lines:
        run_search(sp, tmp_path / "run", stop_after="architecture")
    st = RunDir(str(tmp_path / "run")).load().stage("architecture")
    rows = {r.point["latent_scale"]: r for r in st.rows}
    assert rows[0.5].status == "ERROR" and "InjectedFault" in rows[0.5].error
    assert rows[1.0].status == "TERMINATED"
    assert st.best.point == {"latent_scale": 1.0} and st.best.errors == 1
    assert any("latent_scale=0.5 | FAILED after 2 attempt(s)" in ln for ln in lines), lines


def test_a_grid_point_no_config_accepts_fails_alone(tiny_market, ray_local, tmp_path):
    """A point whose config cannot be built (the spec check refuses it up front; here it is
    forced past the check) fails at once, without retries, and the stage completes from the
    other points."""
    sp = smoke_spec(tiny_market, max_failures=2)
    stages = list(sp.stages)
    stages[0] = dataclasses.replace(stages[0], grid={"news_alpha": (0.8,), "latent_scale": (1.0,)})
    stages[2] = dataclasses.replace(stages[2], grid={"news_dropout": (0.1, 1.5)})
    final = dataclasses.replace(sp.final, seeds=1, baseline=False, compare_base=False)
    sp = dataclasses.replace(sp, stages=tuple(stages), final=final)
    with Lines() as lines:
        summary = run_search(sp, tmp_path / "run")
    assert summary is not None, "the run goes on to the final model"
    st = RunDir(str(tmp_path / "run")).load().stage("dropout")
    bad = [r for r in st.rows if r.point["news_dropout"] == 1.5]
    assert (
        len(bad) == 1 and bad[0].status == "ERROR" and "dropout must be in [0, 1)" in bad[0].error
    )
    assert bad[0].epoch == 0 and bad[0].result is None
    assert st.best.point == {"news_dropout": 0.1} and st.best.errors == 1
    assert any("news_dropout=1.5 | FAILED: ConfigError" in ln for ln in lines), lines


def test_retried_trial_resumes_from_its_checkpoint(tiny_market, smoke_run, tmp_path, monkeypatch):
    """The smoke run (the same spec) is the clean run."""
    sp = smoke_spec(tiny_market)
    faults.inject(monkeypatch, {"stage": "architecture", "point": {"latent_scale": 0.5},
                                "epoch": 1, "mode": "once"})  # fmt: skip
    run_search(sp, tmp_path / "faulty", stop_after="architecture")
    rows = {}
    for name, path in (("clean", smoke_run), ("faulty", tmp_path / "faulty")):
        st = RunDir(str(path)).load().stage("architecture")
        rows[name] = {r.point["latent_scale"]: r for r in st.rows}
    a, b = rows["clean"], rows["faulty"]
    assert b[0.5].status == "TERMINATED" and b[0.5].result.restored == 1 and b[0.5].epoch == 2
    # Resuming from the epoch-1 checkpoint continues exactly as the uninterrupted trial.
    assert b[0.5].best_metrics["ic_sharpe"] == pytest.approx(
        a[0.5].best_metrics["ic_sharpe"], abs=1e-9
    )


# --- the command line: one line per mistake, results on stdout ----------------------------------


def test_mistakes_end_in_one_line_and_write_nothing(tmp_path):
    bad_grid = ["run", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"),
                "stages.dropout.grid.news_dropout=[0.1, 1.5]"]  # fmt: skip
    cases = {
        "report": (["report", str(tmp_path)], "holds no spec.yaml, so it is not a run directory"),
        "status": (["status", str(tmp_path)], "holds no spec.yaml, so it is not a run directory"),
        "resume": (["resume", str(tmp_path / "none")], "does not exist, so it is not a run"),
        "grid": (bad_grid, "stages.dropout.grid.news_dropout=1.5: model.news_dropout=1.5: a "
                           "dropout must be in [0, 1). Fix: drop 1.5"),
    }  # fmt: skip
    procs = {k: subprocess.Popen([sys.executable, "-m", "search.cli", *a], text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for k, (a, _) in cases.items()}  # fmt: skip
    for k, p in procs.items():
        out, err = p.communicate(timeout=120)
        assert p.returncode == 2, (k, err)
        assert err.count("\n") == 1 and err.startswith("error: "), (k, err)
        assert cases[k][1] in err, (k, err)
        assert "Fix:" in err and out == "", (k, out, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == [], "nothing was written"


def test_a_stage_where_every_trial_fails_ends_in_one_line(tiny_market, tmp_path, spawns_ray):
    env = {**os.environ, "RAY_ADDRESS": "local"}
    fault = json.dumps({"stage": "architecture", "epoch": 1, "mode": "always"})
    r = subprocess.run([sys.executable, str(FAULTS), fault, "run", "--config", str(SMOKE),
                        "--storage", str(tmp_path), "--name", "r", f"data.source={tiny_market}",
                        "max_failures=0"], capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: stage 'architecture': none of its 2 trials finished"), last
    assert "InjectedFault" in last and "liquid-search stage architecture --run" in last
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "r" / "architecture" / "best.json").exists()
    assert (tmp_path / "r" / "architecture" / "results.csv").is_file(), "errors kept for status"


def test_train_prints_json_on_stdout_and_imports_no_ray_nor_pandas(tiny_market, tmp_path):
    # Neither is used on this path: ray costs ~3 s to import, pandas ~0.3 s.
    probe = (
        "import sys; from search.cli import main; rc = main(sys.argv[1:]); "
        "assert 'ray' not in sys.modules, sorted(m for m in sys.modules if m.startswith('ray'))[:5]; "
        "assert 'pandas' not in sys.modules, 'pandas was imported'; "
        "sys.exit(rc)"
    )
    ck = tmp_path / "model.pt"
    r = subprocess.run([sys.executable, "-c", probe, "train", "--data", str(tiny_market),
                        "--out", str(ck), "train.epochs=1", "train.eval_every=1",
                        "model.news_hidden=8"], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout)  # stdout is exactly the JSON
    assert set(out) >= {"val", "test", "costs", "rows"} and out["rows"]["train"] > 0
    assert ck.is_file() and out["checkpoint"] == str(ck)
    assert "epoch   1" in r.stderr


def test_import_ranker_then_use_a_submodule():
    r = subprocess.run([sys.executable, "-c", "import ranker; print(ranker.checkpoint.load)"],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and "function load" in r.stdout, r.stderr


def test_report_refuses_data_that_is_not_the_runs(smoke_run: Path, tiny_market, tmp_path):
    """`report --data OTHER` would rewrite the run's analysis from other data: refused in one
    line (other rows, or embeddings of another width than the run's models take), the run's
    files untouched; a copy of the run's own data elsewhere is accepted."""
    from ranker.synth import generate
    from tests.test_inputs import snapshot

    other = tmp_path / "other"
    generate(other, n_symbols=300, n_dates=250, signal=4.0, seed=1)
    narrow = tmp_path / "narrow"
    generate(narrow, n_symbols=400, n_dates=250, signal=4.0, seed=0, emb_dim=384)
    before = snapshot(smoke_run)
    for data, want in ((other, "rows"), (narrow, "feature columns {'fund': 19, 'price': 9, "
                                                 "'emb': 384} vs the run's {'fund': 19, "
                                                 "'price': 9, 'emb': 768}")):  # fmt: skip
        r = _cli("report", str(smoke_run), "--data", str(data), timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
        assert f"{data} is not the data {smoke_run} was started on" in r.stderr, r.stderr
        assert want in r.stderr and "Fix: leave --data out" in r.stderr, r.stderr
        assert snapshot(smoke_run) == before
    copy = shutil.copytree(tiny_market, tmp_path / "moved")
    r = _cli("report", str(smoke_run), "--data", str(copy), "--no-test", timeout=120)
    assert r.returncode == 0, r.stderr[-3000:]

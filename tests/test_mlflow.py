"""MLflow tracking against a real `mlflow server` on a free local port: one MLflow run per
trial, nested under one per search, read back through MLflow's client API and compared with the
run directory; and a tracking server that cannot be reached ends in one line before Ray."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request

import pytest

from search.rundir import RunDir
from tests.cluster_util import free_port
from tests.conftest import SMOKE


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory, spawns_ray) -> str:
    """`mlflow server` with a SQLite store and served artifacts; its URL."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    exe = os.path.join(os.path.dirname(sys.executable), "mlflow")
    proc = subprocess.Popen([exe, "server", "--host", "127.0.0.1", "--port", str(port),
                             "--backend-store-uri", f"sqlite:///{root}/mlflow.db",
                             "--artifacts-destination", str(root / "artifacts"), "--workers", "1"],
                            stdout=open(root / "server.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            urllib.request.urlopen(f"{url}/health", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, (root / "server.log").read_text()
            time.sleep(0.5)
    yield url
    proc.terminate()
    proc.wait(timeout=30)


def _cli(*args: str, timeout: int = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "RAY_ADDRESS": "local"}
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)  # fmt: skip


def test_a_search_is_tracked_in_mlflow(mlflow_server, tiny_market, tmp_path):
    from mlflow.tracking import MlflowClient

    r = _cli("run", "--config", str(SMOKE), "--storage", str(tmp_path), "--name", "tracked",
             "--mlflow", mlflow_server, f"data.source={tiny_market}", "max_concurrent=1",
             "stages=[{name: architecture, grid: {latent_scale: [0.5, 1.0]}}]", "final.seeds=1",
             "final.baseline=false")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    run = RunDir(str(tmp_path / "tracked")).load()
    client = MlflowClient(mlflow_server)
    exp = client.get_experiment_by_name("liquid-search")
    found = client.search_runs([exp.experiment_id], max_results=1000)
    parent = client.get_run(run.info.mlflow_run)
    assert parent.info.run_name == "tracked" and parent.info.status == "FINISHED"
    children = [x for x in found if x.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    rows = {(st.name, row.trial_id): (st, row) for st in run.stages for row in st.rows}
    assert len(children) == len(rows) == 2
    for child in children:
        tags, params = child.data.tags, child.data.params
        st, row = rows[(tags["liquid_search.stage"], tags["liquid_search.trial_id"])]
        assert tags["liquid_search.run"] == "tracked" and child.info.status == "FINISHED"
        assert tags["liquid_search.point"] == st.spec.point_text(row.point)
        for key, value in row.point.items():  # the grid point, and the configs it resolved to
            assert float(params[key]) == value
        point = client.get_run(child.info.run_id)
        assert {"model.news_alpha", "model.fund_hidden", "train.learning_rate"} <= set(
            point.data.params
        )
        history = client.get_metric_history(child.info.run_id, "val_ic_sharpe")
        assert [m.step for m in history] == [1, 2], "a metric step per evaluation"
        best = client.get_metric_history(child.info.run_id, "best_val_ic_sharpe")[-1].value
        assert best == pytest.approx(row.best_metrics["ic_sharpe"], rel=1e-9)
    s = run.summary
    for st in run.stages:
        for key, value in st.best.point.items():
            assert float(parent.data.params[f"{st.name}.{key}"]) == value
    assert parent.data.metrics["final.test.ic_sharpe"] == pytest.approx(s.final.test["ic_sharpe"])
    assert "search_vs_base.mean_ic.diff" in parent.data.metrics
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert {"report.html", "report.md", "summary.json", "spec.yaml", "report"} <= artifacts
    figures = {a.path for a in client.list_artifacts(parent.info.run_id, "report")}
    assert "report/test_cumulative_returns.png" in figures


def test_an_unreachable_tracking_server_is_one_line_before_ray(tiny_market, tmp_path, spawns_ray):
    t0 = time.time()
    r = _cli("run", "--config", str(SMOKE), "--storage", str(tmp_path / "runs"), "--mlflow",
             f"http://127.0.0.1:{free_port()}", f"data.source={tiny_market}")  # fmt: skip
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
    assert r.stderr.startswith("error: MLflow tracking: http://127.0.0.1:"), r.stderr
    assert "Fix: check that `mlflow server` runs there" in r.stderr
    assert time.time() - t0 < 60 and not (tmp_path / "runs").exists()

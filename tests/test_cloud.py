"""Object storage end to end, against a real S3 API: moto's server on 127.0.0.1 (`moto[server]`,
the `test` extra), reached by pyarrow and Ray Tune through AWS_ENDPOINT_URL as MinIO or R2 would
be. On a two-node cluster: the smoke search reads its data from and writes its run to the bucket;
then `status`, `report`, `stage training --run s3://...` and `resume` after the driver is
SIGKILLed mid-stage, all on the bucket. Nothing of a run lands on local disk. Run alone with
`pytest -m cloud`.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from ranker import checkpoint, storage
from search.rundir import RunDir
from tests.cluster_util import free_port
from tests.conftest import FAULTS, SMOKE
from tests.test_api import assert_view_matches_status

pytestmark = pytest.mark.cloud
STAGES = ["architecture", "training", "dropout"]


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory, tiny_market: Path, spawns_ray):
    """A moto S3 server with bucket `liquid` holding the tiny market under market/; the
    environment a client needs (yielded), set for this process too."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)  # fmt: skip
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(env["AWS_ENDPOINT_URL"], timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.3)
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              access_key="testing", secret_key="testing",
                              allow_bucket_creation=True)  # fmt: skip
    admin.create_dir("liquid")
    pafs.copy_files(str(tiny_market), "liquid/market", destination_filesystem=admin)
    yield env
    for k, v in saved.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    proc.terminate()
    proc.wait(timeout=30)


def _cli(cluster, cwd: Path, *args: str, timeout: int = 400, **env: str):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], cwd=cwd,
                          env={**cluster.env(), **env}, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def test_the_search_on_object_storage(s3, make_cluster, tmp_path):
    cluster = make_cluster(head_cpus=1, worker_cpus=(1,))  # the S3 settings reach every node
    cwd = tmp_path / "cwd"  # each command runs here: it must stay empty
    cwd.mkdir()
    run = "s3://liquid/runs/smoke"
    r = _cli(cluster, cwd, "run", "--address", cluster.address, "--config", str(SMOKE),
             "--data", "s3://liquid/market", "--storage", "s3://liquid/runs", "--name", "smoke",
             "final.seeds=1")  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.strip() == run

    # Every artifact is in the bucket, and readable from there.
    files = storage.files_under(run)
    for f in ("spec.yaml", "run.json", "summary.json", "analysis.json", "report.md",
              "report.html", "final/model.pt", "final/final_test_daily.npz",
              "final/baseline_test_daily.npz", "final/final_val_daily.npz"):  # fmt: skip
        assert f in files, f
    loaded = RunDir(run).load()
    nodes = set()
    for st in loaded.stages:
        assert st.done and f"{st.name}/results.csv" in files and f"{st.name}/best.json" in files
        for row in st.rows:
            assert row.status == "TERMINATED" and row.result.data_zero_copy
            assert (
                row.checkpoint.startswith(f"{st.name}/") and f"{row.checkpoint}/state.pt" in files
            )
            nodes.add(row.result.node_id)
    assert len(nodes) == 2, "trials ran on both nodes, each writing to the bucket"
    assert loaded.info.source == "s3://liquid/market"
    ranker = checkpoint.load(loaded.summary.checkpoint)
    assert ranker.metrics["test"] == pytest.approx(loaded.summary.final.test, nan_ok=True)
    assert len(loaded.trial_series("architecture")) == 2

    # status and report read the bucket.
    view = assert_view_matches_status(run, env={**os.environ, **cluster.env()})
    assert view.state == "complete" and len(view.get_dataframe()) == 6
    assert view.final_metrics().loc["final", "ic_sharpe"] == pytest.approx(
        view.summary.final.test["ic_sharpe"]
    )
    r = _cli(cluster, cwd, "status", run)
    assert r.returncode == 0, r.stderr[-3000:]
    for st in STAGES:
        assert f"[{st}] 2/2 done, 0 running, 0 pending, 0 failed; done" in r.stdout
    before = storage.read_text(f"{run}/report.md")
    r = _cli(cluster, cwd, "report", run)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == [f"{run}/report.md", f"{run}/report.html"]
    assert storage.read_text(f"{run}/report.md") != before  # rewritten (new timestamp)

    # A stage rerun: a new attempt directory, nothing moved (object stores cannot move dirs).
    r = _cli(cluster, cwd, "stage", "training", "--run", run, "--address", cluster.address)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(storage.read_text(f"{run}/stages.json")) == {"training": "training.v2"}
    assert "training/best.json" in storage.files_under(run)
    rerun = RunDir(run).load().stage("training")
    assert rerun.dir == "training.v2" and rerun.best.point == loaded.stage("training").best.point

    assert list(cwd.iterdir()) == [], "nothing of the run lands on local disk"
    _stop_clean_quietly(cluster)


def test_resume_on_object_storage_after_sigkill(s3, tmp_path):
    env = {**os.environ, **s3, "RAY_ADDRESS": "local"}  # a local Ray: the store is under test
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    marker = tmp_path / "hung.json"  # test plumbing, not part of the run
    stuck = {"latent_scale": 1.0, "news_alpha": 0.8}
    fault = {"stage": "architecture", "point": stuck, "epoch": 2, "mode": "hang",
             "marker": str(marker)}  # fmt: skip
    run = "s3://liquid/runs/killed"
    args = [sys.executable, str(FAULTS), json.dumps(fault), "run", "--config", str(SMOKE),
            "--data", "s3://liquid/market", "--storage", "s3://liquid/runs", "--name", "killed",
            "max_concurrent=1", "train.epochs=4", "final.baseline=false", "final.seeds=1",
            "final.compare_base=false",
            "stages=[{name: architecture, grid: {latent_scale: [0.5, 1.0], news_alpha: [0.6, 0.8, 1.0]}}]"]  # fmt: skip
    with open(tmp_path / "driver.log", "w") as log:
        proc = subprocess.Popen(args, cwd=cwd, stdout=log, stderr=log, start_new_session=True,
                                env=env)  # fmt: skip
    try:
        deadline = time.time() + 300
        while True:  # stuck after its epoch-2 checkpoint, and Tune's record in the bucket says so
            assert proc.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.time() < deadline, (tmp_path / "driver.log").read_text()[-3000:]
            fs, path = storage.filesystem(f"{run}/architecture")
            snap = _snapshot_s3(path, fs) if marker.exists() else {}
            if any(t["config"] == stuck and t["epoch"] == 2 for t in snap.values()):
                break
            time.sleep(0.5)
        # In flight, on the object store: the Python API reads what status prints.
        view = assert_view_matches_status(run, env=env)
        assert view.state == "running" and "RUNNING" in set(view.trials("architecture")["status"])
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    r = subprocess.run([sys.executable, "-m", "search.cli", "resume", run], cwd=cwd, env=env,
                       capture_output=True, text=True, timeout=400)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert "taking over the lease" in r.stderr, "the killed driver's lease, in the bucket"
    st = RunDir(run).load().stage("architecture")
    assert len(st.rows) == 6 and all(x.status == "TERMINATED" and x.epoch == 4 for x in st.rows)
    (row,) = [x for x in st.rows if x.point == stuck]
    assert row.result.restored == 1, "continued from its checkpoint in the bucket"
    assert storage.is_file(f"{run}/summary.json")
    assert list(cwd.iterdir()) == []


def _snapshot_s3(path: str, fs: pafs.FileSystem) -> dict:
    """`tests.test_resume._snapshot` for an experiment on an object store."""
    from ray import tune

    try:
        ea = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError:
        return {}
    return {t.trial_id: {"config": dict(t.config),
                         "epoch": int((t.last_result or {}).get("epoch", 0))} for t in ea.trials}  # fmt: skip


def _stop_clean_quietly(cluster) -> None:
    assert cluster.stop() == [], "processes outlived the cluster's shutdown"


def test_storage_problems_end_in_one_line_within_seconds(s3, tmp_path):
    """A missing bucket, a path that is a file, an endpoint that does not answer, credentials the
    store refuses: one line naming the URI and what to check, exit 2, before Ray starts, nothing
    written."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    run = ["run", "--config", str(SMOKE), "--storage"]
    denying = _moto(tmp_path / "denying", INITIAL_NO_AUTH_ACTION_COUNT="0")  # checks credentials
    try:
        cases = {
            "status, no bucket": (["status", "s3://missing-bucket/runs/x"], s3,
                                  "the bucket 'missing-bucket' does not exist"),
            "run --storage, no bucket": ([*run, "s3://missing-bucket/runs", "--data",
                                          "s3://liquid/market"], s3, "'missing-bucket' does not"),
            "run --data, no bucket": ([*run, str(tmp_path / "runs"), "--data",
                                       "s3://missing-bucket/market"], s3, "'missing-bucket' does"),
            "report, no run": (["report", "s3://liquid/runs/none"], s3,
                               "s3://liquid/runs/none does not exist"),
            "storage is a file": ([*run, "s3://liquid/market/prices.pqt", "--data",
                                   "s3://liquid/market"], s3, "is a file, not a storage"),
            "endpoint down": (["status", "s3://liquid/runs/x"],
                              {**s3, "AWS_ENDPOINT_URL": f"http://127.0.0.1:{free_port()}"},
                              "the endpoint does not answer"),
            "credentials refused": (["status", "s3://liquid/runs/x"],
                                    {**s3, "AWS_ENDPOINT_URL": denying[1]}, "access denied"),
        }  # fmt: skip
        t0 = time.time()
        procs = {k: subprocess.Popen([sys.executable, "-m", "search.cli", *a], cwd=cwd,
                                     env={**os.environ, **env}, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                 for k, (a, env, _) in cases.items()}  # fmt: skip
        for k, p in procs.items():
            out, err = p.communicate(timeout=120)
            assert p.returncode == 2 and err.count("\n") == 1, (k, err[-3000:])
            assert err.startswith("error: ") and cases[k][2] in err and "Fix:" in err, (k, err)
            assert "Traceback" not in err and out == "", (k, err)
            assert "ray 2." not in err, f"{k}: Ray started before the check"
        assert time.time() - t0 < 40, "each answer comes within seconds"
    finally:
        denying[0].terminate()
        denying[0].wait(timeout=30)
    assert list(cwd.iterdir()) == [] and not (tmp_path / "runs").exists()


def _moto(logdir: Path, **env: str) -> tuple[subprocess.Popen, str]:
    """Another moto server (with `env`, e.g. to check credentials): (process, endpoint URL)."""
    logdir.mkdir()
    port = free_port()
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)], env={**os.environ, **env},
                            stdout=open(logdir / "moto.log", "w"), stderr=subprocess.STDOUT)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except urllib.error.HTTPError:  # it answers (with an auth error)
            return proc, url
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.3)

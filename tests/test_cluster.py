"""The search on a real multi-node Ray cluster on this machine: trials spread over two nodes, a
run submitted through the Jobs REST API, a driver joining a token-auth cluster, a worker node
killed mid-stage.

Each cluster is `ray.cluster_utils.Cluster` nodes held by a child process (tests/cluster_util.py
says why), and each search runs as the `liquid-search` driver in a process of its own, connected
with `--address` (or started by the job manager): this pytest process never connects to these
clusters, so the session's `ray_local` (if the other tests started it) is neither disturbed nor in
the way. Run them alone with `pytest -m cluster`; 2-4 minutes on 2 cores.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from search.rundir import RunDir
from tests.cluster_util import LocalCluster
from tests.conftest import SMOKE

pytestmark = pytest.mark.cluster

STAGES = ["architecture", "training", "dropout"]
TERMINAL = {"SUCCEEDED", "FAILED", "STOPPED"}


def _search(cluster: LocalCluster, storage: Path, name: str, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "search.cli", "run", "--address", cluster.address,
            "--config", str(SMOKE), "--storage", str(storage), "--name", name,
            *overrides]  # fmt: skip


def _ray_daemons(tag: str) -> list[str]:
    """`ps` lines of raylet / gcs_server processes whose arguments mention `tag`."""
    ps = subprocess.run(
        ["ps", "-ww", "-eo", "pid,args"], capture_output=True, text=True, check=True
    )
    return [ln for ln in ps.stdout.splitlines()
            if tag in ln and ("raylet/raylet" in ln or "gcs/gcs_server" in ln)]  # fmt: skip


def _stop_clean(cluster: LocalCluster) -> None:
    """Stop the cluster and check that none of its processes outlived the shutdown."""
    tag = str(cluster.dir)  # in every raylet's and GCS's arguments (their session directory)
    running = _ray_daemons(tag)
    assert any("gcs_server" in ln for ln in running) and any("raylet" in ln for ln in running), (
        f"the check finds nothing even while the cluster runs: {running}"
    )
    assert cluster.stop() == [], "processes outlived Cluster.shutdown() and had to be killed"
    assert _ray_daemons(tag) == []


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory, spawns_ray) -> Iterator[LocalCluster]:
    """One two-node cluster (one CPU on the head, one on a worker; the dashboard with its Jobs
    API, token auth as Ray 2.59+ turns it on) for the tests that only use it: a job submitted
    through the REST API whose trials spread over both nodes, and token auth. Its clean shutdown
    is checked at the end."""
    cluster = LocalCluster(head_cpus=1, worker_cpus=(1,), object_store_mb=250,
                           dashboard=True).start()  # fmt: skip
    try:
        yield cluster
        _stop_clean(cluster)
    finally:
        cluster.stop()


@pytest.fixture(scope="module")
def rest_job(shared: LocalCluster, tiny_market: Path, tmp_path_factory: pytest.TempPathFactory):
    """The smoke search submitted to `shared` as a job through the Jobs REST API, followed to
    its end: (job, its logs, its run directory)."""
    storage = tmp_path_factory.mktemp("runs")
    # runtime_env {}: every node is this machine, where the package is installed and the venv's
    # bin is on the cluster's PATH; the driver starts in the cluster's working directory (the
    # repo root), so the relative config path resolves. On a real cluster the repo would travel
    # as a working_dir, which over raw REST must first be uploaded to /api/packages/ (what
    # `ray job submit --working-dir .` does for you).
    entrypoint = (f"liquid-search run --config configs/smoke.yaml --storage {storage} "
                  f"--name job data.source={tiny_market}")  # fmt: skip
    status, out = _api(shared, "POST", "/api/jobs/", {"entrypoint": entrypoint, "runtime_env": {}})
    assert status == 200, out
    sid = out["submission_id"]
    deadline = time.time() + 300
    while True:
        status, job = _api(shared, "GET", f"/api/jobs/{sid}")
        assert status == 200, job
        if job["status"] in TERMINAL or time.time() > deadline:
            break
        time.sleep(1)
    status, logs = _api(shared, "GET", f"/api/jobs/{sid}/logs")
    assert status == 200, logs
    return job, logs["logs"], storage / "job", entrypoint


def test_trials_spread_over_two_nodes(shared: LocalCluster, rest_job):
    """Head and worker advertise one CPU each, so the two trials of a stage must use both; the
    worker reads the Panels from its own object store (copied there by Ray), zero-copy."""
    head, (worker,) = shared.info["head"], shared.info["workers"]
    job, logs, run_dir, _ = rest_job
    assert job["status"] == "SUCCEEDED", f"{job['status']}: {job.get('message')}\n{logs[-3000:]}"

    nodes = set()
    for st in RunDir(str(run_dir)).load().stages:
        rows = st.rows
        assert len(rows) == 2 and all(x.status == "TERMINATED" for x in rows), rows
        assert all(x.result.data_zero_copy for x in rows), (
            f"[{st.name}] every trial, on either node, must read the object store's copy: "
            f"{[(x.result.node_id[:8], x.result.data_zero_copy) for x in rows]}"
        )
        nodes |= {x.result.node_id for x in rows}
    assert nodes == {head, worker}, f"trials ran on {nodes}; the cluster is {head=} {worker=}"
    for f in ("spec.yaml", "run.json", "summary.json", "final/model.pt"):
        assert (run_dir / f).is_file(), f
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["stage"] for s in summary["stages"]] == STAGES


def test_through_ray_client_each_line_once(make_cluster, tiny_market, tmp_path):
    """`--address ray://...`: Tune runs each stage in an actor on the cluster; the driver still
    prints each per-trial line once, and none of Tune's own boxes and tables. (A cluster of its
    own: a Ray Client server beside the dashboard's runtime-env agent could not start a client's
    server here.)"""
    cluster = make_cluster(head_cpus=2, worker_cpus=(), client=True)
    args = _search(cluster, tmp_path / "runs", "rc", f"data.source={tiny_market}",
                   "final.seeds=1", "final.baseline=false", "final.compare_base=false")  # fmt: skip
    args[args.index("--address") + 1] = cluster.client_address
    r = subprocess.run(args, capture_output=True, text=True, env=cluster.env(), timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert r.stdout.strip() == str(tmp_path / "runs" / "rc")
    per_trial = re.findall(r"^\[(\w+)\s+\d+/2\] .* \| val ic_sharpe", r.stderr, flags=re.M)
    assert sorted(per_trial) == sorted(STAGES * 2), r.stderr[-3000:]
    assert "Configuration for experiment" not in r.stderr + r.stdout
    assert (tmp_path / "runs" / "rc" / "summary.json").is_file()
    _stop_clean(cluster)


def _api(cluster: LocalCluster, method: str, path: str, body: Any = None,
         token: str | None = "cluster") -> tuple[int, Any]:  # fmt: skip
    """One Jobs REST API call; token "cluster" sends the cluster's, None sends no header."""
    headers = {"Content-Type": "application/json"}
    if token is not None:
        headers["Authorization"] = f"Bearer {cluster.token if token == 'cluster' else token}"
    req = urllib.request.Request(
        cluster.dashboard_url + path, method=method, headers=headers,
        data=None if body is None else json.dumps(body).encode(),
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def test_job_submitted_through_the_rest_api(shared: LocalCluster, rest_job):
    """POST /api/jobs/ with the bearer token, follow the job to SUCCEEDED, read its logs."""
    # Token auth is on (as Ray 2.59+ does for local clusters): no header 401, a wrong one 403,
    # and a refused submission creates no job.
    status, text = _api(shared, "GET", "/api/jobs/", token=None)
    assert status == 401, (status, text)
    status, text = _api(shared, "GET", "/api/jobs/", token="0" * 64)
    assert status == 403, (status, text)
    status, text = _api(shared, "POST", "/api/jobs/", {"entrypoint": "true"}, token=None)
    assert status == 401, (status, text)
    job, logs, run_dir, entrypoint = rest_job
    status, jobs = _api(shared, "GET", "/api/jobs/")  # the refused submission made none
    submitted = [j["submission_id"] for j in jobs if j.get("type") == "SUBMISSION"]
    assert status == 200 and submitted == [job["submission_id"]], jobs
    assert job["status"] == "SUCCEEDED", f"{job['status']}: {job.get('message')}\n{logs[-3000:]}"
    assert job["driver_exit_code"] == 0 and job["entrypoint"] == entrypoint

    per_trial = re.findall(r"^\[(\w+)\s+\d+/2\] ", logs, flags=re.M)
    assert sorted(per_trial) == sorted(STAGES * 2), logs[-3000:]
    assert "summary:" in logs and (run_dir / "summary.json").is_file()
    assert (run_dir / "final" / "model.pt").is_file()


def test_token_auth_is_left_to_ray(shared: LocalCluster):
    """A token-auth cluster on this machine: `--address auto` from a shell that has the token but
    never exported RAY_AUTH_MODE connects (Ray turns token mode on itself for a cluster it finds
    here); an explicit address is never retried with the local token: the driver stops with one
    line telling the user to export RAY_AUTH_MODE=token. (Ray refuses only after ~20 s of
    retries; both run at once.)"""
    cluster = shared
    procs = {}
    for case, address in (("auto", "auto"), ("explicit", cluster.address)):
        env = cluster.env()  # the token stays readable through RAY_AUTH_TOKEN_PATH
        del env["RAY_AUTH_MODE"]
        procs[case] = subprocess.Popen(
            [sys.executable, "-c", CONNECT_PROBE, address], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        )  # fmt: skip
    out = {}
    try:
        for case, p in procs.items():
            out[case] = p.communicate(timeout=150)
    finally:
        for p in procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    stdout, stderr = out["auto"]
    assert procs["auto"].returncode == 0 and "joined 2 node(s)" in stdout, stdout + stderr[-3000:]
    stdout, stderr = out["explicit"]
    assert procs["explicit"].returncode == 2, stdout + stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert last.startswith("error: the cluster at ") and "export RAY_AUTH_MODE=token" in last
    assert "Traceback" not in stderr and "retrying" not in stderr


# Connect the way the CLI does and report; errors as the CLI prints them.
CONNECT_PROBE = """
import sys
from search import connect
from search.cli import setup_logging
from search.errors import SearchError
setup_logging()
try:
    connect.init(sys.argv[1])
except SearchError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
print("joined", len(connect.alive_nodes()), "node(s)")
"""


def _last_results(stage_dir: Path) -> dict[str, dict[str, Any]]:
    """Each trial's latest result.json line, by trial directory name."""
    out = {}
    for path in stage_dir.glob("*/result.json"):
        for line in path.read_text().splitlines():
            try:
                out[path.parent.name] = json.loads(line)
            except json.JSONDecodeError:
                pass  # the line Tune is writing right now
    return out


def test_worker_node_killed_mid_stage(make_cluster, tiny_market, tmp_path):
    """SIGKILL every process of the worker node while one of its trials is half-way; Tune retries
    that trial from its last checkpoint elsewhere and the run completes."""
    cluster = make_cluster(head_cpus=1, worker_cpus=(1,), object_store_mb=250)
    worker = cluster.info["workers"][0]
    epochs = 6
    # Small batches make an epoch take a fraction of a second, so a trial seen at epoch 1 still
    # has seconds to go when the node dies. The storage is a local path: fine here, since every
    # node is on this machine (Tune needs it reachable from all of them; check_storage passes
    # because the nodes share one IP).
    args = _search(cluster, tmp_path / "runs", "kill", f"data.source={tiny_market}",
                   "stages.architecture.grid={latent_scale: [0.5, 1.0], news_alpha: [0.6, 0.8, 1.0]}",
                   f"train.epochs={epochs}", "train.eval_every=1", "train.batch_size=4",
                   "max_failures=3", "final.seeds=1", "final.epochs=1", "final.baseline=false",
                   # After the first stage only completion is tested: one trial each.
                   "stages.training.grid={learning_rate: [1.0e-3]}",
                   "stages.dropout.grid={news_dropout: [0.1]}")  # fmt: skip
    run_dir = tmp_path / "runs" / "kill"
    stage_dir = run_dir / "architecture"
    log_path = tmp_path / "driver.log"
    with open(log_path, "w") as log:
        driver = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=cluster.env(),
                                  start_new_session=True)  # fmt: skip
    try:
        victim = None
        deadline = time.time() + 180
        while victim is None:
            assert driver.poll() is None, log_path.read_text()[-3000:]
            assert time.time() < deadline, "no trial reported from the worker node in time"
            for name, res in _last_results(stage_dir).items():
                # It has a checkpoint (one comes with every evaluation) and epochs still to run.
                if res.get("node_id") == worker and 1 <= res["epoch"] <= epochs - 2:
                    victim = name
            time.sleep(0.05)
        cluster.kill_worker(worker)
        cluster.add_worker(num_cpus=1)  # a replacement, as an autoscaler would start
        driver.wait(timeout=300)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    out = log_path.read_text()
    assert driver.returncode == 0, out[-4000:]

    st = RunDir(str(run_dir)).load().stage("architecture")
    rows = {f"architecture_{r.trial_id}": r for r in st.rows}
    assert len(rows) == 6 and all(r.status == "TERMINATED" for r in rows.values()), rows
    v = rows[victim]
    assert v.result.restored >= 1, f"{victim} was not resumed from its checkpoint: {v}"
    assert v.result.node_id != worker and v.epoch == epochs, v
    assert all(r.result.data_zero_copy for r in rows.values())
    assert st.best is not None and st.best.trials == 6 and st.best.errors == 0
    assert (run_dir / "summary.json").is_file() and (run_dir / "final" / "model.pt").is_file()
    _stop_clean(cluster)

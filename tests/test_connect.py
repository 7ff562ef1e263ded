"""Connecting and placing: where a run goes inside a Ray job, resources no node has refused up
front, a GPU trial on a node without CUDA failing at once."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from search.connect import resource_problem, run_storage
from search.errors import ClusterError
from tests.conftest import SMOKE


def test_inside_a_ray_job_relative_storage_goes_under_home(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("RAY_JOB_ID", raising=False)
    monkeypatch.delenv("RAY_JOB_CONFIG_JSON_ENV_VAR", raising=False)
    assert run_storage("./runs") == str(tmp_path / "runs")  # not in a job: here
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert run_storage("./runs") == str(tmp_path / "home" / "liquid-search" / "runs")
    assert run_storage("/mnt/shared/runs") == "/mnt/shared/runs"
    assert run_storage("s3://bucket/runs") == "s3://bucket/runs"
    with pytest.raises(ClusterError, match="inside this Ray job's working directory"):
        run_storage(str(tmp_path / "runs"))


def test_resources_no_node_has_are_refused_with_the_fix():
    cpu_only = [{"CPU": 2.0}, {"CPU": 4.0}]
    assert resource_problem(1, 0, cpu_only, autoscale=False) is None
    msg = resource_problem(1, 0.25, cpu_only, autoscale=False)
    assert msg and "resources.gpu=0.25" in msg and "2 CPU / 0 GPU, 4 CPU / 0 GPU" in msg
    assert "resources.gpu=0" in msg and "resources.autoscale=true" in msg
    assert resource_problem(1, 0.25, cpu_only, autoscale=True) is None
    assert resource_problem(1, 0.25, [{"CPU": 4.0, "GPU": 1.0}], autoscale=False) is None
    assert "resources.cpu=4 or less" in resource_problem(8, 0, cpu_only, autoscale=False)


def test_a_gpu_request_on_a_cluster_without_gpus_ends_at_once(tiny_market, tmp_path, spawns_ray):
    env = {**os.environ, "RAY_ADDRESS": "local"}
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "search.cli", "run", "--config", str(SMOKE),
                        "--storage", str(tmp_path), "--name", "g", f"data.source={tiny_market}",
                        "resources.gpu=0.25"], capture_output=True, text=True, env=env,
                       timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("error: no node of this cluster can hold one trial's resources.cpu=1 "
                           "resources.gpu=0.25"), last  # fmt: skip
    assert "Traceback" not in r.stderr and time.time() - t < 120
    assert not (tmp_path / "g").exists(), "nothing was written"


@pytest.mark.cluster
def test_a_gpu_trial_without_cuda_fails_at_once(make_cluster, tiny_market, tmp_path):
    """A node that advertises a GPU torch cannot see: the trials fail at once, with the reason,
    and without retries."""
    cluster = make_cluster(head_cpus=2, head_gpus=1, worker_cpus=())
    t = time.time()
    r = subprocess.run([sys.executable, "-m", "search.cli", "run", "--address", cluster.address,
                        "--config", str(SMOKE), "--storage", str(tmp_path), "--name", "g",
                        f"data.source={tiny_market}", "resources.gpu=0.5", "max_failures=3"],
                       capture_output=True, text=True, env=cluster.env(), timeout=300)  # fmt: skip
    assert r.returncode == 2, r.stderr[-3000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "none of its 2 trials finished" in last and "torch sees no CUDA device" in last, last
    assert r.stderr.count("FAILED: NoCudaDevice") == 2, "each trial once: no retries"
    assert time.time() - t < 120
    cluster.stop()

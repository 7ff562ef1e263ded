"""Watching a search: per-trial metrics through Ray's metrics pipeline into a real Prometheus, the
node's /metrics endpoint, the Grafana dashboard's queries, trial-labelled actor logs, TensorBoard
event files.

The Prometheus test needs Debian's `prometheus` (`.ci/run` installs it); it scrapes a two-node
`ray.cluster_utils.Cluster` (tests/cluster_util.py) through the service-discovery file Ray writes,
as a user's Prometheus would.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import struct
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from search.rundir import RunDir
from search.telemetry import exported_names
from tests.cluster_util import free_port
from tests.conftest import SMOKE
from tests.test_cluster import STAGES, _stop_clean

ROOT = Path(__file__).resolve().parent.parent
DASHBOARD = ROOT / "cluster" / "grafana" / "liquid_search.json"
PROMETHEUS = shutil.which("prometheus")


def _get(url: str, timeout: float = 10) -> str:
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.read().decode()


def _query(base: str, path: str, **params: str) -> dict:
    return json.loads(_get(f"{base}{path}?{urllib.parse.urlencode(params)}"))["data"]


class Prometheus:
    """A real Prometheus scraping every second the targets of a Ray service-discovery file."""

    def __init__(self, sd_file: Path, workdir: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        config = workdir / "prometheus.yml"
        config.write_text(json.dumps({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "ray", "file_sd_configs": [
                {"files": [str(sd_file)], "refresh_interval": "1s"}]}],
        }))  # fmt: skip
        self.log = open(workdir / "prometheus.log", "w")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        deadline = time.time() + 60
        while True:
            try:
                if "Ready" in _get(f"{self.base}/-/ready", timeout=2):
                    return
            except OSError:
                pass
            assert self.proc.poll() is None and time.time() < deadline, "Prometheus did not start"
            time.sleep(0.3)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=30)
        self.log.close()


@pytest.mark.cluster
@pytest.mark.skipif(
    PROMETHEUS is None, reason="needs Prometheus: apt-get install prometheus (.ci/run does)"
)
def test_prometheus_scrapes_every_trial_and_the_stage_counters(make_cluster, tiny_market, tmp_path):
    cluster = make_cluster(head_cpus=1, worker_cpus=(1,), dashboard=True, metrics=True)
    sd = None
    deadline = time.time() + 60
    while sd is None:  # Ray's dashboard writes it once the head is up
        found = glob.glob(f"{cluster.dir}/**/prom_metrics_service_discovery.json", recursive=True)
        sd = Path(found[0]) if found else None
        assert time.time() < deadline, "Ray wrote no Prometheus service-discovery file"
        time.sleep(0.5)
    prom = Prometheus(sd, tmp_path)
    try:
        args = [sys.executable, "-m", "search.cli", "run", "--address", cluster.address,
                "--config", str(SMOKE), "--storage", str(tmp_path / "runs"), "--name", "watched",
                f"data.source={tiny_market}", "final.seeds=1"]  # fmt: skip
        # The plain path: while the run is in flight, the /metrics endpoints hold the gauges with
        # their labels. (The driver sets every trial's gauges and keeps them exported while it
        # runs; a node's agent drops a value within two report intervals of its emitter's exit.)
        seen_names: set[str] = set()
        seen_trials: set[tuple[str, str]] = set()
        pattern = re.compile(r'^ray_liquid_search_val_ic_sharpe\{[^}]*stage="(\w+)"[^}]*'
                             r'trial_id="(\w+)"', flags=re.M)  # fmt: skip
        with open(tmp_path / "run.log", "w") as log:
            proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=cluster.env())
            try:
                deadline = time.time() + 300
                while proc.poll() is None:
                    assert time.time() < deadline, (tmp_path / "run.log").read_text()[-3000:]
                    text = "".join(_get(f"http://127.0.0.1:{p}/metrics")
                                   for p in cluster.info["metrics_ports"])  # fmt: skip
                    seen_names |= set(re.findall(r"^(ray_liquid_search_\w+)\{", text, flags=re.M))
                    seen_trials |= set(pattern.findall(text))
                    time.sleep(0.5)
            finally:
                if proc.poll() is None:
                    proc.kill()
                proc.wait()
        assert proc.returncode == 0, (tmp_path / "run.log").read_text()[-3000:]
        trials = {(s.name, row.trial_id, " ".join(f"{k}={v}" for k, v in row.point.items()))
                  for s in RunDir(str(tmp_path / "runs" / "watched")).load().stages
                  for row in s.rows}  # fmt: skip
        assert len(trials) == 6
        assert seen_names == exported_names() - {"ray_liquid_search_trials_failed_total"}
        assert seen_trials == {(stage, trial_id) for stage, trial_id, _ in trials}

        # Prometheus, through Ray's service discovery: every trial's IC Sharpe series with its
        # stage, trial and point labels, and two finished trials counted per stage.
        deadline = time.time() + 60
        while True:
            series = _query(prom.base, "/api/v1/series", **{
                "match[]": 'ray_liquid_search_val_ic_sharpe{run="watched"}'})  # fmt: skip
            got = {(s["stage"], s["trial_id"], s["point"]) for s in series}
            counts = _query(prom.base, "/api/v1/query", query=(
                'sum by (stage) (ray_liquid_search_trials_finished_total{run="watched"})'))  # fmt: skip
            done = {c["metric"]["stage"]: float(c["value"][1]) for c in counts["result"]}
            if got == trials and done == dict.fromkeys(STAGES, 2.0):
                break
            assert time.time() < deadline, (got, trials, done)
            time.sleep(1)
        # How many series one smoke run exports, and how long Prometheus takes to scrape them.
        n = len(
            _query(prom.base, "/api/v1/series", **{"match[]": '{__name__=~"ray_liquid_search_.*"}'})
        )
        scrape = _query(prom.base, "/api/v1/query", query='max(scrape_duration_seconds{job="ray"})')
        print(f"\nsearch series: {n}; slowest target scrape: "
              f"{float(scrape['result'][0]['value'][1]) * 1e3:.1f} ms")  # fmt: skip
    finally:
        prom.stop()
    _stop_clean(cluster)


def test_grafana_dashboard_queries_exported_metrics():
    dash = json.loads(DASHBOARD.read_text())
    exported = exported_names()
    queries = [t["expr"] for p in dash["panels"] for t in p["targets"]]
    queries += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    assert len(dash["panels"]) >= 6 and len(queries) >= 10
    for q in queries:
        names = re.findall(r"ray_liquid_search_\w+", q)
        assert names, f"a query that names no search metric: {q}"
        assert set(names) <= exported, f"{q}: {set(names) - exported} is not exported"
    # The panels the issue asks for are there.
    titles = " | ".join(p["title"] for p in dash["panels"]).lower()
    for needle in ("ic sharpe per trial", "best", "finished and failed", "loss"):
        assert needle in titles, needle


def test_trial_actor_logs_name_their_trials(smoke_run: Path, ray_session_dir: Path):
    """Each trial writes one line when it starts and one when it ends to its actor's log (the
    worker log files the dashboard shows), naming the stage, trial id and grid point."""
    logs = ray_session_dir / "logs"
    text = "\n".join(p.read_text(errors="replace") for p in logs.glob("worker-*.err"))
    for st in RunDir(str(smoke_run)).load().stages:
        for row in st.rows:
            head = f"[liquid-search] {st.name} trial {row.trial_id} ("
            point = " ".join(f"{k}={v}" for k, v in row.point.items())
            assert re.search(rf"{re.escape(head)}{re.escape(point)}\) started on cpu", text), head
            assert re.search(rf"{re.escape(head)}{re.escape(point)}\) ended: best ic_sharpe", text)


def _events(path: Path) -> list:
    """The Event protos of a TensorBoard event file (TFRecord framing: length, crc, data, crc)."""
    from tensorboardX.proto.event_pb2 import Event

    data, out, i = path.read_bytes(), [], 0
    while i < len(data):
        (n,) = struct.unpack("<Q", data[i : i + 8])
        out.append(Event.FromString(data[i + 12 : i + 12 + n]))
        i += 12 + n + 4
    return out


def test_every_trial_wrote_tensorboard_events_with_its_metrics(smoke_run: Path):
    run = RunDir(str(smoke_run)).load()
    for st in run.stages:
        for row in st.rows:
            (events,) = (smoke_run / st.name / f"{st.name}_{row.trial_id}").glob(
                "events.out.tfevents.*"
            )
            values: dict[str, list[float]] = {}
            for e in _events(events):
                for v in e.summary.value:
                    values.setdefault(v.tag, []).append(v.simple_value)
            best = row.best_metrics["ic_sharpe"]
            assert len(values["ray/tune/ic_sharpe"]) == row.epoch  # one per evaluation
            assert max(values["ray/tune/ic_sharpe"]) == pytest.approx(best)
            assert values["ray/tune/best_ic_sharpe"][-1] == pytest.approx(best)


def test_status_watch_follows_a_run_in_flight_and_exits_when_it_ends(
    tiny_market, tmp_path, spawns_ray
):
    env = {**os.environ, "RAY_ADDRESS": "local", "PYTHONUNBUFFERED": "1"}
    run_dir = tmp_path / "runs" / "w"
    args = [sys.executable, "-m", "search.cli", "run", "--config", str(SMOKE), "--storage",
            str(tmp_path / "runs"), "--name", "w", f"data.source={tiny_market}",
            "train.epochs=10", "train.batch_size=32",  # a second or two a trial
            "stages=[{name: architecture, grid: {latent_scale: [0.5, 1.0]}}]", "final.seeds=1",
            "final.baseline=false", "final.compare_base=false", "max_concurrent=1"]  # fmt: skip
    with open(tmp_path / "run.log", "w") as log:
        search = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.time() + 120
        while not (run_dir / "run.json").exists():  # the driver has started the run
            assert search.poll() is None, (tmp_path / "run.log").read_text()[-3000:]
            assert time.time() < deadline
            time.sleep(0.2)
        watch = subprocess.run(
            [sys.executable, "-m", "search.cli", "status", str(run_dir), "--watch",
             "--interval", "0.5"], capture_output=True, text=True, env=env, timeout=400,
        )  # fmt: skip
        assert search.wait(timeout=60) == 0, (tmp_path / "run.log").read_text()[-3000:]
    finally:
        if search.poll() is None:
            search.kill()
    assert watch.returncode == 0, watch.stderr[-3000:]
    frames = watch.stdout.split("==== ")[1:]
    in_flight = [f for f in frames if "; running)" in f and "in flight or interrupted" in f]
    assert in_flight, frames[:3]
    assert any(" RUNNING " in f for f in in_flight), "a frame shows a trial running"
    assert any("best so far ic_sharpe" in f for f in in_flight)
    assert "[final] ensemble of" in frames[-1] and "; complete" in frames[-1]
    assert watch.stdout.rstrip().endswith("the run has ended: complete")

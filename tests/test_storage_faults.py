"""A run survives its storage, with real faults: a small filesystem that fills up mid-stage, an
object store (moto's S3 server, behind a TCP relay this test can take down) that stops answering
mid-stage; and one driver per run directory (two drivers on one run name; a driver killed while
it holds the lease).

Each fault ends the run in one line naming the storage and the fix, with exit code 3 and no
traceback; once the storage is back, `liquid-search resume` finishes the run, and its selections
and final metrics equal those of the same spec run uninterrupted (`reference`) to the last
digit. The spec is the smoke one cut to what the faults need: a stage done before the fault,
the stage it strikes, and a final model of one seed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.fs as pafs
import pytest

from search.rundir import RunDir
from tests.cluster_util import free_port
from tests.conftest import SMOKE, run_search, smoke_spec
from tests.faults import faulted_driver

SHORT = {"stages": "[{name: architecture, grid: {latent_scale: [1.0]}}, {name: training, grid: "
                   "{learning_rate: [1.0e-3, 2.0e-3]}}]",
         "final.seeds": "1", "final.baseline": "false", "final.compare_base": "false"}  # fmt: skip
# The training stage's first trial pauses after its epoch-1 checkpoint: the moment the storage
# goes away, before its epoch-2 checkpoint.
PAUSE = {"stage": "training", "point": {"learning_rate": 1e-3}, "epoch": 1, "mode": "pause"}


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONUNBUFFERED": "1", "RAY_ADDRESS": "local", **extra}


def _cli(*args: str, env: dict[str, str] | None = None, timeout: int = 400):
    return subprocess.run([sys.executable, "-m", "search.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env=env or _env())  # fmt: skip


def _args(storage: str, name: str, market: Path) -> list[str]:
    """`liquid-search run` of the SHORT spec."""
    return ["run", "--config", str(SMOKE), "--storage", storage, "--name", name,
            f"data.source={market}", *(f"{k}={v}" for k, v in SHORT.items())]  # fmt: skip


@pytest.fixture(scope="module")
def reference(tiny_market: Path, ray_local, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The SHORT spec run uninterrupted, in this process."""
    run_dir = tmp_path_factory.mktemp("reference") / "short"
    run_search(smoke_spec(tiny_market, **SHORT), run_dir)
    return run_dir


def _same_results(run_dir: str, reference: Path) -> None:
    """Every stage's selection and the final phase's metrics, as the uninterrupted run's."""
    got, want = RunDir(run_dir).load(), RunDir(str(reference)).load()
    assert [s.name for s in got.stages] == [s.name for s in want.stages] == ["architecture",
                                                                            "training"]  # fmt: skip
    for st in (s.name for s in want.stages):
        a, b = got.stage(st).best, want.stage(st).best
        assert (a.point, a.value) == (b.point, b.value), st
        assert [r.best_metrics for r in got.stage(st).rows] == [
            r.best_metrics for r in want.stage(st).rows
        ], st
    for role, part in want.summary.models.items():
        mine = got.summary.models[role]
        assert (mine.val, mine.test, mine.costs) == (part.val, part.test, part.costs), role


def _paused_run(args: list[str], marker: Path, env: dict[str, str], log: Path):
    """The driver, running `args` with the training stage's first trial paused after its
    epoch-1 checkpoint (`PAUSE`) until `release(proc)`; killed at the end whatever happens."""
    fault = {**PAUSE, "marker": str(marker), "release": str(marker) + ".go"}
    return faulted_driver(fault, args, log, env)


def _release(proc: subprocess.Popen, marker: Path, log: Path) -> str:
    """Let the paused trial go on; the driver's output once it has ended."""
    Path(str(marker) + ".go").touch()
    proc.wait(timeout=300)
    return log.read_text()


def _one_line(out: str, run_dir: str, what: str) -> None:
    last = out.strip().splitlines()[-1]
    assert last.startswith(f"error: the run's storage failed at {run_dir}"), out[-4000:]
    assert what in last and f"liquid-search resume {run_dir}" in last, last
    assert "Traceback" not in out, out[-6000:]


# ---------------------------------------------------------------- a disk that fills up


@pytest.fixture
def small_disk(tmp_path: Path):
    """A 64 MB tmpfs (CI runs as root; elsewhere the test is skipped with the reason)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root (CI runs as root)")
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mnt)],
                       capture_output=True, text=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def _fill(directory: Path) -> Path:
    """Write zeros into `directory` until its filesystem is full (unbuffered: nothing is left
    to flush, and fail, on close)."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for size in (1 << 20, 4096, 1):
            try:
                while os.write(fd, b"\0" * size):
                    pass
            except OSError:
                pass
    finally:
        os.close(fd)
    return filler


def test_a_full_disk_mid_stage_ends_in_one_line_and_resume_finishes_the_run(
    small_disk: Path, tiny_market: Path, reference: Path, tmp_path: Path
):
    run_dir = str(small_disk / "runs" / "full")
    marker = tmp_path / "paused"
    args = _args(str(small_disk / "runs"), "full", tiny_market)
    with _paused_run(args, marker, _env(), tmp_path / "driver.log") as proc:
        filler = _fill(small_disk)
        out = _release(proc, marker, tmp_path / "driver.log")
    assert proc.returncode == 3, out[-4000:]
    _one_line(out, run_dir, "no space left on the device")
    assert RunDir(run_dir).load().stage("architecture").done, "what was written stays readable"

    filler.unlink()
    r = _cli("resume", run_dir)
    assert r.returncode == 0, r.stderr[-4000:]
    _same_results(run_dir, reference)


# ---------------------------------------------------------------- a store that goes away


class Relay:
    """A TCP relay to a server, on a port of its own, that can be taken down (connections
    refused, open ones cut) and brought back on the same port."""

    def __init__(self, target: int) -> None:
        self.target, self.port = target, free_port()
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> Relay:
        srv = socket.socket()
        srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        srv.bind(("127.0.0.1", self.port))
        srv.listen(64)
        self._server = srv
        threading.Thread(target=self._accept, args=(srv,), daemon=True).start()
        return self

    def stop(self) -> None:
        srv, self._server = self._server, None
        if srv is not None:
            srv.close()
        with self._lock:
            for c in self._conns:
                c.close()
            self._conns.clear()

    def _accept(self, srv: socket.socket) -> None:
        while True:
            try:
                client, _ = srv.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory, tiny_market: Path, spawns_ray):
    """moto's S3 server behind a `Relay`; the environment a client needs to reach it."""
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"),
                             "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log)  # fmt: skip
    deadline = time.time() + 60
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=2)
            break
        except OSError:
            assert proc.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.3)
    admin = pafs.S3FileSystem(endpoint_override=f"127.0.0.1:{port}", scheme="http",
                              access_key="testing", secret_key="testing",
                              allow_bucket_creation=True)  # fmt: skip
    admin.create_dir("liquid")
    relay = Relay(port).start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{relay.port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}  # fmt: skip
    yield relay, env
    relay.stop()
    proc.terminate()
    proc.wait(timeout=30)


def test_an_object_store_that_stops_answering_mid_stage_then_resume(
    store, tiny_market: Path, reference: Path, tmp_path: Path
):
    relay, s3 = store
    env = _env(**s3)
    run_dir = "s3://liquid/runs/away"
    marker = tmp_path / "paused"
    args = _args("s3://liquid/runs", "away", tiny_market)
    with _paused_run(args, marker, env, tmp_path / "driver.log") as proc:
        relay.stop()
        out = _release(proc, marker, tmp_path / "driver.log")
    assert proc.returncode == 3, out[-4000:]
    _one_line(out, run_dir, "the object store does not answer")

    relay.start()
    r = _cli("resume", run_dir, env=env)
    assert r.returncode == 0, r.stderr[-4000:]
    os.environ.update(s3)  # this process reads the bucket too
    try:
        _same_results(run_dir, reference)
    finally:
        for k in s3:
            os.environ.pop(k, None)


# ---------------------------------------------------------------- one driver per run


def test_a_second_driver_on_the_same_run_refuses_in_one_line(tiny_market: Path, tmp_path: Path):
    """While a run is in flight, `run` of the same name, `resume` and `stage` of it each refuse
    in one line naming the driver that holds it; `status` reads it meanwhile."""
    marker = tmp_path / "paused"
    storage = tmp_path / "runs"
    args = _args(str(storage), "x", tiny_market)
    with _paused_run(args, marker, _env(), tmp_path / "driver.log") as proc:
        run_dir = str(storage / "x")
        for cmd in (args, ["resume", run_dir], ["stage", "training", "--run", run_dir]):
            r = _cli(*cmd, timeout=120)
            err = r.stderr.strip()
            assert r.returncode == 4, (cmd, err[-3000:])
            assert err.splitlines()[-1].startswith(f"error: {run_dir} is being driven by "), err
            assert f"pid {proc.pid}" in err and f"liquid-search status {run_dir} --watch" in err
        r = _cli("status", run_dir, timeout=120)
        assert r.returncode == 0 and "[architecture] 1/1 done" in r.stdout, r.stderr[-3000:]
        out = _release(proc, marker, tmp_path / "driver.log")
    assert proc.returncode == 0, out[-3000:]
    assert not (storage / "x" / "lease.json").exists(), "the lease is given back"

"""A real multi-node Ray cluster on this machine, for the cluster tests.

The nodes are `ray.cluster_utils.Cluster` nodes (each its own raylet, object store and workers),
held by a child process (`python -m tests.cluster_util SPEC`) that takes one JSON command a line
on stdin: kill a worker node, add one; EOF shuts the cluster down. Why a child and not the test
process itself:
- The pytest process may already hold the session's local Ray (`ray_local`); `Cluster.shutdown()`
  resets this process's internal-KV client and `Cluster.add_node()` rewrites the "current cluster"
  file, either of which would break that Ray under the tests that share it.
- Every Ray file of the cluster lives under one private directory (`RAY_TMPDIR`): its
  `ray_current_cluster` file can't make another `ray.init()` on this (shared) machine join our
  cluster, and sockets stay short enough for AF_UNIX.
- Every process the cluster starts (GCS, raylets, workers, dashboard, job drivers) inherits a
  marker variable, so `leftover()` finds exactly ours, without `ray stop`, which would end every
  Ray process of this user on the machine, other sessions' included.

Token auth is on (`RAY_AUTH_MODE=token`, a fresh token in a private `RAY_AUTH_TOKEN_PATH`), as on
a real cluster; clients get the same settings from `LocalCluster.env()`.
"""

from __future__ import annotations

import json
import os
import queue
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MARKER = "LIQUID_SEARCH_TEST_CLUSTER"
# Inherited settings that would point our processes at another Ray or another token.
_DROP_ENV = ("RAY_ADDRESS", "RAY_JOB_ID", "RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN",
             "RAY_AUTH_TOKEN_PATH", "RAY_API_SERVER_ADDRESS", MARKER)  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalCluster:
    """A head plus worker nodes, started by `start()` and ended by `stop()` (or `with`).

    Args:
        head_cpus: CPUs the head advertises (the driver of a search connects to the head).
        head_gpus: GPUs the head advertises (whether or not the machine has them).
        worker_cpus: CPUs of each worker node, one entry per node.
        object_store_mb: object store of every node.
        dashboard: start the dashboard (and with it the Jobs REST API) on a free port.
        client: start the Ray Client server on the head, on a free port (`client_address`).
        metrics: give every node a metrics export port (`info["metrics_ports"]`) and report
            metrics every second.
        system_config: RayConfig overrides for the whole cluster.
    """

    def __init__(
        self,
        *,
        head_cpus: int = 1,
        head_gpus: int = 0,
        worker_cpus: tuple[int, ...] = (1,),
        object_store_mb: int = 250,
        dashboard: bool = False,
        client: bool = False,
        metrics: bool = False,
        system_config: dict[str, Any] | None = None,
    ) -> None:
        self.spec = {
            "head_cpus": head_cpus,
            "head_gpus": head_gpus,
            "worker_cpus": list(worker_cpus),
            "object_store_mb": object_store_mb,
            "dashboard": dashboard,
            "client": client,
            "metrics": metrics,
            "system_config": system_config or {},
        }
        self.dir: Path | None = None
        self._stopped = False
        self.info: dict[str, Any] = {}
        self._proc: subprocess.Popen | None = None
        self._lines: queue.Queue[str | None] = queue.Queue()

    # ------------------------------------------------------------ client side

    def env(self) -> dict[str, str]:
        """Environment for a process that talks to this cluster (driver, `ray` CLI)."""
        assert self.dir is not None, "start() the cluster first"
        env = {k: v for k, v in os.environ.items() if k not in _DROP_ENV}
        env.update(
            RAY_TMPDIR=str(self.dir),
            RAY_AUTH_MODE="token",
            RAY_AUTH_TOKEN_PATH=str(self.dir / "auth_token"),
            # The job driver runs `liquid-search` from PATH: the console script of this venv.
            PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
            PYTHONUNBUFFERED="1",
            RAY_AIR_NEW_OUTPUT="0",
            **{MARKER: str(self.dir)},
        )
        return env

    @property
    def token(self) -> str:
        assert self.dir is not None
        return (self.dir / "auth_token").read_text().strip()

    @property
    def address(self) -> str:
        return self.info["address"]

    @property
    def client_address(self) -> str:
        return f"ray://127.0.0.1:{self.info['client_port']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.info['dashboard']}"

    @property
    def log(self) -> str:
        """The cluster process's own output (Ray's startup and shutdown messages)."""
        path = self.dir / "cluster.log" if self.dir else None
        return path.read_text(errors="replace")[-5000:] if path and path.exists() else ""

    def start(self, timeout: float = 120) -> LocalCluster:
        # Short and private: Ray's socket paths under it must fit AF_UNIX's 107 characters.
        self.dir = Path(
            tempfile.mkdtemp(prefix="lsc-", dir="/tmp" if os.path.isdir("/tmp") else None)
        )
        token = self.dir / "auth_token"
        token.write_text(secrets.token_hex(32))
        token.chmod(0o600)
        spec = dict(self.spec)
        if spec["dashboard"]:
            spec["dashboard_port"] = free_port()
        # The head's agent port defaults to 52365, which another Ray on this machine may hold.
        spec["agent_port"] = free_port()
        if spec["client"]:
            spec["client_port"] = free_port()
        if spec["metrics"]:
            spec["metrics_ports"] = [free_port() for _ in range(1 + len(spec["worker_cpus"]))]
            spec["system_config"] = {"metrics_report_interval_ms": 1000, **spec["system_config"]}
        with open(self.dir / "cluster.log", "w") as log:
            # Its own session: a signal meant for pytest doesn't reach the nodes half-way; they
            # go down through stop() (or when pytest dies and the child's stdin closes).
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "tests.cluster_util", json.dumps(spec)],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True, cwd=ROOT,
                env=self.env(), start_new_session=True,
            )  # fmt: skip
        threading.Thread(target=self._read, daemon=True).start()
        try:
            self.info = self._reply(timeout)
        except BaseException:
            self.stop()
            raise
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def _reply(self, timeout: float) -> dict[str, Any]:
        try:
            line = self._lines.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError(
                f"the cluster did not answer in {timeout:.0f}s:\n{self.log}"
            ) from None
        if line is None:
            raise RuntimeError(f"the cluster process ended:\n{self.log}")
        return json.loads(line)

    def _call(self, timeout: float = 60, **cmd: Any) -> dict[str, Any]:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(json.dumps(cmd) + "\n")
        self._proc.stdin.flush()
        return self._reply(timeout)

    def kill_worker(self, node_id: str) -> None:
        """SIGKILL every process of a worker node, as when its machine dies."""
        self._call(op="kill", node_id=node_id)

    def add_worker(self, num_cpus: int = 1) -> str:
        """Start another worker node; returns its node id."""
        return self._call(op="add", num_cpus=num_cpus)["node_id"]

    def stop(self, timeout: float = 60) -> list[str]:
        """Shut the cluster down, then kill whatever of it still runs; safe to call twice.

        Returns:
            The processes that outlived the shutdown (`pid command`), before they were killed.
        """
        proc, self._proc = self._proc, None
        if self.dir is None or self._stopped:
            return []
        self._stopped = True
        if proc is not None:
            try:
                proc.stdin.close()  # EOF: Cluster.shutdown() in the child
            except OSError:
                pass
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        left = self.leftover(wait=10)
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.leftover(wait=10):
            raise RuntimeError(f"processes of the cluster survive SIGKILL: {self.leftover()}")
        shutil.rmtree(self.dir, ignore_errors=True)
        return [f"{pid} {cmd}" for pid, cmd in left.items()]

    def leftover(self, wait: float = 0) -> dict[int, str]:
        """This cluster's processes still alive (by the marker in their environment)."""
        deadline = time.time() + wait
        while True:
            found = _marked(str(self.dir)) if self.dir else {}
            if not found or time.time() >= deadline:
                return found
            time.sleep(0.2)

    def __enter__(self) -> LocalCluster:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def _marked(value: str) -> dict[int, str]:
    """pid -> command line of this user's processes whose environment has MARKER=value."""
    needle = f"\0{MARKER}={value}\0".encode()
    found = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:  # other users' processes and ones that just ended can't be read: not ours
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in b"\0" + f.read() + b"\0":
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        found[int(entry)] = cmd[:200]
    return found


# ---------------------------------------------------------------- cluster side


def _serve(spec: dict[str, Any]) -> None:
    from ray.cluster_utils import Cluster

    # Ray prints to stdout too; keep it for the JSON replies only.
    reply_to = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)

    def reply(obj: dict[str, Any]) -> None:
        reply_to.write(json.dumps(obj) + "\n")
        reply_to.flush()

    store = spec["object_store_mb"] * 2**20
    head: dict[str, Any] = {
        "num_cpus": spec["head_cpus"],
        "num_gpus": spec.get("head_gpus", 0),
        "object_store_memory": store,
        "include_dashboard": spec["dashboard"],
        "dashboard_agent_listen_port": spec["agent_port"],
        "_system_config": spec["system_config"],
    }
    if spec["dashboard"]:
        head.update(dashboard_host="127.0.0.1", dashboard_port=spec["dashboard_port"])
    if spec["client"]:
        head["ray_client_server_port"] = spec["client_port"]
    ports = iter(spec.get("metrics_ports") or [])
    if spec["metrics"]:
        head["metrics_export_port"] = next(ports)
    cluster = Cluster(initialize_head=True, head_node_args=head)
    try:
        workers = {}
        for cpus in spec["worker_cpus"]:
            extra = {"metrics_export_port": next(ports)} if spec["metrics"] else {}
            node = cluster.add_node(num_cpus=cpus, object_store_memory=store, **extra)
            workers[node.node_id] = node
        cluster.wait_for_nodes()
        reply({"address": cluster.address, "dashboard": cluster.webui_url,
               "head": cluster.head_node.node_id, "workers": list(workers),
               "client_port": spec.get("client_port"),
               "metrics_ports": spec.get("metrics_ports")})  # fmt: skip
        for line in sys.stdin:
            cmd = json.loads(line)
            if cmd["op"] == "kill":
                cluster.remove_node(workers.pop(cmd["node_id"]), allow_graceful=False)
                reply({"killed": cmd["node_id"]})
            elif cmd["op"] == "add":
                node = cluster.add_node(num_cpus=cmd["num_cpus"], object_store_memory=store)
                workers[node.node_id] = node
                reply({"node_id": node.node_id})
            else:
                raise ValueError(f"unknown command {cmd!r}: expected op kill or add")
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    _serve(json.loads(sys.argv[1]))

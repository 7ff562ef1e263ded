"""The cluster recipes of README.md and cluster/README.md, run exactly as written.

Each test copies the local-cluster commands out of the document (the fenced bash block that
starts the cluster, up to `cluster/local.sh stop`) and runs them with bash from the repo root,
in a private HOME (so the token, the synthetic market cache and the runs are the test's own) and
a private RAY_TEMP_DIR: start a head and two workers, submit the smoke search as a Ray job with
the working dir and runtime env, follow it to SUCCEEDED, list the run where the docs say it is,
stop the cluster. One liberty: the cluster gets free ports through local.sh's documented
settings (RAY_PORT, DASHBOARD_PORT, AGENT_PORT_BASE) and the commands' `127.0.0.1:8265` names
that dashboard port, so another Ray on the machine (a parallel test's, under `pytest -n 2`)
cannot collide with it. cluster/README.md's block begins with setting up
the environment (`source .venv/bin/activate`, `pip install .`); that is what the test process
already has, so those two lines are left out.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.cluster_util import free_port

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.cluster


def recipe(doc: Path) -> list[str]:
    """The lines of the doc's bash block that starts `cluster/local.sh start`, up to its stop."""
    for block in re.findall(r"```bash\n(.*?)```", doc.read_text(), flags=re.S):
        lines = block.splitlines()
        starts = [i for i, ln in enumerate(lines) if ln.startswith("cluster/local.sh start")]
        stops = [i for i, ln in enumerate(lines) if ln.startswith("cluster/local.sh stop")]
        if starts and stops:
            return lines[: stops[0] + 1]
    raise AssertionError(f"{doc}: no bash block with `cluster/local.sh start` ... `stop`")


def _free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def _free_run(n: int) -> int:
    """The first of `n` consecutive free ports (local.sh gives worker i AGENT_PORT_BASE + i)."""
    while True:
        base = free_port()
        if all(_free(base + i) for i in range(1, n)):
            return base


def _runnable(doc: str) -> list[str]:
    return [ln for ln in recipe(ROOT / doc)
            if not ln.startswith(("source .venv/bin/activate", "pip install ."))]  # fmt: skip


def test_the_readme_recipe_is_the_cluster_readme_one():
    """README.md's recipe is cluster/README.md's, command for command (less its `status` line;
    the comments differ), so running the latter, below, runs both as written."""

    def commands(doc: str) -> list[str]:
        return [re.sub(r"\s+#.*$", "", ln).rstrip() for ln in _runnable(doc)]

    short, full = commands("README.md"), commands("cluster/README.md")
    it = iter(full)
    assert all(any(ln == other for other in it) for ln in short), (short, full)
    assert len(short) >= 5


@pytest.mark.parametrize("doc", ["cluster/README.md"])
def test_the_documented_local_cluster_recipe_works_as_written(doc, tmp_path):
    dashboard = free_port()
    lines = [ln.replace("127.0.0.1:8265", f"127.0.0.1:{dashboard}") for ln in _runnable(doc)]
    assert any(ln.startswith("ray job submit") for ln in lines) and len(lines) >= 5
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(
        HOME=str(home),
        # Short: Ray's socket paths under it must fit AF_UNIX's 107 characters.
        RAY_TEMP_DIR=str(Path(os.environ.get("TMPDIR", "/tmp")) / f"lsr-{os.getpid()}"),
        PATH=os.path.dirname(sys.executable) + os.pathsep + env.get("PATH", ""),
        PYTHONUNBUFFERED="1",
        RAY_PORT=str(free_port()),
        DASHBOARD_PORT=str(dashboard),
        AGENT_PORT_BASE=str(_free_run(3)),
    )
    script = "set -euo pipefail\n" + "\n".join(lines) + "\n"
    try:
        r = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True,
                           text=True, timeout=600)  # fmt: skip
    finally:
        subprocess.run(["cluster/local.sh", "stop"], cwd=ROOT, env=env, capture_output=True,
                       timeout=120)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    assert re.search(r"Job 'raysubmit_\w+' succeeded", out), out[-4000:]
    # The run is where the docs say: ~/liquid-search/runs/<run name>, complete.
    runs = list((home / "liquid-search" / "runs").glob("run-*"))
    assert len(runs) == 1 and (runs[0] / "summary.json").is_file(), out[-4000:]
    assert f"{runs[0]}\n" in r.stdout  # the job printed its run directory
    assert "Stopped the cluster" in out

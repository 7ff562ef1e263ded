"""The Python API reads a run as `liquid-search status` does: `RunView`'s DataFrames against the
status table, for a finished run and one in flight (here, local; on S3 in test_cloud.py; in
flight while a trial hangs in test_resume.py), and the example notebook executed headless."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from search import api
from search.report.document import fmt
from search.status import _COLS

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "examples" / "quickstart.ipynb"


def status_tables(text: str) -> dict[str, list[dict[str, str]]]:
    """The trial table of each stage in `liquid-search status` output, as cells by header."""
    out: dict[str, list[dict[str, str]]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^\[(\w+)\] \d+/\d+ done", line)
        if not m:
            continue
        header = re.split(r"\s{2,}", lines[i + 1].strip())
        rows = []
        for row in lines[i + 3 :]:
            if not row.strip() or row.startswith(("[", "  error", "per point", "tied with")):
                break
            rows.append(dict(zip(header, re.split(r"\s{2,}", row.strip()), strict=False)))
        out[m.group(1)] = rows
    return out


def assert_view_matches_status(run_dir: str, env: dict[str, str] | None = None) -> api.RunView:
    """`open_run(run_dir)`'s trial DataFrames hold what `liquid-search status` prints."""
    view = api.open_run(run_dir)
    r = subprocess.run([sys.executable, "-m", "search.cli", "status", run_dir], text=True,
                       capture_output=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    tables = status_tables(r.stdout)
    assert tables, r.stdout
    for stage, rows in tables.items():
        df = view.trials(stage)
        assert len(df) == len(rows), (stage, df, r.stdout)
        keys = list(view.spec.stage(stage).grid)
        for (_, t), printed in zip(df.iterrows(), rows, strict=True):
            assert printed["status"] == t["status"] and int(printed["epochs"]) == t["epochs"]
            for k in keys:
                assert float(printed[k]) == pytest.approx(t[k]), (stage, k)
            for c in _COLS:
                want = fmt(t[c], c) if not (isinstance(t[c], float) and math.isnan(t[c])) else "-"
                assert printed[c] == want, (stage, c, printed, t.to_dict())
    return view


def test_a_finished_run_reads_as_status_prints_it(smoke_run: Path):
    view = assert_view_matches_status(str(smoke_run))
    assert view.state == "complete" and view.stages == ["architecture", "training", "dropout"]
    full = view.get_dataframe()
    assert len(full) == 6 and set(full["stage"]) == set(view.stages)
    for stage, best in view.best_configs.items():
        chosen = view.trials(stage).loc[lambda d, s=stage: d["ic_sharpe"].idxmax()]
        assert best["value"] == pytest.approx(chosen["ic_sharpe"]), stage
    s = view.summary
    fm = view.final_metrics()
    assert fm.loc["final", "ic_sharpe"] == pytest.approx(s.final.test["ic_sharpe"])
    assert list(fm.index) == ["final", "base", "baseline", "oracle"]
    assert list(view.seeds()["seed"][:3]) == [0, 1000, 2000]
    assert set(view.figures()) >= {"grid_architecture.png", "test_cumulative_returns.png"}
    ic = view.series("final", "test")["ic"]
    assert ic.mean() == pytest.approx(s.final.test["mean_ic"])


def test_a_run_that_is_not_there_is_one_error(tmp_path):
    with pytest.raises(api.USER_ERRORS, match="does not exist, so it is not a run directory"):
        api.open_run(str(tmp_path / "none"))


def test_the_example_notebook_runs_headless(tmp_path, spawns_ray):
    """examples/quickstart.ipynb, stored without outputs, runs top to bottom in a fresh kernel."""
    nb = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "stored bare"
    env = {"RAY_ADDRESS": "local"}  # a private Ray, even if a cluster runs here
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3",
                       resources={"metadata": {"path": str(tmp_path)}}).execute()  # fmt: skip
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    outputs = "".join(o.get("text", "") + str(o.get("data", {}).get("text/plain", ""))
                      for c in nb.cells if c.cell_type == "code" for o in c.outputs)  # fmt: skip
    assert "RunView(" in outputs and "complete" in outputs
    pngs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if "image/png" in o.get("data", {})]  # fmt: skip
    assert len(pngs) >= 2, "the report's figures show in the notebook"
    assert "score" in outputs and "Test mean IC over 3 seed(s)" in outputs

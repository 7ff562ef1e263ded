"""The run report: files, valid PNGs, no broken image in a real browser, numbers that match."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ranker.costs import CostModel, books_turnover, net_returns
from ranker.metrics import ANN
from search.analysis import analyze, point_table
from search.report import write_report
from search.report.figures import grid_figure
from search.rundir import RunDir, Series
from search.spec import StageSpec

CHROMIUM = next(
    filter(None, map(shutil.which, ("chromium", "chromium-browser", "google-chrome"))), None
)
# Writes the number of images, and of images that failed to decode, into the DOM on load.
IMG_CHECK = """<script>
window.addEventListener("load", function () {
  var imgs = Array.from(document.images);
  var broken = imgs.filter(function (i) { return !i.complete || i.naturalWidth === 0; });
  var d = document.createElement("div");
  d.id = "img-check";
  d.setAttribute("data-total", imgs.length);
  d.setAttribute("data-broken", broken.length);
  document.body.appendChild(d);
});
</script>"""


@pytest.fixture(scope="module")
def smoke_report(smoke_run: Path, tiny_dataset) -> tuple[Path, Path]:
    run = RunDir(str(smoke_run)).load()
    md, html = write_report(dataclasses.replace(run, analysis=analyze(run, tiny_dataset.test, k=5)))
    return Path(md), Path(html)


def _check_png(path: Path) -> None:
    assert path.stat().st_size > 1000, f"{path}: {path.stat().st_size} bytes"
    with Image.open(path) as im:
        assert im.format == "PNG"
        px = np.asarray(im.convert("RGB"))
    assert px.shape[0] >= 200 and px.shape[1] >= 300, f"{path}: {px.shape}"
    ink = (px < 200).any(axis=2).mean()  # share of pixels that are not (near) white
    assert ink > 0.01, f"{path}: almost blank ({ink:.2%} non-background pixels)"


def test_report_files_and_pngs(smoke_report, smoke_run: Path):
    md, html = smoke_report
    assert md == smoke_run / "report.md" and html == smoke_run / "report.html"
    text = md.read_text()
    pngs = sorted((smoke_run / "report").glob("*.png"))
    names = {p.name for p in pngs}
    assert {"grid_architecture.png", "grid_training.png", "grid_dropout.png", "val_vs_test.png",
            "test_cumulative_returns.png", "test_daily_ic.png"} <= names  # fmt: skip
    assert set(re.findall(r"\]\(report/([^)]+\.png)\)", text)) == names
    for p in pngs:
        _check_png(p)
    for heading in ("Is the winner real?", "Validation against test", "Liquid universe vs full"):
        assert heading in text
    page = html.read_text()
    assert page.count('src="data:image/png;base64,') == len(pngs)
    assert "report/" not in re.sub(r"data:image/png;base64,[^\"]+", "", page), "HTML is standalone"


def _browser_check(page: Path, tmp_path: Path) -> tuple[int, int]:
    """(images, broken images) as headless Chromium sees the page."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", IMG_CHECK + "</body>"))
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
           "--no-first-run", "--disable-background-networking", "--disable-component-update",
           "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom",
           probe.as_uri()]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    m = re.search(r'id="img-check" data-total="(\d+)" data-broken="(\d+)"', r.stdout)
    assert m, f"no image check in the DOM (rc {r.returncode}): {r.stderr[-2000:]}"
    return int(m.group(1)), int(m.group(2))


@pytest.mark.skipif(
    CHROMIUM is None and not os.environ.get("CI"),
    reason="needs Chromium: apt-get update && apt-get install -y chromium",
)
def test_html_has_no_missing_image_in_chromium(smoke_report, smoke_run: Path, tmp_path: Path):
    _, html = smoke_report
    assert CHROMIUM, "CI must install Chromium: apt-get update && apt-get install -y chromium"
    n_png = len(list((smoke_run / "report").glob("*.png")))
    assert _browser_check(html, tmp_path) == (n_png, 0)
    # The probe sees a broken image when there is one.
    broken = tmp_path / "broken.html"
    broken.write_text(
        html.read_text().replace("</body>", '<img src="data:image/png;base64,AAAA"></body>')
    )
    assert _browser_check(broken, tmp_path) == (n_png + 1, 1)


def test_net_series_match_the_driver_cost_metrics(smoke_run: Path):
    """The report's curves come from the saved series through the same formulas."""
    summary = json.loads((smoke_run / "summary.json").read_text())
    costs = summary["final"]["costs"]
    z = Series.from_bytes((smoke_run / "final" / "final_test_daily.npz").read_bytes())
    to = books_turnover(z.long_symbols, z.short_symbols)
    series = net_returns(z.long, z.short, to, CostModel(**summary["costs_model"]))
    assert np.mean(series["gross"]["ls"]) * ANN == pytest.approx(
        summary["final"]["test"]["ls_return"]
    )
    for prefix, kind in (("", "flat"), ("to_", "turnover")):
        for book in ("long", "short", "ls"):
            got = np.mean(series[kind][book]) * ANN
            assert got == pytest.approx(costs[f"{prefix}{book}_net_return"], rel=1e-9, abs=1e-12)


def test_report_of_a_replicated_two_key_stage(grid_run: Path):
    run = RunDir(str(grid_run)).load()
    md, _ = write_report(run)
    text = Path(md).read_text()
    assert "## Stage architecture" in text and "(mean ± std)" in text
    assert "Final model on the test set" not in text, "no final model on a partial run"
    _check_png(grid_run / "report" / "grid_architecture.png")

    # The heatmap's cell labels are the per-point mean ± std over the replicates.
    st = StageSpec("architecture", {"latent_scale": (0.5, 1.0), "news_alpha": (0.6, 1.0)},
                   replicates=2)  # fmt: skip
    fig = grid_figure(st, run.stage("architecture").rows, "ic_sharpe", {})
    labels = sorted(t.get_text() for t in fig.axes[0].texts)
    expected = sorted(f"{p.mean['ic_sharpe']:.2f}\n± {p.std['ic_sharpe']:.2f}"
                      for p in point_table(run, "architecture"))  # fmt: skip
    assert labels == expected

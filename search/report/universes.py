"""The report's universe section: what the point-in-time and the full-period rule keep over
time, and the final model on the test set as each picks it (the gap is lookahead)."""

from __future__ import annotations

import numpy as np
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from search.report.document import Doc, fmt, png
from search.results import Summary
from search.rundir import Run

_LABELS = {"full_period": "full period (looks ahead)", "trailing": "point in time (trailing)"}


def universe_section(doc: Doc, run: Run, summary: Summary) -> None:
    """The two universe rules side by side (nothing when the run did not compare them)."""
    u = summary.universes
    if u is None:
        return
    doc.heading(3, "Universe rules: point in time vs full period (test set)")
    doc.para(
        "The notebook keeps a stock when its mean dollar volume over the whole prices file "
        "clears the threshold, which uses the future; the point-in-time rule keeps it on a date "
        f"when its mean over the {u.window} trading days before clears it. Both rows below "
        f"score the same final model; the run trained on the {_LABELS[u.rule]} universe. "
        + u.sentence
    )
    rows = []
    for rule, r in u.by_rule.items():
        oracle = (r.oracle_test or {}).get("mean_ic")
        rows.append([
            _LABELS.get(rule, rule), f"{r.names_per_test_day:.0f}",
            f"{r.turnover_per_day:.2%}", f"{r.test_rows:,}",
            *(fmt(r.test[key], key) for key in ("ic_sharpe", "mean_ic", "ls_sharpe")),
            fmt(oracle, "mean_ic"),
        ])  # fmt: skip
    doc.table(["universe", "names a test day", "turnover a day", "test news rows",
               "test ic_sharpe", "test mean_ic", "test ls_sharpe", "oracle mean_ic"], rows)  # fmt: skip
    timeline = run.dir.read_universe_timeline()
    if timeline is not None:
        doc.image("universes.png", png(universe_figure(timeline)),
                  "Names each universe rule keeps a day, and how many differ")  # fmt: skip


def universe_figure(t: dict[str, np.ndarray]) -> Figure:
    """Names a day under each rule, and the names only one of them keeps."""
    fig = Figure(figsize=(11, 3.8), layout="constrained")
    ax = fig.subplots()
    dates = t["date"].astype("datetime64[D]")
    for rule, color in (("full_period", "#d62728"), ("trailing", "#1f77b4")):
        if f"{rule}_names" in t:
            ax.plot(dates, t[f"{rule}_names"], color=color, lw=1.2, label=_LABELS[rule])
    if "differ" in t:
        ax.fill_between(dates, 0, t["differ"], color="#999999", alpha=0.35,
                        label="kept by only one rule")  # fmt: skip
    locator = AutoDateLocator()
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.set_ylabel("names")
    ax.legend(loc="upper left", frameon=False)
    ax.grid(alpha=0.3)
    return fig

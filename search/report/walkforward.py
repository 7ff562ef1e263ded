"""The report of a walk-forward run: the pooled out-of-sample record, each fold's numbers, the
search against its base across folds, and the stability of each stage's choice; each fold's
own report is in its run directory (RUN_DIR/fold_<i>/report.html)."""

from __future__ import annotations

import time

import numpy as np
from matplotlib.figure import Figure

from ranker.costs import books_turnover, net_returns
from search.pooling import concatenate
from search.report.document import Doc, fmt, png, point_text
from search.results import WalkForward
from search.rundir import Run, Series

FOLD_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf")


def write_walk_forward_report(run: Run, wf: WalkForward) -> tuple[str, str]:
    """Write a walk-forward run's report.md (+ report/*.png) and report.html."""
    doc = Doc()
    name = run.path.rstrip("/").rsplit("/", 1)[-1]
    k = len(wf.folds)
    doc.heading(1, f"liquid-search report: {name} (walk-forward, {k} folds)")
    p = wf.pooled
    doc.para(
        f"Run directory {run.path}; report written {time.strftime('%Y-%m-%d %H:%M:%S')}. Each "
        f"fold is the whole search on its own dates ({wf.window} train window, its val window "
        f"right before its test window; the test windows are consecutive). Pooled out of "
        f"sample over the {p.n_dates} test dates of the {k} folds: IC Sharpe "
        f"{fmt(p.ic_sharpe)}, mean IC {fmt(p.mean_ic, 'mean_ic')} (t = {p.mean_ic_t:.2f}), L/S "
        f"Sharpe {fmt(p.ls_sharpe)} gross, {fmt(p.ls_net_sharpe)} net of flat costs, "
        f"{fmt(p.to_ls_net_sharpe)} net of turnover-aware costs."
        + (f" {wf.across.sentence}" if wf.across else "")
    )
    series = [run.dir.fold(f.index).read_final_series("final", "test") for f in wf.folds]
    have = [s for s in series if s is not None]
    if have:
        doc.image("walk_forward_returns.png", png(returns_figure(have, wf)),
                  "Cumulative out-of-sample L/S returns by fold and pooled")  # fmt: skip
    if wf.across is not None:
        doc.image("walk_forward_search_vs_base.png", png(search_vs_base_figure(wf)),
                  "Search vs base config by fold")  # fmt: skip
    doc.heading(2, "Folds")
    rows = []
    for f in wf.folds:
        d = f.search_vs_base.by_metric["mean_ic"] if f.search_vs_base else None
        rows.append([str(f.index), f.train_dates, f.val_dates, f.test_dates,
                     fmt(f.val.get(wf.metric), wf.metric), fmt(f.test.get("ic_sharpe")),
                     fmt(f.test.get("mean_ic"), "mean_ic"), fmt(f.test.get("ls_sharpe")),
                     fmt(f.costs.get("ls_net_sharpe")),
                     f"{d.diff:+.4f} ± {d.se:.4f}" if d else "-",
                     fmt((f.baseline_test or {}).get("ic_sharpe"))])  # fmt: skip
    doc.table(["fold", "train", "val", "test", f"val {wf.metric}", "test IC Sharpe",
               "test mean IC", "test L/S Sharpe", "net (flat)", "search - base (mean IC)",
               "baseline IC Sharpe"], rows)  # fmt: skip
    doc.heading(2, "Selection stability")
    doc.para("The point each stage chose in each fold, and how many folds agree with the most "
             "common choice (each fold's report lists its tied sets).")  # fmt: skip
    stab = wf.stability
    doc.table(["stage", *(f"fold {f.index}" for f in wf.folds), "folds agreeing"],
              [[st, *(point_text(p) for p in picks), f"{stab.agree[st]} of {len(picks)}"]
               for st, picks in stab.choices.items()])  # fmt: skip
    title = f"liquid-search report: {name}"
    return run.dir.write_report(doc.markdown(), doc.html(title), doc.images)


def returns_figure(series: list[Series], wf: WalkForward) -> Figure:
    """Cumulative L/S returns (gross and net of flat costs) of each fold on its test window,
    and of the pooled record."""
    fig = Figure(figsize=(11, 4.4), layout="constrained")
    ax = fig.subplots()
    z = concatenate(series)
    net = net_returns(z.long, z.short, books_turnover(z.long_symbols, z.short_symbols),
                      wf.costs_model)  # fmt: skip
    ax.plot(z.date, np.cumsum(z.ls), color="black", lw=2.0, label="pooled, gross")
    ax.plot(z.date, np.cumsum(net["flat"]["ls"]), "--", color="black", lw=1.4,
            label="pooled, net of flat costs")  # fmt: skip
    start = 0.0
    for i, s in enumerate(series):
        c = FOLD_COLORS[i % len(FOLD_COLORS)]
        ax.plot(s.date, start + np.cumsum(s.ls), color=c, lw=3.5, alpha=0.35,
                label=f"fold {wf.folds[i].index}")  # fmt: skip
        start += float(np.sum(s.ls))
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_ylabel("cumulative L/S return (sum of daily returns)")
    ax.set_title(
        "Out of sample, fold after fold: the L/S book of each fold's final model", fontsize=12
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="upper left", ncols=2)
    return fig


def search_vs_base_figure(wf: WalkForward) -> Figure:
    """Each fold's test mean IC of the searched config minus the base config's, with its
    standard error over seeds, and their mean across folds."""
    fig = Figure(figsize=(7.5, 4.0), layout="constrained")
    ax = fig.subplots()
    idx = [f.index for f in wf.folds if f.search_vs_base]
    diffs = [f.search_vs_base.by_metric["mean_ic"] for f in wf.folds if f.search_vs_base]
    ax.errorbar(idx, [d.diff for d in diffs], yerr=[d.se for d in diffs], fmt="o", capsize=4,
                color="#1f77b4", label="fold: difference ± s.e. over seeds")  # fmt: skip
    if wf.across is not None:
        ax.axhline(wf.across.mean, color="#d62728", lw=1.5,
                   label=f"mean across folds {wf.across.mean:+.4f} ± {wf.across.se:.4f}")  # fmt: skip
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_xticks(idx, [f"fold {i}" for i in idx])
    ax.set_ylabel("test mean IC: searched - base")
    ax.set_title("Did the search pay, fold by fold?", fontsize=12)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return fig

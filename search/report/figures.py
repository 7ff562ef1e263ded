"""The report's figures: the grid of each stage, val against test, cumulative returns and daily
IC. Drawn on `matplotlib.figure.Figure` (no pyplot, no global backend switch), so reporting works
in a driver process or a notebook alike."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
from matplotlib.colors import Normalize
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import PercentFormatter

from ranker.costs import CostModel, books_turnover, net_returns
from ranker.metrics import sharpe
from search.report.document import fmt, point_text
from search.results import Analysis, Summary, mean_std
from search.rundir import Series
from search.spec import StageSpec
from search.trial_result import TrialRow

ROLLING = 21  # trading days in the rolling mean of the daily test IC
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")


def _norm(values: np.ndarray) -> tuple[Normalize, str]:
    """A diverging scale symmetric about 0 when the values change sign, else viridis."""
    finite = values[np.isfinite(values)]
    lo, hi = (float(finite.min()), float(finite.max())) if len(finite) else (0.0, 1.0)
    if lo < 0 < hi:
        bound = max(-lo, hi)
        return Normalize(-bound, bound), "RdBu"
    if lo == hi:
        lo, hi = lo - 1, hi + 1
    return Normalize(lo, hi), "viridis"


def _cell_stats(
    rows: list[TrialRow], keys: tuple[str, str], metric: str
) -> dict[tuple[float, float], tuple[float, float]]:
    """(a, b) -> (mean, std over replicates of the mean over the other keys)."""
    by_rep: dict[tuple[float, float, int], list[float]] = {}
    for r in rows:
        key = (r.point[keys[0]], r.point[keys[1]], r.replicate)
        by_rep.setdefault(key, []).append(r.best_metrics[metric])
    cells: dict[tuple[float, float], list[float]] = {}
    for (a, b, _), vals in by_rep.items():
        cells.setdefault((a, b), []).append(float(np.mean(vals)))
    spread = {ab: mean_std(v) for ab, v in cells.items()}
    return {ab: (v.mean, v.std) for ab, v in spread.items()}


def grid_figure(
    st: StageSpec, rows: list[TrialRow], metric: str, selected: dict[str, Any],
    tied: tuple[dict[str, float], ...] = (),
) -> Figure:  # fmt: skip
    """The stage's grid: the selection metric over each pair of keys (one key: a line); the
    selected point boxed, the cells that hold a config tied with the winner (the stage's Model
    Confidence Set, `tied`) outlined in dashes."""
    ok = [r for r in rows if r.finished(metric) and st.contains(r.point)]
    keys = list(st.grid)
    replicated = st.replicates > 1
    if len(keys) == 1:
        return _grid_line(st, ok, metric, selected, tied)
    pairs = list(itertools.combinations(keys, 2))
    ncols = min(3, len(pairs))
    nrows = math.ceil(len(pairs) / ncols)
    stats = {pair: _cell_stats(ok, pair, metric) for pair in pairs}
    all_means = np.array([m for s in stats.values() for m, _ in s.values()], dtype=float)
    norm, cmap = _norm(all_means)
    fig = Figure(figsize=(5.2 * ncols, 4.3 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax in axes[len(pairs) :]:
        ax.set_visible(False)
    image = None
    for ax, (ka, kb) in zip(axes, pairs, strict=False):
        va, vb = list(st.grid[ka]), list(st.grid[kb])
        mat = np.full((len(va), len(vb)), np.nan)
        sd = np.full_like(mat, np.nan)
        for (a, b), (m, s) in stats[(ka, kb)].items():
            mat[va.index(a), vb.index(b)], sd[va.index(a), vb.index(b)] = m, s
        image = ax.imshow(np.ma.masked_invalid(mat), cmap=cmap, norm=norm, aspect="auto")
        ax.set_facecolor("#dddddd")
        for i, j in itertools.product(range(len(va)), range(len(vb))):
            if np.isnan(mat[i, j]):
                ax.text(j, i, "no trial", ha="center", va="center", fontsize=9, color="#555")
                continue
            rgba = image.cmap(norm(mat[i, j]))
            dark = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2] < 0.5
            label = f"{mat[i, j]:.2f}" + (f"\n± {sd[i, j]:.2f}" if replicated else "")
            ax.text(j, i, label, ha="center", va="center", fontsize=10,
                    color="white" if dark else "black")  # fmt: skip
        ax.set_xticks(range(len(vb)), [f"{v:g}" for v in vb])
        ax.set_yticks(range(len(va)), [f"{v:g}" for v in va])
        ax.set_xlabel(kb)
        ax.set_ylabel(ka)
        for i, j in {(va.index(t[ka]), vb.index(t[kb])) for t in tied
                     if t[ka] in va and t[kb] in vb}:  # fmt: skip
            ax.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, lw=1.5,
                                   ec="#333", ls="--"))  # fmt: skip
        if ka in selected and kb in selected and selected[ka] in va and selected[kb] in vb:
            i, j = va.index(selected[ka]), vb.index(selected[kb])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3, ec="black"))
        others = [k for k in keys if k not in (ka, kb)]
        sub = "mean over " + ", ".join([*others, *(["replicates"] if replicated else [])])
        ax.set_title(f"{ka} × {kb}" + (f"\n({sub})" if others or replicated else ""), fontsize=10)
    assert image is not None
    fig.colorbar(image, ax=axes[: len(pairs)].tolist(), label=f"val {metric}", shrink=0.9)
    how = "black box: selected point" + ("; dashed: holds a config tied with the winner (MCS)"
                                         if tied else "")  # fmt: skip
    fig.suptitle(f"Stage '{st.name}': validation {metric} over the grid\n({how})", fontsize=12)
    return fig


def _grid_line(
    st: StageSpec, ok: list[TrialRow], metric: str, selected: dict[str, Any],
    tied: tuple[dict[str, float], ...],
) -> Figure:  # fmt: skip
    (key,) = st.grid
    values = list(st.grid[key])
    fig = Figure(figsize=(6.4, 3.9), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(values))
    means, stds = [], []
    for x, v in zip(xs, values, strict=True):
        vals = [r.best_metrics[metric] for r in ok if r.point[key] == v]
        if len(vals) > 1:
            ax.scatter([x] * len(vals), vals, s=18, color="#999", zorder=2,
                       label="replicates" if x == 0 else None)  # fmt: skip
        spread = mean_std(vals)
        means.append(spread.mean)
        stds.append(spread.std)
    means_a, stds_a = np.array(means), np.array(stds)
    label = "mean ± std over replicates" if st.replicates > 1 else "trial"
    ax.errorbar(xs, means_a, yerr=stds_a if st.replicates > 1 else None, fmt="o-", color="#1f77b4",
                capsize=4, zorder=3, label=label)  # fmt: skip
    for x, m in zip(xs, means_a, strict=True):
        if np.isfinite(m):
            ax.annotate(f"{m:.2f}", (x, m), textcoords="offset points", xytext=(8, 4), fontsize=9)
    marks = sorted({values.index(t[key]) for t in tied if t[key] in values})
    if marks:
        ax.scatter(marks, means_a[marks], s=320, facecolor="none", edgecolor="#333", lw=1.2,
                   ls="--", zorder=4, label="tied with the winner (MCS)")  # fmt: skip
    if selected.get(key) in values:
        i = values.index(selected[key])
        ax.scatter([i], [means_a[i]], s=180, facecolor="none", edgecolor="black", lw=2, zorder=4,
                   label="selected")  # fmt: skip
    ax.axhline(0, color="#888", lw=0.8)
    ax.margins(y=0.15)
    ax.set_xticks(xs, [f"{v:g}" for v in values])
    ax.set_xlim(-0.5, len(values) - 0.5)
    ax.set_xlabel(key)
    ax.set_ylabel(f"val {metric}")
    ax.set_title(f"Stage '{st.name}': validation {metric} by {key}", fontsize=12)
    ax.grid(alpha=0.3)
    fig.legend(fontsize=9, loc="outside lower center", ncols=3, frameon=False)
    return fig


def val_test_figure(
    analysis: Analysis, summary: Summary | None, metric: str
) -> tuple[Figure, list[list[str]]] | None:
    """Val against test of each stage's top configs (plus the final and baseline models)."""
    fig = Figure(figsize=(7.2, 6.2), layout="constrained")
    ax = fig.subplots()
    table, xs, ys = [], [], []
    tags: dict[tuple[float, float], list[str]] = {}  # identical configs recur across stages
    for si, st in enumerate(analysis.stages):
        color = STAGE_COLORS[si % len(STAGE_COLORS)]
        for j, t in enumerate(st.top_test or ()):
            x, y = t.val.get(metric, math.nan), t.test.get(metric, math.nan)
            if not (math.isfinite(x) and math.isfinite(y)):
                continue
            tag = f"{si + 1}.{t.rank}"
            xe = t.val_std[metric] if t.n > 1 else None
            ye = t.test_std[metric] if t.n > 1 else None
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=color, ms=7, capsize=3,
                        mec="black" if t.selected else color,
                        label=f"{si + 1}: {st.stage}" if j == 0 else None)  # fmt: skip
            tags.setdefault((round(x, 9), round(y, 9)), []).append(tag)
            xs += [x - (xe or 0), x + (xe or 0)]
            ys += [y - (ye or 0), y + (ye or 0)]
            table.append([tag, st.stage, point_text(t.point), "yes" if t.selected else "",
                          str(t.n), fmt(x, metric), fmt(y, metric),
                          fmt(t.test["mean_ic"], "mean_ic"), fmt(t.test["ls_sharpe"])])  # fmt: skip
    # Alternate the label corners so that neighbouring points do not print on each other.
    # A thin leader line ties each label to its point.
    corners = ((12, -18), (12, 12), (-12, 12), (-12, -18))
    for i, ((x, y), same) in enumerate(tags.items()):
        dx, dy = corners[i % len(corners)]
        ax.annotate(" = ".join(same), (x, y), textcoords="offset points", xytext=(dx, dy),
                    ha="left" if dx > 0 else "right", va="center", fontsize=9,
                    arrowprops={"arrowstyle": "-", "color": "#888", "lw": 0.7})  # fmt: skip
    if not xs:
        return None
    models = summary.models if summary is not None else {}
    for name, marker, color in (("final", "*", "black"), ("baseline", "D", "#777")):
        part = models.get(name)
        if part is not None and metric in part.val and metric in part.test:
            x, y = part.val[metric], part.test[metric]
            label = "final model" if name == "final" else "baseline (full universe)"
            ax.scatter([x], [y], marker=marker, s=170 if marker == "*" else 70, color=color,
                       zorder=5, label=label)  # fmt: skip
            xs.append(x)
            ys.append(y)
    lo, hi = min(*xs, *ys), max(*xs, *ys)
    pad = 0.08 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], "--", color="#888", lw=1, label="y = x")
    ax.set_xlim(lo - pad, hi + pad)
    ax.set_ylim(lo - pad, hi + pad)
    ax.set_aspect("equal")
    ax.set_xlabel(f"validation {metric}")
    ax.set_ylabel(f"test {metric}")
    ax.set_title(f"Validation vs test {metric} of each stage's top configs\n"
                 "(label stage.rank; black edge: selected; bars: ± std over seeds)", fontsize=11)  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9, loc="best")
    return fig, table


def _date_axis(ax: Any) -> None:
    loc = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))


COMPARED_COLORS = ("#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf")


def cumulative_figure(
    z: Series, costs: CostModel, k: int, others: dict[str, Series] | None = None
) -> Figure:
    """The final model's cumulative test returns: gross, flat-cost net, turnover-aware net;
    and each existing model of `others` (`final.compare`, by name) beside it, gross, dotted."""
    to = books_turnover(z.long_symbols, z.short_symbols)
    series = net_returns(z.long, z.short, to, costs)
    dates = z.date
    others = others or {}
    fig = Figure(figsize=(12, 4.4), layout="constrained")
    axes = fig.subplots(1, 3, sharey=True)
    styles = {
        "gross": ("gross", "-", "#1f77b4"),
        "flat": ("net, flat costs", "--", "#d62728"),
        "turnover": ("net, turnover-aware", "-.", "#2ca02c"),
    }
    titles = {"long": f"Long (top {k})", "short": f"Short (bottom {k})", "ls": "Long/short"}
    for ax, book in zip(axes, ("long", "short", "ls"), strict=True):
        for kind, (label, ls, color) in styles.items():
            x = series[kind][book]
            ax.plot(dates, np.cumsum(x), ls, color=color, lw=1.8,
                    label=f"{label} (Sharpe {sharpe(x):.2f})")  # fmt: skip
        for i, (name, o) in enumerate(others.items()):
            x = getattr(o, book)
            ax.plot(o.date, np.cumsum(x), ":", color=COMPARED_COLORS[i % len(COMPARED_COLORS)],
                    lw=2.0, label=f"{name}: gross (Sharpe {sharpe(x):.2f})")  # fmt: skip
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(titles[book], fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
        _date_axis(ax)
    axes[0].set_ylabel("cumulative return (sum of daily returns)")
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    beside = f" beside {', '.join(others)}" if others else ""
    fig.suptitle(
        f"Final model{beside} on the test set: cumulative returns (costs: spread "
        f"{costs.spread * 1e4:g} "
        f"bps, impact {costs.impact * 1e4:g} bps each way, borrow {costs.borrow:.1%}/yr; "
        "annualised Sharpes)",
        fontsize=11,
    )
    return fig


def ic_figure(z: Series, baseline: Series | None) -> Figure:
    """The final model's daily test IC with its rolling mean (and the baseline's, dashed)."""
    dates, ic = z.date, z.ic
    window = min(ROLLING, max(2, len(ic) // 2))
    fig = Figure(figsize=(11, 4.0), layout="constrained")
    ax = fig.subplots()
    up, down = "#9ecae1", "#fcae91"
    ax.bar(dates, np.nan_to_num(ic), width=0.9, color=np.where(np.nan_to_num(ic) >= 0, up, down))
    ax.plot(dates, _rolling(ic, window), color="#08519c", lw=2.2,
            label=f"final: {window}-day rolling mean")  # fmt: skip
    mean = float(np.nanmean(ic)) if np.isfinite(ic).any() else math.nan
    ax.axhline(mean, color="#08519c", ls=":", lw=1.2, label=f"final: mean {mean:+.4f}")
    if baseline is not None:
        ax.plot(baseline.date, _rolling(baseline.ic, window), "--", color="#555", lw=1.8,
                label=f"baseline (full universe): {window}-day rolling mean")  # fmt: skip
    ax.axhline(0, color="#888", lw=0.8)
    ax.set_ylabel("Spearman IC (score vs realised return)")
    ax.set_title("Final model: daily test IC", fontsize=12)
    ax.grid(alpha=0.3, axis="y")
    handles, labels = ax.get_legend_handles_labels()
    handles += [Patch(color=up), Patch(color=down)]
    labels += ["daily IC >= 0", "daily IC < 0"]
    ax.legend(handles, labels, fontsize=9, loc="upper left", ncols=3)
    ax.margins(y=0.12)
    _date_axis(ax)
    return fig


def _rolling(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` dates, ignoring NaN; NaN until the window is full."""
    out = np.full(len(x), np.nan)
    for i in range(window - 1, len(x)):
        part = x[i - window + 1 : i + 1]
        if np.isfinite(part).any():
            out[i] = np.nanmean(part)
    return out

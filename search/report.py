"""The run report: RUN_DIR/report.md, its PNGs under RUN_DIR/report/, and RUN_DIR/report.html.

The HTML holds the same PNGs as base64 data URIs, so the one file can be mailed or opened
anywhere. Figures are drawn on `matplotlib.figure.Figure` with the Agg canvas (no pyplot, no
global backend switch), so reporting works in a driver process or a notebook alike.

The report reads only the run's files: spec.yaml, run.json, each stage's results.csv and
best.json, analysis.json (or summary.json's `overfitting`; the test-free parts are recomputed
when missing or stale), summary.json and final/{final,baseline}_test_daily.npz (from the final
model; absent on a run stopped after a stage, whose report then covers the stages alone).
"""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import PercentFormatter

from ranker.costs import CostModel, turnover
from ranker.metrics import ANN, Daily, sharpe
from search import store
from search.analysis import (
    FINISHED,
    analyze,
    finished_stages,
    load_spec,
    read_analysis,
    stage_rows,
)
from search.spec import SearchSpec, StageSpec

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_DIR = "report"
DPI = 110
ROLLING = 21  # trading days in the rolling mean of the daily test IC
STAGE_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2")
_TABLE_METRICS = ("ic_sharpe", "mean_ic", "ls_sharpe")


# --- a document rendered twice -------------------------------------------------------------------


@dataclass
class _Doc:
    """Headings, paragraphs, tables and images, rendered as Markdown and as one HTML file."""

    blocks: list[tuple[str, Any]] = field(default_factory=list)
    images: dict[str, bytes] = field(default_factory=dict)

    def heading(self, level: int, text: str) -> None:
        self.blocks.append(("h", (level, text)))

    def para(self, text: str) -> None:
        self.blocks.append(("p", text))

    def table(self, header: list[str], rows: list[list[str]]) -> None:
        self.blocks.append(("table", (header, rows)))

    def image(self, name: str, png: bytes, alt: str) -> None:
        self.images[name] = png
        self.blocks.append(("img", (name, alt)))

    def markdown(self) -> str:
        out = []
        for kind, v in self.blocks:
            if kind == "h":
                out.append(f"{'#' * v[0]} {v[1]}")
            elif kind == "p":
                out.append(v)
            elif kind == "table":
                header, rows = v
                cell = lambda s: str(s).replace("|", "\\|")  # noqa: E731
                out.append("\n".join(
                    ["| " + " | ".join(map(cell, header)) + " |",
                     "|" + "|".join("---" for _ in header) + "|",
                     *("| " + " | ".join(map(cell, r)) + " |" for r in rows)]
                ))  # fmt: skip
            else:
                name, alt = v
                out.append(f"![{alt}]({REPORT_DIR}/{name})")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        body = []
        for kind, v in self.blocks:
            if kind == "h":
                body.append(f"<h{v[0]}>{html.escape(v[1])}</h{v[0]}>")
            elif kind == "p":
                body.append(f"<p>{html.escape(v)}</p>")
            elif kind == "table":
                header, rows = v
                head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
                trs = "".join(
                    "<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in r) + "</tr>"
                    for r in rows
                )
                body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{trs}</tbody></table>")
            else:
                name, alt = v
                data = base64.b64encode(self.images[name]).decode()
                body.append(
                    f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'
                    f"<figcaption>{html.escape(alt)}</figcaption></figure>"
                )
        return _HTML.format(title=html.escape(title), body="\n".join(body))


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<style>
body {{ font-family: -apple-system, "Segoe UI", Helvetica, Arial, sans-serif; color: #222;
       max-width: 1100px; margin: 2em auto; padding: 0 1em; line-height: 1.45; }}
h1 {{ border-bottom: 2px solid #ddd; padding-bottom: .3em; }}
h2 {{ border-bottom: 1px solid #eee; padding-bottom: .2em; margin-top: 1.8em; }}
table {{ border-collapse: collapse; margin: 1em 0; font-size: .92em; }}
th, td {{ border: 1px solid #ccc; padding: .3em .7em; text-align: right; }}
th {{ background: #f3f3f3; }}
td:first-child, th:first-child {{ text-align: left; }}
tbody tr:nth-child(even) {{ background: #fafafa; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; height: auto; border: 1px solid #eee; }}
figcaption {{ color: #666; font-size: .9em; }}
</style></head>
<body>
{body}
</body></html>
"""


# --- formatting ---------------------------------------------------------------------------------


def _f(v: Any, key: str = "") -> str:
    """A number for a table, formatted by what `key` names: mean IC +0.0123, returns +12.3%,
    bps 12.3, probabilities 0.123, anything else (Sharpes) 1.23; '-' for None/NaN."""
    if v is None:
        return "-"
    try:
        x = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(x):
        return "-"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    if key.endswith("mean_ic"):
        return f"{x:+.4f}"
    if key.endswith("_return"):
        return f"{x:+.1%}"
    if key.endswith("bps"):
        return f"{x:.1f}"
    if key in ("pbo", "dsr", "psr"):
        return f"{x:.3f}"
    return f"{x:.2f}"


def _pm(mean: Any, std: Any, replicated: bool, key: str = "") -> str:
    if not replicated:
        return _f(mean, key)
    sd = _f(std, key).lstrip("+")
    return f"{_f(mean, key)} ± {sd}"


def _point(p: dict[str, Any]) -> str:
    return ", ".join(
        f"{k}={v:g}" if isinstance(v, int | float) else f"{k}={v}" for k, v in p.items()
    )


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    return buf.getvalue()


# --- figures ------------------------------------------------------------------------------------


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
    rows: list[dict[str, Any]], keys: tuple[str, str], metric: str
) -> dict[tuple[float, float], tuple[float, float]]:
    """(a, b) -> (mean, std over replicates of the mean over the other keys)."""
    by_rep: dict[tuple[float, float, int], list[float]] = {}
    for r in rows:
        by_rep.setdefault((r[keys[0]], r[keys[1]], r["replicate"]), []).append(r[metric])
    cells: dict[tuple[float, float], list[float]] = {}
    for (a, b, _), vals in by_rep.items():
        cells.setdefault((a, b), []).append(float(np.mean(vals)))
    return {ab: (float(np.mean(v)), float(np.std(v))) for ab, v in cells.items()}


def grid_figure(
    st: StageSpec, rows: list[dict[str, Any]], metric: str, selected: dict[str, Any]
) -> Figure:
    """The stage's grid: the selection metric over each pair of keys (one key: a line)."""
    ok = [r for r in rows if r["status"] == FINISHED and math.isfinite(r[metric])]
    keys = list(st.grid)
    replicated = st.seeds > 1
    if len(keys) == 1:
        return _grid_line(st, ok, metric, selected)
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
        if ka in selected and kb in selected and selected[ka] in va and selected[kb] in vb:
            i, j = va.index(selected[ka]), vb.index(selected[kb])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, lw=3, ec="black"))
        others = [k for k in keys if k not in (ka, kb)]
        sub = "mean over " + ", ".join([*others, *(["seeds"] if replicated else [])])
        ax.set_title(f"{ka} × {kb}" + (f"\n({sub})" if others or replicated else ""), fontsize=10)
    assert image is not None
    fig.colorbar(image, ax=axes[: len(pairs)].tolist(), label=f"val {metric}", shrink=0.9)
    fig.suptitle(
        f"Stage '{st.name}': validation {metric} over the grid\n(black box: selected point)",
        fontsize=12,
    )
    return fig


def _grid_line(
    st: StageSpec, ok: list[dict[str, Any]], metric: str, selected: dict[str, Any]
) -> Figure:
    (key,) = st.grid
    values = list(st.grid[key])
    fig = Figure(figsize=(6.4, 3.9), layout="constrained")
    ax = fig.subplots()
    xs = np.arange(len(values))
    means, stds = [], []
    for x, v in zip(xs, values, strict=True):
        vals = [r[metric] for r in ok if r[key] == v]
        if len(vals) > 1:
            ax.scatter([x] * len(vals), vals, s=18, color="#999", zorder=2,
                       label="replicates" if x == 0 else None)  # fmt: skip
        means.append(np.mean(vals) if vals else np.nan)
        stds.append(np.std(vals) if vals else np.nan)
    means_a, stds_a = np.array(means), np.array(stds)
    label = "mean ± std over seeds" if st.seeds > 1 else "trial"
    ax.errorbar(xs, means_a, yerr=stds_a if st.seeds > 1 else None, fmt="o-", color="#1f77b4",
                capsize=4, zorder=3, label=label)  # fmt: skip
    for x, m in zip(xs, means_a, strict=True):
        if np.isfinite(m):
            ax.annotate(f"{m:.2f}", (x, m), textcoords="offset points", xytext=(8, 4), fontsize=9)
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
    analysis: dict[str, Any], summary: dict[str, Any] | None, metric: str
) -> tuple[Figure, list[list[str]]] | None:
    """Val against test of each stage's top configs (plus the final and baseline models)."""
    fig = Figure(figsize=(7.2, 6.2), layout="constrained")
    ax = fig.subplots()
    table, xs, ys = [], [], []
    tags: dict[tuple[float, float], list[str]] = {}  # identical configs recur across stages
    for si, st in enumerate(analysis["stages"]):
        tops = st.get("top_test") or []
        color = STAGE_COLORS[si % len(STAGE_COLORS)]
        for j, t in enumerate(tops):
            x, y = t["val"][metric], t["test"][metric]
            if x is None or y is None:
                continue
            tag = f"{si + 1}.{t['rank']}"
            xe = t["val_std"][metric] if t["n"] > 1 else None
            ye = t["test_std"][metric] if t["n"] > 1 else None
            ax.errorbar(x, y, xerr=xe, yerr=ye, fmt="o", color=color, ms=7, capsize=3,
                        mec="black" if t["selected"] else color,
                        label=f"{si + 1}: {st['stage']}" if j == 0 else None)  # fmt: skip
            tags.setdefault((round(x, 9), round(y, 9)), []).append(tag)
            xs += [x - (xe or 0), x + (xe or 0)]
            ys += [y - (ye or 0), y + (ye or 0)]
            table.append([tag, st["stage"], _point(t["point"]), "yes" if t["selected"] else "",
                          str(t["n"]), _f(x, metric), _f(y, metric),
                          _f(t["test"]["mean_ic"], "mean_ic"), _f(t["test"]["ls_sharpe"])])  # fmt: skip
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
    for name, marker, color in (("final", "*", "black"), ("baseline", "D", "#777")):
        part = (summary or {}).get(name)
        if part and metric in part.get("val", {}) and metric in part.get("test", {}):
            x, y = part["val"][metric], part["test"][metric]
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


def _series_daily(z: dict[str, np.ndarray]) -> Daily:
    """A `Daily` over the saved per-date series whose 'rows' are the symbol ids themselves."""
    n_rows = int(max(z["long_symbols"].max(initial=0), z["short_symbols"].max(initial=0))) + 1
    return Daily(
        date_idx=np.arange(len(z["ic"])), ic=z["ic"], long=z["long"], short=z["short"],
        ls=z["ls"], long_rows=z["long_symbols"].astype(np.int64),
        short_rows=z["short_symbols"].astype(np.int64), n_rows=n_rows,
    )  # fmt: skip


def net_series(z: dict[str, np.ndarray], costs: CostModel) -> dict[str, dict[str, np.ndarray]]:
    """Daily gross, flat-cost net and turnover-aware net returns of the long, short and L/S books
    (the same formulas as `ranker.costs`)."""
    d = _series_daily(z)
    to = turnover(d, np.arange(d.n_rows))
    rt, borrow = costs.round_trip, costs.borrow_daily
    flat = {"long": d.long - rt, "short": d.short - rt - borrow}
    aware = {"long": d.long - to.long * rt, "short": d.short - to.short * rt - borrow}
    flat["ls"] = (flat["long"] + flat["short"]) / 2
    aware["ls"] = (aware["long"] + aware["short"]) / 2
    return {
        "gross": {"long": d.long, "short": d.short, "ls": d.ls},
        "flat": flat,
        "turnover": aware,
    }


def _dates(z: dict[str, np.ndarray]) -> np.ndarray:
    return z["date"].astype("datetime64[D]")


def _date_axis(ax: Any) -> None:
    loc = AutoDateLocator(minticks=3, maxticks=7)
    ax.xaxis.set_major_locator(loc)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(loc))


def cumulative_figure(z: dict[str, np.ndarray], costs: CostModel, k: int) -> Figure:
    """The final model's cumulative test returns: gross, flat-cost net, turnover-aware net."""
    series = net_series(z, costs)
    dates = _dates(z)
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
        ax.axhline(0, color="#888", lw=0.8)
        ax.set_title(titles[book], fontsize=11)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9, loc="upper left")
        _date_axis(ax)
    axes[0].set_ylabel("cumulative return (sum of daily returns)")
    axes[0].yaxis.set_major_formatter(PercentFormatter(1.0))
    fig.suptitle(
        f"Final model on the test set: cumulative returns (costs: spread {costs.spread * 1e4:g} "
        f"bps, impact {costs.impact * 1e4:g} bps each way, borrow {costs.borrow:.1%}/yr; "
        "annualised Sharpes)",
        fontsize=11,
    )
    return fig


def ic_figure(z: dict[str, np.ndarray], baseline: dict[str, np.ndarray] | None) -> Figure:
    """The final model's daily test IC with its rolling mean (and the baseline's, dashed)."""
    dates, ic = _dates(z), z["ic"]
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
        ax.plot(_dates(baseline), _rolling(baseline["ic"], window), "--", color="#555", lw=1.8,
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


# --- sections -----------------------------------------------------------------------------------


def _read_json(path: str) -> dict[str, Any] | None:
    return json.loads(store.read_text(path)) if store.exists(path) else None


def _read_npz(path: str) -> dict[str, np.ndarray] | None:
    if not store.exists(path):
        return None
    with np.load(io.BytesIO(store.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def _header(doc: _Doc, run_dir: str, spec: SearchSpec, summary: dict[str, Any] | None) -> None:
    run = _read_json(store.join(run_dir, "run.json")) or {}
    info = run.get("data", {})
    doc.heading(1, f"liquid-search report: {run_dir.rstrip('/').rsplit('/', 1)[-1]}")
    doc.para(
        f"Run directory {run_dir}; report written {time.strftime('%Y-%m-%d %H:%M:%S')}. "
        f"Selection metric: validation {spec.train.metric} (the best evaluation of each trial); "
        f"stages: {', '.join(s.name for s in spec.stages)}."
    )
    if info:
        doc.table(
            ["split", "rows", "dates"],
            [[s, f"{info.get(f'{s}_rows', '-'):,}" if isinstance(info.get(f"{s}_rows"), int)
              else "-", str(info.get(f"{s}_dates", "-"))] for s in ("train", "val", "test")],
        )  # fmt: skip
        doc.para(
            f"Data: {info.get('source', run.get('source', '?'))}; {info.get('liquid_symbols', '?')}"
            f" liquid of {info.get('symbols', '?')} symbols."
        )
    if summary is None:
        doc.para("The final model has not been trained yet (no summary.json): the report covers "
                 "the finished stages only.")  # fmt: skip


def _overfitting_section(doc: _Doc, analysis: dict[str, Any]) -> None:
    doc.heading(2, "Is the winner real?")
    doc.para(
        "PBO: probability of backtest overfitting by combinatorially symmetric cross-validation "
        "over the stage's trials (their daily val IC, ranked by IC Sharpe in each half): the "
        "share of the C(S, S/2) splits in which the in-sample best lands at or below the "
        "out-of-sample median. About 0.5 or more: the stage's ranking does not carry over. "
        "DSR: deflated Sharpe ratio of the selected trial's daily val IC, the probability that "
        "its true IC Sharpe beats the best of N skill-less trials, N = every trial so far in the "
        "run. Above 0.95: unlikely to be luck of the search. Sharpes here are annualised (x "
        "sqrt(252)) with the sample std (ddof=1), so a little below the search's ic_sharpe."
    )
    rows = []
    entries = [(st["stage"], st["pbo"], st["dsr"]) for st in analysis["stages"]]
    if analysis.get("final"):
        entries.append(("final model", None, analysis["final"]))
    for name, p, d in entries:
        if p is None:
            pbo_txt, s_txt = "-", "-"
        elif "skipped" in p:
            pbo_txt, s_txt = f"skipped: {p['skipped']}", "-"
        else:
            pbo_txt = _f(p["pbo"], "pbo")
            s_txt = f"S={p['n_blocks']}, T={p['n_dates_used']}/{p['n_dates']}, N={p['n_trials']}"
        if "skipped" in d:
            dsr = [f"skipped: {d['skipped']}", "-", "-", "-", str(d.get("n_trials", "-"))]
        else:
            dsr = [_f(d["dsr"], "dsr"), _f(d["psr"], "psr"), _f(d["sharpe_annual"]),
                   _f(d["sr0_annual"]), str(d["n_trials"])]  # fmt: skip
        rows.append([name, pbo_txt, s_txt, *dsr])
    doc.table(["stage", "PBO", "CSCV blocks / dates / trials", "DSR", "PSR (vs 0)",
               "IC Sharpe (ann.)", "SR0 (ann.)", "N trials so far"], rows)  # fmt: skip
    final = analysis.get("final")
    if final and "series_source" in final:
        doc.para(f"Final model's DSR uses the val IC series of: {final['series_source']}.")


def _stage_section(
    doc: _Doc, run_dir: str, spec: SearchSpec, st: StageSpec, entry: dict[str, Any]
) -> None:
    metric = spec.train.metric
    doc.heading(2, f"Stage {st.name}")
    rows = stage_rows(run_dir, st.name)
    n_err = sum(r["status"] != FINISHED for r in rows)
    doc.para(
        f"{len(rows)} trials ({len(st.points)} grid points x {st.seeds} seed(s)), {n_err} failed. "
        f"Selected: {_point(entry['selected_point'])} with val {metric} {_f(entry['value'], metric)}"
        + (f" ({st.select} over seeds)." if st.seeds > 1 else ".")
    )
    fig = grid_figure(st, rows, metric, entry["selected_point"])
    doc.image(f"grid_{st.name}.png", _png(fig), f"Stage {st.name}: val {metric} over the grid")
    replicated = st.seeds > 1
    cols = list(dict.fromkeys([metric, *_TABLE_METRICS]))
    header = [*st.grid, "seeds ok", "failed", *(f"val {c}" for c in cols), "selected"]
    if replicated:
        header[len(st.grid) + 2 : len(st.grid) + 2 + len(cols)] = [
            f"val {c} (mean ± std)" for c in cols
        ]
    table = []
    for p in entry["points"]:
        table.append([
            *(f"{p[k]:g}" for k in st.grid), str(p["n"]), str(p["errors"]),
            *(_pm(p[c], p[f"{c}_std"], replicated, c) for c in cols), "yes" if p["selected"] else "",
        ])  # fmt: skip
    doc.table(header, table)


def _final_section(doc: _Doc, run_dir: str, spec: SearchSpec, summary: dict[str, Any]) -> None:
    from search.driver import FINAL_DIR

    k = summary["final"].get("train", {}).get("k", spec.train.k)
    doc.heading(2, "Final model on the test set")
    cm = summary.get("costs_model") or {
        "spread": spec.costs.spread, "impact": spec.costs.impact, "borrow": spec.costs.borrow
    }  # fmt: skip
    costs = CostModel(**cm)
    z = _read_npz(store.join(run_dir, FINAL_DIR, "final_test_daily.npz"))
    base = _read_npz(store.join(run_dir, FINAL_DIR, "baseline_test_daily.npz"))
    if z is None:
        doc.para("No per-date test series (final/final_test_daily.npz): plots skipped.")
    else:
        doc.image("test_cumulative_returns.png", _png(cumulative_figure(z, costs, k)),
                  "Final model: cumulative test returns, gross and net of costs")  # fmt: skip
        doc.image("test_daily_ic.png", _png(ic_figure(z, base)),
                  "Final model: daily test IC with its rolling mean")  # fmt: skip
    doc.heading(3, "Liquid universe vs full universe (test set)")
    doc.para(
        "final: trained on the liquid universe (the search's winner); baseline: the same config "
        "trained on the full universe; both tested on the liquid test set. Returns are mean "
        f"daily x {ANN}; net of flat costs: both books fully rebuilt daily; turnover-aware: "
        "costs only on the names that change. Oracle: the planted expected return (synthetic "
        "data only), the ceiling."
    )
    parts = {"final (liquid)": summary["final"], "baseline (full)": summary.get("baseline")}
    cols = [name for name, p in parts.items() if p]
    oracle = summary["final"].get("oracle_test")
    rows = []
    test_keys = ("ic_sharpe", "mean_ic", "long_return", "long_sharpe", "short_return",
                 "short_sharpe", "ls_return", "ls_sharpe")  # fmt: skip
    cost_keys = ("ls_net_return", "ls_net_sharpe", "to_ls_net_return", "to_ls_net_sharpe",
                 "mean_turnover", "breakeven_bps", "to_breakeven_bps")  # fmt: skip
    for key in test_keys:
        rows.append([key, *(_f(parts[c]["test"].get(key), key) for c in cols),
                     *([_f(oracle.get(key), key)] if oracle else [])])  # fmt: skip
    for key in cost_keys:
        rows.append([key, *(_f(parts[c].get("costs", {}).get(key), key) for c in cols),
                     *(["-"] if oracle else [])])  # fmt: skip
    rows.append(["val " + spec.train.metric,
                 *(_f(parts[c].get("val", {}).get(spec.train.metric), spec.train.metric) for c in cols),
                 *(["-"] if oracle else [])])  # fmt: skip
    doc.table(["metric", *cols, *(["oracle"] if oracle else [])], rows)


# --- entry point --------------------------------------------------------------------------------


def write_report(run_dir: str, analysis: dict[str, Any] | None = None) -> tuple[str, str]:
    """Write RUN_DIR/report.md (+ RUN_DIR/report/*.png) and the self-contained report.html.

    Args:
        run_dir: a run directory (local path or URI), finished or stopped after a stage.
        analysis: `search.analysis.analyze`'s dict; default: RUN_DIR/analysis.json (or
            summary.json's `overfitting`), recomputed without the test scoring when it is
            missing or does not cover every finished stage.

    Returns:
        (path of report.md, path of report.html).

    Raises:
        ValueError: no stage of the run has finished.
    """
    run_dir = store.absolute(run_dir)
    spec = load_spec(run_dir)
    names = finished_stages(run_dir)
    if not names:
        raise ValueError(
            f"{run_dir}: no stage has finished yet, so there is nothing to report; "
            f"`liquid-search status {run_dir}` shows the trials in flight"
        )
    summary = _read_json(store.join(run_dir, "summary.json"))
    analysis = analysis or read_analysis(run_dir)
    if analysis is None or [s["stage"] for s in analysis["stages"]] != names:
        analysis = analyze(run_dir, None, spec.train.k, write=False)

    doc = _Doc()
    _header(doc, run_dir, spec, summary)
    if summary is not None:
        f = summary["final"]
        m = spec.train.metric
        doc.para(
            f"Final model: val {m} {_f(f['val'].get(m), m)}, test {m} {_f(f['test'].get(m), m)}, test "
            f"mean IC {_f(f['test'].get('mean_ic'), 'mean_ic')}, test L/S Sharpe "
            f"{_f(f['test'].get('ls_sharpe'))} (net of flat costs "
            f"{_f(f.get('costs', {}).get('ls_net_sharpe'))}, turnover-aware "
            f"{_f(f.get('costs', {}).get('to_ls_net_sharpe'))})."
        )
    _overfitting_section(doc, analysis)
    by_name = {s["stage"]: s for s in analysis["stages"]}
    for name in names:
        _stage_section(doc, run_dir, spec, spec.stage(name), by_name[name])

    doc.heading(2, "Validation against test for the top configs")
    vt = val_test_figure(analysis, summary, spec.train.metric)
    if vt is None:
        doc.para("Not scored on the test set: run `search.analysis.analyze(run_dir, test_panel, "
                 "k)` (the driver does at the end of a run) to fill this section.")  # fmt: skip
    else:
        fig, table = vt
        doc.image("val_vs_test.png", _png(fig), "Validation vs test of the top configs")
        m = spec.train.metric
        doc.table(["id", "stage", "config", "selected", "seeds", f"val {m}", f"test {m}",
                   "test mean_ic", "test ls_sharpe"], table)  # fmt: skip
    if summary is not None:
        _final_section(doc, run_dir, spec, summary)

    for name, png in doc.images.items():
        store.write_bytes(store.join(run_dir, REPORT_DIR, name), png)
    md_path = store.join(run_dir, REPORT_MD)
    html_path = store.join(run_dir, REPORT_HTML)
    store.write_text(md_path, doc.markdown())
    title = f"liquid-search report: {run_dir.rstrip('/').rsplit('/', 1)[-1]}"
    store.write_text(html_path, doc.html(title))
    return md_path, html_path

"""`liquid-search status`: a run's stages and trials as a table, finished or in flight."""

from __future__ import annotations

import json
import math
from typing import Any

from ranker.train import METRICS
from search import store
from search.stages import RESULTS, read_best, read_results

_COLS = ("ic_sharpe", "mean_ic", "long_sharpe", "short_sharpe", "ls_sharpe")


def _fmt(v: Any, col: str = "") -> str:
    """A metric: mean IC with a sign and 4 decimals, the rest with 2."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "-"
    return f"{f:+.4f}" if col == "mean_ic" else f"{f:.2f}"


def _key(v: Any) -> str:
    """A grid value as written in the spec (0.0005, 1e-04 style), not as a metric."""
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _in_flight(run_dir: str, stage: str, keys: list[str], metric: str) -> list[dict[str, Any]]:
    """Trials of an unfinished stage, read from Tune's trial directories."""
    exp = store.join(run_dir, stage)
    rows = []
    for name in store.listdir(exp):
        tdir = store.join(exp, name)
        params, result = store.join(tdir, "params.json"), store.join(tdir, "result.json")
        if not store.exists(params):
            continue
        cfg = json.loads(store.read_text(params))
        last: dict[str, Any] = {}
        if store.exists(result):
            lines = [ln for ln in store.read_text(result).splitlines() if ln.strip()]
            if lines:
                last = json.loads(lines[-1])
        status = "ERROR" if store.exists(store.join(tdir, "error.txt")) else (
            "RUNNING/PENDING" if last else "PENDING")  # fmt: skip
        rows.append({
            **{k: cfg.get(k, "") for k in keys},
            "replicate": cfg.get("replicate", 0),
            "status": status,
            "epochs": last.get("epoch", 0),
            "best_epoch": last.get("best_epoch", ""),
            **{k: last.get(f"best_{k}", math.nan) for k in METRICS},
            "node_id": last.get("node_id", ""),
        })  # fmt: skip
    return rows


def _overfitting_lines(run_dir: str) -> dict[str, str]:
    """Per stage (and 'final'): PBO and deflated Sharpe from analysis.json, when written."""
    from search.analysis import read_analysis

    a = read_analysis(run_dir)
    if not a:
        return {}
    out = {}
    for st in a.get("stages", []):
        parts = []
        pbo = st.get("pbo") or {}
        if pbo.get("pbo") is not None:
            parts.append(
                f"PBO {pbo['pbo']:.2f} (CSCV, S={pbo['n_blocks']}, {pbo['n_trials']} trials)"
            )
        dsr = st.get("dsr") or {}
        if dsr.get("dsr") is not None:
            parts.append(f"deflated Sharpe {dsr['dsr']:.2f} (N={dsr['n_trials']})")
        if parts:
            out[st["stage"]] = "; " + "; ".join(parts)
    fin = a.get("final") or {}
    if fin.get("dsr") is not None:
        out["final"] = (
            f"deflated Sharpe of the final model's val IC {fin['dsr']:.2f} "
            f"(N={fin['n_trials']} trials, IC Sharpe {fin['sharpe_annual']:.2f} vs the "
            f"{fin['sr0_annual']:.2f} expected of the best of N by luck)"
        )
    return out


def render(run_dir: str) -> str:
    """The status of a run as text."""
    from search.driver import SUMMARY, load_spec

    run_dir = store.absolute(run_dir)
    spec = load_spec(run_dir)
    metric = spec.train.metric
    out = [f"run {run_dir}"]
    overfit = _overfitting_lines(run_dir)
    for st in spec.stages:
        keys = list(st.grid)
        best = read_best(run_dir, st.name)
        if best is not None and store.exists(store.join(run_dir, st.name, RESULTS)):
            rows = read_results(run_dir, st.name)
            state = f"done: best {metric} {best['value']:.3f} at {best['point']}"
            if st.seeds > 1:
                state += f" (mean of {st.seeds} seeds, std {best.get('replicate_std', 0):.3f})"
        elif store.exists(store.join(run_dir, st.name)):
            rows = _in_flight(run_dir, st.name, keys, metric)
            state = "in flight / interrupted (resume continues it)"
        else:
            out.append(f"\n[{st.name}] not started ({len(st.points) * st.seeds} trials)")
            continue
        n_err = sum(r["status"] == "ERROR" for r in rows)
        if best is not None and overfit.get(st.name):
            state += overfit[st.name]
        out.append(
            f"\n[{st.name}] {len(rows)}/{len(st.points) * st.seeds} trials, {n_err} failed; {state}"
        )
        header = [*keys, *(["rep"] if st.seeds > 1 else []), "status", "epochs", "best_ep", *_COLS]
        table = []
        for r in rows:
            table.append([
                *(_key(r[k]) for k in keys),
                *([str(r.get("replicate", 0))] if st.seeds > 1 else []),
                str(r["status"]), str(r["epochs"]), str(r["best_epoch"]),
                *(_fmt(r.get(c, math.nan), c) for c in _COLS),
            ])  # fmt: skip
        out.append(_table(header, table))
        if st.seeds > 1 and best is not None:
            from search.analysis import point_table

            pts = point_table(run_dir, st.name)
            out.append("per point, mean ± std over seeds:")
            out.append(_table(
                [*keys, "n", *_COLS],
                [[*(_key(p[k]) for k in keys), str(p["n"]),
                  *(f"{_fmt(p[c], c)} ± {_fmt(p[c + '_std'], c)}" for c in _COLS)] for p in pts],
            ))  # fmt: skip
    summary_path = store.join(run_dir, SUMMARY)
    if store.exists(summary_path):
        s = json.loads(store.read_text(summary_path))
        f = s["final"]
        out.append("\n[final] " + "  ".join(
            f"{k} val {_fmt(f['val'][k], k)} test {_fmt(f['test'][k], k)}" for k in ("ic_sharpe", "mean_ic", "ls_sharpe")))  # fmt: skip
        c = f.get("costs", {})
        if c:
            out.append(f"        L/S net sharpe (flat costs) {_fmt(c.get('ls_net_sharpe'))}")
        if s.get("baseline"):
            b = s["baseline"]["test"]
            out.append(
                f"[baseline: full universe] test ic_sharpe {_fmt(b['ic_sharpe'])} mean_ic {_fmt(b['mean_ic'], 'mean_ic')} ls_sharpe {_fmt(b['ls_sharpe'])}"
            )
        if overfit.get("final"):
            out.append("        " + overfit["final"].strip("; "))
        out.append(f"checkpoint {s['checkpoint']}")
    else:
        out.append("\n[final] not done")
    return "\n".join(out)

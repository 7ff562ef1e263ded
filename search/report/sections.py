"""The report's sections: the header, "is the winner real?", one per stage, the final model and
the existing models beside it."""

from __future__ import annotations

import time

from ranker.metrics import ANN
from search.report.document import Doc, fmt, pm, png, point_text
from search.report.figures import cumulative_figure, grid_figure, ic_figure
from search.results import DSR, PBO, Analysis, ModelResult, StageAnalysis, Summary
from search.rundir import FINISHED, Run, StageRecord

_TABLE_METRICS = ("ic_sharpe", "mean_ic", "ls_sharpe")


def header_section(doc: Doc, run: Run) -> None:
    """Title, run directory, data and splits; a note when the final model is not there yet."""
    info = run.info.data if run.info else None
    name = run.path.rstrip("/").rsplit("/", 1)[-1]
    doc.heading(1, f"liquid-search report: {name}")
    doc.para(
        f"Run directory {run.path}; report written {time.strftime('%Y-%m-%d %H:%M:%S')}. "
        f"Selection metric: validation {run.spec.train.metric} (the best evaluation of each "
        f"trial); stages: {', '.join(s.name for s in run.stages)}."
    )
    if info is not None:
        splits = {"train": (info.train_rows, info.train_dates),
                  "val": (info.val_rows, info.val_dates), "test": (info.test_rows, info.test_dates)}  # fmt: skip
        doc.table(["split", "rows", "dates"],
                  [[s, f"{n:,}" if isinstance(n, int) else "-", str(d or "-")]
                   for s, (n, d) in splits.items()])  # fmt: skip
        doc.para(
            f"Data: {info.source or '?'}; {info.liquid_symbols or '?'} liquid of "
            f"{info.symbols or '?'} symbols."
        )
    if run.summary is None:
        doc.para("The final model has not been trained yet: the report covers the finished "
                 "stages only.")  # fmt: skip


def overfitting_section(doc: Doc, analysis: Analysis) -> None:
    doc.heading(2, "Is the winner real?")
    doc.para(
        "PBO: probability of backtest overfitting by combinatorially symmetric cross-validation "
        "over the stage's trials (their daily val IC, ranked by IC Sharpe in each half): the "
        "share of the C(S, S/2) splits in which the in-sample best lands at or below the "
        "out-of-sample median. About 0.5 or more: the stage's ranking does not carry over. "
        "DSR: deflated Sharpe ratio of the selected trial's daily val IC, the probability that "
        "its true IC Sharpe beats the best of N skill-less trials, N = every trial so far in the "
        f"run. Above 0.95: unlikely to be luck of the search. Sharpes here are annualised (x "
        f"sqrt({ANN})), as the search's ic_sharpe."
    )
    rows = []
    entries: list[tuple[str, PBO | None, DSR]] = [(st.stage, st.pbo, st.dsr)
                                                   for st in analysis.stages]  # fmt: skip
    if analysis.final is not None:
        entries.append(("final model", None, analysis.final))
    for name, p, d in entries:
        if p is None:
            pbo_txt, s_txt = "-", "-"
        elif p.skipped is not None:
            pbo_txt, s_txt = f"skipped: {p.skipped}", "-"
        else:
            pbo_txt = fmt(p.pbo, "pbo")
            s_txt = f"S={p.n_blocks}, T={p.n_dates_used}/{p.n_dates}, N={p.n_trials}"
        if d.skipped is not None:
            dsr = [f"skipped: {d.skipped}", "-", "-", "-", str(d.n_trials)]
        else:
            dsr = [fmt(d.dsr, "dsr"), fmt(d.psr, "psr"), fmt(d.sharpe_annual),
                   fmt(d.sr0_annual), str(d.n_trials)]  # fmt: skip
        rows.append([name, pbo_txt, s_txt, *dsr])
    doc.table(["stage", "PBO", "CSCV blocks / dates / trials", "DSR", "PSR (vs 0)",
               "IC Sharpe (ann.)", "SR0 (ann.)", "N trials so far"], rows)  # fmt: skip
    final = analysis.final
    if final is not None and final.series_source:
        doc.para(f"Final model's DSR uses the val IC series of: {final.series_source}.")


def stage_section(doc: Doc, run: Run, st: StageRecord, entry: StageAnalysis) -> None:
    """A finished stage: its grid figure and per-point table."""
    metric = run.spec.train.metric
    rows = st.rows or []
    spec = st.spec
    sig = st.best.significance if st.best is not None else None
    doc.heading(2, f"Stage {st.name}")
    n_err = sum(r.status != FINISHED for r in rows)
    doc.para(
        f"{len(rows)} trials ({len(spec.points)} grid points x {spec.replicates} replicate(s)), "
        f"{n_err} failed. Selected: {point_text(entry.selected_point)} with val {metric} "
        f"{fmt(entry.value, metric)}"
        + (f" ({spec.combine} over replicates)." if spec.replicates > 1 else ".")
        + (f" {sig.sentence()}" if sig is not None else "")
    )
    fig = grid_figure(spec, rows, metric, entry.selected_point, sig.tied if sig else ())
    doc.image(f"grid_{st.name}.png", png(fig), f"Stage {st.name}: val {metric} over the grid")
    replicated = spec.replicates > 1
    cols = list(dict.fromkeys([metric, *_TABLE_METRICS]))
    header = [*spec.grid, "replicates ok", "failed", *(f"val {c}" for c in cols), "selected",
              "tied (MCS)"]  # fmt: skip
    if replicated:
        header[len(spec.grid) + 2 : len(spec.grid) + 2 + len(cols)] = [
            f"val {c} (mean ± std)" for c in cols
        ]
    table = []
    for p in entry.points:
        table.append([
            *(f"{p.point[k]:g}" for k in spec.grid), str(p.n), str(p.errors),
            *(pm(p.mean[c], p.std[c], replicated, c) for c in cols), "yes" if p.selected else "",
            ("yes" if sig.is_tied(p.point) else "") if sig is not None else "-",
        ])  # fmt: skip
    doc.table(header, table)


def final_section(doc: Doc, run: Run, summary: Summary) -> None:
    """The final model on the test set: returns and IC figures, liquid vs full universe."""
    spec = run.spec
    k = (summary.final.train or {}).get("k", spec.train.k)
    doc.heading(2, "Final model on the test set")
    costs = summary.costs_model
    z = run.final_series("final", "test")
    base = run.final_series("baseline", "test")
    if z is None:
        doc.para("No per-date test series of the final model: plots skipped.")
    else:
        others = {name: o for name, c in summary.comparisons.items()
                  if (o := run.final_series(c.series_model, "test")) is not None}  # fmt: skip
        doc.image("test_cumulative_returns.png", png(cumulative_figure(z, costs, k, others)),
                  "Final model: cumulative test returns, gross and net of costs"
                  + (f"; {', '.join(others)} gross, dotted" if others else ""))  # fmt: skip
        doc.image("test_daily_ic.png", png(ic_figure(z, base)),
                  "Final model: daily test IC with its rolling mean")  # fmt: skip
    doc.heading(3, "Liquid universe vs full universe (test set)")
    doc.para(
        "final: trained on the liquid universe (the search's winner); baseline: the same config "
        "trained on the full universe; both tested on the liquid test set. Returns are mean "
        f"daily x {ANN}; net of flat costs: both books fully rebuilt daily; turnover-aware: "
        "costs only on the names that change. Oracle: the planted expected return (synthetic "
        "data only), the ceiling."
    )
    parts = {"final (liquid)": summary.final, "baseline (full)": summary.baseline}
    cols = [name for name, p in parts.items() if p is not None]
    oracle = summary.final.oracle_test
    rows = []
    test_keys = ("ic_sharpe", "mean_ic", "long_return", "long_sharpe", "short_return",
                 "short_sharpe", "ls_return", "ls_sharpe")  # fmt: skip
    cost_keys = ("ls_net_return", "ls_net_sharpe", "to_ls_net_return", "to_ls_net_sharpe",
                 "mean_turnover", "breakeven_bps", "to_breakeven_bps")  # fmt: skip
    for key in test_keys:
        rows.append([key, *(fmt(_part(parts, c).test.get(key), key) for c in cols),
                     *([fmt(oracle.get(key), key)] if oracle else [])])  # fmt: skip
    for key in cost_keys:
        rows.append([key, *(fmt(_part(parts, c).costs.get(key), key) for c in cols),
                     *(["-"] if oracle else [])])  # fmt: skip
    rows.append(["val " + spec.train.metric,
                 *(fmt(_part(parts, c).val.get(spec.train.metric), spec.train.metric)
                   for c in cols),
                 *(["-"] if oracle else [])])  # fmt: skip
    doc.table(["metric", *cols, *(["oracle"] if oracle else [])], rows)


def _part(parts: dict[str, ModelResult | None], name: str) -> ModelResult:
    p = parts[name]
    assert p is not None  # only the models that exist are columns
    return p


def search_vs_base_section(doc: Doc, summary: Summary) -> None:
    """Did the search pay? The searched config and the spec's base config, each over the same
    seeds (nothing when the run did not train the base config)."""
    cmp_, base = summary.search_vs_base, summary.base
    if cmp_ is None or base is None:
        return
    final = summary.final
    doc.heading(3, "Did the search pay?")
    doc.para(
        "The searched config and the spec's base config (where stage 1 started), each trained "
        f"for the final epochs with the same {len(final.members)} seed(s), on the test set: "
        "mean ± standard deviation over the seeds, and the ensemble of the seeds (the mean of "
        "their scores, which the final model is). " + cmp_.sentence
    )
    rows = []
    for key in ("mean_ic", "ic_sharpe", "ls_sharpe"):
        c = cmp_.by_metric[key]
        fs, bs = final.seed_spread[key], base.seed_spread[key]
        rows.append([
            key, pm(fs.mean, fs.std, True, key), pm(bs.mean, bs.std, True, key),
            f"{fmt(c.diff, key)} ± {fmt(c.se, key).lstrip('+')}",
            fmt(final.test[key], key), fmt(base.test[key], key),
        ])  # fmt: skip
    doc.table(["test metric", "searched, seeds", "base, seeds", "difference ± s.e.",
               "searched, ensemble", "base, ensemble"], rows)  # fmt: skip


_COMPARED = ("ic_sharpe", "mean_ic", "long_return", "long_sharpe", "short_return", "short_sharpe",
             "ls_return", "ls_sharpe", "ls_net_sharpe", "to_ls_net_sharpe")  # fmt: skip
_LABELS = {"ls_net_sharpe": "ls_sharpe net (flat)", "to_ls_net_sharpe": "ls_sharpe net (turnover)"}


def comparison_section(doc: Doc, summary: Summary) -> None:
    """The existing models of `final.compare` beside the final model on the same test rows: the
    notebook's side-by-side table, a row per model, and a row per comparison of the final model
    minus it with its paired standard error (nothing when the spec compares none)."""
    cs = summary.comparisons
    if not cs:
        return
    first = next(iter(cs.values()))
    doc.heading(3, "Beside existing models (test set)")
    doc.para(
        "Each model of `final.compare` is scored on the final model's test rows, under the same "
        "universe rule, books and cost model: a scores file as given (`liquid-search score` "
        "writes one), a checkpoint or run directory scored on the run's data. Returns are mean "
        f"daily x {ANN}; net: of flat costs (both books rebuilt daily) and of turnover-aware "
        'costs. "final − X": the final model minus X, ± its standard error over the '
        f"{first.n_dates} test dates, paired (a stationary bootstrap resamples the same dates "
        f"for both; mean block {first.block}, {first.reps} replications). "
        + " ".join(c.sentence for c in cs.values())
    )
    final = summary.final.test | summary.final.costs
    rows = [
        ["final", f"{summary.data.test_rows or 0:,}", *(fmt(final.get(m), m) for m in _COMPARED)]
    ]
    for c in cs.values():
        mine = c.test | c.costs
        rows.append([f"{c.name} ({c.kind})", f"{c.test_rows:,}",
                     *(fmt(mine.get(m), m) for m in _COMPARED)])  # fmt: skip
    for c in cs.values():
        rows.append([f"final − {c.name}", "", *(_diff(c.vs_final[m].diff, c.vs_final[m].se, m)
                                               for m in _COMPARED)])  # fmt: skip
    doc.table(["model", "test rows", *(_LABELS.get(m, m) for m in _COMPARED)], rows)
    by_rule = [(c, rule, r) for c in cs.values() for rule, r in c.by_rule.items()]
    if by_rule:
        keys = ("ic_sharpe", "mean_ic", "ls_sharpe")
        doc.para("The same models on the test set as the other universe rule picks it:")
        doc.table(["model", "universe", "test rows", *keys, "final − model mean_ic"],
                  [[c.name, rule, f"{r.test_rows:,}", *(fmt(r.test.get(m), m) for m in keys),
                    _diff(r.vs_final["mean_ic"].diff, r.vs_final["mean_ic"].se, "mean_ic")]
                   for c, rule, r in by_rule])  # fmt: skip
    notes = [f"{c.name}: {n}" for c in cs.values() for n in c.notes]
    if notes:
        doc.para("Not compared: " + "; ".join(notes) + ".")


def _diff(d: float, se: float, key: str) -> str:
    """`+d ± se`, signed whatever `fmt` does for the key."""
    text = fmt(d, key)
    sign = "+" if text[0].isdigit() else ""
    return f"{sign}{text} ± {fmt(se, key).lstrip('+')}"

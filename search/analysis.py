"""Is the winner real? Everything the report and status say about a run's stages, from its
loaded files (`rundir.Run`), and for `top_test` a test Panel:

- `point_table`: per grid point, the mean and std of every metric over its replicates.
- `selected_trial`: the trial whose series a stage's deflated Sharpe tests.
- `top_test`: the stage's top configs, by the selection value, scored on the test set.
- `analyze`: those and `overfitting`'s PBO and DSR, per stage and for the final model, as one
  JSON-able dict (the driver writes it to analysis.json).

With replicates, the DSR's selected trial is the best replicate of the selected point: choosing
it among all N trials is the selection the DSR deflates for. Stds over replicates are population
stds (ddof=0), as best.json's `replicate_std`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ranker.backtest import backtest
from ranker.data import load
from ranker.model import MultiBranchRanker
from ranker.panel import Panel
from ranker.train import METRICS, score
from search.errors import RunDirError
from search.rundir import Run, StageRecord, TrialRow
from search.stage_overfit import final_dsr, selected_dsr, stage_pbo


def _done(run: Run, stage: str) -> tuple[StageRecord, list[TrialRow]]:
    st = run.stage(stage)
    if st.rows is None:
        raise RunDirError(
            f"{run.path}: stage {stage!r} has not finished (`liquid-search status {run.path}` "
            f"shows its trials in flight)"
        )
    return st, st.rows


# --- per-point table ----------------------------------------------------------------------------


def point_table(run: Run, stage: str) -> list[dict[str, Any]]:
    """One row per grid point, in grid order: every metric's mean and std over its replicates.

    Returns:
        dicts with the grid keys, `n` (finished replicates), `errors`, `trial_ids`, for each
        metric `<metric>` (mean) and `<metric>_std` (ddof=0; 0 for one replicate, NaN for none),
        `value` (the selection value: the stage's `select` of the selection metric, as
        best.json) and `selected` (this is best.json's point).
    """
    st, rows = _done(run, stage)
    metric = run.spec.train.metric
    table = []
    for p in st.spec.points:
        mine = [r for r in rows if r.matches(p)]
        ok = [r for r in mine if r.finished(metric)]
        entry: dict[str, Any] = {
            **p,
            "n": len(ok),
            "errors": len(mine) - len(ok),
            "trial_ids": [r.trial_id for r in ok],
        }
        for m in METRICS:
            vals = np.array([r.metrics[m] for r in ok], dtype=np.float64)
            entry[m] = float(vals.mean()) if len(vals) else math.nan
            entry[f"{m}_std"] = float(vals.std()) if len(vals) else math.nan
        entry["value"] = st.spec.combine([r.metrics[metric] for r in ok]) if ok else math.nan
        entry["selected"] = st.best is not None and all(
            float(st.best.point[k]) == float(p[k]) for k in st.spec.grid
        )
        table.append(entry)
    return table


def selected_trial(run: Run, stage: str) -> str:
    """The trial id of the stage's selected point; with replicates, its best replicate.

    Raises:
        RunDirError: the stage has not finished.
    """
    st, rows = _done(run, stage)
    metric = run.spec.train.metric
    if st.best is None:
        raise RunDirError(f"{run.path}: stage {stage!r} has no best.json: not finished")
    best = st.best
    mine = [r for r in rows if r.finished(metric) and r.matches(best.point)]
    if not mine:
        raise RunDirError(
            f"{run.path}: stage {stage!r} has no finished trial at its best point {best.point}"
        )
    return max(mine, key=lambda r: r.metrics[metric]).trial_id


# --- val against test ---------------------------------------------------------------------------


def _mean_std(dicts: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [k for k in dicts[0] if k != "n_dates"]
    arr = {k: np.array([d[k] for d in dicts], dtype=np.float64) for k in keys}
    return {k: float(v.mean()) for k, v in arr.items()}, {k: float(v.std()) for k, v in arr.items()}


def top_test(run: Run, stage: str, test_panel: Panel, k: int, n: int = 5) -> list[dict[str, Any]]:
    """The stage's top-n grid points by selection value, their val and test metrics side by side.

    Each finished trial of a point is scored on `test_panel` with the `best_state` of its latest
    checkpoint (the weights of its best val evaluation, whose metrics results.csv holds).

    Returns:
        one dict per point, best first: `rank`, `point`, `selected`, `value`, `n`, `val` and
        `test` (metric means over replicates), `val_std` and `test_std` (ddof=0), and `trials`
        (per trial: trial_id, replicate, val, test).
    """
    st, rows = _done(run, stage)
    by_id = {r.trial_id: r for r in rows}
    ranked = sorted((p for p in point_table(run, stage) if p["n"]), key=lambda p: -p["value"])
    out = []
    for rank, p in enumerate(ranked[:n], start=1):
        trials = []
        for tid in p["trial_ids"]:
            row = by_id[tid]
            state = run.trial_state(row)
            model = MultiBranchRanker.from_state(state.model_config, state.progress.best_state)
            test = backtest(test_panel, score(model, test_panel), k).metrics
            trials.append({"trial_id": tid, "replicate": row.replicate,
                           "val": dict(row.metrics), "test": test})  # fmt: skip
        val_mean, val_std = _mean_std([t["val"] for t in trials])
        test_mean, test_std = _mean_std([t["test"] for t in trials])
        out.append({
            "rank": rank, "point": {key: p[key] for key in st.spec.grid}, "selected": p["selected"],
            "value": p["value"], "n": p["n"], "val": val_mean, "test": test_mean,
            "val_std": val_std, "test_std": test_std, "trials": trials,
        })  # fmt: skip
    return out


# --- everything ---------------------------------------------------------------------------------


def analyze(
    run: Run, test_panel: Panel | None, k: int, *, n_top: int = 5, n_blocks: int = 16
) -> dict[str, Any]:
    """Overfitting statistics of every finished stage and of the final model.

    Args:
        run: the loaded run.
        test_panel: the run's test Panel for `top_test`; None skips the test scoring.
        k: names per book (the spec's train.k).
        n_top: configs per stage scored on the test set.
        n_blocks: CSCV blocks requested (see `series_pbo`).

    Returns:
        A dict: `stages` (per stage: stage, metric, value, selected_point, selected_trial, pbo,
        dsr, points, top_test), `final` (the final model's DSR, or None before the last stage
        finished), `n_trials` (all finished trials with a series), `k`, `n_blocks_requested`.
    """
    names = [s.name for s in run.finished]
    stages = []
    for i, st in enumerate(run.finished):
        assert st.best is not None  # run.finished holds finished stages only
        sel = selected_trial(run, st.name)
        stages.append({
            "stage": st.name,
            "metric": run.spec.train.metric,
            "value": st.best.value,
            "selected_point": st.best.point,
            "selected_trial": sel,
            "pbo": stage_pbo(run, st.name, n_blocks),
            "dsr": selected_dsr(run, names[: i + 1], sel),
            "points": point_table(run, st.name),
            "top_test": None if test_panel is None else top_test(run, st.name, test_panel, k, n_top),
        })  # fmt: skip
    final = None
    if names and len(names) == len(run.stages):
        final = final_dsr(run, names, stages[-1]["selected_trial"])
    return {
        "stages": stages,
        "final": final,
        "n_trials": sum(len(run.trial_series(n)) for n in names),
        "k": k,
        "n_blocks_requested": n_blocks,
    }


def load_test_panel(run: Run, source: str | None = None) -> Panel:
    """The run's test Panel, rebuilt from its data (`source`, default run.json's) and spec.

    Raises:
        RunDirError: no source given and the run recorded none, or data that is not the run's
            (its columns, rows, universe or splits differ from run.json's).
        DataError: the data cannot be loaded.
    """
    if run.info is None:
        if source is None:
            raise RunDirError(
                f"{run.path}: no run.json, so the data source is unknown. Fix: pass --data."
            )
        return load(source, run.spec.universe, run.spec.split).test
    ds = load(source or run.info.source, run.spec.universe, run.spec.split)
    run.info.check_same_data(ds, source or run.info.source, run.path)
    return ds.test

"""Is the winner real? Overfitting statistics of a search run, from its loaded files.

Everything here works on a loaded `rundir.Run` (and, for `top_test`, a test Panel):

- `stage_pbo`: the probability of backtest overfitting (CSCV, `ranker.overfit.pbo`) over a
  stage's finished trials, from their daily validation IC (the series each trial saved with its
  best evaluation), ranked by per-period IC Sharpe.
- `selected_dsr`: the deflated Sharpe ratio of the selected trial's daily val IC, deflated by the
  number of trials evaluated so far in the run (all stages up to this one) and the variance of
  their per-period IC Sharpes.
- `top_test`: the stage's top configs, by the selection value, scored on the test set.
- `point_table`: per grid point, the mean and std of every metric over its replicates.
- `analyze`: all of it, per stage and for the final model, as one JSON-able dict (the driver
  writes it to analysis.json).

Conventions: N counts trials (replicates included), not independent configs, so the deflation
is conservative when replicates or neighbouring grid points are correlated. With replicates,
the DSR's selected trial is the best replicate of the selected point: choosing it among all N
trials is the selection the DSR deflates for. Stds over replicates are population stds (ddof=0),
as best.json's `replicate_std`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ranker.data import load
from ranker.metrics import evaluate_bounds
from ranker.model import MultiBranchRanker
from ranker.overfit import ANN_SCALER, deflated_sharpe_ratio, pbo
from ranker.panel import Panel
from ranker.train import METRICS, score
from search.errors import RunDirError
from search.rundir import Run, Series, StageRecord, TrialRow

_COMBINE = {"mean": np.mean, "median": np.median, "min": np.min}


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
    combine = _COMBINE[st.spec.select]
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
        entry["value"] = float(combine([r.metrics[metric] for r in ok])) if ok else math.nan
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


# --- PBO and DSR --------------------------------------------------------------------------------


def ic_matrix(series: dict[str, Series]) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """The (T dates, N trials) daily IC matrix on the dates every trial has a finite IC.

    Returns:
        (perf, trial_ids, dates, dropped): the matrix, its columns, its rows (datetime64[D]),
        and the trials left out because they have no finite IC at all.
    """
    ids = [t for t, s in series.items() if np.isfinite(s.ic).any()]
    dropped = [t for t in series if t not in ids]
    if not ids:
        return np.zeros((0, 0)), [], np.zeros(0, dtype="datetime64[D]"), dropped
    common = series[ids[0]].date[np.isfinite(series[ids[0]].ic)]
    for tid in ids[1:]:
        s = series[tid]
        common = np.intersect1d(common, s.date[np.isfinite(s.ic)])
    cols = []
    for tid in ids:
        s = series[tid]
        order = np.argsort(s.date, kind="stable")
        pos = order[np.searchsorted(s.date, common, sorter=order)]
        cols.append(s.ic[pos])
    return np.stack(cols, axis=1), ids, common, dropped


def blocks_for(n_dates: int, n_blocks: int = 16) -> int:
    """The CSCV block count S used for T dates: `n_blocks`, or, when T < n_blocks, the largest
    even number <= T // 2 (so each block still holds at least 2 dates); 0 when none fits."""
    if n_dates >= n_blocks:
        return n_blocks
    s = n_dates // 2
    return s - s % 2


def series_pbo(series: dict[str, Series], n_blocks: int = 16) -> dict[str, Any]:
    """PBO by CSCV over trials' daily val IC (T dates x N trials), ranked by per-period IC Sharpe
    in each half. Dates missing, or with an undefined IC, for any trial are dropped; T % S of the
    most recent dates are dropped by CSCV itself.

    Args:
        series: each trial's val series, by trial id.
        n_blocks: S requested (even); lowered when there are fewer than S usable dates.

    Returns:
        dict with `n_trials` (N), `trial_ids`, `trials_without_ic`, `n_dates` (T aligned),
        `n_dates_used`, `n_blocks` (S used), `n_blocks_requested`, and either `skipped` (the
        reason) or `pbo`, `n_combinations`, `prob_oos_loss`, `logit_median`, `is_metric_mean`,
        `oos_metric_mean` (per-period IC Sharpe of the IS-best config in each half) and
        `degradation_slope` (OOS on IS least squares slope; NaN if IS is constant).

    Raises:
        ValueError: n_blocks is not an even integer >= 2.
    """
    if int(n_blocks) != n_blocks or n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks={n_blocks!r}: must be an even integer >= 2, e.g. 16")
    perf, ids, dates, dropped = ic_matrix(series)
    t = len(dates)
    s = blocks_for(t, n_blocks)
    out: dict[str, Any] = {
        "n_trials": len(ids),
        "trial_ids": ids,
        "trials_without_ic": dropped,
        "n_dates": t,
        "n_blocks_requested": n_blocks,
        "n_blocks": s,
        "n_dates_used": (t // s) * s if s else 0,
        "series": "val daily IC",
        "metric": "per-period IC Sharpe",
    }
    if len(ids) < 2:
        return out | {
            "skipped": f"N={len(ids)} finished trial(s) with an IC series; PBO ranks >= 2"
        }
    if s < 2:
        return out | {"skipped": f"T={t} common val dates; CSCV needs at least 4 (2 blocks of 2)"}
    r = pbo(perf, n_blocks=s)
    is_m, oos_m = r["is_metric"], r["oos_metric"]
    slope = math.nan
    if np.ptp(is_m) > 0:
        slope = float(np.polyfit(is_m, oos_m, 1)[0])
    return out | {
        "pbo": r["pbo"],
        "n_combinations": r["n_combinations"],
        "prob_oos_loss": r["prob_oos_loss"],
        "logit_median": float(np.median(r["logits"])),
        "is_metric_mean": float(np.mean(is_m)),
        "oos_metric_mean": float(np.mean(oos_m)),
        "degradation_slope": slope,
    }


def stage_pbo(run: Run, stage: str, n_blocks: int = 16) -> dict[str, Any]:
    """`series_pbo` over a stage's finished trials, with `stage` added."""
    return {"stage": stage} | series_pbo(run.trial_series(stage), n_blocks)


def _per_period_sharpe(ic: np.ndarray) -> float:
    """mean/std (ddof=1) of the finite values; NaN with fewer than 3 or zero spread."""
    x = np.asarray(ic, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 3 or x.std(ddof=1) == 0:
        return math.nan
    return float(x.mean() / x.std(ddof=1))


def _dsr(ic: np.ndarray, sharpes: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    """DSR of `ic` with N = len(sharpes) and V their variance, or a `skipped` reason."""
    n = len(sharpes)
    usable = [x for x in sharpes if not math.isnan(x)]
    out = dict(extra) | {"n_trials": n}
    if math.isnan(_per_period_sharpe(ic)):
        n_obs = int(np.isfinite(ic).sum())
        return out | {"skipped": f"the selected series has {n_obs} finite IC(s) or no spread"}
    if n > 1 and len(usable) < 2:
        return out | {"skipped": f"{len(usable)} of the {n} trials have a usable IC Sharpe"}
    var = float(np.var(usable, ddof=1)) if n > 1 else 0.0
    r = deflated_sharpe_ratio(ic, n_trials=n, sharpe_variance=var)
    return out | r | {"sharpe_variance": var, "sr0_annual": r["sr0"] * math.sqrt(ANN_SCALER)}


def all_series(run: Run, stages: list[str]) -> dict[str, Series]:
    """The val series of every finished trial of `stages`, by trial id."""
    out: dict[str, Series] = {}
    for st in stages:
        out |= run.trial_series(st)
    return out


def selected_dsr(run: Run, stages_so_far: list[str], selected: str) -> dict[str, Any]:
    """Deflated Sharpe of the selected trial's daily val IC.

    Args:
        stages_so_far: every stage up to and including the selecting one; N is the number of
            finished trials with a series across them, V the variance (ddof=1) of their
            per-period IC Sharpes.
        selected: the trial id whose series is tested (see `selected_trial`).

    Returns:
        `ranker.overfit.deflated_sharpe_ratio`'s dict (dsr, psr, sharpe, sharpe_annual, sr0,
        n_trials, n_obs, skew, kurtosis) plus `trial_id`, `stages`, `sharpe_variance` and
        `sr0_annual`; or `skipped` with the reason.

    Raises:
        RunDirError: `selected` is not a finished trial of those stages.
    """
    series = all_series(run, stages_so_far)
    if selected not in series:
        raise RunDirError(
            f"trial {selected!r} has no val series among the finished trials of "
            f"{list(stages_so_far)}; pass a trial id from their results.csv"
        )
    sharpes = [_per_period_sharpe(s.ic) for s in series.values()]
    extra = {"trial_id": selected, "stages": list(stages_so_far)}
    return _dsr(series[selected].ic, sharpes, extra)


def final_dsr(run: Run, stages: list[str], last_selected: str) -> dict[str, Any]:
    """DSR of the final model against every trial of the run.

    Uses the final model's own val IC series when the run has it, else the last stage's
    selected trial's series (the same config, trained for the stages' epochs);
    `series_source` says which.
    """
    own = run.final_series("final", "val")
    if own is not None:
        series = all_series(run, stages)
        sharpes = [_per_period_sharpe(s.ic) for s in series.values()]
        extra = {"series_source": "the final model's own val series", "stages": list(stages)}
        return _dsr(own.ic, sharpes, extra)
    r = selected_dsr(run, stages, last_selected)
    return r | {"series_source": f"selected trial {last_selected} of stage {stages[-1]!r}"}


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
            model = MultiBranchRanker.from_state(state["model_config"], state["best_state"])
            test = evaluate_bounds(
                test_panel.bounds, score(model, test_panel), test_panel.returns, k=k
            )
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
        "n_trials": len(all_series(run, names)),
        "k": k,
        "n_blocks_requested": n_blocks,
    }


def load_test_panel(run: Run, source: str | None = None) -> Panel:
    """The run's test Panel, rebuilt from its data (`source`, default run.json's) and spec.

    Raises:
        RunDirError: no source given and the run recorded none.
        DataError: the data cannot be loaded.
    """
    if source is None:
        if run.info is None:
            raise RunDirError(
                f"{run.path}: no run.json, so the data source is unknown. Fix: pass --data."
            )
        source = run.info.source
    return load(source, run.spec.universe, run.spec.split).test

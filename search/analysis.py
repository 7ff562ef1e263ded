"""Is the winner real? Overfitting statistics of a search run, read from its files.

Everything here reads a run directory (a local path or a URI) and nothing else, except
`top_test`, which also scores a test Panel:

- `stage_pbo`: the probability of backtest overfitting (CSCV, `ranker.overfit.pbo`) over a
  stage's finished trials, from their daily validation IC (each checkpoint's `daily.npz`, the
  series of the trial's best evaluation), ranked by per-period IC Sharpe.
- `selected_dsr`: the deflated Sharpe ratio of the selected trial's daily val IC, deflated by the
  number of trials evaluated so far in the run (all stages up to this one) and the variance of
  their per-period IC Sharpes.
- `top_test`: the stage's top configs, by the selection value, scored on the test set.
- `point_table`: per grid point, the mean and std of every metric over its replicates.
- `analyze`: all of it, per stage and for the final model, as one JSON-able dict, also written
  to RUN_DIR/analysis.json.

Conventions: N counts trials (replicates included), not independent configs, so the deflation
is conservative when replicates or neighbouring grid points are correlated. With replicates,
the DSR's selected trial is the best replicate of the selected point: choosing it among all N
trials is the selection the DSR deflates for. Stds over replicates are population stds (ddof=0),
as best.json's `replicate_std`.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
import yaml

from ranker.metrics import evaluate_bounds
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.overfit import ANN_SCALER, deflated_sharpe_ratio, pbo
from ranker.panel import Panel
from ranker.train import METRICS, score
from search import store
from search.spec import SearchSpec, StageSpec, from_dict
from search.stages import RESULTS, read_best, read_results
from search.trainable import REPLICATE, SERIES_FILE, STATE_FILE

ANALYSIS_FILE = "analysis.json"
FINAL_VAL_SERIES = "final/final_val_daily.npz"  # written by the driver, when it does
FINISHED = "TERMINATED"
_INT_COLS = ("replicate", "seed", "epochs", "best_epoch", "restored")
_FLOAT_COLS = (*METRICS, "train_seconds", "mem_private_mb", "mem_rss_mb")


# --- reading a run -------------------------------------------------------------------------------


def load_spec(run_dir: str) -> SearchSpec:
    """The resolved spec the run was started with (RUN_DIR/spec.yaml)."""
    path = store.join(run_dir, "spec.yaml")
    if not store.exists(path):
        raise FileNotFoundError(f"{path}: no spec.yaml, so {run_dir} is not a run directory")
    return from_dict(yaml.safe_load(store.read_text(path)), path)


def _number(text: str) -> int | float:
    try:
        return int(text)
    except ValueError:
        return float(text)


def stage_rows(run_dir: str, stage: str) -> list[dict[str, Any]]:
    """results.csv of a finished stage with numbers parsed (grid keys, metrics, counts).

    Raises:
        FileNotFoundError: the stage has no results.csv (not started or still in flight).
    """
    path = store.join(run_dir, stage, RESULTS)
    if not store.exists(path):
        raise FileNotFoundError(
            f"{path}: missing; stage {stage!r} has not finished (`liquid-search status "
            f"{run_dir}` shows its trials in flight)"
        )
    spec_keys = set(_stage_spec(run_dir, stage).grid)
    rows = read_results(run_dir, stage)
    for r in rows:
        for k in spec_keys:
            r[k] = _number(r[k])
        for k in _INT_COLS:
            if k in r:
                r[k] = int(float(r[k] or 0))
        for k in _FLOAT_COLS:
            if k in r:
                r[k] = float(r[k]) if r[k] != "" else math.nan
    return rows


def _stage_spec(run_dir: str, stage: str) -> StageSpec:
    spec = load_spec(run_dir)
    try:
        return spec.stage(stage)
    except KeyError as e:
        raise ValueError(str(e.args[0])) from None


def _finished(row: dict[str, Any], metric: str) -> bool:
    return row["status"] == FINISHED and not math.isnan(row[metric])


def trial_dir(run_dir: str, stage: str, row: dict[str, Any]) -> str:
    """A trial's directory under RUN_DIR/<stage>/, by the directory name recorded in results.csv.

    Only the name is used, so a run directory that was moved, or one on an object store (where
    Tune records the path without its scheme), still resolves.
    """
    name = row.get("path", "").rstrip("/").rsplit("/", 1)[-1] or f"{stage}_{row['trial_id']}"
    return store.join(run_dir, stage, name)


def latest_checkpoint(tdir: str) -> str | None:
    """The trial's newest `checkpoint_NNNNNN` directory, or None if it never reported."""
    names = [n for n in store.listdir(tdir) if n.startswith("checkpoint_")]
    if not names:
        return None
    return store.join(tdir, max(names, key=lambda n: int(n.rsplit("_", 1)[-1])))


def _load_npz(path: str) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(store.read_bytes(path))) as z:
        return {k: z[k] for k in z.files}


def load_state(tdir: str) -> dict[str, Any]:
    """The training state in the trial's latest checkpoint (`torch.load(weights_only=True)`).

    Raises:
        FileNotFoundError: the trial has no checkpoint with a state.pt.
    """
    ck = latest_checkpoint(tdir)
    path = None if ck is None else store.join(ck, STATE_FILE)
    if path is None or not store.exists(path):
        raise FileNotFoundError(
            f"{tdir}: no checkpoint with {STATE_FILE}; the trial never finished an evaluation"
        )
    return torch.load(io.BytesIO(store.read_bytes(path)), map_location="cpu", weights_only=True)


def best_model(state: dict[str, Any]) -> MultiBranchRanker:
    """The model of a trial's best evaluation (`best_state`), in eval mode."""
    model = MultiBranchRanker(ModelConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["best_state"])
    model.eval()
    return model


def trial_series(run_dir: str, stage: str) -> dict[str, dict[str, np.ndarray]]:
    """The val per-date series of each finished trial's best evaluation, by trial id.

    Read from `daily.npz` in each trial's latest checkpoint: date_idx, ic, long, short, ls,
    long_symbols, short_symbols. Trials that did not finish, or have no series, are left out.
    """
    out = {}
    for row in stage_rows(run_dir, stage):
        if row["status"] != FINISHED:
            continue
        ck = latest_checkpoint(trial_dir(run_dir, stage, row))
        path = None if ck is None else store.join(ck, SERIES_FILE)
        if path is not None and store.exists(path):
            out[row["trial_id"]] = _load_npz(path)
    return out


# --- per-point table ----------------------------------------------------------------------------


def _combine(select: str) -> Any:
    return {"mean": np.mean, "median": np.median, "min": np.min}[select]


def point_table(run_dir: str, stage: str) -> list[dict[str, Any]]:
    """One row per grid point, in grid order: every metric's mean and std over its replicates.

    Returns:
        dicts with the grid keys, `n` (finished replicates), `errors`, `trial_ids`, for each
        metric `<metric>` (mean) and `<metric>_std` (ddof=0; 0 for one replicate, NaN for none),
        `value` (the selection value: the stage's `select` of the selection metric, as
        best.json) and `selected` (this is best.json's point).
    """
    spec = load_spec(run_dir)
    st = spec.stage(stage)
    metric = spec.train.metric
    rows = stage_rows(run_dir, stage)
    best = read_best(run_dir, stage)
    keys = list(st.grid)
    combine = _combine(st.select)
    table = []
    for p in st.points:
        mine = [r for r in rows if all(float(r[k]) == float(p[k]) for k in keys)]
        ok = [r for r in mine if _finished(r, metric)]
        entry: dict[str, Any] = {
            **p,
            "n": len(ok),
            "errors": sum(r["status"] != FINISHED for r in mine),
            "trial_ids": [r["trial_id"] for r in ok],
        }
        for m in METRICS:
            vals = np.array([r[m] for r in ok], dtype=np.float64)
            entry[m] = float(vals.mean()) if len(vals) else math.nan
            entry[f"{m}_std"] = float(vals.std()) if len(vals) else math.nan
        entry["value"] = float(combine([r[metric] for r in ok])) if ok else math.nan
        entry["selected"] = best is not None and all(
            float(best["point"][k]) == float(p[k]) for k in keys
        )
        table.append(entry)
    return table


def selected_trial(run_dir: str, stage: str) -> str:
    """The trial id of the stage's selected point; with replicates, its best replicate."""
    spec = load_spec(run_dir)
    metric = spec.train.metric
    best = read_best(run_dir, stage)
    if best is None:
        raise FileNotFoundError(f"stage {stage!r} of {run_dir} has no best.json: not finished")
    rows = [
        r for r in stage_rows(run_dir, stage)
        if _finished(r, metric) and all(float(r[k]) == float(v) for k, v in best["point"].items())
    ]  # fmt: skip
    if not rows:
        raise ValueError(f"stage {stage!r}: no finished trial at its best point {best['point']}")
    return max(rows, key=lambda r: r[metric])["trial_id"]


# --- PBO and DSR --------------------------------------------------------------------------------


def ic_matrix(
    series: dict[str, dict[str, np.ndarray]],
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """The (T dates, N trials) daily IC matrix on the dates every trial has a finite IC.

    Returns:
        (perf, trial_ids, date_idx, dropped): the matrix, its columns, its rows (val date
        positions), and the trials left out because they have no finite IC at all.
    """
    ids, dropped = [], []
    for tid, s in series.items():
        (ids if np.isfinite(s["ic"]).any() else dropped).append(tid)
    if not ids:
        return np.zeros((0, 0)), [], np.zeros(0, dtype=np.int64), dropped
    common = None
    for tid in ids:
        s = series[tid]
        good = s["date_idx"][np.isfinite(s["ic"])]
        common = good if common is None else np.intersect1d(common, good)
    assert common is not None
    cols = []
    for tid in ids:
        s = series[tid]
        pos = np.searchsorted(s["date_idx"], common)
        assert np.array_equal(s["date_idx"][pos], common), f"trial {tid}: date_idx not sorted"
        cols.append(s["ic"][pos])
    return np.stack(cols, axis=1), ids, common, dropped


def blocks_for(n_dates: int, n_blocks: int = 16) -> int:
    """The CSCV block count S used for T dates: `n_blocks`, or, when T < n_blocks, the largest
    even number <= T // 2 (so each block still holds at least 2 dates); 0 when none fits."""
    if n_dates >= n_blocks:
        return n_blocks
    s = n_dates // 2
    return s - s % 2


def stage_pbo(run_dir: str, stage: str, n_blocks: int = 16) -> dict[str, Any]:
    """PBO by CSCV over a stage's finished trials, perf = their daily val IC (T dates x N trials).

    Configs are ranked by per-period IC Sharpe in each half. Dates missing, or with an undefined
    IC, for any trial are dropped; T % S of the most recent dates are dropped by CSCV itself.

    Args:
        n_blocks: S requested (even); lowered when the stage has fewer than S usable dates.

    Returns:
        dict with `stage`, `n_trials` (N), `trial_ids`, `n_dates` (T aligned), `n_dates_used`,
        `n_blocks` (S used), `n_blocks_requested`, and either `skipped` (the reason) or `pbo`,
        `n_combinations`, `prob_oos_loss`, `logit_median`, `is_metric_mean`,
        `oos_metric_mean` (per-period IC Sharpe of the IS-best config in each half) and
        `degradation_slope` (OOS on IS least squares slope; NaN if IS is constant).
    """
    if int(n_blocks) != n_blocks or n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks={n_blocks!r}: must be an even integer >= 2, e.g. 16")
    perf, ids, dates, dropped = ic_matrix(trial_series(run_dir, stage))
    t = len(dates)
    s = blocks_for(t, n_blocks)
    out: dict[str, Any] = {
        "stage": stage,
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


def _all_series(run_dir: str, stages: Iterable[str]) -> dict[str, dict[str, np.ndarray]]:
    out: dict[str, dict[str, np.ndarray]] = {}
    for st in stages:
        out |= trial_series(run_dir, st)
    return out


def selected_dsr(run_dir: str, stages_so_far: list[str], selected_trial: str) -> dict[str, Any]:
    """Deflated Sharpe of the selected trial's daily val IC.

    Args:
        stages_so_far: every stage up to and including the selecting one; N is the number of
            finished trials with a series across them, V the variance (ddof=1) of their
            per-period IC Sharpes.
        selected_trial: the trial id whose series is tested (see `selected_trial`).

    Returns:
        `ranker.overfit.deflated_sharpe_ratio`'s dict (dsr, psr, sharpe, sharpe_annual, sr0,
        n_trials, n_obs, skew, kurtosis) plus `trial_id`, `stages`, `sharpe_variance` and
        `sr0_annual`; or `skipped` with the reason.

    Raises:
        ValueError: `selected_trial` is not a finished trial of those stages.
    """
    series = _all_series(run_dir, stages_so_far)
    if selected_trial not in series:
        raise ValueError(
            f"trial {selected_trial!r} has no val series among the finished trials of "
            f"{list(stages_so_far)}; pass a trial id from their results.csv"
        )
    sharpes = [_per_period_sharpe(s["ic"]) for s in series.values()]
    extra = {"trial_id": selected_trial, "stages": list(stages_so_far)}
    return _dsr(series[selected_trial]["ic"], sharpes, extra)


# --- val against test ---------------------------------------------------------------------------


def _mean_std(dicts: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    keys = [k for k in dicts[0] if k != "n_dates"]
    arr = {k: np.array([d[k] for d in dicts], dtype=np.float64) for k in keys}
    return {k: float(v.mean()) for k, v in arr.items()}, {k: float(v.std()) for k, v in arr.items()}


def top_test(
    run_dir: str, stage: str, test_panel: Panel, k: int, n: int = 5
) -> list[dict[str, Any]]:
    """The stage's top-n grid points by selection value, their val and test metrics side by side.

    Each finished trial of a point is scored on `test_panel` with the `best_state` of its latest
    checkpoint (the weights of its best val evaluation, whose metrics results.csv holds).

    Returns:
        one dict per point, best first: `rank`, `point`, `selected`, `value`, `n`, `val` and
        `test` (metric means over replicates), `val_std` and `test_std` (ddof=0), and `trials`
        (per trial: trial_id, replicate, val, test).
    """
    keys = list(_stage_spec(run_dir, stage).grid)
    rows = {r["trial_id"]: r for r in stage_rows(run_dir, stage)}
    ranked = sorted((p for p in point_table(run_dir, stage) if p["n"]), key=lambda p: -p["value"])
    out = []
    for rank, p in enumerate(ranked[:n], start=1):
        trials = []
        for tid in p["trial_ids"]:
            row = rows[tid]
            model = best_model(load_state(trial_dir(run_dir, stage, row)))
            test = evaluate_bounds(
                test_panel.bounds, score(model, test_panel), test_panel.returns, k=k
            )
            val = {m: row[m] for m in METRICS}
            trials.append({"trial_id": tid, "replicate": row[REPLICATE], "val": val, "test": test})
        val_mean, val_std = _mean_std([t["val"] for t in trials])
        test_mean, test_std = _mean_std([t["test"] for t in trials])
        out.append({
            "rank": rank, "point": {key: p[key] for key in keys}, "selected": p["selected"],
            "value": p["value"], "n": p["n"], "val": val_mean, "test": test_mean,
            "val_std": val_std, "test_std": test_std, "trials": trials,
        })  # fmt: skip
    return out


# --- everything ---------------------------------------------------------------------------------


def finished_stages(run_dir: str) -> list[str]:
    """The spec's stages with a best.json and a results.csv, in order, up to the first without."""
    out = []
    for st in load_spec(run_dir).stages:
        if read_best(run_dir, st.name) is None or not store.exists(
            store.join(run_dir, st.name, RESULTS)
        ):
            break
        out.append(st.name)
    return out


def _jsonable(o: Any) -> Any:
    """NaN/inf -> None, numpy -> Python, recursively (analysis.json is strict JSON)."""
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_jsonable(v) for v in o]
    if isinstance(o, np.ndarray):
        return _jsonable(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def analyze(
    run_dir: str,
    test_panel: Panel | None,
    k: int,
    *,
    n_top: int = 5,
    n_blocks: int = 16,
    write: bool = True,
) -> dict[str, Any]:
    """Overfitting statistics of every finished stage and of the final model.

    Args:
        run_dir: the run directory (local path or URI).
        test_panel: the run's test Panel for `top_test`; None skips the test scoring.
        k: names per book (the spec's train.k).
        n_top: configs per stage scored on the test set.
        n_blocks: CSCV blocks requested (see `stage_pbo`).
        write: also write RUN_DIR/analysis.json (atomically).

    Returns:
        A JSON-able dict (NaN as None): `stages` (per stage: stage, metric, selected_point,
        selected_trial, pbo, dsr, points, top_test), `final` (the final model's DSR, or None
        before the last stage finished), `n_trials` (all finished trials with a series).
    """
    spec = load_spec(run_dir)
    names = finished_stages(run_dir)
    stages = []
    for i, name in enumerate(names):
        best = read_best(run_dir, name)
        assert best is not None
        sel = selected_trial(run_dir, name)
        stages.append({
            "stage": name,
            "metric": spec.train.metric,
            "value": best["value"],
            "selected_point": best["point"],
            "selected_trial": sel,
            "pbo": stage_pbo(run_dir, name, n_blocks),
            "dsr": selected_dsr(run_dir, names[: i + 1], sel),
            "points": point_table(run_dir, name),
            "top_test": None if test_panel is None else top_test(run_dir, name, test_panel, k, n_top),
        })  # fmt: skip
    final = None
    if names and len(names) == len(spec.stages):
        final = final_dsr(run_dir, names, stages[-1]["selected_trial"])
    out = {
        "stages": stages,
        "final": final,
        "n_trials": len(_all_series(run_dir, names)),
        "k": k,
        "n_blocks_requested": n_blocks,
    }
    out = _jsonable(out)
    if write:
        text = json.dumps(out, indent=2, allow_nan=False)
        store.write_text(store.join(run_dir, ANALYSIS_FILE), text)
    return out


def final_dsr(run_dir: str, stages: list[str], last_selected: str) -> dict[str, Any]:
    """DSR of the final model against every trial of the run.

    Uses the final model's own val IC series when the driver saved it (RUN_DIR/final/
    final_val_daily.npz), else the last stage's selected trial's series (the same config,
    trained for the stages' epochs); `series_source` says which.
    """
    path = store.join(run_dir, FINAL_VAL_SERIES)
    if store.exists(path):
        series = _all_series(run_dir, stages)
        sharpes = [_per_period_sharpe(s["ic"]) for s in series.values()]
        extra = {"series_source": FINAL_VAL_SERIES, "stages": list(stages)}
        return _dsr(_load_npz(path)["ic"], sharpes, extra)
    r = selected_dsr(run_dir, stages, last_selected)
    return r | {"series_source": f"selected trial {last_selected} of stage {stages[-1]!r}"}


def read_analysis(run_dir: str) -> dict[str, Any] | None:
    """RUN_DIR/analysis.json, or summary.json's `overfitting`, or None."""
    path = store.join(run_dir, ANALYSIS_FILE)
    if store.exists(path):
        return json.loads(store.read_text(path))
    summary = store.join(run_dir, "summary.json")
    if store.exists(summary):
        return json.loads(store.read_text(summary)).get("overfitting")
    return None


def load_test_panel(run_dir: str, source: str | None = None) -> Panel:
    """The run's test Panel, rebuilt from its data (`source`, default run.json's) and spec."""
    from ranker.data import load

    spec = load_spec(run_dir)
    if source is None:
        source = json.loads(store.read_text(store.join(run_dir, "run.json")))["source"]
    return load(source, spec.universe, spec.split).test

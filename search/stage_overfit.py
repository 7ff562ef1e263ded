"""Is the winner real? The probability of backtest overfitting of each stage and the deflated
Sharpe ratio of each selection, from the trials' daily validation IC.

- `stage_pbo` / `series_pbo`: PBO by CSCV (`ranker.overfit_stats.pbo`) over a stage's finished trials,
  from their daily val IC (the series each trial saved with its best evaluation), ranked by
  per-period IC Sharpe.
- `selected_dsr`: the deflated Sharpe ratio of the selected trial's daily val IC, deflated by the
  number of trials evaluated so far in the run (all stages up to this one) and the variance of
  their per-period IC Sharpes; `final_dsr` the same for the final model.

N counts trials (replicates included), not independent configs, so the deflation is
conservative when replicates or neighbouring grid points are correlated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ranker.metrics import ANN
from ranker.overfit_stats import deflated_sharpe_ratio, pbo
from search.errors import RunDirError
from search.rundir import Run, Series


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
    """mean/std of the finite values (ddof=0, the project's Sharpe: `ranker.metrics.sharpe`);
    NaN with fewer than 3 or zero spread."""
    x = np.asarray(ic, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 3 or x.std() == 0:
        return math.nan
    return float(x.mean() / x.std())


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
    return out | r | {"sharpe_variance": var, "sr0_annual": r["sr0"] * math.sqrt(ANN)}


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
        `ranker.overfit_stats.deflated_sharpe_ratio`'s dict (dsr, psr, sharpe, sharpe_annual, sr0,
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

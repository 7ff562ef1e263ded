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

Under successive halving a trial cut at a rung is a finished candidate: its series is that of
its best evaluation up to the cut, so PBO, DSR (N counts it) and the tied set (`significance`)
judge it by what it had shown when it was stopped, as the selection did.
"""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np

from ranker.metrics import ANN
from ranker.overfit_stats import deflated_sharpe_ratio, pbo
from search.errors import RunDirError
from search.results import DSR, PBO
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


def series_pbo(series: dict[str, Series], n_blocks: int = 16, stage: str = "") -> PBO:
    """PBO by CSCV over trials' daily val IC (T dates x N trials), ranked by per-period IC Sharpe
    in each half. Dates missing, or with an undefined IC, for any trial are dropped; T % S of the
    most recent dates are dropped by CSCV itself.

    Args:
        series: each trial's val series, by trial id.
        n_blocks: S requested (even); lowered when there are fewer than S usable dates.

    Returns:
        The PBO record: the counts (N trials, T dates aligned and used, S blocks used and
        requested), and either `skipped` (the reason) or the PBO, its number of combinations,
        the probability of an out-of-sample loss, the logits' median, the mean per-period IC
        Sharpe of the IS-best config in and out of sample, and the degradation slope (OOS on IS
        least squares; NaN if IS is constant).

    Raises:
        ValueError: n_blocks is not an even integer >= 2.
    """
    if int(n_blocks) != n_blocks or n_blocks < 2 or n_blocks % 2:
        raise ValueError(f"n_blocks={n_blocks!r}: must be an even integer >= 2, e.g. 16")
    perf, ids, dates, dropped = ic_matrix(series)
    t = len(dates)
    s = blocks_for(t, n_blocks)
    out = PBO(stage=stage, n_trials=len(ids), trial_ids=tuple(ids),
              trials_without_ic=tuple(dropped), n_dates=t,
              n_dates_used=(t // s) * s if s else 0, n_blocks=s,
              n_blocks_requested=n_blocks)  # fmt: skip
    if len(ids) < 2:
        return replace(
            out, skipped=f"N={len(ids)} finished trial(s) with an IC series; PBO ranks >= 2"
        )
    if s < 2:
        return replace(
            out, skipped=f"T={t} common val dates; CSCV needs at least 4 (2 blocks of 2)"
        )
    r = pbo(perf, n_blocks=s)
    is_m, oos_m = r["is_metric"], r["oos_metric"]
    slope = math.nan
    if np.ptp(is_m) > 0:
        slope = float(np.polyfit(is_m, oos_m, 1)[0])
    return replace(
        out, pbo=float(r["pbo"]), n_combinations=int(r["n_combinations"]),
        prob_oos_loss=float(r["prob_oos_loss"]), logit_median=float(np.median(r["logits"])),
        is_metric_mean=float(np.mean(is_m)), oos_metric_mean=float(np.mean(oos_m)),
        degradation_slope=slope,
    )  # fmt: skip


def stage_pbo(run: Run, stage: str, n_blocks: int = 16) -> PBO:
    """`series_pbo` over a stage's finished trials."""
    return series_pbo(run.trial_series(stage), n_blocks, stage)


def _per_period_sharpe(ic: np.ndarray) -> float:
    """mean/std of the finite values (ddof=0, the project's Sharpe: `ranker.metrics.sharpe`);
    NaN with fewer than 3 or zero spread."""
    x = np.asarray(ic, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) < 3 or x.std() == 0:
        return math.nan
    return float(x.mean() / x.std())


def _dsr(ic: np.ndarray, sharpes: list[float], base: DSR) -> DSR:
    """DSR of `ic` with N = len(sharpes) and V their variance, or a `skipped` reason."""
    n = len(sharpes)
    usable = [x for x in sharpes if not math.isnan(x)]
    out = replace(base, n_trials=n)
    if math.isnan(_per_period_sharpe(ic)):
        n_obs = int(np.isfinite(ic).sum())
        return replace(out, skipped=f"the selected series has {n_obs} finite IC(s) or no spread")
    if n > 1 and len(usable) < 2:
        return replace(out, skipped=f"{len(usable)} of the {n} trials have a usable IC Sharpe")
    var = float(np.var(usable, ddof=1)) if n > 1 else 0.0
    r = deflated_sharpe_ratio(ic, n_trials=n, sharpe_variance=var)
    return replace(
        out, dsr=float(r["dsr"]), psr=float(r["psr"]), sharpe=float(r["sharpe"]),
        sharpe_annual=float(r["sharpe_annual"]), sr0=float(r["sr0"]),
        sr0_annual=float(r["sr0"] * math.sqrt(ANN)), sharpe_variance=var,
        n_obs=int(r["n_obs"]), skew=float(r["skew"]), kurtosis=float(r["kurtosis"]),
    )  # fmt: skip


def all_series(run: Run, stages: list[str]) -> dict[str, Series]:
    """The val series of every finished trial of `stages`, by trial id."""
    out: dict[str, Series] = {}
    for st in stages:
        out |= run.trial_series(st)
    return out


def selected_dsr(run: Run, stages_so_far: list[str], selected: str) -> DSR:
    """Deflated Sharpe of the selected trial's daily val IC.

    Args:
        stages_so_far: every stage up to and including the selecting one; N is the number of
            finished trials with a series across them, V the variance (ddof=1) of their
            per-period IC Sharpes. Where the `spa` rule kept a starting point that is no grid
            point (its trials are the stage's `start_r<i>`), that trial counts as one more.
        selected: the trial id whose series is tested (see `selected_trial`).

    Returns:
        The DSR record (`ranker.overfit_stats.deflated_sharpe_ratio`'s figures, the trial id,
        the stages, V and SR0 annualised), or `skipped` with the reason.

    Raises:
        RunDirError: `selected` is not a finished trial of those stages.
    """
    series = all_series(run, stages_so_far)
    if selected not in series:
        kept = run.trial_series(stages_so_far[-1], start=True)
        if selected in kept:
            series[selected] = kept[selected]
    if selected not in series:
        raise RunDirError(
            f"trial {selected!r} has no val series among the finished trials of "
            f"{list(stages_so_far)}; pass a trial id from their results.csv"
        )
    sharpes = [_per_period_sharpe(s.ic) for s in series.values()]
    base = DSR(n_trials=0, stages=tuple(stages_so_far), trial_id=selected)
    return _dsr(series[selected].ic, sharpes, base)


def final_dsr(run: Run, stages: list[str], last_selected: str) -> DSR:
    """DSR of the final model against every trial of the run.

    Uses the final model's own val IC series when the run has it, else the last stage's
    selected trial's series (the same config, trained for the stages' epochs);
    `series_source` says which.
    """
    own = run.final_series("final", "val")
    if own is not None:
        series = all_series(run, stages)
        sharpes = [_per_period_sharpe(s.ic) for s in series.values()]
        base = DSR(n_trials=0, stages=tuple(stages),
                   series_source="the final model's own val series")  # fmt: skip
        return _dsr(own.ic, sharpes, base)
    r = selected_dsr(run, stages, last_selected)
    return replace(r, series_source=f"selected trial {last_selected} of stage {stages[-1]!r}")

"""A stage's selection under noise: which grid points are statistically tied with the best,
and whether any beat the stage's starting point after trying them all.

From the val per-date series each trial saved with its best evaluation (daily.npz): a grid
point's daily IC is the mean over its finished replicates; the loss is minus the daily IC, on
the dates every point has one. `ranker.significance` runs the tests (`arch`): the Model
Confidence Set over the grid points, and the SPA test of the grid points against the stage's
starting point (the config it starts from: the base config for the first stage, the previous
stage's choice after it). Where the start is not a grid point (the base fundamental_dropout 0.6
is not in the dropout grid), the stage trains it as extra trials (`start_point`,
`stages._tuner`), so every stage has its benchmark on the same dates. The bootstrap's seed comes
from the spec's seed and the stage's name: the same run gives the same sets.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import replace
from typing import Any

import numpy as np

from ranker.model import ModelConfig
from ranker.significance import model_confidence_set, superior_predictive_ability
from ranker.train import TrainConfig
from search.results import Significance
from search.rundir import Series
from search.spec import SearchSpec, StageSpec
from search.trial_result import TrialRow


def start_point(
    spec: SearchSpec, stage: StageSpec, base_model: ModelConfig, base_train: TrainConfig
) -> dict[str, Any]:
    """The grid point that is the stage's starting config: a `set` key at the base config's
    value, a `scale` key at 1 (the base's own sizes)."""
    bases = {"model": base_model, "train": base_train}
    out = {}
    for key in stage.grid:
        p = spec.params[key]
        if p.set:
            sec, name = p.set.split(".")
            out[key] = getattr(bases[sec], name)  # its own type: an int field stays an int
        else:
            out[key] = 1.0
    return out


def in_grid(stage: StageSpec, point: dict[str, Any]) -> bool:
    return stage.contains(point)


def _point_ic(
    rows: list[TrialRow], series: dict[str, Series], metric: str
) -> tuple[np.ndarray, np.ndarray] | None:
    """(dates, daily IC averaged over the finished replicates) of one point; None if none."""
    mine = [series[r.trial_id] for r in rows if r.finished(metric) and r.trial_id in series]
    if not mine:
        return None
    dates = mine[0].date
    for s in mine[1:]:
        dates = np.intersect1d(dates, s.date)
    ics = np.stack([s.ic[np.searchsorted(s.date, dates)] for s in mine])
    ok = np.isfinite(ics)
    n = ok.sum(axis=0)
    total = np.where(ok, ics, 0.0).sum(axis=0)
    return dates, np.divide(total, n, out=np.full(len(dates), np.nan), where=n > 0)


def assess(
    spec: SearchSpec,
    stage: StageSpec,
    rows: list[TrialRow],
    series: dict[str, Series],
    start: dict[str, float],
    moved: bool,
) -> Significance:
    """The tied set and the SPA test of a finished stage.

    Args:
        rows: every trial of the stage (the start's extra trials among them, if any).
        series: the val series of the finished trials, by trial id.
        start: the stage's starting point (`start_point`).
        moved: whether the stage's rule selected another config than its start.
    """
    sel, metric = spec.selection, spec.train.metric
    points = stage.points
    ics = {i: _point_ic([r for r in rows if r.matches(p)], series, metric)
           for i, p in enumerate(points)}  # fmt: skip
    have = [i for i, v in ics.items() if v is not None]
    bench = _point_ic([r for r in rows if r.matches(start)], series, metric)
    base = Significance(
        rule=sel.rule, start=dict(start), start_is_grid_point=in_grid(stage, start), moved=moved,
        n_points=len(have), tied=(), mcs_size=sel.mcs_size, spa_pvalue=math.nan,
        spa_lower=math.nan, spa_upper=math.nan, spa_level=sel.spa_level, n_dates=0, block=0,
        reps=sel.reps,
    )  # fmt: skip
    if not have or bench is None:
        why = "no grid point finished" if not have else "the starting point has no finished trial"
        return replace(base, skipped=why)
    dates = bench[0]
    for i in have:
        dates = np.intersect1d(dates, ics[i][0])
    cols = [ics[i][1][np.searchsorted(ics[i][0], dates)] for i in have]
    b0 = bench[1][np.searchsorted(bench[0], dates)]
    ok = np.isfinite(b0) & np.all(np.isfinite(np.stack(cols)), axis=0)
    if ok.sum() < 10:
        return replace(base, skipped=f"{int(ok.sum())} common val dates with an IC (fewer than 10)")
    losses = -np.stack(cols, axis=1)[ok]  # (T, k): minus the daily IC
    seed = zlib.crc32(f"{spec.train.seed}/{stage.name}".encode())
    mcs = model_confidence_set(losses, sel.mcs_size, reps=sel.reps, block=sel.block, seed=seed)
    # The candidates are every grid point but the start itself (its difference is zero).
    others = [j for j, i in enumerate(have) if not _same(points[i], start)]
    if others:
        spa = superior_predictive_ability(-b0[ok], losses[:, others], reps=sel.reps,
                                          block=mcs.block, seed=seed + 1)  # fmt: skip
        p = (spa.pvalue, spa.pvalue_lower, spa.pvalue_upper)
    else:
        p = (1.0, 1.0, 1.0)
    return replace(base, tied=tuple(dict(points[have[j]]) for j in mcs.included),
                    spa_pvalue=p[0], spa_lower=p[1], spa_upper=p[2], n_dates=mcs.n_dates,
                    block=mcs.block)  # fmt: skip


def _same(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(float(a[k]) == float(b[k]) for k in a)

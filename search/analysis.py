"""Is the winner real? Everything the report and status say about a run's stages, from its
loaded files (`rundir.Run`), and for `top_test` a test Panel:

- `point_table`: per grid point, the mean and std of every metric over its replicates.
- `selected_trial`: the trial whose series a stage's deflated Sharpe tests.
- `top_test`: the stage's top configs, by the selection value, scored on the test set.
- `analyze`: those and `stage_overfit`'s PBO and DSR, per stage and for the final model, as
  one `results.Analysis` (the driver writes it to analysis.json).

With replicates, the DSR's selected trial is the best replicate of the selected point: choosing
it among all N trials is the selection the DSR deflates for. Stds over replicates are sample
stds (`results.mean_std`, ddof=1), as best.json's `replicate_std`.
"""

from __future__ import annotations

from ranker.backtest import backtest
from ranker.data import load
from ranker.model import MultiBranchRanker
from ranker.panel import Panel
from ranker.train import METRICS, score
from search.errors import RunDirError
from search.results import Analysis, PointStats, StageAnalysis, TopConfig, TopTrial, mean_std
from search.rundir import Run, StageRecord
from search.selection import point_scores
from search.stage_overfit import final_dsr, selected_dsr, stage_pbo
from search.trial_result import TrialRow


def _done(run: Run, stage: str) -> tuple[StageRecord, list[TrialRow]]:
    st = run.stage(stage)
    if st.rows is None:
        raise RunDirError(
            f"{run.path}: stage {stage!r} has not finished (`liquid-search status {run.path}` "
            f"shows its trials in flight)"
        )
    return st, st.rows


# --- per-point table ----------------------------------------------------------------------------


def point_table(run: Run, stage: str) -> list[PointStats]:
    """One record per grid point, in grid order: every metric's mean and std over its finished
    replicates (`results.mean_std`), its selection value (`selection.point_scores`, as
    best.json's) and whether it was selected."""
    st, rows = _done(run, stage)
    metric = run.spec.train.metric
    table = []
    for p in point_scores(st.spec, rows, metric):
        spread = {m: mean_std([r.best_metrics[m] for r in p.finished]) for m in METRICS}
        table.append(PointStats(
            point=p.point, n=len(p.finished), errors=len(p.trials) - len(p.finished),
            trial_ids=tuple(r.trial_id for r in p.finished),
            mean={m: v.mean for m, v in spread.items()},
            std={m: v.std for m, v in spread.items()}, value=p.value,
            selected=st.best is not None and all(
                float(st.best.point[k]) == float(p.point[k]) for k in st.spec.grid),
        ))  # fmt: skip
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
    return max(mine, key=lambda r: r.best_metrics[metric]).trial_id


# --- val against test ---------------------------------------------------------------------------


def _spread(metrics: list[dict[str, float]]) -> tuple[dict[str, float], dict[str, float]]:
    """Per metric (n_dates aside), the mean and std over `metrics` (`results.mean_std`)."""
    keys = [k for k in metrics[0] if k != "n_dates"]
    spread = {k: mean_std([d[k] for d in metrics]) for k in keys}
    return {k: v.mean for k, v in spread.items()}, {k: v.std for k, v in spread.items()}


def top_test(run: Run, stage: str, test_panel: Panel, k: int, n: int = 5) -> list[TopConfig]:
    """The stage's top-n grid points by selection value, their val and test metrics side by side.

    Each finished trial of a point is scored on `test_panel` with the `best_state` of its latest
    checkpoint (the weights of its best val evaluation, whose metrics results.csv holds).
    """
    _, rows = _done(run, stage)
    by_id = {r.trial_id: r for r in rows}
    ranked = sorted((p for p in point_table(run, stage) if p.n), key=lambda p: -p.value)
    out = []
    for rank, p in enumerate(ranked[:n], start=1):
        trials = []
        for tid in p.trial_ids:
            row = by_id[tid]
            state = run.trial_state(row)
            model = MultiBranchRanker.from_state(state.model_config, state.progress.best_state)
            test = backtest(test_panel, score(model, test_panel), k).metrics
            trials.append(TopTrial(trial_id=tid, replicate=row.replicate,
                                   val=dict(row.best_metrics), test=test))  # fmt: skip
        val_mean, val_std = _spread([t.val for t in trials])
        test_mean, test_std = _spread([t.test for t in trials])
        out.append(TopConfig(
            rank=rank, point=p.point, selected=p.selected, value=p.value, n=p.n, val=val_mean,
            test=test_mean, val_std=val_std, test_std=test_std, trials=tuple(trials),
        ))  # fmt: skip
    return out


# --- everything ---------------------------------------------------------------------------------


def analyze(
    run: Run, test_panel: Panel | None, k: int, *, n_top: int = 5, n_blocks: int = 16
) -> Analysis:
    """Overfitting statistics of every finished stage and of the final model.

    Args:
        run: the loaded run.
        test_panel: the run's test Panel for `top_test`; None skips the test scoring.
        k: names per book (the spec's train.k).
        n_top: configs per stage scored on the test set.
        n_blocks: CSCV blocks requested (see `series_pbo`).
    """
    names = [s.name for s in run.finished]
    stages = []
    for i, st in enumerate(run.finished):
        assert st.best is not None  # run.finished holds finished stages only
        sel = selected_trial(run, st.name)
        top = None if test_panel is None else tuple(top_test(run, st.name, test_panel, k, n_top))
        stages.append(StageAnalysis(
            stage=st.name, metric=run.spec.train.metric, value=st.best.value,
            selected_point=st.best.point, selected_trial=sel,
            pbo=stage_pbo(run, st.name, n_blocks), dsr=selected_dsr(run, names[: i + 1], sel),
            points=tuple(point_table(run, st.name)), top_test=top,
        ))  # fmt: skip
    final = None
    if names and len(names) == len(run.stages):
        final = final_dsr(run, names, stages[-1].selected_trial)
    return Analysis(
        stages=tuple(stages),
        final=final,
        n_trials=sum(len(run.trial_series(n)) for n in names),
        k=k,
        n_blocks_requested=n_blocks,
    )


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

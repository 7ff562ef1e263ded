"""A run directory read from Python: `RunView`, what `search.api.open_run` returns.

Modelled on Ray Tune's `ResultGrid.get_dataframe()` and qlib's recorders: every table is a
pandas DataFrame, every figure a matplotlib Figure for a notebook cell, the final model loaded
and ready to score a DataFrame. A view reads the run directory through `search.rundir` (local or
s3:// / gs://), finished or in flight: a stage in flight is read from Tune's own record of it,
the same reading `liquid-search status` prints (`search.status.stage_trials`). `refresh()` reads
it again.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from ranker import checkpoint
from ranker.train import METRICS
from search.analysis import analyze, point_table
from search.errors import RunDirError
from search.report.figures import cumulative_figure, grid_figure, ic_figure, val_test_figure
from search.report.universes import universe_figure
from search.results import Analysis, Summary, WalkForward
from search.rundir import Run, RunDir
from search.spec import REPLICATE, SearchSpec
from search.status import render, stage_trials


class RunView:
    """A run directory, read once (`refresh()` reads it again).

    Attributes:
        path: the run directory (a local path or a URI).
        spec: the resolved spec the run started with.
    """

    def __init__(self, run_dir: str | RunDir | Run) -> None:
        if isinstance(run_dir, Run):
            self._run = run_dir
        else:
            self._run = (run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)).load()

    def __repr__(self) -> str:
        return f"RunView({self.path!r}, {self.state})"

    def refresh(self) -> RunView:
        """Read the run directory again (a run in flight moves on); returns self."""
        self._run = self._run.dir.load()
        return self

    # -- what the run is

    @property
    def path(self) -> str:
        return self._run.path

    @property
    def spec(self) -> SearchSpec:
        return self._run.spec

    @property
    def source(self) -> str | None:
        """The data the run was started on (a directory or URI), once it has started."""
        return self._run.info.source if self._run.info is not None else None

    @property
    def stages(self) -> list[str]:
        return [s.name for s in self._run.stages]

    @property
    def state(self) -> str:
        """complete, running, interrupted, failed: ..., or stopped after <stage>."""
        info = self._run.info
        if self._run.summary is not None:
            return "complete"
        return (info.outcome if info is not None else None) or "running"

    @property
    def summary(self) -> Summary | None:
        """summary.json (`search.results.Summary`): each stage's best, the final model,
        baseline, base config, search-vs-base and universe comparisons (None until the run is
        complete)."""
        return self._run.summary

    @property
    def analysis(self) -> Analysis:
        """analysis.json (`search.results.Analysis`): PBO, DSR and the per-point tables of the
        finished stages (computed from the trials' val series when the run has not written it)."""
        return self._run.analysis or analyze(self._run, None, self.spec.train.k)

    def status(self) -> str:
        """What `liquid-search status` prints."""
        return render(self._run)

    # -- a walk-forward run's folds

    def fold(self, i: int) -> RunView:
        """Walk-forward fold `i` (1-based) as a run of its own: its stages, final model, report.

        Raises:
            RunDirError: not a walk-forward run, or no such fold.
        """
        k = self.spec.walk_forward.folds
        if not self._run.walk_forward or not 1 <= i <= k:
            raise RunDirError(
                f"{self.path}: no fold {i} (folds: {k if self._run.walk_forward else 0})"
            )
        return RunView(self._run.dir.fold(i))

    def folds(self) -> pd.DataFrame:
        """One row per fold of a complete walk-forward run: its dates, each stage's choice, its
        final model's val and test metrics, and search minus base (test mean IC, over seeds)."""
        wf = self._require_walk_forward()
        rows = []
        for f in wf.folds:
            d = f.search_vs_base.by_metric["mean_ic"] if f.search_vs_base else None
            rows.append({"fold": f.index, "train": f.train_dates, "val": f.val_dates,
                         "test": f.test_dates, **{f"{st}": p for st, p in f.choices.items()},
                         **{f"val_{k}": v for k, v in f.val.items()},
                         **{f"test_{k}": v for k, v in f.test.items()},
                         "search_minus_base": d.diff if d else math.nan,
                         "search_minus_base_se": d.se if d else math.nan})  # fmt: skip
        return pd.DataFrame(rows).set_index("fold")

    def pooled(self) -> pd.Series:
        """A complete walk-forward run's pooled out-of-sample record (its folds' test series
        concatenated in date order)."""
        p = self._require_walk_forward().pooled
        return pd.Series({k: getattr(p, k) for k in (
            "n_dates", "ic_sharpe", "mean_ic", "mean_ic_t", "ls_sharpe", "ls_net_sharpe",
            "to_ls_net_sharpe", "ls_return")})  # fmt: skip

    def pooled_series(self) -> pd.DataFrame:
        """The folds' final models' test series, concatenated in date order, with each date's
        fold."""
        wf = self._require_walk_forward()
        frames = [self.fold(f.index).series("final", "test").assign(fold=f.index)
                  for f in wf.folds]  # fmt: skip
        return pd.concat(frames).sort_index()

    def _require_walk_forward(self) -> WalkForward:
        s = self._run.summary
        if not isinstance(s, WalkForward):
            raise RunDirError(
                f"{self.path}: not a complete walk-forward run ({self.state}). Fix: wait for "
                f"every fold (`liquid-search status {self.path} --watch`)."
            )
        return s

    # -- the stages

    def trials(self, stage: str) -> pd.DataFrame:
        """One row per trial of a stage, finished or in flight: trial_id, its grid keys,
        replicate, status, epochs, best_epoch, the best evaluation's val metrics, and error."""
        st = self._run.stage(stage)
        got = stage_trials(self._run, st)
        keys = list(st.spec.grid)
        rows = []
        for r in got.rows:
            rows.append({"trial_id": r.trial_id, **{k: r.point.get(k, math.nan) for k in keys},
                         REPLICATE: r.replicate, "status": r.status, "epochs": r.epoch,
                         "best_epoch": r.best_epoch, **{m: r.best_metrics.get(m, math.nan)
                                                        for m in METRICS}, "error": r.error})  # fmt: skip
        cols = ["trial_id", *keys, REPLICATE, "status", "epochs", "best_epoch", *METRICS, "error"]
        return pd.DataFrame(rows, columns=cols)

    def get_dataframe(self) -> pd.DataFrame:
        """Every stage's trials in one frame, with a `stage` column (grid keys of the other
        stages are NaN): Ray Tune's `ResultGrid.get_dataframe()` for the whole search."""
        frames = [self.trials(s).assign(stage=s) for s in self.stages]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

    def points(self, stage: str) -> pd.DataFrame:
        """One row per grid point of a finished stage: every metric's mean and std over its
        replicates, the selection value and whether it was selected."""
        st = self._run.stage(stage)
        return pd.DataFrame([
            {**p.point, "n": p.n, "errors": p.errors, **p.mean,
             **{f"{m}_std": v for m, v in p.std.items()}, "value": p.value,
             "selected": p.selected} for p in point_table(self._run, stage)
        ], columns=[*st.spec.grid, "n", "errors", *METRICS, *(f"{m}_std" for m in METRICS),
                    "value", "selected"])  # fmt: skip

    def best(self, stage: str) -> dict[str, Any] | None:
        """A finished stage's selection: point, value, and the model and train configs it
        resolved to (None while the stage runs)."""
        b = self._run.stage(stage).best
        if b is None:
            return None
        return {"point": b.point, "value": b.value, "metric": b.metric, "model": b.model,
                "train": b.train}  # fmt: skip

    def significance(self) -> pd.DataFrame:
        """Per finished stage, its selection under noise: how many grid points are tied with
        the winner (the MCS) and which, the SPA p-value against the stage's starting point, the
        rule used, and whether the stage moved from its start."""
        rows = {}
        for st in self._run.finished:
            sig = st.best.significance if st.best is not None else None
            if sig is None:
                continue
            rows[st.name] = {"n_tied": sig.n_tied, "n_points": sig.n_points,
                             "tied": [dict(p) for p in sig.tied], "spa_pvalue": sig.spa_pvalue,
                             "spa_level": sig.spa_level, "rule": sig.rule, "moved": sig.moved,
                             "start": dict(sig.start), "skipped": sig.skipped}  # fmt: skip
        return pd.DataFrame.from_dict(rows, orient="index")

    @property
    def best_configs(self) -> dict[str, dict[str, Any]]:
        """Each finished stage's selection (see `best`), by stage."""
        return {s: b for s in self.stages if (b := self.best(s)) is not None}

    # -- the final models

    def final_metrics(self, split: str = "test") -> pd.DataFrame:
        """The final model (the ensemble), the base config and the full-universe baseline on
        `split` ("test" or "val"), one row each, and the planted oracle on a synthetic market
        (existing models beside the final one: `comparisons`)."""
        s = self._require_summary()
        rows = {}
        for role, part in s.models.items():
            metrics = part.test if split == "test" else part.val
            rows[role] = {**metrics, **(part.costs if split == "test" else {})}
        if s.final.oracle_test and split == "test":
            rows["oracle"] = dict(s.final.oracle_test)
        return pd.DataFrame.from_dict(rows, orient="index")

    def seeds(self) -> pd.DataFrame:
        """Each member's own test metrics (one seed each), for every model of the final phase."""
        s = self._require_summary()
        rows = [{"model": role, "seed": x.seed, **x.test}
                for role, part in s.models.items() for x in part.members]  # fmt: skip
        return pd.DataFrame(rows)

    def universes(self) -> pd.DataFrame:
        """The final model on the test set as each universe rule picks it, and the names a
        test day each keeps."""
        u = self._require_summary().universes
        by_rule = u.by_rule if u is not None else {}
        return pd.DataFrame.from_dict(
            {rule: {"names_per_test_day": r.names_per_test_day,
                    "turnover_per_day": r.turnover_per_day, "test_rows": r.test_rows,
                    **r.test} for rule, r in by_rule.items()},
            orient="index")  # fmt: skip

    def universe_timeline(self) -> pd.DataFrame:
        """Per date, the names each universe rule keeps, their turnover, and how many differ."""
        t = self._run.dir.read_universe_timeline()
        if t is None:
            raise RunDirError(f"{self.path}: no universe timeline (the run has not finished)")
        return pd.DataFrame({k: v for k, v in t.items() if k != "date"},
                            index=pd.DatetimeIndex(t["date"], name="date"))  # fmt: skip

    def series(self, model: str = "final", split: str = "test") -> pd.DataFrame:
        """The per-date series of `model` ("final", "baseline", or "compare_<name>" for a model
        of `final.compare`, test only) on `split` ("val", "test", or "test_<rule>"): IC and the
        long, short and long/short returns, by date."""
        z = self._run.final_series(model, split)
        if z is None:
            raise RunDirError(f"{self.path}: no {model} series on {split!r}")
        return pd.DataFrame({"ic": z.ic, "long": z.long, "short": z.short, "ls": z.ls},
                            index=pd.DatetimeIndex(z.date, name="date"))  # fmt: skip

    def overfitting(self) -> pd.DataFrame:
        """Per finished stage: PBO and the deflated Sharpe ratio of its selection (from
        analysis.json, or computed from the trials' val series)."""
        rows = {st.stage: {"pbo": st.pbo.pbo, "dsr": st.dsr.dsr, "n_trials": st.dsr.n_trials,
                           "value": st.value} for st in self.analysis.stages}  # fmt: skip
        return pd.DataFrame.from_dict(rows, orient="index")

    def comparisons(self) -> pd.DataFrame:
        """The final model and each existing model of `final.compare` on the same test rows,
        one row each (the notebook's side-by-side table): test metrics and costs, test rows."""
        s = self._require_summary()
        rows = {"final": {**s.final.test, **s.final.costs, "test_rows": s.data.test_rows}}
        for name, c in s.comparisons.items():
            rows[name] = {**c.test, **c.costs, "test_rows": c.test_rows}
        return pd.DataFrame.from_dict(rows, orient="index")

    def vs_final(self) -> pd.DataFrame:
        """Per comparison model and compared metric: the final model's value, the model's, the
        final minus it and its standard error over the test dates (paired), and the difference
        in standard errors."""
        s = self._require_summary()
        rows = [{"model": name, "metric": m, "final": d.a, "other": d.b, "diff": d.diff,
                 "se": d.se, "z": d.z} for name, c in s.comparisons.items()
                for m, d in c.vs_final.items()]  # fmt: skip
        cols = ["model", "metric", "final", "other", "diff", "se", "z"]
        return pd.DataFrame(rows, columns=cols).set_index(["model", "metric"])

    def model(self) -> checkpoint.Ranker:
        """The final model, loaded: `view.model().score(frame)` scores a DataFrame or Arrow
        table holding the training data's feature columns."""
        self._require_summary()
        return checkpoint.load(self._run.dir.model_path())

    def figures(self) -> dict[str, Figure]:
        """The report's figures, by the name of their PNG: each finished stage's grid, val
        against test of the top configs (once scored), and, for a complete run, the final
        model's cumulative test returns, daily IC and the universe rules over time."""
        run, m = self._run, self.spec.train.metric
        out: dict[str, Figure] = {}
        a = self.analysis
        for st in run.finished:
            entry = a.stage(st.name)
            selected = entry.selected_point if entry is not None else {}
            sig = st.best.significance if st.best is not None else None
            out[f"grid_{st.name}.png"] = grid_figure(st.spec, st.rows or [], m, selected,
                                                     sig.tied if sig else ())  # fmt: skip
        vt = val_test_figure(a, run.summary, m)
        if vt is not None:
            out["val_vs_test.png"] = vt[0]
        s = run.summary
        z = run.final_series("final", "test")
        if s is not None and z is not None:
            others = {name: o for name, c in s.comparisons.items()
                      if (o := run.final_series(c.series_model, "test")) is not None}  # fmt: skip
            out["test_cumulative_returns.png"] = cumulative_figure(z, s.costs_model,
                                                                   self.spec.train.k, others)  # fmt: skip
            out["test_daily_ic.png"] = ic_figure(z, run.final_series("baseline", "test"))
            t = run.dir.read_universe_timeline()
            if t is not None:
                out["universes.png"] = universe_figure(t)
        return out

    def _require_summary(self) -> Summary:
        if self._run.summary is None:
            raise RunDirError(
                f"{self.path}: the run is not complete ({self.state}); its final model is not "
                f"there yet. Fix: wait for it (`liquid-search status {self.path} --watch`)."
            )
        return self._run.summary

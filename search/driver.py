"""The driver: data once into the object store, the stages chained, the final model, the report.

`run` starts, continues or partly reruns a search in a run directory (`rundir.RunDir`): stages
with a best.json are kept, a stage whose experiment exists unfinished is restored with its
finished trials, the rest run; each stage starts from the best point of the one before.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from dataclasses import replace
from typing import Any

import ray

from ranker.data import Dataset
from ranker.folds import Folds
from ranker.model import ModelConfig
from ranker.train import TrainConfig
from search.analysis import analyze
from search.errors import Interrupted
from search.final import run_final
from search.pooling import pool
from search.report import write_report
from search.results import Summary, WalkForward
from search.rundir import Best, RunDir, RunInfo
from search.spec import SearchSpec
from search.stages import run_stage
from search.tracking import Tracker
from search.walkforward import run_folds

log = logging.getLogger("liquid_search")


def prepare(ds: Dataset) -> tuple[dict[str, Any], Dataset]:
    """Put the Panels in the object store once; trials and tasks read them zero-copy.

    Returns:
        The object refs, and the dataset as zero-copy views of the object store's copy (the
        driver drops its private copy).
    """
    t0 = time.time()
    refs = {name: ray.put(getattr(ds, name)) for name in ("train", "val", "test")}
    if ds.full_train is not None:
        refs["full_train"] = ray.put(ds.full_train)
    mb = sum(p.nbytes for p in (ds.train, ds.val, ds.test, ds.full_train) if p is not None) / 2**20
    log.info(f"object store: {mb:,.0f} MB of Panels put once in {time.time() - t0:.1f}s")
    train, val, test = ray.get([refs["train"], refs["val"], refs["test"]])
    by_rule = ds.test_by_rule
    if by_rule is not None:  # the spec's rule's test split is `test`: the object store's copy
        by_rule = {m: test if p is ds.test else p for m, p in by_rule.items()}
    return refs, replace(ds, train=train, val=val, test=test, full_train=None,
                         test_by_rule=by_rule)  # fmt: skip


def run(
    spec: SearchSpec,
    run_dir: RunDir,
    ds: Dataset | Folds,
    source: str,
    *,
    rerun: list[str] | None = None,
    stop_after: str | None = None,
    fold: int | None = None,
) -> Summary | WalkForward | None:
    """Run (or continue) a search in `run_dir` on the loaded data `ds` (from `source`): a
    Dataset's single split, or walk-forward `Folds` (each fold in RUN_DIR/fold_<i>, the folds
    side by side; with `fold`, that fold alone).

    Stages with a best.json are kept; a stage whose experiment exists without one is resumed
    with Tuner.restore (its finished trials are kept); the rest run. Stages named in `rerun` run
    afresh in a new attempt directory. With `stop_after`, nothing runs after that stage.

    Returns:
        The summary, or None when stopped after a stage.

    Raises:
        StageFailed: a stage has no finished trial.
    """
    rerun_set = set(rerun or [])
    if not run_dir.is_run():
        run_dir.write_spec(spec)
    previous = run_dir.read_info()
    tracker = Tracker.start(spec, run_dir, previous.mlflow_run if previous else None)
    info = RunInfo(source=source, data=ds.info, columns=ds.columns.to_dict(),
                   precision=spec.train.precision, mlflow_run=tracker.run_id if tracker else None)  # fmt: skip
    try:
        if isinstance(ds, Folds):
            run_dir.write_info(info)
            summary = _walk_forward(spec, run_dir, ds, info, rerun_set, stop_after, tracker,
                                    fold)  # fmt: skip
        else:
            refs, ds = prepare(ds)
            run_dir.write_info(info)
            summary = _search(spec, run_dir, ds, refs, rerun_set, stop_after, tracker)
    except (Interrupted, KeyboardInterrupt):
        if tracker is not None:
            tracker.end("KILLED")  # a resume reopens it
        raise
    except BaseException:
        if tracker is not None:
            tracker.end("FAILED")
        raise
    if tracker is not None:
        if summary is not None:
            tracker.log_final(summary, run_dir)
        tracker.end("FINISHED")
    return summary


def _search(
    spec: SearchSpec,
    run_dir: RunDir,
    ds: Dataset,
    refs: dict[str, Any],
    rerun_set: set[str],
    stop_after: str | None,
    tracker: Tracker | None,
    stop: threading.Event | None = None,
) -> Summary | None:
    """The stages in order, each from the best of the one before, then the final models, the
    analysis and the report; the summary (None when stopped after a stage). `stop`: a walk-
    forward fold's, set when the run is interrupted."""
    base_model, base_train = spec.model, spec.train
    bests: list[Best] = []
    for st in spec.stages:
        best = None
        if st.name in rerun_set:
            name = run_dir.new_attempt(st.name)
            log.info(f"[{st.name}] rerun in {run_dir.file(name)} (earlier attempts are kept)")
        else:
            best = run_dir.read_best(st.name)
        if best is None:
            data = {"train": refs["train"], "val": refs["val"]}
            best = run_stage(spec, st, run_dir, base_model, base_train, data, tracker, stop)
            if tracker is not None:
                tracker.log_stage(best, run_dir.fold_index)
        else:
            log.info(
                f"[{st.name}] already done: best {best.metric} {best.value:.3f} at {best.point}"
            )
        bests.append(best)
        base_model = ModelConfig.from_dict(best.model)
        # The next stage starts from this stage's best point, with the spec's own seed.
        base_train = replace(TrainConfig.from_dict(best.train), seed=spec.train.seed)
        if st.name == stop_after:
            return None
    summary = run_final(spec, run_dir, base_model, base_train, refs, ds, bests, stop=stop)
    loaded = run_dir.load()
    analysis = analyze(loaded, ds.test, spec.train.k)
    run_dir.write_analysis(analysis)
    path = run_dir.write_summary(summary)  # last: its presence marks the run complete
    md, html = write_report(dataclasses.replace(loaded, analysis=analysis, summary=summary))
    log.info(f"summary: {path}; checkpoint: {summary.checkpoint}")
    log.info(f"report: {html} ({md})")
    return summary


def _walk_forward(
    spec: SearchSpec,
    run_dir: RunDir,
    folds: Folds,
    info: RunInfo,
    rerun_set: set[str],
    stop_after: str | None,
    tracker: Tracker | None,
    only: int | None,
) -> WalkForward | None:
    """Every fold's search side by side (`search.walkforward`), then, once all are complete,
    the pooled out-of-sample record, the run's summary and report."""

    def chain(spec: SearchSpec, fold_dir: RunDir, ds: Dataset, refs: dict[str, Any],
              stop: threading.Event) -> Summary | None:  # fmt: skip
        if not fold_dir.is_run():
            fold_dir.write_spec(spec)
        fold_dir.write_fold({"index": fold_dir.fold_index, "train": ds.info.train_dates,
                             "val": ds.info.val_dates, "test": ds.info.test_dates})  # fmt: skip
        fold_dir.write_info(replace(info, data=ds.info))
        return _search(spec, fold_dir, ds, refs, rerun_set, stop_after, tracker, stop)

    summaries = run_folds(spec, run_dir, folds, chain, only=only, tracker=tracker)
    if stop_after is not None or only is not None or any(s is None for s in summaries):
        return None
    wf = pool(spec, run_dir, folds, [s for s in summaries if s is not None])
    loaded = run_dir.load()
    path = run_dir.write_summary(wf)  # last: its presence marks the run complete
    md, html = write_report(dataclasses.replace(loaded, summary=wf))
    log.info(f"summary: {path}")
    log.info(f"report: {html} ({md})")
    return wf

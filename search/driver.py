"""The driver: data once into the object store, the stages chained, the final model, the report.

`run` starts, continues or partly reruns a search in a run directory (`rundir.RunDir`): stages
with a best.json are kept, a stage whose experiment exists unfinished is restored with its
finished trials, the rest run; each stage starts from the best point of the one before.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import replace
from typing import Any

import ray

from ranker.data import Dataset
from ranker.model import ModelConfig
from ranker.train import TrainConfig
from search.analysis import analyze
from search.errors import Interrupted
from search.final import run_final
from search.report import write_report
from search.results import Summary
from search.rundir import Best, RunDir, RunInfo
from search.spec import SearchSpec
from search.stages import run_stage
from search.tracking import Tracker

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
    ds: Dataset,
    source: str,
    *,
    rerun: list[str] | None = None,
    stop_after: str | None = None,
) -> Summary | None:
    """Run (or continue) a search in `run_dir` on the loaded data `ds` (from `source`).

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
    refs, ds = prepare(ds)
    run_dir.write_info(RunInfo(source=source, data=ds.info, columns=ds.columns.to_dict(),
                               precision=spec.train.precision,
                               mlflow_run=tracker.run_id if tracker else None))  # fmt: skip
    try:
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
) -> Summary | None:
    """The stages in order, each from the best of the one before, then the final models, the
    analysis and the report; the summary (None when stopped after a stage)."""
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
            best = run_stage(spec, st, run_dir, base_model, base_train, data, tracker)
            if tracker is not None:
                tracker.log_stage(best)
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
    summary = run_final(spec, run_dir, base_model, base_train, refs, ds, bests)
    loaded = run_dir.load()
    analysis = analyze(loaded, ds.test, spec.train.k)
    run_dir.write_analysis(analysis)
    path = run_dir.write_summary(summary)  # last: its presence marks the run complete
    md, html = write_report(dataclasses.replace(loaded, analysis=analysis, summary=summary))
    log.info(f"summary: {path}; checkpoint: {summary.checkpoint}")
    log.info(f"report: {html} ({md})")
    return summary

"""Walk-forward: the whole search on each fold's own dates, the folds side by side.

Each fold (`ranker.folds`) is the notebook's pipeline on its dates, in a run directory of its
own under the run's (RUN_DIR/fold_<i>, every file of a run: `status`, `report` and
`api.open_run` read one as a run): its stages chained from its own base, its final model, its
test window. The folds run side by side, one driver thread each, and do not wait for each other:
a cluster with enough CPUs runs every fold's first stage at once. Their data is in the object
store once (`search.store`: every fold's splits are views of one Panel).

Ctrl-C (or SIGTERM) in the driver stops every fold at its next step (a Tune callback) and the
run resumes as a single split does: a trial continues from its last checkpoint. A fold that
fails stops the others (they resume where they were).

When every fold is complete, the run's own summary (`results.WalkForward`) pools them: the folds'
test series concatenated in date order, search vs base across folds, and which value each stage
chose in each fold.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from dataclasses import replace
from typing import Any

import ray

from ranker.folds import Folds
from search import store
from search.errors import Interrupted, SearchError
from search.results import Summary
from search.rundir import RunDir
from search.spec import SearchSpec
from search.tracking import Tracker

log = logging.getLogger("liquid_search")

FOLD: contextvars.ContextVar[int] = contextvars.ContextVar("liquid_search_fold", default=0)


class FoldLabel(logging.Filter):
    """Prefixes a fold's log lines with the fold (each fold runs in a thread of its own)."""

    def filter(self, record: logging.LogRecord) -> bool:
        fold = FOLD.get()
        if fold and not getattr(record, "fold_labelled", False):
            record.msg = f"[fold {fold}] {record.getMessage()}"
            record.args, record.fold_labelled = (), True
        return True


def put_folds(folds: Folds) -> tuple[list[dict[str, Any]], Folds]:
    """The base Panel into the object store once, each fold's splits as views of it.

    Returns:
        Per fold, the refs its stages and final phase read (`store.PanelRef`s); and the folds as
        views of the object store's copy (the driver drops its private one).
    """
    base_ref = ray.put(folds.base)
    base = ray.get(base_ref)
    refs, local = [], []
    for ds in folds.folds:
        views = {"train": ds.train, "val": ds.val, "test": ds.test}
        if ds.full_train is not None:
            views["full_train"] = ds.full_train
        refs.append({name: store.put_view(base_ref, p) for name, p in views.items()})
        shared = {name: replace(p, fund=base.fund, price=base.price, emb=base.emb)
                  for name, p in views.items()}  # fmt: skip
        by_rule = None
        if ds.test_by_rule is not None:
            by_rule = {m: replace(p, fund=base.fund, price=base.price, emb=base.emb)
                       for m, p in ds.test_by_rule.items()}  # fmt: skip
        local.append(replace(ds, train=shared["train"], val=shared["val"], test=shared["test"],
                             full_train=None, test_by_rule=by_rule))  # fmt: skip
    mb = folds.base.nbytes / 2**20
    own = sum(p.nbytes - p.fund.nbytes - p.price.nbytes - p.emb.nbytes
              for ds in folds.folds for p in (ds.train, ds.val, ds.test)) / 2**20  # fmt: skip
    log.info(f"object store: the {len(folds.base):,} rows' Panel put once ({mb:,.0f} MB), and "
             f"{len(folds.folds)} folds' splits as views of it ({own:,.1f} MB)")  # fmt: skip
    return refs, replace(folds, base=base, folds=tuple(local))


def run_folds(
    spec: SearchSpec,
    run_dir: RunDir,
    folds: Folds,
    chain: Any,
    *,
    only: int | None = None,
    tracker: Tracker | None = None,
) -> list[Summary | None]:
    """Every fold's chain (`chain(spec, fold_dir, dataset, refs, stop)`, the driver's stages and
    final phase), side by side, one thread each; their summaries in fold order.

    Args:
        only: run this fold alone (1-based), the others left as they are.

    Raises:
        Interrupted: Ctrl-C or SIGTERM stopped the folds (the run resumes).
        SearchError: a fold failed (the others were stopped; its error is raised).
    """
    refs, folds = put_folds(folds)
    stop = threading.Event()
    out: dict[int, Any] = {}
    logger = logging.getLogger("liquid_search")
    label = FoldLabel()
    logger.addFilter(label)
    threads = []
    for w, ds, r in zip(folds.windows, folds.folds, refs, strict=True):
        if only is not None and w.index != only:
            continue
        fold_dir = run_dir.fold(w.index)
        t = threading.Thread(target=_fold, name=f"fold-{w.index}", daemon=True,
                             args=(w.index, chain, spec, fold_dir, ds, r, stop, out))  # fmt: skip
        threads.append(t)
        t.start()
    try:
        _join(threads, stop)
    finally:
        logger.removeFilter(label)
    errors = [e for e in out.values() if isinstance(e, BaseException)]
    if stop.is_set() and not errors:
        raise Interrupted(
            f"the walk-forward was interrupted with {sum(v is None for v in out.values())} "
            f"fold(s) unfinished; nothing was pooled. Fix: `liquid-search resume {run_dir.path}` "
            f"continues every fold where it stopped."
        )
    if errors:
        raise next((e for e in errors if isinstance(e, SearchError)), errors[0])
    return [out.get(w.index) for w in folds.windows]


def _join(threads: list[threading.Thread], stop: threading.Event) -> None:
    """Wait for every fold; on Ctrl-C (KeyboardInterrupt here, in the main thread), stop them
    all and wait for them to stop."""
    try:
        while any(t.is_alive() for t in threads):
            for t in threads:
                t.join(timeout=0.5)
    except KeyboardInterrupt:
        stop.set()
        for t in threads:
            t.join()


def _fold(i: int, chain: Any, spec: SearchSpec, fold_dir: RunDir, ds: Any, refs: dict[str, Any],
          stop: threading.Event, out: dict[int, Any]) -> None:  # fmt: skip
    FOLD.set(i)
    try:
        out[i] = chain(spec, fold_dir, ds, refs, stop)
    except Interrupted:
        out[i] = None
        stop.set()
    except BaseException as e:  # the fold failed: the others stop where they are, and resume
        out[i] = e
        stop.set()

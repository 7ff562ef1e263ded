"""The driver: data once into the object store, the stages chained, the final model and test.

Layout of a run directory (a local path, an NFS mount or an s3:// / gs:// URI):
    RUN_DIR/spec.yaml          the resolved spec
    RUN_DIR/run.json           data description, stage states
    RUN_DIR/<stage>/           the Tune experiment, results.csv, best.json
    RUN_DIR/final/model.pt     the final model's checkpoint (ranker.checkpoint format)
    RUN_DIR/summary.json       each stage, final (val, test, costs), baseline (test)
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, replace
from typing import Any

import numpy as np
import ray
import torch
import yaml

from ranker import checkpoint
from ranker.costs import CostModel, cost_metrics
from ranker.data import Dataset, load
from ranker.metrics import daily, summarize
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.panel import Panel
from ranker.synth import generate
from ranker.train import TrainConfig, fit, score
from search import store
from search.analysis import analyze
from search.report import write_report
from search.spec import SearchSpec, from_dict
from search.stages import read_best, run_stage
from search.trainable import parse_fault

SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"
SUMMARY = "summary.json"
FINAL_DIR = "final"
MODEL_FILE = "model.pt"


def data_source(spec: SearchSpec, override: str | None, log: Callable[[str], None]) -> str:
    """The data directory/URI: --data, spec.data.source, or the cached synthetic market."""
    source = override or spec.data.source
    if source:
        return source
    s = spec.data.synth
    tag = f"synth-scale{s.scale:g}-seed{s.seed}-signal{s.signal:g}"
    if s.n_symbols:
        tag += f"-sym{s.n_symbols}"
    if s.n_dates:
        tag += f"-dates{s.n_dates}"
    path = os.path.join(os.path.expanduser(spec.data.cache_dir), tag)
    if not os.path.exists(os.path.join(path, "synth.json")):
        log(f"generating the synthetic market into {path} (once; cached for later runs)")
        generate(path, scale=s.scale, seed=s.seed, signal=s.signal, n_symbols=s.n_symbols,
                 n_dates=s.n_dates, log=log)  # fmt: skip
    return path


def load_spec(run_dir: str) -> SearchSpec:
    """The resolved spec a run was started with.

    Raises:
        ValueError: `run_dir` holds no spec.yaml, so it is not a run directory.
    """
    path = store.join(run_dir, SPEC_FILE)
    if not store.exists(path):
        raise ValueError(
            f"{run_dir}: no {SPEC_FILE} here, so it is not a run directory (runs are made by "
            f"`liquid-search run`, under --storage, default ./runs)"
        )
    raw = yaml.safe_load(store.read_text(path))
    return from_dict(raw, store.join(run_dir, SPEC_FILE))


def read_run(run_dir: str) -> dict[str, Any]:
    return json.loads(store.read_text(store.join(run_dir, RUN_FILE)))


def _write_json(path: str, obj: Any) -> None:
    store.write_text(path, json.dumps(obj, indent=2, default=_jsonable))


def _jsonable(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def put_data(ds: Dataset, log: Callable[[str], None]) -> dict[str, Any]:
    """Put the Panels in the object store once; trials and tasks read them zero-copy."""
    t0 = time.time()
    refs = {name: ray.put(getattr(ds, name)) for name in ("train", "val", "test")}
    if ds.full_train is not None:
        refs["full_train"] = ray.put(ds.full_train)
    mb = sum(p.nbytes for p in (ds.train, ds.val, ds.test, ds.full_train) if p is not None) / 2**20
    log(f"object store: {mb:,.0f} MB of Panels put once in {time.time() - t0:.1f}s")
    return refs


def prepare(ds: Dataset, log: Callable[[str], None]) -> tuple[dict[str, Any], Dataset]:
    """Put the data in the object store; return refs plus a driver-side zero-copy view."""
    refs = put_data(ds, log)
    # Drop the driver's private copy: from here on it reads the object store's, like the trials.
    train, val, test = ray.get([refs["train"], refs["val"], refs["test"]])
    ds = replace(ds, train=train, val=val, test=test, full_train=None)
    return refs, ds


def run(
    spec: SearchSpec,
    run_dir: str,
    *,
    source: str | None = None,
    rerun: list[str] | None = None,
    stop_after: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Run (or continue) a search in `run_dir`.

    Stages with a best.json are kept; a stage whose experiment exists without one is resumed
    with Tuner.restore (its finished trials are kept); the rest run. Stages named in `rerun` are
    moved aside and run afresh. With `stop_after`, nothing runs after that stage (no final).
    A run whose summary.json exists is complete and is not redone unless a stage is rerun.

    Returns:
        The summary, or None when stopped after a stage.
    """
    run_dir = store.absolute(run_dir)
    rerun_set = set(rerun or [])
    summary_path = store.join(run_dir, SUMMARY)
    if not rerun_set and store.exists(summary_path):
        log(f"{run_dir} is complete (summary.json exists); nothing to do")
        return json.loads(store.read_text(summary_path))
    src = data_source(spec, source, log)
    # Validate the data before anything is written: bad input leaves no half-made run behind.
    ds = load(src, spec.universe, spec.split, full_universe=spec.final.baseline, log=log)
    spec_path = store.join(run_dir, SPEC_FILE)
    if not store.exists(spec_path):
        store.write_text(spec_path, yaml.safe_dump(spec.to_dict(), sort_keys=False))
    refs, ds = prepare(ds, log)
    run_info = {"source": src, "data": ds.info, "columns": ds.columns.to_dict(),
                "started": time.strftime("%Y-%m-%d %H:%M:%S")}  # fmt: skip
    _write_json(store.join(run_dir, RUN_FILE), run_info)
    fault = parse_fault(os.environ.get("LIQUID_SEARCH_FAULT"))

    base_model, base_train = spec.model, spec.train
    bests = []
    for st in spec.stages:
        if st.name in rerun_set:
            _archive(run_dir, st.name, log)
            best = None
        else:
            best = read_best(run_dir, st.name)
        if best is None:
            data = {"train": refs["train"], "val": refs["val"]}
            best = run_stage(spec, st, run_dir, base_model, base_train, data, log=log, fault=fault)
        else:
            log(
                f"[{st.name}] already done: best {best['metric']} {best['value']:.3f} at {best['point']}"
            )
        bests.append(best)
        base_model = ModelConfig.from_dict(best["model"])
        # The next stage starts from this stage's best point, with the spec's own seed.
        base_train = replace(TrainConfig.from_dict(best["train"]), seed=spec.train.seed)
        if st.name == stop_after:
            return None
    return run_final(spec, run_dir, base_model, base_train, refs, ds, bests, log)


def _archive(run_dir: str, stage: str, log: Callable[[str], None]) -> None:
    path = store.join(run_dir, stage)
    if store.exists(path):
        dest = f"{path}.replaced-{time.strftime('%Y%m%d-%H%M%S')}"
        store.move(path, dest)
        log(f"[{stage}] rerun: the previous results moved to {dest}")


@ray.remote
def _final_task(
    mc: dict[str, Any], tc: dict[str, Any], train: Panel, val: Panel, test: Panel, threads: int
) -> dict[str, Any]:
    """Train the final (or baseline) model on the cluster; return weights and test scores."""
    torch.set_num_threads(max(1, threads))
    lines: list[str] = []
    result = fit(ModelConfig.from_dict(mc), TrainConfig.from_dict(tc), train, val, log=lines.append)
    return {
        "state": {k: v.clone() for k, v in result.model.state_dict().items()},
        "config": result.config.to_dict(),
        "val": result.metrics,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "test_scores": score(result.model, test),
        "val_scores": score(result.model, val),
        "seconds": result.seconds,
        "log": lines,
    }


def run_final(
    spec: SearchSpec,
    run_dir: str,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    refs: dict[str, Any],
    ds: Dataset,
    bests: list[dict[str, Any]],
    log: Callable[[str], None],
) -> dict[str, Any]:
    """The final model (and the full-universe baseline) as Ray tasks, then test and costs."""
    tc = replace(train_cfg, epochs=spec.final.epochs)
    res = {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu}
    threads = int(spec.resources.cpu)
    log(f"[final] training the final model for {tc.epochs} epochs as a Ray task"
        + (" and the full-universe baseline beside it" if "full_train" in refs else ""))  # fmt: skip
    jobs = {"final": _final_task.options(**res).remote(
        model_cfg.to_dict(), tc.to_dict(), refs["train"], refs["val"], refs["test"], threads)}  # fmt: skip
    if "full_train" in refs:
        jobs["baseline"] = _final_task.options(**res).remote(
            model_cfg.to_dict(),
            tc.to_dict(),
            refs["full_train"],
            refs["val"],
            refs["test"],
            threads,
        )
    out = dict(zip(jobs, ray.get(list(jobs.values())), strict=True))
    test = ds.test
    costs = CostModel(spread=spec.costs.spread, impact=spec.costs.impact, borrow=spec.costs.borrow)
    summary_parts = {}
    for name, r in out.items():
        for line in r["log"]:
            log(f"[{name}]{line}")
        d = daily(test.bounds, r["test_scores"], test.returns, k=tc.k)
        part = {
            "val": r["val"],
            "test": summarize(d),
            "best_epoch": r["best_epoch"],
            "seconds": r["seconds"],
            "history": r["history"],
        }
        part["costs"] = cost_metrics(d, test.symbol_ids, costs)
        _write_daily(store.join(run_dir, FINAL_DIR, f"{name}_test_daily.npz"), d, test)
        dv = daily(ds.val.bounds, r["val_scores"], ds.val.returns, k=tc.k)
        _write_daily(store.join(run_dir, FINAL_DIR, f"{name}_val_daily.npz"), dv, ds.val)
        if test.oracle is not None:
            od = daily(test.bounds, test.oracle, test.returns, k=tc.k)
            part["oracle_test"] = summarize(od)
        summary_parts[name] = part

    final = out["final"]
    model = _model_from_state(final)
    ck_path = store.join(run_dir, FINAL_DIR, MODEL_FILE)
    meta = {
        "train_config": tc.to_dict(),
        "universe": ds.universe.to_dict(),
        "metrics": {"val": summary_parts["final"]["val"], "test": summary_parts["final"]["test"]},
    }
    _save_checkpoint(ck_path, model, ds, meta)
    summary = {
        "run_dir": run_dir,
        "metric": spec.train.metric,
        "stages": [
            {
                k: b[k]
                for k in (
                    "stage",
                    "metric",
                    "value",
                    "replicate_std",
                    "point",
                    "model",
                    "train",
                    "trials",
                    "errors",
                )
            }
            | {"wall_seconds": b.get("wall_seconds")}
            for b in bests
        ],
        "final": {"model": final["config"], "train": tc.to_dict(), **summary_parts["final"]},
        "baseline": summary_parts.get("baseline"),
        "checkpoint": ck_path,
        "data": ds.info,
        "costs_model": asdict(costs),
    }
    summary["overfitting"] = analyze(run_dir, ds.test, tc.k)  # also writes analysis.json
    _write_json(store.join(run_dir, SUMMARY), summary)
    md, html = write_report(run_dir, analysis=summary["overfitting"])  # reads summary.json
    f = summary_parts["final"]
    log(
        f"[final] val {spec.train.metric} {f['val'][spec.train.metric]:.2f} | test IC sharpe "
        f"{f['test']['ic_sharpe']:.2f} mean IC {f['test']['mean_ic']:+.4f} L/S sharpe "
        f"{f['test']['ls_sharpe']:.2f} (net {f['costs']['ls_net_sharpe']:.2f})"
    )
    if "baseline" in summary_parts:
        b = summary_parts["baseline"]["test"]
        log(
            f"[baseline] full-universe model on the liquid test set: IC sharpe {b['ic_sharpe']:.2f} "
            f"mean IC {b['mean_ic']:+.4f} L/S sharpe {b['ls_sharpe']:.2f}"
        )
    log(f"summary: {store.join(run_dir, SUMMARY)}; checkpoint: {ck_path}")
    log(f"report: {html} ({md})")
    return summary


def _write_daily(path: str, d: Any, panel: Panel) -> None:
    """The per-date test series (for plots and later analysis), atomically."""
    buf = io.BytesIO()
    np.savez(
        buf,
        date=panel.dates[d.date_idx].astype("datetime64[D]").astype(np.int64),
        ic=d.ic, long=d.long, short=d.short, ls=d.ls,
        long_symbols=panel.symbol_ids[d.long_rows],
        short_symbols=panel.symbol_ids[d.short_rows],
    )  # fmt: skip
    store.write_bytes(path, buf.getvalue())


def _model_from_state(r: dict[str, Any]) -> MultiBranchRanker:
    model = MultiBranchRanker(ModelConfig.from_dict(r["config"]))
    model.load_state_dict(r["state"])
    model.eval()
    return model


def _save_checkpoint(path: str, model: Any, ds: Dataset, meta: dict[str, Any]) -> None:
    if store.is_uri(path):
        with tempfile.TemporaryDirectory() as d:
            local = os.path.join(d, MODEL_FILE)
            checkpoint.save(local, model, ds.columns, **meta)
            with open(local, "rb") as f:
                store.write_bytes(path, f.read())
    else:
        checkpoint.save(path, model, ds.columns, **meta)

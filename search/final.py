"""The final model and the full-universe baseline: trained as Ray tasks, tested, saved.

The final model is the last stage's best config trained for `final.epochs`; the baseline is the
same config trained on the full (not liquid) universe's training split. Both are scored on the
liquid test set; their per-date series go to RUN_DIR/final/, the final model's checkpoint to
RUN_DIR/final/model.pt, and every figure to summary.json.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any

import ray

from ranker import checkpoint
from ranker import device as devices
from ranker.backtest import backtest
from ranker.data import Dataset
from ranker.model import ModelConfig, MultiBranchRanker
from ranker.panel import Panel
from ranker.train import TrainConfig, fit, score
from search.rundir import Best, RunDir, Series
from search.spec import SearchSpec

log = logging.getLogger("liquid_search")


@ray.remote
def _train_task(
    mc: dict[str, Any], tc: dict[str, Any], train: Panel, val: Panel, test: Panel,
    threads: int, gpu: float,
) -> dict[str, Any]:  # fmt: skip
    """Train one model on the cluster (on the GPU it reserved, if any); weights and scores."""
    device = devices.setup(threads, gpu)
    lines: list[str] = []
    result = fit(ModelConfig.from_dict(mc), TrainConfig.from_dict(tc), train, val,
                 log=lines.append, device=device)  # fmt: skip
    out = {
        "state": {k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
        "config": result.config.to_dict(),
        "val": result.metrics,
        "best_epoch": result.best_epoch,
        "history": result.history,
        "test_scores": score(result.model, test),
        "val_scores": score(result.model, val),
        "seconds": result.seconds,
        "device": device,
        "log": lines,
    }
    out |= devices.gpu_stats(device)
    return out


def run_final(
    spec: SearchSpec,
    run: RunDir,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    refs: dict[str, Any],
    ds: Dataset,
    bests: list[Best],
) -> dict[str, Any]:
    """Train the final model (and the baseline beside it), test them, save; the summary."""
    tc = replace(train_cfg, epochs=spec.final.epochs)
    res = {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu}
    args = (int(spec.resources.cpu), spec.resources.gpu)
    log.info(
        f"[final] training the final model for {tc.epochs} epochs as a Ray task"
        + (" and the full-universe baseline beside it" if "full_train" in refs else "")
    )
    jobs = {"final": _train_task.options(**res).remote(
        model_cfg.to_dict(), tc.to_dict(), refs["train"], refs["val"], refs["test"], *args)}  # fmt: skip
    if "full_train" in refs:
        jobs["baseline"] = _train_task.options(**res).remote(
            model_cfg.to_dict(), tc.to_dict(), refs["full_train"], refs["val"], refs["test"], *args
        )
    out = dict(zip(jobs, ray.get(list(jobs.values())), strict=True))
    parts = {name: _evaluate(name, r, ds, tc.k, spec, run) for name, r in out.items()}
    final = out["final"]
    model = MultiBranchRanker.from_state(final["config"], final["state"])
    metrics = {"val": parts["final"]["val"], "test": parts["final"]["test"]}
    checkpoint.save(run.model_path(), model, ds.columns, train_config=tc.to_dict(),
                    universe=ds.universe.to_dict(), metrics=metrics)  # fmt: skip
    keep = ("stage", "metric", "value", "replicate_std", "point", "model", "train", "trials",
            "errors", "wall_seconds")  # fmt: skip
    summary = {
        "run_dir": run.path,
        "metric": spec.train.metric,
        "stages": [{k: v for k, v in asdict(b).items() if k in keep} for b in bests],
        "final": {"model": final["config"], "train": tc.to_dict(), **parts["final"]},
        "baseline": parts.get("baseline"),
        "checkpoint": run.model_path(),
        "data": ds.info,
        "costs_model": asdict(spec.costs),
    }
    _say_results(parts, spec.train.metric)
    return summary


def _evaluate(
    name: str, r: dict[str, Any], ds: Dataset, k: int, spec: SearchSpec, run: RunDir
) -> dict[str, Any]:
    """One trained model's part of the summary: its backtests on val and test (per-date
    series written to the run), costs, the oracle's test metrics, training facts."""
    for line in r["log"]:
        log.info(f"[{name}]{line}")
    bt = backtest(ds.test, r["test_scores"], k, spec.costs)
    bv = backtest(ds.val, r["val_scores"], k, spec.costs)
    run.write_final_series(name, "test", Series.from_daily(bt.daily, ds.test))
    run.write_final_series(name, "val", Series.from_daily(bv.daily, ds.val))
    part = {"val": r["val"], "test": bt.metrics, "costs": bt.costs, "best_epoch": r["best_epoch"],
            "seconds": r["seconds"], "device": r["device"], "history": r["history"]}  # fmt: skip
    for key in ("gpu", "gpu_peak_mb"):
        if key in r:
            part[key] = r[key]
    if bt.oracle is not None:
        part["oracle_test"] = bt.oracle
    return part


def _say_results(parts: dict[str, dict[str, Any]], m: str) -> None:
    f = parts["final"]
    log.info(
        f"[final] val {m} {f['val'][m]:.2f} | test IC sharpe {f['test']['ic_sharpe']:.2f} "
        f"mean IC {f['test']['mean_ic']:+.4f} L/S sharpe {f['test']['ls_sharpe']:.2f} "
        f"(net {f['costs']['ls_net_sharpe']:.2f}) on {f['device']}"
    )
    if "baseline" in parts:
        b = parts["baseline"]["test"]
        log.info(
            f"[baseline] full-universe model on the liquid test set: IC sharpe "
            f"{b['ic_sharpe']:.2f} mean IC {b['mean_ic']:+.4f} L/S sharpe {b['ls_sharpe']:.2f}"
        )

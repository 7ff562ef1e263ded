"""One stage of the search: a grid of trials as one `Tuner.fit`, then results.csv and best.json.

The experiment lives at RUN_DIR/<stage>/ (Tune's own layout), next to our `results.csv` (one
row per trial: grid point, replicate, status, error, the metrics of its best evaluation, node,
memory) and `best.json` (the selected grid point and its resolved configs), both written
atomically. Selection follows the notebook: each trial's best evaluation by the spec's metric
(evaluated every `eval_every` epochs); with replicates, a point's score is the mean (or median,
or min) over its replicates.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
from ray import tune

from ranker.model import ModelConfig
from ranker.train import METRICS, TrainConfig
from search import store
from search.spec import SearchSpec, StageSpec
from search.trainable import REPLICATE, run_trial, trial_configs

RESULTS = "results.csv"
BEST = "best.json"


class StageFailed(RuntimeError):
    """No trial of the stage produced an evaluation."""


def param_space(stage: StageSpec) -> dict[str, Any]:
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in stage.grid.items()}
    if stage.seeds > 1:
        space[REPLICATE] = tune.grid_search(list(range(stage.seeds)))
    return space


class _Progress(tune.Callback):
    """One line per finished or failed trial."""

    def __init__(self, stage: StageSpec, metric: str, log: Callable[[str], None]) -> None:
        self.stage, self.metric, self.log = stage, metric, log
        self.total = len(stage.points) * stage.seeds
        self.done = 0

    def _point(self, trial: Any) -> str:
        cfg = trial.config
        keys = [*self.stage.grid, *([REPLICATE] if self.stage.seeds > 1 else [])]
        return " ".join(f"{k}={cfg.get(k)}" for k in keys)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        r = trial.last_result or {}
        self.log(
            f"[{self.stage.name} {self.done:3d}/{self.total}] {self._point(trial)} | "
            f"val {self.metric} {r.get('best_' + self.metric, float('nan')):6.2f} "
            f"(epoch {r.get('best_epoch', '-')}) mean IC {r.get('best_mean_ic', float('nan')):+.4f} "
            f"long {r.get('best_long_sharpe', float('nan')):5.2f} "
            f"short {r.get('best_short_sharpe', float('nan')):5.2f} | "
            f"{r.get('train_seconds', float('nan')):5.1f}s"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self.log(
            f"[{self.stage.name} {self.done:3d}/{self.total}] {self._point(trial)} | FAILED "
            f"(after {trial.num_failures} attempt(s)); error in {trial.path}"
        )


def run_stage(
    spec: SearchSpec,
    stage: StageSpec,
    run_dir: str,
    base_model: ModelConfig,
    base_train: TrainConfig,
    data: dict[str, Any],
    *,
    log: Callable[[str], None] = print,
    fault: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run (or, if its experiment exists unfinished, resume) one stage; write its results.

    Returns:
        The content of best.json.
    """
    exp_dir = store.join(run_dir, stage.name)
    job = {
        "spec": spec,
        "base_model": base_model.to_dict(),
        "base_train": base_train.to_dict(),
        "fault": fault if fault and fault.get("stage", stage.name) == stage.name else None,
    }
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, job=job),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    metric = spec.train.metric
    progress = _Progress(stage, metric, log)
    t0 = time.time()
    if tune.Tuner.can_restore(exp_dir):
        log(f"[{stage.name}] resuming the experiment at {exp_dir} (finished trials are kept)")
        tuner = tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
        # A restored Tuner keeps its callbacks out of the saved state: re-attach progress lines.
        tuner._local_tuner._run_config.callbacks = [progress]
    else:
        n = len(stage.points) * stage.seeds
        log(
            f"[{stage.name}] {n} trials ({len(stage.points)} grid points x {stage.seeds} seed(s)), "
            f"{spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU each, from base "
            f"{_short(base_model, base_train)}"
        )
        tuner = tune.Tuner(
            trainable,
            param_space=param_space(stage),
            tune_config=tune.TuneConfig(
                max_concurrent_trials=spec.max_concurrent or None,
                # A finished trial's process takes the next trial: no new process, no second
                # import of torch and Ray Tune per trial (about 7 core-seconds each otherwise).
                reuse_actors=True,
                trial_dirname_creator=lambda t: f"{stage.name}_{t.trial_id}",
            ),
            run_config=tune.RunConfig(
                name=stage.name,
                storage_path=run_dir,
                verbose=0,
                callbacks=[progress],
                failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
            ),
        )
    grid = tuner.fit()
    rows = collect(spec, stage, base_model, base_train, grid)
    best = select(spec, stage, rows, base_model, base_train)
    best["wall_seconds"] = time.time() - t0
    write_results(run_dir, stage, rows)
    store.write_text(store.join(exp_dir, BEST), json.dumps(best, indent=2, default=_json))
    log(
        f"[{stage.name}] done: {best['trials']} trials ({best['errors']} failed) in "
        f"{best['wall_seconds']:.0f}s; best {metric} {best['value']:.3f} at {best['point']}"
    )
    return best


def _short(m: ModelConfig, t: TrainConfig) -> str:
    return (
        f"hidden=({m.fund_hidden},{m.price_hidden},{m.news_hidden}) "
        f"latent=({m.fundamental_latent},{m.price_latent},{m.news_latent}) alpha={m.news_alpha} "
        f"lr={t.learning_rate:g} wd={t.weight_decay:g} smooth={t.label_smoothing:g} "
        f"dropout=({m.fundamental_dropout},{m.price_dropout},{m.news_dropout})"
    )


def _json(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {o!r}")


def collect(
    spec: SearchSpec, stage: StageSpec, base_model: ModelConfig, base_train: TrainConfig, grid: Any
) -> list[dict[str, Any]]:
    """One row per trial from a ResultGrid, in grid order."""
    rows = []
    for result in grid:
        if result.config is None:  # a trial that never started (its actor could not be placed)
            raise StageFailed(
                f"stage {stage.name!r}: a trial never started ({result.error}). Check that the "
                f"cluster can place a trial's resources ({spec.resources}) and reach the storage."
            )
        cfg = dict(result.config)
        m = result.metrics or {}
        _, tc, point = trial_configs(spec, base_model, base_train, cfg)
        err = result.error
        row: dict[str, Any] = {
            "trial_id": m.get("trial_id") or result.path.rstrip("/").rsplit("_", 1)[-1],
            **point,
            REPLICATE: int(cfg.get(REPLICATE, 0)),
            "seed": tc.seed,
            "status": "ERROR" if err is not None else "TERMINATED",
            "error": ""
            if err is None
            else f"{type(err).__name__}: {str(err).strip().splitlines()[-1][:300]}",
            "epochs": m.get("epoch", 0),
            "best_epoch": m.get("best_epoch", 0),
            **{k: m.get(f"best_{k}", math.nan) for k in METRICS},
            "train_seconds": m.get("train_seconds", math.nan),
            "restored": m.get("restored", 0),
            "node_id": m.get("node_id", ""),
            "data_zero_copy": m.get("data_zero_copy", ""),
            "mem_private_mb": m.get("mem_private_mb", math.nan),
            "mem_rss_mb": m.get("mem_rss_mb", math.nan),
            "path": result.path,
        }
        if "epoch" not in m:
            row["status"] = "ERROR"
        rows.append(row)
    keys = list(stage.grid)
    order = {tuple(p[k] for k in keys): i for i, p in enumerate(stage.points)}
    rows.sort(key=lambda r: (order.get(tuple(r[k] for k in keys), 1 << 30), r[REPLICATE]))
    return rows


def select(
    spec: SearchSpec,
    stage: StageSpec,
    rows: list[dict[str, Any]],
    base_model: ModelConfig,
    base_train: TrainConfig,
) -> dict[str, Any]:
    """The best grid point by the spec's metric (replicates combined by stage.select)."""
    metric = spec.train.metric
    keys = list(stage.grid)
    combine = {"mean": np.mean, "median": np.median, "min": np.min}[stage.select]
    scored = []
    for i, p in enumerate(stage.points):
        vals = [
            r[metric] for r in rows
            if all(r[k] == p[k] for k in keys) and r["status"] == "TERMINATED"
            and not math.isnan(r[metric])
        ]  # fmt: skip
        if vals:
            scored.append((float(combine(vals)), -i, p, vals))
    if not scored:
        errors = [r["error"] for r in rows if r["error"]]
        raise StageFailed(
            f"stage {stage.name!r}: no trial produced an evaluation ({len(rows)} trials). "
            f"First error: {errors[0] if errors else 'none recorded'}. Each trial's error.txt is "
            f"under its directory in the stage's experiment."
        )
    value, _, point, vals = max(scored, key=lambda s: (s[0], s[1]))
    mc, tc = trial_configs(spec, base_model, base_train, dict(point))[:2]
    return {
        "stage": stage.name,
        "metric": metric,
        "value": value,
        "replicate_values": vals,
        "replicate_std": float(np.std(vals)) if len(vals) > 1 else 0.0,
        "select": stage.select,
        "point": point,
        "model": mc.to_dict(),
        "train": tc.to_dict(),
        "trials": len(rows),
        "errors": sum(r["status"] == "ERROR" for r in rows),
    }


def write_results(run_dir: str, stage: StageSpec, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    store.write_text(store.join(run_dir, stage.name, RESULTS), buf.getvalue())


def read_results(run_dir: str, stage: str) -> list[dict[str, Any]]:
    text = store.read_text(store.join(run_dir, stage, RESULTS))
    return list(csv.DictReader(io.StringIO(text)))


def read_best(run_dir: str, stage: str) -> dict[str, Any] | None:
    path = store.join(run_dir, stage, BEST)
    return json.loads(store.read_text(path)) if store.exists(path) else None

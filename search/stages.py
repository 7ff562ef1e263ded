"""One stage of the search: a grid of trials as one `Tuner.fit`, then its rows and best point.

The experiment lives in the stage's attempt directory (`RunDir.stage_path`), Tune's own layout,
next to results.csv and best.json (written by `rundir`). Trials are read back only through
Tune's public API: the `ResultGrid` of `Tuner.fit()` (or of a restored Tuner). Selection follows
the notebook: each trial's best evaluation by the spec's metric (evaluated every `eval_every`
epochs); with replicates, a point's score is the mean (or median, or min) over its replicates.
A failed trial is a row with status ERROR and never aborts its stage; a stage with no finished
trial raises StageFailed.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
from ray import tune
from ray.util.queue import Empty, Queue

from ranker import storage
from ranker.config import ConfigError
from ranker.model import ModelConfig
from ranker.train import METRICS, TrainConfig
from search.connect import is_client
from search.errors import Interrupted, StageFailed
from search.rundir import ERROR, FINISHED, Best, RunDir, TrialRow
from search.spec import (
    REPLICATE,
    REPLICATE_SEED_STRIDE,
    SearchSpec,
    StageSpec,
    resolve_point,
    trial_configs,
)
from search.telemetry import StageMetrics, TrialMetrics
from search.tracking import Tracker
from search.trainable import TrialJob, run_trial
from search.trial_result import TrialResult, config_error

log = logging.getLogger("liquid_search")


def param_space(stage: StageSpec) -> dict[str, Any]:
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in stage.grid.items()}
    if stage.seeds > 1:
        space[REPLICATE] = tune.grid_search(list(range(stage.seeds)))
    return space


class Progress(tune.Callback):
    """One log line per finished or failed trial, counted over the stage, and the stage's
    metrics: the trial gauges from every result a trial reports, the per-stage counters.

    The Tuner pickles its callbacks with the experiment and a restored Tuner uses that copy, so
    this holds no handle to the driver's logging and keeps its count through
    `get_state`/`set_state`, which Tune saves with every experiment snapshot. Through Ray Client
    (ray://) Tune runs the stage in an actor on the cluster; there the lines travel back through
    `relay`, a `ray.util.queue.Queue` the driver drains.
    """

    def __init__(self, stage: StageSpec, metric: str, run_name: str, relay: Any = None) -> None:
        self.stage, self.metric, self.run_name, self.relay = stage, metric, run_name, relay
        self.total = len(stage.points) * stage.seeds
        self.done = 0
        self._metrics: StageMetrics | None = None
        self._trial_metrics: TrialMetrics | None = None

    def __getstate__(self) -> dict[str, Any]:  # metric handles are per process
        return {**self.__dict__, "_metrics": None, "_trial_metrics": None}

    @property
    def metrics(self) -> StageMetrics:
        if self._metrics is None:
            self._metrics = StageMetrics(self.run_name, self.stage.name)
        return self._metrics

    @property
    def trial_metrics(self) -> TrialMetrics:
        if self._trial_metrics is None:
            self._trial_metrics = TrialMetrics(self.run_name, self.stage.name)
        return self._trial_metrics

    def setup(self, **info: Any) -> None:
        self.metrics.set_running(True)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        typed = TrialResult.from_report(result)
        if typed is not None:
            point = self.stage.point_text(trial.config)
            self.trial_metrics.report(trial.trial_id, point, typed)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self.metrics.set_running(False)

    def get_state(self) -> dict[str, Any]:
        return {"done": self.done}

    def set_state(self, state: dict[str, Any]) -> None:
        self.done = int(state.get("done", 0))

    def _say(self, line: str) -> None:
        if self.relay is not None:
            self.relay.put_nowait(line)
        else:
            log.info(line)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        head = (
            f"[{self.stage.name} {self.done:3d}/{self.total}] {self.stage.point_text(trial.config)}"
        )
        r = TrialResult.from_report(trial.last_result)
        if r is None:
            self.metrics.failed()
            error = config_error(trial.last_result) or "the trial ended without an evaluation"
            self._say(f"{head} | FAILED: {error}")
            return
        self.metrics.finished()
        b = r.best_metrics
        self._say(
            f"{head} | val {self.metric} {b[self.metric]:6.2f} (epoch {r.best_epoch}) mean IC "
            f"{b['mean_ic']:+.4f} long {b['long_sharpe']:5.2f} short {b['short_sharpe']:5.2f} | "
            f"{r.train_seconds:5.1f}s"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self.metrics.failed()
        self._say(
            f"[{self.stage.name} {self.done:3d}/{self.total}] "
            f"{self.stage.point_text(trial.config)} | FAILED after {trial.num_failures} "
            f"attempt(s) (its error is kept in results.csv)"
        )


class _Relay:
    """Drains a Progress relay queue into our log, on a thread, while a stage runs."""

    def __init__(self) -> None:
        self.queue = Queue()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._drain, daemon=True)

    def _drain(self) -> None:
        while True:
            try:
                log.info(self.queue.get(timeout=0.5))
            except Empty:
                if self._stop.is_set():
                    return

    def __enter__(self) -> _Relay:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=10)
        self.queue.shutdown()


def _error_line(text: str) -> str:
    """The last line of an error (a traceback ends with the exception), at most 300 chars."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def run_stage(
    spec: SearchSpec,
    stage: StageSpec,
    run: RunDir,
    base_model: ModelConfig,
    base_train: TrainConfig,
    data: dict[str, Any],
    tracker: Tracker | None = None,
) -> Best:
    """Run (or, if its experiment exists unfinished, resume) one stage; write its results.

    Args:
        tracker: the search's MLflow run, for one nested run per trial (None: no MLflow).

    Returns:
        The stage's best point.

    Raises:
        Interrupted: Tune stopped before every trial ended (Ctrl-C); nothing was selected.
        StageFailed: no trial of the stage finished an evaluation.
    """
    t0 = time.time()
    relay_ctx = _Relay() if is_client() else None
    job = TrialJob(spec, stage, base_model, base_train)
    tuner = _tuner(job, run, data, relay_ctx.queue if relay_ctx is not None else None, tracker)
    with contextlib.ExitStack() as stack:
        if relay_ctx is not None:
            stack.enter_context(relay_ctx)
        grid = tuner.fit()
    total = len(stage.points) * stage.seeds
    ended = sum(_ended(r, job) for r in grid)
    if ended < total:  # Tune stopped on Ctrl-C (SIGINT) and saved its state: nothing to select
        raise Interrupted(
            f"stage {stage.name!r} was interrupted with {total - ended} of {total} trials "
            f"unfinished; nothing was selected from it. Fix: `liquid-search resume {run.path}` "
            f"continues it (finished trials are kept, the others continue from their last "
            f"checkpoint)."
        )
    rows = collect(stage, run, base_train, grid)
    try:
        best = select(spec, stage, rows, base_model, base_train, time.time() - t0)
    except StageFailed as e:
        run.write_rows(stage, rows)  # for `status`: every trial and its error
        raise StageFailed(
            f"{e} Fix: fix the cause, then run the stage again with `liquid-search stage "
            f"{stage.name} --run {run.path}`."
        ) from None
    run.write_stage(stage, rows, best)
    log.info(
        f"[{stage.name}] done: {best.trials} trials ({best.errors} failed) in "
        f"{best.wall_seconds:.0f}s; best {best.metric} {best.value:.3f} at {best.point}"
    )
    return best


def _ended(result: Any, job: TrialJob) -> bool:
    """Whether a trial is over: failed for good, could not run, or trained all its epochs.

    Tune marks the last result of a trial that finished `done`, but a trial restored as finished
    from an experiment snapshot need not carry it, and a trial Ctrl-C stopped may be marked
    terminated: its epochs tell.
    """
    m = result.metrics or {}
    if result.error is not None or m.get("done") or config_error(m):
        return True
    r = TrialResult.from_report(m)
    if r is None:
        return False
    try:
        _, tc, _ = trial_configs(job.spec, job.base_model, job.base_train, result.config or {})
    except ConfigError:
        return True
    return r.epoch >= tc.epochs


def _tuner(
    job: TrialJob, run: RunDir, data: dict[str, Any], relay: Any, tracker: Tracker | None
) -> tune.Tuner:
    """The stage's Tuner: restored when its experiment exists unfinished (finished trials are
    kept), else a new one over the stage's grid."""
    spec, stage = job.spec, job.stage
    exp_dir = run.stage_path(stage.name)
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, data=data, job=job),
        {"cpu": spec.resources.cpu, "gpu": spec.resources.gpu},
    )
    # Tune snapshots the experiment (which trial finished, each one's latest checkpoint) every
    # TUNE_GLOBAL_CHECKPOINT_S seconds; `resume` after a crash starts from that snapshot. Its
    # default ("auto", >= 10 s) could replay up to 10 s of every running trial; a snapshot is a
    # small JSON file, so once a second costs little and bounds the replay to a second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    if tune.Tuner.can_restore(exp_dir):
        log.info(f"[{stage.name}] resuming the experiment at {exp_dir} (finished trials are kept)")
        return tune.Tuner.restore(exp_dir, trainable=trainable, resume_errored=True)
    n = len(stage.points) * stage.seeds
    log.info(
        f"[{stage.name}] {n} trials ({len(stage.points)} grid points x {stage.seeds} "
        f"seed(s)), {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} GPU each, from base "
        f"{_short(job.base_model, job.base_train)}"
    )
    run_name = os.path.basename(run.path.rstrip("/"))
    callbacks: list[tune.Callback] = [Progress(stage, spec.train.metric, run_name, relay)]
    if tracker is not None:
        callbacks.append(tracker.trial_runs(run_name, spec, stage, job.base_model, job.base_train))
    return tune.Tuner(
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
            name=run.stage_dir(stage.name),
            storage_path=run.path,
            verbose=0,
            callbacks=callbacks,
            failure_config=tune.FailureConfig(max_failures=spec.max_failures),
            # Every checkpoint is kept (a trial writes epochs / eval_every of them, a few MB
            # each): with a limit, Tune deletes old ones and must snapshot the experiment
            # after every checkpoint to keep its state consistent, which is slow and warns.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=None),
        ),
    )


def _short(m: ModelConfig, t: TrainConfig) -> str:
    return (
        f"hidden=({m.fund_hidden},{m.price_hidden},{m.news_hidden}) "
        f"latent=({m.fundamental_latent},{m.price_latent},{m.news_latent}) alpha={m.news_alpha} "
        f"lr={t.learning_rate:g} wd={t.weight_decay:g} smooth={t.label_smoothing:g} "
        f"dropout=({m.fundamental_dropout},{m.price_dropout},{m.news_dropout})"
    )


def collect(stage: StageSpec, run: RunDir, base_train: TrainConfig, grid: Any) -> list[TrialRow]:
    """One row per trial of a ResultGrid, in grid order. A trial that failed, or never
    started, is a row with status ERROR and its error; nothing here raises for it."""
    rows = []
    keys = list(stage.grid)
    for result in grid:
        cfg = dict(result.config or {})
        r = TrialResult.from_report(result.metrics)
        error = ""
        if result.error is not None:
            error = f"{type(result.error).__name__}: {_error_line(str(result.error))}"
        elif r is None:
            error = config_error(result.metrics) or "the trial ended without an evaluation"
        rep = int(cfg.get(REPLICATE, 0))
        ck = result.checkpoint
        rows.append(
            TrialRow(
                trial_id=os.path.basename(result.path.rstrip("/")).removeprefix(f"{stage.name}_"),
                point={k: float(cfg[k]) if k in cfg else math.nan for k in keys},
                replicate=rep,
                seed=base_train.seed + REPLICATE_SEED_STRIDE * rep,
                status=ERROR if error else FINISHED,
                error=error,
                epochs=r.epoch if r else 0,
                best_epoch=r.best_epoch if r else 0,
                metrics=dict(r.best_metrics) if r else dict.fromkeys(METRICS, math.nan),
                train_seconds=r.train_seconds if r else math.nan,
                restored=r.restored if r else 0,
                node_id=r.node_id if r else "",
                device=r.device if r else "",
                gpu=r.gpu if r else "",
                gpu_peak_mb=r.gpu_peak_mb if r else math.nan,
                data_zero_copy=r.data_zero_copy if r else False,
                mem_private_mb=r.mem_private_mb if r else math.nan,
                mem_rss_mb=r.mem_rss_mb if r else math.nan,
                checkpoint=run.relative(ck.path) if ck is not None else "",
            )
        )
    order = {tuple(p[k] for k in keys): i for i, p in enumerate(stage.points)}
    rows.sort(key=lambda r: (order.get(tuple(r.point[k] for k in keys), 1 << 30), r.replicate))
    return rows


def select(
    spec: SearchSpec,
    stage: StageSpec,
    rows: list[TrialRow],
    base_model: ModelConfig,
    base_train: TrainConfig,
    wall_seconds: float,
) -> Best:
    """The best grid point by the spec's metric (replicates combined by stage.select).

    Raises:
        StageFailed: no trial finished an evaluation.
    """
    metric = spec.train.metric
    scored = []
    for i, p in enumerate(stage.points):
        vals = [r.metrics[metric] for r in rows if r.matches(p) and r.finished(metric)]
        if vals:
            scored.append((stage.combine(vals), -i, p, vals))
    if not scored:
        errors = [r.error for r in rows if r.error]
        raise StageFailed(
            f"stage {stage.name!r}: none of its {len(rows)} trials finished an evaluation, so "
            f"there is nothing to select (first error: {errors[0] if errors else 'none'})."
        )
    value, _, point, vals = max(scored, key=lambda s: (s[0], s[1]))
    mc, tc = resolve_point(spec, base_model, base_train, dict(point))
    return Best(
        stage=stage.name,
        metric=metric,
        value=value,
        replicate_values=vals,
        replicate_std=float(np.std(vals)) if len(vals) > 1 else 0.0,
        select=stage.select,
        point=dict(point),
        model=mc.to_dict(),
        train=tc.to_dict(),
        trials=len(rows),
        errors=sum(r.status == ERROR for r in rows),
        wall_seconds=wall_seconds,
    )


@dataclass(frozen=True)
class LiveTrial:
    """A trial of a stage that has not finished, as Tune last recorded it."""

    trial_id: str
    point: dict[str, float]
    replicate: int
    status: str  # Tune's: PENDING, RUNNING, PAUSED, TERMINATED, ERROR
    epoch: int
    best_epoch: int
    metrics: dict[str, float]  # of the best evaluation so far
    node_id: str
    error: str


def live_trials(run: RunDir, stage: StageSpec) -> list[LiveTrial] | None:
    """The trials of an unfinished stage, through `tune.ExperimentAnalysis` (Tune's public
    reader of its experiment snapshot and of each trial's reported results); works on object
    stores too. None when Tune has not written its first snapshot yet."""
    exp_dir = run.stage_path(stage.name)
    fs, path = storage.filesystem(exp_dir)
    try:
        ea = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError:  # "No experiment snapshot file ... was found"
        return None
    frames = ea.trial_dataframes
    out = []
    for t in ea.trials:
        last: dict[str, Any] = dict(t.last_result or {})
        status = t.status
        df = frames.get(t.trial_id)
        if df is not None and len(df) and "epoch" in df:
            fresh = df.iloc[-1].to_dict()  # result.json can be newer than the snapshot
            if int(fresh.get("epoch", 0)) >= int(last.get("epoch") or 0):
                last = fresh
            if status == "PENDING":  # the snapshot predates its first report
                status = "RUNNING"
        cfg = t.config or {}
        r = TrialResult.from_report(last)
        error = config_error(last) or (
            _error_line(t.get_error() or "") if t.status == "ERROR" else ""
        )
        out.append(
            LiveTrial(
                trial_id=t.trial_id,
                point={k: float(cfg[k]) for k in stage.grid if k in cfg},
                replicate=int(cfg.get(REPLICATE, 0)),
                status="ERROR" if error else status,
                epoch=r.epoch if r else 0,
                best_epoch=r.best_epoch if r else 0,
                metrics=dict(r.best_metrics) if r else dict.fromkeys(METRICS, math.nan),
                node_id=r.node_id if r else "",
                error=error,
            )
        )
    return out

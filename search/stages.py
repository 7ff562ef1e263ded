"""One stage of the search: a grid of trials as one `Tuner.fit`, then its rows and best point.

The experiment lives in the stage's attempt directory (`RunDir.stage_path`), Tune's own layout,
next to results.csv and best.json (written by `rundir`). Trials are read back only through
Tune's public API: the `ResultGrid` of `Tuner.fit()` (or of a restored Tuner). Selection follows
the notebook: each trial's best evaluation by the spec's metric (evaluated every `eval_every`
epochs); with replicates, a point's score is the mean (or median, or min) over its replicates
(`search.selection`).
A failed trial is a row with status ERROR and never aborts its stage; a stage with no finished
trial raises StageFailed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import math
import os
import pickle
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import ray
from ray import tune
from ray.util.queue import Empty, Queue

from ranker import storage
from ranker.config import ConfigError
from ranker.model import ModelConfig
from ranker.train import TrainConfig
from search.connect import is_client
from search.errors import Interrupted, StageFailed, storage_error, storage_fault
from search.halving import RUNNING_LIMITS, Ledger, SuccessiveHalving, seed_from_history
from search.results import mean_std
from search.rundir import Best, RunDir, Series, latest_checkpoints, read_checkpoint, read_series
from search.selection import best_point, point_scores
from search.significance import assess, in_grid, start_point
from search.spec import (
    REPLICATE,
    SearchSpec,
    StageSpec,
    replicate_seed,
    resolve_point,
    trial_configs,
)
from search.telemetry import StageMetrics, TrialMetrics
from search.tracking import Tracker
from search.trainable import TrialJob, run_trial, train_point
from search.trial_result import (
    ERROR,
    FINISHED,
    STOPPED,
    TrialResult,
    TrialRow,
    config_error,
    error_line,
)

log = logging.getLogger("liquid_search")


def param_space(stage: StageSpec) -> dict[str, Any]:
    space: dict[str, Any] = {k: tune.grid_search(list(v)) for k, v in stage.grid.items()}
    if stage.replicates > 1:
        space[REPLICATE] = tune.grid_search(list(range(stage.replicates)))
    return space


class StageProgress(tune.Callback):
    """One log line per finished or failed trial, counted over the stage, and the stage's
    metrics: the trial gauges from every result a trial reports, the per-stage counters.

    The Tuner pickles its callbacks with the experiment and a restored Tuner uses that copy, so
    this holds no handle to the driver's logging and keeps its count through
    `get_state`/`set_state`, which Tune saves with every experiment snapshot. Through Ray Client
    (ray://) Tune runs the stage in an actor on the cluster; there the lines travel back through
    `relay`, a `ray.util.queue.Queue` the driver drains.
    """

    def __init__(
        self, stage: StageSpec, metric: str, run_name: str, relay: Any = None, epochs: int = 0,
        fold: int = 0,
    ) -> None:  # fmt: skip
        self.stage, self.metric, self.run_name, self.relay = stage, metric, run_name, relay
        self.total = stage.n_trials
        self.epochs = epochs  # a trial that ends before them was cut at a rung
        self.fold = fold  # a walk-forward fold's (its gauges' label)
        self.done = 0
        self._metrics: StageMetrics | None = None
        self._trial_metrics: TrialMetrics | None = None

    def __getstate__(self) -> dict[str, Any]:  # metric handles are per process
        return {**self.__dict__, "_metrics": None, "_trial_metrics": None}

    @property
    def metrics(self) -> StageMetrics:
        if self._metrics is None:
            self._metrics = StageMetrics(self.run_name, self.stage.name,
                                         getattr(self, "fold", 0))  # fmt: skip
        return self._metrics

    @property
    def trial_metrics(self) -> TrialMetrics:
        if self._trial_metrics is None:
            self._trial_metrics = TrialMetrics(self.run_name, self.stage.name,
                                               getattr(self, "fold", 0))  # fmt: skip
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
        epochs = getattr(self, "epochs", 0)  # (a callback pickled before it had them)
        cut = f" | stopped at a rung (epoch {r.epoch})" if r.epoch < epochs else ""
        self._say(
            f"{head} | val {self.metric} {b[self.metric]:6.2f} (epoch {r.best_epoch}) mean IC "
            f"{b['mean_ic']:+.4f} long {b['long_sharpe']:5.2f} short {b['short_sharpe']:5.2f} | "
            f"{r.train_seconds:5.1f}s{cut}"
        )

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.done += 1
        self.metrics.failed()
        if storage_error(_trial_error(trial)) is not None:
            self._say(f"[{self.stage.name} {self.done:3d}/{self.total}] "
                      f"{self.stage.point_text(trial.config)} | stopped: its checkpoint could not "
                      f"be written (the storage fails)")  # fmt: skip
            return
        self._say(
            f"[{self.stage.name} {self.done:3d}/{self.total}] "
            f"{self.stage.point_text(trial.config)} | FAILED after {trial.num_failures} "
            f"attempt(s) (its error is kept in results.csv)"
        )


def _trial_error(trial: Any) -> BaseException | None:
    """The exception a failed trial ended with, as Tune keeps it (None when it cannot be read
    back: a storage that fails may have cut its file short)."""
    try:
        return trial.get_pickled_error()
    except (OSError, EOFError, pickle.UnpicklingError):
        return OSError("the trial's error could not be read back")


# The stop events of the stages running in this process, by experiment directory: a Tuner
# restored from its pickle gets its callbacks back from there, not from this run.
_STOPS: dict[str, threading.Event] = {}


class StopWhenSet(tune.Callback):
    """Ends a stage at Tune's next step once its stop event (`_STOPS[key]`) is set, as Ctrl-C
    would: Tune's periodic snapshot (every second) keeps every trial where it was, and a resume
    continues them. For a Tuner in a thread (a walk-forward fold), where Tune does not see the
    signal itself; the event is looked up by key, so a restored Tuner's copy finds this run's."""

    def __init__(self, key: str) -> None:
        self.key = key

    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        event = _STOPS.get(self.key)
        if event is not None and event.is_set():
            raise Interrupted("stopped: the run was interrupted")


class _Relay:
    """Drains a StageProgress relay queue into our log, on a thread, while a stage runs."""

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


def run_stage(
    spec: SearchSpec,
    stage: StageSpec,
    run: RunDir,
    base_model: ModelConfig,
    base_train: TrainConfig,
    data: dict[str, Any],
    tracker: Tracker | None = None,
    stop: threading.Event | None = None,
) -> Best:
    """Run (or, if its experiment exists unfinished, resume) one stage; write its results.

    Args:
        tracker: the search's MLflow run, for one nested run per trial (None: no MLflow).
        stop: set to stop the stage as Ctrl-C would (a walk-forward fold runs in a thread,
            where Tune does not see the signal).

    Returns:
        The stage's best point.

    Raises:
        Interrupted: Tune stopped before every trial ended (Ctrl-C); nothing was selected.
        StageFailed: no trial of the stage finished an evaluation.
    """
    t0 = time.time()
    relay_ctx = _Relay() if is_client() else None
    job = TrialJob(spec, stage, base_model, base_train)
    start = start_point(spec, stage, base_model, base_train)
    relay = relay_ctx.queue if relay_ctx is not None else None
    tuner = _tuner(job, run, data, relay, tracker, stop)
    # A start that is no grid point is trained beside the grid, as Ray tasks: the benchmark of
    # the stage's SPA test (`search.significance`).
    bench = [] if in_grid(stage, start) else start_trials(job, run, data, start)
    try:
        grid, cut = _fit(tuner, job, run, relay_ctx, stop)
    except BaseException:
        _cancel(bench)
        raise
    rows = collect(stage, run, base_train, grid, cut) + start_rows(job, run, bench, start)
    try:
        best = select(spec, stage, rows, start, _series(run, rows, spec.train.metric), base_model,
                      base_train, time.time() - t0)  # fmt: skip
    except StageFailed as e:
        run.write_rows(stage, rows)  # for `status`: every trial and its error
        raise StageFailed(
            f"{e} Fix: fix the cause, then run the stage again with `liquid-search stage "
            f"{stage.name} --run {run.path}`."
        ) from None
    run.write_stage(stage, rows, best)
    log.info(
        f"[{stage.name}] done: {best.trials} trials ({best.errors} failed) in "
        f"{best.wall_seconds:.0f}s; selected {best.metric} {best.value:.3f} at {best.point}"
    )
    if best.significance is not None:
        log.info(f"[{stage.name}] {best.significance.sentence()}")
    return best


def _fit(
    tuner: tune.Tuner, job: TrialJob, run: RunDir, relay_ctx: _Relay | None,
    stop: threading.Event | None,
) -> tuple[Any, dict[str, int]]:  # fmt: skip
    """Run the stage's Tuner to its end: its ResultGrid and the trials halving cut.

    Raises:
        Interrupted: the stage stopped before every trial ended (Ctrl-C, `stop`).
        StorageFault: a trial could not write its checkpoint, or Tune its record.
    """
    stage = job.stage
    with contextlib.ExitStack() as stack:
        if relay_ctx is not None:
            stack.enter_context(relay_ctx)
        try:
            _distinct_staging(run.stage_dir(stage.name), stop)
            grid = tuner.fit()
        except Exception as e:
            if stop is not None and stop.is_set():  # StopWhenSet ended the stage
                raise Interrupted(
                    f"stage {stage.name!r} was interrupted; nothing was selected "
                    f"from it. Fix: `liquid-search resume` continues it."
                ) from None
            if not isinstance(e, (OSError, EOFError, pickle.UnpicklingError)):
                raise
            # Tune reads its own files of the stage back as it ends (a trial's error file, its
            # results): a storage that failed under it left them cut short or unreadable.
            raise storage_fault(e, run.path, f"reading back Tune's record of stage "
                                             f"{stage.name!r}") from None  # fmt: skip
    fault = next((e for r in grid if (e := storage_error(r.error)) is not None), None)
    if fault is not None:  # a trial could not write its checkpoint: nothing is selected
        raise storage_fault(fault, run.path, f"a trial of stage {stage.name!r} writing its "
                                             f"checkpoint")  # fmt: skip
    total = stage.n_trials
    cut = halving_cuts(job, grid)
    ended = sum(_ended(r, job) or r.path in cut for r in grid)
    if ended < total:  # Tune stopped on Ctrl-C (SIGINT) and saved its state: nothing to select
        raise Interrupted(
            f"stage {stage.name!r} was interrupted with {total - ended} of {total} trials "
            f"unfinished; nothing was selected from it. Fix: `liquid-search resume {run.path}` "
            f"continues it (finished trials are kept, the others continue from their last "
            f"checkpoint)."
        )
    return grid, cut


def _cancel(refs: list) -> None:
    for ref in refs:
        ray.cancel(ref, force=True)


@ray.remote
def _start_task(config: dict[str, Any], data: dict[str, Any], job: TrialJob) -> Any:
    return train_point(config, data, job)


def start_trials(job: TrialJob, run: RunDir, data: dict[str, Any], start: dict[str, float]) -> list:
    """The stage's starting point, no grid point, trained as one Ray task per replicate beside
    the stage's trials, with their resources (a replicate whose whole checkpoint is already in
    the stage's directory, from before an interrupt, is not trained again)."""
    res = job.spec.resources
    refs = []
    for rep in range(job.stage.replicates):
        done = _start_checkpoint(job, run, rep)
        if done is not None:
            refs.append(ray.put(done))
            continue
        config = {**start, **({REPLICATE: rep} if job.stage.replicates > 1 else {})}
        refs.append(
            _start_task.options(num_cpus=res.cpu, num_gpus=res.gpu).remote(config, data, job)
        )
    log.info(f"[{job.stage.name}] its starting point {start} is no grid point: trained beside "
             f"the grid ({job.stage.replicates} replicate(s)), the SPA test's benchmark")  # fmt: skip
    return refs


def _start_checkpoint(job: TrialJob, run: RunDir, rep: int) -> tuple | None:
    """A replicate of the start trained before (its result and checkpoint), if it finished."""
    path = run.start_checkpoint(job.stage.name, rep)
    fs, p = storage.filesystem(path)
    state, series = read_checkpoint(p, fs)
    if state is None or series is None or state.progress.epoch < job.base_train.epochs:
        return None
    return TrialResult.of_evaluation(state.last_evaluation()), None


def start_rows(job: TrialJob, run: RunDir, refs: list, start: dict[str, float]) -> list[TrialRow]:
    """The start's trained replicates as rows of the stage (their checkpoints written to the
    stage's directory, `RunDir.start_checkpoint`)."""
    rows = []
    for rep, (result, ck) in enumerate(ray.get(refs)):
        path = run.start_checkpoint(job.stage.name, rep)
        if ck is not None:
            ck.write(path)
        rows.append(TrialRow(
            trial_id=f"start_r{rep}", point=dict(start), replicate=rep,
            seed=replicate_seed(job.base_train.seed, rep), status=FINISHED, error="",
            result=result, checkpoint=run.relative(storage.filesystem(path)[1]),
        ))  # fmt: skip
    return rows


def _series(run: RunDir, rows: list[TrialRow], metric: str) -> dict[str, Series]:
    """The val series each finished trial saved with its best evaluation, by trial id."""
    out = {}
    for r in rows:
        if r.finished(metric) and r.checkpoint:
            s = read_series(run.resolve(r.checkpoint))
            if s is not None:
                out[r.trial_id] = s
    return out


def halving_cuts(job: TrialJob, grid: Any) -> dict[str, int]:
    """The trials successive halving cut at a rung ({result path: rung}), decided again from
    what every trial reported (`search.halving`: the scheduler's own decision, from the same
    values); {} when halving is off."""
    spec, stage = job.spec, job.stage
    if not spec.halving.on:
        return {}
    tc = job.base_train
    ledger = Ledger(stage, tc.epochs, tc.eval_every, spec.halving.reduction)
    key = "best_" + spec.train.metric
    for result in grid:
        cfg = result.config or {}
        if result.error is not None:
            ledger.fail(cfg)
        df = result.metrics_dataframe
        if df is None or "epoch" not in df or key not in df:
            continue
        for epoch, value in zip(df["epoch"], df[key], strict=True):
            ledger.record(cfg, int(epoch), value)
    cuts = ledger.cuts()
    out = {}
    for result in grid:
        placed = ledger.place(result.config or {})
        if placed is not None and placed[0] in cuts and result.error is None:
            out[result.path] = cuts[placed[0]]
    return out


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
    job: TrialJob, run: RunDir, data: dict[str, Any], relay: Any, tracker: Tracker | None,
    stop: threading.Event | None = None,
) -> tune.Tuner:  # fmt: skip
    """The stage's Tuner: restored when its experiment exists unfinished (finished trials are
    kept), else a new one over the stage's grid."""
    spec, stage = job.spec, job.stage
    exp_dir = run.stage_path(stage.name)
    if stop is not None:
        _STOPS[exp_dir] = stop
    RUNNING_LIMITS[exp_dir] = spec.max_concurrent
    # Tune snapshots the experiment (which trial finished, each one's latest checkpoint) every
    # TUNE_GLOBAL_CHECKPOINT_S seconds; `resume` after a crash starts from that snapshot. Its
    # default ("auto", >= 10 s) could replay up to 10 s of every running trial; a snapshot is a
    # small JSON file, so once a second costs little and bounds the replay to a second.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    rebuilt_from: list[tuple[dict[str, Any], list[dict[str, Any]]]] = []
    if tune.Tuner.can_restore(exp_dir):
        if _readable(exp_dir):
            log.info(f"[{stage.name}] resuming the experiment at {exp_dir} (finished trials are "
                     f"kept)")  # fmt: skip
            return tune.Tuner.restore(exp_dir, trainable=_trainable(job, data, run.fold_index),
                                      resume_errored=True)  # fmt: skip
        job, rebuilt_from = _rebuilt(job, run)
    trainable = _trainable(job, data, run.fold_index)
    log.info(
        f"[{stage.name}] {stage.n_trials} trials ({len(stage.points)} grid points x "
        f"{stage.replicates} replicate(s)), {spec.resources.cpu:g} CPU / {spec.resources.gpu:g} "
        f"GPU each, from base {_short(job.base_model, job.base_train)}"
    )
    run_name = run.name
    callbacks: list[tune.Callback] = [
        StageProgress(
            stage, spec.train.metric, run_name, relay, job.base_train.epochs, run.fold_index
        )
    ]
    if stop is not None:
        callbacks.append(StopWhenSet(exp_dir))
    scheduler = None
    if spec.halving.on:
        tc = job.base_train
        ledger = Ledger(stage, tc.epochs, tc.eval_every, spec.halving.reduction)
        for config, history in rebuilt_from:  # the rungs a rebuilt stage's trials had passed
            seed_from_history(ledger, config, history, spec.train.metric)
        scheduler = SuccessiveHalving(ledger, "best_" + spec.train.metric,
                                      run.stage_path(stage.name), spec.max_concurrent)  # fmt: skip
        log.info(f"[{stage.name}] successive halving: at epochs {ledger.at} the best "
                 f"1/{spec.halving.reduction} of the grid points go on")  # fmt: skip
    if tracker is not None:
        callbacks.append(tracker.trial_runs(run_name, spec, stage, job.base_model, job.base_train,
                                            run.fold_index))  # fmt: skip
    return tune.Tuner(
        trainable,
        param_space=param_space(stage),
        tune_config=tune.TuneConfig(
            scheduler=scheduler,
            # With halving, the scheduler keeps max_concurrent (`SuccessiveHalving`).
            max_concurrent_trials=(spec.max_concurrent or None) if scheduler is None else None,
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


# Tune stages a driver's experiment files (its state snapshots, before they are synced to the
# run's storage) in a local directory named by the experiment's name and the second its fit
# started (ray.train's StorageContext). Walk-forward folds run stages of the same name side by
# side: two started within one second would share that directory, and each fold's syncer would
# upload (or miss) the other's files. So a stage starts at least `_STAGING_GAP_S` seconds after
# the last stage of the same name in this process.
_STAGING_GAP_S = 2.0
_STARTS = threading.Lock()
_LAST_START: dict[str, float] = {}


def _distinct_staging(name: str, stop: threading.Event | None) -> None:
    """Wait, if need be, so that this stage's Tune staging directory is its own (above); a
    stage stopped meanwhile (Ctrl-C) does not start.

    Raises:
        Interrupted: `stop` was set.
    """
    with _STARTS:
        wait = _LAST_START.get(name, -math.inf) + _STAGING_GAP_S - time.monotonic()
        if wait > 0:
            stopped = stop.wait(wait) if stop is not None else time.sleep(wait)
            if stopped:
                raise Interrupted(f"stage {name!r} was stopped before it started")
        _LAST_START[name] = time.monotonic()


# Tune's registry of trainables is a process-wide dict that is not safe to write from two
# threads (walk-forward folds run a Tuner each): registrations go through this lock, and a
# Tuner gets its trainable by name, so Tune itself registers nothing.
_REGISTRY = threading.Lock()


def _trainable(job: TrialJob, data: dict[str, Any], fold: int) -> str | Callable[..., None]:
    """The stage's trainable, under a name of its own: `run_trial` (the name every single-split
    run recorded in its experiment, which a resume must find) or, for a fold,
    `run_trial_fold<i>` (folds side by side must not replace each other's). Registered here,
    behind a lock (Tune's registry is not thread-safe, and the folds' threads fit at once), and
    given to Tune by name; through Ray Client the Tuner runs in an actor on the cluster, where
    the client's object refs inside the trainable cannot be unpickled from the registry, so
    there it is given as the object, and Tune registers it on the cluster under its name."""
    res = job.spec.resources
    trainable = tune.with_resources(tune.with_parameters(run_trial, data=data, job=job),
                                    {"cpu": res.cpu, "gpu": res.gpu})  # fmt: skip
    name = "run_trial" if not fold else f"run_trial_fold{fold}"
    trainable.__name__ = name
    if is_client():
        return trainable
    with _REGISTRY:
        tune.register_trainable(name, trainable)
    return name


def _readable(exp_dir: str) -> bool:
    """Whether Tune's record of a stage (its newest experiment state) reads back: a snapshot
    cut short by a full disk or a store that went away does not."""
    fs, path = storage.filesystem(exp_dir)
    try:
        tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except (ValueError, KeyError, TypeError, OSError):  # a JSON file cut short, or missing
        return False
    return True


def _rebuilt(
    job: TrialJob, run: RunDir
) -> tuple[TrialJob, list[tuple[dict[str, Any], list[dict[str, Any]]]]]:
    """A stage whose Tune record cannot be read, continued in a new attempt directory from its
    trials' own checkpoints: every trial resumes from its newest whole checkpoint (a finished
    one reports its end at once), as after Ctrl-C, so the stage ends as it would have."""
    stage = job.stage
    old = run.stage_path(stage.name)
    found = latest_checkpoints(old)
    name = run.new_attempt(stage.name)
    have = ("every trial has one" if len(found) >= stage.n_trials else
            f"{len(found)} of {stage.n_trials} trials have one; the others start afresh")  # fmt: skip
    log.warning(
        f"[{stage.name}] Tune's record of the stage in {old} cannot be read (cut short by a "
        f"storage fault?): continuing it in {run.file(name)} from the trials' own checkpoints "
        f"({have})"
    )
    histories = []
    for key, (uri, _) in found.items():
        fs, path = storage.filesystem(uri)
        state, _ = read_checkpoint(path, fs)
        if state is not None:
            point, rep = json.loads(key)
            histories.append(({**dict(point), REPLICATE: rep}, state.progress.history))
    return replace(job, resume_from={k: uri for k, (uri, _) in found.items()}), histories


def _short(m: ModelConfig, t: TrainConfig) -> str:
    return (
        f"hidden=({m.fund_hidden},{m.price_hidden},{m.news_hidden}) "
        f"latent=({m.fundamental_latent},{m.price_latent},{m.news_latent}) alpha={m.news_alpha} "
        f"lr={t.learning_rate:g} wd={t.weight_decay:g} smooth={t.label_smoothing:g} "
        f"dropout=({m.fundamental_dropout},{m.price_dropout},{m.news_dropout})"
    )


def collect(
    stage: StageSpec, run: RunDir, base_train: TrainConfig, grid: Any,
    cut: dict[str, int] | None = None,
) -> list[TrialRow]:  # fmt: skip
    """One row per trial of a ResultGrid, in grid order. A trial that failed, or never
    started, is a row with status ERROR and its error; one successive halving cut at a rung
    (`cut`: its path -> the rung), STOPPED; nothing here raises for either."""
    rows = []
    keys = list(stage.grid)
    for result in grid:
        cfg = dict(result.config or {})
        r = TrialResult.from_report(result.metrics)
        error = ""
        if result.error is not None:
            error = f"{type(result.error).__name__}: {error_line(str(result.error))}"
        elif r is None:
            error = config_error(result.metrics) or "the trial ended without an evaluation"
        rep = int(cfg.get(REPLICATE, 0))
        ck = result.checkpoint
        rows.append(
            TrialRow(
                trial_id=os.path.basename(result.path.rstrip("/")).removeprefix(f"{stage.name}_"),
                point={k: float(cfg[k]) if k in cfg else math.nan for k in keys},
                replicate=rep,
                seed=replicate_seed(base_train.seed, rep),
                status=ERROR if error else STOPPED if result.path in (cut or {}) else FINISHED,
                error=error,
                result=r,
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
    start: dict[str, float],
    series: dict[str, Series],
    base_model: ModelConfig,
    base_train: TrainConfig,
    wall_seconds: float,
) -> Best:
    """The stage's choice by the spec's selection rule, with its tied set and SPA test.

    `best` (the notebook's) takes the grid point with the highest score (replicates combined
    by stage.combine; the first in grid order among equals). `spa` keeps the stage's starting
    point unless the SPA test says a grid point beats it at `selection.spa_level`, and then
    takes the best; where the tests cannot run (too few dates) it takes the best.

    Raises:
        StageFailed: no trial finished an evaluation.
    """
    metric = spec.train.metric
    best = best_point(point_scores(stage, [r for r in rows if in_grid(stage, r.point)], metric))
    if best is None:
        errors = [r.error for r in rows if r.error]
        raise StageFailed(
            f"stage {stage.name!r}: none of its {len(rows)} trials finished an evaluation, so "
            f"there is nothing to select (first error: {errors[0] if errors else 'none'})."
        )
    point, vals = best.point, best.values
    sig = assess(spec, stage, rows, series, start, moved=True)
    kept = [r.best_metrics[metric] for r in rows if r.matches(start) and r.finished(metric)]
    if spec.selection.rule == "spa" and sig.skipped is None and not sig.beat_start and kept:
        point, vals = dict(start), kept
    sig = dataclasses.replace(sig, moved=not all(float(point[k]) == float(start[k])
                                                  for k in stage.grid))  # fmt: skip
    mc, tc = resolve_point(spec, base_model, base_train, dict(point))
    return Best(
        stage=stage.name,
        metric=metric,
        value=stage.score(vals),
        replicate_values=vals,
        replicate_std=mean_std(vals).std,
        combine=stage.combine,
        point=dict(point),
        model=mc.to_dict(),
        train=tc.to_dict(),
        trials=len(rows),
        errors=sum(r.status == ERROR for r in rows),
        wall_seconds=wall_seconds,
        significance=sig,
    )

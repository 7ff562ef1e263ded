"""The Tune trainable: a thin shell around `ranker.train.fit`.

It builds the trial's configs from its grid point, sets up its device, reads the Panels
zero-copy from the object store, resumes from the trial's last checkpoint when Tune retries or
restores it, and turns every evaluation into `tune.report(TrialResult, checkpoint=...)`. Each
checkpoint (`rundir.TrialCheckpoint`) holds the resumable training state and the per-date
validation series of the best evaluation so far.

A trial whose config cannot be built, or that asked for a GPU on a node without one, fails at
once: it reports the error as its one result and ends, so Tune does not retry a mistake that
would fail the same way every time. Other errors raise, and Tune retries the trial from its last
checkpoint up to `max_failures` times.
"""

from __future__ import annotations

import logging
import os
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import ray
from ray import tune

from ranker import device as devices
from ranker import storage
from ranker.config import ConfigError
from ranker.model import ModelConfig
from ranker.train import Evaluation, TrainConfig, TrainState, fit
from search import store
from search.rundir import Series, TrialCheckpoint, read_checkpoint, trial_key
from search.spec import REPLICATE, SearchSpec, StageSpec, trial_configs
from search.trial_result import TrialResult, error_report


@dataclass(frozen=True)
class TrialJob:
    """What every trial of a stage shares: the resolved spec, the stage, and the base configs
    its grid points apply to (the best of the stage before); and, when the stage is rebuilt from
    its trials' own checkpoints (`rundir.latest_checkpoints`), where each trial continues from:
    a checkpoint directory URI by `rundir.trial_key`."""

    spec: SearchSpec
    stage: StageSpec
    base_model: ModelConfig
    base_train: TrainConfig
    resume_from: dict[str, str] = field(default_factory=dict)


def memory_mb() -> dict[str, float]:
    """This process's resident memory split into private and shared pages (Linux)."""
    out = {"mem_rss_mb": float("nan"), "mem_private_mb": float("nan")}
    try:
        with open("/proc/self/smaps_rollup") as f:
            vals = {}
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[0].endswith(":"):
                    vals[parts[0][:-1]] = int(parts[1]) / 1024
        out["mem_rss_mb"] = vals.get("Rss", float("nan"))
        out["mem_private_mb"] = vals.get("Private_Clean", 0.0) + vals.get("Private_Dirty", 0.0)
    except OSError:
        pass
    return out


def run_trial(config: dict[str, Any], data: dict[str, Any], job: TrialJob) -> None:
    """Tune function trainable.

    Args:
        config: the trial's grid point (and replicate index).
        data: object refs of the `train` and `val` Panels.
        job: what the stage's trials share.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint
    res = job.spec.resources
    try:
        mc, tc, point = trial_configs(job.spec, job.base_model, job.base_train, config)
        device = devices.setup(res.cpu, res.gpu)
    except (ConfigError, devices.NoCudaDevice) as e:
        tune.report(error_report(f"{type(e).__name__}: {e}"))
        return
    train, val = store.get(data["train"]), store.get(data["val"])  # zero-copy, read-only
    trial_id = tune.get_context().get_trial_id()
    where = f"[liquid-search] {job.stage.name} trial {trial_id} ({job.stage.point_text(config)})"
    resume, best_series = _resume_point(config, job)
    node_id = ray.get_runtime_context().get_node_id()
    # Read-only arrays are views of the object store's copy, not private copies.
    zero_copy = not (train.emb.flags.writeable or val.emb.flags.writeable)
    # One line as the trial starts and one as it ends, in this actor's log: with reused actors
    # one actor runs many trials, and its log (dashboard, Actors page) says which.
    _say(f"{where} started on {device}, node {node_id[:8]}, pid {os.getpid()}"
         + (f", resumed after epoch {resume.progress.epoch}" if resume else ""))  # fmt: skip

    def on_eval(ev: Evaluation) -> None:
        nonlocal best_series
        if ev.is_best and ev.daily is not None:
            best_series = Series.from_daily(ev.daily, val)
        result = TrialResult.of_evaluation(ev, **_where(node_id, device, zero_copy))
        with tempfile.TemporaryDirectory() as d:
            TrialCheckpoint(ev.state(), best_series, point, mc.to_dict(), tc.to_dict(),
                            replicate=int(config.get(REPLICATE, 0))).write(d)  # fmt: skip
            tune.report(result.to_report(), checkpoint=tune.Checkpoint.from_directory(d))

    try:
        if resume is not None and resume.progress.epoch >= tc.epochs:
            # Rebuilt from a checkpoint of a trial that had finished: report it as it ended.
            on_eval(resume.last_evaluation())
        elif resume is not None and job.spec.halving.on:
            # The rung this trial stands at is decided from the values reported there: say it
            # again (its checkpoint is the one Tune already has).
            again = TrialResult.of_evaluation(resume.last_evaluation(),
                                              **_where(node_id, device, zero_copy))  # fmt: skip
            tune.report(again.to_report())
        result = fit(mc, tc, train, val, on_eval=on_eval, resume=resume, device=device)
    except BaseException as e:
        _say(f"{where} ended with {type(e).__name__}: {e}")
        raise
    finally:
        devices.release_gpu_memory(device)
    _say(f"{where} ended: best {tc.metric} {result.metrics[tc.metric]:.3f} at epoch "
         f"{result.best_epoch}, {result.seconds:.1f} s of training")  # fmt: skip


def _where(node_id: str, device: str, zero_copy: bool) -> dict[str, Any]:
    """Where a result was computed, as `TrialResult.of_evaluation` takes it."""
    mem, gpu = memory_mb(), devices.gpu_stats(device)
    return {"node_id": node_id, "device": device, "data_zero_copy": zero_copy,
            "mem_rss_mb": mem["mem_rss_mb"], "mem_private_mb": mem["mem_private_mb"],
            "gpu": gpu.get("gpu", ""), "gpu_peak_mb": gpu.get("gpu_peak_mb", float("nan"))}  # fmt: skip


def train_point(
    config: dict[str, Any], data: dict[str, Any], job: TrialJob
) -> tuple[TrialResult, TrialCheckpoint]:
    """One grid point trained outside Tune, as a trial would train it (a stage's starting point
    that is no grid point: the benchmark of its SPA test): its last evaluation's result and the
    checkpoint a trial would have saved with it.

    Raises:
        ConfigError: the point sets a value its config refuses.
    """
    res = job.spec.resources
    mc, tc, point = trial_configs(job.spec, job.base_model, job.base_train, config)
    device = devices.setup(res.cpu, res.gpu)
    train, val = store.get(data["train"]), store.get(data["val"])
    zero_copy = not (train.emb.flags.writeable or val.emb.flags.writeable)
    last: dict[str, Any] = {}

    def on_eval(ev: Evaluation) -> None:
        if ev.is_best and ev.daily is not None:
            last["series"] = Series.from_daily(ev.daily, val)
        last["ev"] = ev

    try:
        fit(mc, tc, train, val, on_eval=on_eval, device=device)
    finally:
        devices.release_gpu_memory(device)
    ev = last["ev"]
    node_id = ray.get_runtime_context().get_node_id()
    result = TrialResult.of_evaluation(ev, **_where(node_id, device, zero_copy))
    ck = TrialCheckpoint(ev.state(), last["series"], point, mc.to_dict(), tc.to_dict(),
                         replicate=int(config.get(REPLICATE, 0)))  # fmt: skip
    return result, ck


def _resume_point(config: dict[str, Any], job: TrialJob) -> tuple[TrainState | None, Series | None]:
    """Where the trial continues from: Tune's checkpoint of it when Tune retries or restores it,
    else the checkpoint a rebuilt stage hands it (`TrialJob.resume_from`), else nowhere. A
    checkpoint that cannot be read whole (its upload was cut short by a storage fault) is
    skipped for the one before it."""
    ck = tune.get_checkpoint()
    if ck is not None:
        return read_checkpoint(ck.path, ck.filesystem)
    uri = job.resume_from.get(trial_key(config))
    if uri is None:
        return None, None
    fs, path = storage.filesystem(uri)
    return read_checkpoint(path, fs)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)

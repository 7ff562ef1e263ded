"""The Tune trainable: a thin shell around `ranker.train.fit`.

It builds the trial's configs from its grid point, reads the Panels zero-copy from the object
store, resumes from the trial's last checkpoint when Tune retries or restores it, and turns every
evaluation into `tune.report(metrics, checkpoint=...)`. Each checkpoint (`rundir.TrialCheckpoint`)
holds the resumable training state and the per-date validation series of the best evaluation so
far.

A trial whose config cannot be built, or that asked for a GPU on a node without one, fails at
once: it reports the error as its one result and ends, so Tune does not retry a mistake that
would fail the same way every time. Other errors raise, and Tune retries the trial from its last
checkpoint up to `max_failures` times.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
import time
from typing import Any

import ray
import torch
from ray import tune

from ranker import storage
from ranker.config import ConfigError
from ranker.device import cap_gpu_memory, gpu_stats, release_gpu_memory
from ranker.model import ModelConfig
from ranker.train import Evaluation, TrainConfig, fit
from search.errors import SearchError
from search.rundir import Series, TrialCheckpoint, read_series, read_state
from search.spec import SearchSpec, trial_configs

CONFIG_ERROR = "config_error"  # the key of the one result a trial that cannot run reports


class InjectedFault(RuntimeError):
    """Raised by the fault hook (tests and chaos drills only)."""


class TrialCannotRun(RuntimeError):
    """A deterministic problem with a trial: retrying it would fail the same way."""


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


def trial_device(gpu: float) -> str:
    """The device of a trial that reserved `gpu` GPUs.

    Raises:
        TrialCannotRun: it reserved a GPU share but this process sees no CUDA device.
    """
    if gpu <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise TrialCannotRun(
            f"the trial reserved resources.gpu={gpu:g} but torch sees no CUDA device on node "
            f"{ray.util.get_node_ip_address()} (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Fix: install a "
            f"CUDA build of torch on the GPU nodes, or run with resources.gpu=0."
        )
    return "cuda"


def run_trial(config: dict[str, Any], data: dict[str, Any], job: dict[str, Any]) -> None:
    """Tune function trainable.

    Args:
        config: the trial's grid point (and replicate index).
        data: object refs of the `train` and `val` Panels.
        job: the resolved spec, the stage's base configs, the stage's name,
            `point_text` (config -> "key=value ..."), and an optional fault.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint
    spec: SearchSpec = job["spec"]
    try:
        base_model = ModelConfig.from_dict(job["base_model"])
        base_train = TrainConfig.from_dict(job["base_train"])
        mc, tc, point = trial_configs(spec, base_model, base_train, config)
        device = trial_device(spec.resources.gpu)
    except (ConfigError, TrialCannotRun) as e:
        tune.report({CONFIG_ERROR: f"{type(e).__name__}: {e}"})
        return
    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    if device == "cuda":
        cap_gpu_memory(spec.resources.gpu)

    train, val = ray.get([data["train"], data["val"]])  # zero-copy, read-only views
    trial_id = tune.get_context().get_trial_id()
    where = f"[liquid-search] {job['stage']} trial {trial_id} ({job['point_text'](config)})"

    resume = None
    best_series: Series | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = read_state(d)
            best_series = read_series(d)
    restored = 0 if resume is None else int(resume.get("restored", 0)) + 1
    node_id = ray.get_runtime_context().get_node_id()
    fault = job.get("fault")
    # One line as the trial starts and one as it ends, in this actor's log: with reused actors
    # one actor runs many trials, and its log (dashboard, Actors page) says which.
    _say(f"{where} started on {device}, node {node_id[:8]}, pid {os.getpid()}"
         + (f", resumed after epoch {resume['epoch']}" if resume else ""))  # fmt: skip

    def on_eval(ev: Evaluation) -> None:
        nonlocal best_series
        if ev.is_best and ev.daily is not None:
            best_series = Series.from_daily(ev.daily, val)
        metrics = {
            "epoch": ev.epoch,
            "train_loss": ev.train_loss,
            **ev.metrics,
            "best_epoch": ev.best_epoch,
            **{f"best_{k}": v for k, v in ev.best_metrics.items()},
            "train_seconds": ev.seconds,
            "restored": restored,
            "node_id": node_id,
            "device": device,
            # Read-only arrays are views of the object store's copy, not private copies.
            "data_zero_copy": not (train.emb.flags.writeable or val.emb.flags.writeable),
            **memory_mb(),
            **gpu_stats(device),
        }
        with tempfile.TemporaryDirectory() as d:
            state = ev.state()
            state["restored"] = restored
            TrialCheckpoint(state, best_series, point, mc.to_dict(), tc.to_dict()).write(d)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if fault and _fault_hits(fault, config, ev.epoch, resume is not None):
            if fault["mode"] == "hang":  # a trial stuck after a checkpoint, for kill drills
                storage.write_text(fault["marker"], json.dumps({"epoch": ev.epoch, **config}))
                time.sleep(24 * 3600)
            raise InjectedFault(
                f"injected fault at epoch {ev.epoch} of trial {config} ({fault['mode']})"
            )

    try:
        result = fit(mc, tc, train, val, on_eval=on_eval, resume=resume, device=device)
    except BaseException as e:
        _say(f"{where} ended with {type(e).__name__}: {e}")
        raise
    finally:
        release_gpu_memory(device)
    _say(f"{where} ended: best {tc.metric} {result.metrics[tc.metric]:.3f} at epoch "
         f"{result.best_epoch}, {result.seconds:.1f} s of training")  # fmt: skip


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _fault_hits(fault: dict[str, Any], config: dict[str, Any], epoch: int, resumed: bool) -> bool:
    """Whether the test/chaos fault hook fires for this trial at this evaluation."""
    if not all(config.get(k) == v for k, v in fault.get("point", {}).items()):
        return False
    at = fault.get("epoch", 1)
    if fault.get("mode", "once") == "always":
        return epoch >= at  # every attempt fails, resumed or not
    return epoch == at and not resumed  # once, hang: the first attempt only


def parse_fault(text: str | None) -> dict[str, Any] | None:
    """LIQUID_SEARCH_FAULT='{"stage": "architecture", "point": {...}, "epoch": 1, "mode": "once"}'.

    Modes: once (the first attempt raises at that epoch), always (every attempt raises from
    that epoch on), hang (the first attempt writes {"epoch": ...} to `marker`, a path or URI,
    and then sleeps, after its checkpoint of that epoch: a trial to kill mid-stage).

    Raises:
        SearchError: the text is not such an object.
    """
    if not text:
        return None
    try:
        fault = json.loads(text)
    except json.JSONDecodeError:
        fault = None
    ok = isinstance(fault, dict) and fault.get("mode", "once") in ("once", "always", "hang")
    if not ok or (fault["mode"] == "hang" and not fault.get("marker")):
        raise SearchError(
            f"LIQUID_SEARCH_FAULT={text!r}: not a JSON object with mode once|always|hang (hang "
            f"with a marker path). Fix: unset it (it is a test and chaos-drill hook)."
        )
    return fault

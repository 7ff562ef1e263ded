"""The Tune trainable: a thin shell around `ranker.train.fit`.

It builds the trial's configs from its grid point, reads the Panels zero-copy from the object
store, resumes from the trial's last checkpoint when Tune retries it, and turns every evaluation
into `tune.report(metrics, checkpoint=...)`. Each checkpoint holds the resumable training state
and the per-date validation series of the best evaluation so far.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import replace
from typing import Any

import numpy as np
import ray
import torch
from ray import tune

from ranker.model import ModelConfig
from ranker.train import Evaluation, TrainConfig, fit
from search.spec import SearchSpec, resolve_point

STATE_FILE = "state.pt"
SERIES_FILE = "daily.npz"
POINT_FILE = "point.json"
REPLICATE = "replicate"
REPLICATE_SEED_STRIDE = 1000


class InjectedFault(RuntimeError):
    """Raised by the fault hook (tests and chaos drills only)."""


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


def trial_configs(
    spec: SearchSpec, base_model: ModelConfig, base_train: TrainConfig, config: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """The trial's (model, train) configs and its grid point; replicates shift the seed."""
    point = {k: v for k, v in config.items() if k != REPLICATE}
    mc, tc = resolve_point(spec, base_model, base_train, point)
    rep = int(config.get(REPLICATE, 0))
    if rep:
        tc = replace(tc, seed=tc.seed + REPLICATE_SEED_STRIDE * rep)
    return mc, tc, point


def run_trial(config: dict[str, Any], data: dict[str, Any], job: dict[str, Any]) -> None:
    """Tune function trainable.

    Args:
        config: the trial's grid point (and replicate index).
        data: object refs of the `train` and `val` Panels.
        job: the resolved spec, the stage's base configs, resources and an optional fault.
    """
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # no line per checkpoint
    spec: SearchSpec = job["spec"]
    base_model = ModelConfig.from_dict(job["base_model"])
    base_train = TrainConfig.from_dict(job["base_train"])
    mc, tc, point = trial_configs(spec, base_model, base_train, config)

    torch.set_num_threads(max(1, int(spec.resources.cpu)))
    device = "cpu"
    if spec.resources.gpu > 0 and torch.cuda.is_available():
        device = "cuda"
        if spec.resources.gpu < 1:
            torch.cuda.set_per_process_memory_fraction(spec.resources.gpu)

    train, val = ray.get([data["train"], data["val"]])  # zero-copy, read-only views

    resume = None
    best_series: dict[str, np.ndarray] | None = None
    checkpoint = tune.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as d:
            resume = torch.load(os.path.join(d, STATE_FILE), map_location="cpu", weights_only=True)
            series_path = os.path.join(d, SERIES_FILE)
            if os.path.exists(series_path):
                with np.load(series_path) as z:
                    best_series = {k: z[k] for k in z.files}
    restored = 0 if resume is None else int(resume.get("restored", 0)) + 1
    node_id = ray.get_runtime_context().get_node_id()
    fault = job.get("fault")

    def on_eval(ev: Evaluation) -> None:
        nonlocal best_series
        if ev.is_best and ev.daily is not None:
            d = ev.daily
            best_series = {
                "date_idx": d.date_idx, "ic": d.ic, "long": d.long, "short": d.short, "ls": d.ls,
                "long_symbols": val.symbol_ids[d.long_rows],
                "short_symbols": val.symbol_ids[d.short_rows],
            }  # fmt: skip
        metrics = {
            "epoch": ev.epoch,
            "train_loss": ev.train_loss,
            **ev.metrics,
            "best_epoch": ev.best_epoch,
            **{f"best_{k}": v for k, v in ev.best_metrics.items()},
            "train_seconds": ev.seconds,
            "restored": restored,
            "node_id": node_id,
            # Read-only arrays are views of the object store's copy, not private copies.
            "data_zero_copy": not (train.emb.flags.writeable or val.emb.flags.writeable),
            **memory_mb(),
        }
        with tempfile.TemporaryDirectory() as d:
            state = ev.state()
            state["restored"] = restored
            torch.save(state, os.path.join(d, STATE_FILE))
            if best_series is not None:
                np.savez(os.path.join(d, SERIES_FILE), **best_series)
            with open(os.path.join(d, POINT_FILE), "w") as f:
                json.dump({"point": point, "model": mc.to_dict(), "train": tc.to_dict()}, f)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(d))
        if fault and _fault_hits(fault, config, ev.epoch, resume is not None):
            raise InjectedFault(
                f"injected fault at epoch {ev.epoch} of trial {config} ({fault['mode']})"
            )

    fit(mc, tc, train, val, on_eval=on_eval, resume=resume, device=device)


def _fault_hits(fault: dict[str, Any], config: dict[str, Any], epoch: int, resumed: bool) -> bool:
    """Whether the test/chaos fault hook fires for this trial at this evaluation."""
    if not all(config.get(k) == v for k, v in fault.get("point", {}).items()):
        return False
    at = fault.get("epoch", 1)
    if fault.get("mode", "once") == "always":
        return epoch >= at  # every attempt fails, resumed or not
    return epoch == at and not resumed


def parse_fault(text: str | None) -> dict[str, Any] | None:
    """LIQUID_SEARCH_FAULT='{"stage": "architecture", "point": {...}, "epoch": 1, "mode": "once"}'."""
    if not text:
        return None
    fault = json.loads(text)
    if not isinstance(fault, dict) or fault.get("mode", "once") not in ("once", "always"):
        raise ValueError(
            f"LIQUID_SEARCH_FAULT={text!r}: expected a JSON object with mode once|always"
        )
    return fault

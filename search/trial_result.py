"""What a trial reports to Tune at each evaluation, typed: the one place its keys are spelled.

The trainable builds a `TrialResult` and reports `to_report()`; the driver's callbacks, the
stage's rows (`stages.collect`), live status (`stages.live_trials`) and the telemetry read it
back with `TrialResult.from_report`. The report is flat, as Tune wants it (its TensorBoard and
progress files show each key): this evaluation's metrics under their own names, the best
evaluation's under `best_<name>`. A trial that cannot run reports one key, `config_error`,
instead (`error_report`, `config_error`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from ranker.train import METRICS

CONFIG_ERROR = "config_error"
_BEST = "best_"


@dataclass(frozen=True)
class TrialResult:
    """One evaluation of a trial, and its best evaluation so far."""

    epoch: int  # epochs completed
    train_loss: float  # mean training loss of the last epoch
    metrics: dict[str, float]  # this evaluation's val metrics (`ranker.train.METRICS`)
    best_epoch: int
    best_metrics: dict[str, float]  # the val metrics of the best evaluation so far
    train_seconds: float
    restored: int  # how many times the trial was resumed from a checkpoint
    node_id: str
    device: str
    data_zero_copy: bool  # the Panels are read-only views of the object store's copy
    mem_rss_mb: float = math.nan
    mem_private_mb: float = math.nan
    gpu: str = ""  # the GPU's name ('' on the CPU)
    gpu_peak_mb: float = math.nan

    def to_report(self) -> dict[str, Any]:
        """The flat dict for `tune.report`."""
        out: dict[str, Any] = {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            **{k: self.metrics[k] for k in METRICS},
            "best_epoch": self.best_epoch,
            **{_BEST + k: self.best_metrics[k] for k in METRICS},
            "train_seconds": self.train_seconds,
            "restored": self.restored,
            "node_id": self.node_id,
            "device": self.device,
            "data_zero_copy": self.data_zero_copy,
            "mem_rss_mb": self.mem_rss_mb,
            "mem_private_mb": self.mem_private_mb,
        }
        if self.gpu:
            out |= {"gpu": self.gpu, "gpu_peak_mb": self.gpu_peak_mb}
        return out

    @classmethod
    def from_report(cls, r: dict[str, Any] | None) -> TrialResult | None:
        """A reported result (as Tune hands it back, with its own keys beside ours); None when
        the trial reported no evaluation (it could not run, or has not evaluated yet)."""
        if not r or _missing(r.get("epoch")) or not _missing(r.get(CONFIG_ERROR)):
            return None

        def num(key: str) -> float:
            v = r.get(key)
            return math.nan if _missing(v) else float(v)

        def text(key: str) -> str:
            v = r.get(key)
            return "" if _missing(v) else str(v)

        return cls(
            epoch=int(r["epoch"]),
            train_loss=num("train_loss"),
            metrics={k: num(k) for k in METRICS},
            best_epoch=0 if _missing(r.get("best_epoch")) else int(r["best_epoch"]),
            best_metrics={k: num(_BEST + k) for k in METRICS},
            train_seconds=num("train_seconds"),
            restored=0 if _missing(r.get("restored")) else int(r["restored"]),
            node_id=text("node_id"),
            device=text("device"),
            data_zero_copy=not _missing(r.get("data_zero_copy")) and bool(r["data_zero_copy"]),
            mem_rss_mb=num("mem_rss_mb"),
            mem_private_mb=num("mem_private_mb"),
            gpu=text("gpu"),
            gpu_peak_mb=num("gpu_peak_mb"),
        )


def _missing(v: Any) -> bool:
    """No value: absent, None, or NaN (a key another trial reported, in a pandas frame)."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def error_report(error: str) -> dict[str, str]:
    """The one report of a trial that cannot run (a config or device error)."""
    return {CONFIG_ERROR: error}


def config_error(r: dict[str, Any] | None) -> str:
    """The error a trial that could not run reported ('' for any other result)."""
    v = (r or {}).get(CONFIG_ERROR)
    return "" if _missing(v) else str(v)

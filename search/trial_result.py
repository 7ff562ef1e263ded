"""A trial, typed: what it reports to Tune at each evaluation (`TrialResult`), and the one
record of a trial everyone reads (`TrialRow`: a result plus who the trial is and how it stands).

The trainable builds a `TrialResult` and reports `to_report()`; the driver's callbacks, the
stage's rows (`stages.collect`), live status (`search.live`) and the telemetry read it back with
`TrialResult.from_report`. The report is flat, as Tune wants it (its TensorBoard and progress
files show each key): this evaluation's metrics under their own names, the best evaluation's
under `best_<name>`. A trial that cannot run reports one key, `config_error`, instead
(`error_report`, `config_error`). A finished stage's results.csv holds the same flat columns
(`TrialResult.columns`), so adding a field here adds its column.
"""

from __future__ import annotations

import math
import typing
from dataclasses import dataclass, fields
from typing import Any

from ranker.train import METRICS, Evaluation

CONFIG_ERROR = "config_error"
_BEST = "best_"

# A trial's status (Tune's own names): finished, failed, or, while a stage runs, pending/running;
# STOPPED: cut at a rung by successive halving (`search.halving`), its best evaluation kept.
FINISHED = "TERMINATED"
STOPPED = "STOPPED"
ERROR = "ERROR"
RUNNING = "RUNNING"
PENDING = "PENDING"


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

    @classmethod
    def of_evaluation(cls, ev: Evaluation, **where: Any) -> TrialResult:
        """The result of an evaluation (`ranker.train.Evaluation`); `where` sets the fields that
        say where it ran (node_id, device, data_zero_copy, memory, gpu)."""
        base = {"node_id": "", "device": "", "data_zero_copy": False} | where
        return cls(epoch=ev.epoch, train_loss=ev.train_loss, metrics=ev.metrics,
                   best_epoch=ev.best_epoch, best_metrics=ev.best_metrics,
                   train_seconds=ev.seconds, restored=ev.restored, **base)  # fmt: skip

    @staticmethod
    def columns() -> list[str]:
        """The flat keys of a result, in order: the report's keys and results.csv's columns."""
        out = []
        for f in fields(TrialResult):
            if f.name == "metrics":
                out += list(METRICS)
            elif f.name == "best_metrics":
                out += [_BEST + m for m in METRICS]
            else:
                out.append(f.name)
        return out

    def flat(self) -> dict[str, Any]:
        """Every field under its flat key (`columns`)."""
        out: dict[str, Any] = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "metrics":
                out |= {m: v[m] for m in METRICS}
            elif f.name == "best_metrics":
                out |= {_BEST + m: v[m] for m in METRICS}
            else:
                out[f.name] = v
        return out

    def to_report(self) -> dict[str, Any]:
        """The flat dict for `tune.report` (the GPU's keys only on a GPU)."""
        out = self.flat()
        if not self.gpu:
            del out["gpu"], out["gpu_peak_mb"]
        return out

    @classmethod
    def from_report(cls, r: dict[str, Any] | None) -> TrialResult | None:
        """A reported result (as Tune hands it back, with its own keys beside ours, or a row of
        results.csv as text); None when the trial reported no evaluation (it could not run, or
        has not evaluated yet)."""
        if not r or _missing(r.get("epoch")) or not _missing(r.get(CONFIG_ERROR)):
            return None
        hints = _hints()
        kw: dict[str, Any] = {}
        for f in fields(cls):
            if f.name == "metrics":
                kw[f.name] = {m: _parse(float, r.get(m)) for m in METRICS}
            elif f.name == "best_metrics":
                kw[f.name] = {m: _parse(float, r.get(_BEST + m)) for m in METRICS}
            else:
                kw[f.name] = _parse(hints[f.name], r.get(f.name))
        return cls(**kw)


_TYPES: dict[str, type] = {}


def _hints() -> dict[str, type]:
    if not _TYPES:
        _TYPES.update(typing.get_type_hints(TrialResult))
    return _TYPES


def _parse(tp: type, v: Any) -> Any:
    """A reported value (a number, or its text in results.csv) as `tp`; a missing one as NaN,
    0, '' or False."""
    if _missing(v):
        return {float: math.nan, int: 0, str: "", bool: False}[tp]
    if tp is bool:
        return v == "True" if isinstance(v, str) else bool(v)
    if tp is int:
        return int(float(v)) if isinstance(v, str) else int(v)
    return tp(v)


def _missing(v: Any) -> bool:
    """No value: absent, None, NaN (a key another trial reported, in a pandas frame) or ''
    (an empty cell of results.csv)."""
    return v is None or v == "" or (isinstance(v, float) and math.isnan(v))


def error_report(error: str) -> dict[str, str]:
    """The one report of a trial that cannot run (a config or device error)."""
    return {CONFIG_ERROR: error}


def error_line(text: str) -> str:
    """The last line of an error (a traceback ends with the exception), at most 300 chars."""
    lines = [ln for ln in str(text).strip().splitlines() if ln.strip()]
    return lines[-1][:300] if lines else ""


def config_error(r: dict[str, Any] | None) -> str:
    """The error a trial that could not run reported ('' for any other result)."""
    v = (r or {}).get(CONFIG_ERROR)
    return "" if _missing(v) else str(v)


@dataclass(frozen=True)
class TrialRow:
    """One trial of a stage, finished or in flight: who it is (its id, grid point, replicate and
    training seed), how it stands (Tune's status, an error), its last result (None when it never
    evaluated), and its latest checkpoint relative to the run directory ('' when none)."""

    trial_id: str
    point: dict[str, float]
    replicate: int
    seed: int
    status: str
    error: str = ""
    result: TrialResult | None = None
    checkpoint: str = ""

    @property
    def epoch(self) -> int:
        """Epochs completed."""
        return self.result.epoch if self.result is not None else 0

    @property
    def best_epoch(self) -> int:
        return self.result.best_epoch if self.result is not None else 0

    @property
    def best_metrics(self) -> dict[str, float]:
        """The val metrics of the trial's best evaluation (NaN before its first)."""
        if self.result is None:
            return dict.fromkeys(METRICS, math.nan)
        return self.result.best_metrics

    def finished(self, metric: str) -> bool:
        """Ended normally (all its epochs, or cut at a rung) with a value of `metric` to select
        on."""
        return self.status in (FINISHED, STOPPED) and math.isfinite(
            self.best_metrics.get(metric, math.nan)
        )

    def matches(self, point: dict[str, Any]) -> bool:
        return all(float(self.point[k]) == float(v) for k, v in point.items())

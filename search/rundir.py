"""The run directory: every file of a run, its name and its format, in one place.

docs/run-directory.md lists the files for users (tests/test_layers.py checks it names every one
defined here); here each has its name constant and its typed record: the spec (`SearchSpec`),
run.json (`RunInfo`), a stage's results.csv (`TrialRow`) and best.json (`Best`), a trial's
checkpoint (`TrialCheckpoint`: `ranker.train.TrainState`, a `Series`, its point and configs),
the final model's and baseline's per-date series (`Series`), summary.json and analysis.json.

The directory is a local path or a URI (s3://, gs://); every write is atomic (`ranker.storage`).
A stage rerun never moves a directory (object stores cannot): it runs in a new attempt
directory, `<stage>.v2`, and stages.json points at it; the old attempt stays as it was.
`RunDir.load()` reads the small files once into a `Run`; the per-trial checkpoint files are read
on demand, each once.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import pickle
import time
import zipfile
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import pyarrow.fs as pafs
import torch
import yaml

from ranker import storage
from ranker.data import DataInfo, Dataset
from ranker.metrics import Daily
from ranker.panel import Panel
from ranker.train import METRICS, TrainState
from search.errors import RunDirError
from search.results import (
    Analysis,
    Significance,
    Summary,
    WalkForward,
    decode,
    encode,
    read_summary_doc,
)
from search.spec import REPLICATE, SearchSpec, StageSpec, from_dict
from search.trial_result import ERROR, FINISHED, STOPPED, TrialResult, TrialRow

log = logging.getLogger("liquid_search")

SPEC_FILE = "spec.yaml"
RUN_FILE = "run.json"
STAGES_FILE = "stages.json"
RESULTS_FILE = "results.csv"
BEST_FILE = "best.json"
FINAL_DIR = "final"
MODEL_FILE = "model.pt"
UNIVERSES_FILE = "universes_daily.npz"  # each universe rule's liquid set over time
SUMMARY_FILE = "summary.json"
ANALYSIS_FILE = "analysis.json"
LEASE_FILE = "lease.json"  # who drives the run (`search.lease`)
FOLD_PREFIX = "fold_"  # a walk-forward fold's run directory: fold_1, fold_2, ...
FOLD_FILE = "fold.json"  # in a fold's run directory: which fold, and its dates
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
REPORT_DIR = "report"
# Inside each trial checkpoint (a directory Tune stores and hands back):
STATE_FILE = "state.pt"  # the resumable training state (`ranker.train.TrainState`)
SERIES_FILE = "daily.npz"  # the per-date val series of the trial's best evaluation so far
POINT_FILE = "point.json"  # the grid point and the configs it resolved to


# ---------------------------------------------------------------- JSON


def _plain(o: Any) -> Any:
    """NaN/inf -> None and numpy -> Python, recursively: every JSON file here is strict JSON."""
    if isinstance(o, dict):
        return {str(k): _plain(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_plain(v) for v in o]
    if isinstance(o, np.ndarray):
        return _plain(o.tolist())
    if isinstance(o, np.generic):
        o = o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    return o


def dumps(obj: Any) -> str:
    return json.dumps(_plain(obj), indent=2, allow_nan=False)


def _nan(v: Any) -> float:
    """A number read back from JSON (None stands for NaN)."""
    return math.nan if v is None else float(v)


# ---------------------------------------------------------------- the typed records


@dataclass(frozen=True)
class RunInfo:
    """RUN_DIR/run.json: where the data came from and what the load found."""

    source: str
    data: DataInfo
    columns: dict[str, list[str]]
    precision: str | None = None  # train.precision as the run resolved it (fp32 or bf16)
    mlflow_run: str | None = None  # the search's MLflow run (tracking.mlflow), if tracked
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S"))
    # Set when the driver stops: "complete", "stopped after <stage>", "interrupted" or
    # "failed: <the error>". None while it runs, or if it was killed without a chance to say.
    ended: str | None = None
    outcome: str | None = None

    # The facts of a load that must match for data to be "the run's data".
    SAME_DATA = ("rows", "symbols", "liquid_rows", "liquid_symbols", "train_rows", "val_rows",
                 "test_rows", "train_dates", "val_dates", "test_dates")  # fmt: skip

    def check_same_data(self, ds: Dataset, source: str, run_path: str) -> None:
        """Refuse data that is not the data the run was started on: its feature columns, rows,
        universe and splits must be those recorded here (a copy of the data elsewhere passes).

        Raises:
            RunDirError: naming what differs and the fix.
        """
        diffs = []
        if self.columns != ds.columns.to_dict():
            mine = {k: len(v) for k, v in self.columns.items()}
            theirs = {k: len(v) for k, v in ds.columns.to_dict().items()}
            diffs.append(f"feature columns {theirs} vs the run's {mine}")
        recorded, loaded = self.data, ds.info
        diffs += [f"{k} {getattr(loaded, k)!r} vs the run's {getattr(recorded, k)!r}"
                  for k in self.SAME_DATA if getattr(recorded, k) is not None
                  and getattr(loaded, k) != getattr(recorded, k)]  # fmt: skip
        if diffs:
            raise RunDirError(
                f"{source} is not the data {run_path} was started on ({self.source}): "
                f"{'; '.join(diffs[:3])}. Fix: leave --data out to use the run's data, or pass a "
                f"copy of it."
            )


# results.csv: the trial's identity and standing, then its last result's flat columns.
_ID_COLUMNS = ("trial_id", "replicate", "seed", "status", "error")
# The columns of results.csv before its rows were built on `TrialResult` (read, not written):
# `epochs` for `epoch`, the best evaluation's metrics under their plain names, no train_loss.
_V1_TAIL = ("epochs", "best_epoch", *METRICS, "train_seconds", "restored", "node_id", "device",
            "gpu", "gpu_peak_mb", "data_zero_copy", "mem_private_mb", "mem_rss_mb", "checkpoint")  # fmt: skip


def _row_columns(keys: list[str]) -> list[str]:
    return ["trial_id", *keys, *_ID_COLUMNS[1:], *TrialResult.columns(), "checkpoint"]


def _v1_columns(keys: list[str]) -> list[str]:
    return ["trial_id", *keys, *_ID_COLUMNS[1:], *_V1_TAIL]


def _from_v1(d: dict[str, str]) -> dict[str, str]:
    """A version-1 results.csv row under this version's column names."""
    out = dict(d)
    out["epoch"] = out.pop("epochs")
    for m in METRICS:
        out["best_" + m] = out.pop(m)
    if out["status"] == ERROR and out["epoch"] == "0":
        out["epoch"] = ""  # it never evaluated: no result
    return out


def rows_to_csv(rows: list[TrialRow], keys: list[str]) -> str:
    """results.csv: one column per grid key, the trial's standing, its last result's columns."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_row_columns(keys), lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = r.result.flat() if r.result is not None else {}
        w.writerow({**{k: getattr(r, k) for k in _ID_COLUMNS}, **{k: r.point[k] for k in keys},
                    **flat, "checkpoint": r.checkpoint})  # fmt: skip
    return buf.getvalue()


def rows_from_csv(text: str, keys: list[str], where: str) -> list[TrialRow]:
    """The typed rows of a results.csv written by `rows_to_csv` (or by a version before it) for
    a stage with grid `keys`."""
    reader = csv.DictReader(io.StringIO(text))
    want = _row_columns(keys)
    legacy = reader.fieldnames == _v1_columns(keys)
    if reader.fieldnames != want and not legacy:
        raise RunDirError(
            f"{where}: columns {reader.fieldnames} are not the ones this version writes ({want}). "
            f"Fix: rerun the stage with `liquid-search stage NAME --run RUN_DIR`."
        )
    out = []
    for d in reader:
        if legacy:
            d = _from_v1(d)
        out.append(
            TrialRow(
                trial_id=d["trial_id"],
                point={k: float(d[k]) for k in keys},
                replicate=int(d["replicate"]),
                seed=int(d["seed"]),
                status=d["status"],
                error=d["error"],
                result=TrialResult.from_report(d),
                checkpoint=d["checkpoint"],
            )
        )
    return out


@dataclass(frozen=True)
class Best:
    """RUN_DIR/<stage>/best.json: the selected grid point of a stage and its resolved configs."""

    stage: str
    metric: str
    value: float
    replicate_values: list[float]
    replicate_std: float  # sample std (ddof=1) over replicates; NaN for one
    combine: str  # how replicates combined into `value` (`StageSpec.combine`)
    point: dict[str, float]
    model: dict[str, Any]
    train: dict[str, Any]
    trials: int
    errors: int
    wall_seconds: float
    # The tied set and the SPA test of the stage (None in best.json files written before them).
    significance: Significance | None = None

    def to_json(self) -> str:
        return dumps(encode(self))

    @classmethod
    def from_json(cls, text: str) -> Best:
        d = json.loads(text)
        if "select" in d:  # best.json before `combine` had its name
            d["combine"] = d.pop("select")
        return decode(cls, d)


@dataclass(frozen=True, eq=False)
class Series:
    """The per-date series of one model on one split: the one format for trials (their best
    evaluation on val) and for the final model and baseline (val and test).

    Attributes:
        date: (n,) datetime64[D] the dates with enough names for the metrics.
        ic, long, short, ls: (n,) float64 daily IC and book returns (as `ranker.metrics.Daily`).
        long_symbols, short_symbols: (n, k) int32 symbol ids held in each book (indices into
            the run's symbols).
    """

    date: np.ndarray
    ic: np.ndarray
    long: np.ndarray
    short: np.ndarray
    ls: np.ndarray
    long_symbols: np.ndarray
    short_symbols: np.ndarray

    @classmethod
    def from_daily(cls, d: Daily, panel: Panel) -> Series:
        return cls(
            date=panel.dates[d.date_idx].astype("datetime64[D]"),
            ic=d.ic, long=d.long, short=d.short, ls=d.ls,
            long_symbols=panel.symbol_ids[d.long_rows].astype(np.int32),
            short_symbols=panel.symbol_ids[d.short_rows].astype(np.int32),
        )  # fmt: skip

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        arrays = {f.name: getattr(self, f.name) for f in fields(self)}
        arrays["date"] = self.date.astype("datetime64[D]").astype(np.int64)  # days since 1970
        np.savez(buf, **arrays)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Series:
        with np.load(io.BytesIO(data)) as z:
            arrays = {f.name: z[f.name] for f in fields(cls)}
        arrays["date"] = arrays["date"].astype("datetime64[D]")
        return cls(**arrays)


@dataclass(frozen=True)
class TrialCheckpoint:
    """What a trial saves with every evaluation, in the directory Tune stores for it."""

    state: TrainState
    series: Series | None  # the val series of the best evaluation so far
    point: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    replicate: int = 0

    def write(self, directory: str) -> None:
        """Into a local directory (Tune uploads it)."""
        state = self.state.to_dict()
        storage.write_with(storage.join(directory, STATE_FILE), lambda f: torch.save(state, f))
        if self.series is not None:
            storage.write_bytes(storage.join(directory, SERIES_FILE), self.series.to_bytes())
        doc = {"point": self.point, "replicate": self.replicate, "model": self.model,
               "train": self.train}  # fmt: skip
        storage.write_text(storage.join(directory, POINT_FILE), dumps(doc))


def read_state(directory: str) -> TrainState:
    """The training state in a trial checkpoint directory (local path or URI)."""
    data = storage.read_bytes(storage.join(directory, STATE_FILE))
    return TrainState.from_dict(torch.load(io.BytesIO(data), map_location="cpu", weights_only=True))


def read_series(directory: str) -> Series | None:
    """The val series in a trial checkpoint directory, or None if it has none."""
    path = storage.join(directory, SERIES_FILE)
    return Series.from_bytes(storage.read_bytes(path)) if storage.exists(path) else None


# What reading a checkpoint that is not whole raises: a file cut short (torch's zip reader,
# numpy's, the JSON parser) or missing.
_CUT_SHORT = (RuntimeError, EOFError, ValueError, KeyError, OSError, zipfile.BadZipFile,
              pickle.UnpicklingError)  # fmt: skip


def _whole(fs: pafs.FileSystem, path: str) -> tuple[TrainState, Series, dict[str, Any]] | None:
    """A checkpoint directory's state, series and point document, when all three read whole."""
    try:
        got = {}
        for name in (STATE_FILE, SERIES_FILE, POINT_FILE):
            with fs.open_input_stream(f"{path.rstrip('/')}/{name}") as f:
                got[name] = f.read()
        state = TrainState.from_dict(
            torch.load(io.BytesIO(got[STATE_FILE]), map_location="cpu", weights_only=True)
        )
        return state, Series.from_bytes(got[SERIES_FILE]), json.loads(got[POINT_FILE])
    except _CUT_SHORT:
        return None


def _checkpoint_dirs(fs: pafs.FileSystem, trial_dir: str) -> list[str]:
    """A trial directory's checkpoint directories, newest first. (Tune names them
    checkpoint_000000, checkpoint_000001, ...: this is the one place that knows it.)"""
    infos = fs.get_file_info(pafs.FileSelector(trial_dir, allow_not_found=True))
    names = [i.path for i in infos
             if i.type == pafs.FileType.Directory and i.base_name.startswith("checkpoint_")]  # fmt: skip
    return sorted(names, reverse=True)


def read_checkpoint(path: str, fs: pafs.FileSystem) -> tuple[TrainState | None, Series | None]:
    """The training state and val series of the checkpoint at `path` on `fs`; when it is not
    whole (its upload cut short by a storage fault), of the newest whole one before it in the
    same trial directory; (None, None) when there is none (the trial starts afresh)."""
    trial_dir = path.rstrip("/").rsplit("/", 1)[0]
    for p in [path, *(d for d in _checkpoint_dirs(fs, trial_dir) if d < path.rstrip("/"))]:
        got = _whole(fs, p)
        if got is not None:
            if p != path:
                log.warning(f"checkpoint {path} is not whole; continuing from {p}")
            return got[0], got[1]
    return None, None


def trial_key(config: dict[str, Any]) -> str:
    """A trial's grid point and replicate as one key (a trial's config, or a checkpoint's
    point plus its replicate)."""
    point = {k: float(v) for k, v in config.items() if k != REPLICATE}
    return json.dumps([sorted(point.items()), int(config.get(REPLICATE, 0))])


def latest_checkpoints(stage_dir: str) -> dict[str, tuple[str, int]]:
    """Every trial's newest whole checkpoint in a stage's attempt directory, by `trial_key`:
    (its URI, the epochs it had trained). What rebuilds a stage whose Tune experiment state
    cannot be read: each trial continues from its own last checkpoint, as after Ctrl-C."""
    fs, root = storage.filesystem(stage_dir)
    out: dict[str, tuple[str, int]] = {}
    for trial in fs.get_file_info(pafs.FileSelector(root, allow_not_found=True)):
        if trial.type != pafs.FileType.Directory:
            continue
        for ck in _checkpoint_dirs(fs, trial.path):
            got = _whole(fs, ck)
            if got is None:
                continue
            state, _, doc = got
            key = trial_key({**doc["point"], REPLICATE: doc.get("replicate", 0)})
            epoch = state.progress.epoch
            if key not in out or epoch > out[key][1]:
                out[key] = (storage.join(stage_dir, trial.base_name, ck.rsplit("/", 1)[-1]), epoch)
            break
    return out


# ---------------------------------------------------------------- a loaded run


@dataclass
class StageRecord:
    """One stage of a run as loaded: its spec, attempt directory, rows and best (None until the
    stage has finished)."""

    spec: StageSpec
    dir: str  # relative to the run directory
    rows: list[TrialRow] | None
    best: Best | None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def done(self) -> bool:
        return self.rows is not None and self.best is not None


@dataclass
class Run:
    """A run directory's files, read once. Trial checkpoint files load on demand, once each."""

    dir: RunDir
    spec: SearchSpec
    info: RunInfo | None
    stages: list[StageRecord]
    summary: Summary | WalkForward | None
    analysis: Analysis | None
    fold: dict[str, Any] | None = None  # a walk-forward fold's directory: its fold.json
    _series: dict[tuple[str, str], Series | None] = field(default_factory=dict, repr=False)

    @property
    def path(self) -> str:
        return self.dir.path

    @property
    def walk_forward(self) -> bool:
        """A walk-forward run's own directory (its folds in fold_<i>), not a fold's."""
        return self.spec.walk_forward.on and self.fold is None

    def stage(self, name: str) -> StageRecord:
        for s in self.stages:
            if s.name == name:
                return s
        raise RunDirError(
            f"{self.path}: no stage {name!r}; its stages are {[s.name for s in self.stages]}"
        )

    @property
    def finished(self) -> list[StageRecord]:
        """The finished stages, in order, up to the first unfinished one."""
        out = []
        for s in self.stages:
            if not s.done:
                break
            out.append(s)
        return out

    def trial_series(self, stage: str, start: bool = False) -> dict[str, Series]:
        """The val series of each finished trial's best evaluation, by trial id: the trials of
        the stage's grid (trials with no series left out). A starting point trained beside the
        grid as the SPA test's benchmark is no candidate, so PBO and DSR leave it out; with
        `start`, its trials are included (the `spa` rule can keep it as the stage's choice)."""
        st = self.stage(stage)
        out = {}
        for r in st.rows or []:
            if (
                r.status not in (FINISHED, STOPPED)
                or not r.checkpoint
                or not (start or st.spec.contains(r.point))
            ):
                continue
            key = (stage, r.trial_id)
            if key not in self._series:
                self._series[key] = read_series(self.dir.resolve(r.checkpoint))
            s = self._series[key]
            if s is not None:
                out[r.trial_id] = s
        return out

    def trial_state(self, row: TrialRow) -> TrainState:
        """The training state in a trial's latest checkpoint.

        Raises:
            RunDirError: the trial has no checkpoint (it never finished an evaluation).
        """
        if not row.checkpoint:
            raise RunDirError(
                f"{self.path}: trial {row.trial_id} has no checkpoint; it never finished an "
                f"evaluation"
            )
        return read_state(self.dir.resolve(row.checkpoint))

    def final_series(self, model: str, split: str) -> Series | None:
        return self.dir.read_final_series(model, split)


# ---------------------------------------------------------------- the directory


class RunDir:
    """A run directory: names its files, writes them atomically and reads them back typed.

    A walk-forward run holds one run directory per fold (`fold`): RUN_DIR/fold_<i>, with every
    file of a run, and its `fold` index (0 for a run's own directory) and `name` (the run's
    name, and the fold's: "name/fold_2") for labels."""

    def __init__(self, path: str, *, fold: int = 0, name: str | None = None) -> None:
        self.path = storage.absolute(path)
        self.fold_index = fold
        self.name = name or os.path.basename(self.path.rstrip("/"))

    def __repr__(self) -> str:
        return f"RunDir({self.path!r})"

    def fold(self, i: int) -> RunDir:
        """The run directory of walk-forward fold `i` (1-based)."""
        return RunDir(self.file(f"{FOLD_PREFIX}{i}"), fold=i, name=f"{self.name}/{FOLD_PREFIX}{i}")

    def file(self, *parts: str) -> str:
        return storage.join(self.path, *parts)

    def resolve(self, rel: str) -> str:
        """A path recorded relative to the run directory (absolute ones pass through)."""
        return rel if storage.is_uri(rel) or rel.startswith("/") else self.file(rel)

    def relative(self, fs_path: str) -> str:
        """A path on the run directory's filesystem (as Tune reports checkpoints: no scheme),
        relative to the run directory when it is inside it."""
        _, root = storage.filesystem(self.path)
        root = root.rstrip("/") + "/"
        return fs_path[len(root) :] if fs_path.startswith(root) else fs_path

    # -- spec and info

    def is_run(self) -> bool:
        return storage.exists(self.file(SPEC_FILE))

    def require(self) -> None:
        """Raises RunDirError unless this is a run directory (StorageError when its storage
        cannot be reached)."""
        if storage.is_uri(self.path) or os.path.exists(self.path):
            storage.check_dir(self.path, what="run directory")
        if self.is_run():
            return
        what = "does not exist" if not storage.exists(self.path) else f"holds no {SPEC_FILE}"
        raise RunDirError(
            f"{self.path} {what}, so it is not a run directory. Fix: pass a directory made by "
            f"`liquid-search run` (under its --storage, default ./runs)."
        )

    def write_spec(self, spec: SearchSpec) -> None:
        storage.write_text(self.file(SPEC_FILE), yaml.safe_dump(spec.to_dict(), sort_keys=False))

    def read_spec(self) -> SearchSpec:
        """The resolved spec the run was started with.

        Raises:
            RunDirError: not a run directory.
            SpecError: the spec no longer loads (written by another version).
        """
        self.require()
        path = self.file(SPEC_FILE)
        return from_dict(yaml.safe_load(storage.read_text(path)), path, grid=False)

    def write_info(self, info: RunInfo) -> None:
        info_dict = {**asdict(info), "data": info.data.to_dict()}
        storage.write_text(self.file(RUN_FILE), dumps(info_dict))

    def mark_ended(self, outcome: str) -> None:
        """Record in run.json that the driver stopped, and how (nothing when there is none)."""
        info = self.read_info()
        if info is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.write_info(replace(info, ended=stamp, outcome=outcome))

    def read_info(self) -> RunInfo | None:
        path = self.file(RUN_FILE)
        if not storage.exists(path):
            return None
        d = json.loads(storage.read_text(path))
        return RunInfo(**{**d, "data": DataInfo.from_dict(d["data"])})

    # -- stages

    def _attempts(self) -> dict[str, str]:
        path = self.file(STAGES_FILE)
        return json.loads(storage.read_text(path)) if storage.exists(path) else {}

    def stage_dir(self, stage: str) -> str:
        """The directory name (relative) of the stage's latest attempt."""
        return self._attempts().get(stage, stage)

    def stage_path(self, stage: str) -> str:
        return self.file(self.stage_dir(stage))

    def new_attempt(self, stage: str) -> str:
        """Start a fresh attempt of `stage` in a new directory (the old one is kept as it is);
        returns its name. Nothing is moved, so this works on object stores."""
        attempts = self._attempts()
        n = 2
        while storage.exists(self.file(f"{stage}.v{n}")) or f"{stage}.v{n}" in attempts.values():
            n += 1
        name = f"{stage}.v{n}" if storage.exists(self.stage_path(stage)) else stage
        attempts[stage] = name
        storage.write_text(self.file(STAGES_FILE), dumps(attempts))
        return name

    def start_checkpoint(self, stage: str, replicate: int) -> str:
        """Where a stage's starting point, trained beside its grid as the SPA test's benchmark,
        keeps its checkpoint (one per replicate)."""
        return storage.join(self.stage_path(stage), f"start_r{replicate}", "checkpoint")

    def write_rows(self, stage: StageSpec, rows: list[TrialRow]) -> None:
        path = storage.join(self.stage_path(stage.name), RESULTS_FILE)
        storage.write_text(path, rows_to_csv(rows, list(stage.grid)))

    def write_stage(self, stage: StageSpec, rows: list[TrialRow], best: Best) -> None:
        """results.csv, then best.json (whose presence marks the stage finished)."""
        self.write_rows(stage, rows)
        path = storage.join(self.stage_path(stage.name), BEST_FILE)
        storage.write_text(path, best.to_json())

    def read_best(self, stage: str) -> Best | None:
        path = storage.join(self.stage_path(stage), BEST_FILE)
        return Best.from_json(storage.read_text(path)) if storage.exists(path) else None

    def read_rows(self, stage: StageSpec) -> list[TrialRow] | None:
        path = storage.join(self.stage_path(stage.name), RESULTS_FILE)
        if not storage.exists(path):
            return None
        return rows_from_csv(storage.read_text(path), list(stage.grid), path)

    # -- final model

    def model_path(self) -> str:
        return self.file(FINAL_DIR, MODEL_FILE)

    def _series_path(self, model: str, split: str) -> str:
        return self.file(FINAL_DIR, f"{model}_{split}_daily.npz")

    def write_final_series(self, model: str, split: str, series: Series) -> None:
        storage.write_bytes(self._series_path(model, split), series.to_bytes())

    def read_final_series(self, model: str, split: str) -> Series | None:
        path = self._series_path(model, split)
        return Series.from_bytes(storage.read_bytes(path)) if storage.exists(path) else None

    def write_universe_timeline(self, timeline: dict[str, np.ndarray]) -> None:
        """`ranker.universe.timeline`'s arrays (dates as days since 1970)."""
        arrays = dict(timeline)
        arrays["date"] = arrays["date"].astype("datetime64[D]").astype(np.int64)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        storage.write_bytes(self.file(FINAL_DIR, UNIVERSES_FILE), buf.getvalue())

    def read_universe_timeline(self) -> dict[str, np.ndarray] | None:
        path = self.file(FINAL_DIR, UNIVERSES_FILE)
        if not storage.exists(path):
            return None
        with np.load(io.BytesIO(storage.read_bytes(path))) as z:
            out = {k: z[k] for k in z.files}
        out["date"] = out["date"].astype("datetime64[D]")
        return out

    # -- summary, analysis, report

    def write_summary(self, summary: Summary | WalkForward) -> str:
        path = self.file(SUMMARY_FILE)
        storage.write_text(path, dumps(summary.to_dict()))
        return path

    def read_summary(self) -> Summary | WalkForward | None:
        """summary.json, typed: a run's Summary (an earlier version's file is upgraded), or a
        walk-forward run's WalkForward.

        Raises:
            RunDirError: a file written by a newer version.
        """
        path = self.file(SUMMARY_FILE)
        if not storage.exists(path):
            return None
        return read_summary_doc(json.loads(storage.read_text(path)), path)

    def is_complete(self) -> bool:
        return storage.exists(self.file(SUMMARY_FILE))

    def write_analysis(self, analysis: Analysis) -> str:
        path = self.file(ANALYSIS_FILE)
        storage.write_text(path, dumps(analysis.to_dict()))
        return path

    def read_analysis(self) -> Analysis | None:
        """analysis.json, typed; None when absent or written by an earlier version (its readers
        recompute it from the run's other files).

        Raises:
            RunDirError: a file written by a newer version.
        """
        path = self.file(ANALYSIS_FILE)
        if not storage.exists(path):
            return None
        return Analysis.from_dict(json.loads(storage.read_text(path)), path)

    def write_report(self, markdown: str, html: str, images: dict[str, bytes]) -> tuple[str, str]:
        """report/*.png, report.md (which links them) and the self-contained report.html."""
        for name, png in images.items():
            storage.write_bytes(self.file(REPORT_DIR, name), png)
        md, page = self.file(REPORT_MD), self.file(REPORT_HTML)
        storage.write_text(md, markdown)
        storage.write_text(page, html)
        return md, page

    def documents(self) -> list[str]:
        """The run's documents that exist, relative to it: spec, summary, analysis, report and
        the report's figures (what goes to a tracking server)."""
        names = [SPEC_FILE, SUMMARY_FILE, ANALYSIS_FILE, REPORT_MD, REPORT_HTML]
        out = [n for n in names if storage.exists(self.file(n))]
        figures = storage.listdir(self.file(REPORT_DIR))
        return out + [f"{REPORT_DIR}/{f}" for f in figures if f.endswith(".png")]

    # -- everything

    def load(self) -> Run:
        """Read the run's spec, info, stage results and bests, summary and analysis, once.

        Raises:
            RunDirError: not a run directory.
        """
        spec = self.read_spec()
        stages = []
        for st in spec.stages:
            best = self.read_best(st.name)
            rows = self.read_rows(st)
            stages.append(StageRecord(st, self.stage_dir(st.name), rows, best))
        return Run(self, spec, self.read_info(), stages, self.read_summary(), self.read_analysis(),
                   self.read_fold())  # fmt: skip

    def write_fold(self, doc: dict[str, Any]) -> None:
        storage.write_text(self.file(FOLD_FILE), dumps(doc))

    def read_fold(self) -> dict[str, Any] | None:
        path = self.file(FOLD_FILE)
        return json.loads(storage.read_text(path)) if storage.exists(path) else None

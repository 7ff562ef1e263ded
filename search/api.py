"""The Python API: start, continue, rerun and read searches from Python or a notebook.

Every `liquid-search` command is a thin layer over a function here, so there is one way to do
each thing, with the same checks:

    from search import api
    run = api.run("configs/smoke.yaml", overrides=["train.epochs=2"])  # blocks; a RunView
    run = api.open_run("runs/run-20261203-101500")  # any run directory, local or s3://
    run.trials("architecture")  # a DataFrame, also while the stage runs
    run.model().score(frame)  # the final model
    api.score(run.path, data="new_data/", out="scores.pqt")  # every row of new data, scored

Every input is checked before anything starts or is written (the spec with every grid point,
the flags, the storage, the data and, for a run that exists, that the data is the run's own);
a problem a user can fix raises one of `USER_ERRORS`, whose message is one line naming the
problem and the fix. Progress goes to the `liquid_search` logger.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ranker import storage
from ranker.config import ConfigError
from ranker.data import DataError
from ranker.synth import SynthError
from search import lease
from search import spec as specmod
from search.errors import (
    Interrupted,
    RunBusy,
    RunDirError,
    SearchError,
    SpecError,
    StorageFault,
    storage_fault,
)
from search.rundir import LEASE_FILE, SPEC_FILE, RunDir
from search.spec import SearchSpec

if TYPE_CHECKING:  # imported where a view is made: it needs pandas and ray, `train` neither
    from search.view import RunView

log = logging.getLogger("liquid_search")

# The errors a user can fix: each message is one line, naming the problem and the fix.
USER_ERRORS: tuple[type[Exception], ...] = (
    SearchError, DataError, ConfigError, storage.StorageError, SynthError,
)  # fmt: skip

# Sections of a run's spec that `resume` may change: none of them changes what a finished or
# running trial trained, so the stages already done stay valid.
RESUMABLE = ("final", "costs", "resources", "max_concurrent", "max_failures")

Config = str | os.PathLike | dict[str, Any] | SearchSpec | None


# ---------------------------------------------------------------- specs


def load_spec(
    config: Config = None,
    overrides: Sequence[str] = (),
    *,
    require_stages: bool = True,
    flags: dict[str, tuple[str, str | None]] | None = None,
    problems: Sequence[str] = (),
    source: str = "<spec>",
) -> SearchSpec:
    """A checked search spec.

    Args:
        config: a spec file, a dict of sections, a SearchSpec, or None for the bundled
            configs/search.yaml.
        overrides: dotted `key=value` pairs, values parsed as YAML.
        require_stages: refuse a spec without stages (`train` needs none).
        flags: top-level keys set by command-line flags: {key: (flag, value)}.
        problems: problems found with other inputs (flags), listed with the spec's own.
        source: the name of a dict or SearchSpec `config` in messages.

    Raises:
        SpecError: every problem at once.
    """
    try:
        if isinstance(config, SearchSpec):
            config = config.to_dict()
        if isinstance(config, dict):
            sp = specmod.from_raw(config, source, list(overrides), require_stages, flags)
        else:
            path = _default_config() if config is None else config
            sp = specmod.load(path, list(overrides), require_stages, flags)
    except SpecError as e:
        raise SpecError(e.source, [*problems, *e.errors]) from None
    if problems:
        raise SpecError("command line", list(problems))
    return sp


def _default_config() -> str:
    if not os.path.exists(specmod.DEFAULT_CONFIG):
        raise RunDirError(
            f"the bundled spec {specmod.DEFAULT_CONFIG} is missing. Fix: pass a search spec "
            f"(see configs/search.yaml in the repository)."
        )
    return specmod.DEFAULT_CONFIG


def _precision_line(asked: SearchSpec, sp: SearchSpec) -> str:
    """The line that says which precision a run or training uses (and that `auto` chose it)."""
    how = " (train.precision=auto)" if asked.train.precision == "auto" else ""
    return f"precision: {sp.train.precision}{how}"


def _data_problem(data: str | None, flag: str = "--data") -> list[str]:
    if data is not None and not str(data).strip():
        return [
            f"{flag}={data!r}: empty (an unset shell variable?). Fix: a directory or URI with "
            f"the data, or leave {flag} out for the spec's data"
        ]
    return []


# ---------------------------------------------------------------- synth and train


def synth(
    out_dir: str | os.PathLike,
    *,
    scale: float = 1.0,
    seed: int = 0,
    signal: float = 1.0,
    n_symbols: int | None = None,
    n_dates: int | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a synthetic market in the data's schema (`ranker.synth.generate`); its summary.

    Raises:
        SynthError: a bad parameter, a file for `out_dir`, or a folder holding data (without
            `force`).
    """
    from ranker.synth import generate

    t0 = time.time()
    info = generate(out_dir, scale=scale, seed=seed, signal=signal, n_symbols=n_symbols,
                    n_dates=n_dates, log=log.info, force=force)  # fmt: skip
    log.info(f"wrote {out_dir} in {time.time() - t0:.0f}s")
    return info


def train(
    config: Config = None,
    *,
    data: str | None = None,
    overrides: Sequence[str] = (),
    threads: int = 1,
    out: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """One training run without Ray on the spec's model, train, universe and split: val and
    test metrics, costs, and the oracle's metrics on a synthetic market.

    Args:
        threads: torch threads.
        out: also save the trained model's checkpoint here (a path or URI); an existing file is
            refused unless `force`.

    Raises:
        SpecError, DataError, StorageError: a bad input, before any training.
    """
    from ranker import checkpoint
    from ranker import device as devices
    from ranker.backtest import backtest
    from ranker.train import fit, score
    from search.source import data_source, load_data

    problems = _data_problem(data)
    if not (isinstance(threads, int) and threads >= 1):
        problems.append(f"--threads={threads!r}: must be a positive integer, e.g. 1")
    if out is not None:
        problems += _out_problem(out, force, "checkpoint", "ranker.pt")
    asked = load_spec(config, overrides, require_stages=False, problems=problems)
    sp = specmod.with_precision_resolved(asked)
    source = data_source(sp, data)
    devices.setup(threads, 0)
    ds = load_data(sp, source, baseline=False, compare=False)
    log.info(_precision_line(asked, sp))
    log.info(f"training {sp.train.epochs} epochs on {len(ds.train):,} rows ({threads} thread(s))")
    result = fit(sp.model, sp.train, ds.train, ds.val, log=log.info)
    bt = backtest(ds.test, score(result.model, ds.test), sp.train.k, sp.costs)
    doc: dict[str, Any] = {
        "val": result.metrics,
        "test": bt.metrics,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "costs": bt.costs,
        "rows": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
        "precision": sp.train.precision,
    }
    if bt.oracle is not None:
        doc["oracle_test"] = bt.oracle
    if out is not None:
        checkpoint.save(out, result.model, ds.columns, train_config=sp.train.to_dict(),
                        universe=sp.universe.to_dict(),
                        metrics={"val": result.metrics, "test": bt.metrics})  # fmt: skip
        doc["checkpoint"] = storage.absolute(out)
    return doc


def _out_problem(out: str, force: bool, what: str, example: str) -> list[str]:
    """Why a file (a checkpoint, a scores file: `what`, named like `example`) cannot be written
    at `out` ([] when it can)."""
    if not str(out).strip():
        return [f"--out={out!r}: empty. Fix: a file path or URI for the {what}"]
    try:
        if storage.is_uri(out):
            if not force and storage.exists(out):
                return [f"--out={out!r} exists. Fix: another URI, or --force to replace it"]
            return []
        path = storage.absolute(out)
        if os.path.isdir(path):
            return [f"--out={out!r} is a directory. Fix: a file path, e.g. {out}/{example}"]
        if os.path.exists(path) and not force:
            return [f"--out={out!r} exists. Fix: another path, or --force to replace it"]
        storage.check_dir(os.path.dirname(path), create=True, what=f"{what}'s directory")
    except OSError as e:  # StorageError, or a URI whose store cannot be asked
        return [f"--out: {e}"]
    return []


# ---------------------------------------------------------------- score


def score(
    model: str,
    *,
    data: str,
    out: str,
    dates: str | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Score every row of `data` (or the rows of `dates`) with a run's final model (the
    ensemble), and write them as a scores file (`search.compare`): feature_date, symbol, score
    and `liquid` (the row is in the run's universe under its rule, on this data's prices).

    Args:
        model: a run directory (its final model), or a checkpoint file.
        data: a directory or URI with ml_dataset.pqt and prices.pqt: the model's feature
            columns and embedding width.
        out: the parquet file to write (a path or URI), atomically; an existing file is refused
            unless `force`.
        dates: `FROM:TO`, ISO dates, both included, either end optional (`2024-01-02:`).

    Returns:
        The file written, its rows, liquid rows and dates, the seconds taken and rows a second.

    Raises:
        SpecError: a bad flag, or an --out that exists. CompareError, RunDirError: no model at
            `model`. DataError: bad data, or data without the model's feature columns.
    """
    from search import compare

    problems = _data_problem(data) + _out_problem(out, force, "scores file", "scores.pqt")
    try:
        start, end = compare.parse_dates(dates)
    except ValueError as e:
        problems.append(str(e))
    if problems:
        raise SpecError("command line", problems)
    ranker = compare.load_model(model)
    t0 = time.time()
    rows = ranker.score_source(data, start=start, end=end, log=log.info)
    compare.write_scores(out, rows)
    seconds = time.time() - t0
    log.info(f"wrote {len(rows):,} scores to {out} in {seconds:.1f}s")
    return {
        "out": storage.absolute(out),
        "rows": len(rows),
        "liquid_rows": int(rows.liquid.sum()),
        "dates": f"{rows.days.min()} to {rows.days.max()}",
        "seconds": round(seconds, 2),
        "rows_per_second": round(len(rows) / seconds) if seconds > 0 else None,
    }


# ---------------------------------------------------------------- run, resume, rerun


Started = Callable[[str], None]


def run(
    config: Config = None,
    *,
    data: str | None = None,
    overrides: Sequence[str] = (),
    storage_path: str | None = None,
    name: str | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_start: Started | None = None,
    mlflow: str | None = None,
) -> RunView:
    """Run the staged search, the final model and the test set in a new run directory.

    Args:
        config, overrides: the spec (see `load_spec`).
        data: a directory or URI with the data (default: the spec's, else the built-in
            synthetic market).
        storage_path: where runs go (default: the spec's `storage`); the run is
            `<storage>/<name>`.
        name: the run's name (default: the spec's, else `run-<timestamp>`).
        address: the Ray cluster to join (default: this process's Ray, a Ray job's, or a new
            local one).
        verbose: keep Ray's and Tune's own INFO lines.
        on_start: called with the run directory once Ray is up, just before the search starts.
        mlflow: an MLflow tracking URI (the spec's `tracking.mlflow`): one MLflow run per trial,
            nested under one for the search.

    Returns:
        The run, complete (`search.view.RunView`: its tables, figures and final model).

    Raises:
        one of USER_ERRORS: a bad input (before anything is written), or a stage where no trial
            finished; Interrupted or KeyboardInterrupt on Ctrl-C (the run is resumable).
    """
    from search.connect import run_storage
    from search.source import data_source

    flags = {"name": ("--name", name), "storage": ("--storage", storage_path)}
    if mlflow is not None:
        overrides = [*overrides, f"tracking.mlflow={mlflow}"]
    asked = load_spec(config, overrides, flags=flags, problems=_data_problem(data))
    sp = specmod.with_precision_resolved(asked)
    root = run_storage(sp.storage)
    storage.check_dir(root, create=True, what="storage")
    rd = RunDir(storage.join(root, sp.name or time.strftime("run-%Y%m%d-%H%M%S")))
    _not_busy(rd)
    if rd.is_run():
        raise RunDirError(_holds_a_run(rd))
    if set(storage.listdir(rd.path)) - {LEASE_FILE}:
        raise RunDirError(
            f"{rd.path} exists and holds files that are not a run. Fix: pass another --name."
        )
    return _execute(rd, sp, data_source(sp, data), address, verbose, on_start, command="run",
                    fresh=True, precision=_precision_line(asked, sp))  # fmt: skip


def resume(
    run_dir: str,
    *,
    data: str | None = None,
    overrides: Sequence[str] = (),
    address: str | None = None,
    verbose: bool = False,
    on_start: Started | None = None,
) -> RunView:
    """Continue an interrupted, killed or failed run where it stopped.

    Args:
        overrides: changes to the run's spec, only in the sections that do not change what a
            trial trains (`RESUMABLE`: final, costs, resources, max_concurrent, max_failures),
            e.g. `final.epochs=20` after a run failed in its final model. On a complete run,
            `final.compare.NAME=PATH` adds a comparison model and trains nothing
            (`_add_comparisons`); nothing else may change there.

    Raises:
        one of USER_ERRORS, as `run`; RunDirError for an override of another section, or data
            that is not the run's.
    """
    from search.source import data_source

    rd = RunDir(run_dir)
    old = rd.read_spec()
    problems = _data_problem(data)
    sp = old
    if overrides or problems:
        sp = _resumed_spec(old, overrides, problems, rd.file(SPEC_FILE))
    if rd.is_complete():
        if sp.final.compare != old.final.compare:
            return _add_comparisons(rd, old, sp, data)
        log.info(f"{rd.path} is complete: nothing to resume (`liquid-search status` shows it)")
        return _view(rd)
    info = rd.read_info()
    source = data or (info.source if info else None) or data_source(sp)
    return _execute(rd, sp, source, address, verbose, on_start, command="resume",
                    new_spec=sp if sp != old else None)  # fmt: skip


def _add_comparisons(rd: RunDir, old: SearchSpec, sp: SearchSpec, data: str | None) -> RunView:
    """A complete run's new or changed `final.compare` entries, and nothing else: no model is
    trained; the comparisons are computed on the run's test rows, summary.json is rewritten
    with them (kept ones as they were), then spec.yaml, and the report is written again.

    Raises:
        SpecError: overrides of anything but final.compare (a complete run trains nothing).
        one of USER_ERRORS, as `run`: data that is not the run's, a comparison that cannot be
            made (before anything is written).
    """
    from search import compare, tracking
    from search.report import write_report
    from search.source import load_data

    if replace(sp, final=replace(sp.final, compare=old.final.compare)) != old:
        raise SpecError("command line", [
            f"{rd.path} is complete: only final.compare may change now (its comparisons are "
            f"computed; nothing is trained). Fix: drop the other overrides, or start a new run "
            f"with them"])  # fmt: skip
    tracking.check(sp)
    info = rd.read_info()
    source = data or (info.source if info else None)
    if source is None:
        raise RunDirError(f"{rd.path} records no data source. Fix: pass --data.")
    ds = load_data(sp, source, baseline=False)
    if info is not None:
        info.check_same_data(ds, source, rd.path)
    summary = rd.read_summary()
    assert summary is not None  # the run is complete
    kept = {n: c for n, c in summary.comparisons.items()
            if n in sp.final.compare and old.final.compare.get(n) == sp.final.compare[n]}  # fmt: skip
    todo = {n: p for n, p in sp.final.compare.items() if n not in kept}
    compare.check(todo, ds, sp.universe.mode)
    _not_busy(rd)
    with lease.Lease.acquire(rd, "resume"):
        made = compare.compare_models(todo, rd, ds, sp.costs, sp.universe.mode)
        done = {n: kept[n] if n in kept else made[n] for n in sp.final.compare}
        summary = replace(summary, comparisons=done)
        rd.write_summary(summary)  # before the spec: a resume cut short here computes it again
        rd.write_spec(sp)
        write_report(rd.load())
        tracker = tracking.Tracker.start(sp, rd, info.mlflow_run if info else None)
        if tracker is not None:
            tracker.log_comparisons(summary)
            tracker.log_documents(rd)
            tracker.end("FINISHED")
    for line in compare.lines(made):
        log.info(line)
    log.info(f"{rd.path}: {len(made)} comparison(s) added; summary.json and the report rewritten")
    return _view(rd)


def _resumed_spec(
    old: SearchSpec, overrides: Sequence[str], problems: list[str], source: str
) -> SearchSpec:
    """The run's spec with `overrides` applied, refusing any outside `RESUMABLE`."""
    bad = [o for o in overrides
           if o.partition("=")[0].strip().split(".")[0] not in RESUMABLE]  # fmt: skip
    problems = list(problems) + [
        f"override {o!r}: only {list(RESUMABLE)} may change when a run resumes (the stages "
        f"already trained with the rest). Fix: drop it, or start a new run with it"
        for o in bad
    ]
    return load_spec(old, overrides, problems=problems, source=source)


def rerun_stage(
    run_dir: str,
    stage: str,
    *,
    cont: bool = False,
    fold: int | None = None,
    data: str | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_start: Started | None = None,
) -> RunView:
    """Rerun one stage from the saved best of the stage before it, in a new attempt directory
    (`<stage>.v2`, earlier attempts kept); with `cont`, the later stages and the final model too.

    Args:
        fold: a walk-forward run's fold (1-based) whose stage to rerun (required there).

    Raises:
        one of USER_ERRORS, as `run`; RunDirError for an unknown stage or fold, or one whose
            previous stage has not finished.
    """
    rd = RunDir(run_dir)
    sp = rd.read_spec()
    if _data_problem(data):
        raise SpecError("command line", _data_problem(data))
    names = [s.name for s in sp.stages]
    if stage not in names:
        raise RunDirError(f"no stage {stage!r} in {rd.path}. Fix: name one of its stages {names}.")
    where = _fold_dir(rd, sp, fold)
    idx = names.index(stage)
    for prev in names[:idx]:
        if where.read_best(prev) is None:
            raise RunDirError(
                f"stage {stage!r} starts from the best of {prev!r}, which has not finished "
                f"in {where.path}. Fix: `liquid-search resume {rd.path}` first."
            )
    info = rd.read_info()
    source = data or (info.source if info else None)
    if source is None:
        raise RunDirError(f"{rd.path} records no data source. Fix: pass --data.")
    rerun = names[idx:] if cont else [stage]
    return _execute(rd, sp, source, address, verbose, on_start, command="stage", rerun=rerun,
                    stop_after=None if cont else stage, fold=fold)  # fmt: skip


def _fold_dir(rd: RunDir, sp: SearchSpec, fold: int | None) -> RunDir:
    """The run directory a stage rerun works in: the run's, or a walk-forward fold's.

    Raises:
        RunDirError: --fold on a single split, none or an unknown one on a walk-forward run.
    """
    k = sp.walk_forward.folds
    if not sp.walk_forward.on:
        if fold is not None:
            raise RunDirError(f"{rd.path} is a single split: it has no folds. Fix: drop --fold.")
        return rd
    if fold is None or not 1 <= fold <= k:
        raise RunDirError(
            f"{rd.path} is a walk-forward run of {k} folds: --fold {fold} is none of them. Fix: "
            f"--fold I with I in 1..{k} (each fold's stages are its own)."
        )
    return rd.fold(fold)


def _execute(
    rd: RunDir,
    sp: SearchSpec,
    source: str,
    address: str | None,
    verbose: bool,
    on_start: Started | None,
    *,
    command: str,
    fresh: bool = False,
    new_spec: SearchSpec | None = None,
    precision: str | None = None,
    rerun: list[str] | None = None,
    stop_after: str | None = None,
    fold: int | None = None,
) -> RunView:
    """Load and check the data (before Ray: bad input writes nothing), take the run
    directory's lease (one driver per run), connect, check the cluster, then run; record how
    the driver stopped in run.json and give the lease back.

    Args:
        command: run, resume or stage (recorded in the lease).
        fresh: a new run: the directory must not hold one once the lease is taken.

    Raises:
        RunBusy: another driver holds the run. StorageFault: the storage failed mid-run.
    """
    from search import compare, connect, driver, tracking
    from search.source import load_data, load_folds_data

    tracking.check(sp)
    ds = load_folds_data(sp, source) if sp.walk_forward.on else load_data(sp, source)
    info = rd.read_info()
    if info is not None:
        info.check_same_data(ds, source, rd.path)
    compare.check(sp.final.compare, ds, sp.universe.mode)
    log.info(precision or _precision_line(sp, sp))
    _not_busy(rd)  # a second driver refuses before it starts Ray
    connect.init(address, verbose=verbose)
    connect.check_storage(rd.path)
    connect.check_resources(sp.resources.cpu, sp.resources.gpu, sp.resources.autoscale)
    with lease.Lease.acquire(rd, command):  # before anything of the run is written
        if fresh and rd.is_run():  # another driver made it while this one loaded the data
            raise RunDirError(_holds_a_run(rd))
        if new_spec is not None:
            rd.write_spec(new_spec)
            log.info(f"{rd.path}: the spec now has the overrides (spec.yaml rewritten)")
        log.info(f"run directory: {rd.path}")
        if on_start is not None:
            on_start(rd.path)
        outcome = "failed"
        try:
            summary = driver.run(sp, rd, ds, source, rerun=rerun, stop_after=stop_after,
                                 fold=fold)  # fmt: skip
            outcome = "complete" if summary is not None else f"stopped after {stop_after}"
        except (Interrupted, KeyboardInterrupt):
            outcome = "interrupted"
            raise
        except StorageFault as e:
            outcome = f"storage fault: {e}"
            raise
        except SearchError as e:
            outcome = f"failed: {e}"
            raise
        except OSError as e:  # a write or read of the run's storage failed mid-run
            fault = storage_fault(e, rd.path)
            outcome = f"storage fault: {fault}"
            raise fault from None
        finally:
            _mark_ended(rd, outcome)
    return _view(rd)


def _not_busy(rd: RunDir) -> None:
    """Raises RunBusy when a live driver holds the run directory's lease."""
    held = lease.read(rd)
    if held is not None and not held.dead():
        raise RunBusy(lease.busy_line(rd, held))


def _mark_ended(rd: RunDir, outcome: str) -> None:
    """Record how the driver stopped; a storage that fails here has been reported already."""
    try:
        rd.mark_ended(outcome)
    except OSError:  # the storage fails: the run's last line says so
        pass


def _holds_a_run(rd: RunDir) -> str:
    return (
        f"{rd.path} already holds a run. Fix: `liquid-search resume {rd.path}` to continue it, "
        f"or pass another --name."
    )


# ---------------------------------------------------------------- reading a run


def report(run_dir: str, *, data: str | None = None, test: bool = True) -> tuple[str, str]:
    """Write the run's report.md (with report/*.png) and self-contained report.html; with
    `test`, first score each stage's top configs on the test set (analysis.json).

    Args:
        data: where the run's data is now, when it moved (it must be the run's data).

    Returns:
        (path of report.md, path of report.html).

    Raises:
        RunDirError: not a run, no finished stage, or `data` that is not the run's.
    """
    from search.analysis import analyze, load_test_panel
    from search.report import write_report

    if _data_problem(data):
        raise SpecError("command line", _data_problem(data))
    loaded = RunDir(run_dir).load()
    if not loaded.finished:
        raise RunDirError(
            f"{loaded.path}: no stage has finished yet, so there is nothing to report. Fix: wait "
            f"for the first stage (`liquid-search status {loaded.path}` shows it)."
        )
    if test:
        panel = load_test_panel(loaded, data)
        loaded.analysis = analyze(loaded, panel, loaded.spec.train.k)
        loaded.dir.write_analysis(loaded.analysis)
    return write_report(loaded)


def open_run(run_dir: str) -> RunView:
    """A run directory (a local path or s3:// / gs:// URI), finished or in flight, read once:
    its trials, selections and final results as DataFrames, its figures, its final model.

    Raises:
        RunDirError, StorageError: not a run directory, or unreachable.
    """
    return _view(RunDir(run_dir))


def _view(rd: RunDir) -> RunView:
    # Here, not at the top: a view needs pandas and Ray Tune, which `train` and `synth` do not
    # (importing them costs seconds on every `liquid-search train`).
    from search.view import RunView

    return RunView(rd)

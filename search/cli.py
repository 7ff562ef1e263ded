"""`liquid-search`: the one command line.

Results go to stdout (JSON of `train`, the table of `status`, the paths `run` and `report`
write); progress and logs go to stderr. A mistake (bad spec, bad data, not a run directory, a
cluster that refuses) ends in one line naming the problem and the fix, and a non-zero exit.
Everything that can be checked without Ray (the spec with every grid point, the run directory,
the data) is checked before Ray starts; `train`, `status` and `report` never start it.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import time
from typing import Any

from ranker.config import ConfigError
from ranker.data import DataError
from search import spec as specmod
from search.errors import Interrupted, RunDirError, SearchError

log = logging.getLogger("liquid_search")


def _default_config() -> str:
    if not os.path.exists(specmod.DEFAULT_CONFIG):
        raise RunDirError(
            f"the bundled spec {specmod.DEFAULT_CONFIG} is missing. Fix: pass --config with a "
            f"search spec (see configs/search.yaml in the repository)."
        )
    return specmod.DEFAULT_CONFIG


# ---------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from ranker.synth import generate

    t0 = time.time()
    info = generate(args.out_dir, scale=args.scale, seed=args.seed, signal=args.signal,
                    n_symbols=args.n_symbols, n_dates=args.n_dates, log=log.info)  # fmt: skip
    log.info(f"wrote {args.out_dir} in {time.time() - t0:.0f}s")
    print(json.dumps(info, indent=2, default=str))
    return 0


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    from ranker import checkpoint
    from ranker import device as devices
    from ranker.backtest import backtest
    from ranker.train import fit, score
    from search.source import data_source, load_data

    sp = specmod.load(args.config or _default_config(), args.overrides, require_stages=False)
    sp = _with_precision(sp)
    source = data_source(sp, args.data)
    devices.setup(args.threads, 0)
    ds = load_data(sp, source, baseline=False)
    log.info(
        f"training {sp.train.epochs} epochs on {len(ds.train):,} rows ({args.threads} thread(s))"
    )
    result = fit(sp.model, sp.train, ds.train, ds.val, log=log.info)
    bt = backtest(ds.test, score(result.model, ds.test), sp.train.k, sp.costs)
    out: dict[str, Any] = {
        "val": result.metrics,
        "test": bt.metrics,
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "costs": bt.costs,
        "rows": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
        "precision": sp.train.precision,
    }
    if bt.oracle is not None:
        out["oracle_test"] = bt.oracle
    if args.out:
        checkpoint.save(args.out, result.model, ds.columns, train_config=sp.train.to_dict(),
                        universe=sp.universe.to_dict(),
                        metrics={"val": out["val"], "test": out["test"]})  # fmt: skip
        out["checkpoint"] = os.path.abspath(args.out) if "://" not in args.out else args.out
    print(json.dumps(out, indent=2))
    return 0


def _with_precision(sp: specmod.SearchSpec) -> specmod.SearchSpec:
    """The spec with `train.precision: auto` resolved, and one line saying which it is."""
    resolved = specmod.with_precision_resolved(sp)
    how = " (train.precision=auto)" if sp.train.precision == "auto" else ""
    log.info(f"precision: {resolved.train.precision}{how}")
    return resolved


# ---------------------------------------------------------------- run / stage / resume


def _start(
    run: Any, sp: specmod.SearchSpec, source: str, args: argparse.Namespace, **kw: Any
) -> int:
    """Load the data (before Ray: bad input writes nothing), connect, run; print the run dir."""
    from search import connect, driver
    from search.source import load_data

    args.stop.run_path = run.path
    ds = load_data(sp, source)
    connect.init(args.address, verbose=args.verbose)
    if not args.verbose:
        # Tune logs every failed attempt of a trial with its traceback; one line says it.
        logging.getLogger("ray.tune.execution.tune_controller").addFilter(OneLineErrors())
        # On Ctrl-C Tune advises `Tuner.restore(...)`; our error line gives the command that
        # resumes the whole run instead.
        logging.getLogger("ray.tune.tune").addFilter(NoTunerRestoreHint())
    connect.check_storage(run.path)
    connect.check_resources(sp.resources.cpu, sp.resources.gpu, sp.resources.autoscale)
    log.info(f"run directory: {run.path}")
    outcome = "failed"
    try:
        summary = driver.run(sp, run, ds, source, **kw)
        outcome = "complete" if summary is not None else f"stopped after {kw.get('stop_after')}"
    except Interrupted:
        outcome = "interrupted"
        raise
    except KeyboardInterrupt:
        outcome = "interrupted"
        raise
    except SearchError as e:
        outcome = f"failed: {e}"
        raise
    finally:
        run.mark_ended(outcome)
    print(run.path)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from ranker import storage
    from search.connect import run_storage
    from search.rundir import RunDir
    from search.source import data_source

    sp = _with_precision(specmod.load(args.config or _default_config(), args.overrides))
    root = run_storage(args.storage or sp.storage)
    run = RunDir(storage.join(root, args.name or sp.name or time.strftime("run-%Y%m%d-%H%M%S")))
    if run.is_run():
        raise RunDirError(
            f"{run.path} already holds a run. Fix: `liquid-search resume {run.path}` to continue "
            f"it, or pass another --name."
        )
    return _start(run, sp, data_source(sp, args.data), args)


def cmd_stage(args: argparse.Namespace) -> int:
    from search.rundir import RunDir

    run = RunDir(args.run)
    sp = run.read_spec()
    names = [s.name for s in sp.stages]
    if args.name not in names:
        raise RunDirError(
            f"no stage {args.name!r} in {run.path}. Fix: name one of its stages {names}."
        )
    idx = names.index(args.name)
    for prev in names[:idx]:
        if run.read_best(prev) is None:
            raise RunDirError(
                f"stage {args.name!r} starts from the best of {prev!r}, which has not finished "
                f"in {run.path}. Fix: `liquid-search resume {run.path}` first."
            )
    info = run.read_info()
    source = args.data or (info.source if info else None)
    if source is None:
        raise RunDirError(f"{run.path} records no data source. Fix: pass --data.")
    rerun = names[idx:] if args.cont else [args.name]
    stop = None if args.cont else args.name
    return _start(run, sp, source, args, rerun=rerun, stop_after=stop)


def cmd_resume(args: argparse.Namespace) -> int:
    from search.rundir import RunDir

    run = RunDir(args.run_dir)
    sp = run.read_spec()
    if run.is_complete():
        log.info(f"{run.path} is complete: nothing to resume (`liquid-search status` shows it)")
        print(run.path)
        return 0
    info = run.read_info()
    source = args.data or (info.source if info else None)
    if source is None:
        from search.source import data_source

        source = data_source(sp)
    return _start(run, sp, source, args)


# ---------------------------------------------------------------- status / report


def cmd_status(args: argparse.Namespace) -> int:
    from search.rundir import RunDir
    from search.status import render, watch

    run = RunDir(args.run_dir)
    if args.watch:
        return watch(run, args.interval)
    print(render(run.load()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search.analysis import analyze, load_test_panel
    from search.report import write_report
    from search.rundir import RunDir

    run = RunDir(args.run_dir).load()
    if not run.finished:
        raise RunDirError(
            f"{run.path}: no stage has finished yet, so there is nothing to report. Fix: wait "
            f"for the first stage (`liquid-search status {run.path}` shows it)."
        )
    if not args.no_test:
        run.analysis = analyze(run, load_test_panel(run, args.data), run.spec.train.k)
        run.dir.write_analysis(run.analysis)
    md, html = write_report(run)
    print(md)
    print(html)
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liquid-search",
        description="Staged hyperparameter search for a liquid-universe stock ranker on Ray Tune.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also Ray's and Tune's own logs")
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic market in the dataset's schema")
    s.add_argument("out_dir")
    s.add_argument("--scale", type=float, default=1.0, help="1.0 ~ 2.13M rows, 5,644 symbols")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--signal", type=float, default=1.0, help="strength of the planted signal")
    s.add_argument("--n-symbols", type=int, default=None)
    s.add_argument("--n-dates", type=int, default=None)
    s.set_defaults(fn=cmd_synth)

    t = sub.add_parser(
        "train", help="one training run without Ray; prints val/test metrics as JSON"
    )
    t.add_argument(
        "--data", help="directory or URI with ml_dataset.pqt and prices.pqt (default: synthetic)"
    )
    t.add_argument("--config", help="spec whose model/train/universe/split sections to use")
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--out", help="write the trained model's checkpoint here (path or URI)")
    t.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. train.epochs=5 model.news_alpha=1.0"
    )
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("run", help="run the staged search, the final model and the test set")
    r.add_argument("--config", help=f"search spec (default {specmod.DEFAULT_CONFIG})")
    r.add_argument(
        "--data", help="directory or URI with the data (default: the spec's, else synthetic)"
    )
    r.add_argument("--address", help="Ray cluster: auto, ray://host:10001 or host:port")
    r.add_argument(
        "--storage", help="where runs go: a path (shared on multi-node) or s3:// / gs://"
    )
    r.add_argument("--name", help="run name under the storage (default: run-<timestamp>)")
    r.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. train.epochs=5 resources.gpu=0.25"
    )
    r.set_defaults(fn=cmd_run)

    g = sub.add_parser("stage", help="rerun one stage from the saved best of the stage before it")
    g.add_argument("name")
    g.add_argument("--run", required=True, help="the run directory")
    g.add_argument("--continue", dest="cont", action="store_true",
                   help="also rerun the later stages and the final model")  # fmt: skip
    g.add_argument("--data", help="override the run's data source")
    g.add_argument("--address")
    g.set_defaults(fn=cmd_stage)

    u = sub.add_parser("resume", help="continue an interrupted run")
    u.add_argument("run_dir")
    u.add_argument("--data", help="override the run's data source")
    u.add_argument("--address")
    u.set_defaults(fn=cmd_resume)

    st = sub.add_parser("status", help="print a run's stages and trials as a table")
    st.add_argument("run_dir")
    st.add_argument("--watch", action="store_true",
                    help="refresh until the run ends (complete, failed or interrupted)")  # fmt: skip
    st.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    st.set_defaults(fn=cmd_status)

    rp = sub.add_parser(
        "report", help="write report.md and report.html (and analysis.json) for a run"
    )
    rp.add_argument("run_dir")
    rp.add_argument("--data", help="override the run's data source")
    rp.add_argument("--no-test", action="store_true",
                    help="skip scoring the top configs on the test set")  # fmt: skip
    rp.set_defaults(fn=cmd_report)
    return p


class NoTunerRestoreHint(logging.Filter):
    """Drops Tune's 'resume with Tuner.restore(...)' advice (`liquid-search resume` is ours)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Tuner.restore(" not in record.getMessage()


class OneLineErrors(logging.Filter):
    """Shortens a log record that carries an exception to its text and the exception's last
    line (a Ray task error ends with the trial's own exception)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None:
            lines = [ln for ln in str(exc).strip().splitlines() if ln.strip()]
            last = lines[-1].strip() if lines else type(exc).__name__
            record.msg = f"{record.getMessage()}: {last} (--verbose shows the traceback)"
            record.args, record.exc_info, record.exc_text = (), None, None
        return True


def setup_logging() -> None:
    """Our progress lines go to stderr, as plain lines (Ray's own: see `connect.init`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("liquid_search")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False


class _Stop:
    """How this process stops on Ctrl-C: the first stops the run where it is (KeyboardInterrupt;
    during a stage Tune takes that one itself and stops its trials, saving their state); once
    stopping, the next one ends the process at once. `run_path`, once known, goes into the line
    that says how to resume."""

    def __init__(self) -> None:
        self.run_path: str | None = None
        self.stopping = False

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.stopping:
            print("error: stopped at once on a second Ctrl-C" + self.resume_hint(),
                  file=sys.stderr)  # fmt: skip
            os._exit(130)
        self.stopping = True
        raise KeyboardInterrupt

    def resume_hint(self) -> str:
        return (
            f". Fix: `liquid-search resume {self.run_path}` continues it." if self.run_path else "."
        )


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    # Tune's own progress tables repeat what our one line per trial says.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    stop = args.stop = _Stop()
    signal.signal(signal.SIGINT, stop.on_sigint)
    try:
        return args.fn(args)
    except Interrupted as e:
        stop.stopping = True  # a Ctrl-C while Ray shuts down ends the process at once
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        stop.stopping = True
        print("error: interrupted (Ctrl-C)" + stop.resume_hint(), file=sys.stderr)
        return 130
    except SearchError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except (DataError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""`liquid-search`: the one command line, a thin layer over the Python API (`search.api`).

Results go to stdout (JSON of `train`, `synth` and `score`, the table of `status`, the paths
`run` and `report` write); progress and logs go to stderr. A mistake (a bad flag, spec, storage or data,
not a run directory, a cluster that refuses) ends in one line naming the problem and the fix,
and exit code 2, before anything is written. Ctrl-C or SIGTERM (a scheduler's stop, `timeout`,
`ray job stop`) stops a run the same way: it is recorded as interrupted, the line names
`liquid-search resume`, and the exit code is 130. `train`, `score`, `status` and `report`
never start Ray.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
from typing import Any, NoReturn

from search import api
from search import spec as specmod
from search.errors import Interrupted, storage_error

log = logging.getLogger("liquid_search")


# ---------------------------------------------------------------- the commands


def cmd_synth(args: argparse.Namespace) -> int:
    info = api.synth(args.out_dir, scale=args.scale, seed=args.seed, signal=args.signal,
                     n_symbols=args.n_symbols, n_dates=args.n_dates, force=args.force)  # fmt: skip
    print(json.dumps(info, indent=2, default=str))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    out = api.train(args.config, data=args.data, overrides=args.overrides, threads=args.threads,
                    out=args.out, force=args.force)  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


def cmd_score(args: argparse.Namespace) -> int:
    out = api.score(args.run_dir, data=args.data, out=args.out, dates=args.dates,
                    force=args.force)  # fmt: skip
    print(json.dumps(out, indent=2))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    _quiet_tune(args.verbose)
    run = api.run(args.config, data=args.data, overrides=args.overrides,
                  storage_path=args.storage, name=args.name, address=args.address,
                  verbose=args.verbose, on_start=args.stop.started,
                  mlflow=args.mlflow)  # fmt: skip
    print(run.path)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    _quiet_tune(args.verbose)
    run = api.rerun_stage(args.run, args.name, cont=args.cont, fold=args.fold, data=args.data,
                          address=args.address, verbose=args.verbose,
                          on_start=args.stop.started)  # fmt: skip
    print(run.path)
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    _quiet_tune(args.verbose)
    run = api.resume(args.run_dir, data=args.data, overrides=args.overrides,
                     address=args.address, verbose=args.verbose,
                     on_start=args.stop.started)  # fmt: skip
    print(run.path)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from search.rundir import RunDir
    from search.status import render, watch

    if not args.interval > 0:
        raise specmod.SpecError("command line", [
            f"--interval={args.interval!r}: must be a number of seconds > 0, e.g. 5"])  # fmt: skip
    run = RunDir(args.run_dir)
    if args.watch:
        return watch(run, args.interval)
    print(render(run.load()))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    md, html = api.report(args.run_dir, data=args.data, test=not args.no_test)
    print(md)
    print(html)
    return 0


def _quiet_tune(verbose: bool) -> None:
    if verbose:
        return
    # Tune logs every failed attempt of a trial with its traceback; one line says it.
    logging.getLogger("ray.tune.execution.tune_controller").addFilter(OneLineErrors())
    # While the run's storage fails, Ray's syncer and Tune's snapshots log a traceback on every
    # attempt; the run ends with one line that names the storage and the fix instead.
    for handler in logging.getLogger("ray").handlers:
        handler.addFilter(StorageNoise())
    # On Ctrl-C Tune advises `Tuner.restore(...)`; our error line gives the command that resumes
    # the whole run instead.
    logging.getLogger("ray.tune.tune").addFilter(NoTunerRestoreHint())
    # Reading a stage back to resume it, Tune warns about every trial that had not reported
    # yet (it has no metrics to fetch); those trials simply start, which our lines say.
    logging.getLogger("ray.tune.analysis.experiment_analysis").addFilter(NotReportedYet())


# ---------------------------------------------------------------- parser


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake in the arguments as one line (the problem and the fix) and exit
    code 2, like every other mistake."""

    def error(self, message: str) -> NoReturn:
        print(f"error: {self.prog}: {message}. Fix: see `{self.prog} --help`.", file=sys.stderr)
        sys.exit(2)


def _add_data(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--data", help=f"directory or URI with ml_dataset.pqt and prices.pqt ({what})")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="liquid-search",
        description="Staged hyperparameter search for a liquid-universe stock ranker on Ray Tune.",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="also Ray's and Tune's own logs")
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=_Parser)

    s = sub.add_parser("synth", help="write a synthetic market in the dataset's schema")
    s.add_argument("out_dir")
    s.add_argument("--scale", type=float, default=1.0, help="1.0 ~ 2.13M rows, 5,644 symbols")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--signal", type=float, default=1.0, help="strength of the planted signal")
    s.add_argument("--n-symbols", type=int, default=None)
    s.add_argument("--n-dates", type=int, default=None)
    s.add_argument("--force", action="store_true", help="replace a market already in OUT_DIR")
    s.set_defaults(fn=cmd_synth)

    t = sub.add_parser("train", help="one training run without Ray; val/test metrics as JSON")
    _add_data(t, "default: the spec's, else synthetic")
    t.add_argument("--config", help="spec whose model/train/universe/split sections to use")
    t.add_argument("--threads", type=int, default=1, help="torch threads")
    t.add_argument("--out", help="write the trained model's checkpoint here (path or URI)")
    t.add_argument("--force", action="store_true", help="replace an existing --out file")
    t.add_argument("overrides", nargs="*", help="dotted key=value, e.g. train.epochs=5")
    t.set_defaults(fn=cmd_train)

    sc = sub.add_parser("score", help="score every row of a data directory with a run's model")
    sc.add_argument("run_dir", help="a run directory (its final model) or a checkpoint file")
    sc.add_argument("--data", required=True,
                    help="directory or URI with ml_dataset.pqt and prices.pqt to score")  # fmt: skip
    sc.add_argument("--out", required=True, help="the scores file to write (parquet; path or URI)")
    sc.add_argument("--dates", help="FROM:TO, ISO dates, both included, e.g. 2024-01-02:")
    sc.add_argument("--force", action="store_true", help="replace an existing --out file")
    sc.set_defaults(fn=cmd_score)

    r = sub.add_parser("run", help="run the staged search, the final model and the test set")
    r.add_argument("--config", help=f"search spec (default {specmod.DEFAULT_CONFIG})")
    _add_data(r, "default: the spec's, else synthetic")
    r.add_argument("--address", help="Ray cluster: auto, ray://host:10001 or host:port")
    r.add_argument(
        "--storage", help="where runs go: a path (shared on multi-node) or s3:// / gs://"
    )
    r.add_argument("--name", help="run name under the storage (default: run-<timestamp>)")
    r.add_argument("--mlflow", help="MLflow tracking URI: a run per trial, nested under one")
    r.add_argument("overrides", nargs="*", help="dotted key=value, e.g. resources.gpu=0.25")
    r.set_defaults(fn=cmd_run)

    g = sub.add_parser("stage", help="rerun one stage from the saved best of the stage before it")
    g.add_argument("name")
    g.add_argument("--run", required=True, help="the run directory")
    g.add_argument("--continue", dest="cont", action="store_true",
                   help="also rerun the later stages and the final model")  # fmt: skip
    g.add_argument("--fold", type=int, help="a walk-forward run's fold (1-based) to rerun it in")
    _add_data(g, "where the run's data is now, if it moved")
    g.add_argument("--address")
    g.set_defaults(fn=cmd_stage)

    u = sub.add_parser("resume", help="continue an interrupted, killed or failed run")
    u.add_argument("run_dir")
    _add_data(u, "where the run's data is now, if it moved")
    u.add_argument("--address")
    u.add_argument("overrides", nargs="*",
                   help=f"changes in {list(api.RESUMABLE)} only, e.g. final.epochs=20")  # fmt: skip
    u.set_defaults(fn=cmd_resume)

    st = sub.add_parser("status", help="print a run's stages and trials as a table")
    st.add_argument("run_dir")
    st.add_argument("--watch", action="store_true",
                    help="refresh until the run ends (complete, failed or interrupted)")  # fmt: skip
    st.add_argument("--interval", type=float, default=5.0, help="seconds between refreshes")
    st.set_defaults(fn=cmd_status)

    rp = sub.add_parser("report", help="write report.md and report.html (and analysis.json)")
    rp.add_argument("run_dir")
    _add_data(rp, "where the run's data is now, if it moved")
    rp.add_argument("--no-test", action="store_true",
                    help="skip scoring the top configs on the test set")  # fmt: skip
    rp.set_defaults(fn=cmd_report)
    return p


# ---------------------------------------------------------------- logging and signals


class NoTunerRestoreHint(logging.Filter):
    """Drops Tune's 'resume with Tuner.restore(...)' advice (`liquid-search resume` is ours) and
    its list of the trials that did not complete (our lines say which and why)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return "Tuner.restore(" not in text and "Trials did not complete" not in text


class NotReportedYet(logging.Filter):
    """Drops Tune's 'Failed to fetch metrics for N trial(s)' when every one of them is a trial
    that had not reported yet (neither result.json nor progress.csv exists); any other failure
    to read a trial's metrics still shows."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if not text.startswith("Failed to fetch metrics for"):
            return True
        failures = [ln for ln in text.splitlines()[1:] if ln.startswith("- ")]
        return not failures or not all("were not found at" in ln for ln in failures)


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


class StorageNoise(logging.Filter):
    """Drops Ray's and Tune's own reports of a failing storage (a sync or a snapshot that could
    not be written, a trial whose checkpoint could not be saved): `liquid-search` ends the run
    with one line that says it (`search.errors.StorageFault`). --verbose keeps them."""

    SIGNS = ("no space left", "read-only file system", "aws error", "sync operation failed",
             "last sync command failed", "saving experiment state to storage",
             "trial controller checkpointing failed", "when uploading", "when writing",
             "when deleting", "when creating", "when listing", "errno 28", "errno 30")  # fmt: skip

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if exc is not None and storage_error(exc) is not None:
            return False
        text = record.getMessage().lower()
        return not any(sign in text for sign in self.SIGNS)


def setup_logging() -> None:
    """Our progress lines go to stderr, as plain lines (Ray's own: see `connect.init`)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("liquid_search")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO)
    ours.propagate = False


class _Stop:
    """How this process stops on Ctrl-C or SIGTERM: the first stops the run where it is
    (KeyboardInterrupt; during a stage Tune takes the SIGINT itself and stops its trials,
    saving their state); once stopping, the next one ends the process at once. SIGTERM is
    turned into that same SIGINT. `run_path`, once known, goes into the line that says how to
    resume."""

    def __init__(self) -> None:
        self.run_path: str | None = None
        self.stopping = False
        self.how = "Ctrl-C"

    def install(self) -> None:
        signal.signal(signal.SIGINT, self.on_sigint)
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def started(self, run_path: str) -> None:
        """The run is about to start: note its path; take SIGTERM back from Ray, whose
        ray.init installs a handler that exits at once."""
        self.run_path = run_path
        signal.signal(signal.SIGTERM, self.on_sigterm)

    def on_sigterm(self, signum: int, frame: Any) -> None:
        self.how = "SIGTERM"
        signal.raise_signal(signal.SIGINT)

    def on_sigint(self, signum: int, frame: Any) -> None:
        if self.stopping:
            print(f"error: stopped at once on a second {self.how}" + self.resume_hint(),
                  file=sys.stderr)  # fmt: skip
            os._exit(130)
        self.stopping = True
        raise KeyboardInterrupt

    def resume_hint(self) -> str:
        if self.run_path is None:
            return "."
        return f". Fix: `liquid-search resume {self.run_path}` continues it."


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging()
    # Tune's own progress tables repeat what our one line per trial says.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    stop = args.stop = _Stop()
    stop.install()
    try:
        return args.fn(args)
    except Interrupted as e:
        stop.stopping = True  # a Ctrl-C while Ray shuts down ends the process at once
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        stop.stopping = True
        print(f"error: interrupted ({stop.how})" + stop.resume_hint(), file=sys.stderr)
        return 130
    except api.USER_ERRORS as e:
        print(f"error: {e}", file=sys.stderr)
        return getattr(e, "exit_code", 2)


if __name__ == "__main__":
    sys.exit(main())

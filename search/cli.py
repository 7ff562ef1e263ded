"""`liquid-search`: the one command line.

liquid-search synth OUT_DIR [--scale F] [--seed S]        write a synthetic market
liquid-search train [--data DIR|URI] [key=value ...]      one training run, no Ray
liquid-search run [--config F] [--data DIR|URI] [--address ADDR] [--storage PATH|URI]
                  [--name N] [key=value ...]             the staged search
liquid-search stage NAME --run RUN_DIR [--continue]       rerun one stage
liquid-search resume RUN_DIR                              continue an interrupted run
liquid-search status RUN_DIR                              stages and trials as a table
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict
from typing import Any

_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_INSTALLED_CONFIGS = os.path.join(sys.prefix, "share", "liquid-search", "configs")
CONFIG_DIR = _REPO_CONFIGS if os.path.isdir(_REPO_CONFIGS) else _INSTALLED_CONFIGS
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "search.yaml")


def _say(msg: str) -> None:
    print(msg, flush=True)


def _default_config() -> str:
    if not os.path.exists(DEFAULT_CONFIG):
        raise SystemExit(
            f"the bundled spec {DEFAULT_CONFIG} is missing; pass --config with a search spec "
            f"(see configs/search.yaml in the repository)"
        )
    return DEFAULT_CONFIG


# ---------------------------------------------------------------- synth


def cmd_synth(args: argparse.Namespace) -> int:
    from ranker.synth import generate

    t0 = time.time()
    info = generate(args.out_dir, scale=args.scale, seed=args.seed, signal=args.signal,
                    n_symbols=args.n_symbols, n_dates=args.n_dates, log=_say)  # fmt: skip
    _say(json.dumps(info, indent=2, default=str))
    _say(f"wrote {args.out_dir} in {time.time() - t0:.0f}s")
    return 0


# ---------------------------------------------------------------- train


def cmd_train(args: argparse.Namespace) -> int:
    import torch

    from ranker import checkpoint
    from ranker.costs import CostModel, cost_metrics
    from ranker.data import load
    from ranker.metrics import daily, summarize
    from ranker.train import fit, score
    from search import spec as specmod
    from search.driver import data_source

    sp = specmod.load(args.config or _default_config(), args.overrides, require_stages=False)
    source = data_source(sp, args.data, _say)
    torch.set_num_threads(args.threads)
    ds = load(source, sp.universe, sp.split, log=_say)
    _say(f"training {sp.train.epochs} epochs on {len(ds.train):,} rows ({args.threads} thread(s))")
    result = fit(sp.model, sp.train, ds.train, ds.val, log=_say)
    d = daily(ds.test.bounds, score(result.model, ds.test), ds.test.returns, k=sp.train.k)
    out: dict[str, Any] = {
        "val": result.metrics,
        "test": summarize(d),
        "best_epoch": result.best_epoch,
        "seconds": round(result.seconds, 2),
        "costs": cost_metrics(d, ds.test.symbol_ids, CostModel(**asdict(sp.costs))),
        "rows": {"train": len(ds.train), "val": len(ds.val), "test": len(ds.test)},
    }
    if ds.test.oracle is not None:
        od = daily(ds.test.bounds, ds.test.oracle, ds.test.returns, k=sp.train.k)
        out["oracle_test"] = {
            "mean_ic": summarize(od)["mean_ic"],
            "ic_sharpe": summarize(od)["ic_sharpe"],
        }
    if args.out:
        checkpoint.save(args.out, result.model, ds.columns, train_config=sp.train.to_dict(),
                        universe=sp.universe.to_dict(),
                        metrics={"val": out["val"], "test": out["test"]})  # fmt: skip
        out["checkpoint"] = os.path.abspath(args.out)
    print(json.dumps(out, indent=2))
    return 0


# ---------------------------------------------------------------- run / stage / resume


def _storage_run_dir(sp: Any, storage: str | None, name: str | None) -> str:
    from search import store

    root = store.absolute(storage or sp.storage)
    run_name = name or sp.name or time.strftime("run-%Y%m%d-%H%M%S")
    return store.join(root, run_name)


def cmd_run(args: argparse.Namespace) -> int:
    from search import spec as specmod

    sp = specmod.load(args.config or _default_config(), args.overrides)  # fails before ray.init
    run_dir = _storage_run_dir(sp, args.storage, args.name)
    from search import connect, driver, store

    if store.exists(store.join(run_dir, driver.SPEC_FILE)):
        raise SystemExit(
            f"{run_dir} already holds a run. Fix: `liquid-search resume {run_dir}` to continue "
            f"it, or pass another --name."
        )
    connect.init(args.address, _say)
    connect.check_storage(run_dir)
    _say(f"run directory: {run_dir}")
    driver.run(sp, run_dir, source=args.data, log=_say)
    return 0


def cmd_stage(args: argparse.Namespace) -> int:
    from search import connect, driver, store

    run_dir = store.absolute(args.run)
    sp = driver.load_spec(run_dir)
    names = [s.name for s in sp.stages]
    if args.name not in names:
        raise SystemExit(f"no stage {args.name!r} in {run_dir}; its stages are {names}")
    idx = names.index(args.name)
    for prev in names[:idx]:
        if not store.exists(store.join(run_dir, prev, "best.json")):
            raise SystemExit(
                f"stage {args.name!r} starts from the best of {prev!r}, which has not finished "
                f"in {run_dir}. Fix: `liquid-search resume {run_dir}` first."
            )
    connect.init(args.address, _say)
    connect.check_storage(run_dir)
    source = args.data or driver.read_run(run_dir)["source"]
    rerun = names[idx:] if args.cont else [args.name]
    driver.run(sp, run_dir, source=source, rerun=rerun,
               stop_after=None if args.cont else args.name, log=_say)  # fmt: skip
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from search import connect, driver, store

    run_dir = store.absolute(args.run_dir)
    if not store.exists(store.join(run_dir, driver.SPEC_FILE)):
        raise SystemExit(f"{run_dir}: no {driver.SPEC_FILE} here, so it is not a run directory")
    sp = driver.load_spec(run_dir)
    connect.init(args.address, _say)
    connect.check_storage(run_dir)
    source = args.data
    if source is None and store.exists(store.join(run_dir, driver.RUN_FILE)):
        source = driver.read_run(run_dir)["source"]
    driver.run(sp, run_dir, source=source, log=_say)
    return 0


# ---------------------------------------------------------------- status


def cmd_status(args: argparse.Namespace) -> int:
    from search.status import render

    print(render(args.run_dir))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from search import store
    from search.analysis import analyze, load_spec, load_test_panel
    from search.report import write_report

    run_dir = store.absolute(args.run_dir)
    if not args.no_test:
        analyze(run_dir, load_test_panel(run_dir, args.data), load_spec(run_dir).train.k)
    md, html = write_report(run_dir)
    _say(f"wrote {md} and {html}")
    return 0


# ---------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="liquid-search",
        description="Staged hyperparameter search for a liquid-universe stock ranker on Ray Tune.",
    )
    sub = p.add_subparsers(dest="cmd", required=True)

    s = sub.add_parser("synth", help="write a synthetic market in the dataset's schema")
    s.add_argument("out_dir")
    s.add_argument("--scale", type=float, default=1.0, help="1.0 ~ 2.09M rows, 5,644 symbols")
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
    t.add_argument("--out", help="write the trained model's checkpoint here")
    t.add_argument(
        "overrides", nargs="*", help="dotted key=value, e.g. train.epochs=5 model.news_alpha=1.0"
    )
    t.set_defaults(fn=cmd_train)

    r = sub.add_parser("run", help="run the staged search, the final model and the test set")
    r.add_argument("--config", help=f"search spec (default {DEFAULT_CONFIG})")
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


def main(argv: list[str] | None = None) -> int:
    from ranker.data import DataError
    from search.spec import SpecError

    args = build_parser().parse_args(argv)
    # Tune's own tables and per-checkpoint warnings drown the one line per trial we print.
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    try:
        return args.fn(args)
    except (SpecError, DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

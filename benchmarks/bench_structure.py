"""Benchmark: is there something for the search to find on a synthetic market structure?

    python benchmarks/bench_structure.py [--structure tuned] [--seeds 3] [--epochs 15]
                                         [--extra STAGE:KEY=V,...[+STAGE:...] ...] [--data DIR]

Without Ray, on one torch thread: generates the market of `configs/search.yaml`'s `data.synth`
(scale 0.27, seed 0, signal 1.0) with `structure` (once, cached under the spec's `cache_dir` as
the search caches its market; `--data` takes a market already on disk), loads it with the
spec's universe and split, and trains the spec's base config (its `model:` and `train:`
sections) and the configs the three stages of the grid are expected to pick, each applied on
the one before as the search chains them (`search.spec.resolve_point`; every point is checked
to be a point of its stage's grid): stage 1 the architecture from the base, stage 2 the
training knobs on top, stage 3 the dropouts on top. Each config is trained with the search's
seeds (0, 1000, 2000: `search.spec.replicate_seed`) and the spec's epochs, and scored with
`ranker.backtest.backtest(panel, score(model, panel), k)`.

Prints one line per training run, then per config the val and test mean IC as mean ± std over
seeds (std with ddof=1), and the test mean IC of each config minus the base's with its Welch
standard error, sqrt(s_c^2 / n_c + s_b^2 / n_b), and their ratio; the planted oracle's IC on
the same rows is the ceiling. `--extra architecture:latent_scale=0.5+dropout:news_dropout=0.3`
adds a variant of the chain: those values in those stages' points, cut after the last stage
named (another path the search may take through configs that tie).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from dataclasses import dataclass, replace

import numpy as np
import torch
import yaml

from ranker import synth
from ranker.backtest import backtest
from ranker.data import Dataset, load
from ranker.model import ModelConfig
from ranker.train import TrainConfig, fit, score
from search import spec as specmod
from search.source import market_dir

# What each stage of configs/search.yaml is expected to pick on the "tuned" market (see
# ranker/synth.py's docstring for why), as full grid points of the stage.
EXPECTED: tuple[tuple[str, dict[str, float]], ...] = (
    ("architecture", {"latent_scale": 2.0, "hidden_scale": 1.5, "news_alpha": 0.8}),
    ("training", {"learning_rate": 2.0e-3, "weight_decay": 1.0e-3, "label_smoothing": 0.1}),
    ("dropout", {"fund_dropout": 0.3, "price_dropout": 0.3, "news_dropout": 0.1}),
)


@dataclass(frozen=True)
class Candidate:
    """A config to train: the base with grid points applied stage by stage."""

    name: str
    model: ModelConfig
    train: TrainConfig


@dataclass
class Runs:
    """One candidate's metrics, one entry per seed."""

    val: list[float]
    val_sharpe: list[float]
    test: list[float]


def ensure_market(spec: specmod.SearchSpec) -> str:
    """The spec's synthetic market on disk: generated once, then reused (its synth.json must
    name the same parameters)."""
    s = spec.data.synth
    path = market_dir(spec)
    summary = os.path.join(path, synth.SUMMARY_FILE)
    want = {"scale": s.scale, "seed": s.seed, "signal": s.signal, "liquidity": s.liquidity,
            "structure": s.structure}  # fmt: skip
    if os.path.exists(summary):
        with open(summary) as f:
            params = json.load(f)["params"]
        got = {k: params.get(k, "simple" if k == "structure" else None) for k in want}
        if got != want:
            raise SystemExit(f"{path} holds a market with {got}, expected {want}: remove it")
        return path
    print(f"generating the {s.structure!r} market into {path} ...", flush=True)
    t0 = time.perf_counter()
    synth.generate(path, scale=s.scale, seed=s.seed, signal=s.signal, n_symbols=s.n_symbols,
                   n_dates=s.n_dates, liquidity=s.liquidity, structure=s.structure,
                   force=True)  # fmt: skip
    print(f"generated in {time.perf_counter() - t0:.0f}s", flush=True)
    return path


def chain(
    spec: specmod.SearchSpec, points: tuple[tuple[str, dict[str, float]], ...]
) -> list[Candidate]:
    """The base and the config after each stage's point, applied on the config before it."""
    model, train = spec.model, spec.train
    out = [Candidate("base", model, train)]
    for number, (stage_name, point) in enumerate(points, 1):
        stage = spec.stage(stage_name)
        if set(point) != set(stage.grid) or not stage.contains(point):
            raise SystemExit(f"{point} is not a point of stage {stage_name!r}: {stage.grid}")
        model, train = specmod.resolve_point(spec, model, train, point)
        text = " ".join(f"{k}={v:g}" for k, v in point.items())
        out.append(Candidate(f"stage {number} ({stage_name}): {text}", model, train))
    return out


def variant(spec: specmod.SearchSpec, text: str) -> Candidate:
    """`STAGE:KEY=V,...[+STAGE:KEY=V,...]` as a candidate: EXPECTED with those values in those
    stages' points, cut after the last stage named."""
    names = [name for name, _ in EXPECTED]
    points = [dict(point) for _, point in EXPECTED]
    last = 0
    for part in text.split("+"):
        stage_name, _, assigns = part.partition(":")
        if stage_name not in names:
            raise SystemExit(f"--extra {text!r}: a stage must be one of {names}")
        at = names.index(stage_name)
        for assign in assigns.split(","):
            key, _, value = assign.partition("=")
            if key not in points[at]:
                raise SystemExit(f"--extra {text!r}: {key!r} is not a key of {stage_name}")
            points[at][key] = float(yaml.safe_load(value))
        last = max(last, at)
    path = chain(spec, tuple(zip(names, points, strict=True))[: last + 1])
    text = "; ".join(c.name.partition(": ")[2] for c in path[1:])
    return Candidate(f"variant: {text}", path[-1].model, path[-1].train)


def describe(cand: Candidate) -> str:
    """The searched fields of a candidate's configs, on one line."""
    m, t = cand.model, cand.train
    return (f"hidden/latent fund {m.fund_hidden}/{m.fundamental_latent} price "
            f"{m.price_hidden}/{m.price_latent} news {m.news_hidden}/{m.news_latent}, "
            f"news_alpha {m.news_alpha:g}, dropout fund/price/news {m.fundamental_dropout:g}/"
            f"{m.price_dropout:g}/{m.news_dropout:g}; lr {t.learning_rate:g}, weight decay "
            f"{t.weight_decay:g}, label smoothing {t.label_smoothing:g}, {t.epochs} epochs")  # fmt: skip


def train_and_score(ds: Dataset, cand: Candidate, seeds: list[int], k: int) -> Runs:
    """Train `cand` once per seed (its best val state restored, as in a trial) and score it on
    val and test, printing a line per seed."""
    runs = Runs([], [], [])
    for seed in seeds:
        t0 = time.perf_counter()
        result = fit(cand.model, replace(cand.train, seed=seed), ds.train, ds.val)
        val = backtest(ds.val, score(result.model, ds.val), k).metrics
        test = backtest(ds.test, score(result.model, ds.test), k).metrics
        runs.val.append(val["mean_ic"])
        runs.val_sharpe.append(val["ic_sharpe"])
        runs.test.append(test["mean_ic"])
        print(f"  seed {seed:4d}: val mean IC {val['mean_ic']:+.4f} (IC sharpe "
              f"{val['ic_sharpe']:5.2f}), test mean IC {test['mean_ic']:+.4f}, best epoch "
              f"{result.best_epoch:2d}, {time.perf_counter() - t0:4.0f}s", flush=True)  # fmt: skip
    return runs


def mean_sd(x: list[float]) -> str:
    """`mean ± std` (ddof=1; the mean alone for one seed)."""
    return f"{np.mean(x):+.4f} ± {np.std(x, ddof=1):.4f}" if len(x) > 1 else f"{x[0]:+.4f}"


def welch(c: list[float], b: list[float]) -> tuple[float, float]:
    """(mean(c) - mean(b), its Welch standard error; NaN with one seed)."""
    diff = float(np.mean(c) - np.mean(b))
    if min(len(c), len(b)) < 2:
        return diff, math.nan
    return diff, math.sqrt(np.var(c, ddof=1) / len(c) + np.var(b, ddof=1) / len(b))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default=specmod.DEFAULT_CONFIG)
    ap.add_argument("--structure", default="tuned", choices=synth.STRUCTURES)
    ap.add_argument("--seeds", type=int, default=3, help="replicates of each config")
    ap.add_argument("--epochs", type=int, default=None, help="default: the spec's train.epochs")
    ap.add_argument("--extra", nargs="*", default=[], metavar="STAGE:KEY=V,...")
    ap.add_argument("--data", default=None, help="a market on disk instead of the cached one")
    args = ap.parse_args()
    torch.set_num_threads(1)

    overrides = [f"data.synth.structure={args.structure}"]
    if args.epochs is not None:
        overrides.append(f"train.epochs={args.epochs}")
    spec = specmod.load(args.config, overrides)
    path = args.data or ensure_market(spec)
    t0 = time.perf_counter()
    ds = load(path, spec.universe, spec.split, threads=False)
    print(f"market {path}: train {len(ds.train):,} rows, val {len(ds.val):,} "
          f"({ds.val.n_dates} dates), test {len(ds.test):,} ({ds.test.n_dates} dates), loaded "
          f"in {time.perf_counter() - t0:.0f}s", flush=True)  # fmt: skip
    k = spec.train.k
    for name in ("val", "test"):
        panel = getattr(ds, name)
        if panel.oracle is not None:
            print(
                f"oracle {name} mean IC {backtest(panel, panel.oracle, k).oracle['mean_ic']:+.4f}"
            )

    seeds = [specmod.replicate_seed(spec.train.seed, r) for r in range(args.seeds)]
    cands = chain(spec, EXPECTED) + [variant(spec, text) for text in args.extra]
    results = {}
    for cand in cands:
        print(f"{cand.name}\n  {describe(cand)}", flush=True)
        results[cand.name] = train_and_score(ds, cand, seeds, k)

    base = results["base"]
    print(f"\nstructure {args.structure!r}, {len(seeds)} seeds {seeds}, "
          f"{spec.train.epochs} epochs; mean ± std over seeds")  # fmt: skip
    width = max(len(name) for name in results)
    print(f"{'config':{width}s} {'val mean IC':>16s} {'val IC sharpe':>14s} {'test mean IC':>16s} "
          f"{'test - base':>12s} {'Welch SE':>9s} {'/SE':>6s}")  # fmt: skip
    for name, r in results.items():
        diff, se = welch(r.test, base.test)
        ratio = diff / se if se > 0 else math.nan
        tail = "" if r is base else f"{diff:+12.4f} {se:9.4f} {ratio:6.1f}"
        print(f"{name:{width}s} {mean_sd(r.val):>16s} {np.mean(r.val_sharpe):14.2f} "
              f"{mean_sd(r.test):>16s} {tail}")  # fmt: skip


if __name__ == "__main__":
    main()

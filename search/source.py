"""The run's data: where it comes from (a directory or URI, or the cached synthetic market) and
loading it with the spec's universe and split. No Ray here: `liquid-search train` uses it, and
the driver loads the data before Ray starts, so bad input ends a run before anything is written.
"""

from __future__ import annotations

import logging
import os

from ranker import synth
from ranker.data import Dataset, load
from ranker.folds import Folds, load_folds
from search.spec import SearchSpec

log = logging.getLogger("liquid_search")


def market_dir(spec: SearchSpec) -> str:
    """Where the cached synthetic market of the spec's `data.synth` lives: one directory per
    set of generator parameters (the defaults left out of its name)."""
    s = spec.data.synth
    tag = f"synth-scale{s.scale:g}-seed{s.seed}-signal{s.signal:g}"
    if s.n_symbols:
        tag += f"-sym{s.n_symbols}"
    if s.n_dates:
        tag += f"-dates{s.n_dates}"
    for value, default in ((s.liquidity, "static"), (s.structure, "simple")):
        if value != default:
            tag += f"-{value}"
    return os.path.join(os.path.expanduser(spec.data.cache_dir), tag)


def data_source(spec: SearchSpec, override: str | None = None) -> str:
    """The data directory/URI: --data, spec.data.source, or the cached synthetic market
    (generated on first use)."""
    source = override if override is not None else spec.data.source
    if source is not None:
        return source
    s = spec.data.synth
    path = market_dir(spec)
    if not os.path.exists(os.path.join(path, synth.SUMMARY_FILE)):
        log.info(f"generating the synthetic market into {path} (once; cached for later runs)")
        # The cache is ours: a half-written market left by an interrupted generation is replaced.
        synth.generate(path, scale=s.scale, seed=s.seed, signal=s.signal, n_symbols=s.n_symbols,
                       n_dates=s.n_dates, log=log.info, force=True,
                       liquidity=s.liquidity, structure=s.structure)  # fmt: skip
    return path


def load_data(
    spec: SearchSpec, source: str, *, baseline: bool | None = None, compare: bool = True
) -> Dataset:
    """Load and check the run's data (before Ray starts: bad input ends here, writing nothing).

    Args:
        baseline: also build the full universe's training split (default: the spec's
            final.baseline).
        compare: also build the test split under every universe rule, and the rules' liquid
            sets over time, to report what each rule claims.

    Raises:
        DataError: the data is missing or bad (the message names the file, column and fix).
    """
    full = spec.final.baseline if baseline is None else baseline
    return load(source, spec.universe, spec.split, full_universe=full, log=log.info,
                bf16=spec.train.precision == "bf16", compare_universes=compare)  # fmt: skip


def load_folds_data(spec: SearchSpec, source: str, *, compare: bool = True) -> Folds:
    """`load_data` for a walk-forward spec: the data once, cut into its folds.

    Raises:
        DataError: the data is missing or bad, or a fold has too few dates or names.
    """
    return load_folds(source, spec.universe, spec.walk_forward, news_only=spec.split.news_only,
                      full_universe=spec.final.baseline, compare_universes=compare,
                      log=log.info, bf16=spec.train.precision == "bf16")  # fmt: skip

"""Built-in synthetic market: a seeded stand-in for the research data with a planted signal.

`generate(out_dir)` writes `ml_dataset.pqt`, `prices.pqt`, `oracle.pqt` and `synth.json` in the
research notebook's schema. At `scale=1.0` it is about the size of the real data (≈2.1M rows,
5,644 symbols of which ≈1,000 are liquid at the $50M rule, ≈1,240 NYSE-like trading days from
2021-01-13 to 2025-12-18); `n_symbols` / `n_dates` make tiny test markets.

How the market is simulated
---------------------------
Every symbol has a latent liquidity class (18% liquid). The class sets its mean dollar volume
(liquid ≥ $50M·e^0.3, illiquid ≤ $50M·e^-0.3, so the notebook's full-period $50M rule recovers
the class), its volatility (≈1.6%/day vs ≈3%/day), its news rate (≈1/3 vs ≈1/4 of rows) and its
lifetime (liquid names span most of the period; illiquid ones list and delist, so the liquid
≈18% of symbols give ≈52% of rows). Prices start 80 trading days before a symbol's first feature
date and end the day after its last one.

The simulation runs day by day over all symbols. On feature date d the stored features are
computed from information up to the close of d and z-scored across the symbols present on d
(clipped at ±5, float32): the nine price features from the symbol's own close path, 19
fundamentals from slow AR(1) latents with a size/value/quality/growth factor structure (size,
hence market_cap_z, correlates 0.4 with log dollar volume), `news_count_z` from log1p(article
count), and on news rows a unit-norm embedding

    e = normalise(0.45·m + 0.45·t_sector + 0.3·t_other + 0.25·U'h + noise),  h ~ N(0, I_3)

(a direction shared by all news, 24 topic directions, three hidden orthonormal "signal"
directions U, isotropic noise of norm 0.6): real sentence embeddings' low-rank structure, mean
cosine similarity ≈0.2. Rows without news have an all-zero embedding.

`target_return`, the log return from the close of d to the close of d+1, is

    r = mu + beta·m_d + sigma·v_d·(1.3 if news else 1)·eps,   eps ~ t(4)/sqrt(2),

with m_d a fat-tailed market return (≈1%/day) and v_d a slow market volatility regime. `mu`, the
planted expected log return written to `oracle.pqt`, is a function of the row's stored features
and its latent class only (c(x) = clip(x, -3, 3); s = +1 illiquid, -1 liquid):

    P = 0.5·c(ret_1d_z) + 0.5·c(ret_5d_z)           (liquid: continuation)
    P = -0.7·c(ret_1d_z) - 0.3·c(ret_3d_z)          (illiquid: short-term reversal)
    F = 0.6·tanh(fcf_yield_z) + s·0.6·tanh(roe_z·revenue_growth_z)
        - 0.5·(max(debt_to_equity_z - 1, 0) - 0.083)
    N = tanh(1.5·z_1) + s·0.8·c(z_2·z_3),  z_j = (e·u_j) / sd(e·u_j)   (0 without news)
    mu = signal · k · (P + F + 0.8·N),  k = 0.0007 liquid, 0.0016 illiquid

The price pattern inverts between the classes and so do the quality-growth and the news
interactions, while the value, leverage and news-sentiment effects are shared: a model fitted on
all stocks learns a compromise that ranks the liquid names worse than one fitted on them alone.
With `signal=1` the mean daily Spearman IC of mu against the realised return is ≈0.045 on liquid
news rows and ≈0.055 on illiquid ones; `signal` scales mu (≈0.17 on liquid news rows at
`signal=4`). The exact values are in `synth.json`, computed as the backtests compute the
oracle's (`ranker.metrics.evaluate_bounds`: average ranks, dates with 10+ names): on every date,
and (`oracle`) on the train, val and test rows of the default pipeline, so `oracle.test` is
the report's oracle figure on the same market.

A market whose liquidity moves (`liquidity="moving"`)
-----------------------------------------------------
The static market above keeps every symbol's liquidity constant, so the notebook's full-period
$50M rule and the point-in-time rule (the trailing 60 days) keep the same names. The moving
market adds movers, half of the liquid class, drawn from a stream of their own (everything else
is the static market's, byte for byte, and the static market does not change):

- risers start below $50M and grow (log dollar volume +2.5..4 over the period), crossing the
  threshold between 5% and 60% of the way through: their whole-period mean clears $50M, so the
  full-period rule keeps them from the start, the point-in-time rule only once they have grown;
- fallers do the reverse, crossing between 35% and 85% of the way: the full-period rule keeps
  them after they have dropped out.

The planted relation that makes looking ahead pay: a riser earns `signal · 0.0015` a day of extra
expected log return until it crosses ("growing companies earn more before they are big"), and a
faller loses as much after it has crossed; both show it in their stored growth numbers (revenue
and earnings growth latents shifted by ±1.5 while it lasts), and the oracle includes it. A model
fitted on the full-period universe learns it and, tested on that universe, is scored partly on
names no one could have known were in it: the full-period test metrics exceed the point-in-time
ones. `synth.json` names every mover, its kind and the date it crosses (`summary.movers`).

A market where the hyperparameters matter (`structure="tuned"`)
---------------------------------------------------------------
On the market above (`structure="simple"`, the default) the signal is weak and smooth, and the
notebook's base config (`configs/search.yaml`'s `model:` and `train:`) fits about all of it that
the training rows show: no point of the search's grid is clearly better, so a search has
nothing to find. The tuned market keeps the symbols, classes, lifetimes, volumes, news rows and
embeddings of the same seed (the same draws from the same streams) and plants a stronger signal
that lives mostly in products of fundamentals (x_a the stored z-scores):

    G = sum of tanh(x_a·x_b) over the 12 pairs TUNED_FUND_PAIRS
        (no two features of a pair load on a common factor; none is one of F's)
    H = sum of tanh(x_a·x_b) over the 4 pairs of price features TUNED_PRICE_PAIRS
    mu = signal · k · (P + F + 0.2·N - s·(1.5·G + H)),  k = 0.0015 liquid, 0.0034 illiquid

(the products invert between the classes like the simple market's interactions; the news keeps
a quarter of its weight). Its fundamentals also move fast: 80% of each one's variance is the
AR(1) part, with a daily coefficient of 0.5, so a name's fundamentals correlate ≈0.6 from one
day to the next (≈0.998 in the simple market). With slow ones a name's planted return persists
for months and shows in its own past returns, a proxy every config fits at once (in a version
with slow fundamentals, ret_5d_z alone ranked the val rows with a mean IC of ≈0.23, the
oracle's ≈0.33, and only the dropout stage found much); fast ones make each row a fresh draw
of the products, to be learned from the fundamentals. With `signal=1` the
oracle's mean daily IC is ≈0.24 on liquid news rows and ≈0.29 on illiquid ones; `synth.json`
lists the pairs and weights (`summary.tuned`). It composes with `liquidity="moving"` (the
movers, their premium and their growth shift are added as on the simple market).

What each stage of `configs/search.yaml` should pick there, and why. The numbers are mean IC
over 3 seeds at scale 0.27 (`benchmarks/bench_structure.py`): the base config scores ≈0.135
on val and ≈0.10 on test, the oracle ≈0.30 and ≈0.22.

- architecture: hidden_scale 1.5 (val +0.02, test +0.014). The products need many hidden units
  in the fundamental encoder, and under its 0.6 dropout only 40% of them are active in a step:
  96 units fit them better than 64. latent_scale and news_alpha hardly matter (each branch
  hands the head about one number; the news a weak one), so any of the nine hidden_scale 1.5
  points may win.
- training: learning_rate 2e-3 (val +0.025, test +0.022). The signal is strong and the rows
  many, so 15 epochs at 1e-3 underfit it. Weight decay (AdamW shrinks the weights by lr·wd a
  step, ≤2% over a run) and label smoothing (Adam normalises away the gradient scale it
  changes) hardly matter.
- dropout: fund_dropout 0.3 (val +0.04, test +0.036): less of the products is averaged away in
  training. Price and news dropout hardly matter.

All three together: val ≈0.22, test ≈0.17, a test gain of ≈0.07 over the base config, about 10
Welch standard errors over 3 seeds (≈0.075 with 25 epochs, as the final phase trains, on 2).

Determinism: all randomness comes from `np.random.default_rng([seed, stream, t])` streams (static
market properties, and one stream per simulated day), so a seed fixes every byte of the output.
The output is streamed in chunks of dates through `pyarrow.parquet.ParquetWriter` (one row group
per chunk), written under temporary names and renamed into place only when complete.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ranker import storage
from ranker.metrics import MIN_NAMES, evaluate_bounds
from ranker.schema import (
    CLOSE,
    DATASET_FILE,
    DATE,
    EMB_PREFIX,
    NEWS_COUNT,
    ORACLE,
    ORACLE_FILE,
    PRICE_DATE,
    PRICE_FEATURES,
    PRICES_FILE,
    SYMBOL,
    TARGET,
    VOLUME,
)
from ranker.split import SplitConfig, split_dates
from ranker.universe import LIQUID_THRESHOLD, UniverseConfig, full_period_liquid, liquid_rows

SUMMARY_FILE = "synth.json"

FUND_FEATURES: tuple[str, ...] = (
    "pe_ratio_z",
    "pb_ratio_z",
    "ps_ratio_z",
    "ev_ebitda_z",
    "roe_z",
    "roa_z",
    "gross_margin_z",
    "operating_margin_z",
    "net_margin_z",
    "debt_to_equity_z",
    "current_ratio_z",
    "revenue_growth_z",
    "earnings_growth_z",
    "fcf_yield_z",
    "dividend_yield_z",
    "market_cap_z",
    "beta_z",
    "asset_turnover_z",
    "interest_coverage_z",
)
# Loadings of each fundamental on the (size, value, quality, growth) factors; the rest of its
# unit variance is idiosyncratic.
_FUND_LOADINGS = np.array(
    [
        [0.0, -0.6, 0.0, 0.3],  # pe_ratio
        [0.0, -0.6, 0.3, 0.0],  # pb_ratio
        [0.0, -0.5, 0.0, 0.4],  # ps_ratio
        [0.0, -0.6, 0.0, 0.0],  # ev_ebitda
        [0.0, 0.0, 0.7, 0.0],  # roe
        [0.0, 0.0, 0.6, 0.0],  # roa
        [0.0, 0.0, 0.5, 0.0],  # gross_margin
        [0.0, 0.0, 0.6, 0.0],  # operating_margin
        [0.0, 0.0, 0.6, 0.0],  # net_margin
        [0.0, 0.0, -0.3, 0.0],  # debt_to_equity
        [0.0, 0.0, 0.2, 0.0],  # current_ratio
        [0.0, 0.0, 0.0, 0.7],  # revenue_growth
        [0.0, 0.0, 0.2, 0.5],  # earnings_growth
        [0.0, 0.6, 0.3, 0.0],  # fcf_yield
        [0.2, 0.4, 0.0, -0.3],  # dividend_yield
        [0.9, 0.0, 0.0, 0.0],  # market_cap
        [-0.2, 0.0, 0.0, 0.3],  # beta
        [0.0, 0.0, 0.3, 0.0],  # asset_turnover
        [0.0, 0.0, 0.5, 0.0],  # interest_coverage
    ]
)
_F = {name: k for k, name in enumerate(FUND_FEATURES)}
_P = {name: k for k, name in enumerate(PRICE_FEATURES)}

SEED_SYMBOLS = 5644  # symbols at scale=1.0, as in the research data
MIN_SYMBOLS = 10  # fewer cannot hold both liquid and illiquid names
MIN_DATES = 2  # a market of one date has no next-day return to plant a signal in
LIQUID_FRACTION = 0.18
LOOKBACK = 80  # price history before a symbol's first feature date
ROWS_PER_GROUP = 65_536  # dataset rows per chunk (= parquet row group); bounds memory

# Planted signal (see the module docstring).
_K_LIQUID = 0.0007
_K_ILLIQUID = 0.0016
_NEWS_WEIGHT = 0.8
_NEWS_FLIP = 0.8
_SIZE_LIQUIDITY = 0.4  # loading of the size factor on log dollar volume
_RELU1_MEAN = 0.083  # E[max(x - 1, 0)] for x ~ N(0, 1)

# Market dynamics.
_FUND_DYN = 0.2  # share of a fundamental's variance that moves over time
_FUND_RHO = 0.99  # daily AR(1) coefficient of the moving part
_ILLIQUID_NEWS = (2.5, 7.5)  # beta distribution of an illiquid symbol's news probability
_NEWS_VOL = 1.3  # idiosyncratic vol multiplier on news days
_NEWS_VOLUME = 1.6  # volume multiplier on news days
_VOLUME_SD = 0.35  # daily log-volume noise

# News embeddings.
_N_TOPICS = 24
_N_HIDDEN = 3
_EMB_MEAN, _EMB_SECTOR, _EMB_TOPIC, _EMB_SIGNAL, _EMB_NOISE = 0.45, 0.45, 0.3, 0.25, 0.6

_STATIC_STREAM, _DAY_STREAM, _CALIBRATION_STREAM, _MOVING_STREAM = 0, 1, 2, 3

# The moving market (`liquidity="moving"`; see the module docstring).
LIQUIDITY = ("static", "moving")
_MOVER_FRACTION = 0.5  # of the liquid class: half rise into the liquid set, half fall out
_MOVER_SPAN = (2.5, 4.0)  # log change of a mover's dollar volume over the whole period
# Where in the period a mover crosses the $50M threshold: risers early enough that their
# whole-period mean clears it (the notebook's rule counts them liquid from the start), fallers
# late enough for the same (it still counts them liquid after they have dropped out).
_RISER_CROSS = (0.05, 0.6)
_FALLER_CROSS = (0.35, 0.85)
_MOVER_PREMIUM = 0.0015  # planted daily expected log return of a riser before it crosses
_MOVER_GROWTH = 1.5  # shift of a mover's growth latents (revenue and earnings growth)

# The planted relation (`structure`; see the module docstring): "simple" is the notebook-like
# weak signal; "tuned" a stronger one living in interactions, where the hyperparameters matter.
STRUCTURES = ("simple", "tuned")
_TUNED_K_LIQUID = 0.0015
_TUNED_K_ILLIQUID = 0.0034  # the simple market's ratio of the two
_TUNED_NEWS_WEIGHT = 0.2
_TUNED_FUND_WEIGHT = 1.5
_TUNED_PRICE_WEIGHT = 1.0
# (share of a fundamental's variance that moves, its daily AR(1) coefficient) in each structure.
# The tuned market's fundamentals move fast: a name's planted interactions would otherwise
# persist for months and show in its past returns, an easy linear proxy (the price features)
# for any config.
_FUND_DYNAMICS = {"simple": (_FUND_DYN, _FUND_RHO), "tuned": (0.8, 0.5)}
# The pairs of fundamentals whose products carry most of the "tuned" signal: no two features of
# a pair load on a common factor (so no product is a square of one factor in disguise), and
# none is a feature of the simple market's fundamental terms. Then four pairs of price features.
TUNED_FUND_PAIRS: tuple[tuple[str, str], ...] = (
    ("ev_ebitda_z", "roa_z"),
    ("pe_ratio_z", "gross_margin_z"),
    ("ps_ratio_z", "operating_margin_z"),
    ("pb_ratio_z", "market_cap_z"),
    ("net_margin_z", "beta_z"),
    ("current_ratio_z", "dividend_yield_z"),
    ("earnings_growth_z", "market_cap_z"),
    ("asset_turnover_z", "pe_ratio_z"),
    ("interest_coverage_z", "dividend_yield_z"),
    ("ev_ebitda_z", "current_ratio_z"),
    ("ps_ratio_z", "net_margin_z"),
    ("beta_z", "asset_turnover_z"),
)
TUNED_PRICE_PAIRS: tuple[tuple[str, str], ...] = (
    ("ret_1d_z", "vol_5d_z"),
    ("overnight_gap_z", "intraday_ret_z"),
    ("dist_from_high_5d_z", "ret_3d_z"),
    ("ret_2d_z", "dist_from_low_5d_z"),
)


def _holidays(start: np.datetime64, end: np.datetime64) -> np.ndarray:
    """US exchange holidays between two dates, close enough to give the research data's ≈1,240
    trading days (pandas' holiday rules, imported here: nothing else of this module needs
    pandas)."""
    from pandas.tseries.holiday import (
        AbstractHolidayCalendar,
        GoodFriday,
        Holiday,
        USLaborDay,
        USMartinLutherKingJr,
        USMemorialDay,
        USPresidentsDay,
        USThanksgivingDay,
        nearest_workday,
        sunday_to_monday,
    )

    class NyseLike(AbstractHolidayCalendar):
        rules = [  # noqa: RUF012 (pandas expects a plain class attribute)
            Holiday("New Year", month=1, day=1, observance=sunday_to_monday),
            USMartinLutherKingJr,
            USPresidentsDay,
            GoodFriday,
            USMemorialDay,
            Holiday(
                "Juneteenth", month=6, day=19, start_date="2022-01-01", observance=nearest_workday
            ),
            Holiday("Independence Day", month=7, day=4, observance=nearest_workday),
            USLaborDay,
            USThanksgivingDay,
            Holiday("Christmas", month=12, day=25, observance=nearest_workday),
        ]

    return NyseLike().holidays(start, end).to_numpy().astype("datetime64[D]")


@dataclass(frozen=True)
class _Market:
    """Static properties of one synthetic market; per-symbol arrays are (n,)."""

    names: tuple[str, ...]
    liquid: np.ndarray  # bool, the latent liquidity class
    adv: np.ndarray  # target mean dollar volume
    sigma: np.ndarray  # idiosyncratic daily vol
    beta: np.ndarray
    p_news: np.ndarray  # probability that a row has news
    news_rate: np.ndarray  # Poisson mean of extra articles on a news day
    sector: np.ndarray  # int, the symbol's home news topic
    log_p0: np.ndarray  # log close on the symbol's first price date
    first: np.ndarray  # int, first feature-date index
    stop: np.ndarray  # int, one past the last feature-date index
    fund_static: np.ndarray  # (19, n) permanent part of the fundamental latents
    mean_dir: np.ndarray  # (D,) float32, direction shared by all embeddings
    topics: np.ndarray  # (D, T) float32 unit topic directions
    hidden: np.ndarray  # (H, D) float64 orthonormal signal directions
    proj_sd: np.ndarray  # (H,) sd of e·u_j over news rows
    # The moving market: +1 a riser, -1 a faller, 0 neither (every symbol of a static market);
    # a mover's dollar volume is $50M·exp(trend·(i - cross)) on feature date i.
    mover: np.ndarray | None = None  # (n,) int8
    trend: np.ndarray | None = None  # (n,) log change per feature date
    cross: np.ndarray | None = None  # (n,) feature-date index where it crosses $50M
    structure: str = "simple"  # the planted relation, one of STRUCTURES


def generate(
    out_dir: str | os.PathLike,
    *,
    scale: float = 1.0,
    seed: int = 0,
    n_symbols: int | None = None,
    n_dates: int | None = None,
    signal: float = 1.0,
    emb_dim: int = 768,
    start: str = "2021-01-13",
    end: str = "2025-12-18",
    log: Callable[[str], None] | None = None,
    force: bool = False,
    liquidity: str = "static",
    structure: str = "simple",
) -> dict:
    """Write a seeded synthetic market with a planted signal into `out_dir`.

    Args:
        out_dir: folder for `ml_dataset.pqt`, `prices.pqt`, `oracle.pqt` and `synth.json`
            (created if missing). A folder that already holds any of them is refused, unless
            `force`: they may be a user's own data.
        scale: multiplies the research data's 5,644 symbols (dates stay).
        seed: fixes every byte of the output.
        n_symbols: number of symbols, overriding `scale`.
        n_dates: number of feature dates: the first `n_dates` trading days from `start`
            (`end` is then ignored). Default: the trading days from `start` to `end`.
        signal: multiplies the planted expected return (1.0 ≈ the real data's weak signal).
        emb_dim: news embedding width D (columns emb_0..emb_{D-1}).
        start, end: first and last feature date (ISO dates).
        log: called with a progress line after each chunk of dates.
        force: replace those files when they exist.
        liquidity: "static" (every symbol's liquidity constant; the universe rules agree) or
            "moving" (risers grow into the liquid set, fallers drop out; module docstring).
        structure: the planted relation: "simple" (the notebook-like weak signal) or "tuned"
            (interactions of fundamentals and of price features, on which the search grid's
            configs differ; module docstring). Static and simple: the market as before these
            switches, byte for byte.

    Returns:
        The summary also written to `synth.json`: counts, liquid symbols at the $50M rule,
        news fractions, the oracle's mean daily IC on liquid and illiquid news rows, and
        `oracle`: its figures on the train, val and test split of `ranker.data.load(out_dir)`.

    Raises:
        SynthError: a parameter is out of range, a date does not parse, `out_dir` is a file,
            or it holds data and `force` is not set.
    """
    out = Path(out_dir)
    _check_out_dir(out, force)
    n_sym, days, price_days = _check_params(
        scale, seed, n_symbols, n_dates, signal, emb_dim, start, end, liquidity, structure
    )
    params = {"scale": scale, "seed": seed, "n_symbols": n_sym, "n_dates": len(days),
              "signal": signal, "emb_dim": emb_dim, "start": str(days[0]), "end": str(days[-1]),
              "lookback": LOOKBACK, "liquid_threshold": LIQUID_THRESHOLD, "liquidity": liquidity,
              "structure": structure}  # fmt: skip
    say = log or (lambda _msg: None)
    out.mkdir(parents=True, exist_ok=True)
    market = replace(_make_market(n_sym, len(days), emb_dim, seed), structure=structure)
    if liquidity == "moving":
        market = _with_movers(market, len(days), seed)

    summary = _write_market(out, market, days, price_days, signal, seed, emb_dim, say)
    payload = {"params": params, "summary": summary}
    storage.write_text(str(out / SUMMARY_FILE), json.dumps(payload, indent=2) + "\n")
    say(
        f"synth: wrote {summary['rows']:,} rows, {summary['symbols']:,} symbols "
        f"({summary['liquid_symbols']:,} liquid) to {out}"
    )
    return summary


def _write_market(
    out: Path,
    market: _Market,
    days: np.ndarray,
    price_days: np.ndarray,
    signal: float,
    seed: int,
    emb_dim: int,
    say: Callable[[str], None],
) -> dict:
    """Simulate the market into the three parquet files under temporary names, then rename
    them into place (the old synth.json removed first: its presence marks a complete set);
    the summary of what was written. On error nothing is left behind."""
    names = (DATASET_FILE, PRICES_FILE, ORACLE_FILE)
    tmp = {name: out / f"{name}.tmp-{os.getpid()}" for name in names}
    complete = False
    try:
        with ExitStack() as stack:
            writers = {
                DATASET_FILE: _writer(tmp[DATASET_FILE], _dataset_schema(emb_dim)),
                PRICES_FILE: _writer(tmp[PRICES_FILE], _prices_schema()),
                ORACLE_FILE: _writer(tmp[ORACLE_FILE], _oracle_schema()),
            }
            for writer in writers.values():
                stack.enter_context(writer)
            stats = _simulate(market, days, price_days, signal, seed, writers, say)
        summary = _summarize(market, days, price_days, stats)
        complete = True
    finally:
        if not complete:
            for path in tmp.values():
                path.unlink(missing_ok=True)

    # The summary file marks a complete set: drop the old one before swapping the data in.
    (out / SUMMARY_FILE).unlink(missing_ok=True)
    for name in names:
        os.replace(tmp[name], out / name)
    return summary


def _check_out_dir(out: Path, force: bool) -> None:
    """Raises SynthError when `out` cannot take a market: a file, or, unless `force`, a folder
    that already holds one of the market's files."""
    if out.exists() and not out.is_dir():
        raise SynthError(f"{out} is a file, not a folder. Fix: pass a folder for the market.")
    try:
        storage.check_dir(str(out), create=True, what="folder for the market")
    except storage.StorageError as e:
        raise SynthError(str(e)) from None
    held = [n for n in (DATASET_FILE, PRICES_FILE, ORACLE_FILE, SUMMARY_FILE) if (out / n).exists()]
    if held and not force:
        raise SynthError(
            f"{out} already holds {', '.join(held)}; a market written there would replace "
            f"them. Fix: pass an empty or new folder, or --force to replace them."
        )


class SynthError(ValueError):
    """A synthetic-market parameter out of range, or an output folder that cannot take the
    market; the message names the value and the fix."""


def check_params(
    scale: float = 1.0,
    seed: int = 0,
    n_symbols: int | None = None,
    n_dates: int | None = None,
    signal: float = 1.0,
    emb_dim: int = 768,
    liquidity: str = "static",
    structure: str = "simple",
) -> list[str]:
    """Every problem with `generate`'s parameters, one message each ([] when they are fine)."""
    problems = []
    if liquidity not in LIQUIDITY:
        problems.append(f"liquidity={liquidity!r}: must be one of {list(LIQUIDITY)}")
    if structure not in STRUCTURES:
        problems.append(f"structure={structure!r}: must be one of {list(STRUCTURES)}")
    if not (isinstance(seed, int | np.integer) and not isinstance(seed, bool) and seed >= 0):
        problems.append(f"seed={seed!r}: must be a non-negative integer, e.g. 0")
    if not (isinstance(scale, int | float) and math.isfinite(scale) and scale > 0):
        problems.append(f"scale={scale!r}: must be a positive number, e.g. 0.1")
    elif n_symbols is None and round(SEED_SYMBOLS * scale) < MIN_SYMBOLS:
        problems.append(
            f"scale={scale!r} gives {round(SEED_SYMBOLS * scale)} symbols; at least "
            f"{MIN_SYMBOLS} are needed for both liquid and illiquid names: raise it to "
            f">= {MIN_SYMBOLS / SEED_SYMBOLS:.4f}"
        )
    if n_symbols is not None and not (isinstance(n_symbols, int) and n_symbols >= MIN_SYMBOLS):
        problems.append(f"n_symbols={n_symbols!r}: must be an integer >= {MIN_SYMBOLS}")
    if n_dates is not None and not (isinstance(n_dates, int) and n_dates >= MIN_DATES):
        problems.append(
            f"n_dates={n_dates!r}: must be an integer >= {MIN_DATES}, or unset for the research "
            f"period"
        )
    if not (isinstance(signal, int | float) and math.isfinite(signal) and signal >= 0):
        problems.append(f"signal={signal!r}: must be a finite number >= 0, e.g. 1.0")
    if not (isinstance(emb_dim, int) and emb_dim >= 2 * _N_HIDDEN + 2):
        problems.append(f"emb_dim={emb_dim!r}: must be an integer >= {2 * _N_HIDDEN + 2}")
    return problems


def _check_params(
    scale, seed, n_symbols, n_dates, signal, emb_dim, start, end, liquidity, structure
):
    """Validate the arguments of `generate`; return (n_symbols, feature days, price days).

    Raises:
        SynthError: every problem, in one message.
    """
    problems = check_params(scale, seed, n_symbols, n_dates, signal, emb_dim, liquidity,
                            structure)  # fmt: skip
    if problems:
        raise SynthError("; ".join(problems))
    if n_symbols is None:
        n_symbols = round(SEED_SYMBOLS * scale)
    days, price_days = _trading_days(start, end, n_dates)
    return int(n_symbols), days, price_days


def _trading_days(start: str, end: str, n_dates: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Feature dates and the price dates around them (LOOKBACK before, one after), datetime64[D]."""
    try:
        first, last = np.datetime64(start, "D"), np.datetime64(end, "D")
    except ValueError as err:
        raise SynthError(
            f"start={start!r} / end={end!r}: {err}. Fix: pass ISO dates like '2021-01-13'."
        ) from err
    if n_dates is None and last < first:
        raise SynthError(f"end={end} is before start={start}. Fix: swap them or pass n_dates.")
    span_end = first + np.timedelta64(2 * n_dates + 30, "D") if n_dates else last + 30
    span_start = first - np.timedelta64(2 * LOOKBACK + 30, "D")
    every = np.arange(span_start, span_end + 1, dtype="datetime64[D]")
    every = every[np.is_busday(every, holidays=_holidays(span_start, span_end))]
    i0 = int(np.searchsorted(every, first))
    i1 = i0 + n_dates if n_dates else int(np.searchsorted(every, last, "right"))
    if i1 <= i0:
        raise SynthError(
            f"no trading day between start={start} and end={end}. Fix: widen the range."
        )
    return every[i0:i1], every[i0 - LOOKBACK : i1 + 1]


def _make_market(n: int, n_dates: int, emb_dim: int, seed: int) -> _Market:
    """Draw the static properties of every symbol and the news embedding geometry."""
    rng = np.random.default_rng([seed, _STATIC_STREAM])
    liquid = np.zeros(n, dtype=bool)
    liquid[rng.permutation(n)[: round(LIQUID_FRACTION * n)]] = True
    # The +-0.3 log margin around the threshold keeps the $50M rule equal to the latent class.
    log_excess = np.where(liquid, 0.3 + rng.exponential(1.0, n), -0.3 - rng.exponential(1.6, n))
    adv = LIQUID_THRESHOLD * np.exp(log_excess)
    z = rng.standard_normal((4, n))
    sigma = np.where(liquid, 0.016 * np.exp(0.3 * z[0]), 0.03 * np.exp(0.35 * z[0]))
    beta = np.where(liquid, 1.0 + 0.25 * z[1], 0.8 + 0.4 * z[1])
    log_p0 = np.where(liquid, np.log(60.0) + 0.8 * z[2], np.log(12.0) + 1.0 * z[2])
    log_p0 = np.maximum(log_p0, 0.0)  # no sub-dollar listings
    p_news = np.where(
        liquid, rng.beta(3.4, 6.6, n), rng.beta(_ILLIQUID_NEWS[0], _ILLIQUID_NEWS[1], n)
    )
    news_rate = np.where(liquid, 2.0, 0.5) * np.exp(0.5 * z[3])
    sector = rng.integers(0, _N_TOPICS, n)
    first, stop = _lifetimes(liquid, n_dates, rng)

    log_adv = np.log(adv)
    liq_score = (log_adv - log_adv.mean()) / log_adv.std()
    size = _SIZE_LIQUIDITY * liq_score + math.sqrt(1 - _SIZE_LIQUIDITY**2) * rng.standard_normal(n)
    factors = np.vstack([size, rng.standard_normal((3, n))])  # (4, n)
    idio_sd = np.sqrt(1.0 - (_FUND_LOADINGS**2).sum(axis=1))
    fund_static = _FUND_LOADINGS @ factors + idio_sd[:, None] * rng.standard_normal(
        (len(FUND_FEATURES), n)
    )

    mean_dir = _unit(rng.standard_normal(emb_dim))
    topics = _unit(rng.standard_normal((emb_dim, _N_TOPICS)), axis=0)
    # Hidden directions: orthonormal, and orthogonal to the shared mean direction.
    basis, _ = np.linalg.qr(np.column_stack([mean_dir, rng.standard_normal((emb_dim, _N_HIDDEN))]))
    hidden = basis[:, 1:].T.copy()
    market = _Market(
        names=_tickers(n, rng),
        liquid=liquid,
        adv=adv,
        sigma=sigma,
        beta=beta,
        p_news=p_news,
        news_rate=news_rate,
        sector=sector,
        log_p0=log_p0,
        first=first,
        stop=stop,
        fund_static=fund_static,
        mean_dir=mean_dir.astype(np.float32),
        topics=topics.astype(np.float32),
        hidden=hidden,
        proj_sd=np.ones(_N_HIDDEN),
    )
    # Scale of the projections, from a fixed sample of news rows, so that z_j has sd ~1.
    cal = np.random.default_rng([seed, _CALIBRATION_STREAM])
    emb, _ = _news_embeddings(market, rng.integers(0, _N_TOPICS, 4096), cal)
    proj_sd = (hidden @ emb.astype(np.float64)).std(axis=1)
    return replace(market, proj_sd=proj_sd)


def _with_movers(market: _Market, n_dates: int, seed: int) -> _Market:
    """The market with movers: a share of the liquid class whose dollar volume grows into the
    liquid set (risers) or shrinks out of it (fallers), each crossing the $50M threshold once,
    on a date drawn over the period. Movers live the whole period. Drawn from a stream of their
    own, so everything else is the static market's."""
    rng = np.random.default_rng([seed, _MOVING_STREAM])
    n = len(market.names)
    candidates = np.flatnonzero(market.liquid)
    movers = rng.permutation(candidates)[: round(_MOVER_FRACTION * len(candidates))]
    mover = np.zeros(n, np.int8)
    mover[movers[: len(movers) // 2]] = 1
    mover[movers[len(movers) // 2 :]] = -1
    trend = np.zeros(n)
    trend[movers] = mover[movers] * rng.uniform(*_MOVER_SPAN, len(movers)) / max(n_dates, 1)
    cross = np.full(n, -1, np.int64)
    where = np.where(mover[movers] > 0, rng.uniform(*_RISER_CROSS, len(movers)),
                     rng.uniform(*_FALLER_CROSS, len(movers)))  # fmt: skip
    cross[movers] = np.floor(where * n_dates).astype(np.int64)
    first, stop = market.first.copy(), market.stop.copy()
    first[movers], stop[movers] = 0, n_dates
    return replace(market, mover=mover, trend=trend, cross=cross, first=first, stop=stop)


def _lifetimes(
    liquid: np.ndarray, n_dates: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """[first, stop) feature-date index of each symbol.

    Liquid names mostly span the period (some list or delist part-way); illiquid ones list and
    delist, with starts spread so that the expected number alive is flat over time.
    """
    n = len(liquid)
    min_span = max(1, min(20, n_dates // 10))  # shortest life, in feature dates
    kind = rng.random(n)
    partial = np.maximum(np.round(rng.uniform(0.3, 1.0, n) * n_dates).astype(np.int64), min_span)
    span = np.round(rng.beta(0.65, 2.0, n) * n_dates).astype(np.int64)
    offset = np.floor(rng.random(n) * (n_dates + span)).astype(np.int64) - span
    first = np.clip(offset, 0, n_dates - min_span)
    stop = np.clip(offset + span, first + min_span, n_dates)
    listed = liquid & (kind < 0.175)  # listed part-way, alive to the end
    delisted = liquid & (kind >= 0.175) & (kind < 0.35)  # alive from the start, delisted part-way
    first[liquid], stop[liquid] = 0, n_dates
    first[listed] = n_dates - partial[listed]
    stop[delisted] = partial[delisted]
    return first, stop


def _tickers(n: int, rng: np.random.Generator) -> tuple[str, ...]:
    """n unique 3-4 letter tickers, sorted (the dataset's symbol order)."""
    letters = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ"))
    seen: set[str] = set()
    while len(seen) < n:
        codes = rng.integers(0, 26, (2 * n, 4))
        lengths = np.where(rng.random(2 * n) < 0.4, 3, 4)
        for row, k in zip(letters[codes], lengths, strict=True):
            seen.add("".join(row[:k]))
            if len(seen) == n:
                break
    return tuple(sorted(seen))


def _unit(x: np.ndarray, axis: int = -1) -> np.ndarray:
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


def _news_embeddings(market: _Market, sector: np.ndarray, rng: np.random.Generator):
    """(D, n) float32 unit embeddings of n news items and their (H, n) latent signal."""
    d, n = market.mean_dir.shape[0], len(sector)
    latent = rng.standard_normal((_N_HIDDEN, n))
    other = rng.integers(0, _N_TOPICS, n)
    emb = rng.standard_normal((d, n), dtype=np.float32)
    emb *= np.float32(_EMB_NOISE / math.sqrt(d))
    emb += np.float32(_EMB_MEAN) * market.mean_dir[:, None]
    emb += np.float32(_EMB_SECTOR) * market.topics[:, sector]
    emb += np.float32(_EMB_TOPIC) * market.topics[:, other]
    emb += (_EMB_SIGNAL * market.hidden.T @ latent).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=0, keepdims=True)
    return emb, latent


def _planted_mu(
    fund: np.ndarray,
    price: np.ndarray,
    news_z: np.ndarray,
    has_news: np.ndarray,
    liquid: np.ndarray,
    signal: float,
    structure: str = "simple",
) -> np.ndarray:
    """The planted expected log return (n,) of rows with stored features fund (19, n) and
    price (9, n), news projections news_z (H, n) and latent class liquid (n,), under the
    planted relation `structure`."""

    def c(x: np.ndarray) -> np.ndarray:
        return np.clip(x, -3.0, 3.0)

    f = fund.astype(np.float64)
    p = price.astype(np.float64)
    ret1, ret3, ret5 = p[_P["ret_1d_z"]], p[_P["ret_3d_z"]], p[_P["ret_5d_z"]]
    price_part = np.where(liquid, 0.5 * c(ret1) + 0.5 * c(ret5), -0.7 * c(ret1) - 0.3 * c(ret3))
    flip = np.where(liquid, -1.0, 1.0)
    fund_part = (
        0.6 * np.tanh(f[_F["fcf_yield_z"]])
        + flip * 0.6 * np.tanh(f[_F["roe_z"]] * f[_F["revenue_growth_z"]])
        - 0.5 * (np.maximum(f[_F["debt_to_equity_z"]] - 1.0, 0.0) - _RELU1_MEAN)
    )
    news_part = np.where(
        has_news, np.tanh(1.5 * news_z[0]) + flip * _NEWS_FLIP * c(news_z[1] * news_z[2]), 0.0
    )
    if structure == "simple":
        k = np.where(liquid, _K_LIQUID, _K_ILLIQUID)
        return signal * k * (price_part + fund_part + _NEWS_WEIGHT * news_part)
    assert structure == "tuned", f"structure={structure!r}, expected one of {STRUCTURES}"
    k = np.where(liquid, _TUNED_K_LIQUID, _TUNED_K_ILLIQUID)
    inter = _TUNED_FUND_WEIGHT * _pair_sum(f, _F, TUNED_FUND_PAIRS)
    inter += _TUNED_PRICE_WEIGHT * _pair_sum(p, _P, TUNED_PRICE_PAIRS)
    return signal * k * (price_part + fund_part + _TUNED_NEWS_WEIGHT * news_part - flip * inter)


def _pair_sum(
    x: np.ndarray, index: dict[str, int], pairs: tuple[tuple[str, str], ...]
) -> np.ndarray:
    """(n,) sum over the named pairs (a, b) of tanh(x_a * x_b), for features x (k, n) whose
    rows `index` names."""
    return sum(np.tanh(x[index[a]] * x[index[b]]) for a, b in pairs)


def _zscore(x: np.ndarray) -> np.ndarray:
    """Cross-sectional z-score of each row of x (k, n), clipped at +-5, as float32."""
    sd = x.std(axis=1, keepdims=True)
    z = (x - x.mean(axis=1, keepdims=True)) / np.where(sd > 0, sd, 1.0)
    return np.clip(z, -5.0, 5.0).astype(np.float32)


def _price_features(hist: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Raw price features (9, n) in PRICE_FEATURES order from the last six log closes (6, n)
    and the overnight part of the last return (n,)."""
    rets = np.diff(hist, axis=0)  # (5, n), oldest first
    last5 = hist[1:]
    ret1 = rets[4]
    return np.stack(
        [
            gap,
            ret1 - gap,
            ret1,
            rets[3:].sum(axis=0),
            rets[2:].sum(axis=0),
            hist[5] - hist[0],
            rets.std(axis=0, ddof=1),
            hist[5] - last5.max(axis=0),
            hist[5] - last5.min(axis=0),
        ]
    )


def _plan_chunks(alive: np.ndarray, rows_per_chunk: int) -> list[tuple[int, int]]:
    """Split the dates into consecutive [i0, i1) ranges of about rows_per_chunk rows each."""
    chunks, i0, rows = [], 0, 0
    for i, k in enumerate(alive):
        rows += int(k)
        if rows >= rows_per_chunk:
            chunks.append((i0, i + 1))
            i0, rows = i + 1, 0
    if i0 < len(alive):
        chunks.append((i0, len(alive)))
    return chunks


@dataclass
class _Stats:
    """What the summary needs, accumulated while streaming."""

    rows: np.ndarray  # (n,) dataset rows per symbol
    news: np.ndarray  # (n,) news rows per symbol
    # Per chunk, in the files' order: every dataset row's date index, symbol, news flag, oracle
    # and target, and every prices row's price-date index, symbol and close*volume.
    row_chunks: list[dict[str, np.ndarray]]
    price_chunks: list[dict[str, np.ndarray]]


class _Day:
    """The state of every symbol between two closes, advanced one trading day at a time.

    Price index t holds close_t; symbol s has prices for t in [first_s, stop_s + LOOKBACK] and
    dataset rows for feature dates i = t - LOOKBACK in [first_s, stop_s).
    """

    def __init__(self, market: _Market, signal: float, seed: int) -> None:
        self.market = market
        self.signal = signal
        n = len(market.names)
        self.hist = np.tile(market.log_p0, (6, 1))  # (6, n) last six log closes, oldest first
        self.gap = np.zeros(n)  # overnight part of the last return
        rng = np.random.default_rng([seed, _STATIC_STREAM, 1])
        self.fund_dyn = rng.standard_normal((len(FUND_FEATURES), n))  # stationary AR(1) start
        self.fund_moving, self.fund_rho = _FUND_DYNAMICS[market.structure]
        self.regime = 0.0  # log market volatility multiplier
        # Keeps each symbol's mean dollar volume at its target despite the news-day boost.
        self.volume_norm = 1.0 + (_NEWS_VOLUME - 1.0) * market.p_news

    def list_prices(self, t: int) -> None:
        """Start the price path of the symbols whose prices begin at t at their listing price."""
        m = self.market
        starts = np.flatnonzero(m.first == t)
        self.hist[:, starts] += (m.log_p0[starts] - self.hist[5, starts])[None, :]

    def rows(self, i: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
        """The dataset rows of feature date i (all but the target), from the close of i."""
        m = self.market
        al = np.flatnonzero((m.first <= i) & (i < m.stop))
        latent = (
            math.sqrt(1 - self.fund_moving) * m.fund_static[:, al]
            + math.sqrt(self.fund_moving) * self.fund_dyn[:, al]
        )
        latent[_F["market_cap_z"]] = np.exp(latent[_F["market_cap_z"]])  # right-skewed, like caps
        phase = self.mover_phase(i, al)  # +1 a riser before it crosses, -1 a faller after
        if m.mover is not None:  # growing companies show it in their growth numbers
            latent[_F["revenue_growth_z"]] += _MOVER_GROWTH * phase
            latent[_F["earnings_growth_z"]] += _MOVER_GROWTH * phase
        fund = _zscore(latent)
        price = _zscore(_price_features(self.hist[:, al], self.gap[al]))
        has_news = rng.random(len(al)) < m.p_news[al]
        count = np.where(has_news, 1 + rng.poisson(m.news_rate[al]), 0)
        emb, _ = _news_embeddings(m, m.sector[al[has_news]], rng)
        news_z = np.zeros((_N_HIDDEN, len(al)))
        news_z[:, has_news] = (m.hidden @ emb.astype(np.float64)) / m.proj_sd[:, None]
        mu = _planted_mu(fund, price, news_z, has_news, m.liquid[al], self.signal, m.structure)
        if m.mover is not None:  # a riser earns a premium until it has grown liquid
            mu = mu + self.signal * _MOVER_PREMIUM * phase
        return {
            "sym": al,
            "fund": fund,
            "price": price,
            "news": has_news,
            "count": _zscore(np.log1p(count)[None, :])[0],
            "emb": emb,  # (D, news rows)
            "mu": mu,
        }

    def mover_phase(self, i: int, symbols: np.ndarray) -> np.ndarray:
        """(len(symbols),) +1 for a riser before it crosses into the liquid set, -1 for a faller
        after it has crossed out, 0 otherwise (every symbol of a static market)."""
        m = self.market
        if m.mover is None:
            return np.zeros(len(symbols))
        mv, cross = m.mover[symbols], m.cross[symbols]
        return np.where((mv > 0) & (i < cross), 1.0, 0.0) - np.where(
            (mv < 0) & (i >= cross), 1.0, 0.0
        )

    def dollar_volume(self, t: int, on: np.ndarray) -> np.ndarray:
        """The target mean dollar volume at price index t of the symbols `on`."""
        m = self.market
        if m.mover is None:
            return m.adv[on]
        moving = m.mover[on] != 0
        i = t - LOOKBACK  # the feature date of this price date
        path = LIQUID_THRESHOLD * np.exp(m.trend[on] * (i - m.cross[on]))
        return np.where(moving, path, m.adv[on])

    def prices(self, t: int, news: np.ndarray, rng: np.random.Generator):
        """(symbols, close, volume) of the symbols with a price at t; news (n,) boosts volume."""
        m = self.market
        on = np.flatnonzero((m.first <= t) & (t <= m.stop + LOOKBACK))
        close = np.exp(self.hist[5, on])
        noise = np.exp(_VOLUME_SD * rng.standard_normal(len(on)) - _VOLUME_SD**2 / 2)
        boost = np.where(news[on], _NEWS_VOLUME, 1.0) / self.volume_norm[on]
        volume = np.maximum(np.round(self.dollar_volume(t, on) * noise * boost / close), 1.0)
        return on, close, volume

    def advance(self, mu: np.ndarray, news: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Draw every symbol's log return to the next close (n,) and move the prices there."""
        m = self.market
        self.regime = 0.98 * self.regime + math.sqrt(1 - 0.98**2) * 0.25 * rng.standard_normal()
        vol = math.exp(self.regime - 0.25**2 / 2)
        market_ret = 0.01 * vol * rng.standard_t(5) * math.sqrt(3 / 5)
        sd = m.sigma * vol * np.where(news, _NEWS_VOL, 1.0)
        r = mu + m.beta * market_ret + sd * rng.standard_t(4, len(mu)) / math.sqrt(2)
        r = np.clip(r, -1.5, 1.5)
        self.gap = 0.35 * r + 0.25 * sd * rng.standard_normal(len(mu))
        self.hist[:-1] = self.hist[1:]
        self.hist[5] = self.hist[4] + r
        return r

    def age_fundamentals(self, rng: np.random.Generator) -> None:
        shock = rng.standard_normal(self.fund_dyn.shape)
        rho = self.fund_rho
        self.fund_dyn = rho * self.fund_dyn + math.sqrt(1 - rho**2) * shock


def _simulate(market, days, price_days, signal, seed, writers, say) -> _Stats:
    """Run the simulation over every price date, streaming each chunk of dates to the writers."""
    n, n_dates, emb_dim = len(market.names), len(days), market.mean_dir.shape[0]
    n_price = len(price_days)  # LOOKBACK + n_dates + 1
    symbols = pa.array(market.names, pa.string())
    alive = np.cumsum(np.bincount(market.first, minlength=n_dates)[:n_dates]) - np.cumsum(
        np.bincount(market.stop, minlength=n_dates + 1)[:n_dates]
    )
    chunks = _plan_chunks(alive, ROWS_PER_GROUP)
    stats = _Stats(rows=np.zeros(n, np.int64), news=np.zeros(n, np.int64), row_chunks=[],
                   price_chunks=[])  # fmt: skip
    day = _Day(market, signal, seed)
    began = time.monotonic()
    t_next = 0
    for chunk_no, (i0, i1) in enumerate(chunks):
        n_rows = int(alive[i0:i1].sum())
        out = {
            "date": np.empty(n_rows, np.int32),
            "sym": np.empty(n_rows, np.int32),
            "target": np.empty(n_rows),
            "mu": np.empty(n_rows),
            "news": np.empty(n_rows, bool),
            "fund": np.empty((len(FUND_FEATURES), n_rows), np.float32),
            "price": np.empty((len(PRICE_FEATURES), n_rows), np.float32),
            "count": np.empty(n_rows, np.float32),
            "emb": np.zeros((emb_dim, n_rows), np.float32),  # (D, rows): columns contiguous
        }
        prices: dict[str, list[np.ndarray]] = {"t": [], "sym": [], "close": [], "volume": []}
        row = 0
        # The first chunk also holds the lookback prices, the last one the close after the end.
        t_stop = i1 + LOOKBACK if chunk_no < len(chunks) - 1 else n_price
        for t in range(t_next, t_stop):
            rng = np.random.default_rng([seed, _DAY_STREAM, t])
            day.list_prices(t)
            i = t - LOOKBACK
            mu_all, news_all = np.zeros(n), np.zeros(n, bool)
            is_row_date = 0 <= i < n_dates
            if is_row_date:
                got = day.rows(i, rng)
                sl = slice(row, row + len(got["sym"]))
                out["date"][sl] = i
                for key in ("sym", "mu", "news", "count"):
                    out[key][sl] = got[key]
                out["fund"][:, sl] = got["fund"]
                out["price"][:, sl] = got["price"]
                out["emb"][:, row + np.flatnonzero(got["news"])] = got["emb"]
                mu_all[got["sym"]] = got["mu"]
                news_all[got["sym"]] = got["news"]
            on, close, volume = day.prices(t, news_all, rng)
            prices["t"].append(np.full(len(on), t, np.int32))
            prices["sym"].append(on.astype(np.int32))
            prices["close"].append(close)
            prices["volume"].append(volume)
            if t + 1 < n_price:
                r = day.advance(mu_all, news_all, rng)
            if is_row_date:
                out["target"][sl] = r[got["sym"]]
                row = sl.stop
                day.age_fundamentals(rng)
        t_next = t_stop
        assert row == n_rows, f"chunk {chunk_no}: filled {row} rows, planned {n_rows}"
        _write_chunk(writers, out, prices, days, price_days, symbols)
        np.add.at(stats.rows, out["sym"], 1)
        np.add.at(stats.news, out["sym"][out["news"]], 1)
        stats.row_chunks.append({key: out[key] for key in ("date", "sym", "news", "mu", "target")})
        stats.price_chunks.append({
            "t": np.concatenate(prices["t"]),
            "sym": np.concatenate(prices["sym"]),
            "dollar_volume": np.concatenate(prices["close"]) * np.concatenate(prices["volume"]),
        })  # fmt: skip
        say(
            f"synth: dates {i1}/{n_dates}, rows {int(stats.rows.sum()):,}, "
            f"{time.monotonic() - began:.0f}s"
        )
    return stats


def _write_chunk(writers, out, prices, days, price_days, symbols) -> None:
    """Write one chunk as one row group of each file."""
    sym = pa.array(out["sym"])
    dates = pa.array(days[out["date"]])
    cols = {DATE: dates, SYMBOL: symbols.take(sym), TARGET: pa.array(out["target"])}
    for j, name in enumerate(FUND_FEATURES):
        cols[name] = pa.array(out["fund"][j])
    for j, name in enumerate(PRICE_FEATURES):
        cols[name] = pa.array(out["price"][j])
    cols[NEWS_COUNT] = pa.array(out["count"])
    for j in range(out["emb"].shape[0]):
        cols[f"{EMB_PREFIX}{j}"] = pa.array(out["emb"][j])
    writers[DATASET_FILE].write_table(pa.table(cols, schema=writers[DATASET_FILE].schema))
    oracle = {DATE: dates, SYMBOL: cols[SYMBOL], ORACLE: pa.array(out["mu"])}
    writers[ORACLE_FILE].write_table(pa.table(oracle, schema=writers[ORACLE_FILE].schema))
    t = np.concatenate(prices["t"])
    price_cols = {
        SYMBOL: symbols.take(pa.array(np.concatenate(prices["sym"]))),
        PRICE_DATE: pa.array(price_days[t]),
        CLOSE: pa.array(np.concatenate(prices["close"])),
        VOLUME: pa.array(np.concatenate(prices["volume"])),
    }
    writers[PRICES_FILE].write_table(pa.table(price_cols, schema=writers[PRICES_FILE].schema))


def _writer(path: Path, schema: pa.Schema) -> pq.ParquetWriter:
    """A zstd parquet writer. The embeddings are byte-stream-split: their random mantissas do not
    compress but their exponents and the zeros of rows without news do (≈25% smaller)."""
    emb = [name for name in schema.names if name.startswith(EMB_PREFIX)]
    return pq.ParquetWriter(
        path,
        schema,
        compression="zstd",
        compression_level=1,
        use_dictionary=[name for name in (DATE, SYMBOL, PRICE_DATE) if name in schema.names],
        use_byte_stream_split=emb or False,
    )


def _dataset_schema(emb_dim: int) -> pa.Schema:
    fields = [
        pa.field(DATE, pa.date32()),
        pa.field(SYMBOL, pa.string()),
        pa.field(TARGET, pa.float64()),
    ]
    names = [*FUND_FEATURES, *PRICE_FEATURES, NEWS_COUNT] + [
        f"{EMB_PREFIX}{j}" for j in range(emb_dim)
    ]
    return pa.schema(fields + [pa.field(name, pa.float32()) for name in names])


def _prices_schema() -> pa.Schema:
    return pa.schema(
        [
            pa.field(SYMBOL, pa.string()),
            pa.field(PRICE_DATE, pa.date32()),
            pa.field(CLOSE, pa.float64()),
            pa.field(VOLUME, pa.float64()),
        ]
    )


def _oracle_schema() -> pa.Schema:
    return pa.schema(
        [pa.field(DATE, pa.date32()), pa.field(SYMBOL, pa.string()), pa.field(ORACLE, pa.float64())]
    )


def _summarize(market: _Market, days: np.ndarray, price_days: np.ndarray, stats: _Stats) -> dict:
    """The summary of a generated market (what `generate` returns and writes to synth.json)."""
    rows = {key: np.concatenate([c[key] for c in stats.row_chunks]) for key in stats.row_chunks[0]}
    prices = {key: np.concatenate([c[key] for c in stats.price_chunks])
              for key in stats.price_chunks[0]}  # fmt: skip
    liquid_rule, _ = full_period_liquid(prices["sym"], prices["dollar_volume"], len(market.names),
                                        LIQUID_THRESHOLD)  # fmt: skip
    liq_rows = int(stats.rows[liquid_rule].sum())
    ill_rows = int(stats.rows[~liquid_rule].sum())
    liq_news = int(stats.news[liquid_rule].sum())
    ill_news = int(stats.news[~liquid_rule].sum())
    oracle = _oracle_figures(rows, prices, days, price_days, len(market.names))
    return {
        "rows": int(stats.rows.sum()),
        "symbols": len(market.names),
        "dates": len(days),
        "first_date": str(days[0]),
        "last_date": str(days[-1]),
        "price_rows": len(prices["sym"]),
        "liquid_symbols": int(liquid_rule.sum()),
        "liquid_rule_mismatches": int((liquid_rule != market.liquid).sum()),
        "liquid_rows": liq_rows,
        "liquid_row_fraction": round(liq_rows / max(liq_rows + ill_rows, 1), 4),
        "liquid_news_rows": liq_news,
        "news_fraction_liquid": round(liq_news / max(liq_rows, 1), 4),
        "news_fraction_illiquid": round(ill_news / max(ill_rows, 1), 4),
        **oracle,
        **({} if market.mover is None else {"movers": _movers(market, days)}),
        **({"tuned": _tuned_facts()} if market.structure == "tuned" else {}),
    }


def _oracle_figures(
    rows: dict[str, np.ndarray],
    prices: dict[str, np.ndarray],
    days: np.ndarray,
    price_days: np.ndarray,
    n_symbols: int,
) -> dict:
    """The planted oracle's IC, as the backtests' oracle figures compute it.

    On the rows the default pipeline (`ranker.data.load(dir)`) uses: the liquid rows of
    `UniverseConfig()` (`ranker.universe.liquid_rows`), split by `SplitConfig()`'s dates
    (`ranker.split.split_dates`), its news rows; and on every date of the liquid and of the
    illiquid news rows. Each is `ranker.metrics.evaluate_bounds`, so `oracle.test.mean_ic` is
    `ranker.backtest.backtest(ds.test, ds.test.oracle, k).oracle["mean_ic"]` to the last digit.

    Args:
        rows: every dataset row's `date` (index into `days`), `sym`, `news`, `mu`, `target`,
            sorted by (date, symbol) as the files and the Panels are.
        prices: every prices row's `t` (index into `price_days`), `sym`, `dollar_volume`, in
            the prices file's order.
    """
    universe, split = UniverseConfig(), SplitConfig()
    day = days.astype(np.int64)[rows["date"]]  # days since 1970-01-01, as the loader's keys
    p_day = price_days.astype(np.int64)[prices["t"]]
    liquid = liquid_rows(universe, prices["sym"], p_day, prices["dollar_volume"], rows["sym"],
                         day, n_symbols)  # fmt: skip
    news = rows["news"]
    used = liquid & news if split.news_only else liquid
    ret = np.expm1(rows["target"])

    def ic(mask: np.ndarray) -> dict[str, float | int]:
        _, counts = np.unique(day[mask], return_counts=True)
        bounds = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        m = evaluate_bounds(bounds, rows["mu"][mask], ret[mask])
        return {"mean_ic": m["mean_ic"], "ic_sharpe": m["ic_sharpe"], "n_dates": m["n_dates"],
                "rows": int(mask.sum())}  # fmt: skip

    try:
        val_start, test_start = split_dates(np.unique(day[liquid]), split)
        periods = {"train": day < val_start, "val": (day >= val_start) & (day < test_start),
                   "test": day >= test_start}  # fmt: skip
    except ValueError:  # too few liquid dates to split: the loader refuses this market
        periods = {}
    splits = {name: ic(used & periods[name]) if periods else None
              for name in ("train", "val", "test")}  # fmt: skip
    every = {"liquid": ic(liquid & news), "illiquid": ic(~liquid & news)}
    return {
        # Every date of the news rows; None when no date has MIN_NAMES of them.
        "oracle_ic_liquid_news": every["liquid"]["mean_ic"] if every["liquid"]["n_dates"] else None,
        "oracle_ic_illiquid_news": (
            every["illiquid"]["mean_ic"] if every["illiquid"]["n_dates"] else None
        ),
        "ic_min_names": MIN_NAMES,
        "oracle": {"universe": universe.to_dict(), "split": split.to_dict(), **splits},
    }


def _tuned_facts() -> dict:
    """The tuned market's planted facts: the pairs whose products carry its signal, their
    weights, and how fast its fundamentals move."""
    moving, rho = _FUND_DYNAMICS["tuned"]
    return {
        "fund_pairs": [list(pair) for pair in TUNED_FUND_PAIRS],
        "fund_pair_weight": _TUNED_FUND_WEIGHT,
        "price_pairs": [list(pair) for pair in TUNED_PRICE_PAIRS],
        "price_pair_weight": _TUNED_PRICE_WEIGHT,
        "news_weight": _TUNED_NEWS_WEIGHT,
        "k_liquid": _TUNED_K_LIQUID,
        "k_illiquid": _TUNED_K_ILLIQUID,
        "fund_moving_share": moving,
        "fund_daily_ar1": rho,
    }


def _movers(market: _Market, days: np.ndarray) -> dict:
    """The moving market's planted facts: which symbols rise into the liquid set or fall out of
    it, when each crosses $50M, and the premium a riser earns before it crosses."""
    assert market.mover is not None and market.cross is not None
    idx = np.flatnonzero(market.mover)
    return {
        "risers": int((market.mover > 0).sum()),
        "fallers": int((market.mover < 0).sum()),
        "riser_premium_daily": _MOVER_PREMIUM,
        "growth_shift": _MOVER_GROWTH,
        "symbols": {
            market.names[i]: {
                "kind": "riser" if market.mover[i] > 0 else "faller",
                "crosses": str(days[min(int(market.cross[i]), len(days) - 1)]),
            }
            for i in idx
        },
    }

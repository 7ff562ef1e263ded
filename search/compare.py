"""Existing models beside the final one (`final.compare`), and the scores file that carries a
model's scores from anywhere.

The scores file (this module is its one reader and writer) is parquet, one row per
(feature_date, symbol): `feature_date` (a date), `symbol` (a string), `score` (a finite number)
and, as `liquid-search score` writes it, `liquid` (the row is in the model's universe under its
rule). Rows may come in any order and extra columns are ignored; a duplicate (feature_date,
symbol), a score that is missing or not finite, or a test row without a score is refused, in one
line naming the file and an example row. So a model from anywhere, scored by its owner's code,
is compared without this project loading it; a checkpoint or run directory of this project is
scored here, on the run's data, exactly as `liquid-search score` would write it.

Each comparison model is evaluated as the final model is: `ranker.backtest.backtest` of its
scores on the run's test Panel (the liquid news rows of the test dates) and on each other
universe rule's test Panel it covers, with the final model's k and the spec's cost model. Its
difference from the final model, per metric, is final minus it, with a standard error over the
test dates, paired: arch's stationary bootstrap resamples the dates (mean block round(sqrt(T)),
as the stage tests, `REPS` replications, seed 0), the same dates for both models, and each
metric is recomputed on every resample.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from arch.bootstrap import StationaryBootstrap

from ranker import checkpoint, storage
from ranker.backtest import backtest
from ranker.costs import CostModel, books_turnover, cost_metrics, net_returns
from ranker.data import Dataset
from ranker.inputs import DataError
from ranker.metrics import ANN, Daily, summarize
from ranker.panel import Panel
from ranker.schema import DATE, SYMBOL
from ranker.significance import default_block
from search.errors import SearchError
from search.results import Comparison, Difference, Metrics, RuleComparison
from search.rundir import RunDir, Series

log = logging.getLogger("liquid_search")

SCORE, LIQUID = "score", "liquid"  # the scores file's columns besides feature_date and symbol
SCORES, CHECKPOINT = "scores", "checkpoint"  # what a comparison's path holds
REPS = 1000  # bootstrap replications of the paired standard errors
# The compared metrics, and the per-date series each is computed from.
COMPARED = {"ic_sharpe": "ic", "mean_ic": "ic", "long_return": "long", "long_sharpe": "long",
            "short_return": "short", "short_sharpe": "short", "ls_return": "ls",
            "ls_sharpe": "ls", "ls_net_return": "flat", "ls_net_sharpe": "flat",
            "to_ls_net_return": "turnover", "to_ls_net_sharpe": "turnover"}  # fmt: skip


class CompareError(SearchError):
    """A comparison model that cannot be compared: a bad scores file, a scores file that misses
    test rows, or a path that holds no model."""


# ---------------------------------------------------------------- the scores file


def parse_dates(text: str | None) -> tuple[np.datetime64 | None, np.datetime64 | None]:
    """`FROM:TO` (ISO dates, both included; either may be left out) as two days.

    Raises:
        ValueError: not of that form, or FROM after TO.
    """
    if text is None:
        return None, None
    bad = (f"--dates={text!r}: expected FROM:TO as ISO dates, either end optional, e.g. "
           f"2024-01-02:2024-03-29 or 2024-01-02:")  # fmt: skip
    if text.count(":") != 1:
        raise ValueError(bad)
    try:
        lo, hi = (np.datetime64(p.strip(), "D") if p.strip() else None for p in text.split(":"))
    except ValueError:
        raise ValueError(bad) from None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"--dates={text!r}: FROM is after TO. Fix: e.g. {hi}:{lo}")
    return lo, hi


def write_scores(path: str, rows: checkpoint.ScoredRows) -> None:
    """The scores file of `rows` at `path`, written atomically (a path or URI)."""
    table = pa.table({DATE: pa.array(rows.days, pa.date32()), SYMBOL: rows.symbols,
                      SCORE: pa.array(rows.scores, pa.float64()), LIQUID: pa.array(rows.liquid)})  # fmt: skip
    storage.write_with(path, lambda f: pq.write_table(table, f, compression="zstd"))


@dataclass(frozen=True, eq=False)
class Scores:
    """A model's scores, checked: one finite score per (day, symbol)."""

    path: str
    days: np.ndarray  # (n,) int64 days since 1970-01-01
    symbols: pa.Array  # (n,) large_string
    score: np.ndarray  # (n,) float64

    def row(self, i: int) -> str:
        return (f"row {i} (feature_date={np.datetime64(int(self.days[i]), 'D')}, "
                f"symbol={self.symbols[i].as_py()!r})")  # fmt: skip

    def on(self, panel: Panel, what: str) -> np.ndarray:
        """The scores of `panel`'s rows, in its order.

        Raises:
            CompareError: rows of the panel without a score (how many, and an example).
        """
        got, missing = self._align(panel)
        if missing.any():
            i = int(np.argmax(missing))
            day = np.repeat(panel.dates, np.diff(panel.bounds))[i]
            raise CompareError(
                f"{self.path}: no score for {int(missing.sum()):,} of the {len(panel):,} {what}, "
                f"e.g. feature_date={day}, symbol={panel.symbols[panel.symbol_ids[i]]!r}. Fix: "
                f"score every row of the test dates (`liquid-search score` writes one per row "
                f"of the data), or drop the comparison."
            )
        return got

    def n_missing(self, panel: Panel) -> int:
        """How many of `panel`'s rows have no score."""
        return int(self._align(panel)[1].sum())

    def _align(self, panel: Panel) -> tuple[np.ndarray, np.ndarray]:
        """(the score of each panel row, whether it has none): a join on (day, symbol)."""
        names = pa.array(panel.symbols, pa.large_string())
        codes = pc.index_in(self.symbols, value_set=names)  # null: a symbol the run lacks
        known = np.asarray(codes.is_valid())
        n = np.int64(len(panel.symbols))
        key = self.days[known] * n + np.asarray(codes.drop_null(), dtype=np.int64)
        order = np.argsort(key, kind="stable")
        key, values = key[order], self.score[known][order]
        day = np.repeat(panel.dates.astype("datetime64[D]").astype(np.int64), np.diff(panel.bounds))
        want = day * n + panel.symbol_ids.astype(np.int64)
        if not len(key):
            return np.full(len(want), np.nan), np.ones(len(want), dtype=bool)
        pos = np.minimum(np.searchsorted(key, want), len(key) - 1)
        found = key[pos] == want
        return np.where(found, values[pos], np.nan), ~found


def read_scores(path: str) -> Scores:
    """A scores file, read and checked.

    Raises:
        CompareError: not a parquet file, a missing column, a missing date or symbol, a
            duplicate (feature_date, symbol), or a score that is missing or not finite.
    """
    fix = (f"Fix: write it as `liquid-search score` does: parquet with {DATE} (a date), "
           f"{SYMBOL} (a string) and {SCORE} (a finite number), one row per date and symbol.")  # fmt: skip
    try:
        fs, p = storage.filesystem(path)
        pf = pq.ParquetFile(fs.open_input_file(p))
        names = pf.schema_arrow.names
        lacking = [c for c in (DATE, SYMBOL, SCORE) if c not in names]
        table = None if lacking else pf.read(columns=[DATE, SYMBOL, SCORE])
    except (OSError, pa.ArrowInvalid) as e:
        raise CompareError(f"{path}: not a readable parquet scores file ({e}). {fix}") from None
    if table is None:
        raise CompareError(f"{path}: no column(s) {lacking} (it has {names[:6]}). {fix}")
    date, sym, score = (table.column(c) for c in (DATE, SYMBOL, SCORE))
    if not (pa.types.is_date(date.type) or pa.types.is_timestamp(date.type)):
        raise CompareError(f"{path}: column {DATE!r} is {date.type}, not a date. {fix}")
    if not (pa.types.is_string(sym.type) or pa.types.is_large_string(sym.type)):
        raise CompareError(f"{path}: column {SYMBOL!r} is {sym.type}, not a string. {fix}")
    if not (pa.types.is_floating(score.type) or pa.types.is_integer(score.type)):
        raise CompareError(f"{path}: column {SCORE!r} is {score.type}, not a number. {fix}")
    for name, col in ((DATE, date), (SYMBOL, sym)):
        if col.null_count:
            i = int(np.argmax(~np.asarray(pc.is_valid(col))))
            raise CompareError(f"{path}: {col.null_count:,} row(s) without a {name}, e.g. row "
                               f"{i}. {fix}")  # fmt: skip
    days = pc.cast(date, pa.date32(), safe=False).to_numpy().astype("datetime64[D]")
    out = Scores(path=path, days=days.astype(np.int64),
                 symbols=pc.cast(sym, pa.large_string()).combine_chunks(),
                 score=pc.cast(score, pa.float64()).to_numpy(zero_copy_only=False))  # fmt: skip
    bad = ~np.isfinite(out.score)  # nulls came out as NaN
    if bad.any():
        i = int(np.argmax(bad))
        raise CompareError(f"{path}: {int(bad.sum()):,} score(s) missing or not finite, e.g. "
                           f"{out.row(i)} = {out.score[i]}. {fix}")  # fmt: skip
    own = np.asarray(pc.index_in(out.symbols, value_set=pc.unique(out.symbols)), dtype=np.int64)
    key = out.days * np.int64(own.max() + 1 if len(own) else 1) + own
    order = np.argsort(key, kind="stable")
    dup = np.flatnonzero(key[order][1:] == key[order][:-1])
    if len(dup):
        raise CompareError(f"{path}: {len(dup):,} duplicate (feature_date, symbol) row(s), e.g. "
                           f"{out.row(int(order[dup[0] + 1]))}. {fix}")  # fmt: skip
    return out


# ---------------------------------------------------------------- a comparison's model


def load_model(path: str) -> checkpoint.Ranker:
    """The model at `path`: a run directory's final model, or a checkpoint file.

    Raises:
        CompareError: nothing there, a run without its final model, or not a checkpoint.
    """
    rd = RunDir(path)
    if rd.is_run():
        if not storage.exists(rd.model_path()):
            raise CompareError(f"{rd.path}: the run has no final model yet. Fix: wait for it to "
                               f"finish (`liquid-search status {rd.path}`).")  # fmt: skip
        path = rd.model_path()
    try:
        return checkpoint.load(path)
    except (FileNotFoundError, ValueError) as e:
        raise CompareError(f"{e}. Fix: a run directory, a checkpoint (`liquid-search train "
                           f"--out`) or a scores file (`liquid-search score`).") from None  # fmt: skip


def kind_of(path: str) -> str:
    """What `path` holds: SCORES (a parquet file) or CHECKPOINT (a checkpoint or a run).

    Raises:
        CompareError: nothing at `path`.
    """
    if RunDir(path).is_run():
        return CHECKPOINT
    if not storage.is_file(path):
        raise CompareError(f"{path}: no such file or run directory. Fix: a scores file, a "
                           f"checkpoint or a run directory (path or URI).")  # fmt: skip
    fs, p = storage.filesystem(path)
    with fs.open_input_file(p) as f:
        return SCORES if f.read(4) == b"PAR1" else CHECKPOINT


def _panels(ds: Dataset, rule: str) -> dict[str, Panel]:
    """The test Panels the final model was tested on: the run's (under `rule`), then each
    other universe rule's."""
    others = {r: p for r, p in (ds.test_by_rule or {}).items() if r != rule}
    return {rule: ds.test, **others}


def model_scores(
    path: str, ds: Dataset, rule: str, say: Callable[[str], None]
) -> tuple[str, Scores]:
    """What `path` holds (`kind_of`) and its scores: a scores file read, or a model of this
    project scored on the run's data over its test dates (as `liquid-search score` writes them).

    Raises:
        CompareError: a bad path or scores file; DataError: a model whose feature columns are
            not the data's.
    """
    kind = kind_of(path)
    if kind == SCORES:
        return kind, read_scores(path)
    model = load_model(path)
    assert ds.info.source is not None  # a Dataset from `ranker.data.load` knows its source
    panels = _panels(ds, rule).values()
    start, end = min(p.dates[0] for p in panels), max(p.dates[-1] for p in panels)
    say(f"[compare] scoring {path} on {ds.info.source}, {start} to {end}")
    rows = model.score_source(ds.info.source, start=start, end=end)
    return kind, Scores(path=path, days=rows.days.astype(np.int64),
                        symbols=pc.cast(rows.symbols, pa.large_string()), score=rows.scores)  # fmt: skip


def check(compare: dict[str, str], ds: Dataset, rule: str) -> None:
    """Before anything runs: every comparison model can be compared on the run's test rows (a
    scores file is read, checked and must cover them; a model is loaded and its feature
    columns checked against the data's).

    Raises:
        CompareError: one line naming the spec's key, the file and the fix.
    """
    for name, path in compare.items():
        try:
            if kind_of(path) == SCORES:
                read_scores(path).on(ds.test, _what(ds.test, rule))
            else:
                load_model(path).check_columns(ds.columns, f"{path}'s model on the run's data")
        except (CompareError, DataError) as e:
            raise CompareError(f"final.compare.{name}: {e}") from None


def _what(panel: Panel, rule: str) -> str:
    return (f"test rows (the liquid news rows of {panel.dates[0]} to {panel.dates[-1]} under "
            f"the {rule} universe)")  # fmt: skip


# ---------------------------------------------------------------- the comparison


def compare_models(
    compare: dict[str, str], run: RunDir, ds: Dataset, costs: CostModel, rule: str
) -> dict[str, Comparison]:
    """Each model of `compare` (name -> path) beside the final model of `run`, whose per-date
    test series (RUN_DIR/final/) it is paired with; each one's own test series is saved too.

    Args:
        ds: the run's data, with its test Panels (`test_by_rule` for the other universe rules).
        costs, rule: the spec's cost model and universe rule (the books hold as many names
            as the final model's series).

    Raises:
        CompareError: a model that cannot be compared (the message names the spec's key).
    """
    out = {}
    for name, path in compare.items():
        try:
            out[name] = _compare_one(name, path, run, ds, costs, rule)
        except (CompareError, DataError) as e:
            raise CompareError(f"final.compare.{name}: {e}") from None
    return out


def _compare_one(
    name: str, path: str, run: RunDir, ds: Dataset, costs: CostModel, rule: str
) -> Comparison:
    """One comparison model on the run's test set, then on each other universe rule's that its
    scores cover (a rule they do not cover is a note)."""
    kind, scores = model_scores(path, ds, rule, log.info)
    final = run.read_final_series("final", "test")
    if final is None:
        raise CompareError(f"{run.path}: no test series of the final model to compare with")
    k = final.long_symbols.shape[1]  # the final model's names per book
    main, series = _on(ds.test, scores.on(ds.test, _what(ds.test, rule)), final, k, costs)
    by_rule, notes = {}, []
    for r, panel in _panels(ds, rule).items():
        theirs = run.read_final_series("final", f"test_{r}")
        if r == rule or theirs is None:
            continue
        missing = scores.n_missing(panel)
        if missing:
            notes.append(f"not compared on the {r} universe's test set: no score for "
                         f"{missing:,} of its {len(panel):,} rows")  # fmt: skip
            continue
        by_rule[r] = _on(panel, scores.on(panel, _what(panel, r)), theirs, k, costs)[0]
    c = Comparison(name=name, source=path, kind=kind, test=main.test, costs=main.costs,
                   vs_final=main.vs_final, test_rows=main.test_rows, n_dates=main.n_dates,
                   by_rule=by_rule, notes=tuple(notes), block=default_block(main.n_dates),
                   reps=REPS, sentence="")  # fmt: skip
    run.write_final_series(c.series_model, "test", series)
    return replace(c, sentence=sentence(c))


def _on(
    panel: Panel, scores: np.ndarray, final: Series, k: int, costs: CostModel
) -> tuple[RuleComparison, Series]:
    """A model's scores on one test Panel: its backtest beside the final model's series."""
    bt = backtest(panel, scores, k, costs)
    series = Series.from_daily(bt.daily, panel)
    vs = paired_differences(final, series, costs)
    return RuleComparison(test=bt.metrics, costs=bt.costs, vs_final=vs, test_rows=len(panel),
                          n_dates=len(series.date)), series  # fmt: skip


def series_metrics(z: Series, costs: CostModel) -> Metrics:
    """A per-date series' backtest metrics and costs, as `ranker.backtest.backtest` computed
    them from the scores (the same functions on the same per-date values and books)."""
    n, k = z.long_symbols.shape
    rows = np.arange(n * k).reshape(n, k)
    d = Daily(date_idx=np.arange(n), ic=z.ic, long=z.long, short=z.short, ls=z.ls,
              long_rows=rows, short_rows=rows + n * k, n_rows=2 * n * k)  # fmt: skip
    held = np.concatenate([z.long_symbols.ravel(), z.short_symbols.ravel()])
    return summarize(d) | cost_metrics(d, held, costs)


def _per_date(z: Series, costs: CostModel) -> dict[str, np.ndarray]:
    """The per-date series the compared metrics are computed from (`COMPARED`)."""
    net = net_returns(z.long, z.short, books_turnover(z.long_symbols, z.short_symbols), costs)
    return {"ic": z.ic, "long": z.long, "short": z.short, "ls": z.ls, "flat": net["flat"]["ls"],
            "turnover": net["turnover"]["ls"]}  # fmt: skip


def _statistic(metric: str, x: np.ndarray) -> np.ndarray:
    """`metric` of each row of x (resamples x dates), by `ranker.metrics.summarize`'s and
    `ranker.costs`' formulas: IC ignoring NaN; Sharpes with the population std, 0 when flat."""
    with warnings.catch_warnings(), np.errstate(invalid="ignore", divide="ignore"):
        warnings.simplefilter("ignore", RuntimeWarning)  # a resample of NaN ICs only
        mean, std = np.nanmean(x, axis=1), np.nanstd(x, axis=1)
    if metric.endswith("_return"):
        return mean * ANN
    if metric == "mean_ic":
        return np.nan_to_num(mean)
    return np.where(std > 0, np.nan_to_num(mean) / np.where(std > 0, std, 1), 0.0) * np.sqrt(ANN)


def paired_differences(
    final: Series, other: Series, costs: CostModel, *, reps: int = REPS, seed: int = 0
) -> dict[str, Difference]:
    """Per compared metric: the final model's value (a), the other's (b), a - b, and its
    standard error over the test dates, paired: a stationary bootstrap of the dates (mean block
    round(sqrt(T))) resamples the same dates for both, and the error is the standard deviation
    of the resampled differences.

    Raises:
        ValueError: the two series are not on the same dates.
    """
    if not np.array_equal(final.date, other.date):
        raise ValueError(f"paired over dates: {len(final.date)} final and {len(other.date)} "
                         f"other dates differ; both must be scored on the same Panel")  # fmt: skip
    a, b = series_metrics(final, costs), series_metrics(other, costs)
    n = len(final.date)
    se = dict.fromkeys(COMPARED, math.nan)
    if n >= 2:
        bs = StationaryBootstrap(default_block(n), np.arange(n), seed=seed)
        idx = np.stack([data[0][0] for data in bs.bootstrap(reps)])  # (reps, n) date positions
        sa, sb = _per_date(final, costs), _per_date(other, costs)
        for m, src in COMPARED.items():
            diff = _statistic(m, sa[src][idx]) - _statistic(m, sb[src][idx])
            se[m] = float(np.std(diff, ddof=1))
    return {m: Difference(a[m], b[m], a[m] - b[m], se[m]) for m in COMPARED}


def sentence(c: Comparison) -> str:
    """What the comparison says, in one sentence: the final model minus it on the test set,
    and whether the mean IC difference is larger than the test dates' noise (two standard
    errors)."""
    ic, sh, net = (c.vs_final[m] for m in ("mean_ic", "ic_sharpe", "to_ls_net_sharpe"))
    if not (math.isfinite(ic.se) and ic.se > 0):
        verdict = "too few test dates to say how sure that is"
    elif abs(ic.z) > 2:
        word = "better" if ic.diff > 0 else "worse"
        verdict = (f"the final model is {word} than {c.name} by more than the test dates' noise "
                   f"({abs(ic.z):.1f} standard errors)")  # fmt: skip
    else:
        verdict = (
            f"the difference is within the test dates' noise ({abs(ic.z):.1f} standard errors)"
        )
    return (
        f"Final model minus {c.name} ({c.kind}) on the {c.n_dates} test dates, paired: mean IC "
        f"{ic.diff:+.4f} ± {ic.se:.4f}, IC Sharpe {sh.diff:+.2f} ± {sh.se:.2f}, L/S Sharpe net "
        f"of turnover-aware costs {net.diff:+.2f} ± {net.se:.2f} (standard errors): {verdict}."
    )


def lines(comparisons: dict[str, Comparison]) -> list[str]:
    """A few lines per comparison, for `status` and the driver's log."""
    out = []
    for c in comparisons.values():
        t, cost = c.test, c.costs
        what = "scores file" if c.kind == SCORES else "model"
        out.append(f"[compare {c.name}] {what} {c.source}: test IC sharpe {t['ic_sharpe']:.2f} "
                   f"mean IC {t['mean_ic']:+.4f} L/S sharpe {t['ls_sharpe']:.2f} (net of flat "
                   f"costs {cost['ls_net_sharpe']:.2f}) on {c.test_rows:,} rows")  # fmt: skip
        out.append(f"[compare {c.name}] {c.sentence}")
        out += [f"[compare {c.name}] {note}" for note in c.notes]
    return out

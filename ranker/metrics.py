"""Evaluation metrics of a score on a date-sorted panel, as pure vectorised numpy.

Reproduces the research notebook's `evaluate_model` exactly. For each date with at least
`MIN_NAMES` rows: the Spearman IC of score vs simple return (as `scipy.stats.spearmanr`: average
ranks for ties, NaN when either side is constant), the mean simple return of the top-k names by
score (long) and minus that of the bottom-k (short), ties broken as pandas
`nlargest/nsmallest(k, keep="first")`. Then annualised means and Sharpes with `ANN = 252` (qlib's
`ann_scaler`). There is no per-date Python loop: values are ranked within date segments by one sort.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_NAMES = 10  # dates with fewer rows are skipped, as in the notebook
ANN = 252  # trading days per year

# Ranking pads the segments into an (n_dates, max_size) matrix when that wastes little memory: a
# row-wise sort of small rows is several times faster than one global sort of the same data.
_MAX_PAD_RATIO = 2.0


@dataclass(frozen=True, eq=False)
class Daily:
    """Per-date results for the dates that have at least `min_names` rows.

    Attributes:
        date_idx: (n,) int64 which date segments were kept (positions in `bounds`/`Panel.dates`,
            or in the sorted unique dates when the rows were grouped some other way).
        ic: (n,) float64 Spearman IC of score vs simple return; NaN where undefined.
        long: (n,) float64 mean simple return of the top-k names by score.
        short: (n,) float64 MINUS the mean simple return of the bottom-k names.
        ls: (n,) float64 (long + short) / 2.
        long_rows: (n, k) int64 row indices of the long book, highest score first.
        short_rows: (n, k) int64 row indices of the short book, lowest score first.
        n_rows: number of rows in the arrays the row indices point into.
    """

    date_idx: np.ndarray
    ic: np.ndarray
    long: np.ndarray
    short: np.ndarray
    ls: np.ndarray
    long_rows: np.ndarray
    short_rows: np.ndarray
    n_rows: int

    @property
    def k(self) -> int:
        return self.long_rows.shape[1]

    def __len__(self) -> int:
        return len(self.date_idx)


def _check_inputs(bounds: np.ndarray, scores: np.ndarray, returns: np.ndarray) -> None:
    n = len(scores)
    if scores.ndim != 1 or returns.shape != (n,):
        raise ValueError(
            f"scores and returns must be 1-D of the same length, got {scores.shape} and "
            f"{returns.shape}"
        )
    if bounds.ndim != 1 or len(bounds) < 1 or bounds[0] != 0 or bounds[-1] != n:
        raise ValueError(
            f"bounds must be 1-D offsets running from 0 to len(scores)={n}, got "
            f"{bounds[:1]}..{bounds[-1:]} (shape {bounds.shape})"
        )
    if np.any(np.diff(bounds) < 0):
        raise ValueError("bounds must be non-decreasing: rows must be sorted by date")
    for name, arr in (("scores", scores), ("returns", returns)):
        if arr.dtype.kind == "f":
            n_nan = int(np.count_nonzero(np.isnan(arr)))
            if n_nan:
                raise ValueError(
                    f"{name} has {n_nan} NaN values out of {n}; drop those rows (or fix what "
                    "produced them, e.g. a diverged model) before evaluating"
                )


def _check_k(k: int, min_names: int) -> None:
    if not 1 <= k <= min_names:
        raise ValueError(f"need 1 <= k <= min_names, got k={k}, min_names={min_names}")


@dataclass(frozen=True)
class _Layout:
    """The kept date segments, compacted: compact position i is row `rows[i]`."""

    date_idx: np.ndarray  # (m,) kept segments
    sizes: np.ndarray  # (m,) rows per kept segment
    offsets: np.ndarray  # (m + 1,) compact offsets of kept segments
    rows: np.ndarray  # (n,) original row of each compact position
    seg: np.ndarray  # (n,) kept-segment index of each compact position


def _layout(bounds: np.ndarray, min_names: int) -> _Layout:
    all_sizes = np.diff(bounds)
    date_idx = np.flatnonzero(all_sizes >= min_names)
    sizes = all_sizes[date_idx]
    offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    seg = np.repeat(np.arange(len(sizes)), sizes)
    rows = np.arange(offsets[-1], dtype=np.int64) + (bounds[date_idx] - offsets[:-1])[seg]
    return _Layout(date_idx.astype(np.int64), sizes, offsets, rows, seg)


def _sort_within(values: np.ndarray, lay: _Layout, padded: bool | None = None) -> np.ndarray:
    """Order of compact positions: segment by segment, ascending value, ties in arbitrary order.

    An unstable sort is about 3x faster than a stable one; average ranks do not see the order of
    ties, and `_ties_by_position` restores it where it matters.

    Args:
        values: (n,) compact values (segments contiguous, in `lay` order).
        lay: the layout.
        padded: force the padded-matrix (True) or the flat (False) algorithm; None picks.

    Returns:
        (n,) int64 permutation of the compact positions.
    """
    n, m = len(values), len(lay.sizes)
    if m == 0:
        return np.zeros(0, dtype=np.int64)
    width = int(lay.sizes.max())
    if padded is None:
        padded = m * width <= _MAX_PAD_RATIO * n
    if padded:
        filled = np.arange(width) < lay.sizes[:, None]  # (m, width)
        mat = np.full((m, width), np.inf, dtype=values.dtype)
        mat[filled] = values
        cols = np.argsort(mat, axis=1)
        # Keep real entries by their original column: a pad may sort before a real +inf.
        return (lay.offsets[:-1, None] + cols)[cols < lay.sizes[:, None]]
    by_value = np.argsort(values)
    # Small unsigned segment ids make numpy's stable sort a radix sort.
    seg_dtype = np.uint16 if m <= np.iinfo(np.uint16).max else np.int64
    by_seg = np.argsort(lay.seg.astype(seg_dtype)[by_value], kind="stable")
    return by_value[by_seg]


def _ties_by_position(order: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """`order` with each run of equal values re-ordered by position, as a stable sort gives."""
    tied = np.flatnonzero(first != last)
    if len(tied) == 0:
        return order
    order = order.copy()
    order[tied] = order[tied][np.lexsort((order[tied], first[tied]))]
    return order


def _tie_runs(sorted_values: np.ndarray, lay: _Layout) -> tuple[np.ndarray, np.ndarray]:
    """For values sorted within segments: the first and last compact position of each element's
    run of equal values (a run never crosses a segment boundary)."""
    n = len(sorted_values)
    new_run = np.zeros(n, dtype=bool)
    new_run[lay.offsets[:-1]] = True
    new_run[1:] |= sorted_values[1:] != sorted_values[:-1]
    first = np.flatnonzero(new_run)
    length = np.diff(np.concatenate([first, [n]]))
    return np.repeat(first, length), np.repeat(first + length - 1, length)


def _centered(first: np.ndarray, last: np.ndarray, lay: _Layout) -> np.ndarray:
    """Average rank within the segment minus the segment's mean rank, by sorted position.

    All quantities are half-integers, so this is exact, and exactly 0 for a constant segment.
    """
    mid = (lay.offsets[:-1] + (lay.sizes - 1) * 0.5)[lay.seg]  # centre position of each segment
    return (first + last) * 0.5 - mid


def _centered_ranks(values: np.ndarray, lay: _Layout) -> np.ndarray:
    """(n,) centered average rank of each compact value within its segment."""
    order = _sort_within(values, lay)
    first, last = _tie_runs(values[order], lay)
    centered = np.empty(len(values))
    centered[order] = _centered(first, last, lay)
    return centered


def _spearman(cs: np.ndarray, cr: np.ndarray, lay: _Layout) -> np.ndarray:
    """Pearson correlation of centered ranks per segment; NaN where either side is constant."""
    if len(lay.sizes) == 0:
        return np.zeros(0)
    starts = lay.offsets[:-1]
    sxy = np.add.reduceat(cs * cr, starts)
    sxx = np.add.reduceat(cs * cs, starts)
    syy = np.add.reduceat(cr * cr, starts)
    defined = (sxx > 0) & (syy > 0)
    ic = np.full(len(starts), np.nan)
    ic[defined] = sxy[defined] / np.sqrt(sxx[defined] * syy[defined])
    return np.clip(ic, -1.0, 1.0)  # as np.corrcoef (used by spearmanr) does


def spearman_by_date(
    bounds: np.ndarray, scores: np.ndarray, returns: np.ndarray, min_names: int = MIN_NAMES
) -> tuple[np.ndarray, np.ndarray]:
    """Spearman rank correlation of scores vs returns within each date segment.

    Args:
        bounds: (n_dates + 1,) row offsets of the date segments (rows sorted by date).
        scores: (N,) model scores.
        returns: (N,) simple returns.
        min_names: dates with fewer rows are skipped.

    Returns:
        (date_idx, ic): the kept segments (int64) and their IC (float64, NaN where a side is
        constant, exactly where `scipy.stats.spearmanr` returns NaN).
    """
    bounds = np.asarray(bounds).astype(np.int64, copy=False)
    scores, returns = np.asarray(scores), np.asarray(returns)
    _check_inputs(bounds, scores, returns)
    lay = _layout(bounds, min_names)
    s, r = _as_sortable(scores[lay.rows]), _as_sortable(returns[lay.rows])
    return lay.date_idx, _spearman(_centered_ranks(s, lay), _centered_ranks(r, lay), lay)


def _as_sortable(values: np.ndarray) -> np.ndarray:
    # The padded sort needs +inf; float64 holds every int up to 2**53 exactly.
    return values if values.dtype.kind == "f" else values.astype(np.float64)


def daily(
    bounds: np.ndarray,
    scores: np.ndarray,
    returns: np.ndarray,
    k: int = 5,
    min_names: int = MIN_NAMES,
) -> Daily:
    """Per-date IC and top/bottom-k returns for the dates with at least `min_names` rows.

    Args:
        bounds: (n_dates + 1,) int row offsets: `bounds[d]:bounds[d + 1]` are the rows of date d.
        scores: (N,) model scores (NaN rejected).
        returns: (N,) SIMPLE returns (NaN rejected).
        k: names per book; among equal scores the earlier row wins (pandas keep="first").
        min_names: dates with fewer rows are skipped; must be >= k.

    Returns:
        A `Daily` whose row indices point into `scores`/`returns`.

    Raises:
        ValueError: on inconsistent shapes or bounds, NaN inputs, or k outside [1, min_names].
    """
    bounds = np.asarray(bounds).astype(np.int64, copy=False)
    scores, returns = np.asarray(scores), np.asarray(returns)
    _check_inputs(bounds, scores, returns)
    _check_k(k, min_names)
    lay = _layout(bounds, min_names)
    m, n = len(lay.sizes), len(lay.rows)
    s = _as_sortable(scores[lay.rows])
    r = returns[lay.rows].astype(np.float64, copy=False)  # exact for float32: same ranks

    order = _sort_within(s, lay)  # ascending score
    first, last = _tie_runs(s[order], lay)
    order = _ties_by_position(order, first, last)  # pandas keep="first": earlier row wins ties
    cs = np.empty(n)
    cs[order] = _centered(first, last, lay)
    ic = _spearman(cs, _centered_ranks(r, lay), lay)

    # Bottom-k: the first k of each segment in ascending order (ties already by row).
    pos = np.arange(n) - lay.offsets[:-1][lay.seg]
    short_c = order[pos < k].reshape(m, k)
    # Top-k: descending score with ties by ASCENDING row, i.e. runs reversed but each run kept in
    # order. Position of compact i in that order = (segment end - run last) + (i - run first).
    desc = (lay.offsets[1:] - 1)[lay.seg] - last + np.arange(n) - first
    top = desc < k
    long_c = np.empty((m, k), dtype=np.int64)
    long_c[lay.seg[top], desc[top]] = order[top]

    long = r[long_c].mean(axis=1) if m else np.zeros(0)
    short = -r[short_c].mean(axis=1) if m else np.zeros(0)
    return Daily(
        date_idx=lay.date_idx,
        ic=ic,
        long=long,
        short=short,
        ls=(long + short) / 2,
        long_rows=lay.rows[long_c],
        short_rows=lay.rows[short_c],
        n_rows=len(scores),
    )


def sharpe(x: np.ndarray) -> float:
    """Annualised Sharpe of a daily series: mean / std * sqrt(ANN); 0 for fewer than 2 points or
    zero spread.

    The one Sharpe convention of the project: the population standard deviation (ddof=0), as
    the research notebook's `np.std` and so the search's selection metric. The overfitting
    statistics (`ranker.overfit_stats`) use it too, so the report's IC Sharpe is the search's;
    with a few hundred dates ddof=1 would differ by about 0.2%.
    """
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        return 0.0
    sd = np.std(x)
    if sd == 0:
        return 0.0
    return float(np.mean(x) / sd * np.sqrt(ANN))


def annualized(x: np.ndarray) -> float:
    """Mean daily value times `ANN`; NaN (without a warning) for an empty series."""
    x = np.asarray(x, dtype=np.float64)
    return float(np.mean(x) * ANN) if len(x) else float("nan")


def summarize(d: Daily) -> dict[str, float]:
    """The notebook's metrics of a `Daily`.

    NaN ICs are dropped; mean_ic is 0 and the IC std 1 when none is left; ic_sharpe is
    mean/std*sqrt(252) when std > 0, else 0. Returns are mean*252 (NaN when no date was kept, as
    the notebook's `np.mean([])`); Sharpes as `sharpe`.

    Returns:
        Plain floats: ic_sharpe, mean_ic, long_return, long_sharpe, short_return, short_sharpe,
        ls_return, ls_sharpe, and the int n_dates (dates kept).
    """
    ics = d.ic[~np.isnan(d.ic)]
    mean_ic = float(np.mean(ics)) if len(ics) else 0.0
    ic_std = float(np.std(ics)) if len(ics) else 1.0
    return {
        "ic_sharpe": mean_ic / ic_std * float(np.sqrt(ANN)) if ic_std > 0 else 0.0,
        "mean_ic": mean_ic,
        "long_return": annualized(d.long),
        "long_sharpe": sharpe(d.long),
        "short_return": annualized(d.short),
        "short_sharpe": sharpe(d.short),
        "ls_return": annualized(d.ls),
        "ls_sharpe": sharpe(d.ls),
        "n_dates": len(d),
    }


def evaluate_bounds(
    bounds: np.ndarray, scores: np.ndarray, returns: np.ndarray, k: int = 5
) -> dict[str, float]:
    """`summarize(daily(...))` for rows already sorted by date (a Panel's `bounds`)."""
    return summarize(daily(bounds, scores, returns, k=k))

"""Reference helpers that only the tests use: metrics for rows in any order, grouped by a per-row
date label as pandas `groupby` would (the production path takes rows already sorted by date)."""

from __future__ import annotations

import numpy as np

from ranker.metrics import MIN_NAMES, Daily, daily, summarize


def daily_by_date(
    dates: np.ndarray,
    scores: np.ndarray,
    returns: np.ndarray,
    k: int = 5,
    min_names: int = MIN_NAMES,
) -> Daily:
    """`daily` for rows in any order, grouped by a per-row date label.

    Args:
        dates: (N,) date label of each row (datetime64, ints, strings: anything sortable);
            NaN/NaT rejected.
        scores: (N,) model scores.
        returns: (N,) simple returns.
        k: names per book.
        min_names: dates with fewer rows are skipped.

    Returns:
        A `Daily` whose `date_idx` indexes the sorted unique dates and whose row indices point
        into the ORIGINAL (unsorted) rows. Within a date, rows keep their input order, so score
        ties go to the earlier input row, as pandas groupby + nlargest does.
    """
    dates, scores, returns = np.asarray(dates), np.asarray(scores), np.asarray(returns)
    if dates.shape != scores.shape:
        raise ValueError(f"dates has shape {dates.shape}, scores {scores.shape}: need one per row")
    if dates.dtype.kind in "fmM" and np.any(np.isnan(dates)):
        raise ValueError("dates contains NaN/NaT; drop those rows first (pandas groupby would)")
    order = np.argsort(dates, kind="stable")
    sorted_dates = dates[order]
    change = np.flatnonzero(sorted_dates[1:] != sorted_dates[:-1]) + 1
    bounds = np.concatenate([[0], change, [len(dates)]]) if len(dates) else np.zeros(1)
    d = daily(bounds.astype(np.int64), scores[order], returns[order], k=k, min_names=min_names)
    return Daily(
        date_idx=d.date_idx,
        ic=d.ic,
        long=d.long,
        short=d.short,
        ls=d.ls,
        long_rows=order[d.long_rows],
        short_rows=order[d.short_rows],
        n_rows=d.n_rows,
    )


def evaluate(
    dates: np.ndarray, scores: np.ndarray, returns: np.ndarray, k: int = 5
) -> dict[str, float]:
    """The notebook's `evaluate_model` metrics for rows in any order.

    Args:
        dates: (N,) per-row date label (any sortable dtype).
        scores: (N,) model scores.
        returns: (N,) simple returns.
        k: names per book.

    Returns:
        `summarize` of the dates with at least `MIN_NAMES` rows.
    """
    return summarize(daily_by_date(dates, scores, returns, k=k))

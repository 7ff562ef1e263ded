"""Selection that knows its noise: which configs are statistically tied with the best, and did
any config beat a benchmark after trying k of them. The field's two standard tests, from
Kevin Sheppard's `arch` (`arch.bootstrap`), on per-date losses (T dates x k configs; lower is
better, e.g. minus the daily IC):

- the Model Confidence Set (Hansen, Lunde & Nason 2011, `arch.bootstrap.MCS`): the configs that
  contain the best one with confidence 1 - size; its complement are the configs the data say are
  worse;
- the Superior Predictive Ability test (Hansen 2005, `arch.bootstrap.SPA`), the successor of
  White's Reality Check: the p-value of "no candidate is better than the benchmark", corrected
  for having tried all k (the "consistent" p-value, Hansen's recommended one; lower and upper
  bounds beside it).

Both resample dates with arch's stationary bootstrap (Politis & Romano), mean block length
`block` (default round(sqrt(T)), arch's own default, stated here so a result records it), so the
daily ICs' autocorrelation is kept. Results are deterministic for a given `seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from arch.bootstrap import MCS, SPA


@dataclass(frozen=True)
class TiedSet:
    """The Model Confidence Set of k configs."""

    included: tuple[int, ...]  # the columns in the set, ascending
    pvalues: tuple[float, ...]  # each column's MCS p-value (in the set: >= size)
    size: float
    n_dates: int
    block: int
    reps: int


@dataclass(frozen=True)
class SPAResult:
    """The SPA test of k candidates against a benchmark."""

    pvalue: float  # Hansen's consistent p-value
    pvalue_lower: float
    pvalue_upper: float
    n_models: int
    n_dates: int
    block: int
    reps: int


def default_block(n_dates: int) -> int:
    """The stationary bootstrap's mean block length: round(sqrt(T)), at least 1."""
    return max(1, round(math.sqrt(n_dates)))


def _check(losses: np.ndarray, what: str) -> np.ndarray:
    x = np.asarray(losses, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(
            f"{what}: expected a (T dates, k configs) array with T >= 2, got {x.shape}"
        )
    if not np.isfinite(x).all():
        raise ValueError(f"{what}: losses must be finite (drop the dates where any is not)")
    return x


def model_confidence_set(
    losses: np.ndarray, size: float = 0.1, *, reps: int = 1000, block: int | None = None,
    seed: int = 0,
) -> TiedSet:  # fmt: skip
    """The configs statistically tied with the best at level `size` (the MCS, method "R").

    Args:
        losses: (T, k) per-date losses of k configs on the same dates (lower is better).
        size: the test size; the set holds the best config with probability >= 1 - size.

    Raises:
        ValueError: fewer than 2 dates, a loss that is not finite, or size outside (0, 1).
    """
    x = _check(losses, "model_confidence_set")
    if not 0 < size < 1:
        raise ValueError(f"size={size}: must be in (0, 1), e.g. 0.1")
    t, k = x.shape
    b = block or default_block(t)
    # Configs with identical losses on every date (the same model: a key that changes nothing)
    # are one config to the test, whose variances of their differences are zero.
    _, first, which = np.unique(x.T, axis=0, return_index=True, return_inverse=True)
    if len(first) == 1:
        return TiedSet(tuple(range(k)), (1.0,) * k, size, t, b, reps)
    order = np.argsort(first)  # unique columns in the order they first appear
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    mcs = MCS(x[:, first[order]], size=size, reps=reps, block_size=b, method="R",
              bootstrap="stationary", seed=seed)  # fmt: skip
    mcs.compute()
    p = mcs.pvalues.iloc[:, 0]
    kept = {int(i) for i in mcs.included}
    cols = rank[which.ravel()]  # each column's unique config
    pvalues = tuple(float(p.loc[int(c)]) for c in cols)
    return TiedSet(tuple(j for j in range(k) if int(cols[j]) in kept), pvalues, size, t, b, reps)


def superior_predictive_ability(
    benchmark: np.ndarray, models: np.ndarray, *, reps: int = 1000, block: int | None = None,
    seed: int = 0,
) -> SPAResult:  # fmt: skip
    """Does any of k candidate configs have a lower expected loss than the benchmark?

    Args:
        benchmark: (T,) per-date losses of the benchmark (a stage's starting point).
        models: (T, k) per-date losses of the candidates, on the same dates.

    Raises:
        ValueError: shapes that do not match, fewer than 2 dates, or a loss that is not finite.
    """
    m = _check(models, "superior_predictive_ability")
    b0 = np.asarray(benchmark, dtype=np.float64)
    if b0.shape != (m.shape[0],) or not np.isfinite(b0).all():
        raise ValueError(f"benchmark: expected {m.shape[0]} finite losses, got shape {b0.shape}")
    t, k = m.shape
    b = block or default_block(t)
    # A candidate with the benchmark's losses on every date cannot beat it, and its difference
    # has no variance to studentize by; candidates alike are one candidate.
    distinct = [j for j in range(k) if not np.array_equal(m[:, j], b0)]
    if not distinct:
        return SPAResult(1.0, 1.0, 1.0, k, t, b, reps)
    cols = np.unique(m[:, distinct].T, axis=0).T
    spa = SPA(b0, cols, block_size=b, reps=reps, bootstrap="stationary", studentize=True,
              seed=seed)  # fmt: skip
    spa.compute()
    p = spa.pvalues
    return SPAResult(float(p["consistent"]), float(p["lower"]), float(p["upper"]), k, t, b, reps)

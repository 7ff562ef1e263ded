"""Overfitting statistics: is the selected config's score signal or the luck of many trials?

Two tools, both pure numpy/scipy:

- The deflated Sharpe ratio (Bailey & López de Prado, 2014, "The Deflated Sharpe Ratio:
  Correcting for Selection Bias, Backtest Overfitting and Non-Normality"): the probability that
  the winner's true Sharpe beats the Sharpe that the best of N skill-less trials would show.
- The probability of backtest overfitting by combinatorially symmetric cross-validation (Bailey,
  Borwein, López de Prado & Zhu, 2017, "The Probability of Backtest Overfitting"): how often the
  config that is best in-sample lands at or below the median out-of-sample.

Conventions (fixed here, relied on by the tests):

- Sharpe ratios are per period (per day), not annualised, unless a name says `annual`
  (x sqrt(`ranker.metrics.ANN`)).
- In the DSR, the Sharpe of a series uses the project's one convention, the population standard
  deviation (ddof=0; see `ranker.metrics.sharpe`); skewness and kurtosis are the plain (biased,
  ddof=0) sample moments the paper writes, kurtosis non-excess (3 for a normal). With those
  moments `1 - skew*SR + (kurt-1)/4*SR**2 >= (skew*SR/2 - 1)**2`, so the PSR's variance term is
  never negative.
- In CSCV, the in-sample metric is computed from per-block sums, and a combination counts as
  overfit when its logit is <= 0 (the selected config is at or below the out-of-sample median; the
  paper integrates over lambda < 0, which differs only when N is odd and the pick is exactly the
  median, so <= 0 is the conservative choice).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
from scipy import stats

from ranker.metrics import ANN

EULER_GAMMA = float(np.euler_gamma)

# metric(mean, std, count) -> score, every array (C, N): one row per combination, one column per
# config; std is the population std (ddof=0) of that config's rows in the half.
Metric = Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]


# --- Deflated Sharpe ratio ---------------------------------------------------------------------


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum per-period Sharpe of `n_trials` skill-less trials (the DSR's SR0).

    SR0 = sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g * Phi^-1(1 - 1/(N e))), g the Euler-Mascheroni
    constant; SR0 = 0 for N = 1 (nothing was selected).

    Args:
        n_trials: N, the number of (independent) configs tried, >= 1.
        sharpe_variance: V, the variance across trials of their per-period Sharpe estimates.

    Raises:
        ValueError: if N < 1 or V is negative or not finite.
    """
    if int(n_trials) != n_trials or n_trials < 1:
        raise ValueError(
            f"n_trials={n_trials!r}: must be an integer >= 1 (the number of configs tried)"
        )
    if not np.isfinite(sharpe_variance) or sharpe_variance < 0:
        raise ValueError(
            f"sharpe_variance={sharpe_variance!r}: must be a finite variance >= 0 "
            "(of the per-period Sharpes across trials)"
        )
    n = int(n_trials)
    if n == 1:
        return 0.0
    z = (1 - EULER_GAMMA) * stats.norm.ppf(1 - 1 / n) + EULER_GAMMA * stats.norm.ppf(
        1 - 1 / (n * np.e)
    )
    return float(np.sqrt(sharpe_variance) * z)


def _clean_series(returns: np.ndarray) -> np.ndarray:
    x = np.asarray(returns, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(
            f"returns: shape {x.shape}, expected a 1-D series (e.g. one config's daily IC)"
        )
    x = x[~np.isnan(x)]
    if len(x) < 3:
        raise ValueError(
            f"returns: {len(x)} non-NaN observations, need at least 3 for a Sharpe with skew and "
            "kurtosis; pass a longer series"
        )
    if not np.all(np.isfinite(x)):
        raise ValueError("returns: contains +-inf; replace or drop infinite values before calling")
    return x


def _sharpe_moments(x: np.ndarray) -> tuple[float, float, float]:
    """(per-period Sharpe with ddof=0, skewness, non-excess kurtosis) of a clean series."""
    std = x.std()
    if std == 0:
        raise ValueError(
            f"returns: constant series (every value {x[0]!r}), its Sharpe is undefined; "
            "check the series is the one you meant"
        )
    sharpe = x.mean() / std
    skew = float(stats.skew(x, bias=True))
    kurt = float(stats.kurtosis(x, fisher=False, bias=True))
    return float(sharpe), skew, kurt


def _psr(sharpe: float, skew: float, kurt: float, n_obs: int, sr_benchmark: float) -> float:
    var_term = 1 - skew * sharpe + (kurt - 1) / 4 * sharpe**2
    # >= 0 for any sample moments (see module docstring); 0 only for a two-point series.
    z = (sharpe - sr_benchmark) * np.sqrt(n_obs - 1) / np.sqrt(max(var_term, np.finfo(float).tiny))
    return float(stats.norm.cdf(z))


def deflated_sharpe_ratio(
    returns: np.ndarray,
    n_trials: int,
    sharpe_variance: float | None = None,
    trial_sharpes: np.ndarray | None = None,
) -> dict:
    """Deflated Sharpe ratio of the selected config's series: the PSR against SR0(N, V).

    Args:
        returns: (T,) series of the selected config (e.g. its daily val IC); NaNs are dropped.
        n_trials: N, the number of configs tried (the effective, independent number if known).
        sharpe_variance: V, variance across trials of their per-period Sharpes. Takes precedence.
        trial_sharpes: per-period Sharpes of the trials; V is their variance (ddof=1, NaNs
            dropped). Used only when `sharpe_variance` is None.

    Returns:
        dict with `dsr`, `psr` (against 0), `sharpe` (per period), `sharpe_annual` (x sqrt(252)),
        `sr0` (per period), `n_trials`, `n_obs` (non-NaN count), `skew`, `kurtosis` (non-excess).

    Raises:
        ValueError: no variance source, fewer than 2 usable trial Sharpes, a too-short or
            constant series, or a bad N or V.
    """
    if sharpe_variance is None:
        if trial_sharpes is None:
            raise ValueError(
                "deflated_sharpe_ratio needs the variance of the trials' Sharpes: pass "
                "`sharpe_variance=` (per-period) or `trial_sharpes=` (the per-period Sharpe of "
                "every trial)"
            )
        ts = np.asarray(trial_sharpes, dtype=np.float64).ravel()
        ts = ts[~np.isnan(ts)]
        if len(ts) < 2:
            raise ValueError(
                f"trial_sharpes: {len(ts)} non-NaN values, need at least 2 for a variance; pass "
                "the Sharpe of every trial or `sharpe_variance=` directly"
            )
        sharpe_variance = float(ts.var(ddof=1))
    sr0 = expected_max_sharpe(n_trials, sharpe_variance)
    x = _clean_series(returns)
    sharpe, skew, kurt = _sharpe_moments(x)
    return {
        "dsr": _psr(sharpe, skew, kurt, len(x), sr0),
        "psr": _psr(sharpe, skew, kurt, len(x), 0.0),
        "sharpe": sharpe,
        "sharpe_annual": sharpe * np.sqrt(ANN),
        "sr0": sr0,
        "n_trials": int(n_trials),
        "n_obs": len(x),
        "skew": skew,
        "kurtosis": kurt,
    }


# --- Probability of backtest overfitting (CSCV) -------------------------------------------------


def sharpe_metric(mean: np.ndarray, std: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Per-period Sharpe mean/std (std ddof=0); 0 where std is 0. The default CSCV metric."""
    return np.divide(mean, std, out=np.zeros_like(mean), where=std > 0)


def mean_metric(mean: np.ndarray, std: np.ndarray, count: np.ndarray) -> np.ndarray:
    """The mean (e.g. mean IC): a CSCV metric that ignores dispersion."""
    return mean


def _half_stats(
    member: np.ndarray, n: np.ndarray, s: np.ndarray, ss: np.ndarray, mu: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, std ddof=0, count), each (C, N), of the blocks chosen by `member` (C, S)."""
    cnt = member @ n  # (C, S) @ (S, N) -> (C, N)
    m_c = (member @ s) / cnt  # mean of the centred values
    msq = (member @ ss) / cnt
    var = msq - m_c**2
    # Sums of squares cancel to rounding noise for a constant column: call that 0.
    var[var <= 64 * np.finfo(np.float64).eps * msq] = 0.0
    return m_c + mu, np.sqrt(var), cnt


def _check_perf(perf: np.ndarray, n_blocks: int) -> tuple[np.ndarray, int]:
    """`perf` as a float64 (T, N) array and S as an int, checked for `pbo`."""
    x = np.asarray(perf, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"perf: shape {x.shape}, expected (T, N): T periods x N configs")
    t, n_cfg = x.shape
    if n_cfg < 2:
        raise ValueError(
            f"perf: N={n_cfg} configs, need at least 2 to rank; pass one column per config"
        )
    if int(n_blocks) != n_blocks or n_blocks < 2 or n_blocks % 2:
        raise ValueError(
            f"n_blocks={n_blocks!r}: must be an even integer >= 2 so IS and OOS are equal halves; "
            f"use {max(2, int(n_blocks) + int(n_blocks) % 2)}"
        )
    n_blocks = int(n_blocks)
    if t < n_blocks:
        raise ValueError(
            f"perf: T={t} rows is fewer than n_blocks={n_blocks}; pass a smaller even n_blocks "
            f"(<= {t - t % 2}) or more rows"
        )
    if np.isinf(x).any():
        raise ValueError("perf: contains +-inf; replace or mark them NaN before calling")
    return x, n_blocks


def _block_stats(
    x: np.ndarray, n_blocks: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(count, sum, sum of squares), each (S, N), of every block's non-NaN values centred on
    each config's mean, and those means (N,)."""
    t, n_cfg = x.shape
    block_len = t // n_blocks
    blocks = x[: block_len * n_blocks].reshape(n_blocks, block_len, n_cfg)  # (S, L, N)
    ok = ~np.isnan(blocks)
    n = ok.sum(axis=1).astype(np.float64)  # (S, N)
    if (n == 0).any():
        b, c = np.argwhere(n == 0)[0]
        raise ValueError(
            f"perf: config {c} has no non-NaN value in block {b} (rows {b * block_len}.."
            f"{(b + 1) * block_len - 1}); drop that config or use fewer, longer blocks"
        )
    # Centre each column before summing squares, so variances do not cancel catastrophically.
    mu = np.nanmean(blocks, axis=(0, 1))  # (N,)
    centred = np.where(ok, blocks - mu, 0.0)
    return n, centred.sum(axis=1), (centred**2).sum(axis=1), mu


def pbo(perf: np.ndarray, n_blocks: int = 16, metric: Metric | None = None) -> dict:
    """Probability of backtest overfitting by combinatorially symmetric cross-validation.

    Rows of `perf` are cut into `n_blocks` contiguous blocks of T // n_blocks rows; the last
    T % n_blocks rows (the most recent) are dropped. For each of the C(S, S/2) ways to pick half
    the blocks as in-sample (IS), the config with the best IS metric (first one on ties) is ranked
    among all N configs on the other half (OOS): w = rank / (N + 1), rank 1..N ascending, ties
    averaged; logit = ln(w / (1 - w)). PBO is the fraction of combinations with logit <= 0.

    Everything is vectorised over combinations: per-block sums, sums of squares and counts are
    taken once and combined with a (C, S) 0/1 membership matrix. Memory is a few (C, N) float64
    arrays: S=16, N=100 is ~10 MB each; S=20 would be ~150 MB each.

    Args:
        perf: (T, N) per-period performance, T periods (days) x N configs, e.g. each config's
            daily val IC. NaN marks a missing value and is left out of that config's statistics.
        n_blocks: S, even, 2 <= S <= T.
        metric: `metric(mean, std, count) -> score`, arrays (C, N), std with ddof=0; default
            `sharpe_metric` (mean/std, 0 where std is 0). `mean_metric` ranks by mean.

    Returns:
        dict with `pbo` (float), `logits` (C,), `n_combinations` (C), `n_blocks` (S), `selected`
        (C,) the IS-best config per combination, `is_metric` and `oos_metric` (C,) the metric of
        the selected config IS and OOS (the performance-degradation scatter), and
        `prob_oos_loss`, the fraction of combinations whose selected config has OOS metric < 0.
        Combinations are in `itertools.combinations(range(S), S // 2)` order (IS block indices).

    Raises:
        ValueError: perf not 2-D, N < 2, S odd or < 2, T < S, infinite values, or a block with no
            non-NaN value for some config.
    """
    x, n_blocks = _check_perf(perf, n_blocks)
    n_cfg = x.shape[1]
    n, s, ss, mu = _block_stats(x, n_blocks)

    combos = np.array(list(itertools.combinations(range(n_blocks), n_blocks // 2)))  # (C, S/2)
    n_comb = len(combos)
    member = np.zeros((n_comb, n_blocks))
    member[np.arange(n_comb)[:, None], combos] = 1.0  # (C, S) 0/1, 1 = in-sample

    metric = sharpe_metric if metric is None else metric
    is_score = np.asarray(metric(*_half_stats(member, n, s, ss, mu)), dtype=np.float64)
    oos_score = np.asarray(metric(*_half_stats(1.0 - member, n, s, ss, mu)), dtype=np.float64)
    for name, score in (("IS", is_score), ("OOS", oos_score)):
        assert score.shape == (n_comb, n_cfg), (
            f"metric returned {name} shape {score.shape}, expected ({n_comb}, {n_cfg})"
        )
        if np.isnan(score).any():
            raise ValueError(
                f"metric returned NaN {name} scores; it must be defined for every half"
            )

    rows = np.arange(n_comb)
    best = np.argmax(is_score, axis=1)  # (C,)
    oos_best = oos_score[rows, best]  # (C,)
    below = (oos_score < oos_best[:, None]).sum(axis=1)
    equal = (oos_score == oos_best[:, None]).sum(axis=1)  # includes the pick itself
    rank = below + (equal + 1) / 2  # average rank, 1..N ascending
    w = rank / (n_cfg + 1)
    logits = np.log(w / (1 - w))
    return {
        "pbo": float(np.mean(logits <= 0)),
        "logits": logits,
        "n_combinations": n_comb,
        "n_blocks": n_blocks,
        "selected": best,
        "is_metric": is_score[rows, best],
        "oos_metric": oos_best,
        "prob_oos_loss": float(np.mean(oos_best < 0)),
    }

"""Overfitting statistics against plain references written straight from the papers' formulas."""

from __future__ import annotations

import itertools
import math
import time
from statistics import NormalDist

import numpy as np
import pytest
from scipy.stats import rankdata

from ranker.overfit_stats import deflated_sharpe_ratio, expected_max_sharpe, mean_metric, pbo

PHI = NormalDist()
EULER_GAMMA = 0.57721566490153286060651209008240243104215933593992


# --- references: scalar loops, stdlib normal -----------------------------------------------------


def ref_moments(x: list[float]) -> tuple[float, float, float]:
    t = len(x)
    mean = sum(x) / t
    m2 = sum((v - mean) ** 2 for v in x) / t  # the project's Sharpe: population std (ddof=0)
    m3 = sum((v - mean) ** 3 for v in x) / t
    m4 = sum((v - mean) ** 4 for v in x) / t
    return mean / math.sqrt(m2), m3 / m2**1.5, m4 / m2**2


def ref_sr0(n: int, v: float) -> float:
    if n == 1:
        return 0.0
    return math.sqrt(v) * (
        (1 - EULER_GAMMA) * PHI.inv_cdf(1 - 1 / n) + EULER_GAMMA * PHI.inv_cdf(1 - 1 / (n * math.e))
    )


def ref_psr(x: list[float], sr_star: float) -> float:
    sr, g3, g4 = ref_moments(x)
    z = (sr - sr_star) * math.sqrt(len(x) - 1) / math.sqrt(1 - g3 * sr + (g4 - 1) / 4 * sr**2)
    return PHI.cdf(z)


def ref_pbo(
    perf: np.ndarray, s: int, metric: str
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray]:
    """Loop over combinations, recompute the metric on the concatenated rows of each half."""
    t, n = perf.shape
    blocks = np.split(perf[: (t // s) * s], s)

    def score(rows: np.ndarray) -> np.ndarray:
        mean = np.nanmean(rows, axis=0)
        if metric == "mean":
            return mean
        std = np.nanstd(rows, axis=0)
        return np.array([m / d if d > 0 else 0.0 for m, d in zip(mean, std, strict=True)])

    logits, is_best, oos_best = [], [], []
    for combo in itertools.combinations(range(s), s // 2):
        is_rows = np.concatenate([blocks[i] for i in combo])
        oos_rows = np.concatenate([blocks[i] for i in range(s) if i not in combo])
        is_score, oos_score = score(is_rows), score(oos_rows)
        best = int(np.argmax(is_score))
        w = rankdata(oos_score)[best] / (n + 1)
        logits.append(math.log(w / (1 - w)))
        is_best.append(is_score[best])
        oos_best.append(oos_score[best])
    logits = np.array(logits)
    return float(np.mean(logits <= 0)), logits, np.array(is_best), np.array(oos_best)


# --- deflated Sharpe ratio ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def ic_series() -> np.ndarray:
    # A skewed, fat-tailed daily-IC-like series with a small edge (Sharpe ~0.09/day, ~1.5 a year,
    # so neither PSR nor DSR saturates) and a few NaN days.
    rng = np.random.default_rng(7)
    x = -0.01 + 0.08 * rng.standard_t(5, size=500) + 0.03 * rng.exponential(size=500)
    x[[3, 77, 401]] = np.nan
    return x


@pytest.mark.parametrize("n", [1, 2, 10, 27, 81, 1000])
@pytest.mark.parametrize("v", [0.0, 0.003, 0.25])
def test_expected_max_sharpe_matches_reference(n: int, v: float) -> None:
    assert expected_max_sharpe(n, v) == pytest.approx(ref_sr0(n, v), abs=1e-10)


def test_psr_and_dsr_match_reference(ic_series: np.ndarray) -> None:
    x = [float(v) for v in ic_series if not math.isnan(v)]
    sr, g3, g4 = ref_moments(x)
    # The DSR is the PSR against SR0(N, V): every benchmark SR0 checks the PSR formula.
    for n, v in ((2, 0.01), (10, 0.002), (1000, 0.0005)):
        got = deflated_sharpe_ratio(ic_series, n_trials=n, sharpe_variance=v)["dsr"]
        assert got == pytest.approx(ref_psr(x, ref_sr0(n, v)), abs=1e-10)

    rng = np.random.default_rng(11)
    trial_sharpes = 0.1 + 0.05 * rng.standard_normal(27)
    v = sum((s - sum(trial_sharpes) / 27) ** 2 for s in trial_sharpes) / 26
    out = deflated_sharpe_ratio(ic_series, n_trials=27, trial_sharpes=trial_sharpes)
    assert out["sr0"] == pytest.approx(ref_sr0(27, v), abs=1e-10)
    assert out["dsr"] == pytest.approx(ref_psr(x, ref_sr0(27, v)), abs=1e-10)
    assert out["psr"] == pytest.approx(ref_psr(x, 0.0), abs=1e-10)
    assert out["sharpe"] == pytest.approx(sr, abs=1e-10)
    assert out["sharpe_annual"] == pytest.approx(sr * math.sqrt(252), abs=1e-10)
    assert out["skew"] == pytest.approx(g3, abs=1e-10)
    assert out["kurtosis"] == pytest.approx(g4, abs=1e-10)
    assert (out["n_trials"], out["n_obs"]) == (27, 497)
    # The explicit variance wins over trial_sharpes and gives the same answer.
    same = deflated_sharpe_ratio(ic_series, 27, sharpe_variance=v, trial_sharpes=[0.0, 9.0])
    assert same["dsr"] == pytest.approx(out["dsr"], abs=1e-12)
    # Sanity on the fixture: neither probability is near 0 or 1, where the check would be weak.
    assert 0.3 < out["dsr"] < out["psr"] < 0.99


def test_dsr_falls_strictly_with_trials_and_equals_psr_for_one(ic_series: np.ndarray) -> None:
    # A weaker series so no DSR saturates at 1.0 in floating point.
    rng = np.random.default_rng(3)
    x = 0.005 + 0.1 * rng.standard_normal(750)
    dsrs = [deflated_sharpe_ratio(x, n, sharpe_variance=0.002)["dsr"] for n in (1, 10, 100, 1000)]
    assert all(a > b for a, b in itertools.pairwise(dsrs)), dsrs
    assert deflated_sharpe_ratio(x, 1, sharpe_variance=0.002)["psr"] == dsrs[0]
    assert dsrs[0] == pytest.approx(ref_psr([float(v) for v in x], 0.0), abs=1e-12)


def test_dsr_errors(ic_series: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"sharpe_variance=.*trial_sharpes="):
        deflated_sharpe_ratio(ic_series, 27)
    with pytest.raises(ValueError, match=r"2 non-NaN observations, need at least 3"):
        deflated_sharpe_ratio([0.1, np.nan, 0.2], 5, sharpe_variance=0.01)
    with pytest.raises(ValueError, match=r"2 non-NaN observations"):
        deflated_sharpe_ratio(np.array([np.nan, 0.1, 0.3, np.nan]), 1, sharpe_variance=0.0)
    with pytest.raises(ValueError, match=r"trial_sharpes: 1 non-NaN values"):
        deflated_sharpe_ratio(ic_series, 27, trial_sharpes=[0.1, np.nan])
    with pytest.raises(ValueError, match=r"n_trials=0"):
        expected_max_sharpe(0, 0.1)
    with pytest.raises(ValueError, match=r"sharpe_variance=-0.1"):
        expected_max_sharpe(10, -0.1)
    with pytest.raises(ValueError, match=r"constant series"):
        deflated_sharpe_ratio(np.full(10, 0.05), 1, sharpe_variance=0.0)


# --- probability of backtest overfitting ------------------------------------------------------


@pytest.mark.parametrize("metric", ["sharpe", "mean"])
def test_pbo_matches_reference(metric: str) -> None:
    rng = np.random.default_rng(5)
    # T=83 leaves 3 remainder rows to drop; N=7 is odd, so a pick exactly at the OOS median has
    # logit 0 and the <= 0 convention matters; a mild edge on some configs keeps PBO off 0 and 1.
    edge = np.array([0.0, 0.002, 0.004, 0.0, 0.01, 0.003, 0.006])
    perf = 0.05 * rng.standard_normal((83, 7)) + edge
    perf[10, 2] = np.nan
    perf[44, 5] = np.nan
    want_pbo, want_logits, want_is, want_oos = ref_pbo(perf, 8, metric)
    got = pbo(perf, n_blocks=8, metric=mean_metric if metric == "mean" else None)
    assert got["n_combinations"] == math.comb(8, 4) == len(got["logits"])
    assert got["n_blocks"] == 8
    assert got["pbo"] == want_pbo
    np.testing.assert_array_equal(got["logits"], want_logits)
    np.testing.assert_allclose(got["is_metric"], want_is, rtol=0, atol=1e-10)
    np.testing.assert_allclose(got["oos_metric"], want_oos, rtol=0, atol=1e-10)
    assert 0.0 < got["pbo"] < 1.0  # a fixture where the comparison means something
    assert np.any(got["logits"] == 0.0)  # ... and where <= 0 versus < 0 changes the answer


def test_pbo_ties_average_rank_and_zero_std() -> None:
    # Column 1 is constant (std 0 -> Sharpe 0 everywhere), column 2 repeats column 1: the IS
    # pick (column 0, positive Sharpe everywhere) is compared with exact ties handled as average.
    rng = np.random.default_rng(2)
    a = 0.5 + 0.1 * rng.standard_normal(40)
    perf = np.column_stack([a, np.full(40, 0.3), np.full(40, 0.3)])
    out = pbo(perf, n_blocks=4)
    assert np.all(out["selected"] == 0)
    np.testing.assert_array_equal(out["logits"], np.full(6, math.log(3 / 1)))
    assert out["pbo"] == 0.0
    # Two identical best columns: IS picks the first, OOS rank averages (2 + 3) / 2 = 2.5 of 3.
    out = pbo(np.column_stack([a, a, np.full(40, 0.3)]), n_blocks=4)
    assert np.all(out["selected"] == 0)
    np.testing.assert_allclose(out["logits"], math.log((2.5 / 4) / (1.5 / 4)))


@pytest.mark.parametrize("base_seed", [0, 100])
def test_pbo_pure_noise_near_half(base_seed: int) -> None:
    # One noise market's PBO is widely spread (sd ~0.19 over seeds at this size, 0.06..0.87 seen
    # in 60 seeds), because the C(S, S/2) splits share their data; the average over markets is the
    # thing pinned at 1/2 (N is even, so no logit is exactly 0).
    pbos = [
        pbo(np.random.default_rng(base_seed + i).standard_normal((1000, 30)), n_blocks=10)["pbo"]
        for i in range(20)
    ]
    assert 0.35 <= np.mean(pbos) <= 0.65, pbos


@pytest.mark.parametrize("seed", [4, 5, 6])
def test_pbo_low_with_planted_edge(seed: int) -> None:
    rng = np.random.default_rng(seed)
    perf = rng.standard_normal((1000, 30))
    perf[:, 17] += 0.25  # daily Sharpe 0.25 (~4 annualised) against 29 skill-less configs
    out = pbo(perf, n_blocks=10)
    assert out["pbo"] < 0.1, out["pbo"]
    assert np.mean(out["selected"] == 17) > 0.9


def test_pbo_speed_at_search_scale() -> None:
    perf = np.random.default_rng(0).standard_normal((1250, 81))
    pbo(perf[:100, :4], n_blocks=4)  # warm up imports and BLAS
    start = time.perf_counter()
    out = pbo(perf, n_blocks=16)
    elapsed = time.perf_counter() - start
    assert out["n_combinations"] == 12_870
    assert elapsed < 2.0, f"pbo took {elapsed:.2f}s at S=16, T=1250, N=81"


def test_pbo_errors() -> None:
    perf = np.zeros((40, 5))
    with pytest.raises(ValueError, match=r"T=6 rows is fewer than n_blocks=8.*<= 6"):
        pbo(perf[:6], n_blocks=8)
    with pytest.raises(ValueError, match=r"n_blocks=7: must be an even integer.*use 8"):
        pbo(perf, n_blocks=7)
    with pytest.raises(ValueError, match=r"N=1 configs, need at least 2"):
        pbo(perf[:, :1], n_blocks=4)
    with pytest.raises(ValueError, match=r"shape \(40,\), expected \(T, N\)"):
        pbo(perf[:, 0], n_blocks=4)
    holes = perf.copy()
    holes[10:20, 3] = np.nan
    with pytest.raises(ValueError, match=r"config 3 has no non-NaN value in block 1"):
        pbo(holes, n_blocks=4)

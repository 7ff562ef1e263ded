"""Benchmark: two finished runs of the same spec side by side, stage by stage (e.g. the full grid
and successive halving, or fp32 and bf16): the compute each stage spent, its wall, its winner,
whether the second run's winner is in the first run's tied set, and search vs base on test.

    python benchmarks/compare_runs.py RUN_A RUN_B

Trial-epochs are the sum over a stage's trials of the epochs each trained (results.csv); trial
seconds the sum of their training times, the compute free of how many ran at once.
"""

from __future__ import annotations

import argparse

from search.results import Summary
from search.rundir import Run, RunDir


def _short(point: dict[str, float]) -> str:
    return " / ".join(f"{v:g}" for v in point.values())


def _load(path: str) -> tuple[Run, Summary]:
    run = RunDir(path).load()
    if not isinstance(run.summary, Summary):
        raise SystemExit(f"error: {path} is not a finished single-split run (no summary.json)")
    return run, run.summary


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("a", help="the reference run (its tied sets judge the other's winners)")
    p.add_argument("b")
    args = p.parse_args()
    (ra, sa), (rb, sb) = _load(args.a), _load(args.b)
    print("| stage | trial-epochs | trial seconds | stage wall | winner A | winner B | B's winner "
          "in A's tied set | tied A / B | SPA p A / B |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for ca, cb in zip(sa.stages, sb.stages, strict=True):
        rows_a, rows_b = ra.stage(ca.stage).rows, rb.stage(cb.stage).rows
        ea, eb = sum(r.epoch for r in rows_a), sum(r.epoch for r in rows_b)
        ta = sum(r.result.train_seconds for r in rows_a if r.result)
        tb = sum(r.result.train_seconds for r in rows_b if r.result)
        ga, gb = ca.significance, cb.significance
        inside = "-" if ga is None else ("yes" if ga.is_tied(cb.point) else "no")
        tied = "-" if ga is None or gb is None else f"{ga.n_tied} / {gb.n_tied}"
        spa = "-" if ga is None or gb is None else f"{ga.spa_pvalue:.3f} / {gb.spa_pvalue:.3f}"
        print(f"| {ca.stage} | {ea} → {eb} ({eb / ea:.2f}x) | {ta:.0f} → {tb:.0f} s "
              f"({tb / ta:.2f}x) | {ca.wall_seconds:.0f} → {cb.wall_seconds:.0f} s | "
              f"{_short(ca.point)} | {_short(cb.point)} | {inside} | {tied} | {spa} |")  # fmt: skip
    for name, s in (("A", sa), ("B", sb)):
        t = s.final.test
        vs = s.search_vs_base.sentence if s.search_vs_base else "(no base config trained)"
        print(
            f"{name}: final test IC Sharpe {t['ic_sharpe']:.4f}, mean IC {t['mean_ic']:.4f}. {vs}"
        )


if __name__ == "__main__":
    main()

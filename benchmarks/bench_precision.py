"""Benchmark: does bf16 change conclusions? The default config in fp32 and in bf16, 3 seeds each.

    python benchmarks/bench_precision.py [--config configs/search.yaml] [--seeds 3]

On the spec's data (the default: the built-in synthetic market, scale 0.27), trains the spec's
base model and train configs with seeds 0..N-1 in each precision (bf16: embeddings stored as
bfloat16; on a CPU with AMX the news encoder's matmuls run in bf16 with fp32 accumulation, on
others the bf16 values are widened to fp32 for them; fp32 weights and optimizer state) and
prints each run's val and test mean IC and IC Sharpe, each precision's mean and std over the
seeds, and whether the two means are within one std of each other, with the time of each run on
one thread.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import time

import numpy as np
import torch

from ranker.backtest import backtest
from ranker.device import bf16_matmul_pays
from ranker.train import fit, score
from search import spec as specmod
from search.source import data_source, load_data

KEYS = ("mean_ic", "ic_sharpe")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--config", default=specmod.DEFAULT_CONFIG)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("overrides", nargs="*", help="dotted key=value, as on the command line")
    args = p.parse_args()
    torch.set_num_threads(1)
    sp = specmod.load(args.config, args.overrides, require_stages=False)
    source = data_source(sp)
    results: dict[str, list[dict[str, float]]] = {}
    for precision in ("fp32", "bf16"):
        tc0 = dataclasses.replace(sp.train, precision=precision)
        ds = load_data(dataclasses.replace(sp, train=tc0), source, baseline=False, compare=False)
        results[precision] = []
        for seed in range(args.seeds):
            tc = dataclasses.replace(tc0, seed=seed)
            t = time.perf_counter()
            r = fit(sp.model, tc, ds.train, ds.val)
            seconds = time.perf_counter() - t
            test = backtest(ds.test, score(r.model, ds.test), tc.k).metrics
            row = {f"val_{k}": r.metrics[k] for k in KEYS} | {f"test_{k}": test[k] for k in KEYS}
            results[precision].append(row)
            print(f"{precision} seed {seed}: " + "  ".join(f"{k} {v:+.4f}" for k, v in row.items())
                  + f"  ({seconds:.1f} s, {len(ds.train):,} train rows, 1 thread)", flush=True)  # fmt: skip
    how = "bf16 matmuls" if bf16_matmul_pays("cpu") else "bf16 values in fp32 matmuls (no AMX)"
    print(f"\nmean ± std over {args.seeds} seeds (ddof=1), on {os.path.basename(source)}; "
          f"bf16 here: {how}:")  # fmt: skip
    for key in results["fp32"][0]:
        stats = {}
        for precision, rows in results.items():
            x = np.array([r[key] for r in rows])
            stats[precision] = (x.mean(), x.std(ddof=1))
        (m32, s32), (m16, s16) = stats["fp32"], stats["bf16"]
        within = abs(m32 - m16) <= min(s32, s16)
        print(f"  {key:15} fp32 {m32:+.4f} ± {s32:.4f}   bf16 {m16:+.4f} ± {s16:.4f}   "
              f"|diff| {abs(m32 - m16):.4f} {'<=' if within else '>'} one std: "
              f"{'same conclusion' if within else 'DIFFERENT'}")  # fmt: skip


if __name__ == "__main__":
    main()

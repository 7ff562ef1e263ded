"""Benchmark: one default-config trial on one thread, in fp32 and in bf16, against this
machine's measured matmul peak.

    python benchmarks/bench_train.py [--rows 64500] [--precision fp32 bf16]

Prints (1) the fp32 and bf16 matmul GFLOP/s of this machine, on one thread, on the shapes the
model's training step uses (the news encoder's forward and weight gradient) and on a large
square product; (2) the time of one 15-epoch default-config trial (eval every 5) on a synthetic
Panel of ~64,500 training rows (`--rows 270000`: the notebook's scale) in each precision, the
FLOPs it does (counted analytically from the layer shapes), and the achieved GFLOP/s as a share
of each peak.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace

import numpy as np
import torch

from ranker.model import ModelConfig, MultiBranchRanker
from ranker.panel import Panel, to_bf16_bits
from ranker.train import TrainConfig, fit


def random_panel(rows: int, dates: int, seed: int, n_fund: int = 19, emb_dim: int = 768) -> Panel:
    rng = np.random.default_rng(seed)
    per = np.full(dates, rows // dates)
    per[: rows - per.sum()] += 1
    bounds = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
    n = int(bounds[-1])
    emb = rng.standard_normal((n, emb_dim), dtype=np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    signal = emb[:, 0] * 0.01
    return Panel(
        fund=rng.standard_normal((n, n_fund), dtype=np.float32),
        price=rng.standard_normal((n, 9), dtype=np.float32),
        emb=emb,
        returns=signal + rng.normal(0, 0.02, n),
        symbol_ids=np.tile(np.arange(per.max(), dtype=np.int32), dates)[:n],
        dates=np.datetime64("2021-01-01") + np.arange(dates),
        bounds=bounds,
        symbols=tuple(f"S{i}" for i in range(per.max())),
    )


def linear_shapes(cfg: ModelConfig) -> list[tuple[int, int, bool]]:
    """(in, out, input_needs_grad) of every Linear layer."""
    model = MultiBranchRanker(cfg)
    shapes = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear):
            first = name.endswith(".0") and not name.startswith("output_head")
            shapes.append((m.in_features, m.out_features, not first))
    return shapes


def train_flops(cfg: ModelConfig, train_rows_per_epoch: int, epochs: int, eval_rows: int,
                evals: int) -> float:  # fmt: skip
    """FLOPs of the matmuls: forward 2*in*out per row; backward 2*in*out for the weight grad and
    another 2*in*out for the input grad where the input needs one (not the encoders' inputs)."""
    fwd = sum(2 * i * o for i, o, _ in linear_shapes(cfg))
    bwd = sum(2 * i * o * (2 if g else 1) for i, o, g in linear_shapes(cfg))
    return epochs * train_rows_per_epoch * (fwd + bwd) + evals * eval_rows * fwd


def matmul_gflops(m: int, k: int, n: int, dtype: torch.dtype, repeat: int = 20) -> float:
    """GFLOP/s of an (m, k) @ (k, n) product in `dtype` (the best of `repeat`)."""
    a, b = torch.randn(m, k).to(dtype), torch.randn(k, n).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * m * k * n / best / 1e9


def peaks() -> dict[str, float]:
    """The matmul peak per precision: the best of the model's big shapes and a square one."""
    torch.set_num_threads(1)
    shapes = {"news fwd 1024x768 @ 768x128": (1024, 768, 128),
              "news wgrad 128x1024 @ 1024x768": (128, 1024, 768),
              "square 2048^3": (2048, 2048, 2048)}  # fmt: skip
    out = {}
    for prec, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        rates = {
            name: matmul_gflops(*s, dtype, 5 if s[0] == 2048 else 20) for name, s in shapes.items()
        }
        print(f"{prec} matmul, 1 thread: "
              + "; ".join(f"{name} {g:.0f} GFLOP/s" for name, g in rates.items()))  # fmt: skip
        out[prec] = max(rates.values())
    return out


def bench_trial(rows: int, precision: str, peak: dict[str, float]) -> None:
    torch.set_num_threads(1)
    train = random_panel(rows, 250, seed=0)
    val = random_panel(rows // 7, 36, seed=1)
    if precision == "bf16":
        train = replace(train, emb=to_bf16_bits(train.emb))
        val = replace(val, emb=to_bf16_bits(val.emb))
    cfg, tc = ModelConfig(), TrainConfig(precision=precision)
    # torch.optim imports torch._dynamo when a process builds its first optimizer (~1 s, plus
    # the garbage collections it triggers): a once-per-process cost, timed apart from training.
    t = time.perf_counter()
    torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], fused=True)
    import_s = time.perf_counter() - t
    t = time.perf_counter()
    result = fit(cfg, tc, train, val)
    wall = time.perf_counter() - t
    pairs_rows = 2 * int((np.diff(train.bounds) // 2).sum())
    evals = len(result.history)
    flops = train_flops(cfg, pairs_rows, tc.epochs, len(val), evals)
    achieved = flops / wall / 1e9
    print(f"trial ({precision}): {rows:,} train rows x {tc.epochs} epochs (+{evals} evals of "
          f"{len(val):,} rows), 1 thread: {wall:.2f} s (+{import_s:.2f} s once per process for "
          f"torch's optimizer imports)")  # fmt: skip
    print(f"  {flops / 1e9:,.0f} GFLOP -> {achieved:.1f} GFLOP/s = "
          + ", ".join(f"{achieved / g:.0%} of the {p} peak ({g:.0f})" for p, g in peak.items()))  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=64_500)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    peak = peaks()
    for precision in args.precision:
        bench_trial(args.rows, precision, peak)


if __name__ == "__main__":
    main()

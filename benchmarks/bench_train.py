"""Benchmark: one default-config trial on one thread, and Panel loading vs pyarrow.

    python benchmarks/bench_train.py [--rows 64500] [--data DIR]

Prints (1) the time of one 15-epoch default-config trial (eval every 5) on a synthetic Panel of
~64,500 training rows with torch on 1 thread, the FLOPs it does (counted analytically from the
layer shapes), the achieved GFLOP/s, and the fp32 matmul GFLOP/s of this machine measured in the
same run; (2) the time to load a dataset into Panels next to the time pyarrow alone takes to read
the same columns.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import numpy as np
import torch

from ranker.model import ModelConfig, MultiBranchRanker
from ranker.panel import Panel
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


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def bench_trial(rows: int) -> None:
    torch.set_num_threads(1)
    train = random_panel(rows, 250, seed=0)
    val = random_panel(rows // 7, 36, seed=1)
    cfg, tc = ModelConfig(), TrainConfig()
    peak = matmul_gflops()
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
    print(f"trial: {rows:,} train rows x {tc.epochs} epochs (+{evals} evals of {len(val):,} rows), "
          f"1 thread: {wall:.2f} s (+{import_s:.2f} s once per process for torch's optimizer "
          f"imports)")  # fmt: skip
    print(f"  {flops / 1e9:,.0f} GFLOP -> {achieved:.1f} GFLOP/s; fp32 matmul (2048^3) on this "
          f"machine: {peak:.1f} GFLOP/s; ratio {achieved / peak:.0%}")  # fmt: skip


def bench_load(data: str | None, scale: float) -> None:
    import pyarrow.parquet as pq

    from ranker import schema
    from ranker.data import load
    from ranker.synth import generate

    tmp = None
    if data is None:
        tmp = tempfile.TemporaryDirectory()
        data = tmp.name
        print(f"generating a synthetic market (scale {scale}) for the load benchmark ...")
        generate(data, scale=scale, seed=0)
    path = os.path.join(data, schema.DATASET_FILE)
    cols = schema.resolve_features(pq.read_schema(path).names)
    needed = [schema.DATE, schema.SYMBOL, schema.TARGET, *cols.all]
    t = time.perf_counter()
    table = pq.read_table(path, columns=needed)
    t_arrow = time.perf_counter() - t
    n_rows = table.num_rows
    del table
    t = time.perf_counter()
    ds = load(data)
    t_load = time.perf_counter() - t
    print(f"load: {n_rows:,} rows x {len(needed)} columns; pyarrow.read_table alone {t_arrow:.2f} s, "
          f"ranker.data.load into Panels {t_load:.2f} s ({t_load / t_arrow:.2f}x); train "
          f"{len(ds.train):,} rows")  # fmt: skip
    if tmp:
        tmp.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=64_500)
    p.add_argument("--data", help="dataset directory for the load benchmark (default: synthetic)")
    p.add_argument(
        "--scale", type=float, default=0.27, help="synthetic scale for the load benchmark"
    )
    p.add_argument("--skip-load", action="store_true")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    bench_trial(args.rows)
    if not args.skip_load:
        bench_load(args.data, args.scale)


if __name__ == "__main__":
    main()

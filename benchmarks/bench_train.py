"""Benchmark: one trial on one thread, in fp32 and in bf16, against this machine's measured
matmul peak.

    python benchmarks/bench_train.py [--rows 64500] [--precision fp32 bf16] [--model K=V ...]

Prints (1) the fp32 and bf16 matmul GFLOP/s of this machine, on one thread, on the shapes the
model's training step uses (the news encoder's forward and weight gradient) and on a large
square product, and the fp32 rate of every core multiplying at once (the ceiling for trials
side by side); (2) the time of one 15-epoch trial (eval every 5) of the default config (or the
one `--model` gives) on a synthetic Panel of ~64,500 training rows (`--rows 270000`: the
notebook's scale) in each precision, the FLOPs it does (counted analytically from the layer
shapes), and the achieved GFLOP/s as a share of each peak; (3) in fp32, what a step's row
gather and matmuls cost alone: the step's floor were everything else free.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import multiprocessing
import os
import time
from dataclasses import replace

import numpy as np
import torch

from ranker.config import ConfigError
from ranker.device import bf16_matmul_pays
from ranker.model import ModelConfig, MultiBranchRanker, _weight_grad
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


def _timed_rate(m: int, k: int, n: int, start_at: float, seconds: float) -> float:
    """GFLOP/s of repeated fp32 (m, k) @ (k, n) products on one thread for `seconds`, starting
    at wall-clock `start_at` (so that several processes run at the same time)."""
    torch.set_num_threads(1)
    a, b = torch.randn(m, k), torch.randn(k, n)
    torch.mm(a, b)
    time.sleep(max(0.0, start_at - time.time()))
    t, count = time.perf_counter(), 0
    while time.perf_counter() - t < seconds:
        for _ in range(20):
            torch.mm(a, b)
        count += 20
    return 2 * m * k * n * count / (time.perf_counter() - t) / 1e9


def all_cores_peak(shape: tuple[int, int, int] = (1024, 768, 128)) -> list[float]:
    """The fp32 rate of each core when every visible core multiplies at once (one process per
    core): the ceiling for trials that run side by side, one per core."""
    n = os.cpu_count() or 1
    ctx = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(n, mp_context=ctx) as pool:
        start_at = time.time() + 10  # after every worker has imported torch
        futures = [pool.submit(_timed_rate, *shape, start_at, 4.0) for _ in range(n)]
        return [f.result() for f in futures]


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


def bench_trial(rows: int, precision: str, peak: dict[str, float], model: ModelConfig) -> None:
    torch.set_num_threads(1)
    train = random_panel(rows, 250, seed=0)
    val = random_panel(rows // 7, 36, seed=1)
    if precision == "bf16":
        train = replace(train, emb=to_bf16_bits(train.emb))
        val = replace(val, emb=to_bf16_bits(val.emb))
    cfg, tc = model, TrainConfig(precision=precision)
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
    how = precision
    if precision == "bf16":
        how += (": bf16 matmuls" if bf16_matmul_pays("cpu") else
                ": bf16 embeddings widened to fp32 for the matmuls, as on any CPU without AMX")  # fmt: skip
    print(f"trial ({how}): {rows:,} train rows x {tc.epochs} epochs (+{evals} evals of "
          f"{len(val):,} rows), 1 thread: {wall:.2f} s (+{import_s:.2f} s once per process for "
          f"torch's optimizer imports)")  # fmt: skip
    print(f"  {flops / 1e9:,.0f} GFLOP -> {achieved:.1f} GFLOP/s = "
          + ", ".join(f"{achieved / g:.0%} of the {p} peak ({g:.0f})" for p, g in peak.items()))  # fmt: skip
    if precision == "fp32":
        steps = tc.epochs * (pairs_rows // 2 // tc.batch_size)
        step_parts(train, cfg, tc, wall / steps)


def step_parts(train: Panel, cfg: ModelConfig, tc: TrainConfig, step_s: float) -> None:
    """What a training step's irreducible parts cost on their own, next to the whole step: the
    row gather and every matmul (each Linear's forward and weight gradient, and the gradient of
    its input where the input needs one), the news encoder's first layer apart. Their sum is the
    step's floor: its time if the elementwise ops, the dropout masks, the optimizer and Python
    cost nothing."""
    rows = 2 * tc.batch_size
    emb = torch.from_numpy(train.emb)
    x = torch.empty(rows, emb.shape[1])
    layers = []  # (input, weight, bias, output gradient, input needs a gradient)
    for n_in, n_out, needs_grad in linear_shapes(cfg):
        a = x if n_in == emb.shape[1] and not needs_grad else torch.randn(rows, n_in)
        layers.append((a, torch.randn(n_out, n_in) * 0.05, torch.zeros(n_out),
                       torch.randn(rows, n_out), needs_grad))  # fmt: skip
    rng = np.random.default_rng(0)
    gather = news = other = 0.0
    n = 200
    for _ in range(n):
        idx = torch.from_numpy(rng.integers(0, len(emb), rows))
        t0 = time.perf_counter()
        torch.index_select(emb, 0, idx, out=x)
        gather += time.perf_counter() - t0
        for a, w, b, g, needs_grad in layers:
            t0 = time.perf_counter()
            torch.addmm(b, a, w.t())  # forward
            _weight_grad(g, a)  # weight gradient, as the fused step computes it
            if needs_grad:
                g.mm(w)  # input gradient
            if a is x:
                news += time.perf_counter() - t0
            else:
                other += time.perf_counter() - t0
    gather, news, other = gather / n, news / n, other / n
    floor = gather + news + other
    flops = 2 * 2 * rows * emb.shape[1] * cfg.news_hidden
    print(f"  per step of {rows:,} rows: the trial {step_s * 1e3:.2f} ms (evaluations "
          f"included); alone, the news encoder's first-layer matmuls {news * 1e3:.2f} ms "
          f"({flops / news / 1e9:.0f} GFLOP/s), the other {len(layers) - 1} layers' matmuls "
          f"{other * 1e3:.2f} ms, the row gather {gather * 1e3:.2f} ms: a floor of "
          f"{floor * 1e3:.2f} ms ({floor / step_s:.0%} of the step); everything else "
          f"{(step_s - floor) * 1e3:.2f} ms")  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=64_500)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    p.add_argument("--model", nargs="*", default=[], metavar="K=V",
                   help="model fields to change from the default config, e.g. news_latent=64 "
                   "(the training and dropout stages' config at scale 1.0: fundamental_latent=64 "
                   "price_latent=32 news_latent=64)")  # fmt: skip
    args = p.parse_args()
    fields = {}
    for kv in args.model:
        key, sep, value = kv.partition("=")
        if not sep:
            p.error(f"--model {kv!r}: expected FIELD=VALUE, e.g. news_latent=64")
        try:
            fields[key] = float(value) if "." in value else int(value)
        except ValueError:
            p.error(f"--model {kv!r}: {value!r} is not a number")
    try:
        model = ModelConfig.from_dict({**ModelConfig().to_dict(), **fields})
    except ConfigError as e:
        p.error(f"--model: {e}")
    print(f"torch {torch.__version__}, {os.cpu_count()} CPUs visible")
    peak = peaks()
    rates = all_cores_peak()
    print(f"fp32 news fwd 1024x768 @ 768x128 on all {len(rates)} cores at once (one process "
          f"each): {' + '.join(f'{r:.0f}' for r in rates)} = {sum(rates):.0f} GFLOP/s")  # fmt: skip
    for precision in args.precision:
        bench_trial(args.rows, precision, peak, model)


if __name__ == "__main__":
    main()

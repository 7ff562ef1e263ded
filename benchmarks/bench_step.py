"""Benchmark: does the hand-written CPU training step still pay? One step (forward, backward and
AdamW) of `MultiBranchRanker` on one thread, through the fused path training uses on the CPU
(`ranker.model._fused_loss_and_grads`) and through plain autograd over the same nn modules.

    python benchmarks/bench_step.py [--pairs 512] [--steps 300] [--precision fp32 bf16]

Both paths draw the same dropout masks and compute the same loss and gradients
(tests/test_fused.py); only the time differs. Prints ms a step (median of --repeats timings of
--steps steps each) for the default config and stage 1's largest, and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from ranker.device import bf16_matmul_pays
from ranker.model import ModelConfig, MultiBranchRanker

WIDE = ModelConfig(fund_hidden=96, price_hidden=48, news_hidden=192, fundamental_latent=64,
                   price_latent=32, news_latent=64)  # fmt: skip
CONFIGS = {"default": ModelConfig(), "latent x2, hidden x1.5": WIDE}


def _inputs(cfg: ModelConfig, pairs: int, bf16: bool) -> tuple[list[torch.Tensor], torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    dims = (cfg.n_price_features, cfg.n_fundamental_features, cfg.n_embedding_dim)
    x = [torch.randn(2 * pairs, n, generator=g) for n in dims]
    if bf16:
        x[2] = x[2].to(torch.bfloat16)
    y = (torch.rand(pairs, generator=g) > 0.5).float() * 0.9 + 0.05
    return x, y


def _time(cfg: ModelConfig, pairs: int, steps: int, fused: bool, bf16: bool) -> float:
    """Seconds for `steps` training steps on one batch."""
    model = MultiBranchRanker(cfg).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-3, fused=True)
    x, y = _inputs(cfg, pairs, bf16)
    model.seed_dropout(0)
    t0 = time.perf_counter()
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        if fused:
            model.pair_loss_backward(*x, y)
        elif bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model.pair_loss(*x, y)
            loss.backward()
        else:
            model.pair_loss(*x, y).backward()
        opt.step()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pairs", type=int, default=512)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--precision", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    args = p.parse_args()
    torch.set_num_threads(1)
    print(f"torch {torch.__version__}, 1 thread; bf16 matmuls pay here: {bf16_matmul_pays('cpu')}")
    for precision in args.precision:
        bf16 = precision == "bf16"
        if bf16 and not bf16_matmul_pays("cpu"):
            print(f"{precision}: skipped (training widens bf16 inputs to fp32 on this CPU)")
            continue
        for name, cfg in CONFIGS.items():
            ms = {}
            for fused in (True, False):
                _time(cfg, args.pairs, 20, fused, bf16)  # warm up
                runs = [
                    _time(cfg, args.pairs, args.steps, fused, bf16) for _ in range(args.repeats)
                ]
                ms[fused] = 1e3 * statistics.median(runs) / args.steps
            print(f"{precision} {name:>24}: fused {ms[True]:6.2f} ms a step, autograd "
                  f"{ms[False]:6.2f} ms ({ms[False] / ms[True]:.2f}x)")  # fmt: skip


if __name__ == "__main__":
    main()

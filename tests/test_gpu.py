"""GPU checks (marker `gpu`, skipped without CUDA; `benchmarks/bench_gpu.py` runs them on a GPU
box, which needs PyTorch, pandas, pyarrow and scipy but not Ray: nothing here imports Ray).

- the step replayed as a CUDA graph trains exactly as the eager step, with and without dropout;
- the per-process memory cap counts the CUDA context, and released memory leaves the process;
- bf16 on the GPU trains to the same conclusions as fp32.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from ranker.device import CUDA_CONTEXT_MB, cap_gpu_memory, gpu_stats, release_gpu_memory
from ranker.model import ModelConfig
from ranker.panel import to_bf16_bits
from ranker.train import TrainConfig, fit

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
SMALL = ModelConfig(fund_hidden=16, price_hidden=8, news_hidden=32, fundamental_latent=8,
                    price_latent=4, news_latent=8)  # fmt: skip


def _fit(ds, **train):
    tc = TrainConfig(epochs=3, eval_every=1, batch_size=128, **train)
    return fit(SMALL, tc, ds.train, ds.val, device="cuda")


@pytest.mark.parametrize("dropout", [0.0, 0.3])
def test_graph_step_trains_exactly_as_the_eager_step(tiny_dataset, dropout):
    cfg = dataclasses.replace(SMALL, fundamental_dropout=dropout, price_dropout=dropout,
                              news_dropout=dropout)  # fmt: skip
    tc = TrainConfig(epochs=3, eval_every=1, batch_size=128)
    eager = fit(cfg, dataclasses.replace(tc, cuda_graphs=False), tiny_dataset.train,
                tiny_dataset.val, device="cuda")  # fmt: skip
    graph = fit(cfg, tc, tiny_dataset.train, tiny_dataset.val, device="cuda")
    for (k, a), b in zip(eager.model.state_dict().items(), graph.model.state_dict().values(),
                         strict=True):  # fmt: skip
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=k)
    assert [h["train_loss"] for h in eager.history] == pytest.approx(
        [h["train_loss"] for h in graph.history], rel=1e-4
    )


def test_the_memory_cap_counts_the_cuda_context():
    total = torch.cuda.get_device_properties(0).total_memory
    cap_gpu_memory(0.25)
    allowed = 0.25 * total - CUDA_CONTEXT_MB * 2**20
    x = torch.empty(int(allowed * 0.9), dtype=torch.uint8, device="cuda")  # fits
    with pytest.raises(torch.OutOfMemoryError):
        torch.empty(int(allowed * 0.2), dtype=torch.uint8, device="cuda")  # over the cap
    del x
    assert gpu_stats("cuda")["gpu_peak_mb"] >= allowed * 0.9 / 2**20
    release_gpu_memory("cuda")
    assert torch.cuda.memory_reserved() == 0 and torch.cuda.max_memory_allocated() == 0
    torch.cuda.set_per_process_memory_fraction(1.0)


def test_bf16_on_the_gpu_reaches_the_same_conclusions(tiny_dataset):
    ds16 = dataclasses.replace(
        tiny_dataset,
        train=dataclasses.replace(tiny_dataset.train, emb=to_bf16_bits(tiny_dataset.train.emb)),
    )
    ic32 = [_fit(tiny_dataset, seed=s).metrics["mean_ic"] for s in range(3)]
    ic16 = [_fit(ds16, seed=s, precision="bf16").metrics["mean_ic"] for s in range(3)]
    assert abs(np.mean(ic32) - np.mean(ic16)) <= max(np.std(ic32, ddof=1), np.std(ic16, ddof=1))

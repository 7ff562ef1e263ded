"""Device helpers for a training process: the one setup of a process that trains with a trial's
resources (`setup`), whether bf16 matmuls pay on a device, a GPU memory cap that counts the CUDA
context, the GPU's name and peak memory, and releasing cached memory between trials. No Ray
here."""

from __future__ import annotations

import functools
import os
import socket
import time
from pathlib import Path
from typing import Any

import torch

CUDA_CONTEXT_MB = 600  # what a process's CUDA context takes on the card, beside its tensors


class NoCudaDevice(RuntimeError):
    """A GPU share was reserved but this process sees no CUDA device."""


def setup(cpus: float, gpu: float) -> str:
    """Set this process up to train with the resources it reserved; its device.

    torch uses `int(cpus)` threads (at least one); with a GPU share (`gpu` > 0) the device is
    'cuda' and, for a share below one card, its memory is capped to that share
    (`cap_gpu_memory`).

    Raises:
        NoCudaDevice: a GPU share was reserved but torch sees no CUDA device.
    """
    torch.set_num_threads(max(1, int(cpus)))
    if gpu <= 0:
        return "cpu"
    if not torch.cuda.is_available():
        raise NoCudaDevice(
            f"resources.gpu={gpu:g} was reserved but torch sees no CUDA device on "
            f"{socket.gethostname()} (torch {torch.__version__}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). Fix: install a "
            f"CUDA build of torch on the GPU nodes, or run with resources.gpu=0."
        )
    cap_gpu_memory(gpu)
    return "cuda"


# A CPU's bf16 matmul must beat its fp32 one by this factor to be used: far from the ratios seen
# (0.5x and 2.8x), so the choice does not flip with timing noise.
BF16_MIN_SPEEDUP = 1.3


def bf16_matmul_pays(device: str | torch.device) -> bool:
    """Whether a bf16 matmul (fp32 accumulation) beats an fp32 one on this device.

    True on GPUs (tensor cores) and on CPUs with AMX; False on CPUs without AVX-512 BF16. With
    AVX-512 BF16 but no AMX it depends on the chip, so it is measured once per process (about
    0.1 s, `bf16_speedup`): on this project's 2-core VM of 2026-12-03 (AMD EPYC, Zen 4) oneDNN's
    bf16 matmul ran at 2.8x its fp32 rate (207 vs 73 GFLOP/s on the news encoder's shapes), on
    an earlier VM of the same kind at half of it (81 vs 159 GFLOP/s).
    """
    if torch.device(device).type != "cpu":
        return True
    flags = _cpu_flags()
    if "amx_bf16" in flags:
        return True
    if "avx512_bf16" not in flags:
        return False
    return bf16_speedup() >= BF16_MIN_SPEEDUP


@functools.cache
def bf16_speedup() -> float:
    """fp32 time / bf16 time of the news encoder's forward matmul (1,024 x 768 @ 768 x 128) on
    this CPU, with torch's threads at the time of the first call; the best of 5 rounds each."""

    def best(a: torch.Tensor, w: torch.Tensor) -> float:
        rounds = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                torch.mm(a, w.t())
            rounds.append(time.perf_counter() - t0)
        return min(rounds)

    g = torch.Generator().manual_seed(0)
    a, w = torch.randn(1024, 768, generator=g), torch.randn(128, 768, generator=g)
    a16, w16 = a.to(torch.bfloat16), w.to(torch.bfloat16)
    best(a, w), best(a16, w16)  # warm up: oneDNN builds its kernels on first use
    return best(a, w) / best(a16, w16)


@functools.cache
def _cpu_flags() -> frozenset[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split())
    return frozenset()


def cap_gpu_memory(share: float) -> None:
    """Cap this process's GPU memory to its share of the card, its CUDA context included.

    `torch.cuda.set_per_process_memory_fraction` caps only PyTorch's allocator; the context
    (~300-600 MB, by GPU and driver) comes on top, so four trials capped at 0.25 each could
    overfill a card. The allocator's cap is the share less `CUDA_CONTEXT_MB`.
    """
    if share >= 1:
        return
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(max(0.01, share - CUDA_CONTEXT_MB * 2**20 / total))


def gpu_stats(device: str) -> dict[str, Any]:
    """The GPU's name and this process's peak allocated memory (MB), on a CUDA device."""
    if device != "cuda":
        return {}
    return {"gpu": torch.cuda.get_device_name(),
            "gpu_peak_mb": torch.cuda.max_memory_allocated() / 2**20}  # fmt: skip


def release_gpu_memory(device: str) -> None:
    """Return cached blocks to the driver and reset the peak, so the next trial this (reused)
    actor runs starts from a clean slate."""
    if device == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()

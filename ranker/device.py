"""Device helpers for a training process: the one setup of a process that trains with a trial's
resources (`setup`), whether bf16 matmuls pay on a device, a GPU memory cap that counts the CUDA
context, the GPU's name and peak memory, and releasing cached memory between trials. No Ray
here."""

from __future__ import annotations

import functools
import os
import socket
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


def bf16_matmul_pays(device: str | torch.device) -> bool:
    """Whether a bf16 matmul (fp32 accumulation) beats an fp32 one on this device.

    True on GPUs (tensor cores) and on CPUs with AMX. Elsewhere it does not: with AVX-512 BF16
    but no AMX, oneDNN's bf16 matmul runs at half the fp32 rate (81 vs 159 GFLOP/s at 4096^3
    on this project's CPU), and without AVX-512 BF16 slower still.
    """
    if torch.device(device).type != "cpu":
        return True
    return "amx_bf16" in _cpu_flags()


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

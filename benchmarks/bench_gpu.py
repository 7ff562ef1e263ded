"""GPU benchmark, one command, no Ray needed (a GPU box may have PyTorch, pandas, pyarrow and
scipy and nothing else): under 8 minutes on one GPU.

    python benchmarks/bench_gpu.py [--rows 270000] [--skip-tests]

1. runs the GPU tests (`pytest -m gpu tests/test_gpu.py`);
2. times one default-config trial (15 epochs, eval every 5) at the notebook's scale (270,000
   training rows, a random Panel) on the GPU, eager and graph-captured, fp32 and bf16;
3. emulates four trials packed on one GPU as `resources.gpu=0.25` would pack them: four
   processes, each capped to a quarter of the card (context included), training at once; prints
   each one's time and peak memory, and the GPU's utilisation sampled meanwhile.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def _trial(rows: int, graphs: bool, precision: str, share: float | None) -> dict:
    import dataclasses

    import torch

    sys.path.insert(0, HERE)
    from bench_train import random_panel

    from ranker.device import cap_gpu_memory, gpu_stats
    from ranker.model import ModelConfig
    from ranker.panel import to_bf16_bits
    from ranker.train import TrainConfig, fit

    if share is not None:
        cap_gpu_memory(share)
    train, val = random_panel(rows, 868, seed=0), random_panel(rows // 7, 124, seed=1)
    if precision == "bf16":
        train = dataclasses.replace(train, emb=to_bf16_bits(train.emb))
    tc = TrainConfig(precision=precision, cuda_graphs=graphs)
    fit(ModelConfig(), dataclasses.replace(tc, epochs=1, eval_every=1),
        random_panel(20_000, 100, 2), random_panel(3_000, 20, 3), device="cuda")  # fmt: skip
    torch.cuda.reset_peak_memory_stats()
    torch.cuda.synchronize()
    t = time.perf_counter()
    fit(ModelConfig(), tc, train, val, device="cuda")
    torch.cuda.synchronize()
    return {"seconds": time.perf_counter() - t, **gpu_stats("cuda")}


def _utilisation(stop: threading.Event, out: list[float]) -> None:
    while not stop.is_set():
        r = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                           capture_output=True, text=True)  # fmt: skip
        if r.returncode == 0 and r.stdout.strip():
            out.append(float(r.stdout.split()[0]))
        stop.wait(0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--rows", type=int, default=270_000)
    p.add_argument("--skip-tests", action="store_true")
    p.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        rows, graphs, precision, share = args.child
        r = _trial(int(rows), graphs == "1", precision, None if share == "-" else float(share))
        print(json.dumps(r))
        return
    import torch

    assert torch.cuda.is_available(), "no CUDA device: this benchmark needs a GPU"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}", flush=True)
    if not args.skip_tests:
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py",
                        "-p", "no:cacheprovider"], cwd=ROOT, check=False)  # fmt: skip

    def child(graphs: bool, precision: str, share: float | None) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, __file__, "--child", str(args.rows),
                                 "1" if graphs else "0", precision, "-" if share is None else str(share)],
                                stdout=subprocess.PIPE, text=True, cwd=ROOT)  # fmt: skip

    for precision in ("fp32", "bf16"):
        for graphs in (False, True):
            out, _ = child(graphs, precision, None).communicate()
            r = json.loads(out.strip().splitlines()[-1])
            print(f"one trial, {args.rows:,} rows x 15 epochs, {precision}, "
                  f"{'graph-captured' if graphs else 'eager'}: {r['seconds']:.1f} s, "
                  f"peak {r['gpu_peak_mb']:,.0f} MB", flush=True)  # fmt: skip
    stop, util = threading.Event(), []
    sampler = threading.Thread(target=_utilisation, args=(stop, util), daemon=True)
    sampler.start()
    t = time.perf_counter()
    procs = [child(True, "fp32", 0.25) for _ in range(4)]
    results = [json.loads(p.communicate()[0].strip().splitlines()[-1]) for p in procs]
    wall = time.perf_counter() - t
    stop.set()
    for i, r in enumerate(results):
        print(f"packed trial {i}: {r['seconds']:.1f} s, peak {r['gpu_peak_mb']:,.0f} MB")
    mean_util = sum(util) / len(util) if util else float("nan")
    print(
        f"four trials on one GPU (gpu=0.25 each): {wall:.1f} s wall for all four; "
        f"GPU utilisation {mean_util:.0f}% on average ({len(util)} samples)"
    )


if __name__ == "__main__":
    main()

"""Benchmark: memory of N concurrent trials against one, with the Panels in the object store.

    python benchmarks/bench_memory.py --data DIR [--trials 4] [--cpu 0.5]

Runs one short stage twice on a local Ray: with a single trial, then with N trials at once
(fractional CPUs, so they run concurrently). Each trial reports its resident memory split into
private pages (its own) and the rest (shared: the object store's Panel pages, mapped zero-copy).
If every trial copied the data, the private memory per trial would grow by the Panel's size.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import tempfile

import ray

from search import driver
from search import spec as specmod
from search.rundir import RunDir
from search.source import load_data
from search.stages import run_stage


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", required=True, help="dataset directory (e.g. from liquid-search synth)"
    )
    p.add_argument("--trials", type=int, default=4)
    p.add_argument("--cpu", type=float, default=0.5, help="CPUs per trial")
    p.add_argument("--epochs", type=int, default=2)
    args = p.parse_args()
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    ray.init(num_cpus=max(1, round(args.trials * args.cpu)), include_dashboard=False)
    base = specmod.load(
        os.path.join(os.path.dirname(__file__), "..", "configs", "search.yaml"),
        [
            f"train.epochs={args.epochs}",
            f"train.eval_every={args.epochs}",
            f"resources.cpu={args.cpu}",
            "final.baseline=false",
        ],
    )
    ds = load_data(base, args.data, compare=False)
    refs, ds = driver.prepare(ds)
    mb = ds.train.nbytes / 2**20 + ds.val.nbytes / 2**20
    print(f"Panels in the object store: train + val = {mb:,.0f} MB")
    data = {"train": refs["train"], "val": refs["val"]}
    for n in (1, args.trials):
        values = [round(0.6 + 0.1 * i, 2) for i in range(n)]
        stage = specmod.StageSpec(name=f"mem{n}", grid={"news_alpha": tuple(values)})
        sp = dataclasses.replace(base, stages=(stage,))
        with tempfile.TemporaryDirectory() as run_dir:
            run = RunDir(run_dir)
            run_stage(sp, stage, run, sp.model, sp.train, data)
            rows = run.read_rows(stage) or []
        priv = [r.mem_private_mb for r in rows]
        rss = [r.mem_rss_mb for r in rows]
        print(f"{n} concurrent trial(s): private {sum(priv):,.0f} MB in all "
              f"({sum(priv) / n:,.0f} per trial), resident {sum(rss):,.0f} MB "
              f"({sum(rss) / n:,.0f} per trial, shared pages counted in each); zero-copy: "
              f"{all(r.data_zero_copy for r in rows)}")  # fmt: skip
    ray.shutdown()


if __name__ == "__main__":
    main()

"""Benchmark: loading a dataset into Panels on every file layout, against pyarrow's fastest read.

    python benchmarks/bench_load.py [--rows 288000] [--dir DIR] [--threads 1]

Writes one synthetic market's `ml_dataset.pqt` in three layouts real pipelines produce:
- `per_date`: one row group per date (a daily pipeline appending each day: ~1,240 groups);
- `pandas`: `DataFrame.to_parquet`'s default (pyarrow row groups of up to 1Mi rows);
- `single`: the whole file as one row group.
For each layout, in fresh processes (so each peak RSS is its own), it times the fastest way
pyarrow itself reads the same columns (`read_table`, `iter_batches`, `read_row_groups` over runs
of about 64 MB of row groups; the best of those), then `ranker.data.load` into Panels with the
same number of threads, and prints both with their peak memory. The per-date file at the
default size is the acceptance case: ours <= 1.5x pyarrow's fastest, and <= 10 s on one thread.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

LAYOUTS = ("per_date", "pandas", "single")
BATCH_BYTES = 64 * 2**20


def write_layouts(root: str, rows: int) -> dict[str, str]:
    """The synthetic market (about `rows` rows over 1,241 dates) in each layout, cached."""
    import numpy as np
    import pyarrow.parquet as pq

    from ranker import schema
    from ranker.synth import generate

    n_symbols = max(40, round(rows / 1241 / 1718 * 5644))  # ~1,718 rows a date per 5,644
    src = os.path.join(root, f"src-{n_symbols}")
    if not os.path.exists(os.path.join(src, "synth.json")):
        print(f"generating a synthetic market with {n_symbols} symbols ...", flush=True)
        generate(src, n_symbols=n_symbols, seed=0)
    out = {}
    table = None
    for layout in LAYOUTS:
        d = os.path.join(root, f"{layout}-{n_symbols}")
        out[layout] = d
        if os.path.exists(os.path.join(d, schema.DATASET_FILE)):
            continue
        os.makedirs(d, exist_ok=True)
        for f in (schema.PRICES_FILE, schema.ORACLE_FILE):
            shutil.copy(os.path.join(src, f), os.path.join(d, f))
        if table is None:
            table = pq.read_table(os.path.join(src, schema.DATASET_FILE))
            table = table.sort_by([(schema.DATE, "ascending"), (schema.SYMBOL, "ascending")])
        path = os.path.join(d, schema.DATASET_FILE)
        if layout == "per_date":
            days = table.column(schema.DATE).to_numpy()
            cuts = np.flatnonzero(days[1:] != days[:-1]) + 1
            with pq.ParquetWriter(path, table.schema) as w:
                for a, b in zip([0, *cuts], [*cuts, len(days)], strict=True):
                    w.write_table(table.slice(a, b - a))
        elif layout == "pandas":
            table.to_pandas().to_parquet(path, index=False)
        else:
            pq.write_table(table, path, row_group_size=table.num_rows)
    return out


# ---------------------------------------------------------------- measured in a child process


def _child(args: list[str]) -> None:
    import time

    import pyarrow as pa
    import pyarrow.parquet as pq

    what, path, threads = args[0], args[1], int(args[2])
    pa.set_cpu_count(threads)
    pa.set_io_thread_count(max(1, threads))
    use_threads = threads > 1
    from ranker import schema

    pf = pq.ParquetFile(os.path.join(path, schema.DATASET_FILE))
    cols = [
        schema.DATE,
        schema.SYMBOL,
        schema.TARGET,
        *schema.resolve_features(pf.schema_arrow.names).all,
    ]
    row_bytes = 4 * len(cols)
    if what == "ours":
        import torch

        from ranker.data import load

        torch.set_num_threads(threads)
    t = time.perf_counter()
    n = 0
    if what == "read_table":
        n = pq.read_table(os.path.join(path, schema.DATASET_FILE), columns=cols,
                          use_threads=use_threads).num_rows  # fmt: skip
    elif what == "iter_batches":
        for b in pf.iter_batches(batch_size=BATCH_BYTES // row_bytes, columns=cols,
                                 use_threads=use_threads):  # fmt: skip
            n += b.num_rows
    elif what == "read_row_groups":
        md = pf.metadata
        run: list[int] = []
        rows = 0
        for i in range(md.num_row_groups):
            run.append(i)
            rows += md.row_group(i).num_rows
            if rows * row_bytes >= BATCH_BYTES or i == md.num_row_groups - 1:
                n += pf.read_row_groups(run, columns=cols, use_threads=use_threads).num_rows
                run, rows = [], 0
    elif what == "ours":
        ds = load(path, full_universe=True, threads=use_threads)
        n = len(ds.train) + len(ds.val) + len(ds.test)
    seconds = time.perf_counter() - t
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across exec, so a child would report its
    # parent's peak.
    with open("/proc/self/status") as f:
        peak = next(int(ln.split()[1]) for ln in f if ln.startswith("VmHWM:")) / 1024
    print(json.dumps({"what": what, "seconds": seconds, "peak_mb": peak, "rows": n}))


def measure(what: str, path: str, threads: int) -> dict:
    r = subprocess.run([sys.executable, __file__, "--child", what, path, str(threads)],
                       capture_output=True, text=True, check=True)  # fmt: skip
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--rows", type=int, default=288_000, help="about this many dataset rows")
    p.add_argument("--dir", help="where the layouts are written (kept; default: a temp dir)")
    p.add_argument("--threads", type=int, default=1, help="threads for pyarrow and for us")
    p.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        _child(args.child)
        return
    tmp = None
    root = args.dir
    if root is None:
        tmp = tempfile.TemporaryDirectory()
        root = tmp.name
    import pyarrow.parquet as pq

    from ranker import schema

    paths = write_layouts(root, args.rows)
    print(f"{args.threads} thread(s); times are the best of 2 runs (file in the page cache); "
          f"peak = the process's max RSS (VmHWM)")  # fmt: skip
    print(
        f"{'layout':9} {'row groups':>10} {'rows':>10}  {'pyarrow fastest':>30}  {'ours':>17}  ratio"
    )
    for layout, path in paths.items():
        md = pq.ParquetFile(os.path.join(path, schema.DATASET_FILE)).metadata
        best = None
        measure("read_table", path, args.threads)  # warm the page cache
        for what in ("read_table", "iter_batches", "read_row_groups"):
            r = min(
                (measure(what, path, args.threads) for _ in range(2)), key=lambda x: x["seconds"]
            )
            if best is None or r["seconds"] < best["seconds"]:
                best = r
        ours = min(
            (measure("ours", path, args.threads) for _ in range(2)), key=lambda x: x["seconds"]
        )
        print(f"{layout:9} {md.num_row_groups:>10,} {md.num_rows:>10,}  "
              f"{best['what']:>15} {best['seconds']:5.2f} s {best['peak_mb']:5,.0f} MB  "
              f"{ours['seconds']:5.2f} s {ours['peak_mb']:5,.0f} MB  "
              f"{ours['seconds'] / best['seconds']:.2f}x", flush=True)  # fmt: skip
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()

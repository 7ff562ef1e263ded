"""`liquid-search status`: a run's stages and trials as text, finished or in flight.

A finished stage is shown from its results (`rundir`); a stage in flight or interrupted from
Tune's own record of its trials (`stages.live_trials`, through `tune.ExperimentAnalysis`), so it
works on a run under s3:// or gs:// as well as on a local one.
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from search.analysis import point_table
from search.final import result_lines
from search.report.document import fmt
from search.rundir import ERROR, Run, RunDir, StageRecord, TrialRow
from search.spec import REPLICATE
from search.stages import LiveTrial, live_trials

_COLS = ("ic_sharpe", "mean_ic", "long_sharpe", "short_sharpe", "ls_sharpe")


def _key(v: Any) -> str:
    """A grid value as written in the spec (0.0005, 1e-04 style), not as a metric."""
    try:
        return f"{float(v):g}"
    except (TypeError, ValueError):
        return str(v)


def table(header: list[str], rows: list[list[str]]) -> str:
    widths = [
        max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)
    ]
    line = "  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True))
    out = [line, "  ".join("-" * w for w in widths)]
    out += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    return "\n".join(out)


def _overfitting(run: Run) -> dict[str, str]:
    """Per stage (and 'final'): PBO and deflated Sharpe from the run's analysis, when written."""
    a = run.analysis
    if not a:
        return {}
    out = {}
    for st in a.get("stages", []):
        parts = []
        pbo = st.get("pbo") or {}
        if pbo.get("pbo") is not None:
            parts.append(
                f"PBO {pbo['pbo']:.2f} (CSCV, S={pbo['n_blocks']}, {pbo['n_trials']} trials)"
            )
        dsr = st.get("dsr") or {}
        if dsr.get("dsr") is not None:
            parts.append(f"deflated Sharpe {dsr['dsr']:.2f} (N={dsr['n_trials']})")
        if parts:
            out[st["stage"]] = "; " + "; ".join(parts)
    fin = a.get("final") or {}
    if fin.get("dsr") is not None:
        out["final"] = (
            f"deflated Sharpe of the final model's val IC {fin['dsr']:.2f} "
            f"(N={fin['n_trials']} trials, IC Sharpe {fin['sharpe_annual']:.2f} vs the "
            f"{fin['sr0_annual']:.2f} expected of the best of N by luck)"
        )
    return out


def _counts(statuses: list[str], total: int) -> str:
    n = {s: statuses.count(s) for s in set(statuses)}
    done = n.get("TERMINATED", 0)
    failed = n.get(ERROR, 0)
    running = n.get("RUNNING", 0)
    pending = total - done - failed - running
    return f"{done}/{total} done, {running} running, {pending} pending, {failed} failed"


@dataclass(frozen=True)
class StageTrials:
    """A stage's trials as a run shows them: `phase` is "done", "failed" (results but no
    selection: every trial failed), "in flight" (or interrupted: Tune's own record) or "not
    started"; `rows` are `TrialRow`s from results.csv, or `LiveTrial`s while in flight."""

    phase: str
    rows: list[TrialRow] | list[LiveTrial]


def stage_trials(run: Run, st: StageRecord) -> StageTrials:
    """The one reading of a stage's trials, finished or in flight: `status` prints it and
    `search.view.RunView.trials` tabulates it."""
    if st.rows is not None:
        return StageTrials("done" if st.done else "failed", st.rows)
    live = live_trials(run.dir, st.spec)
    if live is None:
        return StageTrials("not started", [])
    return StageTrials("in flight", live)


def _stage_lines(run: Run, st: StageRecord, overfit: dict[str, str]) -> list[str]:
    spec, metric = st.spec, run.spec.train.metric
    keys = list(spec.grid)
    total = len(spec.points) * spec.seeds
    rep = spec.seeds > 1
    header = [*keys, *(["rep"] if rep else []), "status", "epochs", "best_ep", *_COLS]
    got = stage_trials(run, st)
    rows: list[Any] = got.rows
    if got.phase == "not started":
        return [f"\n[{st.name}] not started ({total} trials)"]
    if got.phase == "done":
        assert st.best is not None
        b = st.best
        state = f"done: best {metric} {b.value:.3f} at {b.point}"
        if rep:
            state += f" ({b.select} of {spec.seeds} seeds, std {b.replicate_std:.3f})"
        state += overfit.get(st.name, "")
    elif got.phase == "failed":
        state = "failed: no trial finished an evaluation"
    else:
        state = "in flight or interrupted (`liquid-search resume` continues it)"
        scored = [r for r in rows if math.isfinite(r.metrics.get(metric, math.nan))]
        if scored:
            best = max(scored, key=lambda r: r.metrics[metric])
            where = " ".join(f"{k}={_key(v)}" for k, v in best.point.items())
            state += (f"; best so far {metric} {best.metrics[metric]:.3f} at {where} "
                      f"(epoch {best.best_epoch})")  # fmt: skip
    statuses = [r.status for r in rows]
    lines = [f"\n[{st.name}] {_counts(statuses, total)}; {state}"]
    gpus = [getattr(r, "gpu", "") for r in rows]
    if any(gpus):  # trials on GPUs: say which, and their peak memory
        header.append("device")
    body = []
    for r, gpu in zip(rows, gpus, strict=True):
        epochs = r.epochs if not isinstance(r, LiveTrial) else r.epoch
        body.append([
            *(_key(r.point.get(k, "")) for k in keys), *([str(r.replicate)] if rep else []),
            r.status, str(epochs), str(r.best_epoch or "-"),
            *(fmt(r.metrics.get(c), c) for c in _COLS),
            *([f"{gpu} ({r.gpu_peak_mb:,.0f} MB peak)" if gpu else r.device] if any(gpus) else []),
        ])  # fmt: skip
    lines.append(table(header, body))
    errors = [(r.point, r.replicate, r.error) for r in rows if r.error]
    for point, replicate, error in errors:
        where = " ".join(f"{k}={_key(v)}" for k, v in point.items())
        where += f" {REPLICATE}={replicate}" if rep else ""
        lines.append(f"  error at {where}: {error}")
    if st.done and rep:
        pts = point_table(run, st.name)
        lines.append(f"per point, mean ± std over seeds (selection: {spec.select}):")
        lines.append(table(
            [*keys, "n", *_COLS],
            [[*(_key(p[k]) for k in keys), str(p["n"]),
              *(f"{fmt(p[c], c)} ± {fmt(p[c + '_std'], c)}" for c in _COLS)] for p in pts],
        ))  # fmt: skip
    return lines


def render(run: Run) -> str:
    """The status of a loaded run as text."""
    out = [f"run {run.path}"]
    if run.info is not None:
        state = run.info.outcome or ("complete" if run.summary is not None else "running")
        out[0] += f" (started {run.info.started}; {state}"
        out[0] += f", ended {run.info.ended})" if run.info.ended else ")"
    overfit = _overfitting(run)
    for st in run.stages:
        out += _stage_lines(run, st, overfit)
    s = run.summary
    if s is None:
        out.append("\n[final] not done")
        return "\n".join(out)
    out.append("")
    out += result_lines(s)
    if overfit.get("final"):
        out.append("        " + overfit["final"])
    out.append(f"checkpoint {s['checkpoint']}")
    return "\n".join(out)


def watch(run_dir: RunDir, interval: float = 5.0, out: TextIO = sys.stdout) -> int:
    """Print the status every `interval` seconds until the run ends; 0 once it is complete.

    A terminal gets the frame redrawn in place; a pipe or file gets one frame after another.
    The run has ended when summary.json exists or the driver recorded how it stopped (failed,
    interrupted, stopped after a stage); a driver killed without a word leaves the watch
    running, so each frame says when the run directory last changed.

    Raises:
        RunDirError: not a run directory.
    """
    tty = out.isatty()
    while True:
        run = run_dir.load()
        frame = render(run)
        stamp = time.strftime("%H:%M:%S")
        if tty:
            out.write("\x1b[2J\x1b[H")  # clear the screen, cursor home
        else:
            out.write(f"==== {stamp} ====\n")
        out.write(frame + f"\n(refreshed {stamp}; every {interval:g} s; Ctrl-C stops watching)\n")
        out.flush()
        ended = run.summary is not None or (run.info is not None and run.info.ended is not None)
        if ended:
            outcome = "complete" if run.summary is not None else run.info.outcome  # type: ignore[union-attr]
            out.write(f"the run has ended: {outcome}\n")
            out.flush()
            return 0 if run.summary is not None else 1
        time.sleep(interval)

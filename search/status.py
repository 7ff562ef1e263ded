"""`liquid-search status`: a run's stages and trials as text, finished or in flight.

A finished stage is shown from its results (`rundir`); a stage in flight or interrupted from
Tune's own record of its trials (`live.live_trials`, through `tune.ExperimentAnalysis`), so it
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
from search.live import live_trials
from search.report.document import fmt
from search.results import Significance, WalkForward
from search.rundir import Run, RunDir, StageRecord
from search.spec import REPLICATE
from search.trial_result import ERROR, FINISHED, RUNNING, STOPPED, TrialRow

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


def _overfitting(run: Run) -> tuple[dict[str, str], str]:
    """Per stage, PBO and deflated Sharpe from the run's analysis, when written; and the final
    model's deflated Sharpe ('' when there is none)."""
    a = run.analysis
    if a is None:
        return {}, ""
    out = {}
    for st in a.stages:
        parts = []
        if st.pbo.skipped is None:
            parts.append(
                f"PBO {st.pbo.pbo:.2f} (CSCV, S={st.pbo.n_blocks}, {st.pbo.n_trials} trials)"
            )
        if st.dsr.skipped is None:
            parts.append(f"deflated Sharpe {st.dsr.dsr:.2f} (N={st.dsr.n_trials})")
        if parts:
            out[st.stage] = "; " + "; ".join(parts)
    fin, final = a.final, ""
    if fin is not None and fin.skipped is None:
        final = (
            f"deflated Sharpe of the final model's val IC {fin.dsr:.2f} "
            f"(N={fin.n_trials} trials, IC Sharpe {fin.sharpe_annual:.2f} vs the "
            f"{fin.sr0_annual:.2f} expected of the best of N by luck)"
        )
    return out, final


def _significance_line(sig: Significance) -> str:
    """The stage's tied set and SPA test in one line."""
    if sig.skipped:
        return f"tied set and SPA test skipped: {sig.skipped}"
    tied = ", ".join(" ".join(f"{k}={_key(v)}" for k, v in p.items()) for p in sig.tied)
    start = " ".join(f"{k}={_key(v)}" for k, v in sig.start.items())
    return (f"tied with the winner: {sig.n_tied} of {sig.n_points} (MCS, {1 - sig.mcs_size:.0%}): "
            f"{tied}\nSPA vs the start ({start}): p = {sig.spa_pvalue:.3f} "
            f"({'beaten' if sig.beat_start else 'not beaten'} at {sig.spa_level:g}); rule "
            f"{sig.rule}: {'moved' if sig.moved else 'kept the start'}")  # fmt: skip


def _counts(statuses: list[str], total: int) -> str:
    n = {s: statuses.count(s) for s in set(statuses)}
    done = n.get(FINISHED, 0)
    stopped = n.get(STOPPED, 0)
    failed = n.get(ERROR, 0)
    running = n.get(RUNNING, 0)
    pending = total - done - stopped - failed - running
    cut = f", {stopped} stopped at a rung" if stopped else ""
    return (
        f"{done + stopped}/{total} done{cut}, {running} running, {pending} pending, {failed} failed"
    )


@dataclass(frozen=True)
class StageTrials:
    """A stage's trials as a run shows them: `phase` is "done", "failed" (results but no
    selection: every trial failed), "in flight" (or interrupted: Tune's own record) or "not
    started"; `rows` from results.csv, or from Tune's record while in flight."""

    phase: str
    rows: list[TrialRow]


def stage_trials(run: Run, st: StageRecord) -> StageTrials:
    """The one reading of a stage's trials, finished or in flight: `status` prints it and
    `search.view.RunView.trials` tabulates it."""
    if st.rows is not None:
        return StageTrials("done" if st.done else "failed", st.rows)
    live = live_trials(run.dir, st.spec, run.spec.train.seed)
    if live is None:
        return StageTrials("not started", [])
    return StageTrials("in flight", live)


def _stage_lines(run: Run, st: StageRecord, overfit: dict[str, str]) -> list[str]:
    spec, metric = st.spec, run.spec.train.metric
    keys = list(spec.grid)
    rep = spec.replicates > 1
    header = [*keys, *(["rep"] if rep else []), "status", "epochs", "best_ep", *_COLS]
    got = stage_trials(run, st)
    rows = got.rows
    if got.phase == "not started":
        return [f"\n[{st.name}] not started ({spec.n_trials} trials)"]
    if got.phase == "done":
        assert st.best is not None
        b = st.best
        state = f"done: best {metric} {b.value:.3f} at {b.point}"
        if rep:
            state += f" ({b.combine} of {spec.replicates} replicates, std {b.replicate_std:.3f})"
        state += overfit.get(st.name, "")
    elif got.phase == "failed":
        state = "failed: no trial finished an evaluation"
    else:
        state = "in flight or interrupted (`liquid-search resume` continues it)"
        scored = [r for r in rows if math.isfinite(r.best_metrics.get(metric, math.nan))]
        if scored:
            best = max(scored, key=lambda r: r.best_metrics[metric])
            where = " ".join(f"{k}={_key(v)}" for k, v in best.point.items())
            state += (f"; best so far {metric} {best.best_metrics[metric]:.3f} at {where} "
                      f"(epoch {best.best_epoch})")  # fmt: skip
    total = max(spec.n_trials, len(rows))  # a start that is no grid point adds trials
    lines = [f"\n[{st.name}] {_counts([r.status for r in rows], total)}; {state}"]
    gpus = [r.result.gpu if r.result is not None else "" for r in rows]
    if any(gpus):  # trials on GPUs: say which, and their peak memory
        header.append("device")
    body = []
    for r, gpu in zip(rows, gpus, strict=True):
        device = r.result.device if r.result is not None else ""
        peak = r.result.gpu_peak_mb if r.result is not None else math.nan
        body.append([
            *(_key(r.point.get(k, "")) for k in keys), *([str(r.replicate)] if rep else []),
            r.status, str(r.epoch), str(r.best_epoch or "-"),
            *(fmt(r.best_metrics.get(c), c) for c in _COLS),
            *([f"{gpu} ({peak:,.0f} MB peak)" if gpu else device] if any(gpus) else []),
        ])  # fmt: skip
    lines.append(table(header, body))
    sig = st.best.significance if got.phase == "done" and st.best is not None else None
    if sig is not None:
        lines.append(_significance_line(sig))
    for r in rows:
        if r.error:
            where = " ".join(f"{k}={_key(v)}" for k, v in r.point.items())
            where += f" {REPLICATE}={r.replicate}" if rep else ""
            lines.append(f"  error at {where}: {r.error}")
    if st.done and rep:
        lines.append(f"per point, mean ± std over replicates (combined by: {spec.combine}):")
        lines.append(table(
            [*keys, "n", *_COLS],
            [[*(_key(p.point[k]) for k in keys), str(p.n),
              *(f"{fmt(p.mean[c], c)} ± {fmt(p.std[c], c)}" for c in _COLS)]
             for p in point_table(run, st.name)],
        ))  # fmt: skip
    return lines


def render(run: Run) -> str:
    """The status of a loaded run as text (a walk-forward run's: every fold's, and the pooled
    record once they are complete)."""
    out = [f"run {run.path}"]
    if run.info is not None:
        state = run.info.outcome or ("complete" if run.summary is not None else "running")
        out[0] += f" (started {run.info.started}; {state}"
        out[0] += f", ended {run.info.ended})" if run.info.ended else ")"
    if run.walk_forward:
        return "\n".join(out + _walk_forward_lines(run))
    if run.fold is not None:
        out[0] += (f"\nwalk-forward fold {run.fold['index']}: train {run.fold['train']}, val "
                   f"{run.fold['val']}, test {run.fold['test']}")  # fmt: skip
    overfit, final_dsr = _overfitting(run)
    for st in run.stages:
        out += _stage_lines(run, st, overfit)
    s = run.summary
    if s is None:
        out.append("\n[final] not done")
        return "\n".join(out)
    out.append("")
    out += result_lines(s)
    if final_dsr:
        out.append("        " + final_dsr)
    out.append(f"checkpoint {s.checkpoint}")
    return "\n".join(out)


def _walk_forward_lines(run: Run) -> list[str]:
    """Each fold as its own run shows it, then what the folds say together."""
    wf = run.spec.walk_forward
    out = [f"walk-forward: {wf.folds} folds ({wf.window}); each fold's run directory is "
           f"{run.dir.fold(1).path[:-1]}<i>"]  # fmt: skip
    for i in range(1, wf.folds + 1):
        fold = run.dir.fold(i)
        out.append(f"\n==== fold {i} ====")
        if not fold.is_run():
            out.append("not started")
            continue
        lines = render(fold.load()).splitlines()
        out += lines[1:]  # its first line names its directory
    s = run.summary
    if isinstance(s, WalkForward):
        out += ["", *walk_forward_lines(s)]
    else:
        out.append("\n[walk-forward] not pooled yet (every fold must be complete)")
    return out


def walk_forward_lines(s: WalkForward) -> list[str]:
    """A walk-forward run's pooled out-of-sample record, search vs base across folds, and the
    stability of each stage's choice, in a few lines."""
    p = s.pooled
    out = [
        f"[walk-forward] pooled out of sample over {p.n_dates} test dates of {len(s.folds)} "
        f"folds: IC sharpe {p.ic_sharpe:.2f}, mean IC {p.mean_ic:+.4f} (t = {p.mean_ic_t:.2f}), "
        f"L/S sharpe {p.ls_sharpe:.2f} gross, {p.ls_net_sharpe:.2f} net of flat costs, "
        f"{p.to_ls_net_sharpe:.2f} net of turnover-aware costs"
    ]
    if s.across is not None:
        out.append(f"[walk-forward] {s.across.sentence}")
    for stage, picks in s.stability.choices.items():
        shown = "; ".join(" ".join(f"{k}={_key(v)}" for k, v in p.items()) for p in picks)
        out.append(f"[walk-forward] {stage}: {s.stability.agree[stage]} of {len(picks)} folds "
                   f"agree ({shown})")  # fmt: skip
    return out


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

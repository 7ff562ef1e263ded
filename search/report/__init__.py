"""The run report: report.md with its PNGs under report/, and report.html, self-contained (the
same PNGs as base64 data URIs), so the one file can be mailed or opened anywhere.

`write_report` works on a loaded run (`rundir.Run`): its spec, info, stages, summary and
analysis (the test-free parts of the analysis are recomputed when the run has none, or one that
does not cover every finished stage). A run stopped after a stage gets a report of its stages.
"""

from __future__ import annotations

from search.analysis import analyze
from search.errors import RunDirError
from search.report.document import Doc, fmt, png
from search.report.figures import val_test_figure
from search.report.sections import (
    comparison_section,
    final_section,
    header_section,
    overfitting_section,
    search_vs_base_section,
    stage_section,
)
from search.report.universes import universe_section
from search.report.walkforward import write_walk_forward_report
from search.results import WalkForward
from search.rundir import Run

__all__ = ["write_report"]


def write_report(run: Run) -> tuple[str, str]:
    """Write the run's report.md (+ report/*.png) and the self-contained report.html.

    Returns:
        (path of report.md, path of report.html).

    Raises:
        RunDirError: no stage of the run has finished (a walk-forward run: it is not pooled).
    """
    if run.walk_forward:
        if not isinstance(run.summary, WalkForward):
            raise RunDirError(
                f"{run.path}: a walk-forward run's report pools its folds once every fold is "
                f"complete; each fold's is in its directory (RUN_DIR/fold_<i>/report.html)"
            )
        return write_walk_forward_report(run, run.summary)
    finished = run.finished
    if not finished:
        raise RunDirError(
            f"{run.path}: no stage has finished yet, so there is nothing to report; "
            f"`liquid-search status {run.path}` shows the trials in flight"
        )
    spec, summary, m = run.spec, run.summary, run.spec.train.metric
    analysis = run.analysis
    if analysis is None or [s.stage for s in analysis.stages] != [s.name for s in finished]:
        analysis = analyze(run, None, spec.train.k)

    doc = Doc()
    header_section(doc, run)
    if summary is not None:
        f = summary.final
        sentences = [x.sentence for x in (summary.search_vs_base, summary.universes)
                     if x is not None]  # fmt: skip
        doc.para(
            f"Final model: val {m} {fmt(f.val.get(m), m)}, test {m} "
            f"{fmt(f.test.get(m), m)}, test mean IC {fmt(f.test.get('mean_ic'), 'mean_ic')}, "
            f"test L/S Sharpe {fmt(f.test.get('ls_sharpe'))} (net of flat costs "
            f"{fmt(f.costs.get('ls_net_sharpe'))}, turnover-aware "
            f"{fmt(f.costs.get('to_ls_net_sharpe'))}); an ensemble of {len(f.members) or 1} "
            f"seed(s)." + "".join(f" {x}" for x in sentences)
        )
    overfitting_section(doc, analysis)
    for st in finished:
        entry = analysis.stage(st.name)
        assert entry is not None  # the analysis covers every finished stage (checked above)
        stage_section(doc, run, st, entry)

    doc.heading(2, "Validation against test for the top configs")
    vt = val_test_figure(analysis, summary, m)
    if vt is None:
        doc.para("Not scored on the test set: `liquid-search report RUN_DIR` scores the top "
                 "configs (the driver does at the end of a run) and fills this section.")  # fmt: skip
    else:
        fig, table = vt
        doc.image("val_vs_test.png", png(fig), "Validation vs test of the top configs")
        doc.table(["id", "stage", "config", "selected", "replicates", f"val {m}", f"test {m}",
                   "test mean_ic", "test ls_sharpe"], table)  # fmt: skip
    if summary is not None:
        final_section(doc, run, summary)
        comparison_section(doc, summary)
        search_vs_base_section(doc, summary)
        universe_section(doc, run, summary)

    title = f"liquid-search report: {run.path.rstrip('/').rsplit('/', 1)[-1]}"
    return run.dir.write_report(doc.markdown(), doc.html(title), doc.images)

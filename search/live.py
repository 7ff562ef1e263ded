"""A stage in flight (or interrupted), read from Tune's own record of its trials: what `status`,
`status --watch` and `api.open_run(...).trials(stage)` show before the stage has results.

Read through `tune.ExperimentAnalysis`, Tune's public reader of its experiment snapshot and of
each trial's reported results, so it works on a run under s3:// or gs:// as well as on a local
one. Each trial is the same `TrialRow` a finished stage's results.csv holds, with Tune's status.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from ranker import storage
from search.rundir import RunDir
from search.spec import REPLICATE, StageSpec, replicate_seed
from search.trial_result import (
    ERROR,
    PENDING,
    RUNNING,
    TrialResult,
    TrialRow,
    config_error,
    error_line,
)


def live_trials(run: RunDir, stage: StageSpec, seed: int) -> list[TrialRow] | None:
    """The trials of an unfinished stage as Tune last recorded them; None when Tune has not
    written its first snapshot yet.

    Args:
        seed: the stage's training seed (its base config's), for each replicate's own seed.
    """
    exp_dir = run.stage_path(stage.name)
    fs, path = storage.filesystem(exp_dir)
    try:
        ea = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except ValueError:  # "No experiment snapshot file ... was found"
        return None
    frames = ea.trial_dataframes
    out = []
    for t in ea.trials:
        last: dict[str, Any] = dict(t.last_result or {})
        status = t.status
        df = frames.get(t.trial_id)
        if df is not None and len(df) and "epoch" in df:
            fresh = df.iloc[-1].to_dict()  # result.json can be newer than the snapshot
            if int(fresh.get("epoch", 0)) >= int(last.get("epoch") or 0):
                last = fresh
            if status == PENDING:  # the snapshot predates its first report
                status = RUNNING
        cfg = t.config or {}
        error = config_error(last) or (error_line(t.get_error() or "") if t.status == ERROR else "")
        rep = int(cfg.get(REPLICATE, 0))
        out.append(
            TrialRow(
                trial_id=t.trial_id,
                point={k: float(cfg[k]) for k in stage.grid if k in cfg},
                replicate=rep,
                seed=replicate_seed(seed, rep),
                status=ERROR if error else status,
                error=error,
                result=TrialResult.from_report(last),
            )
        )
    return out

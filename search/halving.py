"""Successive halving within a stage, synchronous and deterministic: less compute for the same
answer.

A stage's grid points train to the first rung (an evaluation epoch: every `eval_every`, the last
one excepted); once every point has reached it, they are ranked by their score there (the
stage's `combine` over their replicates of the best val metric so far) and the top
ceil(n / reduction) go on to the next rung, the rest stop; and so on. Ties go to the point first
in grid order. So a decision depends only on the values at the rung, never on which trial
reported first, and the same spec on the same machine cuts the same points.

`cuts` is the one decision: `SuccessiveHalving`, a Ray Tune scheduler (the public
`tune.schedulers.FIFOScheduler` interface, as Tune's own HyperBand: trials that reach a rung
early are paused until it is decided), makes it as the stage runs, and `stages.collect` makes it
again from the trials' reported results, to tell a trial cut at a rung (STOPPED, a finished
trial whose best evaluation is its last before the cut) from one an interrupt left unfinished.
After a resume each trial continued from a checkpoint reports that checkpoint's evaluation
again (`trainable.run_trial`), so the rung it stands at is decided from the same values.

Why not Tune's own: `ASHAScheduler` decides as trials report (its cut depends on the order), and
`HyperBandScheduler` spreads trials over brackets with budgets that do not fall on evaluations.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ray.tune.experiment import Trial
from ray.tune.schedulers import FIFOScheduler, TrialScheduler

from search.spec import REPLICATE, StageSpec


def rungs(epochs: int, eval_every: int) -> list[int]:
    """The epochs where trials are ranked: every evaluation but the last."""
    return [e for e in range(eval_every, epochs, eval_every)]


def cuts(
    values: dict[int, dict[int, list[float]]],
    at: list[int],
    reduction: int,
    score: Callable[[list[float]], float],
) -> dict[int, int]:
    """The rung each grid point was stopped at, for the rungs every live point has reached.

    Args:
        values: per grid point (its index in the grid), per rung epoch, its replicates' best
            val metric so far there (a rung is complete for a point when all its replicates
            have one: `complete`).
        at: the rung epochs, ascending.
        reduction: keep the top ceil(n / reduction) points at each rung.
        score: combine replicates into a point's score (`StageSpec.score`).

    Returns:
        {point: rung} for every point stopped so far (points that go on are absent).
    """
    alive = sorted(values)
    out: dict[int, int] = {}
    for r in at:
        if not alive or any(r not in values[p] for p in alive):
            break
        keep = max(1, math.ceil(len(alive) / reduction))
        ranked = sorted(alive, key=lambda p: (-_finite(score(values[p][r])), p))
        for p in ranked[keep:]:
            out[p] = r
        alive = sorted(ranked[:keep])
    return out


def _finite(v: float) -> float:
    return v if math.isfinite(v) else -math.inf


class Ledger:
    """The values a stage's trials reported at its rungs, and the cuts they decide."""

    def __init__(self, stage: StageSpec, epochs: int, eval_every: int, reduction: int) -> None:
        self.stage, self.reduction = stage, reduction
        self.at = rungs(epochs, eval_every)
        self._index = {_key(p): i for i, p in enumerate(stage.points)}
        self._values: dict[int, dict[int, dict[int, float]]] = {}  # point -> rung -> rep -> v

    def place(self, config: dict[str, Any]) -> tuple[int, int] | None:
        """(grid point index, replicate) of a trial's config; None for no grid point."""
        key = _key({k: config.get(k) for k in self.stage.grid})
        if key not in self._index:
            return None
        p = self._index[key]
        self._values.setdefault(p, {})
        return p, int(config.get(REPLICATE, 0))

    def record(self, config: dict[str, Any], epoch: int, value: float | None) -> bool:
        """A trial's best val metric so far at `epoch`; whether `epoch` is a rung."""
        placed = self.place(config)
        if placed is None or epoch not in self.at:
            return False
        p, rep = placed
        v = float(value) if value is not None and math.isfinite(float(value)) else -math.inf
        self._values[p].setdefault(epoch, {})[rep] = v
        return True

    def fail(self, config: dict[str, Any]) -> None:
        """A trial that failed for good ranks last at every rung it did not reach."""
        placed = self.place(config)
        if placed is not None:
            p, rep = placed
            for r in self.at:
                self._values[p].setdefault(r, {}).setdefault(rep, -math.inf)

    def _complete(self) -> dict[int, dict[int, list[float]]]:
        """Every grid point's complete rungs (a point no trial has reported for yet has none,
        so no rung is decided before every point of the grid has reached it)."""
        n = self.stage.replicates
        out: dict[int, dict[int, list[float]]] = {p: {} for p in range(len(self.stage.points))}
        for p, per in self._values.items():
            out[p] = {r: [reps[i] for i in range(n)] for r, reps in per.items() if len(reps) == n}
        return out

    def cuts(self) -> dict[int, int]:
        """{grid point: the rung it was stopped at}, for the rungs decided so far."""
        return cuts(self._complete(), self.at, self.reduction, self.stage.score)

    def decided(self, r: int) -> bool:
        """Whether rung `r` has been decided: every point alive at it has reached it."""
        complete, cut = self._complete(), self.cuts()
        alive = [p for p in complete if cut.get(p, math.inf) >= r]
        return bool(alive) and all(r in complete.get(p, {}) for p in alive)


# The spec's max_concurrent per stage experiment, set by the driver before each fit: a restored
# Tuner brings back the scheduler pickled when the stage started, and a `resume` may have
# changed max_concurrent since.
RUNNING_LIMITS: dict[str, int] = {}


class SuccessiveHalving(FIFOScheduler):
    """Synchronous successive halving of one stage's grid points at its evaluation epochs (see
    the module docstring); `metric` is the reported key it ranks by (the best val metric so
    far), `exp_dir` the stage's experiment.

    A restored experiment comes back with the scheduler Tune pickled when the stage started
    (Tune does not keep a scheduler's state in its snapshots), so on the first trial it is
    given back with results, it replays every result the experiment recorded (through the
    public `tune.ExperimentAnalysis`) before it decides anything."""

    def __init__(self, ledger: Ledger, metric: str, exp_dir: str, max_running: int = 0) -> None:
        super().__init__()
        self.ledger, self._key, self.exp_dir = ledger, metric, exp_dir
        # The spec's max_concurrent, kept here rather than by Tune's searcher: the searcher
        # counts a trial paused at a rung as running, and would not start the points that
        # still have to reach it.
        self.max_running = max_running
        self._replayed = False

    def on_trial_add(self, tune_controller: Any, trial: Trial) -> None:
        self.ledger.place(trial.config or {})
        if trial.last_result and not self._replayed:
            self._replayed = True
            replay(self.ledger, self.exp_dir, self._key)

    def on_trial_error(self, tune_controller: Any, trial: Trial) -> None:
        self.ledger.fail(trial.config or {})

    def on_trial_result(self, tune_controller: Any, trial: Trial, result: dict) -> str:
        cfg = trial.config or {}
        epoch = int(result.get("epoch", 0))
        if not self.ledger.record(cfg, epoch, result.get(self._key)):
            return TrialScheduler.CONTINUE
        if not self.ledger.decided(epoch):
            return TrialScheduler.PAUSE  # until every point has reached this rung
        cut = self.ledger.cuts()
        for t in tune_controller.get_trials():  # the paused trials of the points cut here
            placed = self.ledger.place(t.config or {})
            if (t is not trial and t.status in (Trial.PAUSED, Trial.PENDING)
                    and placed is not None and placed[0] in cut):  # fmt: skip
                tune_controller.stop_trial(t)
        placed = self.ledger.place(cfg)
        return TrialScheduler.STOP if placed and placed[0] in cut else TrialScheduler.CONTINUE

    def choose_trial_to_run(self, tune_controller: Any) -> Trial | None:
        """New trials first (every point must reach the rung); then paused trials whose rung
        has been decided in their favour."""
        trials = tune_controller.get_trials()
        limit = RUNNING_LIMITS.get(self.exp_dir, self.max_running)
        if limit and sum(t.status == Trial.RUNNING for t in trials) >= limit:
            return None
        for t in trials:
            if t.status == Trial.PENDING:
                return t
        cut = self.ledger.cuts()
        for t in trials:
            if t.status != Trial.PAUSED:
                continue
            placed = self.ledger.place(t.config or {})
            epoch = int((t.last_result or {}).get("epoch", 0))
            if placed is not None and placed[0] not in cut and self.ledger.decided(epoch):
                return t
        return None

    def debug_string(self) -> str:
        return (f"Successive halving at epochs {self.ledger.at}, keeping "
                f"1/{self.ledger.reduction} at each.")  # fmt: skip


def replay(ledger: Ledger, exp_dir: str, key: str) -> None:
    """Record every rung result a stage's experiment has (what its trials reported before an
    interrupt), and its failed trials."""
    from ray import tune

    from ranker import storage

    fs, path = storage.filesystem(exp_dir)
    try:
        ea = tune.ExperimentAnalysis(path, storage_filesystem=fs)
    except (ValueError, KeyError, TypeError, OSError):  # no readable record: nothing to replay
        return
    frames = ea.trial_dataframes
    for t in ea.trials:
        if t.status == Trial.ERROR:
            ledger.fail(t.config or {})
        df = frames.get(t.trial_id)
        if df is None or "epoch" not in df or key not in df:
            continue
        for epoch, value in zip(df["epoch"], df[key], strict=True):
            ledger.record(t.config or {}, int(epoch), value)


def seed_from_history(ledger: Ledger, config: dict[str, Any], history: list[dict[str, Any]],
                      metric: str) -> None:  # fmt: skip
    """Record a trial's rung values from its checkpoint's evaluations (`Progress.history`):
    what a stage rebuilt from its trials' checkpoints knows of the rungs they passed."""
    best = -math.inf
    for h in history:
        v = float(h.get(metric, math.nan))
        best = max(best, v) if math.isfinite(v) else best
        ledger.record(config, int(h["epoch"]), best)


def _key(point: dict[str, Any]) -> tuple:
    return tuple(sorted((k, float(v)) for k, v in point.items() if v is not None))

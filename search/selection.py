"""A stage's grid points scored from their trials: the one score that selection (`stages`),
the analysis, `status` and the report use.

A point's score is its finished replicates' values of the selection metric combined by the
stage's `combine` (mean, median or min; `StageSpec.score`). The best point is the highest score;
ties go to the point first in grid order, so the choice never depends on which trial reported
first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from search.spec import StageSpec
from search.trial_result import TrialRow


@dataclass(frozen=True)
class PointScore:
    """One grid point of a stage, scored."""

    index: int  # its position in the grid (`StageSpec.points`)
    point: dict[str, Any]
    trials: tuple[TrialRow, ...]  # every trial of the point, finished or not
    finished: tuple[TrialRow, ...]  # those with a value of the selection metric
    value: float  # the score; NaN when no replicate finished
    metric: str  # the selection metric

    @property
    def values(self) -> list[float]:
        """The finished replicates' values of the selection metric, in replicate order."""
        return [r.best_metrics[self.metric] for r in self.finished]


def point_scores(stage: StageSpec, rows: list[TrialRow], metric: str) -> list[PointScore]:
    """Every grid point of `stage` with its trials and score, in grid order."""
    out = []
    for i, p in enumerate(stage.points):
        mine = tuple(r for r in rows if r.matches(p))
        ok = tuple(r for r in mine if r.finished(metric))
        value = stage.score([r.best_metrics[metric] for r in ok]) if ok else math.nan
        out.append(PointScore(i, dict(p), mine, ok, value, metric))
    return out


def best_point(scores: list[PointScore]) -> PointScore | None:
    """The highest-scoring point (the first in grid order among equals); None when no point
    has a score."""
    scored = [s for s in scores if math.isfinite(s.value)]
    if not scored:
        return None
    return max(scored, key=lambda s: (s.value, -s.index))

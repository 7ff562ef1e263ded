"""What a run concludes, typed: summary.json (`Summary`) and analysis.json (`Analysis`).

Each results document is a tree of frozen dataclasses with one `to_dict`/`from_dict` pair (the
generic `encode`/`decode` here, driven by the dataclasses' own field types); everyone else
reads attributes. A document carries `schema` and `version`: a reader refuses a newer one and
upgrades an older one (`_upgrade_summary`), so a run written by an earlier version still opens
in `status`, `report` and `api.open_run`. analysis.json older than this version is not upgraded
but recomputed by its readers (it is derived from the run's other files).

Metric maps (`Metrics`: a metric's name to its value, the names of `ranker.train.METRICS`, the
costs' and the oracle's) stay dicts: their keys are data, chosen by the spec (`train.metric`),
not the document's structure.

Mean and spread over seeds or replicates have one convention, `mean_std`: the sample standard
deviation (ddof=1), NaN for a single value; a standard error of a difference over seeds is
Welch's; over the test dates of two models scored on the same rows, a paired bootstrap's
(`search.compare`).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ranker.costs import CostModel
from ranker.data import DataInfo
from search.errors import RunDirError

SUMMARY_SCHEMA = "liquid-search/summary"
ANALYSIS_SCHEMA = "liquid-search/analysis"
SUMMARY_VERSION = 2  # 1: the files written before the schema key (read and upgraded)
ANALYSIS_VERSION = 2  # older analysis.json files are recomputed, not read

Metrics = dict[str, float]


# ---------------------------------------------------------------- one convention for spreads


@dataclass(frozen=True)
class Spread:
    """Mean and sample standard deviation of one quantity over n seeds or replicates."""

    mean: float
    std: float  # ddof=1; NaN when n < 2
    n: int

    @property
    def se(self) -> float:
        """Standard error of the mean (NaN when n < 2)."""
        return self.std / math.sqrt(self.n) if self.n > 1 else math.nan


def mean_std(values: typing.Sequence[float]) -> Spread:
    """The one mean/std of the project: mean and sample std (ddof=1) of the finite values, NaN
    std for fewer than two (and NaN mean for none)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    mean = float(x.mean()) if len(x) else math.nan
    std = float(x.std(ddof=1)) if len(x) > 1 else math.nan
    return Spread(mean, std, len(x))


@dataclass(frozen=True)
class Difference:
    """a - b with its standard error: over seeds, Welch's sqrt(sa²/na + sb²/nb) (`of`); over
    test dates, paired (`search.compare.paired_differences`)."""

    a: float
    b: float
    diff: float
    se: float

    @classmethod
    def of(cls, a: Spread, b: Spread) -> Difference:
        se = math.sqrt(a.std**2 / a.n + b.std**2 / b.n) if a.n and b.n else math.nan
        return cls(a.mean, b.mean, a.mean - b.mean, se)

    @property
    def z(self) -> float:
        """The difference in standard errors (NaN when the error is unknown or zero)."""
        return self.diff / self.se if self.se and math.isfinite(self.se) else math.nan


# ---------------------------------------------------------------- a stage under noise


@dataclass(frozen=True)
class Significance:
    """A stage's selection under noise (`search.significance`): the grid points statistically
    tied with the best (the Model Confidence Set of their val per-date losses, minus the daily
    IC), and whether any of them beat the stage's starting point after trying them all (the SPA
    test); `skipped` says why when the tests could not run (the numbers are then NaN)."""

    rule: str  # the selection rule the stage used: best or spa
    start: dict[str, float]  # the stage's starting point, its benchmark
    start_is_grid_point: bool  # else it was trained as an extra trial of the stage
    moved: bool  # the stage selected a config other than its start
    n_points: int  # grid points with a val series
    tied: tuple[dict[str, float], ...]  # the grid points in the MCS, in grid order
    mcs_size: float
    spa_pvalue: float  # Hansen's consistent p-value
    spa_lower: float
    spa_upper: float
    spa_level: float
    n_dates: int
    block: int
    reps: int
    skipped: str | None = None

    @property
    def n_tied(self) -> int:
        return len(self.tied)

    @property
    def beat_start(self) -> bool:
        """The SPA test rejects "no config beats the start" at the spec's level."""
        return self.spa_pvalue < self.spa_level

    def is_tied(self, point: dict[str, float]) -> bool:
        return any(all(float(t[k]) == float(v) for k, v in point.items()) for t in self.tied)

    def sentence(self) -> str:
        """What the tests say about the stage, in one sentence."""
        if self.skipped:
            return f"The tied set and the SPA test were skipped: {self.skipped}."
        conf = f"{1 - self.mcs_size:.0%}"
        tie = (f"{self.n_tied} of {self.n_points} configs are statistically tied with the winner "
               f"on the validation dates (Model Confidence Set, {conf} confidence)")  # fmt: skip
        spa = (f"the SPA test of all {self.n_points} against the stage's starting point gives p = "
               f"{self.spa_pvalue:.3f}: "
               + ("a config beats the start by more than noise" if self.beat_start else
                  "none beats the start by more than noise, after trying them all"))  # fmt: skip
        rule = f"; the `{self.rule}` rule " + ("moved to another config" if self.moved
                                               else "kept the starting point")  # fmt: skip
        return f"{tie}; {spa}{rule}."


# ---------------------------------------------------------------- summary.json


@dataclass(frozen=True)
class StageChoice:
    """A stage's selection as the summary records it (best.json, less its bookkeeping)."""

    stage: str
    metric: str
    value: float
    replicate_std: float
    point: dict[str, float]
    model: dict[str, Any]
    train: dict[str, Any]
    trials: int
    errors: int
    wall_seconds: float
    significance: Significance | None = None  # (version-1 summaries have none)


@dataclass(frozen=True)
class MemberResult:
    """One seed's model of an ensemble: its own val (restored best state) and test metrics."""

    seed: int
    val: Metrics
    test: Metrics
    best_epoch: int
    seconds: float


@dataclass(frozen=True)
class ModelResult:
    """One model of the final phase (the final model, the base config or the full-universe
    baseline): the ensemble of its members, on val and test, and each member's own metrics."""

    val: Metrics  # the ensemble's
    test: Metrics
    costs: Metrics  # `ranker.costs.cost_metrics` of the ensemble's test books
    members: tuple[MemberResult, ...]
    seed_spread: dict[str, Spread]  # per compared test metric, over the members
    best_epoch: int  # the first member's
    seconds: float  # training seconds of all members
    device: str
    history: tuple[dict[str, Any], ...]  # the first member's evaluations
    oracle_test: Metrics | None = None  # the planted expected return on the same test rows
    gpu: str = ""
    gpu_peak_mb: float = math.nan
    model: dict[str, Any] | None = None  # the configs it was trained with
    train: dict[str, Any] | None = None
    same_as_final: bool = False  # (the base config) the search selected its starting point


@dataclass(frozen=True)
class SearchVsBase:
    """Did the search pay? Per compared test metric, final minus base over the seeds."""

    by_metric: dict[str, Difference]
    n: int  # seeds per model
    sentence: str


@dataclass(frozen=True)
class RuleResult:
    """The final model on the test set as one universe rule picks it."""

    test: Metrics
    oracle_test: Metrics | None
    test_rows: int
    names_per_test_day: float
    turnover_per_day: float


@dataclass(frozen=True)
class Universes:
    """The final model under each universe rule, and how much the rules' sets differ."""

    rule: str  # the spec's rule (what the run trained and selected on)
    window: int
    by_rule: dict[str, RuleResult]
    test_dates_differ: float
    names_differ_per_test_day: float
    dates_differ: float
    sentence: str


@dataclass(frozen=True)
class RuleComparison:
    """A comparison model on one test set: its backtest's metrics and costs, and per compared
    metric the final model's value (`a`), this model's (`b`) and the difference with its
    standard error over the test dates, paired (the same resampled dates for both)."""

    test: Metrics  # `ranker.metrics.summarize` of its scores' backtest
    costs: Metrics  # `ranker.costs.cost_metrics` of the same
    vs_final: dict[str, Difference]
    test_rows: int
    n_dates: int


@dataclass(frozen=True)
class Comparison:
    """An existing model beside the final one (`final.compare`), on the run's test rows under
    the same universe rules, k and cost model (`search.compare`)."""

    name: str
    source: str  # the path the spec names
    kind: str  # "scores": a scores file; "checkpoint": a model of this project, scored here
    test: Metrics  # on the run's test set (the spec's universe rule)
    costs: Metrics
    vs_final: dict[str, Difference]  # a: the final model, b: this one
    test_rows: int
    n_dates: int
    by_rule: dict[str, RuleComparison]  # the other universe rules' test sets it covers
    notes: tuple[str, ...]  # what was not compared, and why
    block: int  # the paired bootstrap's mean block length (dates) and replications
    reps: int
    sentence: str

    @property
    def series_model(self) -> str:
        """The name its per-date test series is saved under (`RunDir.write_final_series`)."""
        return f"compare_{self.name}"


@dataclass(frozen=True)
class Summary:
    """RUN_DIR/summary.json: every stage's selection and the final phase's results. Its
    presence marks the run complete."""

    run_dir: str
    metric: str
    stages: tuple[StageChoice, ...]
    final: ModelResult
    checkpoint: str
    data: DataInfo
    costs_model: CostModel
    baseline: ModelResult | None = None
    base: ModelResult | None = None
    search_vs_base: SearchVsBase | None = None
    universes: Universes | None = None
    # The existing models of `final.compare`, by name (none in files written before them).
    comparisons: dict[str, Comparison] = field(default_factory=dict)
    schema: str = SUMMARY_SCHEMA
    version: int = SUMMARY_VERSION

    @property
    def models(self) -> dict[str, ModelResult]:
        """The trained models by role: final, base (if trained), baseline (if trained)."""
        out = {"final": self.final}
        if self.base is not None:
            out["base"] = self.base
        if self.baseline is not None:
            out["baseline"] = self.baseline
        return out

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the summary") -> Summary:
        """Raises RunDirError for another document or a newer version."""
        return decode(cls, _upgrade_summary(_check_schema(d, SUMMARY_SCHEMA, SUMMARY_VERSION,
                                                          where)))  # fmt: skip


def _upgrade_summary(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 summary (no schema key) in this version's shape: `base_config` -> `base`,
    each model's `seeds` -> `members`, search-vs-base's metrics under `by_metric` with `a`/`b`
    for final/base, the seed spread's `n` kept."""
    if d.get("version", 1) >= SUMMARY_VERSION:
        return d
    d = dict(d)
    d["base"] = d.pop("base_config", None)
    for role in ("final", "base", "baseline"):
        if d.get(role):
            part = dict(d[role])
            part["members"] = part.pop("seeds", [])
            d[role] = part
    old = d.get("search_vs_base")
    if old:
        metrics = {k: v for k, v in old.items() if isinstance(v, dict)}
        d["search_vs_base"] = {
            "by_metric": {k: {"a": v["final"], "b": v["base"], "diff": v["diff"], "se": v["se"]}
                          for k, v in metrics.items()},
            "n": len(d["final"]["members"]),
            "sentence": old.get("sentence", ""),
        }  # fmt: skip
    return d


# ---------------------------------------------------------------- analysis.json


@dataclass(frozen=True)
class PBO:
    """The probability of backtest overfitting of a stage (CSCV over its trials' daily val IC);
    `skipped` says why when it could not be computed (the statistics are NaN then)."""

    stage: str
    n_trials: int
    trial_ids: tuple[str, ...]
    trials_without_ic: tuple[str, ...]
    n_dates: int
    n_dates_used: int
    n_blocks: int
    n_blocks_requested: int
    series: str = "val daily IC"
    metric: str = "per-period IC Sharpe"
    skipped: str | None = None
    pbo: float = math.nan
    n_combinations: int = 0
    prob_oos_loss: float = math.nan
    logit_median: float = math.nan
    is_metric_mean: float = math.nan
    oos_metric_mean: float = math.nan
    degradation_slope: float = math.nan


@dataclass(frozen=True)
class DSR:
    """The deflated Sharpe ratio of a selected series against the N trials that preceded it;
    `skipped` says why when it could not be computed."""

    n_trials: int
    stages: tuple[str, ...]
    trial_id: str = ""  # the selected trial (a stage's DSR)
    series_source: str = ""  # where the final model's series came from
    skipped: str | None = None
    dsr: float = math.nan
    psr: float = math.nan
    sharpe: float = math.nan  # per period
    sharpe_annual: float = math.nan
    sr0: float = math.nan
    sr0_annual: float = math.nan
    sharpe_variance: float = math.nan
    n_obs: int = 0
    skew: float = math.nan
    kurtosis: float = math.nan


@dataclass(frozen=True)
class PointStats:
    """One grid point of a finished stage: every metric's mean and std over its replicates."""

    point: dict[str, float]
    n: int  # finished replicates
    errors: int
    trial_ids: tuple[str, ...]
    mean: Metrics
    std: Metrics  # `mean_std`'s (ddof=1; NaN for one replicate)
    value: float  # the selection value (the stage's combine of the selection metric)
    selected: bool


@dataclass(frozen=True)
class TopTrial:
    trial_id: str
    replicate: int
    val: Metrics
    test: Metrics


@dataclass(frozen=True)
class TopConfig:
    """One of a stage's top grid points, its val and test metrics side by side."""

    rank: int
    point: dict[str, float]
    selected: bool
    value: float
    n: int
    val: Metrics  # means over replicates
    test: Metrics
    val_std: Metrics
    test_std: Metrics
    trials: tuple[TopTrial, ...]


@dataclass(frozen=True)
class StageAnalysis:
    """Is a stage's winner real?"""

    stage: str
    metric: str
    value: float
    selected_point: dict[str, float]
    selected_trial: str
    pbo: PBO
    dsr: DSR
    points: tuple[PointStats, ...]
    top_test: tuple[TopConfig, ...] | None = None  # None until scored on the test set


@dataclass(frozen=True)
class Analysis:
    """RUN_DIR/analysis.json: the overfitting statistics of every finished stage and of the
    final model."""

    stages: tuple[StageAnalysis, ...]
    final: DSR | None  # None before the last stage finished
    n_trials: int  # finished trials with a series, over the stages
    k: int
    n_blocks_requested: int
    schema: str = ANALYSIS_SCHEMA
    version: int = ANALYSIS_VERSION

    def stage(self, name: str) -> StageAnalysis | None:
        return next((s for s in self.stages if s.stage == name), None)

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the analysis") -> Analysis | None:
        """None for an older version (its readers recompute it); RunDirError for another
        document or a newer version."""
        d = _check_schema(d, ANALYSIS_SCHEMA, ANALYSIS_VERSION, where)
        if d.get("version", 1) < ANALYSIS_VERSION:
            return None
        return decode(cls, d)


# ---------------------------------------------------------------- a walk-forward run's summary.json


WALK_FORWARD_SCHEMA = "liquid-search/walk-forward"
WALK_FORWARD_VERSION = 1


@dataclass(frozen=True)
class FoldResult:
    """One fold of a walk-forward run, from its own summary (RUN_DIR/fold_<i>/summary.json)."""

    index: int
    train_dates: str
    val_dates: str
    test_dates: str
    choices: dict[str, dict[str, float]]  # each stage's choice in this fold
    n_tied: dict[str, int]  # each stage's tied set's size
    val: Metrics  # the fold's final model
    test: Metrics
    costs: Metrics
    base_test: Metrics | None  # the fold's base config, if trained
    baseline_test: Metrics | None  # the full-universe baseline, if trained
    search_vs_base: SearchVsBase | None
    universes: Universes | None


@dataclass(frozen=True)
class Pooled:
    """The out-of-sample record: the folds' test series concatenated in date order."""

    n_dates: int
    ic_sharpe: float
    mean_ic: float
    mean_ic_t: float  # mean IC / its standard error over the dates
    ls_sharpe: float  # gross
    ls_net_sharpe: float  # net of flat costs
    to_ls_net_sharpe: float  # net of turnover-aware costs
    ls_return: float


@dataclass(frozen=True)
class AcrossFolds:
    """Search vs base across folds: the per-fold differences of test mean IC (final minus
    base, over seeds), their mean and standard error, and how many folds each way."""

    diffs: tuple[float, ...]
    mean: float
    se: float
    better: int
    worse: int
    sentence: str


@dataclass(frozen=True)
class Stability:
    """Which value each stage chose in each fold, and how many folds agree with the most
    common choice."""

    choices: dict[str, tuple[dict[str, float], ...]]  # stage -> per fold
    agree: dict[str, int]  # stage -> folds choosing its most common point


@dataclass(frozen=True)
class WalkForward:
    """RUN_DIR/summary.json of a walk-forward run: every fold's result and what they say
    together. Its presence marks the run complete."""

    run_dir: str
    metric: str
    window: str
    folds: tuple[FoldResult, ...]
    pooled: Pooled
    pooled_base: Pooled | None  # the base config's folds, pooled the same way
    across: AcrossFolds | None
    stability: Stability
    costs_model: CostModel
    schema: str = WALK_FORWARD_SCHEMA
    version: int = WALK_FORWARD_VERSION

    def to_dict(self) -> dict[str, Any]:
        return encode(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "the summary") -> WalkForward:
        return decode(cls, _check_schema(d, WALK_FORWARD_SCHEMA, WALK_FORWARD_VERSION, where))


def read_summary_doc(d: dict[str, Any], where: str) -> Summary | WalkForward:
    """summary.json of either kind, by its schema key."""
    if isinstance(d, dict) and d.get("schema") == WALK_FORWARD_SCHEMA:
        return WalkForward.from_dict(d, where)
    return Summary.from_dict(d, where)


# ---------------------------------------------------------------- the one encoder and decoder


def _check_schema(d: Any, schema: str, version: int, where: str) -> dict[str, Any]:
    if not isinstance(d, dict):
        raise RunDirError(f"{where}: not a {schema} document (a {type(d).__name__})")
    got = d.get("schema", schema)  # version-1 files carry no schema key
    v = d.get("version", 1)
    if got != schema:
        raise RunDirError(f"{where}: a {got!r} document, not {schema!r}")
    if not isinstance(v, int) or v > version:
        raise RunDirError(
            f"{where}: {schema} version {v!r}, newer than this liquid-search reads ({version}). "
            f"Fix: upgrade liquid-search (pip install -U liquid-search) to read this run."
        )
    return d


def encode(obj: Any) -> Any:
    """A results record as JSON-ready data (dataclasses to dicts, tuples to lists)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: encode(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): encode(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [encode(v) for v in obj]
    return obj


_HINTS: dict[type, dict[str, Any]] = {}


def decode(cls: Any, data: Any) -> Any:
    """`data` (as `encode` wrote it, after JSON) as an instance of the type `cls`: dataclasses
    field by field (absent fields take their defaults), None as NaN for floats."""
    origin = typing.get_origin(cls)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(cls) if a is not type(None)]
        if data is None:
            return None
        return decode(args[0], data)
    if dataclasses.is_dataclass(cls):
        if cls not in _HINTS:
            _HINTS[cls] = typing.get_type_hints(cls)
        hints = _HINTS[cls]
        kw = {f.name: decode(hints[f.name], data[f.name])
              for f in dataclasses.fields(cls) if f.init and f.name in data}  # fmt: skip
        return cls(**kw)
    if hasattr(cls, "from_dict") and isinstance(cls, type):
        return cls.from_dict(data)
    if origin is dict:
        _, vt = typing.get_args(cls)
        return {k: decode(vt, v) for k, v in data.items()}
    if origin is tuple:
        (vt, *_) = typing.get_args(cls)
        return tuple(decode(vt, v) for v in data)
    if origin is list:
        (vt,) = typing.get_args(cls)
        return [decode(vt, v) for v in data]
    if cls is float:  # a metric map's counts (n_dates) stay the ints they were written as
        return math.nan if data is None else data if isinstance(data, int) else float(data)
    if cls is int:
        return int(data)
    if cls is Any:
        return data
    return data if data is None else cls(data)


__all__ = [
    "ANALYSIS_VERSION",
    "DSR",
    "PBO",
    "SUMMARY_VERSION",
    "Analysis",
    "Comparison",
    "Difference",
    "MemberResult",
    "Metrics",
    "ModelResult",
    "PointStats",
    "RuleComparison",
    "RuleResult",
    "SearchVsBase",
    "Significance",
    "Spread",
    "StageAnalysis",
    "StageChoice",
    "Summary",
    "TopConfig",
    "TopTrial",
    "Universes",
    "WalkForward",
    "decode",
    "encode",
    "mean_std",
]  # fmt: skip

"""The search spec: one frozen dataclass per YAML section, loaded strictly.

Every unknown key and bad value in a spec file is reported at once, before `ray.init`, with the
list of valid keys; every grid point of every stage is resolved against the base configs too, so
a value no config accepts is refused here and not by a failing trial. Dotted `key=value`
overrides (values parsed with yaml.safe_load) apply on top of the file. Defaults live in the
dataclasses only.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
import os
import re
import sys
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import yaml

from ranker.config import ConfigError, build
from ranker.costs import CostModel
from ranker.model import ModelConfig
from ranker.split import SplitConfig, WalkForwardConfig
from ranker.synth import check_params as synth_params
from ranker.train import TrainConfig, resolve_precision
from ranker.universe import UniverseConfig
from search.errors import SearchError, SpecError

log = logging.getLogger("liquid_search")

_REPO_CONFIGS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
_INSTALLED_CONFIGS = os.path.join(sys.prefix, "share", "liquid-search", "configs")
# The bundled specs: the repository's configs/, or where a non-editable install puts them.
CONFIG_DIR = _REPO_CONFIGS if os.path.isdir(_REPO_CONFIGS) else _INSTALLED_CONFIGS
DEFAULT_CONFIG = os.path.join(CONFIG_DIR, "search.yaml")
REPLICATE = "replicate"  # the grid key of a stage's replicate index (stages with replicates > 1)
REPLICATE_SEED_STRIDE = 1000  # replicate r trains with seed + r * REPLICATE_SEED_STRIDE


@dataclass(frozen=True)
class SynthSpec:
    scale: float = 0.27
    seed: int = 0
    signal: float = 1.0
    n_dates: int | None = None
    n_symbols: int | None = None
    liquidity: str = "static"  # static | moving: symbols whose liquidity changes (ranker.synth)
    # simple | tuned: a stronger signal in interactions, where the hyperparameters matter
    structure: str = "simple"

    def __post_init__(self) -> None:
        problems = synth_params(self.scale, self.seed, self.n_symbols, self.n_dates, self.signal,
                                liquidity=self.liquidity, structure=self.structure)  # fmt: skip
        if problems:
            raise ConfigError([f"data.synth.{p}" for p in problems])


@dataclass(frozen=True)
class DataSpec:
    source: str | None = None  # a directory or URI; None: the built-in synthetic market
    cache_dir: str = "~/.cache/liquid-search"
    synth: SynthSpec = field(default_factory=SynthSpec)

    def __post_init__(self) -> None:
        errors = []
        if self.source is not None and not self.source.strip():
            errors.append(
                f"data.source={self.source!r}: empty. Fix: a directory or URI with the data, or "
                f"null for the built-in synthetic market"
            )
        if not self.cache_dir.strip():
            errors.append(f"data.cache_dir={self.cache_dir!r}: empty. Fix: a directory")
        if errors:
            raise ConfigError(errors)


@dataclass(frozen=True)
class ParamSpec:
    """How one grid key maps onto the config: `set` a field, or `scale` base fields."""

    set: str | None = None
    scale: tuple[str, ...] | None = None


@dataclass(frozen=True)
class StageSpec:
    name: str
    grid: dict[str, tuple[Any, ...]]
    replicates: int = 1  # trials of every grid point, each with its own training seed
    combine: str = "mean"  # how replicates combine into a point's score: mean | median | min

    @property
    def points(self) -> list[dict[str, Any]]:
        keys = list(self.grid)
        return [
            dict(zip(keys, vals, strict=True)) for vals in itertools.product(*self.grid.values())
        ]

    def contains(self, point: dict[str, Any]) -> bool:
        """Whether `point` (a trial's grid values) is one of the grid's points."""
        return all(float(point[k]) in {float(v) for v in vals} for k, vals in self.grid.items())

    @property
    def n_trials(self) -> int:
        """Trials of the stage: grid points x replicates."""
        return len(self.points) * self.replicates

    def score(self, values: list[float]) -> float:
        """A grid point's selection value from its replicates' values (`combine`): the one
        score that selection, analysis, status and the report use."""
        return float({"mean": np.mean, "median": np.median, "min": np.min}[self.combine](values))

    def point_text(self, config: dict[str, Any]) -> str:
        """`key=value ...` of a trial's grid point (and replicate), for log lines and labels."""
        keys = [*self.grid, *([REPLICATE] if self.replicates > 1 else [])]
        return " ".join(f"{k}={config.get(k)}" for k in keys)


def replicate_seed(seed: int, replicate: int) -> int:
    """The training seed of replicate `replicate` of a config whose seed is `seed` (the same
    stride for a stage's replicates and the final phase's seeds, so replicate 0 and the first
    final seed are the spec's own seed)."""
    return seed + REPLICATE_SEED_STRIDE * replicate


@dataclass(frozen=True)
class FinalSpec:
    epochs: int = 25
    baseline: bool = True  # also train on the full (not liquid) universe, for comparison
    # The final model is the ensemble of this many seeds (the mean of their scores); the base
    # config and the baseline are trained with as many, so every comparison is like with like.
    seeds: int = 3
    compare_base: bool = True  # also train the spec's base config: did the search pay?
    # Existing models tested beside the final model, by name: a scores file as `liquid-search
    # score` writes it, or a checkpoint or run directory of this project (`search.compare`).
    compare: dict[str, str] = field(default_factory=dict)

    def member_seeds(self, seed: int) -> list[int]:
        """The training seeds of each final-phase model's members: the spec's seed, then one
        replicate stride apart, so the first member is the single final model of one seed."""
        return [replicate_seed(seed, i) for i in range(self.seeds)]

    def __post_init__(self) -> None:
        errors = []
        for name in ("epochs", "seeds"):
            v = getattr(self, name)
            if not (isinstance(v, int) and not isinstance(v, bool) and v >= 1):
                errors.append(f"final.{name}={v!r}: must be a positive integer")
        for name, path in self.compare.items():
            if not name.isidentifier() or name in ("final", "base", "baseline", "oracle"):
                errors.append(f"final.compare.{name}: a comparison's name is an identifier other "
                              f"than final, base, baseline, oracle, e.g. original")  # fmt: skip
            if not path.strip():
                errors.append(f"final.compare.{name}={path!r}: empty. Fix: a scores file, a "
                              f"checkpoint or a run directory (path or URI)")  # fmt: skip
        if errors:
            raise ConfigError(errors)


SELECTION_RULES = ("best", "spa")


@dataclass(frozen=True)
class SelectionSpec:
    """How each stage picks its config, and how sure it says it is (`search.significance`)."""

    # best: the highest score, as the notebook does. spa: keep the stage's starting point unless
    # the SPA test says one of the stage's configs beats it at `spa_level`; then the best.
    rule: str = "best"
    mcs_size: float = 0.1  # the Model Confidence Set holds the best config with 1 - mcs_size
    spa_level: float = 0.05
    reps: int = 1000  # bootstrap replications of each test
    block: int | None = None  # the bootstrap's mean block length in dates; None: sqrt(T)

    def __post_init__(self) -> None:
        errors = []
        if self.rule not in SELECTION_RULES:
            errors.append(f"selection.rule={self.rule!r}: expected one of {list(SELECTION_RULES)}")
        for name in ("mcs_size", "spa_level"):
            v = getattr(self, name)
            if not (isinstance(v, int | float) and 0 < v < 1):
                errors.append(f"selection.{name}={v!r}: must be in (0, 1), e.g. 0.1")
        if not (
            isinstance(self.reps, int) and not isinstance(self.reps, bool) and self.reps >= 100
        ):
            errors.append(f"selection.reps={self.reps!r}: must be an integer >= 100, e.g. 1000")
        if self.block is not None and not (isinstance(self.block, int) and self.block >= 1):
            errors.append(f"selection.block={self.block!r}: a positive integer, or null (sqrt(T))")
        if errors:
            raise ConfigError(errors)


@dataclass(frozen=True)
class HalvingSpec:
    """Successive halving within each stage (`search.halving`): at every evaluation but the
    last, keep the best 1/reduction of the grid points; 0 turns it off (every trial trains all
    its epochs, the notebook's search)."""

    reduction: int = 0

    def __post_init__(self) -> None:
        r = self.reduction
        if not (isinstance(r, int) and not isinstance(r, bool) and (r == 0 or r >= 2)):
            raise ConfigError([f"halving.reduction={r!r}: 0 (off) or an integer >= 2, e.g. 3"])

    @property
    def on(self) -> bool:
        return self.reduction >= 2


@dataclass(frozen=True)
class TrackingSpec:
    """Where the search is tracked besides its run directory."""

    # An MLflow tracking URI (http://host:5000, a directory, file:///...): one MLflow run per
    # trial, nested under one per search (`search.tracking`). null: no MLflow.
    mlflow: str | None = None
    experiment: str = "liquid-search"

    def __post_init__(self) -> None:
        errors = []
        if self.mlflow is not None and not self.mlflow.strip():
            errors.append(f"tracking.mlflow={self.mlflow!r}: empty. Fix: a tracking URI or null")
        if not self.experiment.strip():
            errors.append(f"tracking.experiment={self.experiment!r}: empty. Fix: a name")
        if errors:
            raise ConfigError(errors)


@dataclass(frozen=True)
class ResourceSpec:
    """What each trial (and the final model) reserves: CPUs (torch threads) and a GPU share."""

    cpu: float = 1.0
    gpu: float = 0.0
    # The cluster's autoscaler adds the nodes trials wait for: do not refuse a trial's resources
    # because no node has them yet.
    autoscale: bool = False

    def __post_init__(self) -> None:
        errors = []
        if not (math.isfinite(self.cpu) and self.cpu > 0):
            errors.append(
                f"resources.cpu={self.cpu}: must be a number > 0 (fractions such as 0.5 are fine)"
            )
        if not (math.isfinite(self.gpu) and self.gpu >= 0
                and (self.gpu <= 1 or self.gpu == int(self.gpu))):  # fmt: skip
            errors.append(
                f"resources.gpu={self.gpu}: must be 0 (no GPU), a fraction in (0, 1] or a whole "
                f"number of GPUs"
            )
        if errors:
            raise ConfigError(errors)


@dataclass(frozen=True)
class SearchSpec:
    data: DataSpec = field(default_factory=DataSpec)
    universe: UniverseConfig = field(default_factory=UniverseConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    walk_forward: WalkForwardConfig = field(default_factory=WalkForwardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    params: dict[str, ParamSpec] = field(default_factory=dict)
    stages: tuple[StageSpec, ...] = ()
    selection: SelectionSpec = field(default_factory=SelectionSpec)
    halving: HalvingSpec = field(default_factory=HalvingSpec)
    final: FinalSpec = field(default_factory=FinalSpec)
    costs: CostModel = field(default_factory=CostModel)
    resources: ResourceSpec = field(default_factory=ResourceSpec)
    tracking: TrackingSpec = field(default_factory=TrackingSpec)
    max_concurrent: int = 0  # 0: as many trials as the cluster's resources fit
    max_failures: int = 2  # retries of a failed trial, each from its last checkpoint
    storage: str = "./runs"  # a local path, an NFS mount, or s3:// / gs://
    name: str | None = None  # run name under storage; default: a timestamp

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in _DATA_SIZED:
            d["model"].pop(k)
        d["stages"] = [
            {"name": s.name, "grid": {k: list(v) for k, v in s.grid.items()},
             "replicates": s.replicates, "combine": s.combine}
            for s in self.stages
        ]  # fmt: skip
        d["params"] = {
            k: ({"set": p.set} if p.set else {"scale": list(p.scale or ())})
            for k, p in self.params.items()
        }
        return d

    def stage(self, name: str) -> StageSpec:
        for s in self.stages:
            if s.name == name:
                return s
        raise SearchError(
            f"no stage {name!r}; the spec's stages are {[s.name for s in self.stages]}"
        )


# ---------------------------------------------------------------- loading

_SECTIONS: dict[str, type] = {
    "data": DataSpec,
    "universe": UniverseConfig,
    "split": SplitConfig,
    "walk_forward": WalkForwardConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "selection": SelectionSpec,
    "halving": HalvingSpec,
    "final": FinalSpec,
    "costs": CostModel,
    "resources": ResourceSpec,
    "tracking": TrackingSpec,
}
_TOP = {f.name for f in fields(SearchSpec)}
_RUN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+=@-]*")
_COMBINE = ("mean", "median", "min")
# A trial's own columns in results.csv and keys in its config: no grid key may take their names.
_RESERVED_KEYS = frozenset({"trial_id", "replicate", "seed", "status", "error", "checkpoint",
                            "epoch", "epochs", "best_epoch", "train_loss", "train_seconds",
                            "restored", "node_id", "device", "data_zero_copy", "gpu"})  # fmt: skip
_STAGE_KEYS = ("name", "grid", "replicates", "combine")
# Stage keys renamed (one meaning per name: `seeds` is the final phase's): still read, with a note.
_RENAMED = {"seeds": "replicates", "select": "combine"}


def _renamed_keys(
    s: dict[str, Any], where: str, errors: list[str], notes: list[str] | None
) -> dict[str, Any]:
    """A stage's mapping with renamed keys under their new names (a note says so, once each);
    both spellings at once is an error."""
    out = dict(s)
    for old, new in _RENAMED.items():
        if old not in out:
            continue
        if new in out:
            errors.append(f"{where}: both {old!r} and {new!r}; {old!r} is the old name. Fix: "
                          f"keep {new}")  # fmt: skip
        else:
            out[new] = out.pop(old)
            if notes is not None:
                notes.append(f"{where}.{old} is now {where}.{new} (read as that; rename it)")
    return out


# Input sizes come from the data, never from the spec.
_DATA_SIZED = ("n_fundamental_features", "n_price_features", "n_embedding_dim")


def _section(name: str, cls: type, raw: Any, errors: list[str]) -> Any:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        errors.append(f"{name}: expected a mapping, got {raw!r}")
        return cls()
    return build(cls, raw, name, errors)


def _config_fields() -> dict[str, set[str]]:
    return {
        "model": {f.name for f in fields(ModelConfig)} - set(_DATA_SIZED),
        "train": {f.name for f in fields(TrainConfig)},
    }


def _build_params(raw: Any, errors: list[str]) -> dict[str, ParamSpec]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        errors.append(
            f"params: expected a mapping of grid key -> {{set: ...}} or {{scale: [...]}}, got {raw!r}"
        )
        return {}
    valid = _config_fields()

    def target_ok(where: str, t: Any) -> bool:
        if not isinstance(t, str) or t.count(".") != 1:
            errors.append(f"{where}={t!r}: expected 'model.<field>' or 'train.<field>'")
            return False
        sec, name = t.split(".")
        if sec not in valid or name not in valid[sec]:
            errors.append(
                f"{where}={t!r}: not a config field; valid: "
                f"{sorted(f'{s}.{n}' for s in valid for n in valid[s])}"
            )
            return False
        return True

    out = {}
    for key, p in raw.items():
        where = f"params.{key}"
        if key in _RESERVED_KEYS:
            errors.append(f"{where}: the name is one of a trial's own columns in results.csv "
                          f"({sorted(_RESERVED_KEYS)}). Fix: another name, e.g. {key}_value")  # fmt: skip
            continue
        if not isinstance(p, dict) or set(p) - {"set", "scale"} or len(p) != 1:
            errors.append(
                f"{where}: expected exactly one of {{set: model.<field>}} or {{scale: [model.<field>, ...]}}, got {p!r}"
            )
            continue
        if "set" in p:
            if target_ok(f"{where}.set", p["set"]):
                out[key] = ParamSpec(set=p["set"])
        else:
            targets = p["scale"]
            if not isinstance(targets, list) or not targets:
                errors.append(f"{where}.scale={targets!r}: expected a list of integer fields")
                continue
            if all(target_ok(f"{where}.scale", t) for t in targets):
                out[key] = ParamSpec(scale=tuple(targets))
    return out


def _build_stages(
    raw: Any, params: dict[str, ParamSpec], errors: list[str], notes: list[str] | None = None
) -> tuple[StageSpec, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list) or not raw:
        errors.append("stages: expected a non-empty list of {name, grid, replicates}")
        return ()
    stages, seen = [], set()
    for n, s in enumerate(raw):
        where = f"stages[{n}]"
        if not isinstance(s, dict):
            errors.append(f"{where}: expected a mapping with name and grid, got {s!r}")
            continue
        unknown = set(s) - set(_STAGE_KEYS) - set(_RENAMED)
        if unknown:
            errors.append(
                f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_STAGE_KEYS)}"
            )
        name = s.get("name")
        if not isinstance(name, str) or not name.isidentifier():
            errors.append(f"{where}.name={name!r}: expected an identifier such as 'architecture'")
            continue
        if name in seen:
            errors.append(f"{where}.name={name!r}: duplicate stage name")
        seen.add(name)
        where = f"stages.{name}"
        grid = s.get("grid")
        if not isinstance(grid, dict) or not grid:
            errors.append(
                f"{where}.grid: expected a mapping of key -> list of values, got {grid!r}"
            )
            continue
        clean = {}
        for k, vals in grid.items():
            if k not in params:
                errors.append(
                    f"{where}.grid.{k}: no such search key; define it under params (known: {sorted(params)})"
                )
                continue
            if not isinstance(vals, list) or not vals:
                errors.append(f"{where}.grid.{k}={vals!r}: expected a non-empty list")
                continue
            if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in vals):
                errors.append(f"{where}.grid.{k}={vals!r}: values must be numbers")
                continue
            clean[k] = tuple(vals)
        s = _renamed_keys(s, f"stages.{name}", errors, notes)
        reps = s.get("replicates", 1)
        if not (isinstance(reps, int) and not isinstance(reps, bool) and reps >= 1):
            errors.append(f"{where}.replicates={reps!r}: expected a positive integer")
            reps = 1
        combine = s.get("combine", "mean")
        if combine not in _COMBINE:
            errors.append(f"{where}.combine={combine!r}: expected one of {list(_COMBINE)}")
            combine = "mean"
        stages.append(StageSpec(name=name, grid=clean, replicates=reps, combine=combine))
    return tuple(stages)


def from_dict(
    raw: Any, source: str = "<spec>", require_stages: bool = True, grid: bool = True
) -> SearchSpec:
    """Build a SearchSpec, collecting every problem (grid points included) before raising.

    Args:
        grid: also resolve every grid value (`check_grid`); a run's saved spec is read without
            it, since its trials have already run (a bad point is an ERROR row by then).

    Raises:
        SpecError: listing every unknown key, bad value and grid value no config accepts.
    """
    errors: list[str] = []
    if not isinstance(raw, dict):
        raise SpecError(source, [f"expected a mapping of sections, got {type(raw).__name__}"])
    for k in raw:
        if k not in _TOP:
            errors.append(f"{k}: unknown section; valid sections: {sorted(_TOP)}")
    kw: dict[str, Any] = {}
    if isinstance(raw.get("model"), dict):
        model_raw = dict(raw["model"])
        for k in _DATA_SIZED:
            if k in model_raw:
                errors.append(f"model.{k}: set from the data; remove it from the spec")
                del model_raw[k]
        raw = {**raw, "model": model_raw}
    for sec, cls in _SECTIONS.items():
        if sec in raw:
            kw[sec] = _section(sec, cls, raw[sec], errors)
    params = _build_params(raw.get("params"), errors)
    kw["params"] = params
    notes: list[str] = []
    kw["stages"] = _build_stages(raw.get("stages"), params, errors, notes if grid else None)
    for k in ("max_concurrent", "max_failures"):
        if k in raw:
            v = raw[k]
            if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
                kw[k] = v
            else:
                errors.append(f"{k}={v!r}: expected a non-negative integer")
    for k in ("storage", "name"):
        if k in raw:
            v = raw[k]
            if (isinstance(v, str) and v.strip()) or (k == "name" and v is None):
                kw[k] = v
            else:
                errors.append(f"{k}={v!r}: expected a non-empty string")
    if kw.get("name") and not _RUN_NAME.fullmatch(kw["name"]):
        errors.append(
            f"name={kw['name']!r}: a run name becomes a directory or object prefix: letters, "
            f"digits and . _ - + = @ only, starting with a letter or digit (it cannot contain "
            f"'/' or start with '.'). Fix: e.g. name=run-1"
        )
    if require_stages and "stages" not in raw and not errors:
        errors.append("stages: the spec defines no stages")
    spec = SearchSpec(**kw)  # refused sections stand in as their defaults, to check the grid
    if grid:
        errors += check_grid(spec)
    if errors:
        raise SpecError(source, errors)
    for note in notes:
        log.warning(f"{source}: {note}")
    return spec


def check_grid(spec: SearchSpec) -> list[str]:
    """Every grid value of every stage that no config accepts, one message each.

    Each value is applied alone on the spec's base configs. The configs check each field on its
    own (ranges, types), so a value accepted here is accepted on any stage's base: the stage
    before can only change other fields.
    """
    errors = []
    for st in spec.stages:
        for key, values in st.grid.items():
            for v in values:
                try:
                    resolve_point(spec, spec.model, spec.train, {key: v})
                except ConfigError as e:
                    errors.append(
                        f"stages.{st.name}.grid.{key}={v!r}: {'; '.join(e.errors)}. Fix: drop "
                        f"{v!r} from stages.{st.name}.grid.{key}"
                    )
    return errors


def apply_overrides(raw: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply dotted `key=value` overrides (values parsed as YAML) to a raw spec mapping.

    `stages.<name>.grid.<key>=[...]` and `stages.<name>.replicates=3` address a stage by name.
    """
    out = copy.deepcopy(raw)
    errors = []
    for item in overrides:
        if "=" not in item:
            errors.append(f"override {item!r}: expected key=value, e.g. train.epochs=2")
            continue
        key, text = item.split("=", 1)
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as e:
            errors.append(f"override {item!r}: the value is not valid YAML ({e})")
            continue
        parts = key.split(".")
        node: Any = out
        if parts[0] == "stages" and len(parts) > 2:
            stages = out.get("stages") or []
            match = [s for s in stages if isinstance(s, dict) and s.get("name") == parts[1]]
            if not match:
                names = [s.get("name") for s in stages if isinstance(s, dict)]
                errors.append(f"override {item!r}: no stage named {parts[1]!r}; stages: {names}")
                continue
            node, parts = match[0], parts[2:]
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {} if node.get(p) is None else node[p]
                if not isinstance(node[p], dict):
                    errors.append(f"override {item!r}: {p!r} is not a section")
                    break
            node = node[p]
        else:
            node[parts[-1]] = value
    if errors:
        raise SpecError("command line", errors)
    return out


def load(
    path: str | os.PathLike | None,
    overrides: list[str] | None = None,
    require_stages: bool = True,
    flags: dict[str, tuple[str, str | None]] | None = None,
) -> SearchSpec:
    """Load a spec file (default: configs/search.yaml's content when path is None) with overrides.

    Args:
        path: the spec file.
        overrides: dotted `key=value` pairs, values parsed as YAML.
        require_stages: refuse a spec without stages.
        flags: top-level keys set by command-line flags, as {key: (flag, value)}, e.g.
            {"name": ("--name", "r1")}; applied after the overrides, as strings; a None value
            is left out. Their problems are listed with the spec's, naming the flag.

    Raises:
        SpecError: every problem of the file, the overrides and the flags at once.
    """
    source = os.fspath(path) if path is not None else "<defaults>"
    raw = _read_spec_file(path, source) if path is not None else {}
    return from_raw(raw, source, overrides, require_stages, flags)


def from_raw(
    raw: dict[str, Any],
    source: str,
    overrides: list[str] | None = None,
    require_stages: bool = True,
    flags: dict[str, tuple[str, str | None]] | None = None,
) -> SearchSpec:
    """`load` for a mapping of sections already read (`source` names it in messages).

    Raises:
        SpecError: every problem of the mapping, the overrides and the flags at once.
    """
    raw = apply_overrides(raw, overrides or [])
    set_by = {}
    for key, (flag, value) in (flags or {}).items():
        if value is not None:
            raw[key] = value
            set_by[key] = flag
    try:
        return from_dict(raw, source, require_stages)
    except SpecError as e:
        # Say which problems a command-line override or flag made, not only the file's name.
        keys = [o.partition("=")[0].strip() for o in overrides or []]
        errors = []
        for err in e.errors:
            flag = next((f for k, f in set_by.items() if _about(err, [k])), None)
            if flag:
                err = f"{err} (set by {flag} on the command line)"
            elif _about(err, keys):
                err = f"{err} (set on the command line)"
            errors.append(err)
        raise SpecError(e.source, errors) from None


def _read_spec_file(path: str | os.PathLike, source: str) -> dict[str, Any]:
    """A spec file's mapping of sections.

    Raises:
        SpecError: the file is missing, a directory, unreadable, not YAML or not a mapping.
    """
    if not source.strip():
        raise SpecError("--config ''", [f"empty path; the bundled specs are {bundled_specs()}"])
    try:
        with open(path) as f:
            raw = yaml.safe_load(f)
    except FileNotFoundError:
        raise SpecError(
            source, [f"file not found; the bundled specs are {bundled_specs()}"]
        ) from None
    except IsADirectoryError:
        raise SpecError(
            source, [f"is a directory, not a spec file; the bundled specs are {bundled_specs()}"]
        ) from None
    except (PermissionError, UnicodeDecodeError) as e:
        raise SpecError(
            source, [f"cannot be read as a YAML spec ({type(e).__name__}: {e})"]
        ) from None
    except yaml.YAMLError as e:
        raise SpecError(source, [f"not valid YAML: {e}"]) from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise SpecError(source, [f"expected a mapping of sections, got {type(raw).__name__}"])
    return raw


def _about(error: str, keys: list[str]) -> bool:
    """Whether a spec error is about one of the dotted keys (its first word names the key)."""
    return any(error.startswith(k) and error[len(k) : len(k) + 1] in ("", "=", ":", ".")
               for k in keys)  # fmt: skip


def bundled_specs() -> list[str]:
    """The spec files that ship with the package."""
    return (
        sorted(os.path.join(CONFIG_DIR, f) for f in os.listdir(CONFIG_DIR))
        if os.path.isdir(CONFIG_DIR)
        else []
    )


def with_precision_resolved(spec: SearchSpec) -> SearchSpec:
    """The spec with `train.precision: auto` replaced by what it means for the trials' device
    (a GPU share: bf16; CPUs: bf16 with AMX on this machine, else fp32), resolved once here so
    every trial, the final model and a later resume use the same precision."""
    if spec.train.precision != "auto":
        return spec
    device = "cuda" if spec.resources.gpu > 0 else "cpu"
    return replace(spec, train=replace(spec.train, precision=resolve_precision("auto", device)))


def resolve_point(
    spec: SearchSpec, base_model: ModelConfig, base_train: TrainConfig, point: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig]:
    """The (model, train) configs of one grid point applied on a base.

    Raises:
        ConfigError: the point sets a value its config refuses.
    """
    updates: dict[str, dict[str, Any]] = {"model": {}, "train": {}}
    bases = {"model": base_model, "train": base_train}
    for key, value in point.items():
        p = spec.params[key]
        if p.set:
            sec, name = p.set.split(".")
            updates[sec][name] = value
        else:
            for t in p.scale or ():
                sec, name = t.split(".")
                updates[sec][name] = max(1, int(getattr(bases[sec], name) * value))
    m = replace(base_model, **updates["model"])
    t = replace(base_train, **updates["train"])
    return m, t


def trial_configs(
    spec: SearchSpec, base_model: ModelConfig, base_train: TrainConfig, config: dict[str, Any]
) -> tuple[ModelConfig, TrainConfig, dict[str, Any]]:
    """A trial's (model, train) configs and its grid point; replicate r shifts the seed.

    Raises:
        ConfigError: the point sets a value its config refuses.
    """
    point = {k: v for k, v in config.items() if k != REPLICATE}
    mc, tc = resolve_point(spec, base_model, base_train, point)
    rep = int(config.get(REPLICATE, 0))
    if rep:
        tc = replace(tc, seed=replicate_seed(tc.seed, rep))
    return mc, tc, point

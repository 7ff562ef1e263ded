"""MLflow tracking of a search (`tracking.mlflow: URI` in the spec, or `--mlflow URI`).

One MLflow run per search (the parent: each stage's selection, the final model's, the base
config's and the baseline's test metrics, the search-vs-base and universe comparisons, the
existing models of `final.compare` beside the final one, and the spec, summary, analysis and
report as artifacts), and one nested run per trial (params: the grid
point and the model and train configs it resolved to; a metric step per evaluation; tags: the
run, the stage, the trial id and the grid point). The run directory stays the record; MLflow is
where a team looks across searches.

Ray's `MLflowLoggerCallback` is not used: its params are only a trial's grid point (not the
configs it resolved to), its tags are the same for every trial (no stage, trial id or point),
and it keeps its trial-to-MLflow-run map in memory only, so a stage resumed after an interrupt
would open a second MLflow run for every trial. `TrialRuns` is a Tune callback on MLflow's public
client API that does those three, keeping its map in Tune's experiment state.

mlflow is an optional dependency (`pip install -e ".[mlflow]"`): it is imported only when a
spec turns tracking on.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import tempfile
import time
import urllib.parse
from typing import Any

from ray import tune

from ranker import storage
from ranker.config import ConfigError
from ranker.model import ModelConfig
from ranker.train import TrainConfig
from search.errors import SearchError
from search.results import Summary, WalkForward
from search.rundir import Best, RunDir
from search.spec import SearchSpec, StageSpec, trial_configs
from search.trial_result import TrialResult, config_error

log = logging.getLogger("liquid_search")

PROBE_SECONDS = 15.0  # how long `check` waits for a tracking server to answer
TAG = "liquid_search."  # prefix of our tags


class TrackingError(SearchError):
    """MLflow is asked for but cannot be used: not installed, or the server does not answer."""


def _client(uri: str) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise TrackingError(
            f"tracking.mlflow={uri!r} needs mlflow, which is not installed. Fix: "
            f"pip install -e '.[mlflow]' (or pip install mlflow), or leave tracking.mlflow unset."
        ) from None
    return MlflowClient(tracking_uri=uri)


def check(spec: SearchSpec) -> None:
    """Before any trial starts: the tracking URI answers and its experiment can be had.

    Raises:
        TrackingError: one line naming the URI and what to check.
    """
    uri = spec.tracking.mlflow
    if uri is None:
        return
    client = _client(uri)
    fix = "check that `mlflow server` runs there and the URI (--mlflow, tracking.mlflow)"
    fixes = {"timeout": fix, "down": fix, "other": fix,
             "denied": "check the MLflow credentials (MLFLOW_TRACKING_TOKEN, or "
                       "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)"}  # fmt: skip
    url = urllib.parse.urlparse(uri)
    if url.scheme in ("http", "https") and url.hostname:
        # MLflow's client retries a refused connection for minutes; a socket says it at once.
        port = url.port or (443 if url.scheme == "https" else 80)
        try:
            socket.create_connection((url.hostname, port), timeout=5).close()
        except OSError as e:
            raise TrackingError(
                f"MLflow tracking: {uri}: the endpoint does not answer ({e}). Fix: {fix}."
            ) from None
    try:
        storage.answer(lambda: _experiment_id(client, spec.tracking.experiment), uri,
                       seconds=PROBE_SECONDS, fixes=fixes)  # fmt: skip
    except storage.StorageError as e:
        raise TrackingError(f"MLflow tracking: {e}") from None


def _experiment_id(client: Any, name: str) -> str:
    exp = client.get_experiment_by_name(name)
    return exp.experiment_id if exp is not None else client.create_experiment(name)


def _params(prefix: str, d: dict[str, Any]) -> dict[str, str]:
    return {f"{prefix}{k}": str(v) for k, v in d.items()}


def _metrics(prefix: str, d: dict[str, Any] | None) -> dict[str, float]:
    """The finite numbers of `d` as metrics (MLflow refuses infinities; NaN says nothing)."""
    out = {}
    for k, v in (d or {}).items():
        if isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v):
            out[f"{prefix}{k}"] = float(v)
    return out


class Tracker:
    """A search's parent MLflow run, driven by the driver; `trial_runs` makes each stage's
    callback for the nested runs."""

    def __init__(self, uri: str, experiment_id: str, run_id: str) -> None:
        self.uri, self.experiment_id, self.run_id = uri, experiment_id, run_id
        self.client = _client(uri)

    @classmethod
    def start(cls, spec: SearchSpec, run: RunDir, run_id: str | None = None) -> Tracker | None:
        """The search's parent run: a new one, or `run_id` (a resumed search) running again;
        None when the spec does not track."""
        uri = spec.tracking.mlflow
        if uri is None:
            return None
        client = _client(uri)
        exp = _experiment_id(client, spec.tracking.experiment)
        name = os.path.basename(run.path.rstrip("/"))
        if run_id is None:
            run_id = client.create_run(exp, run_name=name, tags={
                f"{TAG}run": name, f"{TAG}run_dir": run.path}).info.run_id  # fmt: skip
            base = {**spec.model.to_dict(), **spec.train.to_dict()}
            _log(client, run_id, params=_params("base.", base) | {
                "universe": f"{spec.universe.mode} >= {spec.universe.threshold:g}",
                "stages": ",".join(s.name for s in spec.stages),
                "final.epochs": str(spec.final.epochs), "final.seeds": str(spec.final.seeds)})  # fmt: skip
        else:
            client.update_run(run_id, status="RUNNING")
        log.info(f"MLflow: run {run_id} in experiment {spec.tracking.experiment!r} at {uri}")
        return cls(uri, exp, run_id)

    def trial_runs(
        self, run_name: str, spec: SearchSpec, stage: StageSpec, base_model: ModelConfig,
        base_train: TrainConfig, fold: int = 0,
    ) -> TrialRuns:  # fmt: skip
        return TrialRuns(self.uri, self.experiment_id, self.run_id, run_name, spec, stage,
                         base_model, base_train, fold)  # fmt: skip

    def log_stage(self, best: Best, fold: int = 0) -> None:
        """A stage's selection: its grid point as params, its value, how many configs are tied
        with it and the SPA p-value against the stage's start as metrics (a walk-forward fold's
        under `fold<i>.`)."""
        key = f"fold{fold}.{best.stage}" if fold else best.stage
        metrics = {f"{key}.best": best.value}
        sig = best.significance
        if sig is not None and sig.skipped is None:
            metrics |= {f"{key}.n_tied": sig.n_tied, f"{key}.spa_pvalue": sig.spa_pvalue}
        _log(self.client, self.run_id, params=_params(f"{key}.", best.point),
             metrics=metrics)  # fmt: skip

    def log_final(self, summary: Summary | WalkForward, run: RunDir) -> None:
        """The final results as metrics, and the run's documents as artifacts (a walk-forward
        run's: the pooled record, each fold's test metrics, search vs base across folds)."""
        if isinstance(summary, WalkForward):
            self._log_walk_forward(summary)
            self.log_documents(run)
            return
        m: dict[str, float] = {}
        for role, part in summary.models.items():
            m |= _metrics(f"{role}.test.", part.test) | _metrics(f"{role}.val.", part.val)
            m |= _metrics(f"{role}.costs.", part.costs)
        if summary.search_vs_base is not None:
            for key, c in summary.search_vs_base.by_metric.items():
                m |= _metrics(f"search_vs_base.{key}.",
                              {"final": c.a, "base": c.b, "diff": c.diff, "se": c.se})  # fmt: skip
        if summary.universes is not None:
            for rule, r in summary.universes.by_rule.items():
                m |= _metrics(f"universe.{rule}.test.", r.test)
        _log(self.client, self.run_id, metrics=m)
        self.log_comparisons(summary)
        self.log_documents(run)

    def _log_walk_forward(self, wf: WalkForward) -> None:
        m = _metrics("pooled.", {f: getattr(wf.pooled, f) for f in (
            "ic_sharpe", "mean_ic", "mean_ic_t", "ls_sharpe", "ls_net_sharpe", "to_ls_net_sharpe",
            "ls_return")})  # fmt: skip
        for f in wf.folds:
            m |= _metrics(f"fold{f.index}.test.", f.test) | _metrics(f"fold{f.index}.val.", f.val)
        if wf.across is not None:
            m |= _metrics("across_folds.search_vs_base.",
                          {"mean": wf.across.mean, "se": wf.across.se,
                           "better": wf.across.better, "worse": wf.across.worse})  # fmt: skip
        _log(self.client, self.run_id, metrics=m)

    def log_comparisons(self, summary: Summary) -> None:
        """Each `final.compare` model's test metrics and costs, and per compared metric the
        final model minus it with its paired standard error (`compare.<name>.vs_final.*`); its
        source as a tag (a tag, not a param: a resumed run may point a name elsewhere)."""
        m: dict[str, float] = {}
        for name, c in summary.comparisons.items():
            m |= _metrics(f"compare.{name}.test.", c.test)
            m |= _metrics(f"compare.{name}.costs.", c.costs)
            for key, d in c.vs_final.items():
                m |= _metrics(f"compare.{name}.vs_final.{key}.", {"diff": d.diff, "se": d.se})
            for rule, r in c.by_rule.items():
                m |= _metrics(f"compare.{name}.universe.{rule}.test.", r.test)
            self.client.set_tag(self.run_id, f"{TAG}compare.{name}", f"{c.kind}: {c.source}")
        _log(self.client, self.run_id, metrics=m)

    def log_documents(self, run: RunDir) -> None:
        """spec.yaml, summary.json, analysis.json, report.md, report.html and the report's
        figures, as the parent run's artifacts (copied through a local folder: the run
        directory may be on an object store)."""
        with tempfile.TemporaryDirectory() as tmp:
            for rel in run.documents():
                local = os.path.join(tmp, rel)
                os.makedirs(os.path.dirname(local), exist_ok=True)
                with open(local, "wb") as f:
                    f.write(storage.read_bytes(run.file(rel)))
                sub = os.path.dirname(rel)
                self.client.log_artifact(self.run_id, local, artifact_path=sub or None)

    def end(self, status: str) -> None:
        """FINISHED, FAILED or KILLED (interrupted: a resume reopens it)."""
        self.client.set_terminated(self.run_id, status=status)


def _log(client: Any, run_id: str, *, params: dict[str, str] | None = None,
         metrics: dict[str, float] | None = None, step: int = 0) -> None:  # fmt: skip
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    ps = [Param(k, v) for k, v in (params or {}).items()]
    ms = [Metric(k, v, now, step) for k, v in (metrics or {}).items()]
    for i in range(0, max(len(ps), len(ms)), 100):  # MLflow takes up to 100 of each a call
        client.log_batch(run_id, metrics=ms[i : i + 100], params=ps[i : i + 100])


class TrialRuns(tune.Callback):
    """One MLflow run per trial of a stage, nested under the search's, logged from the driver.

    Its map of trial ids to MLflow runs travels in Tune's experiment state (`get_state`), so a
    stage resumed after an interrupt continues each trial's MLflow run instead of opening one.
    """

    def __init__(
        self, uri: str, experiment_id: str, parent: str, run_name: str, spec: SearchSpec,
        stage: StageSpec, base_model: ModelConfig, base_train: TrainConfig, fold: int = 0,
    ) -> None:  # fmt: skip
        self.uri, self.experiment_id, self.parent = uri, experiment_id, parent
        self.run_name, self.spec, self.stage = run_name, spec, stage
        self.fold = fold  # a walk-forward fold's trials carry it as a tag
        self.base_model, self.base_train = base_model, base_train
        self.runs: dict[str, str] = {}
        self._client: Any = None

    def __getstate__(self) -> dict[str, Any]:  # a client is per process
        return {**self.__dict__, "_client": None}

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = _client(self.uri)
        return self._client

    def get_state(self) -> dict[str, Any]:
        return {"runs": dict(self.runs)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.runs = dict(state.get("runs", {}))

    def _run_of(self, trial: Any) -> str:
        if trial.trial_id in self.runs:
            return self.runs[trial.trial_id]
        point = self.stage.point_text(trial.config)
        run_id = self.client.create_run(
            self.experiment_id, run_name=f"{self.stage.name}/{trial.trial_id}",
            tags={"mlflow.parentRunId": self.parent, f"{TAG}run": self.run_name,
                  f"{TAG}stage": self.stage.name, f"{TAG}trial_id": trial.trial_id,
                  f"{TAG}point": point,
                  **({f"{TAG}fold": str(self.fold)} if getattr(self, "fold", 0) else {})},
        ).info.run_id  # fmt: skip
        params = _params("", trial.config)
        try:
            mc, tc, _ = trial_configs(self.spec, self.base_model, self.base_train, trial.config)
            params |= _params("model.", mc.to_dict()) | _params("train.", tc.to_dict())
        except ConfigError:  # the trial reports the error itself; its point is logged
            pass
        _log(self.client, run_id, params=params)
        self.runs[trial.trial_id] = run_id
        return run_id

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._run_of(trial)

    def on_trial_result(
        self, iteration: int, trials: list, trial: Any, result: dict, **info: Any
    ) -> None:
        r = TrialResult.from_report(result)
        if r is None:
            return
        metrics = (_metrics("val_", r.metrics) | _metrics("best_val_", r.best_metrics)
                   | _metrics("", {"train_loss": r.train_loss, "train_seconds": r.train_seconds,
                                   "best_epoch": r.best_epoch}))  # fmt: skip
        _log(self.client, self._run_of(trial), metrics=metrics, step=r.epoch)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        failed = bool(config_error(trial.last_result))
        self.client.set_terminated(self._run_of(trial), status="FAILED" if failed else "FINISHED")

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.client.set_terminated(self._run_of(trial), status="FAILED")

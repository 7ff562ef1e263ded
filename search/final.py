"""The final model, the base config and the full-universe baseline: trained as Ray tasks, each
with `final.seeds` seeds side by side, tested, saved.

- final: the last stage's best config trained for `final.epochs` on the liquid universe; the
  final model is the ensemble of its seeds (the mean of their scores), saved as one checkpoint.
- base: the spec's base config (where the search started), trained the same way: did the search
  pay? The difference of the seeds' mean test metrics, with its standard error, says whether the
  search beat its starting point by more than seed noise.
- baseline: the final config trained on the full (not liquid) universe, also an ensemble, so
  the liquid-vs-full comparison compares like with like.

Every model is scored on the liquid test set; the final ensemble also on the test set as each
universe rule picks it (the point-in-time rule is the honest one; the full-period rule, the
notebook's, looks ahead). The existing models of `final.compare` are tested beside it on the same
rows (`search.compare`). Per-date series go to RUN_DIR/final/, the checkpoint to
RUN_DIR/final/model.pt, and every figure to summary.json.
"""

from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import ray

from ranker import checkpoint
from ranker import device as devices
from ranker.backtest import backtest
from ranker.data import Dataset
from ranker.model import Ensemble, ModelConfig
from ranker.panel import Panel
from ranker.train import TrainConfig, fit, score
from search import store
from search.compare import compare_models
from search.compare import lines as compare_lines
from search.errors import Interrupted
from search.results import (
    Difference,
    MemberResult,
    ModelResult,
    RuleResult,
    SearchVsBase,
    StageChoice,
    Summary,
    Universes,
    mean_std,
)
from search.rundir import Best, RunDir, Series
from search.spec import SearchSpec

log = logging.getLogger("liquid_search")

COMPARED = ("mean_ic", "ic_sharpe", "ls_sharpe")  # test metrics compared over seeds
FINAL, BASE, BASELINE = "final", "base", "baseline"  # the roles (names of their series files)


@dataclass
class Trained:
    """One model trained by a task: its weights, validation metrics and scores."""

    state: dict[str, Any]
    config: dict[str, Any]
    val: dict[str, float]  # the restored best state's val metrics
    best_epoch: int
    history: list[dict[str, Any]]
    test_scores: np.ndarray
    seconds: float
    device: str
    log: list[str]
    gpu: dict[str, Any] = field(default_factory=dict)


@ray.remote
def _train_task(
    mc: dict[str, Any], tc: dict[str, Any], train: Panel, val: Panel, test: Panel,
    threads: int, gpu: float,
) -> Trained:  # fmt: skip
    """Train one model on the cluster (on the GPU it reserved, if any). The Panels come as Ray
    hands a task's object refs over, or as `store.PanelRef`s (a walk-forward fold's views)."""
    train, val, test = store.get(train), store.get(val), store.get(test)
    device = devices.setup(threads, gpu)
    lines: list[str] = []
    result = fit(ModelConfig.from_dict(mc), TrainConfig.from_dict(tc), train, val,
                 log=lines.append, device=device)  # fmt: skip
    return Trained(
        state={k: v.detach().cpu().clone() for k, v in result.model.state_dict().items()},
        config=result.config.to_dict(), val=result.metrics, best_epoch=result.best_epoch,
        history=result.history, test_scores=score(result.model, test), seconds=result.seconds,
        device=device, log=lines, gpu=devices.gpu_stats(device),
    )  # fmt: skip


def run_final(
    spec: SearchSpec,
    run: RunDir,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    refs: dict[str, Any],
    ds: Dataset,
    bests: list[Best],
    *,
    stop: threading.Event | None = None,
) -> Summary:
    """Train the final models, the base config's and the baseline's, test them, save; the
    summary. `stop`: a walk-forward fold's, set when the run is interrupted.

    Raises:
        Interrupted: `stop` was set while the models trained (nothing was saved).
    """
    tc = replace(train_cfg, epochs=spec.final.epochs)
    roles = {FINAL: (model_cfg, tc, "train")}
    base = (spec.model, replace(spec.train, epochs=spec.final.epochs))
    same_as_base = (base[0], base[1]) == (model_cfg, tc)
    if spec.final.compare_base and not same_as_base:
        roles[BASE] = (*base, "train")
    if "full_train" in refs:
        roles[BASELINE] = (model_cfg, tc, "full_train")
    trained = _train_all(spec, roles, refs, stop)
    members = trained[FINAL]
    if spec.final.compare_base and same_as_base:
        trained[BASE] = members  # the search selected its starting point
    parts = {role: _evaluate(role, ms, ds, tc.k, spec, run) for role, ms in trained.items()}
    ensemble = Ensemble.from_states(members[0].config, [m.state for m in members])
    final = replace(parts[FINAL], model=members[0].config, train=tc.to_dict())
    metrics = {"val": final.val, "test": final.test}
    checkpoint.save(run.model_path(), ensemble, ds.columns, train_config=tc.to_dict(),
                    universe=ds.universe.to_dict(), metrics=metrics,
                    extra={"seeds": _seeds(spec)})  # fmt: skip
    based = None
    if BASE in parts:
        based = replace(parts[BASE], model=base[0].to_dict(), train=base[1].to_dict(),
                        same_as_final=same_as_base)  # fmt: skip
    summary = Summary(
        run_dir=run.path,
        metric=spec.train.metric,
        stages=tuple(_choice(b) for b in bests),
        final=final,
        checkpoint=run.model_path(),
        data=ds.info,
        costs_model=spec.costs,
        baseline=parts.get(BASELINE),
        base=based,
        search_vs_base=compare_seeds(final, based, same_as_base) if based else None,
        universes=_universes(ensemble, ds, tc.k, spec, run),
        # After the final model's series are written: each comparison is paired with them.
        comparisons=compare_models(spec.final.compare, run, ds, spec.costs, spec.universe.mode),
    )
    for line in result_lines(summary):
        log.info(line)
    return summary


def _seeds(spec: SearchSpec) -> list[int]:
    return spec.final.member_seeds(spec.train.seed)


def _choice(b: Best) -> StageChoice:
    return StageChoice(stage=b.stage, metric=b.metric, value=b.value,
                       replicate_std=b.replicate_std, point=b.point, model=b.model,
                       train=b.train, trials=b.trials, errors=b.errors,
                       wall_seconds=b.wall_seconds, significance=b.significance)  # fmt: skip


def _train_all(
    spec: SearchSpec,
    roles: dict[str, tuple[ModelConfig, TrainConfig, str]],
    refs: dict[str, Any],
    stop: threading.Event | None = None,
) -> dict[str, list[Trained]]:
    """Every role's models, one Ray task per (role, seed), all side by side."""
    res = {"num_cpus": spec.resources.cpu, "num_gpus": spec.resources.gpu}
    args = (int(spec.resources.cpu), spec.resources.gpu)
    log.info(
        f"[final] training {len(roles)} model(s) x {spec.final.seeds} seed(s) for "
        f"{spec.final.epochs} epochs as Ray tasks: {', '.join(roles)}"
    )
    jobs = {
        (role, seed): _train_task.options(**res).remote(
            mc.to_dict(), replace(tc, seed=seed).to_dict(), refs[train], refs["val"],
            refs["test"], *args)
        for role, (mc, tc, train) in roles.items() for seed in _seeds(spec)
    }  # fmt: skip
    pending = list(jobs.values())
    while stop is not None and pending:  # a fold's final phase stops when the run does
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=0.5)
        if stop.is_set():
            for ref in pending:
                ray.cancel(ref, force=True)
            raise Interrupted("the final phase was interrupted; `liquid-search resume` reruns it")
    done = dict(zip(jobs, ray.get(list(jobs.values())), strict=True))
    return {role: [done[(role, seed)] for seed in _seeds(spec)] for role in roles}


def _evaluate(
    role: str, members: list[Trained], ds: Dataset, k: int, spec: SearchSpec, run: RunDir
) -> ModelResult:
    """One role's result: its ensemble's backtests on val and test (per-date series written to
    the run), costs, the oracle's test metrics, and each member's own."""
    for i, m in enumerate(members):
        for line in m.log:
            log.info(f"[{role} {i}]{line}")
    ensemble = Ensemble.from_states(members[0].config, [m.state for m in members])
    bt = backtest(ds.test, score(ensemble, ds.test), k, spec.costs)
    bv = backtest(ds.val, score(ensemble, ds.val), k, spec.costs)
    if role != BASE:  # the base config is summarized; only the models in use get series
        run.write_final_series(role, "test", Series.from_daily(bt.daily, ds.test))
        run.write_final_series(role, "val", Series.from_daily(bv.daily, ds.val))
    own = tuple(
        MemberResult(seed=int(seed), val=m.val, test=backtest(ds.test, m.test_scores, k).metrics,
                     best_epoch=m.best_epoch, seconds=m.seconds)
        for m, seed in zip(members, _seeds(spec), strict=True)
    )  # fmt: skip
    gpu = members[0].gpu
    return ModelResult(
        val=bv.metrics, test=bt.metrics, costs=bt.costs, members=own,
        seed_spread={key: mean_std([x.test[key] for x in own]) for key in COMPARED},
        best_epoch=members[0].best_epoch, seconds=sum(m.seconds for m in members),
        device=members[0].device, history=tuple(members[0].history), oracle_test=bt.oracle,
        gpu=gpu.get("gpu", ""), gpu_peak_mb=gpu.get("gpu_peak_mb", math.nan),
    )  # fmt: skip


def compare_seeds(final: ModelResult, base: ModelResult, same: bool = False) -> SearchVsBase:
    """Did the search pay? Per compared test metric, the difference of the seeds' means (final
    minus base) and its standard error (Welch); and one sentence on whether the mean IC
    difference is larger than the seed noise (more than two standard errors)."""
    by_metric = {key: Difference.of(final.seed_spread[key], base.seed_spread[key])
                 for key in COMPARED}  # fmt: skip
    c, n = by_metric["mean_ic"], final.seed_spread["mean_ic"].n
    d, se = c.diff, c.se
    if same:
        verdict = "the search selected its own starting point, so there is nothing to compare"
    elif n < 2 or not math.isfinite(se):
        verdict = "one seed each gives no noise to compare it with (set final.seeds >= 2)"
    elif abs(d) > 2 * se:
        word = "beat" if d > 0 else "did worse than"
        verdict = f"the search {word} its starting point by more than the seed noise ({abs(d) / se:.1f} standard errors)"
    else:
        verdict = f"the difference is within the seed noise ({abs(d) / se if se else 0:.1f} standard errors)"
    sentence = (
        f"Test mean IC over {n} seed(s): searched config {c.a:+.4f}, base config {c.b:+.4f}, "
        f"difference {d:+.4f} ± {se:.4f} (standard error): {verdict}."
    )
    return SearchVsBase(by_metric=by_metric, n=n, sentence=sentence)


def _universes(
    ensemble: Ensemble, ds: Dataset, k: int, spec: SearchSpec, run: RunDir
) -> Universes | None:
    """The final model on the test set as each universe rule picks it, what the rules keep over
    time, and one sentence: the point-in-time rule's numbers are the honest ones; the
    full-period rule's gap above them is lookahead."""
    if ds.test_by_rule is None or ds.universe_timeline is None:
        return None
    t = ds.universe_timeline
    run.write_universe_timeline(t)
    test_days = t["date"] >= ds.test.dates[0]
    by_rule = {}
    for rule, panel in ds.test_by_rule.items():
        bt = backtest(panel, score(ensemble, panel), k, spec.costs)
        if rule != spec.universe.mode:
            run.write_final_series("final", f"test_{rule}", Series.from_daily(bt.daily, panel))
        by_rule[rule] = RuleResult(
            test=bt.metrics, oracle_test=bt.oracle, test_rows=len(panel),
            names_per_test_day=float(t[f"{rule}_names"][test_days].mean()),
            turnover_per_day=float(t[f"{rule}_turnover"][1:].mean()) if len(t["date"]) > 1 else 0.0,
        )  # fmt: skip
    differ = t.get("differ", np.zeros(len(t["date"])))
    u = Universes(
        rule=spec.universe.mode, window=spec.universe.window, by_rule=by_rule,
        test_dates_differ=float((differ[test_days] > 0).mean()),
        names_differ_per_test_day=float(differ[test_days].mean()),
        dates_differ=float((differ > 0).mean()), sentence="",
    )  # fmt: skip
    return replace(u, sentence=_universe_sentence(u))


def _universe_sentence(u: Universes) -> str:
    """What the two universe rules say about the final model on the test set, in one sentence."""
    full, trail = u.by_rule.get("full_period"), u.by_rule.get("trailing")
    if full is None or trail is None:
        return ""
    if u.names_differ_per_test_day == 0:
        return (
            "The point-in-time and the full-period universe keep the same names on every test "
            f"date: no lookahead gap (test IC Sharpe {trail.test['ic_sharpe']:.2f})."
        )
    f, p = full.test, trail.test
    return (
        f"Point-in-time universe (trailing {u.window} days, tradeable on the day): test IC "
        f"Sharpe {p['ic_sharpe']:.2f}, mean IC {p['mean_ic']:+.4f}; the full-period rule (the "
        f"notebook's, which looks ahead) would claim {f['ic_sharpe']:.2f} and "
        f"{f['mean_ic']:+.4f}, a gap of {f['ic_sharpe'] - p['ic_sharpe']:+.2f} IC Sharpe. It "
        f"comes from the {u.names_differ_per_test_day:.0f} names a test day that only one "
        f"rule keeps ({u.test_dates_differ:.0%} of test dates differ): names liquid over the "
        f"whole file but not in their last {u.window} days, or the reverse; on those dates "
        f"nobody could have known the full-period set."
    )


def result_lines(summary: Summary) -> list[str]:
    """The final results in a few lines: the driver logs them as it ends, `status` prints
    them."""
    m = summary.metric
    f = summary.final
    n = len(f.members) or 1
    out = [
        f"[final] ensemble of {n} seed(s): val {m} {f.val[m]:.2f} | test IC sharpe "
        f"{f.test['ic_sharpe']:.2f} mean IC {f.test['mean_ic']:+.4f} L/S sharpe "
        f"{f.test['ls_sharpe']:.2f} (net of flat costs "
        f"{f.costs.get('ls_net_sharpe', math.nan):.2f}) on {f.device or 'cpu'}"
    ]
    if n > 1:
        sp = f.seed_spread
        out.append(f"[final] single seeds, test: IC sharpe {sp['ic_sharpe'].mean:.2f} ± "
                   f"{sp['ic_sharpe'].std:.2f}, mean IC {sp['mean_ic'].mean:+.4f} ± "
                   f"{sp['mean_ic'].std:.4f}")  # fmt: skip
    if summary.baseline is not None:
        b = summary.baseline.test
        out.append(
            f"[baseline] full-universe model on the liquid test set: IC sharpe "
            f"{b['ic_sharpe']:.2f} mean IC {b['mean_ic']:+.4f} L/S sharpe {b['ls_sharpe']:.2f}"
        )
    if summary.search_vs_base is not None:
        out.append(f"[search vs base] {summary.search_vs_base.sentence}")
    if summary.universes is not None:
        out.append(f"[universes] {summary.universes.sentence}")
    return out + compare_lines(summary.comparisons)

"""Live metrics of a search through Ray's own pipeline (`ray.util.metrics`).

The driver sets them all (a trial's gauges from each result the trial reports to Tune), so
they are exported by the driver's node: its metrics agent serves them on its metrics port
(`/metrics`, Prometheus format), and Prometheus finds the nodes through the service-discovery
file Ray writes into its temp dir (`prom_metrics_service_discovery.json`). Ray prefixes each name
with `ray_` and a counter's with `_total` too.

Every series carries `run` (the run directory's name), `stage` and `fold` (a walk-forward fold's
index, '' for a single split); a trial's also `trial_id` and
`point` (its grid point as `key=value ...`, with `replicate=r` when a stage has replicates).
"""

from __future__ import annotations

from collections.abc import Callable

from ray.util.metrics import Counter, Gauge

from search.trial_result import TrialResult

PREFIX = "liquid_search_"
TRIAL_TAGS = ("run", "stage", "fold", "trial_id", "point")
STAGE_TAGS = ("run", "stage", "fold")

# Gauge name -> (description, the value of a reported result it shows).
TRIAL_GAUGES: dict[str, tuple[str, Callable[[TrialResult], float]]] = {
    "val_ic_sharpe": ("validation IC Sharpe at this evaluation", lambda r: r.metrics["ic_sharpe"]),
    "val_mean_ic": ("validation mean daily IC at this evaluation", lambda r: r.metrics["mean_ic"]),
    "val_ls_sharpe": ("validation long/short Sharpe at this evaluation",
                      lambda r: r.metrics["ls_sharpe"]),
    "val_long_sharpe": ("validation long-book Sharpe at this evaluation",
                        lambda r: r.metrics["long_sharpe"]),
    "val_short_sharpe": ("validation short-book Sharpe at this evaluation",
                         lambda r: r.metrics["short_sharpe"]),
    "best_val_ic_sharpe": ("best validation IC Sharpe of the trial so far",
                           lambda r: r.best_metrics["ic_sharpe"]),
    "best_val_mean_ic": ("validation mean IC of the trial's best evaluation",
                         lambda r: r.best_metrics["mean_ic"]),
    "epoch": ("epochs the trial has completed", lambda r: r.epoch),
    "train_loss": ("mean training loss of the last epoch", lambda r: r.train_loss),
    "train_seconds": ("seconds the trial has trained", lambda r: r.train_seconds),
}  # fmt: skip
STAGE_COUNTERS = {
    "trials_finished": "trials of the stage that finished (each counted once)",
    "trials_failed": "trials of the stage that failed after their retries",
}
STAGE_GAUGES = {"stage_running": "1 while the stage runs, 0 once it has ended"}


def exported_names() -> set[str]:
    """Every name as Prometheus sees it (Ray's `ray_` prefix, a counter's `_total`)."""
    names = {f"ray_{PREFIX}{n}" for n in (*TRIAL_GAUGES, *STAGE_GAUGES)}
    return names | {f"ray_{PREFIX}{n}_total" for n in STAGE_COUNTERS}


class TrialMetrics:
    """The trial gauges of one stage, set from each result a trial reports.

    The driver's stage callback sets them (`Progress.on_trial_result`), not the trial: a node's
    agent keeps a gauge's value only while the process that set it re-exports it (it drops a
    value after two `metrics_report_interval_ms`, 20 s by default), so gauges set in a trial
    actor would vanish from `/metrics` soon after Tune ends the actor. The driver lives for the
    whole run, so every trial's last values stay exported until the run ends.
    """

    def __init__(self, run: str, stage: str, fold: int = 0) -> None:
        self.run, self.stage, self.fold = run, stage, str(fold or "")
        self.gauges = [
            (Gauge(PREFIX + name, description=desc, tag_keys=TRIAL_TAGS), value)
            for name, (desc, value) in TRIAL_GAUGES.items()
        ]

    def report(self, trial_id: str, point: str, result: TrialResult) -> None:
        tags = {"run": self.run, "stage": self.stage, "fold": self.fold, "trial_id": trial_id,
                "point": point}  # fmt: skip
        for gauge, value in self.gauges:
            gauge.set(float(value(result)), tags=tags)


class StageMetrics:
    """The driver's counters and state of one stage."""

    def __init__(self, run: str, stage: str, fold: int = 0) -> None:
        self.tags = {"run": run, "stage": stage, "fold": str(fold or "")}
        self.counters = {
            name: Counter(PREFIX + name, description=desc, tag_keys=STAGE_TAGS)
            for name, desc in STAGE_COUNTERS.items()
        }
        self.running = Gauge(
            PREFIX + "stage_running", description=STAGE_GAUGES["stage_running"], tag_keys=STAGE_TAGS
        )

    def finished(self) -> None:
        self.counters["trials_finished"].inc(1.0, tags=self.tags)

    def failed(self) -> None:
        self.counters["trials_failed"].inc(1.0, tags=self.tags)

    def set_running(self, running: bool) -> None:
        self.running.set(1.0 if running else 0.0, tags=self.tags)

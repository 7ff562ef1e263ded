"""Faults injected into a real search, for the interrupt, resume and node-death tests.

    python -m tests.faults FAULT_JSON liquid-search-args...

runs `liquid-search` (its real `main`) with one trial of one stage made to fail or hang at an
evaluation; `inject(monkeypatch, fault)` does the same for searches a test runs in-process. Production code knows nothing of it: this process replaces the trainable that
`search.stages` hands to Tune with `faulty_trial`, which wraps the real `run_trial` and, for the
trial the fault names, `fit`'s evaluation callback. The wrapper reaches the trial workers, on any
node, by value (cloudpickle), with the fault it closes over.

FAULT_JSON: {"stage": "architecture", "point": {...}, "epoch": 2, "mode": "once", "marker": PATH}
- once: the trial's first attempt raises after its checkpoint of that epoch;
- always: every attempt raises from that epoch on;
- hang: the first attempt writes {"epoch": ...} to `marker` (a path or URI) after its
  checkpoint of that epoch, then sleeps: a trial to interrupt or kill mid-stage;
- pause: as hang, but it goes on once the file `release` exists: a moment, chosen by the test,
  to take the storage away before the trial's next checkpoint.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from ray import cloudpickle

import search.stages
import search.trainable
from ranker import storage

FAULT: dict[str, Any] = {}


class InjectedFault(RuntimeError):
    """The failure a `once` or `always` fault raises."""


def hits(fault: dict[str, Any], config: dict[str, Any], epoch: int, resumed: bool) -> bool:
    """Whether the fault fires for this trial at this evaluation."""
    if not all(config.get(k) == v for k, v in fault.get("point", {}).items()):
        return False
    at = fault.get("epoch", 1)
    if fault.get("mode", "once") == "always":
        return epoch >= at  # every attempt fails, resumed or not
    return epoch == at and not resumed  # once, hang: the first attempt only


def faulty_trial(config: dict[str, Any], data: dict[str, Any], job: Any) -> None:
    """`search.trainable.run_trial`, with `FAULT` injected into the trial it names."""
    fault = FAULT
    if fault.get("stage", job.stage.name) != job.stage.name:
        return search.trainable.run_trial(config, data, job)
    real_fit = search.trainable.fit

    def fit(*args: Any, on_eval: Any, resume: Any = None, **kwargs: Any) -> Any:
        def hooked(ev: Any) -> None:
            on_eval(ev)  # the report and its checkpoint first
            if not hits(fault, config, ev.epoch, resume is not None):
                return
            if fault.get("mode") in ("hang", "pause"):
                storage.write_text(fault["marker"], json.dumps({"epoch": ev.epoch, **config}))
                if fault["mode"] == "pause":
                    while not os.path.exists(fault["release"]):
                        time.sleep(0.1)
                    return
                time.sleep(24 * 3600)
            raise InjectedFault(f"injected fault at epoch {ev.epoch} of trial {config}")

        return real_fit(*args, on_eval=hooked, resume=resume, **kwargs)

    # Trial actors are reused: the patch lasts for this trial only.
    search.trainable.fit = fit
    try:
        return search.trainable.run_trial(config, data, job)
    finally:
        search.trainable.fit = real_fit


# Tune records the trainable's name in the experiment, and a restored experiment (the resume,
# with the real trainable) must be given a trainable of the same name.
faulty_trial.__name__ = faulty_trial.__qualname__ = search.trainable.run_trial.__name__


def inject(monkeypatch: Any, fault: dict[str, Any]) -> None:
    """Inject `fault` into the searches this test process runs (the driver in-process)."""
    FAULT.clear()
    FAULT.update(fault)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    monkeypatch.setattr(search.stages, "run_trial", faulty_trial)


def main(argv: list[str]) -> int:
    from search.cli import main as cli_main

    FAULT.update(json.loads(argv[0]))
    assert FAULT.get("mode", "once") in ("once", "always", "hang", "pause"), FAULT
    assert FAULT.get("mode") not in ("hang", "pause") or FAULT.get("marker"), "it needs a marker"
    assert FAULT.get("mode") != "pause" or FAULT.get("release"), "a pause needs a release file"
    if __name__ != "__main__":  # (cloudpickle ships what __main__ defines by value anyway)
        # The workers cannot import this module (tests/ is not installed): ship it by value.
        cloudpickle.register_pickle_by_value(sys.modules[__name__])
    search.stages.run_trial = faulty_trial
    return cli_main(argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

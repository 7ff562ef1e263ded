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
- hang: the first attempt to reach that epoch (a fresh one, or one continued from a checkpoint,
  as successive halving continues a trial from its rung) writes {"epoch": ...} to `marker` (a
  path or URI) after its checkpoint of that epoch, then sleeps: a trial to interrupt or kill
  mid-stage;
- pause: as hang, but it goes on once the file `release` exists: a moment, chosen by the test,
  to take the storage away before the trial's next checkpoint.
With "before_report": true a hang or pause comes before that evaluation's report and checkpoint
instead: at a rung of successive halving the scheduler pauses or stops the trial as it reports,
so a hang after the report would never run.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
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
    mode = fault.get("mode", "once")
    if mode == "always":
        return epoch >= at  # every attempt fails, resumed or not
    if mode in ("hang", "pause"):  # the first attempt to get there (one resumed at a rung too)
        return epoch == at and not storage.exists(fault["marker"])
    return epoch == at and not resumed  # once: the first attempt only


def strike(fault: dict[str, Any], config: dict[str, Any], epoch: int) -> None:
    """The fault itself: raise, hang for good, or pause until its release file exists."""
    if fault.get("mode") in ("hang", "pause"):
        storage.write_text(fault["marker"], json.dumps({"epoch": epoch, **config}))
        if fault["mode"] == "hang":
            time.sleep(24 * 3600)
        while not os.path.exists(fault["release"]):
            time.sleep(0.1)
        return
    raise InjectedFault(f"injected fault at epoch {epoch} of trial {config}")


def faulty_trial(config: dict[str, Any], data: dict[str, Any], job: Any) -> None:
    """`search.trainable.run_trial`, with `FAULT` injected into the trial it names."""
    fault = FAULT
    if fault.get("stage", job.stage.name) != job.stage.name:
        return search.trainable.run_trial(config, data, job)
    real_fit = search.trainable.fit

    def fit(*args: Any, on_eval: Any, resume: Any = None, **kwargs: Any) -> Any:
        def hooked(ev: Any) -> None:
            before = fault.get("before_report", False)
            if not before:
                on_eval(ev)  # the report and its checkpoint first
            if hits(fault, config, ev.epoch, resume is not None):
                strike(fault, config, ev.epoch)
            if before:
                on_eval(ev)

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


@contextlib.contextmanager
def faulted_driver(
    fault: dict[str, Any],
    args: list[str],
    log: Path,
    env: dict[str, str],
    ready: Callable[[], bool] | None = None,
    timeout: float = 300.0,
) -> Iterator[subprocess.Popen]:
    """`liquid-search ARGS` in a process of its own with `fault` (a hang or a pause) injected,
    its output in `log`: yields the driver once the faulted trial has written its marker (and
    `ready()` holds), and kills the driver's whole process group at the end whatever happened."""
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, __file__, json.dumps(fault), *args], stdout=out,
                                stderr=out, env=env, start_new_session=True)  # fmt: skip
    try:
        deadline = time.time() + timeout
        while not (storage.exists(fault["marker"]) and (ready is None or ready())):
            assert proc.poll() is None and time.time() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        yield proc
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def interrupt(proc: subprocess.Popen, log: Path, settle: float = 0.0) -> str:
    """Ctrl-C to the driver `settle` seconds from now (Tune snapshots its trials every second);
    its output once it has ended."""
    time.sleep(settle)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    return log.read_text()


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

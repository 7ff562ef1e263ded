"""The errors of the search a user can act on. `liquid-search` prints each as one line (the
problem and the fix) and exits non-zero; library code raises them and never exits."""

from __future__ import annotations

from ranker import storage


class SearchError(Exception):
    """A problem the user can fix; the message names it and says how."""

    exit_code = 2

    def __reduce__(self) -> tuple[type, tuple[str]]:
        # Through Ray (a remote task or a Tune callback) an error travels pickled: keep the text.
        return (type(self), (str(self),))


class SpecError(SearchError):
    """A search spec with problems; `errors` lists every one of them."""

    def __init__(self, source: str, errors: list[str]) -> None:
        self.source, self.errors = source, list(errors)
        if len(self.errors) == 1:
            text = f"{source}: {self.errors[0]}"
        else:
            lines = "\n".join(f"  - {e}" for e in self.errors)
            text = f"{source}: {len(self.errors)} problems in the search spec:\n{lines}"
        super().__init__(text)

    def __reduce__(self) -> tuple[type, tuple[str, list[str]]]:  # type: ignore[override]
        return (SpecError, (self.source, self.errors))


class RunDirError(SearchError):
    """A run directory that is missing, not a run, or lacks what a command needs."""


class StageFailed(SearchError):
    """No trial of a stage produced an evaluation, so nothing can be selected from it."""


class ClusterError(SearchError):
    """The cluster cannot run the search as asked: connection, resources or storage."""


class RunBusy(SearchError):
    """Another driver, alive, holds the run directory's lease (`search.lease`)."""

    exit_code = 4


class StorageFault(SearchError):
    """The run's storage failed while the run was writing to it (out of space, read-only or
    gone, an object store that refuses or does not answer). What was written before stays
    readable; once the storage is back, `resume` continues the run to the same result."""

    exit_code = 3


class Interrupted(SearchError):
    """The run was stopped (Ctrl-C, SIGTERM) before it finished; `resume` continues it."""

    exit_code = 130


def storage_fault(e: BaseException, run_path: str, doing: str = "") -> StorageFault:
    """The one line of a storage failure mid-run: which storage, what was being written (the
    failing path, when the error names one), what happened, and the fix."""
    what, fix = storage.describe_fault(e)
    if fix == "check the storage":  # the error says too little: look at the storage itself
        what, fix = storage.diagnose(run_path) or (what, fix)
    path = getattr(e, "filename", None) or ""
    where = f" ({doing or 'writing'} {path})" if path else (f" ({doing})" if doing else "")
    return StorageFault(
        f"the run's storage failed at {run_path}{where}: {what}. Everything written before is "
        f"kept. Fix: {fix}, then `liquid-search resume {run_path}` continues the run to the "
        f"same result."
    )


def storage_error(error: BaseException | None) -> OSError | None:
    """The storage error behind a trial's error, if that is what ended it: an OSError (out of
    space, a read-only or vanished path, an object store that refused or did not answer) raised
    as the trial wrote its checkpoint, as Tune hands it back (wrapped in Ray's task error)."""
    found = None
    for _ in range(8):  # the innermost OSError: Ray's wrapper is one too, and says less
        if error is None:
            break
        if isinstance(error, OSError):
            found = error
        error = getattr(error, "cause", None) or error.__cause__
    return found

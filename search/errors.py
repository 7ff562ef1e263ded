"""The errors of the search a user can act on. `liquid-search` prints each as one line (the
problem and the fix) and exits non-zero; library code raises them and never exits."""

from __future__ import annotations


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


class Interrupted(SearchError):
    """The run was stopped (Ctrl-C, SIGTERM) before it finished; `resume` continues it."""

    exit_code = 130

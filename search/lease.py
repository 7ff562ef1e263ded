"""One driver per run directory: the lease in RUN_DIR/lease.json.

`run`, `resume` and `stage` take the lease before they write anything and give it back when
they stop; `status`, `report` and `api.open_run` read a run without it. The lease says who holds
it (host, pid, the command, when it started) and when its holder last said it was alive: a
heartbeat every `HEARTBEAT_S` seconds, from a thread of the driver.

It works wherever the run directory is (a local disk, NFS, an object store) with the one atomic
write of `ranker.storage` and no locking primitive: a driver writes its lease, waits
`SETTLE_S`, and reads it back; if another driver's lease is there instead, the other one wrote
last and holds it. Two drivers that start within the same instant both see one winner, since
both read after both wrote (object stores read their own writes at once).

A lease is taken over, with a line saying so, when its holder is dead: on the same host, when
its pid no longer runs; from another host, when it has not beaten for `STALE_S` seconds.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from ranker import storage
from search.errors import RunBusy
from search.rundir import LEASE_FILE, RunDir

log = logging.getLogger("liquid_search")

HEARTBEAT_S = 10.0  # how often the holder rewrites its heartbeat
STALE_S = 60.0  # a lease from another host with no heartbeat for this long is its holder's death
# The wait between writing a lease and reading it back: longer than the gap between two drivers'
# writes that both read "free" (ms), and than an object store's round trip.
SETTLE_S = {"local": 0.2, "store": 1.0}


@dataclass(frozen=True)
class LeaseRecord:
    """RUN_DIR/lease.json: who drives the run."""

    token: str  # this holder's own id
    host: str
    pid: int
    command: str  # run, resume or stage
    started: float  # epoch seconds
    heartbeat: float  # epoch seconds of the last sign of life

    def describe(self, now: float | None = None) -> str:
        age = (now or time.time()) - self.heartbeat
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        return (f"`liquid-search {self.command}` (pid {self.pid} on {self.host}, started {when}, "
                f"last heartbeat {age:.0f} s ago)")  # fmt: skip

    def is_mine(self) -> bool:
        return self.host == socket.gethostname() and self.pid == os.getpid()

    def dead(self, now: float | None = None) -> str:
        """Why the holder is taken for dead ('' while it looks alive): on its own host, its pid
        is gone; anywhere, no heartbeat for `STALE_S` (on its host too: the pid may have been
        reused)."""
        if self.host == socket.gethostname() and not _pid_alive(self.pid):
            return f"pid {self.pid} no longer runs on {self.host}"
        age = (now or time.time()) - self.heartbeat
        return f"no heartbeat for {age:.0f} s (more than {STALE_S:g})" if age > STALE_S else ""


def read(run: RunDir) -> LeaseRecord | None:
    """The lease of a run directory, or None when nobody holds it (or it cannot be read: a
    lease half-written by a full disk is nobody's)."""
    path = run.file(LEASE_FILE)
    try:
        if not storage.exists(path):
            return None
        return LeaseRecord(**json.loads(storage.read_text(path)))
    except (ValueError, TypeError, FileNotFoundError):
        return None


class Lease:
    """A held lease; `release()` (or the context manager's exit) gives it back."""

    def __init__(self, run: RunDir, record: LeaseRecord) -> None:
        self.run, self.record = run, record
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="liquid-search-lease",
                                        daemon=True)  # fmt: skip

    @classmethod
    def acquire(cls, run: RunDir, command: str) -> Lease:
        """Take the run directory's lease for `command`.

        Raises:
            RunBusy: another driver, alive, holds it (the message names it and how to follow
                the run).
        """
        held = read(run)
        if held is not None and not held.is_mine():
            why = held.dead()
            if not why:
                raise RunBusy(busy_line(run, held))
            log.info(f"{run.path}: taking over the lease of {held.describe()}: {why}")
        now = time.time()
        record = LeaseRecord(token=uuid.uuid4().hex, host=socket.gethostname(),
                             pid=os.getpid(), command=command, started=now, heartbeat=now)  # fmt: skip
        _write(run, record)
        time.sleep(SETTLE_S["store" if storage.is_uri(run.path) else "local"])
        back = read(run)
        if back is None or back.token != record.token:
            if back is None:
                raise RunBusy(f"{run.path}: the lease could not be read back after writing it. "
                              f"Fix: check the storage, then run the command again.")  # fmt: skip
            raise RunBusy(busy_line(run, back))
        lease = cls(run, record)
        lease._thread.start()
        return lease

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                held = read(self.run)
                if held is not None and held.token != self.record.token:
                    log.error(f"{self.run.path}: the lease was taken over by "
                              f"{held.describe()}; this driver no longer owns the run. Fix: "
                              f"stop one of them.")  # fmt: skip
                    return
                self.record = LeaseRecord(**{**asdict(self.record), "heartbeat": time.time()})
                _write(self.run, self.record)
            except OSError:  # the storage is failing: the driver's own writes will say so
                continue

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, if it is still this driver's."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        try:
            held = read(self.run)
            if held is not None and held.token == self.record.token:
                storage.delete(self.run.file(LEASE_FILE))
        except OSError:  # left behind: the next driver on this host sees the pid gone
            pass

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _write(run: RunDir, record: LeaseRecord) -> None:
    storage.write_text(run.file(LEASE_FILE), json.dumps(asdict(record)))


def busy_line(run: RunDir, held: LeaseRecord) -> str:
    """The one line that refuses a second driver."""
    return (
        f"{run.path} is being driven by {held.describe()}; one driver per run. Fix: follow it "
        f"with `liquid-search status {run.path} --watch`, or stop that driver first (a lease "
        f"whose driver died is taken over: at once on its host, after {STALE_S:g} s without a "
        f"heartbeat from another)."
    )


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True

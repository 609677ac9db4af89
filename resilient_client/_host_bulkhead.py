"""
``state: host``'s bulkhead: `HostBulkhead`, a `Bulkhead` whose cap holds for
the host, its slots leased in the endpoint's host file (`_host_file`).

Decision record: one row per process, counted in then checked
-------------------------------------------------------------
Bulkhead slots are leased per process rather than per call: each process
claims one row of the file (once, under the lock) and writes into it how
many calls it has in flight and when its lease ends (renewed on every
write). The host-wide count is the sum of the rows. When the sum passes
``max_concurrent``, rows whose holder is dead (`_host_dir.alive`: its pid is
gone, or holds another process, our own successor included) or whose lease
expired (`SLOT_LEASE`: for a holder in another pid namespace, which cannot
be checked from here) are cleared under the lock before refusing, so a
worker SIGKILLed mid-call leaks nothing. A row per call would need a free-slot search per call; a row
per process is found once and cached (`_Row`, one per process and file,
shared by its bulkheads on that file).

Acquiring is "count yourself in, then look": write our row with one more
call, then read every row; more than ``max_concurrent`` in all and we take
ours back and refuse. Of processes racing for the last slot, the last to
write sees every other's increment, so the cap is never passed; at worst
two racers both refuse. This takes no file lock: the lock is for claims,
reclaims, the breaker's changes and the budget.

When a reclaim cannot get the lock (`HostFileBusy`: a stopped holder), the
counts decide without it; when claiming our row cannot, the call is decided
in the process (fail open). When the file was deleted or
replaced (`HostFile.generation`), the process claims a row in the new file
and writes there what it holds. Degraded, it tries the file again every
``CHECK_EVERY`` and shares it again once usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time

from . import _host_file
from ._bulkhead import Bulkhead
from ._host_dir import alive, me, warn_once
from ._host_file import ROW, ROW_AT, HostFile, HostFileBusy, HostFileError
from ._policy import BulkheadPolicy

__all__ = ["SLOT_LEASE", "HostBulkhead"]

logger = logging.getLogger("resilient_client")
#: A bulkhead row's lease: longer than any call holds a slot (the default
#: total deadline is 10 s); only a pid reused by another process needs it.
SLOT_LEASE = 600.0


class _Row:
    """This process's row in one file: which, and how many calls it holds (all its bulkheads')."""

    __slots__ = ("at", "gen", "held", "index", "lock")

    def __init__(self, index: int, gen: int) -> None:
        self.index = index
        self.gen = gen  # the file's generation it was claimed in
        self.at = ROW_AT + index * ROW.size  # its offset in the file
        self.held = 0
        self.lock = threading.Lock()


#: This process's rows, by the file's real path; a forked child claims its own.
_rows: dict[str, _Row] = {}
_rows_lock = threading.Lock()


def _rows_after_fork() -> None:
    global _rows, _rows_lock
    _rows, _rows_lock = {}, threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_rows_after_fork)


class HostBulkhead(Bulkhead):
    """A `Bulkhead` whose cap is host-wide; slots are per-process leases in the file."""

    __slots__ = ("_file", "_held", "_key", "_retry_at", "_row", "_row_pid", "_shared")

    def __init__(self, name: str, policy: BulkheadPolicy, file: HostFile) -> None:
        super().__init__(name, policy)
        self._file = file
        self._key = os.path.realpath(file.path)
        self._held = 0  # slots this object holds in the file
        self._row: _Row | None = None  # our process's row, once claimed...
        self._row_pid = 0  # ...by this pid
        self._shared = True
        self._retry_at = 0.0

    @property
    def scope(self) -> str:
        """``host``, or ``process`` once the file is unusable."""
        return "host" if self._shared else "process"

    def try_acquire(self) -> bool:
        if self._shared or self._revived():
            try:
                ok = self._acquire_shared()
            except HostFileBusy:
                pass  # a stopped process holds the lock: decided in the process (fail open)
            except (HostFileError, OSError) as exc:
                self._degrade(exc)
            else:
                with self._lock:
                    if ok:
                        self._in_flight += 1
                        self._held += 1
                    else:
                        self.rejected += 1
                return ok
        return super().try_acquire()

    def release(self) -> None:
        with self._lock:
            from_file = self._held > 0
            if from_file:
                self._held -= 1
        if from_file and self._shared:
            try:
                self._put(-1)
            except (HostFileError, OSError) as exc:
                self._degrade(exc)  # our lease then lapses on its own
        super().release()

    def host_in_flight(self) -> int | None:
        """Calls in flight on the host (None when the file is unusable)."""
        try:
            return self._file.calls_held()
        except HostFileError:
            return None

    def _acquire_shared(self) -> bool:
        # Count ourselves in first, then look: of several processes racing
        # for the last slot, each sees the others' increments, so the cap
        # is never passed (at worst both refuse). No flock on this path:
        # one pwrite and one pread.
        self._put(1)
        try:
            total = self._file.calls_held()
            if total > self.max_concurrent:
                # A stopped process holding the lock: the counts decide, nothing reclaimed.
                with contextlib.suppress(HostFileBusy):
                    total -= self._reclaim()
        except BaseException:
            self._put(-1, check=False)
            raise
        if total > self.max_concurrent:
            self._put(-1)
            return False
        return True

    def _put(self, delta: int, *, check: bool = True) -> None:
        """Our process's row gains *delta* calls, written at once (its lease renewed)."""
        ident = me()
        fd = self._file.fd()  # first: it may reopen a replaced file (a new generation)
        row = self._row
        if row is None or self._row_pid != ident.pid or row.gen != self._file.generation:
            row = self._claim()
        with row.lock:  # our threads' writes of the row land in the order of their counts
            held = row.held = max(row.held + delta, 0)
            try:
                os.pwrite(fd, ROW.pack(ident.pid, held, time.monotonic() + SLOT_LEASE, ident.token, ident.ns),
                          row.at)
            except OSError as exc:
                if check:
                    row.held -= delta
                    raise HostFileError(f"{self._file.path}: {exc}") from exc

    def _claim(self) -> _Row:
        ident, gen = me(), self._file.generation
        with _rows_lock:
            row = _rows.get(self._key)
            if row is None or row.gen != gen:
                new = _Row(self._file.claim_row(ident, time.monotonic() + SLOT_LEASE), gen)
                if row is not None:  # the file was replaced: our calls in flight count in the new one
                    with row.lock:
                        new.held = row.held
                row = _rows[self._key] = new
        self._row, self._row_pid = row, ident.pid
        return row

    def _reclaim(self) -> int:
        """Clear the counts of dead processes and lapsed leases, under the lock; return the calls freed."""
        ident, now, freed = me(), time.monotonic(), 0
        with self._file.locked() as fd:
            rows = self._file.read_rows(fd)
            for i, r in enumerate(rows):
                held, owner, token, ns = int(r[1]), int(r[0]), int(r[3]), int(r[4])
                if not held or (owner, token, ns) == (ident.pid, ident.token, ident.ns):
                    continue
                dead = alive(owner, token, ns) is False
                if dead or r[2] < now:
                    # A dead holder's row is freed; a live one keeps its row (it alone
                    # writes it, and its next write puts back what it really holds).
                    self._file.write_row(fd, i, [0, 0, 0.0, 0, 0] if dead else [owner, 0, 0.0, token, ns],
                                         len(rows))
                    freed += held
                    logger.info("bulkhead %r: %d slot(s) of gone process %d reclaimed", self.name, held,
                                owner, extra={"endpoint": self.name, "pid": owner})
        return freed

    def _degrade(self, exc: Exception) -> None:
        warn_once(self._file.path, "host state for endpoint %r unusable (%s); using process-local state",
                  self._file.name, exc)
        self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        self._shared = False

    def _revived(self) -> bool:
        """Unusable: whether the file is usable again (tried at most every ``CHECK_EVERY``)."""
        if time.monotonic() < self._retry_at:
            return False
        self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        self._shared = self._file.revive()
        return self._shared

    def __repr__(self) -> str:
        return f"<HostBulkhead {self.name!r} {self._in_flight}/{self.max_concurrent} here>"

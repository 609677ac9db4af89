"""
``state: host``: an endpoint's breaker, retry budget and bulkhead shared by
every process on the host, in the endpoint's file (`_host_file`).

* `HostStore` is a `BreakerStore`: the breaker machine and its facade are
  unchanged; the store reads the record from the file and applies the
  machine's steps under the file lock.
* `HostBulkhead` is a `Bulkhead` whose slots are leases in the file: one row
  per process, ``(pid, calls held, expiry)``.
* `HostBudget` (`_host_budget`) is a `RetryBudget` whose buckets are in the file.

Each degrades on its own to the in-process behaviour of its base class when
the file cannot be used (`HostFileError`): one warning per file, never an
error out of a call.

Decision record: leases, and what a dead process leaves behind
--------------------------------------------------------------
The half-open trial is the machine's lease (holder, expiry); the store adds
the pid of the process that claimed it, and shows the machine a lease whose
pid is gone as lapsed (``trial_until = 0``), so a worker killed mid-trial
frees the trial at once, and the machine knows nothing of processes.

Bulkhead slots are leased per process rather than per call: a row holds how
many calls a pid has in flight and when its lease ends (refreshed on every
acquire and release). The host-wide count is the sum of the rows. When the
sum reaches ``max_concurrent``, rows whose pid is gone (``kill(pid, 0)``) or
whose lease expired (`SLOT_LEASE`, for a pid reused by an unrelated
process) are cleared before refusing, so a worker SIGKILLed mid-call leaks
nothing. A row per call would need a free-slot search per call; a row per
process is found once and cached.

Decision record: the cost of a call
-----------------------------------
A kernel lock costs about 1-2 µs here, a ``pread``/``pwrite`` under 1 µs; a
happy call takes one lock (the bulkhead's acquire) and five system calls:

* breaker admit: one ``pread`` without the lock, checked by its crc32; when
  the bytes are those seen last, the decoded record is reused;
* breaker success: decided on the record last seen, no read (a success on a
  healthy breaker changes nothing; a change is made under the lock);
* bulkhead acquire: flock, one ``pread`` (header and rows), one ``pwrite``
  (our row), unlock;
* bulkhead release: one ``pread`` and one ``pwrite`` of our own row under
  the thread lock only: while a process holds slots, only it writes its row
  (others clear a row only once its pid is gone or its lease lapsed);
* budget first try: counted in the process and added to the file under the
  next bulkhead lock at least ``_FLUSH_EVERY`` (50 ms) later (the budget is a
  rate over 10 s, so 50 ms late costs nothing); a retry (`try_spend`)
  always adds them first.

benchmarks/bench_host_state.py measures it beside ``memory``.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
import zlib
from typing import TypeVar

from ._breaker_machine import CLOSED, CLOSED_RECORD, HALF_OPEN, OPEN, BreakerState, Record
from ._breaker_store import Changes, MemoryStore, Step
from ._bulkhead import Bulkhead
from ._clock import SYSTEM_CLOCK, Clock
from ._host_budget import HostBudget
from ._host_dir import pid_alive, warn_once
from ._host_file import (
    MAX_PROCESSES,
    POLICY_AT,
    BreakerFields,
    HostFile,
    HostFileError,
    breaker_fields,
    current_pid,
)
from ._policy import BulkheadPolicy

__all__ = ["SLOT_LEASE", "HostBudget", "HostBulkhead", "HostStore", "check_policy"]  # HostBudget: re-exported

R = TypeVar("R")
logger = logging.getLogger("resilient_client")
_STATES = (CLOSED, OPEN, HALF_OPEN)
_INDEX = {s: i for i, s in enumerate(_STATES)}
#: A bulkhead row's lease: longer than any call holds a slot (the default
#: total deadline is 10 s); only a pid reused by another process needs it.
SLOT_LEASE = 600.0


def check_policy(file: HostFile, policies: object) -> bool:
    """
    Record *policies* (breaker, budget, bulkhead) in the file if it has none,
    else compare: a process whose policy for the name differs from the first
    one's is reported once. Each process applies its own thresholds to the
    shared state, so namesakes should agree. Returns whether they do.
    """
    ours = zlib.crc32(repr(policies).encode()) or 1  # 0 means "none recorded"
    try:
        with file.locked() as fd:
            (recorded,) = struct.unpack("<I", file.read(fd, POLICY_AT, 4))
            if recorded == 0:
                file.write(fd, POLICY_AT, struct.pack("<I", ours))
    except HostFileError:
        return True  # the pieces find out, and say so, on their first call
    if recorded in (0, ours):
        return True
    warn_once(file.path + ":policy", "endpoint %r: this process's breaker, budget or bulkhead policy "
              "differs from the one the first process using %s recorded; each applies its own "
              "thresholds to the shared state", file.name, file.path)
    return False


def _degraded(file: HostFile, exc: Exception) -> None:
    warn_once(file.path, "host state for endpoint %r unusable (%s); using process-local state",
              file.name, exc)


class HostStore:
    """A `BreakerStore` in the endpoint's host file; ``now`` is the clock's (``time.monotonic()``)."""

    exclusive = False
    local_time = False

    def __init__(self, file: HostFile, clock: Clock = SYSTEM_CLOCK) -> None:
        self.file = file
        # The session's clock: the system one in production (CLOCK_MONOTONIC,
        # one time base for the host), a fake one under the testing kit.
        self._clock = clock
        self._now = clock.monotonic
        self._lock = threading.Lock()
        self._local: MemoryStore | None = None  # the truth once the file is unusable
        self._raw: BreakerFields | None = None  # the fields last decoded...
        self._rec = CLOSED_RECORD  # ...and their record (the last one seen)
        self._bytes = b""  # the bytes of that record, when they alone decide it
        self._reported: BreakerState = CLOSED

    # -- the BreakerStore protocol ------------------------------------------------

    def read(self) -> tuple[Record, float, Changes]:
        if self._local is None:
            try:
                rec = self._read_shared()
                return rec, self._now(), self._observe(rec.state)
            except HostFileError as exc:
                self._degrade(exc)
        rec, now, _ = self._local_store().read()
        return rec, now, self._observe(rec.state)

    def apply(self, step: Step[R], *, fresh: bool = True) -> tuple[Record, R, float, Changes]:
        if self._local is None:
            try:
                return self._apply_shared(step, fresh)
            except HostFileError as exc:
                self._degrade(exc)
        rec, result, now, _ = self._local_store().apply(step)
        return rec, result, now, self._observe(rec.state)

    def reachable(self) -> bool | None:
        return self._local is None

    # -- the file -----------------------------------------------------------------------

    def _apply_shared(self, step: Step[R], fresh: bool) -> tuple[Record, R, float, Changes]:
        now = self._now()
        # A step that changes nothing needs no lock: on a fresh read (admit),
        # or on the record last seen (an outcome: best effort, as with Redis).
        rec = self._read_shared() if fresh or self._raw is None else self._rec
        new, result = step(rec, now)
        if new is rec:
            return new, result, now, self._observe(new.state)
        file = self.file
        with file.locked() as fd:
            fields = file.read_breaker(fd)
            rec = self._decode(fields)
            new, result = step(rec, now)
            if new is not rec:
                fields = self._encode(new, rec, fields)
                file.write_breaker(fd, fields)
                # What we wrote is the record last seen: the outcome of our
                # own trial is decided on it (fresh=False), not on the old one.
                self._raw, self._rec, self._bytes = fields, new, b""
        return new, result, now, self._observe(new.state)

    def _read_shared(self) -> Record:
        raw = self.file.read_breaker_unlocked()
        if raw == self._bytes:
            return self._rec  # the same bytes, no lease to check: the same record
        fields = breaker_fields(raw)
        if fields is None:  # torn by a concurrent write: read it under the lock
            with self.file.locked() as fd:
                fields = self.file.read_breaker(fd)
            raw = b""  # these fields are not those bytes'
        rec = self._decode(fields)
        # A lease's holder may die at any time: such a record is decoded anew.
        self._bytes = raw if fields[5] == 0 else b""
        return rec

    def _decode(self, fields: BreakerFields) -> Record:
        state, forced, failures, opened_at, trial_until, pid, holder = fields
        trial = holder.rstrip(b"\0").decode("utf-8", "replace")
        if trial and pid != current_pid() and not pid_alive(pid):
            trial_until = 0.0  # its holder is dead: the lease is lapsed
        # An unknown state byte reads as open: damage must not close a breaker.
        rec = Record(_STATES[state] if state < 3 else OPEN, bool(forced), opened_at, failures, trial,
                     trial_until)
        self._raw, self._rec = fields, rec
        return rec

    @staticmethod
    def _encode(new: Record, old: Record, fields: BreakerFields) -> BreakerFields:
        # The lease's pid is whoever claimed it: the holder string may come
        # from a parent process (a breaker built before a fork).
        pid = fields[5] if new.trial == old.trial else (current_pid() if new.trial else 0)
        return (_INDEX[new.state], int(new.forced), new.failures, new.opened_at, new.trial_until,
                pid, new.trial.encode()[:48].ljust(48, b"\0"))

    # -- degraded -------------------------------------------------------------------------

    def _degrade(self, exc: HostFileError) -> None:
        _degraded(self.file, exc)
        with self._lock:
            if self._local is None:
                # Carry on from the last record seen, on the same clock.
                self._local = MemoryStore(self._clock, self._rec)

    def _local_store(self) -> MemoryStore:
        assert self._local is not None  # set by _degrade, never unset
        return self._local

    def _observe(self, state: BreakerState) -> Changes:
        # Each process reports a change when it notices it (as with Redis).
        if state is self._reported:
            return ()
        with self._lock:
            old, self._reported = self._reported, state
        return ((old, state),) if old is not state else ()

    def __repr__(self) -> str:
        return f"<HostStore {self.file.path} {self._rec}>"


class HostBulkhead(Bulkhead):
    """A `Bulkhead` whose cap is host-wide; slots are per-process leases in the file."""

    __slots__ = ("_budget", "_file", "_held", "_row", "_shared")

    def __init__(self, name: str, policy: BulkheadPolicy, file: HostFile, budget: HostBudget | None) -> None:
        super().__init__(name, policy)
        self._file = file
        self._budget = budget  # its pending first tries ride on our lock
        self._held = 0  # slots this process holds in the file
        self._row = -1  # our row in the file, once found
        self._shared = True

    def try_acquire(self) -> bool:
        if self._shared:
            try:
                ok = self._acquire_shared()
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
        if from_file and self._shared and self._row >= 0:
            try:
                self._file.release_row(self._row, current_pid(), time.monotonic() + SLOT_LEASE)
            except HostFileError as exc:
                self._degrade(exc)  # our lease then lapses on its own
        super().release()

    def host_in_flight(self) -> int | None:
        """Calls in flight on the host (None when the file is unusable)."""
        try:
            with self._file.locked() as fd:
                return sum(int(r[1]) for r in self._file.read_rows(fd))
        except HostFileError:
            return None

    def _acquire_shared(self) -> bool:
        file, pid, now = self._file, current_pid(), time.monotonic()
        fd = file.lock(check=False)
        try:
            rows = file.read_rows(fd)  # first: it checks the header before anything is written
            budget = self._budget
            if budget is not None and budget.due(now):
                budget.flush(fd)
            i = self._row
            if not (0 <= i < len(rows) and rows[i][0] == pid):
                i = self._find_row(rows, pid)
            total = sum([r[1] for r in rows])
            if total >= self.max_concurrent:
                total -= self._reclaim(fd, rows, pid, now)
                if total >= self.max_concurrent:
                    return False
            if i >= MAX_PROCESSES:
                raise HostFileError(f"more than {MAX_PROCESSES} processes hold slots")
            mine = rows[i][1] if i < len(rows) and rows[i][0] == pid else 0
            file.write_row(fd, i, [pid, mine + 1, now + SLOT_LEASE], len(rows))
            self._row = i
            return True
        finally:
            file.unlock(fd)

    @staticmethod
    def _find_row(rows: list[list[int | float]], pid: int) -> int:
        """Our row, else a row holding nothing, else a new one at the end."""
        for i, r in enumerate(rows):
            if r[0] == pid:
                return i
        for i, r in enumerate(rows):
            if r[1] == 0:
                return i
        return len(rows)

    def _reclaim(self, fd: int, rows: list[list[int | float]], pid: int, now: float) -> int:
        """Clear the rows of dead processes and lapsed leases; return the slots freed."""
        freed = 0
        for i, r in enumerate(rows):
            held, owner = int(r[1]), int(r[0])
            if held and owner != pid and (r[2] < now or not pid_alive(owner)):
                self._file.write_row(fd, i, [owner, 0, 0.0], len(rows))
                r[1] = 0
                freed += held
                logger.info("bulkhead %r: %d slot(s) of gone process %d reclaimed", self.name, held,
                            owner, extra={"endpoint": self.name, "pid": owner})
        return freed

    def _degrade(self, exc: Exception) -> None:
        _degraded(self._file, exc)
        self._shared = False

    def __repr__(self) -> str:
        return f"<HostBulkhead {self.name!r} {self._in_flight}/{self.max_concurrent} here>"

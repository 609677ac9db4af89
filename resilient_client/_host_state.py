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

import hashlib
import logging
import threading
import time
import zlib
from typing import TypeVar

from ._breaker_machine import CLOSED, CLOSED_RECORD, HALF_OPEN, OPEN, BreakerState, Record
from ._breaker_store import Changes, MemoryStore, Step
from ._bulkhead import Bulkhead
from ._clock import SYSTEM_CLOCK
from ._host_budget import HostBudget
from . import _host_file
from ._host_dir import Identity, alive, me, warn_once
from ._host_file import (
    MAX_PROCESSES,
    META,
    META_AT,
    BreakerFields,
    HostFile,
    HostFileBusy,
    HostFileError,
    breaker_fields,
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


def check_policy(file: HostFile, policies: object, match: str = "") -> bool:
    """
    Record *policies* (breaker, budget, bulkhead) and the endpoint's *match*
    in the file, with this process as their recorder, unless a live process
    recorded others: then report each difference once (each process applies
    its own thresholds to the shared state, so namesakes should agree, and
    another service's namesake shares our breaker). A record whose recorder
    is gone follows the newest process (a redeploy with new thresholds warns
    only while old workers live). Rows of dead processes are reclaimed here
    too. Returns whether all agree.
    """
    ours = zlib.crc32(repr(policies).encode()) or 1  # 0 means "none recorded"
    digest = hashlib.blake2b(match.encode(), digest_size=16).digest()
    ident = me()
    try:
        with file.locked() as fd:
            boot, recorded_match, recorded, pid, ns, token = META.unpack(file.read(fd, META_AT, META.size))
            if recorded == 0 or (recorded, recorded_match) == (ours, digest) or alive(pid, token, ns) is False:
                recorded, recorded_match = ours, digest
                file.write(fd, META_AT, META.pack(boot, digest, ours, ident.pid, ident.ns, ident.token))
            file.reclaim_rows(fd, file.read_rows(fd), time.monotonic())
    except HostFileError:
        return True  # the pieces find out, and say so, on their first call
    if recorded_match != digest:
        warn_once(file.path + ":match", "endpoint %r: another live process using %s gave this name to "
                  "another match (here %r): both share one breaker, budget and bulkhead; give one of them "
                  "another name or state_dir", file.name, file.path, match)
    if recorded != ours:
        warn_once(file.path + ":policy", "endpoint %r: this process's breaker, budget or bulkhead policy "
                  "differs from the one a live process using %s recorded; each applies its own "
                  "thresholds to the shared state", file.name, file.path)
    return (recorded, recorded_match) == (ours, digest)


def _degraded(file: HostFile, exc: Exception) -> None:
    warn_once(file.path, "host state for endpoint %r unusable (%s); using process-local state",
              file.name, exc)


class HostStore:
    """A `BreakerStore` in the endpoint's host file; ``now`` is ``time.monotonic()``."""

    exclusive = False
    local_time = False

    def __init__(self, file: HostFile) -> None:
        self.file = file
        self._lock = threading.Lock()
        self._local: MemoryStore | None = None  # the truth while the file is unusable
        self._retry_at = 0.0  # when to try the file again, once unusable
        self._raw: BreakerFields | None = None  # the fields last decoded...
        self._rec = CLOSED_RECORD  # ...and their record (the last one seen)
        self._bytes = b""  # the bytes of that record, when they alone decide it
        self._reported: BreakerState = CLOSED

    # -- the BreakerStore protocol ------------------------------------------------

    def read(self) -> tuple[Record, float, Changes]:
        if self._local is None or self._revived():
            try:
                rec = self._read_shared()
                return rec, time.monotonic(), self._observe(rec.state)
            except HostFileError as exc:
                self._degrade(exc)
        rec, now, _ = self._local_store().read()
        return rec, now, self._observe(rec.state)

    def apply(self, step: Step[R], *, fresh: bool = True) -> tuple[Record, R, float, Changes]:
        if self._local is None or self._revived():
            try:
                return self._apply_shared(step, fresh)
            except HostFileBusy:
                # The lock is held by a stopped process: this call decides on
                # the record last seen and writes nothing (fail open).
                now = time.monotonic()
                new, result = step(self._rec, now)
                return new, result, now, self._observe(new.state)
            except HostFileError as exc:
                self._degrade(exc)
        rec, result, now, _ = self._local_store().apply(step)
        return rec, result, now, self._observe(rec.state)

    def reachable(self) -> bool | None:
        return self._local is None

    # -- the file -----------------------------------------------------------------------

    def _apply_shared(self, step: Step[R], fresh: bool) -> tuple[Record, R, float, Changes]:
        now = time.monotonic()
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
            try:
                with self.file.locked() as fd:
                    fields = self.file.read_breaker(fd)
            except HostFileBusy:
                return self._rec
            raw = b""  # these fields are not those bytes'
        rec = self._decode(fields)
        if fields[3] > time.monotonic() + 1.0:
            # Opened on another CLOCK_MONOTONIC, ahead of ours (a time
            # namespace): it would stay open here for the difference. Written
            # back as opened now, so that our reset_timeout runs from here.
            self.apply(lambda r, now: (r._replace(opened_at=now) if r.opened_at > now + 1.0 else r, None),
                       fresh=False)
            return self._rec
        # A lease's holder may die at any time: such a record is decoded anew.
        self._bytes = raw if fields[5] == 0 else b""
        return rec

    def _decode(self, fields: BreakerFields) -> Record:
        state, forced, failures, opened_at, trial_until, pid, ns, token, holder = fields
        trial = holder.rstrip(b"\0").decode("utf-8", "replace")
        if trial and alive(pid, token, ns) is False:
            trial_until = 0.0  # its holder is dead: the lease is lapsed
        # An unknown state byte reads as open: damage must not close a breaker.
        rec = Record(_STATES[state] if state < 3 else OPEN, bool(forced), opened_at, failures, trial,
                     trial_until)
        self._raw, self._rec = fields, rec
        return rec

    @staticmethod
    def _encode(new: Record, old: Record, fields: BreakerFields) -> BreakerFields:
        # The lease's holder is whoever claimed it: the holder string may come
        # from a parent process (a breaker built before a fork).
        if new.trial == old.trial:
            pid, ns, token = fields[5], fields[6], fields[7]
        elif new.trial:
            pid, token, ns = me()
        else:
            pid = ns = token = 0
        return (_INDEX[new.state], int(new.forced), new.failures, new.opened_at, new.trial_until,
                pid, ns, token, new.trial.encode()[:40].ljust(40, b"\0"))

    # -- degraded -------------------------------------------------------------------------

    def _degrade(self, exc: HostFileError) -> None:
        _degraded(self.file, exc)
        with self._lock:
            self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
            if self._local is None:
                # Carry on from the last record seen, on the same clock.
                self._local = MemoryStore(SYSTEM_CLOCK, self._rec)

    def _revived(self) -> bool:
        """Unusable: whether the file is usable again (tried at most every ``CHECK_EVERY``)."""
        if time.monotonic() < self._retry_at:
            return False
        with self._lock:
            self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        if not self.file.revive():
            return False
        self._local, self._bytes = None, b""
        return True

    def _local_store(self) -> MemoryStore:
        assert self._local is not None  # set by _degrade
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

    __slots__ = ("_budget", "_file", "_gen", "_held", "_retry_at", "_row", "_shared", "_stale")

    def __init__(self, name: str, policy: BulkheadPolicy, file: HostFile, budget: HostBudget | None) -> None:
        super().__init__(name, policy)
        self._file = file
        self._budget = budget  # its pending first tries ride on our lock
        self._held = 0  # slots this process holds in the file
        self._stale = 0  # slots held in a file since deleted or replaced
        self._gen = file.generation
        self._row = -1  # our row in the file, once found
        self._shared = True
        self._retry_at = 0.0

    def try_acquire(self) -> bool:
        if self._shared or self._revived():
            try:
                ok = self._acquire_shared()
            except HostFileBusy:
                pass  # decided in the process for this call (fail open)
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
            from_file = self._held > 0 and not self._stale
            if self._stale:
                self._stale -= 1  # its file is gone: nothing to write
            elif from_file:
                self._held -= 1
        if from_file and self._shared and self._row >= 0:
            try:
                self._file.release_row(self._row, time.monotonic() + SLOT_LEASE)
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
        file, ident, now = self._file, me(), time.monotonic()
        fd = file.lock(check=False)
        try:
            rows = file.read_rows(fd)  # first: it checks the header before anything is written
            if file.generation != self._gen:
                with self._lock:  # the file was replaced: slots held in the old one stay there
                    self._stale, self._held, self._row = self._stale + self._held, 0, -1
                    self._gen = file.generation
            budget = self._budget
            if budget is not None and budget.due(now):
                budget.flush(fd)
            i = self._row
            if not (0 <= i < len(rows) and _mine(rows[i], ident)):
                i = self._find_row(rows, ident)
            total = sum([r[1] for r in rows])
            if total >= self.max_concurrent or i >= MAX_PROCESSES:
                total -= self._reclaim(fd, rows, now)
                if i >= MAX_PROCESSES:  # the table was full: a dead process's row may be free now
                    i = self._find_row(rows, ident)
                if total >= self.max_concurrent:
                    return False
            if i >= MAX_PROCESSES:
                raise HostFileError(f"more than {MAX_PROCESSES} live processes hold slots")
            mine = rows[i][1] if i < len(rows) and _mine(rows[i], ident) else 0
            file.write_row(fd, i, [ident.pid, mine + 1, now + SLOT_LEASE, ident.token, ident.ns], len(rows))
            self._row = i
            return True
        finally:
            file.unlock(fd)

    @staticmethod
    def _find_row(rows: list[list[int | float]], ident: Identity) -> int:
        """Our row, else a row holding nothing, else a new one at the end."""
        for i, r in enumerate(rows):
            if _mine(r, ident):
                return i
        for i, r in enumerate(rows):
            if r[1] == 0:
                return i
        return len(rows)

    def _reclaim(self, fd: int, rows: list[list[int | float]], now: float) -> int:
        """Clear the rows of dead processes and lapsed leases; return the slots freed."""
        freed = self._file.reclaim_rows(fd, rows, now)
        for owner, held in freed:
            logger.info("bulkhead %r: %d slot(s) of gone process %d reclaimed", self.name, held,
                        owner, extra={"endpoint": self.name, "pid": owner})
        return sum(held for _, held in freed)

    def _degrade(self, exc: Exception) -> None:
        _degraded(self._file, exc)
        self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        self._shared = False

    def _revived(self) -> bool:
        if time.monotonic() < self._retry_at:
            return False
        self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        self._shared = self._file.revive()
        return self._shared

    def __repr__(self) -> str:
        return f"<HostBulkhead {self.name!r} {self._in_flight}/{self.max_concurrent} here>"


def _mine(row: list[int | float], ident: Identity) -> bool:
    return row[0] == ident.pid and row[3] == ident.token and row[4] == ident.ns

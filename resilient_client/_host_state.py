"""
``state: host``: an endpoint's breaker, retry budget and bulkhead shared by
every process on the host, in the endpoint's file (`_host_file`).

* `HostStore` is a `BreakerStore`: the breaker machine and its facade are
  unchanged; the store reads the record from the file and applies the
  machine's steps under the file lock.
* `HostBulkhead` (`_host_bulkhead`) is a `Bulkhead` whose slots are leases
  in the file: one row per process, ``(pid, calls held, expiry)``.
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

Bulkhead slots: see `_host_bulkhead`.

Decision record: the cost of a call
-----------------------------------
A kernel lock costs about 1 µs here, a ``pread``/``pwrite`` 0.5-0.8 µs; a
happy call takes no file lock and four system calls:

* breaker admit: one ``pread`` without the lock; when the bytes are those of
  the closed record seen last, nothing is decoded (`admits_closed`); the
  session's early refusal uses the record last seen, reading nothing
  (`closed_seen`: the call's own admit reads the file anyway);
* breaker success: decided on the record last seen, no read (a success on a
  healthy breaker changes nothing; a change is made under the lock);
* bulkhead acquire: one ``pwrite`` (our row) and one ``pread`` (header and
  rows); release: one ``pwrite`` (our row);
* budget first try: counted in the process and added to the file under the
  lock at most every ``_FLUSH_EVERY`` (50 ms) (the budget is a rate over
  10 s, so 50 ms late costs nothing); a retry (`try_spend`) always adds
  them first.

benchmarks/bench_host_state.py measures it beside ``memory``.
"""

from __future__ import annotations

import logging
import struct
import threading
import zlib
from typing import TypeVar

from ._breaker_machine import CLOSED, CLOSED_RECORD, HALF_OPEN, OPEN, BreakerState, Record
from ._breaker_store import Changes, MemoryStore, Step
from ._clock import SYSTEM_CLOCK, Clock
from ._host_budget import HostBudget
from ._host_bulkhead import SLOT_LEASE, HostBulkhead
from ._host_dir import pid_alive, warn_once
from ._host_file import (
    POLICY_AT,
    BreakerFields,
    HostFile,
    HostFileError,
    breaker_fields,
    current_pid,
)

# HostBudget, HostBulkhead, SLOT_LEASE: re-exported
__all__ = ["SLOT_LEASE", "HostBudget", "HostBulkhead", "HostStore", "check_policy", "policy_checksum",
           "recorded_policy"]

R = TypeVar("R")
logger = logging.getLogger("resilient_client")
_STATES = (CLOSED, OPEN, HALF_OPEN)
_INDEX = {s: i for i, s in enumerate(_STATES)}


def policy_checksum(policies: object) -> int:
    """What the file records of a process's (breaker, budget, bulkhead) policies: never 0 ("none")."""
    return zlib.crc32(repr(policies).encode()) or 1


def recorded_policy(raw: bytes) -> int:
    """The checksum recorded in a file's bytes (0: none yet)."""
    (recorded,) = struct.unpack_from("<I", raw, POLICY_AT)
    return int(recorded)


def check_policy(file: HostFile, policies: object) -> bool:
    """
    Record *policies* (breaker, budget, bulkhead) in the file if it has none,
    else compare: a process whose policy for the name differs from the first
    one's is reported once (``resilient-client check`` reports it too:
    ``host-policy-mismatch``). Each process applies its own thresholds to
    the shared state, so namesakes should agree. Returns whether they do.
    """
    ours = policy_checksum(policies)
    try:
        with file.locked() as fd:
            recorded = recorded_policy(file.read(fd, 0, POLICY_AT + 4))
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
    scope = "host"

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
        # The bytes of a record when they alone decide it, and that record:
        # one attribute, so threads never pair one's bytes with another's record.
        self._seen: tuple[bytes, Record] = (b"", CLOSED_RECORD)
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

    # -- fast paths (the facade's, for a closed breaker) ------------------------------------

    def admits_closed(self) -> bool:
        """
        Whether the record is the closed one last seen and reported, so an
        admit would change nothing: one ``pread`` and a bytes compare.
        """
        seen, rec = self._seen
        if self._local is not None or self._reported is not CLOSED or rec.state is not CLOSED:
            return False
        try:
            return self.file.read_breaker_unlocked() == seen
        except HostFileError:
            return False  # the full path degrades, and says so

    def closed_seen(self) -> bool:
        """Whether the record last seen (no read) is closed."""
        return self._local is None and self._seen[1].state is CLOSED and self._reported is CLOSED

    def healthy_seen(self) -> bool:
        """Whether the record last seen is closed without failures: a success changes nothing."""
        rec = self._rec
        return self._local is None and rec.state is CLOSED and rec.failures == 0 and not rec.forced

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
                self._raw, self._rec, self._seen = fields, new, (b"", new)
        return new, result, now, self._observe(new.state)

    def _read_shared(self) -> Record:
        raw = self.file.read_breaker_unlocked()
        seen, rec = self._seen
        if raw == seen:
            return rec  # the same bytes, no lease to check: the same record
        fields = breaker_fields(raw)
        if fields is None:  # torn by a concurrent write: read it under the lock
            with self.file.locked() as fd:
                fields = self.file.read_breaker(fd)
            raw = b""  # these fields are not those bytes'
        rec = self._decode(fields)
        # A lease's holder may die at any time: such a record is decoded anew.
        self._seen = (raw if fields[5] == 0 else b"", rec)
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

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
the identity of the process that claimed it (pid, start time, pid
namespace: `_host_dir.alive`), and shows the machine a lease whose holder is
dead as lapsed (``trial_until = 0``), so a worker killed mid-trial frees the
trial at once, and the machine knows nothing of processes. A holder in
another pid namespace cannot be checked: its lease runs to its expiry.

Decision record: what the file cannot be trusted for
----------------------------------------------------
* The lock: a holder stopped with it (SIGSTOP, ``docker pause``) would stall
  every process. A call waits for it at most ``LOCK_WAIT`` (250 ms), less
  once ``/proc/locks`` shows its holder stopped, then decides in its
  process (fail open: the breaker on the record last seen, writing nothing;
  the budget on its process-local state; the bulkhead on the counts, which
  it reads without the lock, reclaiming nothing), and for a second after
  that does not wait at all (`_host_file`).
* The file: deleted or replaced, a process notices within ``CHECK_EVERY``
  (1 s) and reopens it; damaged, the pieces fall back to process-local state
  and try the file again every ``CHECK_EVERY`` (``resilient-client reset``
  lays it out afresh in place).
* Its clock: an ``opened_at`` ahead of ours (a time namespace) is written
  back as "opened now"; a file from an earlier boot is cleared when opened.

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

import hashlib
import logging
import struct
import threading
import time
import zlib
from typing import TypeVar

from . import _host_file
from ._breaker_machine import CLOSED, CLOSED_RECORD, HALF_OPEN, OPEN, BreakerState, Record
from ._breaker_store import Changes, MemoryStore, Step
from ._clock import SYSTEM_CLOCK, Clock
from ._host_budget import HostBudget
from ._host_bulkhead import SLOT_LEASE, HostBulkhead
from ._host_dir import alive, me, warn_once
from ._host_file import (
    META,
    META_AT,
    POLICY_AT,
    BreakerFields,
    HostFile,
    HostFileBusy,
    HostFileError,
    breaker_fields,
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


def check_policy(file: HostFile, policies: object, match: str = "") -> bool:
    """
    Record *policies* (breaker, budget, bulkhead) and the endpoint's *match*
    in the file, with this process as their recorder, unless a live process
    recorded others: then report each difference once (each process applies
    its own thresholds to the shared state, so namesakes should agree, and
    another service's namesake shares our breaker; ``resilient-client
    check`` reports a policy mismatch too: ``host-policy-mismatch``). A
    record whose recorder is gone follows the newest process, so after a
    redeploy with new thresholds only workers started while old ones live
    warn. Returns whether all agree.
    """
    ours = policy_checksum(policies)
    digest = hashlib.blake2b(match.encode(), digest_size=16).digest()
    ident = me()
    try:
        with file.locked() as fd:
            meta = META.unpack(file.read(fd, META_AT, META.size))
            boot, recorded_match, recorded, pid, ns, epoch, token = meta
            agree = (recorded, recorded_match) == (ours, digest)
            if recorded == 0 or agree or alive(pid, token, ns) is False:
                recorded, recorded_match = ours, digest
                meta = (boot, digest, ours, ident.pid, ident.ns, epoch, ident.token)
                file.write(fd, META_AT, META.pack(*meta))
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
        self._local: MemoryStore | None = None  # the truth while the file is unusable
        self._retry_at = 0.0  # when to try the file again, once unusable
        self._raw: BreakerFields | None = None  # the fields last decoded...
        self._rec = CLOSED_RECORD  # ...and their record (the last one seen)
        # The bytes of a record when they alone decide it, and that record:
        # one attribute, so threads never pair one's bytes with another's record.
        self._seen: tuple[bytes, Record] = (b"", CLOSED_RECORD)
        self._reported: BreakerState = CLOSED

    # -- the BreakerStore protocol ------------------------------------------------

    def read(self) -> tuple[Record, float, Changes]:
        if self._local is None or self._revived():
            try:
                rec = self._read_shared()
                return rec, self._now(), self._observe(rec.state)
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
                now = self._now()
                new, result = step(self._rec, now)
                return new, result, now, self._observe(new.state)
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
            try:
                with self.file.locked() as fd:
                    fields = self.file.read_breaker(fd)
            except HostFileBusy:
                return self._rec
            raw = b""  # these fields are not those bytes'
        rec = self._decode(fields)
        if fields[3] > self._now() + 1.0:
            # Opened on another CLOCK_MONOTONIC, ahead of ours (a time
            # namespace): it would stay open here for the difference. Written
            # back as opened now, so that our reset_timeout runs from here.
            self.apply(lambda r, now: (r._replace(opened_at=now) if r.opened_at > now + 1.0 else r, None),
                       fresh=False)
            return self._rec
        # A lease's holder may die at any time: such a record is decoded anew.
        self._seen = (raw if fields[5] == 0 else b"", rec)
        return rec

    def _decode(self, fields: BreakerFields) -> Record:
        state, forced, failures, opened_at, trial_until, pid, ns, token, holder = fields
        trial = holder.rstrip(b"\0").decode("utf-8", "replace")
        if trial and alive(pid, token, ns) is False:
            trial_until = 0.0  # its holder is dead: the lease is lapsed (see `_host_dir.alive`)
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
                self._local = MemoryStore(self._clock, self._rec)

    def _revived(self) -> bool:
        """Unusable: whether the file is usable again (tried at most every ``CHECK_EVERY``)."""
        if time.monotonic() < self._retry_at:
            return False
        with self._lock:
            self._retry_at = time.monotonic() + _host_file.CHECK_EVERY
        if not self.file.revive():
            return False
        self._local, self._seen = None, (b"", CLOSED_RECORD)
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

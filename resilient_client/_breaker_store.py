"""
Where a breaker's `Record` lives: the state-store seam, and its memory backend.

A store keeps one breaker's record and applies the machine's pure
transitions to it atomically. Like `_clock.Clock`, the seam is a `Protocol`
that a backend satisfies without importing anything from here but the
record type.

Decision record: the store applies transitions, it does not make them
---------------------------------------------------------------------
A store offers an atomic read-modify-write, `BreakerStore.apply`: it reads
the record, calls a transition ``step(record, now)`` (a closure over one of
`BreakerMachine`'s pure methods, built by the facade), writes the record the
step returns unless it is the very record it was given, and says what state
changes that made. Each backend brings only its own atomicity:

* memory: optimistic too: the step runs on the record as read, and a
  `threading.Lock` makes "write it if the record is still the one read"
  atomic (records are immutable, so identity is the version);
* Redis (`_breaker_redis`): compare-and-set, a Lua script that writes the
  new record only if the keys still hold what was read, and otherwise
  returns what they hold now, so the step runs again on it (the Lua knows
  nothing of breakers: the decision stays in Python);
* a host-shared file (the next backend): ``fcntl.flock`` (exclusive) around
  reading one fixed-size record from the mapped file, running the step and
  writing the record back; ``now`` is ``time.monotonic()`` (CLOCK_MONOTONIC
  is one clock for every process on a host), ``exclusive`` is false, and
  the trial holder is ``"<pid>:<token>"``: before handing the record to the
  step, the store shows a lease whose pid no longer exists as lapsed
  (``trial_until = 0``), so a process killed mid-trial frees the trial at
  once without the machine knowing about processes.

The alternatives were an operation-level interface (``claim_trial``,
``count_failure``... per backend), which had every backend re-implement the
decisions (the seven Lua scripts this replaced did, beside the Python that
did too), and a plain get/put, which cannot be made atomic across processes.
With ``apply`` a new backend is one class, and the machine does not change.

``now`` is the store's own time base: the injected clock in memory (tests
run on a fake clock), Redis's ``TIME`` for Redis (one clock for every host).
``apply`` and ``read`` return the ``now`` they used, so the facade can turn a
record's times into its own clock's (`BreakerStore.local_time` says when no
conversion is needed).

Reads (`BreakerStore.read`) may be served from a cache (Redis: 20 ms); a
step that changes nothing is trusted on a fresh read only when the caller
asks (``fresh=True``), since a "no change" computed on a stale record proves
nothing, while a change is verified by the write itself.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Protocol, TypeVar

from ._breaker_machine import CLOSED_RECORD, BreakerState, Record
from ._clock import Clock

__all__ = ["BreakerStore", "Changes", "MemoryStore", "Step"]

R = TypeVar("R")

#: A transition: ``step(record, now) -> (new record, result)``. It may run
#: more than once (an optimistic store retries it on a conflict), so it must
#: be pure.
Step = Callable[[Record, float], tuple[Record, R]]
#: The state changes one operation made or noticed, oldest first.
Changes = tuple[tuple[BreakerState, BreakerState], ...]

_NO_CHANGES: Changes = ()


class BreakerStore(Protocol):
    """
    One breaker's record, and atomic transitions on it.

    .. versionadded:: 0.1.0
    """

    #: Only this store's owner ever writes the record, so the owner may keep
    #: its own view of it and skip reading it (the closed fast path).
    exclusive: bool
    #: ``now`` is on the breaker's own clock (no conversion needed).
    local_time: bool

    def read(self) -> tuple[Record, float, Changes]:
        """The record (perhaps cached), ``now``, and changes noticed since the last call."""
        ...

    def apply(self, step: Step[R], *, fresh: bool = True) -> tuple[Record, R, float, Changes]:
        """
        Apply *step* atomically: ``(new record, step result, now, changes)``.
        With ``fresh=False`` a step that changes nothing may have been run on
        a cached record.
        """
        ...

    def reachable(self) -> bool | None:
        """``None`` for a process-local store, else whether the shared one answers."""
        ...


class MemoryStore:
    """
    The record in this process; a lock serialises writes, reads take none.

    Also the local truth of a shared store while its server is away, hence
    the *record* argument.
    """

    __slots__ = ("_clock", "_lock", "record", "watch")

    exclusive = True
    local_time = True

    def __init__(self, clock: Clock, record: Record = CLOSED_RECORD) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        #: The current record; reading it needs no lock (one attribute read).
        self.record = record
        #: Called with each record written, under the lock: for an owner
        #: whose own flags must change in step with the record.
        self.watch: Callable[[Record], None] | None = None

    def read(self) -> tuple[Record, float, Changes]:
        # Changes are reported by apply(), the only writer.
        return self.record, self._clock.monotonic(), _NO_CHANGES

    def apply(self, step: Step[R], *, fresh: bool = True) -> tuple[Record, R, float, Changes]:
        # Optimistic, like a compare-and-set: the step runs on the record as
        # read, without the lock; a step that changes nothing (a rejection,
        # a late outcome) is done then, and a change is written under the
        # lock only if nobody wrote first (else the step runs again on theirs).
        now = self._clock.monotonic()
        old = self.record
        new, result = step(old, now)
        if new is old:
            return new, result, now, _NO_CHANGES
        with self._lock:
            if self.record is not old:
                old = self.record
                new, result = step(old, now)
            if new is not old:
                self.record = new
                if self.watch is not None:
                    self.watch(new)
        if new.state is old.state:
            return new, result, now, _NO_CHANGES
        return new, result, now, ((old.state, new.state),)

    def reachable(self) -> bool | None:
        return None

    def rewatch(self) -> None:
        """Call `watch` again with the current record, under the lock: for
        an owner whose flags also depend on something of its own."""
        with self._lock:
            if self.watch is not None:
                self.watch(self.record)

    def __repr__(self) -> str:
        return f"<MemoryStore {self.record}>"

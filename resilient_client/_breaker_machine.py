"""
The circuit breaker's state machine, sans-IO: records in, records out.

Everything a breaker *decides* is here, and nothing it *does*: no lock, no
I/O, no clock read. A breaker's shared state is a small immutable `Record`;
each transition is a pure function ``(record, now, ...) -> new record``
(plus, for `BreakerMachine.admit`, a `Verdict`). ``now`` is handed in, in
whatever time base the store keeps (the injected clock in memory, Redis's
``TIME`` in Redis), and every time in a record is in that same base. A
transition that changes nothing returns the very record it was given, so a
store can skip the write with an ``is`` test.

The stores (`_breaker_store`) apply these transitions atomically; the facade
(`_breaker.CircuitBreaker`) builds them and reports what changed. The
pattern is h11's: the machine is tested alone on plain numbers
(tests/test_breaker_machine.py).

Decision record: what is in the record, and what is not
--------------------------------------------------------
The record holds what processes sharing a breaker must agree on: the state,
whether an operator forced it open, when it opened, the consecutive-failure
count, and the trial lease (holder and expiry), so that exactly one trial
runs across everyone sharing the record and a holder that vanished (a
killed process) loses its lease. Its fields map one to one onto Redis keys
(pybreaker's ``state`` and ``fail_counter`` among them) and onto a
fixed-size binary record for a host-shared file.

The rate-mode window is not in it: it is a process's own tally, kept by the
facade (`Window`), and handed to `BreakerMachine.record` as two numbers.
Sharing it would cost a write per call, the thing shared state must not
cost; the decision it feeds is still made here, in one place.

Decision record: one function decides how an attempt is counted
---------------------------------------------------------------
`BreakerMachine.record` is the only place that turns an attempt's outcome
into a state change (count it, reset it, trip, close, reopen, or ignore a
late outcome); `BreakerMachine.classify` only says whether the attempt
failed (an error, a failure status, or slower than ``slow_call_duration``).
The facade's fast path for a success on a healthy closed breaker skips the
machine only where the machine would return the record unchanged; it never
decides anything itself.

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import enum
import math
from typing import NamedTuple

from ._policy import BreakerMode, BreakerPolicy

__all__ = ["BreakerMachine", "BreakerState", "Record", "Verdict", "Window"]

#: A trial lease lasts max(reset_timeout, this) seconds, so a trial whose
#: caller vanished (a crashed process, a lost record()) cannot keep the
#: breaker half-open for ever. It must outlast any real call, hence generous.
_TRIAL_LEASE_MIN = 30.0
#: Rate mode: the window is cut into this many buckets (about 1 s each,
#: clamped), so memory is bounded whatever the window.
_MIN_BUCKETS = 10
_MAX_BUCKETS = 60


class BreakerState(str, enum.Enum):
    """
    The state of a breaker; compares equal to ``"closed"``, ``"open"`` and
    ``"half-open"`` (pybreaker's state names).

    .. versionadded:: 0.1.0
    """

    # pybreaker.STATE_CLOSED, STATE_OPEN and STATE_HALF_OPEN (a test pins
    # them): spelt out so that importing us does not import pybreaker, which
    # imports redis-py (and through it asyncio) whenever it is installed.
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half-open"

    def __str__(self) -> str:
        return self.value


CLOSED = BreakerState.CLOSED
OPEN = BreakerState.OPEN
HALF_OPEN = BreakerState.HALF_OPEN


class Record(NamedTuple):
    """
    A breaker's shared state. ``HALF_OPEN`` means a trial was claimed since
    it opened; an ``OPEN`` record past ``reset_timeout`` only *reads*
    half-open (`BreakerMachine.view`) until someone claims the trial.
    """

    state: BreakerState = CLOSED
    forced: bool = False
    opened_at: float = 0.0  # when it last opened, in the store's time base
    failures: int = 0  # consecutive failures (consecutive mode)
    trial: str = ""  # the trial lease's holder, "" when none
    trial_until: float = 0.0  # when that lease expires


#: The record of a closed breaker that never failed.
CLOSED_RECORD = Record()


class Verdict(enum.Enum):
    """What `BreakerMachine.admit` says about one call."""

    ALLOW = "allow"
    TRIAL = "trial"
    REJECT = "reject"


ALLOW = Verdict.ALLOW
TRIAL = Verdict.TRIAL
REJECT = Verdict.REJECT


class BreakerMachine:
    """
    The transitions of one breaker, as seen by *holder*: who claims the
    trial lease when this breaker's caller gets the trial (h11's
    ``our_role``: one machine per party). Holds only configuration; every
    method is a pure function of its arguments.
    """

    __slots__ = (
        "_min_calls", "_rate", "_rate_mode", "_reset", "_slow", "_threshold", "holder", "lease",
    )

    def __init__(self, policy: BreakerPolicy, holder: str) -> None:
        #: This party's name on a trial lease: unique across processes.
        self.holder = holder
        self._threshold = policy.failure_threshold
        self._reset = policy.reset_timeout
        self._slow = policy.slow_call_duration
        self._rate_mode = policy.mode is BreakerMode.RATE
        self._rate = policy.failure_rate
        self._min_calls = policy.min_calls
        #: How long a trial lease lasts, in seconds.
        self.lease = max(policy.reset_timeout, _TRIAL_LEASE_MIN)

    # -- reading -----------------------------------------------------------------

    def view(self, rec: Record, now: float) -> BreakerState:
        """The state as users see it: open past ``reset_timeout`` reads half-open."""
        if rec.state is OPEN and not rec.forced and now >= rec.opened_at + self._reset:
            return HALF_OPEN
        return rec.state

    def retry_at(self, rec: Record) -> float | None:
        """When a trial becomes possible; ``None`` when closed or forced open."""
        if rec.state is CLOSED or rec.forced:
            return None
        return rec.opened_at + self._reset

    # -- transitions -------------------------------------------------------------

    def admit(self, rec: Record, now: float) -> tuple[Record, Verdict]:
        """
        May one call go through? Claims the trial lease for us when the
        breaker is open past ``reset_timeout`` and nobody holds a live lease.
        """
        state = rec.state
        if state is CLOSED:
            return rec, ALLOW
        if rec.forced:
            return rec, REJECT
        if state is OPEN:
            if now < rec.opened_at + self._reset:
                return rec, REJECT
        elif rec.trial and now < rec.trial_until:
            return rec, REJECT  # half-open, and the trial is someone's
        return Record(HALF_OPEN, False, rec.opened_at, rec.failures, self.holder, now + self.lease), TRIAL

    def classify(self, success: bool, duration: float) -> tuple[bool, bool]:
        """``(failed, slow)`` for one attempt: a slow success is a failure."""
        slow = self._slow is not None and duration > self._slow
        return slow or not success, slow

    def record(
        self, rec: Record, now: float, failed: bool, trial: bool, window: tuple[int, int] | None
    ) -> Record:
        """
        The one decision on how an attempt counts.

        Args:
            failed: from `classify`.
            trial: whether the attempt was our trial call.
            window: rate mode: ``(calls, failures)`` in this process's window,
                this attempt included.
        """
        state = rec.state
        if trial:
            # Only a trial whose lease is still ours (or lapsed unclaimed)
            # decides, and not once an operator forced the breaker open.
            if state is not HALF_OPEN or rec.forced or rec.trial not in (self.holder, ""):
                return rec
            if failed:
                return self._open(rec, now, failures=rec.failures + 1)
            return CLOSED_RECORD
        if state is not CLOSED:
            # A call let through before the breaker opened, ending late:
            # only the trial decides what happens to an open breaker.
            return rec
        if self._rate_mode:
            if (
                failed
                and window is not None
                and window[0] >= self._min_calls
                and window[1] / window[0] >= self._rate
            ):
                return self._open(rec, now, failures=rec.failures)
            return rec
        if not failed:
            return rec if rec.failures == 0 else _with_failures(rec, 0)
        failures = rec.failures + 1
        if failures >= self._threshold:
            return self._open(rec, now, failures=failures)
        return _with_failures(rec, failures)

    def release(self, rec: Record) -> Record:
        """Our trial call ended without an outcome: free its lease."""
        if rec.trial != self.holder:
            return rec
        return _without_trial(rec)

    def force(self, rec: Record, now: float, *, open_: bool) -> Record:
        """An operator's `open()` (no trials until closed) or `close()`."""
        if not open_:
            return CLOSED_RECORD
        return Record(OPEN, True, now, rec.failures)

    def reconcile(self, base: Record, local: Record, shared: Record, now: float) -> Record:
        """
        A shared store answers again after an outage: what to write there.

        *base* is the shared record as last seen before the outage, *local*
        what this process made of it meanwhile, *shared* the record now. An
        operator's forcing done here is pushed; so is an opening (an open
        breaker wins over a closed one); a trial lease held at the outage's
        start and ended here is released. Otherwise the shared record stands.
        """
        if local.forced != base.forced:
            return self.force(shared, now, open_=local.forced)
        if (
            local.state is not CLOSED
            and base.state is CLOSED
            and shared.state is CLOSED
            and not shared.forced
        ):
            return self._open(shared, now, failures=shared.failures)
        if shared.trial and shared.trial == base.trial and local.trial != base.trial:
            return _without_trial(shared)
        return shared

    @staticmethod
    def _open(rec: Record, now: float, *, failures: int) -> Record:
        return Record(OPEN, rec.forced, now, failures)


# Record._replace is generic and slow (a dict and a map), and even Record()
# costs twice tuple.__new__: these run on every failure.
_new = tuple.__new__


def _with_failures(rec: Record, failures: int) -> Record:
    return _new(Record, (rec[0], rec[1], rec[2], failures, rec[4], rec[5]))


def _without_trial(rec: Record) -> Record:
    return _new(Record, (rec[0], rec[1], rec[2], rec[3], "", 0.0))


class Window:
    """
    Calls and failures over the last *span* seconds, in fixed time buckets:
    a process's own tally for rate mode. Not thread-safe; pure but for its
    own counts (it is handed ``now``, it reads no clock).

    The newest bucket is ``_head``; moving to a later bucket clears the ones
    skipped over, keeping running totals, so every operation is O(1) amortised
    and memory is ``2 * buckets`` ints whatever the traffic.
    """

    __slots__ = ("_calls", "_edge", "_fails", "_head", "_n", "_slot", "_width", "calls", "failures")

    def __init__(self, span: float) -> None:
        self._n = min(_MAX_BUCKETS, max(_MIN_BUCKETS, math.ceil(span)))
        self._width = span / self._n
        self.clear()

    def clear(self) -> None:
        self._calls = [0] * self._n
        self._fails = [0] * self._n
        self._head: int | None = None  # absolute number of the newest bucket
        self._slot = 0  # its index in the lists
        self._edge = -math.inf  # when it ends: before then, no sliding to do
        self.calls = self.failures = 0

    def advance(self, now: float) -> int:
        """Slide the window to *now*; return the slot of the current bucket."""
        if now < self._edge:
            return self._slot
        idx = math.floor(now / self._width)
        head = self._head
        if head is None or idx - head >= self._n:
            self.clear()
        elif idx > head:
            for i in range(head + 1, idx + 1):
                slot = i % self._n
                self.calls -= self._calls[slot]
                self.failures -= self._fails[slot]
                self._calls[slot] = self._fails[slot] = 0
        else:
            idx = head  # a monotonic clock never goes back; stay put if it does
        self._head = idx
        self._slot = idx % self._n
        self._edge = (idx + 1) * self._width
        return self._slot

    def add(self, now: float, failed: bool) -> tuple[int, int]:
        """Count one call; return ``(calls, failures)`` in the window."""
        slot = self.advance(now)
        self._calls[slot] += 1
        self.calls += 1
        if failed:
            self._fails[slot] += 1
            self.failures += 1
        return self.calls, self.failures

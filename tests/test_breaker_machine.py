"""
The breaker's state machine alone: records in, records out, on plain ``now``
numbers, with no store, no lock and no clock.
"""

from __future__ import annotations

from typing import Any

import pytest

from resilient_client._breaker_machine import (
    _TRIAL_LEASE_MIN,
    ALLOW,
    CLOSED,
    CLOSED_RECORD,
    HALF_OPEN,
    OPEN,
    REJECT,
    TRIAL,
    BreakerMachine,
    Record,
    Window,
)
from resilient_client._policy import BreakerPolicy

ME, THEM = "me", "them"


def machine(holder: str = ME, **policy: Any) -> BreakerMachine:
    policy.setdefault("failure_threshold", 3)
    policy.setdefault("reset_timeout", 10.0)
    return BreakerMachine(BreakerPolicy(**policy), holder)


def fail(m: BreakerMachine, rec: Record, now: float, n: int = 1) -> Record:
    for _ in range(n):
        rec = m.record(rec, now, True, False, None)
    return rec


def opened(at: float = 100.0, **kw: Any) -> Record:
    return Record(OPEN, False, at, 3, **kw)


class TestCounting:
    def test_threshold_consecutive_failures_open_it(self) -> None:
        """The threshold-th failure opens the record, stamped with now."""
        m = machine()
        rec = fail(m, CLOSED_RECORD, 1.0, 2)
        assert rec == Record(failures=2)
        assert fail(m, rec, 5.0) == Record(OPEN, False, 5.0, 3)

    def test_a_success_resets_and_a_healthy_success_changes_nothing(self) -> None:
        """A success zeroes the count; on a record with no failures it returns the same object."""
        m = machine()
        assert m.record(Record(failures=2), 1.0, False, False, None) == CLOSED_RECORD
        assert m.record(CLOSED_RECORD, 1.0, False, False, None) is CLOSED_RECORD

    def test_late_outcomes_leave_an_open_record_alone(self) -> None:
        """Outcomes of calls let through before it opened decide nothing."""
        m = machine()
        rec = opened()
        assert m.record(rec, 200.0, True, False, None) is rec
        assert m.record(rec, 200.0, False, False, None) is rec

    def test_classify_counts_a_slow_success_as_a_failure(self) -> None:
        """Slower than slow_call_duration is a failure; exactly the limit is not."""
        m = machine(slow_call_duration=1.0)
        assert m.classify(True, 1.0) == (False, False)
        assert m.classify(True, 1.01) == (True, True)
        assert m.classify(False, 0.1) == (True, False)
        assert machine().classify(True, 3600.0) == (False, False)


class TestRateMode:
    def test_the_window_tally_decides(self) -> None:
        """A failure trips it once calls >= min_calls and the failure share >= failure_rate."""
        m = machine(mode="rate", failure_rate=0.5, min_calls=10)
        assert m.record(CLOSED_RECORD, 1.0, True, False, (9, 9)) is CLOSED_RECORD
        assert m.record(CLOSED_RECORD, 1.0, True, False, (10, 4)) is CLOSED_RECORD
        assert m.record(CLOSED_RECORD, 1.0, True, False, (10, 5)).state is OPEN
        assert m.record(CLOSED_RECORD, 1.0, False, False, (10, 9)) is CLOSED_RECORD

    def test_rate_mode_writes_no_count(self) -> None:
        """Failures below the rate change nothing shared (no write per call)."""
        m = machine(mode="rate", min_calls=100)
        assert m.record(CLOSED_RECORD, 1.0, True, False, (1, 1)) is CLOSED_RECORD

    def test_window_slides_and_is_bounded(self) -> None:
        """Old buckets fall out of the window."""
        w = Window(10.0)
        assert w.add(0.0, True) == (1, 1)
        assert w.add(5.0, False) == (2, 1)
        assert w.add(10.5, False) == (2, 0)
        assert w.add(100.0, True) == (1, 1)


class TestAdmission:
    def test_closed_allows_without_a_change(self) -> None:
        """A closed record lets calls through and stays the same object."""
        assert machine().admit(CLOSED_RECORD, 0.0) == (CLOSED_RECORD, ALLOW)

    def test_open_rejects_until_reset_timeout_then_one_trial(self) -> None:
        """At opened_at + reset_timeout exactly, the caller claims the trial lease."""
        m = machine()
        rec = opened(100.0)
        assert m.admit(rec, 109.999) == (rec, REJECT)
        rec, verdict = m.admit(rec, 110.0)
        assert verdict is TRIAL
        assert rec == Record(HALF_OPEN, False, 100.0, 3, ME, 110.0 + _TRIAL_LEASE_MIN)
        assert m.admit(rec, 111.0) == (rec, REJECT)  # the trial is in flight

    def test_a_lapsed_lease_goes_to_the_next_caller(self) -> None:
        """A holder that vanished loses the lease when it expires."""
        rec = Record(HALF_OPEN, False, 100.0, 3, THEM, 140.0)
        assert machine().admit(rec, 139.9)[1] is REJECT
        new, verdict = machine().admit(rec, 140.0)
        assert verdict is TRIAL and new.trial == ME

    def test_lease_is_at_least_reset_timeout(self) -> None:
        """A long reset_timeout lengthens the lease."""
        assert machine(reset_timeout=300.0).lease == 300.0

    def test_forced_open_never_admits(self) -> None:
        """A record forced open rejects however long it has been open."""
        m = machine()
        rec = m.force(CLOSED_RECORD, 0.0, open_=True)
        assert m.admit(rec, 1e9) == (rec, REJECT)
        assert m.view(rec, 1e9) is OPEN
        assert m.retry_at(rec) is None


class TestTrial:
    def half_open(self, holder: str = ME) -> Record:
        return Record(HALF_OPEN, False, 100.0, 3, holder, 140.0)

    def test_success_closes_failure_reopens_at_now(self) -> None:
        """The trial's outcome decides: closed and forgotten, or open again from now."""
        m = machine()
        assert m.record(self.half_open(), 112.0, False, True, None) is CLOSED_RECORD
        assert m.record(self.half_open(), 112.0, True, True, None) == Record(OPEN, False, 112.0, 4)

    def test_only_the_holder_decides(self) -> None:
        """An outcome from a trial whose lease went to someone else is stale."""
        rec = self.half_open(THEM)
        assert machine().record(rec, 112.0, False, True, None) is rec

    def test_forced_open_outlives_the_trial(self) -> None:
        """A trial ending after an operator forced the breaker open does not close it."""
        rec = self.half_open()._replace(forced=True)
        assert machine().record(rec, 112.0, False, True, None) is rec

    def test_release_frees_only_our_lease(self) -> None:
        """release() clears our own lease, and nobody else's."""
        m = machine()
        assert m.release(self.half_open()) == Record(HALF_OPEN, False, 100.0, 3)
        theirs = self.half_open(THEM)
        assert m.release(theirs) is theirs


class TestReading:
    def test_view_and_retry_at(self) -> None:
        """Open past reset_timeout reads half-open; retry_at is when that happens."""
        m = machine()
        rec = opened(100.0)
        assert (m.view(rec, 109.0), m.view(rec, 110.0)) == (OPEN, HALF_OPEN)
        assert m.retry_at(rec) == 110.0
        assert m.retry_at(CLOSED_RECORD) is None
        assert m.view(CLOSED_RECORD, 0.0) is CLOSED


class TestReconcile:
    def test_forcing_done_during_an_outage_is_pushed(self) -> None:
        """An operator's open() or close() made while the store was away wins."""
        m = machine()
        forced = m.force(CLOSED_RECORD, 5.0, open_=True)
        pushed = m.reconcile(CLOSED_RECORD, forced, CLOSED_RECORD, 50.0)
        assert (pushed.state, pushed.forced, pushed.opened_at) == (OPEN, True, 50.0)
        assert m.reconcile(forced, CLOSED_RECORD, forced, 50.0) is CLOSED_RECORD

    def test_an_opening_wins_over_closed(self) -> None:
        """Tripped here while away, and still closed there: it opens there, at now."""
        m = machine()
        assert m.reconcile(CLOSED_RECORD, opened(5.0), CLOSED_RECORD, 50.0) == Record(OPEN, False, 50.0)

    def test_a_lease_ended_here_is_released_there(self) -> None:
        """A trial lease held when the outage began and ended meanwhile is freed."""
        held = Record(HALF_OPEN, False, 1.0, 3, ME, 99.0)
        ended = opened(20.0)
        assert m_reconcile(held, ended, held) == Record(HALF_OPEN, False, 1.0, 3)

    def test_otherwise_the_shared_record_stands(self) -> None:
        """Nothing to push: the shared record is adopted as it is."""
        shared = opened(7.0)
        assert m_reconcile(CLOSED_RECORD, CLOSED_RECORD, shared) is shared
        assert m_reconcile(CLOSED_RECORD, opened(5.0), shared) is shared


def m_reconcile(base: Record, local: Record, shared: Record) -> Record:
    return machine().reconcile(base, local, shared, 50.0)


@pytest.mark.parametrize("state", [CLOSED, OPEN, HALF_OPEN])
def test_force_close_forgets_everything(state: Any) -> None:
    """close() from any state is the record of a breaker that never failed."""
    rec = Record(state, True, 3.0, 9, ME, 4.0)
    assert machine().force(rec, 10.0, open_=False) is CLOSED_RECORD

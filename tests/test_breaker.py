"""
The circuit breaker's state machine, in memory, on a fake clock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import pybreaker
import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from resilient_client._breaker import BreakerState, BreakerStats, CircuitBreaker
from resilient_client._breaker_machine import _MAX_BUCKETS, _TRIAL_LEASE_MIN
from resilient_client._clock import SYSTEM_CLOCK
from resilient_client._policy import BreakerMode, BreakerPolicy
from resilient_client.exceptions import CircuitOpenError
from resilient_client.testing import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


def make(clock: FakeClock, changes: list[Any] | None = None, **policy: Any) -> CircuitBreaker:
    """A breaker named "inventory" that logs its state changes into *changes*."""
    policy.setdefault("reset_timeout", 10.0)

    def on_change(breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
        if changes is not None:
            changes.append((str(old), str(new), clock.monotonic()))

    return CircuitBreaker("inventory", BreakerPolicy(**policy), clock=clock, on_state_change=on_change)


def fail(breaker: CircuitBreaker, n: int = 1, **kw: Any) -> None:
    for _ in range(n):
        is_trial = breaker.before_call()
        breaker.record(success=False, is_trial=is_trial, **kw)


def succeed(breaker: CircuitBreaker, n: int = 1, **kw: Any) -> None:
    for _ in range(n):
        is_trial = breaker.before_call()
        breaker.record(success=True, is_trial=is_trial, **kw)


def refused(breaker: CircuitBreaker) -> bool:
    try:
        breaker.before_call()
    except CircuitOpenError:
        return True
    return False


class TestConsecutiveMode:
    def test_opens_after_threshold(self, clock: FakeClock) -> None:
        """
        `failure_threshold` consecutive failures open the breaker, not one fewer.
        """
        breaker = make(clock, failure_threshold=3)
        fail(breaker, 2)
        assert breaker.state == "closed"
        fail(breaker)
        assert breaker.state == "open"
        assert breaker.state is BreakerState.OPEN

    def test_success_resets_the_count(self, clock: FakeClock) -> None:
        """
        A success in between starts the count again.
        """
        breaker = make(clock, failure_threshold=3)
        fail(breaker, 2)
        succeed(breaker)
        fail(breaker, 2)
        assert breaker.state == "closed"
        assert breaker.stats().consecutive_failures == 2

    def test_open_refuses_at_once(self, clock: FakeClock) -> None:
        """
        An open breaker raises CircuitOpenError, naming the endpoint and when a
        trial becomes possible.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=30.0)
        fail(breaker)
        clock.advance(5)
        with pytest.raises(CircuitOpenError) as info:
            breaker.before_call()
        assert info.value.endpoint == "inventory"
        assert info.value.retry_in == pytest.approx(25.0)
        assert "a trial call may go through in 25.0 s" in str(info.value)
        with pytest.warns(DeprecationWarning, match="retry_in"):
            assert info.value.retry_at == pytest.approx(1030.0)  # the deprecated alias, one release
        assert breaker.retry_at == pytest.approx(1030.0)
        assert breaker.stats().rejected == 1

    def test_trial_after_reset_timeout_closes_on_success(self, clock: FakeClock) -> None:
        """
        After reset_timeout the next call is the trial; its success closes the
        breaker and forgets the failures.
        """
        changes: list[Any] = []
        breaker = make(clock, changes, failure_threshold=2, reset_timeout=30.0)
        fail(breaker, 2)
        clock.advance(29.999)
        assert refused(breaker)
        clock.advance(0.001)
        assert breaker.state == "half-open"
        assert breaker.before_call() is True
        assert refused(breaker)  # the others still fail fast
        breaker.record(success=True, is_trial=True)
        assert breaker.state == "closed"
        assert breaker.retry_at is None
        assert breaker.stats().consecutive_failures == 0
        assert [(o, n) for o, n, _ in changes] == [
            ("closed", "open"), ("open", "half-open"), ("half-open", "closed")
        ]

    def test_failed_trial_reopens_for_a_new_reset_timeout(self, clock: FakeClock) -> None:
        """
        A failed trial opens the breaker again, timed from the trial's end.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=30.0)
        fail(breaker)
        clock.advance(30)
        assert breaker.before_call() is True
        clock.advance(2)
        breaker.record(success=False, is_trial=True)
        assert breaker.state == "open"
        assert breaker.retry_at == pytest.approx(clock.monotonic() + 30)
        clock.advance(29)
        assert refused(breaker)
        clock.advance(1)
        assert breaker.before_call() is True

    def test_late_outcomes_do_not_decide(self, clock: FakeClock) -> None:
        """
        A call let through before the breaker opened and ending after it did
        neither closes nor re-times it: only the trial decides.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=30.0)
        assert breaker.before_call() is False  # a slow call, in flight
        fail(breaker)
        breaker.record(success=True, is_trial=False)
        assert breaker.state == "open"
        assert breaker.retry_at == pytest.approx(1030.0)

    def test_release_trial_frees_the_slot(self, clock: FakeClock) -> None:
        """
        A trial that ended without an outcome gives the next caller the trial.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=1.0)
        fail(breaker)
        clock.advance(1)
        assert breaker.before_call() is True
        assert refused(breaker)
        breaker.release_trial()
        assert breaker.state == "half-open"
        assert breaker.before_call() is True

    def test_a_vanished_trial_expires(self, clock: FakeClock) -> None:
        """
        A trial whose outcome never comes does not keep the breaker shut for
        ever: after its lease another caller gets the trial.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=1.0)
        fail(breaker)
        clock.advance(1)
        assert breaker.before_call() is True
        clock.advance(_TRIAL_LEASE_MIN - 0.001)
        assert refused(breaker)
        clock.advance(0.001)
        assert breaker.before_call() is True

    def test_sub_second_reset_timeout_on_the_fake_clock(self, clock: FakeClock) -> None:
        """
        reset_timeout below a second is honoured to the millisecond.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=0.05)
        fail(breaker)
        clock.advance(0.049)
        assert refused(breaker)
        clock.advance(0.001)
        assert breaker.before_call() is True

    def test_sub_second_reset_timeout_on_the_real_clock(self) -> None:
        """
        With the system clock, a 20 ms reset_timeout lets a trial through
        20 ms later (pybreaker's whole-second Redis clock would not).
        """
        policy = BreakerPolicy(failure_threshold=1, reset_timeout=0.02)
        breaker = CircuitBreaker("inventory", policy, clock=SYSTEM_CLOCK)
        fail(breaker)
        assert refused(breaker)
        time.sleep(0.025)
        assert breaker.before_call() is True


class TestSlowCalls:
    def test_a_slow_success_is_a_failure(self, clock: FakeClock) -> None:
        """
        A call slower than slow_call_duration counts as a failure even when
        it succeeded; exactly the limit is not slow.
        """
        breaker = make(clock, failure_threshold=2, slow_call_duration=1.0)
        succeed(breaker, duration=1.5)
        succeed(breaker, duration=1.0)
        assert breaker.stats().consecutive_failures == 0
        succeed(breaker, 2, duration=1.01)
        assert breaker.state == "open"
        stats = breaker.stats()
        assert (stats.slow_calls, stats.failures, stats.successes) == (3, 3, 1)

    def test_a_slow_trial_reopens(self, clock: FakeClock) -> None:
        """
        A trial that succeeds too slowly does not close the breaker.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=1.0, slow_call_duration=0.5)
        fail(breaker)
        clock.advance(1)
        assert breaker.before_call() is True
        breaker.record(success=True, is_trial=True, duration=0.6)
        assert breaker.state == "open"

    def test_without_a_limit_duration_is_ignored(self, clock: FakeClock) -> None:
        """
        With no slow_call_duration, a long success is a success.
        """
        breaker = make(clock, failure_threshold=1)
        succeed(breaker, duration=3600.0)
        assert breaker.state == "closed"


class TestRateMode:
    def test_opens_at_the_failure_rate(self, clock: FakeClock) -> None:
        """
        With at least min_calls calls in the window, a failure share reaching
        failure_rate opens the breaker.
        """
        breaker = make(clock, mode="rate", failure_rate=0.5, min_calls=10, window=10.0)
        for _ in range(4):
            succeed(breaker)
            fail(breaker)
        succeed(breaker)
        assert breaker.state == "closed"  # 4/9: too few calls, and under 50%
        fail(breaker)
        assert breaker.state == "open"  # 5/10
        assert breaker.stats().window_calls == 10

    def test_needs_min_calls(self, clock: FakeClock) -> None:
        """
        Below min_calls even 100% failures keep it closed; consecutive
        failures are not what counts in rate mode.
        """
        breaker = make(clock, mode="rate", failure_rate=0.5, min_calls=20, failure_threshold=1)
        fail(breaker, 19)
        assert breaker.state == "closed"
        fail(breaker)
        assert breaker.state == "open"

    def test_a_rate_just_under_does_not_open(self, clock: FakeClock) -> None:
        """
        3 failures in 10 calls is 30%: it opens at failure_rate 0.3, not 0.31.
        """
        for rate, expected in ((0.3, "open"), (0.31, "closed")):
            breaker = make(clock, mode="rate", failure_rate=rate, min_calls=10)
            succeed(breaker, 7)
            fail(breaker, 3)
            assert breaker.state == expected, rate

    def test_old_calls_slide_out(self, clock: FakeClock) -> None:
        """
        Failures older than the window no longer count.
        """
        breaker = make(clock, mode="rate", failure_rate=0.5, min_calls=4, window=10.0)
        fail(breaker, 3)
        clock.advance(11)
        succeed(breaker, 3)
        fail(breaker)
        assert breaker.state == "closed"  # 1/4 in the window
        assert (breaker.stats().window_calls, breaker.stats().window_failures) == (4, 1)
        clock.advance(5)
        fail(breaker)
        assert breaker.state == "closed"  # 2/5
        fail(breaker)
        assert breaker.state == "open"  # 3/6

    def test_memory_is_bounded(self, clock: FakeClock) -> None:
        """
        However long the window and however many calls, the window keeps a
        fixed number of buckets.
        """
        breaker = make(clock, mode="rate", window=86_400.0, min_calls=10**9)
        for _ in range(1000):
            clock.advance(7.3)
            succeed(breaker)
        window = breaker._window
        assert window is not None
        assert len(window._calls) == len(window._fails) <= _MAX_BUCKETS
        assert breaker.stats().window_calls == 1000

    def test_closing_forgets_the_window(self, clock: FakeClock) -> None:
        """
        After a successful trial the window starts empty, so old failures do
        not reopen it at once.
        """
        breaker = make(clock, mode="rate", failure_rate=0.5, min_calls=2, window=60.0, reset_timeout=1.0)
        fail(breaker, 2)
        clock.advance(1)
        succeed(breaker)
        assert breaker.state == "closed"
        fail(breaker)
        assert breaker.state == "closed"


class TestForced:
    def test_open_refuses_without_trials_until_close(self, clock: FakeClock) -> None:
        """
        .open() refuses every call, with no trial however long it stays
        open, until .close().
        """
        changes: list[Any] = []
        breaker = make(clock, changes, reset_timeout=1.0)
        breaker.open()
        for _ in range(3):
            clock.advance(3600)
            with pytest.raises(CircuitOpenError) as info:
                breaker.before_call()
            assert info.value.retry_in is None
            assert "no trial call until it is closed" in str(info.value)
            assert breaker.state == "open"
        assert breaker.retry_at is None
        breaker.close()
        assert breaker.state == "closed"
        assert breaker.before_call() is False
        assert [(o, n) for o, n, _ in changes] == [("closed", "open"), ("open", "closed")]

    def test_open_during_a_trial_wins(self, clock: FakeClock) -> None:
        """
        A trial's success does not close a breaker forced open meanwhile.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=1.0)
        fail(breaker)
        clock.advance(1)
        assert breaker.before_call() is True
        breaker.open()
        breaker.record(success=True, is_trial=True)
        assert breaker.state == "open"
        assert refused(breaker)

    def test_close_forgets_failures(self, clock: FakeClock) -> None:
        """
        .close() on a tripped breaker closes it and starts the count afresh.
        """
        breaker = make(clock, failure_threshold=2)
        fail(breaker, 2)
        breaker.close()
        fail(breaker)
        assert breaker.state == "closed"


class TestConcurrentHalfOpen:
    def test_exactly_one_trial(self, clock: FakeClock) -> None:
        """
        Of many threads arriving together at a half-open breaker exactly one
        gets the trial; the others fail fast while it runs.
        """
        breaker = make(clock, failure_threshold=1, reset_timeout=1.0)
        fail(breaker)
        clock.advance(1)
        n = 16
        start = threading.Barrier(n)
        all_asked = threading.Event()
        asked = []
        results: list[str] = []
        lock = threading.Lock()

        def caller() -> None:
            start.wait(timeout=5)
            try:
                is_trial = breaker.before_call()
            except CircuitOpenError:
                outcome = "refused"
                is_trial = None
            else:
                outcome = "trial" if is_trial else "call"
            with lock:
                results.append(outcome)
                asked.append(1)
                if len(asked) == n:
                    all_asked.set()
            if is_trial:
                # Hold the trial until every other caller was answered.
                assert all_asked.wait(timeout=5)
                breaker.record(success=True, is_trial=True)

        threads = [threading.Thread(target=caller) for _ in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=5)
        assert sorted(results) == ["refused"] * (n - 1) + ["trial"]
        assert breaker.state == "closed"

    def test_calls_do_not_wait_for_each_other(self) -> None:
        """
        No lock is held across a call: a call in flight does not stop another
        from starting and finishing.
        """
        breaker = CircuitBreaker("inventory", BreakerPolicy(), clock=SYSTEM_CLOCK)
        first_in = threading.Event()
        second_done = threading.Event()

        def slow() -> None:
            is_trial = breaker.before_call()
            first_in.set()
            assert second_done.wait(timeout=5)
            breaker.record(success=True, is_trial=is_trial, duration=0.1)

        t = threading.Thread(target=slow)
        t.start()
        assert first_in.wait(timeout=5)
        succeed(breaker)
        second_done.set()
        t.join(timeout=5)
        assert breaker.stats().successes == 2


class TestClosedPath:
    def test_before_call_takes_no_lock_when_closed(self, clock: FakeClock) -> None:
        """
        In memory mode, a closed breaker answers before_call without its lock.
        """

        class Forbidden:
            def __enter__(self) -> None:
                raise AssertionError("the closed path took the lock")

            def __exit__(self, *exc: object) -> None:
                pass

        breaker = make(clock)
        real_lock = breaker._lock
        breaker._lock = Forbidden()  # type: ignore[assignment]
        assert breaker.before_call() is False
        breaker._lock = real_lock
        fail(breaker, 5)
        breaker._lock = Forbidden()  # type: ignore[assignment]
        with pytest.raises(AssertionError):
            breaker.before_call()


class TestCallbacks:
    def test_callback_gets_breaker_and_states(self, clock: FakeClock) -> None:
        """
        on_state_change receives the breaker and BreakerState values, and may
        use the breaker (it runs outside the lock).
        """
        seen: list[tuple[str, BreakerState, BreakerState, BreakerStats]] = []

        def on_change(breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
            seen.append((breaker.name, old, new, breaker.stats()))

        breaker = CircuitBreaker(
            "inventory", BreakerPolicy(failure_threshold=2), clock=clock, on_state_change=on_change
        )
        fail(breaker, 2)
        name, old, new, stats = seen[0]
        assert (name, old, new) == ("inventory", BreakerState.CLOSED, BreakerState.OPEN)
        assert stats.consecutive_failures == 2

    def test_a_failing_callback_is_logged_not_raised(
        self, clock: FakeClock, caplog: pytest.LogCaptureFixture
    ) -> None:
        """
        A callback that raises does not break the call, nor the transition.
        """

        def boom(*args: Any) -> None:
            raise RuntimeError("observer bug")

        breaker = CircuitBreaker("inventory", BreakerPolicy(failure_threshold=1), clock=clock,
                                 on_state_change=boom)
        with caplog.at_level(logging.ERROR, logger="resilient_client"):
            fail(breaker)
        assert breaker.state == "open"
        assert "observer bug" in caplog.text

    def test_no_callback_for_no_change(self, clock: FakeClock) -> None:
        """
        Failures while open, and .close() on a closed breaker, report nothing.
        """
        changes: list[Any] = []
        breaker = make(clock, changes, failure_threshold=1)
        breaker.close()
        fail(breaker)
        breaker.record(success=False, is_trial=False)
        assert [(o, n) for o, n, _ in changes] == [("closed", "open")]

    def test_pybreaker_listeners(self, clock: FakeClock) -> None:
        """
        pybreaker.CircuitBreakerListener instances hear state changes (with
        pybreaker's state names), calls, successes and failures.
        """
        events: list[tuple[str, ...]] = []

        class Listener(pybreaker.CircuitBreakerListener):
            def before_call(self, cb: Any, func: Any, *args: Any, **kwargs: Any) -> None:
                events.append(("before_call", cb.name))

            def success(self, cb: Any) -> None:
                events.append(("success",))

            def failure(self, cb: Any, exc: BaseException) -> None:
                events.append(("failure", str(exc)))

            def state_change(self, cb: Any, old_state: Any, new_state: Any) -> None:
                events.append(("state_change", old_state.name, new_state.name))

        listener = Listener()
        breaker = make(clock, failure_threshold=1, slow_call_duration=1.0)
        breaker.add_listener(listener)
        assert breaker.listeners == (listener,)
        succeed(breaker)
        succeed(breaker, duration=2.0)
        assert events == [
            ("before_call", "inventory"),
            ("success",),
            ("before_call", "inventory"),
            ("state_change", "closed", "open"),
            ("failure", "slow call (2.000s)"),
        ]
        breaker.remove_listener(listener)
        breaker.close()
        succeed(breaker)
        assert len(events) == 5


class TestStats:
    def test_stats_and_repr(self, clock: FakeClock) -> None:
        """
        stats() is a frozen snapshot; memory breakers report shared=None.
        """
        breaker = make(clock, failure_threshold=2)
        succeed(breaker)
        fail(breaker)
        stats = breaker.stats()
        assert stats == BreakerStats(
            name="inventory", state=BreakerState.CLOSED, consecutive_failures=1,
            failures=1, successes=1, rejected=0, retry_at=None, shared=None,
        )
        assert repr(breaker) == "<CircuitBreaker 'inventory' closed>"
        assert str(BreakerState.HALF_OPEN) == "half-open" == pybreaker.STATE_HALF_OPEN


# -- a property: never a call through an open breaker before reset_timeout ----


class BreakerMachine(RuleBasedStateMachine):
    """
    Random interleavings of calls starting, ending and being abandoned,
    forced opens and closes, and time passing. A model built from the
    on_state_change callback says when the breaker opened; no call may get
    through while it is open and reset_timeout has not passed, or while it is
    forced open, and there is never more than one trial in flight.
    """

    @initialize(
        threshold=st.integers(1, 4),
        reset=st.floats(0.001, 5.0),
        rate=st.booleans(),
        slow=st.none() | st.floats(0.01, 2.0),
    )
    def build(self, threshold: int, reset: float, rate: bool, slow: float | None) -> None:
        self.clock = FakeClock(1000.0)
        self.reset = reset
        self.opened_at: float | None = None  # when it last opened, per the callback
        self.forced = False
        # (is_trial, started, epoch): an operator's open() or close() starts a
        # new epoch; a trial from an earlier one is no longer *the* trial (the
        # breaker dropped its lease), so the next half-open may have its own.
        self.in_flight: list[tuple[bool, float, int]] = []
        self.epoch = 0
        policy = BreakerPolicy(
            failure_threshold=threshold, reset_timeout=reset, slow_call_duration=slow,
            mode=BreakerMode.RATE if rate else BreakerMode.CONSECUTIVE, min_calls=threshold, window=3.0,
        )

        def on_change(breaker: CircuitBreaker, old: BreakerState, new: BreakerState) -> None:
            if new is BreakerState.OPEN:
                self.opened_at = self.clock.monotonic()
            elif new is BreakerState.CLOSED:
                self.opened_at = None

        self.breaker = CircuitBreaker("x", policy, clock=self.clock, on_state_change=on_change)

    def _start(self) -> bool | None:
        """before_call(), checked against the model; None when refused."""
        now = self.clock.monotonic()
        blocked = self.forced or (self.opened_at is not None and now < self.opened_at + self.reset)
        try:
            is_trial = self.breaker.before_call()
        except CircuitOpenError:
            return None
        assert not blocked, "a call got through an open breaker before reset_timeout"
        if is_trial:
            others = [s for t, s, e in self.in_flight if t and e == self.epoch]
            assert all(now >= s + _TRIAL_LEASE_MIN for s in others), "two trials at once"
        return is_trial

    @rule()
    def start_call(self) -> None:
        is_trial = self._start()
        if is_trial is not None:
            self.in_flight.append((is_trial, self.clock.monotonic(), self.epoch))

    @rule(success=st.booleans())
    def quick_call(self, success: bool) -> None:
        is_trial = self._start()
        if is_trial is not None:
            self.breaker.record(success=success, is_trial=is_trial)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data(), success=st.booleans(), duration=st.floats(0, 3))
    def end_call(self, data: st.DataObject, success: bool, duration: float) -> None:
        i = data.draw(st.integers(0, len(self.in_flight) - 1))
        is_trial, _, _ = self.in_flight.pop(i)
        self.breaker.record(success=success, is_trial=is_trial, duration=duration)

    @precondition(lambda self: self.in_flight)
    @rule(data=st.data())
    def abandon_call(self, data: st.DataObject) -> None:
        i = data.draw(st.integers(0, len(self.in_flight) - 1))
        is_trial, _, _ = self.in_flight.pop(i)
        if is_trial:
            self.breaker.release_trial()

    # Waits are fractions of reset_timeout, so that the boundary is hit.
    @rule(fraction=st.sampled_from([0.0, 0.5, 0.9, 0.999, 1.0, 1.001, 2.0]) | st.floats(0, 3))
    def wait(self, fraction: float) -> None:
        self.clock.advance(fraction * self.reset)

    @rule()
    def force_open(self) -> None:
        self.breaker.open()
        self.forced = True
        self.epoch += 1

    @rule()
    def force_close(self) -> None:
        self.breaker.close()
        self.forced = False
        self.epoch += 1

    @invariant()
    def state_agrees(self) -> None:
        state = self.breaker.state
        if self.forced:
            assert state == "open"
        elif self.opened_at is None:
            assert state in ("closed", "half-open")
        elif self.clock.monotonic() < self.opened_at + self.reset:
            assert state == "open"


BreakerMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)
test_breaker_state_machine = BreakerMachine.TestCase


class TestPybreakerVocabulary:
    def test_state_names_are_pybreakers(self) -> None:
        """BreakerState's values are pybreaker's own state names."""
        import pybreaker

        from resilient_client import BreakerState

        assert BreakerState.CLOSED == pybreaker.STATE_CLOSED
        assert BreakerState.OPEN == pybreaker.STATE_OPEN
        assert BreakerState.HALF_OPEN == pybreaker.STATE_HALF_OPEN

    def test_importing_the_package_does_not_import_pybreaker_or_redis(self) -> None:
        """pybreaker (and the redis-py it pulls in) load only for a breaker stored in Redis."""
        import subprocess
        import sys

        code = "import sys, resilient_client; print('pybreaker' in sys.modules, 'redis' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
        assert out.stdout.split() == ["False", "False"], out.stderr


class TestRetryInDuringATrial:
    def test_a_caller_refused_while_the_trial_runs_is_told_to_wait_not_zero(self, clock) -> None:
        """Half-open with the trial in flight: retry_in is the reset_timeout, never 0 (no spinning)."""
        breaker = make(clock, failure_threshold=1, reset_timeout=30.0)
        fail(breaker)
        clock.advance(31)
        assert breaker.before_call() is True  # the trial
        with pytest.raises(CircuitOpenError) as info:
            breaker.before_call()
        assert info.value.retry_in == pytest.approx(30.0)

"""
Tests for the retry budget (`_budget.RetryBudget`) and the amplification it
bounds: under a full outage, calls reaching the peer stay near
``(1 + ratio) x`` the calls made, plus the ``min_per_second`` reserve.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
from retry_helpers import PEER, FakeClock, retry_config, session_with

from resilient_client import BudgetPolicy
from resilient_client._budget import RetryBudget

URL = PEER + "/items/1"


def budget(
    ratio: float = 0.2, min_per_second: float = 0.0, window: float = 10.0
) -> tuple[RetryBudget, FakeClock]:
    clock = FakeClock()
    return RetryBudget(
        BudgetPolicy(ratio=ratio, min_per_second=min_per_second, window=window), clock
    ), clock


def spend_all(b: RetryBudget, limit: int = 100_000) -> int:
    """How many retries the budget grants now (bounded loop)."""
    for n in range(limit):
        if not b.try_spend():
            return n
    raise AssertionError("budget never ran out")


class TestRetryBudget:
    def test_reserve_is_min_per_second_times_window(self):
        """With no traffic, min_per_second x window retries are available, then none."""
        b, _ = budget(ratio=0.0, min_per_second=2.0, window=10.0)
        assert spend_all(b) == 20

    def test_ratio_of_first_tries(self):
        """With no reserve, retries may add at most ratio x the first tries."""
        b, _ = budget(ratio=0.2)
        for _ in range(50):
            b.record_request()
        assert spend_all(b) == 10

    def test_ratio_and_reserve_add_up(self):
        """The allowance is ratio x first tries plus the reserve."""
        b, _ = budget(ratio=0.2, min_per_second=1.0)
        for _ in range(50):
            b.record_request()
        assert spend_all(b) == 10 + 10

    def test_retries_do_not_earn_retries(self):
        """Retries are not first tries: spending does not raise the allowance."""
        b, _ = budget(ratio=0.5)
        for _ in range(10):
            b.record_request()
        assert spend_all(b) == 5
        assert b.snapshot() == (10, 5)

    def test_first_tries_slide_out_of_the_window(self):
        """First tries older than the window no longer earn retries."""
        b, clock = budget(ratio=0.2)
        for _ in range(100):
            b.record_request()
        clock.advance(10.0)
        assert spend_all(b) == 0

    def test_spent_retries_slide_out_of_the_window(self):
        """Once the window has passed, spent retries are forgotten and the reserve is back."""
        b, clock = budget(ratio=0.0, min_per_second=1.0)
        assert spend_all(b) == 10
        clock.advance(10.0)
        assert spend_all(b) == 10

    def test_window_slides_bucket_by_bucket(self):
        """Half-way through, only the first tries of the newer half still count."""
        b, clock = budget(ratio=0.2)
        for _ in range(50):
            b.record_request()
        clock.advance(5.0)
        for _ in range(50):
            b.record_request()
        clock.advance(5.0)  # the first 50 are now 10 s old
        assert b.snapshot() == (50, 0)
        assert spend_all(b) == 10

    def test_long_gap_clears_everything(self):
        """A gap of many windows leaves no stale bucket behind."""
        b, clock = budget(ratio=0.2, min_per_second=1.0)
        for _ in range(100):
            b.record_request()
        spend_all(b)
        clock.advance(1234.5)
        assert b.snapshot() == (0, 0)
        assert spend_all(b) == 10

    def test_defaults(self):
        """The default budget is ratio 0.2 plus 10 retries per second over 10 s."""
        p = BudgetPolicy()
        assert (p.ratio, p.min_per_second, p.window) == (0.2, 10.0, 10.0)

    def test_repr_shows_the_counts(self):
        """The repr reads the ratio and the window's counts."""
        b, _ = budget(ratio=0.2, min_per_second=1.0)
        b.record_request()
        b.try_spend()
        assert repr(b) == "<RetryBudget ratio=0.2 requests=1 retries=1>"

    def test_thread_safe(self):
        """Under concurrent use no count is lost and no more is granted than the allowance."""
        b, _ = budget(ratio=0.2, min_per_second=1.0)
        granted = [0] * 8

        def worker(i: int) -> None:
            for _ in range(2000):
                b.record_request()
                granted[i] += b.try_spend() + b.try_spend()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        requests, retries = b.snapshot()
        assert requests == 16_000
        assert retries == sum(granted)
        assert retries <= 0.2 * 16_000 + 10


def simulate_outage(
    policy: BudgetPolicy, per_second: float, seconds: float, attempts: int = 3
) -> float:
    """Calls at a steady rate against a peer that fails everything; returns peer calls per call."""
    clock = FakeClock()
    b = RetryBudget(policy, clock)
    calls = int(per_second * seconds)
    peer = 0
    for _ in range(calls):
        b.record_request()
        peer += 1
        for _ in range(attempts - 1):
            if not b.try_spend():
                break
            peer += 1
        clock.advance(1.0 / per_second)
    return peer / calls


class TestAmplificationBound:
    """The budget alone, over long simulated outages (fast: no session)."""

    @pytest.mark.parametrize("per_second", [200, 500, 2000])
    def test_steady_outage_stays_near_one_plus_ratio(self, per_second):
        """
        At R calls/s for a minute, the peer sees at most 1 + ratio + min_per_second / R times the
        calls (plus the initial reserve).
        """
        amplification = simulate_outage(BudgetPolicy(), per_second, 60.0)
        bound = 1 + 0.2 + 10.0 / per_second
        start_burst = 10.0 * 10 / (per_second * 60)  # the reserve is there from the first second
        assert bound - 0.01 <= amplification <= bound + start_burst
        if per_second >= 500:
            assert amplification <= 1.25

    def test_low_traffic_keeps_its_retries(self):
        """At one call per second the reserve lets every call make all its attempts."""
        assert simulate_outage(BudgetPolicy(), 1, 100.0) == 3.0

    def test_zero_ratio_and_reserve_means_no_retries(self):
        """ratio 0 and min_per_second 0 grant no retry at all."""
        assert simulate_outage(BudgetPolicy(ratio=0.0, min_per_second=0.0), 100, 10.0) == 1.0


class TestAmplification:
    """A scripted full outage through a session: every attempt answers 503, 3 attempts per call."""

    def session(self, budget_cfg: object) -> tuple[Any, Any, FakeClock]:
        config = retry_config(
            {"attempts": 3, "backoff": {"initial": 0.0, "max": 0.0, "jitter": "none"}},
            budget=budget_cfg,
            timeout={"total": None},
        )
        session, adapter, clock = session_with([503], config)
        return session, adapter, clock

    def test_without_budget_every_call_makes_every_attempt(self):
        """With no budget, an outage triples the load: the storm the budget prevents."""
        session, adapter, _ = self.session(None)
        for _ in range(200):
            session.get(URL)
        assert len(adapter.requests) == 600

    def test_budget_bounds_a_steady_outage(self):
        """
        At 200 calls/s for 10 s, the peer sees at most (1 + ratio) x calls + min_per_second x
        window.
        """
        session, adapter, clock = self.session(
            {"ratio": 0.2, "min_per_second": 1.0, "window": 10.0}
        )
        for _ in range(2000):
            session.get(URL)
            clock.advance(1 / 200)
        retries = len(adapter.requests) - 2000
        assert (
            0.2 * 2000 <= retries <= 0.2 * 2000 + 10 + 10
        )  # ratio, reserve, one more second of reserve
        assert len(adapter.requests) / 2000 <= 1.21

    def test_concurrent_callers_share_one_budget(self):
        """
        Eight threads in an outage get at most ratio x calls + reserve retries between them, and no
        more.
        """
        session, adapter, _ = self.session({"ratio": 0.2, "min_per_second": 1.0, "window": 10.0})

        def caller() -> None:
            for _ in range(100):
                session.get(URL)

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        retries = len(adapter.requests) - 800
        assert retries <= 0.2 * 800 + 10
        assert retries >= 0.2 * 800  # nearly all of the allowance was usable

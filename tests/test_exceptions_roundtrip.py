"""
The exceptions, sync and async, as other code handles them: pickled
(multiprocessing, Celery, concurrent.futures ship them so), copied, and
read by a person (their messages say what happened: forced open or not, a
trial in flight, a deadline inherited from the caller).
"""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import requests
from peers import Peer, answer

import resilient_client
from resilient_client import CircuitBreaker, ResilientSession
from resilient_client._async_errors import (
    AsyncBulkheadFull,
    AsyncCircuitOpenError,
    AsyncDeadlineExceeded,
    AsyncThrottled,
)
from resilient_client._policy import BreakerPolicy
from resilient_client.exceptions import (
    BulkheadFull,
    CircuitOpenError,
    DeadlineExceeded,
    ResilienceError,
    Throttled,
)
from resilient_client.testing import FakeClock

REQUEST = httpx.Request("GET", "https://x.internal/a")

EXCEPTIONS: list[Callable[[], ResilienceError]] = [
    lambda: CircuitOpenError("svc", None),
    lambda: CircuitOpenError("svc", 12.0, retry_in=3.0),
    lambda: CircuitOpenError("svc", 12.0, retry_in=3.0, trial_in_flight=True),
    lambda: DeadlineExceeded("svc", 1.5),
    lambda: DeadlineExceeded("svc", 0.0, inherited=True),
    lambda: BulkheadFull("svc", 3),
    lambda: Throttled("svc", "retry_after", 2.0),
    lambda: AsyncCircuitOpenError("svc", 12.0, retry_in=3.0, request=REQUEST),
    lambda: AsyncDeadlineExceeded("svc", 1.5, request=REQUEST),
    lambda: AsyncBulkheadFull("svc", 3, request=REQUEST),
    lambda: AsyncThrottled("svc", request=REQUEST),
]
ROUND_TRIPS: dict[str, Callable[[Any], Any]] = {
    "pickle": lambda e: pickle.loads(pickle.dumps(e)),
    "copy": copy.copy,
    "deepcopy": copy.deepcopy,
}


@pytest.mark.parametrize("how", ROUND_TRIPS)
@pytest.mark.parametrize("make", EXCEPTIONS)
def test_every_exception_round_trips_intact(make: Callable[[], ResilienceError], how: str) -> None:
    """The same class, message and attributes after the trip (the message never nests)."""
    exc = make()
    again = ROUND_TRIPS[how](exc)
    assert type(again) is type(exc)
    assert str(again) == str(exc) and again.args == exc.args
    assert {k: v for k, v in vars(again).items() if k != "_request"} == {
        k: v for k, v in vars(exc).items() if k != "_request"}
    if isinstance(exc, httpx.HTTPError):
        assert again.request.url == REQUEST.url


def test_the_async_throttled_is_both_names() -> None:
    """As CONTRACT.md says: a resilient_client.Throttled and an httpx.ConnectError."""
    exc = AsyncThrottled("svc", "retry_after", 1.0, request=REQUEST)
    assert isinstance(exc, resilient_client.Throttled)
    assert isinstance(exc, httpx.ConnectError) and isinstance(exc, ResilienceError)
    assert exc.request is REQUEST and exc.retry_in == 1.0


class TestMessages:
    def test_retry_in_without_retry_at_is_not_forced_open(self) -> None:
        assert "may go through in 3.0 s" in str(CircuitOpenError("svc", retry_in=3.0))
        assert "forced open" in str(CircuitOpenError("svc"))

    def test_a_refusal_while_the_trial_is_in_flight_says_so(self) -> None:
        clock = FakeClock()
        breaker = CircuitBreaker("svc", BreakerPolicy(failure_threshold=1, reset_timeout=0.5), clock=clock)
        breaker.record(success=False, is_trial=False)
        clock.advance(1.0)
        assert breaker.before_call() is True  # the trial, in flight
        with pytest.raises(CircuitOpenError) as info:
            breaker.before_call()
        assert info.value.trial_in_flight
        assert "a trial call is in flight" in str(info.value)
        assert "may go through in" not in str(info.value)

    def test_an_inherited_deadline_says_it_was_inherited(self) -> None:
        """An inbound deadline of 0 (a header, deadline()) is the caller's, not the endpoint's total."""
        with Peer() as peer:
            peer.on("/ok", answer(200, b"ok"))
            session = ResilientSession({"defaults": {"timeout": {"total": 5}}})
            with resilient_client.deadline(0), pytest.raises(DeadlineExceeded) as info:
                session.get(peer.url("/ok"))
        assert info.value.inherited and "inherited from its caller" in str(info.value)
        assert isinstance(info.value, requests.Timeout)
        own = DeadlineExceeded("svc", 5)
        assert not own.inherited and "its total deadline of 5s" in str(own)

"""
Security properties: a hostile peer cannot make the client sleep for long,
and redirects hand credentials on exactly as requests does.

* ``Retry-After`` (fuzzed with hypothesis, on a fake clock, through
  ``responses``): no sleep is ever longer than ``max_retry_after``, and the
  sleeps of one call never reach its deadline. A value that is unparseable,
  negative, or over ``max_retry_after`` is not slept on: the response that
  carried it is returned at once (the behaviour docs/reliability.md names).
* Redirects, on real loopback peers: for a redirect to the same host and to
  another host, the headers that reach the target (Authorization, Cookie,
  Proxy-Authorization, a configured secret header) are those that
  requests.Session would send.

Secrets in logs, events, errors and reprs are checked across the whole fault
matrix (test_fault_matrix.py).
"""

from __future__ import annotations

import email.utils
import json
import time
from typing import Any

import pytest
import requests
import responses
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from peers import Peer, answer, echo, redirect
from test_fuzz import RETRY_AFTER, FakeClock

from resilient_client import ResilientSession

URL = "http://peer.test/pay"
#: HTTP-dates up to 12 days ahead of the (real) wall clock the library reads them against.
FUTURE_DATES = st.floats(0, 10**6).map(lambda s: email.utils.formatdate(time.time() + s, usegmt=True))


def session_for(*, total: float | None, max_retry_after: float, attempts: int, clock: FakeClock,
                respect: bool = True) -> ResilientSession:
    return ResilientSession(
        {"defaults": {
            "timeout": {"connect": 1, "read": 1, "total": total},
            "retry": {"attempts": attempts, "max_retry_after": max_retry_after,
                      "respect_retry_after": respect,
                      "backoff": {"initial": 0.01, "max": 0.05}},
            "breaker": None,
            "budget": None,
        }},
        clock=clock,
    )


class TestRetryAfterCannotStallTheClient:
    @settings(max_examples=120, deadline=None, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(
        value=RETRY_AFTER | FUTURE_DATES,
        status=st.sampled_from([429, 503]),
        max_retry_after=st.floats(0, 120),
        total=st.none() | st.floats(0.01, 600),
        attempts=st.integers(2, 6),
    )
    @example(value="86400", status=503, max_retry_after=30.0, total=None, attempts=3)
    @example(value="29", status=429, max_retry_after=30.0, total=10.0, attempts=3)
    def test_no_sleep_passes_max_retry_after_or_the_deadline(
        self, value: str, status: int, max_retry_after: float, total: float | None, attempts: int
    ) -> None:
        """
        Whatever Retry-After says, no sleep exceeds max_retry_after and sleeps never reach the deadline.
        """
        clock = FakeClock()
        started = clock.monotonic()
        with responses.RequestsMock() as mock:
            mock.add("GET", URL, status=status, headers={"Retry-After": value})
            with session_for(total=total, max_retry_after=max_retry_after, attempts=attempts,
                             clock=clock) as session:
                resp = session.get(URL)
        assert resp.status_code == status  # the last answer, never an error: nothing ran out
        assert all(s <= max_retry_after for s in clock.sleeps), clock.sleeps
        if total is not None:
            assert clock.monotonic() - started < total
        assert resp.attempts == len(clock.sleeps) + 1 <= attempts

    @pytest.mark.parametrize("value", ["99999999999", "-1", "0.5", "soon", "", "²", "1e3", "Thu, 99 Foo"])
    @pytest.mark.parametrize("status", [429, 503])
    def test_a_hostile_retry_after_returns_the_response_at_once(self, value: str, status: int) -> None:
        """
        An unparseable, negative or too large Retry-After is not slept on: that response returns at once.
        """
        clock = FakeClock()
        with responses.RequestsMock() as mock:
            mock.add("GET", URL, status=status, headers={"Retry-After": value})
            with session_for(total=10.0, max_retry_after=30.0, attempts=3, clock=clock) as session:
                resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps) == (status, 1, [])

    def test_a_retry_after_past_the_deadline_returns_the_response_at_once(self) -> None:
        """
        A Retry-After within max_retry_after but past the deadline is not slept on either.
        """
        clock = FakeClock()
        with responses.RequestsMock() as mock:
            mock.add("GET", URL, status=503, headers={"Retry-After": "20"})
            with session_for(total=10.0, max_retry_after=30.0, attempts=3, clock=clock) as session:
                resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps) == (503, 1, [])

    def test_retry_after_ignored_when_not_respected(self) -> None:
        """
        With respect_retry_after off, a huge Retry-After is ignored and the bounded backoff applies.
        """
        clock = FakeClock()
        with responses.RequestsMock() as mock:
            mock.add("GET", URL, status=503, headers={"Retry-After": "86400"})
            with session_for(total=10.0, max_retry_after=30.0, attempts=3, clock=clock, respect=False) as s:
                resp = s.get(URL)
        assert resp.attempts == 3 and len(clock.sleeps) == 2 and all(x <= 0.05 for x in clock.sleeps)


# -- redirects --------------------------------------------------------------------------------

SENSITIVE = ("authorization", "cookie", "proxy-authorization", "x-api-key")


def received(session: requests.Session, start: str, **kwargs: Any) -> dict[str, str]:
    """The sensitive headers that reached the redirect's target, as it echoed them."""
    session.trust_env = False  # no proxies or netrc from the environment
    with session:
        resp = session.get(start, **kwargs)
    assert resp.status_code == 200, resp.text
    headers = json.loads(resp.text)["headers"]
    return {k: v for k, v in headers.items() if k in SENSITIVE}


def resilient() -> ResilientSession:
    return ResilientSession({"secrets": {"headers": ["X-Api-Key"]}})


CREDENTIALS: list[dict[str, Any]] = [
    {"headers": {"Authorization": "Bearer tok-123"}},
    {"auth": ("user", "pass")},
    {"headers": {"Cookie": "sid=abc"}},
    {"headers": {"Proxy-Authorization": "Basic eA=="}},
    {"headers": {"X-Api-Key": "key-456"}},
]


class TestRedirectsHandCredentialsOnLikeRequests:
    @pytest.mark.parametrize(
        "kwargs", CREDENTIALS, ids=["bearer", "basic-auth", "cookie", "proxy-auth", "secret-header"]
    )
    @pytest.mark.parametrize("where", ["same-host", "other-host"])
    def test_the_target_receives_what_requests_would_send(self, kwargs: dict[str, Any], where: str) -> None:
        """
        After a redirect, the target gets exactly the credentials requests.Session would send it.
        """
        with Peer() as origin, Peer() as target:
            target.on("/land", echo())
            host = "127.0.0.1" if where == "same-host" else "localhost"
            origin.on("/go", redirect(target.url("/land", host=host)))
            origin.on("/land", echo())
            start = origin.url("/go")
            theirs = received(requests.Session(), start, **kwargs)
            ours = received(resilient(), start, **kwargs)
        assert ours == theirs
        if where == "other-host":
            assert "authorization" not in ours  # requests drops it for another host

    def test_a_session_cookie_is_not_sent_to_another_host(self) -> None:
        """
        A cookie the origin set is not sent on to another host, with either session.
        """
        with Peer() as origin, Peer() as target:
            target.on("/land", echo())
            origin.on("/login", answer(200, b"ok", [("Set-Cookie", "sid=zzz; Path=/")]))
            origin.on("/go", redirect(target.url("/land", host="localhost")))
            results = []
            for session in (requests.Session(), resilient()):
                session.trust_env = False
                with session:
                    session.get(origin.url("/login"))
                    resp = session.get(origin.url("/go"))
                results.append(json.loads(resp.text)["headers"].get("cookie"))
        assert results == [None, None]

"""
Tests for deadline propagation (`_propagation`, the ``propagation`` policy
section and its wiring in `ResilientSession`).

Outbound, each attempt carries the call's remaining time in milliseconds;
inbound, the middlewares and `deadline()` set a scope in which every call
uses ``min(own total, inherited remaining)`` and may have retries turned
off. All on a fake clock, with `responses` as the peer: nothing sleeps.
"""

from __future__ import annotations

import asyncio
import math
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import requests
import responses

import resilient_client
from resilient_client import (
    ASGIDeadlineMiddleware,
    DeadlineExceeded,
    DeadlineMiddleware,
    GaveUp,
    PropagationPolicy,
    ResilientSession,
    current_deadline,
    deadline,
)
from resilient_client._config import load_config
from resilient_client._propagation import parse_attempt, parse_timeout_ms
from resilient_client.exceptions import ConfigError
from resilient_client.testing import FakeClock

URL = "http://peer.internal/items"
Peer = responses.RequestsMock
PATH = "defaults.propagation"
HEADER = "X-Request-Timeout-Ms"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(100.0)


@pytest.fixture
def peer() -> Iterator[responses.RequestsMock]:
    with responses.RequestsMock(assert_all_requests_are_fired=False) as rsps:
        yield rsps


def session(clock: FakeClock, **defaults: Any) -> ResilientSession:
    """A session whose ``defaults`` are *defaults*, without breaker or budget to get in the way."""
    base: dict[str, Any] = {"breaker": None, "budget": None}
    base.update(defaults)
    return ResilientSession({"defaults": base}, clock=clock)


class Recorder:
    """A `responses` callback that records the deadline header, then moves the clock."""

    def __init__(self, clock: FakeClock, status: int = 200, takes: float = 0.0) -> None:
        self.clock = clock
        self.status = status
        self.takes = takes
        self.values: list[str | None] = []
        self.requests: list[requests.PreparedRequest] = []

    def __call__(self, request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
        self.values.append(request.headers.get(HEADER))
        self.requests.append(request)
        self.clock.advance(self.takes)
        return self.status, {}, b"ok"


def serve(peer: Peer, recorder: Recorder) -> Recorder:
    peer.add_callback("GET", URL, callback=recorder)
    return recorder


# -- the policy section ------------------------------------------------------------


class TestPropagationPolicy:
    def test_off_by_default(self) -> None:
        """
        The built-in defaults send no deadline header.
        """
        assert load_config(None).defaults.propagation is None

    def test_empty_mapping_turns_it_on_with_the_documented_header(self) -> None:
        """
        ``propagation: {}`` turns it on with ``X-Request-Timeout-Ms`` and no per-attempt cap.
        """
        policy = load_config({"defaults": {"propagation": {}}}).defaults.propagation
        assert policy == PropagationPolicy("X-Request-Timeout-Ms", per_attempt=False)

    def test_endpoint_merges_over_defaults_key_by_key(self) -> None:
        """
        An endpoint's propagation keys are merged over those of ``defaults``.
        """
        cfg = load_config({
            "defaults": {"propagation": {"deadline_header": "X-Deadline"}},
            "endpoints": [{"match": "http://a.internal/", "propagation": {"per_attempt": True}}],
        })
        expected = PropagationPolicy("X-Deadline", per_attempt=True)
        assert cfg.endpoints[0].policy.propagation == expected

    def test_endpoint_can_turn_it_on_alone(self) -> None:
        """
        Propagation can be on for one endpoint while the defaults keep it off.
        """
        cfg = load_config({"endpoints": [{"match": "http://a.internal/", "propagation": {}}]})
        assert cfg.defaults.propagation is None
        assert cfg.endpoints[0].policy.propagation == PropagationPolicy()

    @pytest.mark.parametrize("off", [None, False], ids=["null", "toml-false"])
    def test_endpoint_can_turn_it_off(self, off: object) -> None:
        """
        ``null`` (or TOML's ``false``) in an endpoint switches propagation off for it.
        """
        cfg = load_config({
            "defaults": {"propagation": {}},
            "endpoints": [{"match": "http://a.internal/", "propagation": off}],
        })
        assert cfg.endpoints[0].policy.propagation is None

    @pytest.mark.parametrize(
        ("raw", "path", "problem"),
        [
            ({"deadline_header": "bad header"}, f"{PATH}.deadline_header", "HTTP header name"),
            ({"deadline_header": ""}, f"{PATH}.deadline_header", "HTTP header name"),
            ({"per_attempt": "yes"}, f"{PATH}.per_attempt", "true or false"),
            ({"header": "X-T"}, f"{PATH}.header", "unknown key"),
            ("on", PATH, "mapping"),
        ],
    )
    def test_bad_values_name_the_key_path(self, raw: object, path: str, problem: str) -> None:
        """
        A bad propagation value is a ConfigError naming its key path.
        """
        with pytest.raises(ConfigError) as info:
            load_config({"defaults": {"propagation": raw}})
        assert info.value.path == path
        assert problem in info.value.problem


# -- outbound ------------------------------------------------------------------------


class TestOutboundHeader:
    def test_sends_the_remaining_milliseconds(self, clock: FakeClock, peer: Peer) -> None:
        """
        With propagation on, the request carries the call's remaining time in whole milliseconds.
        """
        rec = serve(peer, Recorder(clock))
        session(clock, timeout={"total": 2.5}, propagation={}).get(URL)
        assert rec.values == ["2500"]

    def test_no_header_when_off(self, clock: FakeClock, peer: Peer) -> None:
        """
        With propagation off (the default), no deadline header is sent.
        """
        rec = serve(peer, Recorder(clock))
        session(clock, timeout={"total": 2.5}).get(URL)
        assert rec.values == [None]

    def test_no_header_without_a_deadline(self, clock: FakeClock, peer: Peer) -> None:
        """
        A call with no deadline (``total: null``, nothing inherited) sends no header.
        """
        rec = serve(peer, Recorder(clock))
        session(clock, timeout={"total": None}, propagation={}).get(URL)
        assert rec.values == [None]

    def test_each_retry_sends_the_time_left_at_that_attempt(
        self, clock: FakeClock, peer: Peer
    ) -> None:
        """
        Each attempt sends what is left then: the earlier attempts and backoff sleeps are deducted.
        """
        rec = serve(peer, Recorder(clock, status=503, takes=0.25))
        s = session(
            clock,
            timeout={"total": 2.0},
            propagation={},
            retry={"attempts": 3, "backoff": {"initial": 0.125, "multiplier": 2, "jitter": "none"}},
        )
        assert s.get(URL).attempts == 3  # type: ignore[attr-defined]
        # 2.0; 2.0 - 0.25 - 0.125; 1.625 - 0.25 - 0.25
        assert rec.values == ["2000", "1625", "1125"]

    def test_per_attempt_caps_by_the_read_timeout(self, clock: FakeClock, peer: Peer) -> None:
        """
        With ``per_attempt``, the value is also capped by the attempt's read timeout.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"read": 0.75, "total": 2.0}, propagation={"per_attempt": True})
        s.get(URL)
        assert rec.values == ["750"]

    def test_per_attempt_sends_the_read_timeout_without_a_deadline(
        self, clock: FakeClock, peer: Peer
    ) -> None:
        """
        With ``per_attempt`` and no deadline, the attempt's read timeout is sent.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"read": 0.75, "total": None}, propagation={"per_attempt": True})
        s.get(URL)
        assert rec.values == ["750"]

    def test_header_name_is_configurable_per_endpoint(
        self, clock: FakeClock, peer: Peer
    ) -> None:
        """
        An endpoint can send the deadline under its own header name (e.g. Envoy's).
        """
        seen: list[str | None] = []

        def record(request: requests.PreparedRequest) -> tuple[int, dict[str, str], bytes]:
            seen.append(request.headers.get("x-envoy-expected-rq-timeout-ms"))
            return 200, {}, b""

        peer.add_callback("GET", URL, callback=record)
        s = ResilientSession({
            "endpoints": [{
                "match": "http://peer.internal/",
                "timeout": {"total": 1.5},
                "propagation": {"deadline_header": "x-envoy-expected-rq-timeout-ms"},
            }],
        }, clock=clock)
        s.get(URL)
        assert seen == ["1500"]

    def test_callers_request_object_is_left_alone(self, clock: FakeClock, peer: Peer) -> None:
        """
        The header goes on a copy: the PreparedRequest the caller passed to send() is unchanged.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 2.0}, propagation={})
        prepared = requests.Request("GET", URL).prepare()
        s.send(prepared)
        assert HEADER not in prepared.headers
        assert rec.values == ["2000"]

    def test_rounds_down(self, clock: FakeClock, peer: Peer) -> None:
        """
        The value is rounded down, never promising the callee time the caller does not have.
        """
        rec = serve(peer, Recorder(clock))
        session(clock, timeout={"total": 0.0019}, propagation={}).get(URL)
        assert rec.values == ["1"]


# -- inherited deadlines -------------------------------------------------------------


class TestInheritedDeadline:
    def test_inherited_deadline_shortens_the_call(self, clock: FakeClock, peer: Peer) -> None:
        """
        Inside ``deadline(s)``, a call with a longer own total gets only what is left of *s*.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0}, propagation={})
        with deadline(0.75, clock=clock):
            clock.advance(0.25)
            s.get(URL)
        assert rec.values == ["500"]

    def test_own_total_wins_when_shorter(self, clock: FakeClock, peer: Peer) -> None:
        """
        An inherited deadline never lengthens the call's own total.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 2.0}, propagation={})
        with deadline(60, clock=clock):
            s.get(URL)
        assert rec.values == ["2000"]

    def test_applies_to_calls_without_a_total(self, clock: FakeClock, peer: Peer) -> None:
        """
        A call with ``total: null`` still gets the inherited deadline.
        """
        rec = serve(peer, Recorder(clock))
        with deadline(0.5, clock=clock):
            session(clock, timeout={"total": None}, propagation={}).get(URL)
        assert rec.values == ["500"]

    def test_inherited_deadline_is_enforced(self, clock: FakeClock, peer: Peer) -> None:
        """
        The inherited deadline stops retries: none starts once it has passed.
        """
        rec = serve(peer, Recorder(clock, status=503, takes=0.4))
        retry = {"attempts": 5, "backoff": {"jitter": "none"}}
        s = session(clock, timeout={"total": 10.0}, retry=retry)
        with deadline(1.0, clock=clock):
            resp = s.get(URL)
        assert resp.attempts == len(rec.values) == 2  # type: ignore[attr-defined]

    @pytest.mark.parametrize("seconds", [0, -3, -math.inf])
    def test_spent_deadline_fails_without_touching_the_network(
        self, clock: FakeClock, peer: Peer, seconds: float
    ) -> None:
        """
        A call whose inherited deadline is already spent raises DeadlineExceeded and sends nothing.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0}, propagation={})
        with deadline(seconds, clock=clock), pytest.raises(DeadlineExceeded):
            s.get(URL)
        assert rec.values == []

    def test_deadline_spent_while_working(self, clock: FakeClock, peer: Peer) -> None:
        """
        A deadline that passes before the call starts fails the call at once.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0})
        with deadline(1.0, clock=clock):
            clock.advance(1.5)
            with pytest.raises(DeadlineExceeded) as info:
                s.get(URL)
        assert rec.values == []
        assert isinstance(info.value, requests.Timeout)

    def test_spent_deadline_does_not_touch_the_breaker(self, clock: FakeClock, peer: Peer) -> None:
        """
        Calls refused for a spent deadline are not failures of the peer: the breaker stays closed.
        """
        serve(peer, Recorder(clock))
        s = ResilientSession({"defaults": {"breaker": {"failure_threshold": 1}}}, clock=clock)
        with deadline(0, clock=clock):
            for _ in range(3):
                with pytest.raises(DeadlineExceeded):
                    s.get(URL)
        assert s.circuit(URL).state == "closed"

    def test_scope_ends_with_the_block(self, clock: FakeClock) -> None:
        """
        The deadline applies inside the block only, even when the block raises.
        """
        with pytest.raises(KeyError), deadline(1.0, clock=clock) as d:
            assert current_deadline() is d
            raise KeyError
        assert current_deadline() is None

    def test_inner_block_cannot_lengthen(self, clock: FakeClock) -> None:
        """
        A nested block with more time keeps the outer, sooner deadline.
        """
        with deadline(1.0, clock=clock) as outer, deadline(5.0, clock=clock) as inner:
            assert inner is outer
            assert current_deadline() is outer

    def test_inner_block_can_shorten(self, clock: FakeClock) -> None:
        """
        A nested block with less time applies, and the outer one is back after it.
        """
        with deadline(5.0, clock=clock) as outer:
            with deadline(1.0, clock=clock) as inner:
                assert inner is not None and inner.remaining() == 1.0
            assert current_deadline() is outer

    def test_infinite_seconds_sets_no_deadline(self) -> None:
        """
        ``deadline(math.inf)`` and ``deadline(None)`` set no deadline.
        """
        with deadline(math.inf) as a, deadline(None) as b:
            assert a is None and b is None

    @pytest.mark.parametrize(
        ("value", "error"), [(math.nan, ValueError), ("1", TypeError), (True, TypeError)]
    )
    def test_bad_seconds_are_refused(self, value: Any, error: type[Exception]) -> None:
        """
        NaN, strings and booleans are not a number of seconds.
        """
        with pytest.raises(error), deadline(value):
            pass

    def test_other_threads_do_not_see_it(self, clock: FakeClock) -> None:
        """
        A deadline set on one thread is not seen by a thread started without its context.
        """
        seen: list[object] = []
        with deadline(1.0, clock=clock):
            t = threading.Thread(target=lambda: seen.append(current_deadline()))
            t.start()
            t.join(5)
        assert seen == [None]

    def test_converts_between_clocks(self, peer: Peer) -> None:
        """
        A deadline set on one clock is carried over as time left to a session on another clock.
        """
        theirs, ours = FakeClock(start=5.0), FakeClock(start=9000.0)
        rec = serve(peer, Recorder(ours))
        with deadline(2.0, clock=theirs):
            theirs.advance(0.5)
            session(ours, timeout={"total": 10.0}, propagation={}).get(URL)
        assert rec.values == ["1500"]

    def test_deadline_exceeded_carries_the_inherited_budget(
        self, clock: FakeClock, peer: Peer
    ) -> None:
        """
        DeadlineExceeded reports the (shorter) inherited budget as the call's total.
        """
        serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0})
        with deadline(0.5, clock=clock):
            clock.advance(0.5)
            with pytest.raises(DeadlineExceeded) as info:
                s.get(URL)
        assert info.value.total == 0.0


# -- retry at one layer -----------------------------------------------------------------


class TestRetriesOff:
    def test_retries_off_inside_the_scope(self, clock: FakeClock, peer: Peer) -> None:
        """
        Inside ``deadline(..., retries=False)`` a retryable failure is tried once, and GaveUp says
        why.
        """
        rec = serve(peer, Recorder(clock, status=503))
        events: list[object] = []
        s = session(clock, retry={"attempts": 3, "backoff": {"jitter": "none"}})
        s.subscribe(events.append)
        with deadline(None, retries=False):
            resp = s.get(URL)
        assert (resp.status_code, resp.attempts, len(rec.values)) == (503, 1, 1)  # type: ignore[attr-defined]
        assert [e.reason for e in events if isinstance(e, GaveUp)] == ["caller_retrying"]

    def test_retries_on_outside_the_scope(self, clock: FakeClock, peer: Peer) -> None:
        """
        The same call outside the scope is retried as its policy says.
        """
        rec = serve(peer, Recorder(clock, status=503))
        s = session(clock, retry={"attempts": 3, "backoff": {"jitter": "none"}})
        with deadline(None, retries=False):
            pass
        assert s.get(URL).attempts == len(rec.values) == 3  # type: ignore[attr-defined]

    def test_inner_block_cannot_turn_retries_back_on(self, clock: FakeClock, peer: Peer) -> None:
        """
        ``retries=True`` in a nested block does not undo an outer ``retries=False``.
        """
        rec = serve(peer, Recorder(clock, status=503))
        s = session(clock, retry={"attempts": 3, "backoff": {"jitter": "none"}})
        with deadline(None, retries=False), deadline(5.0, retries=True, clock=clock):
            s.get(URL)
        assert len(rec.values) == 1


# -- parsing inbound headers ---------------------------------------------------------


class TestParseTimeout:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("1500", 1.5),
            (" 250 ", 0.25),
            ("0", 0.0),
            ("007", 0.007),
            ("100, 50", 0.05),  # sent twice: the smaller one
            ("junk, 70", 0.07),
            ("400000", 300.0),  # capped
            ("9" * 40, 300.0),  # capped, never int()-ed
        ],
    )
    def test_valid_values(self, value: str, expected: float) -> None:
        """
        Whole milliseconds in ASCII digits are read, lists give their smallest, big values are
        capped.
        """
        assert parse_timeout_ms(value, 300.0) == expected

    @pytest.mark.parametrize(
        "value",
        ["", " ", "abc", "-5", "+5", "1.5", "1e3", "15m", "0x10", "١٢٣", "²", "1 000", ",",
         "5" * 300],
    )
    def test_malformed_values_are_ignored(self, value: str) -> None:
        """
        Anything but plain ASCII digits (signs, units, decimals, other scripts, huge strings) is
        ignored.
        """
        assert parse_timeout_ms(value, 300.0) is None

    @pytest.mark.parametrize(
        ("value", "expected"),
        [("1", 1), ("2", 2), (" 3 ", 3), ("0", 0), ("x", None), ("-2", None), ("", None),
         ("9" * 20, None)],
    )
    def test_attempt_values(self, value: str, expected: int | None) -> None:
        """
        The attempt header is a small whole number, or ignored.
        """
        assert parse_attempt(value) == expected


# -- WSGI ----------------------------------------------------------------------------


def environ(**headers: str) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    for name, value in headers.items():
        env["HTTP_" + name.upper()] = value
    return env


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return lambda data: None


def call(app: Any, **headers: str) -> Any:
    """Call the WSGI *app* with a GET carrying *headers* (environ names, e.g. X_RETRY_ATTEMPT)."""
    return app(environ(**headers), start_response)


class Probe:
    """A WSGI app that records what the scope looked like while it ran."""

    def __init__(self, body: Iterable[bytes] | None = None) -> None:
        self.remaining: float | None = None
        self.retries: bool | None = None
        self.body = body

    def __call__(self, env: dict[str, Any], start: Any) -> Iterable[bytes]:
        d = current_deadline()
        self.remaining = None if d is None else d.remaining()
        from resilient_client._propagation import retries_allowed

        self.retries = retries_allowed()
        start("200 OK", [])
        return self.body if self.body is not None else [b"ok"]


class TestDeadlineMiddleware:
    def test_sets_the_inherited_deadline_minus_the_margin(self, clock: FakeClock) -> None:
        """
        While the app runs, the current deadline is the header's time minus the margin.
        """
        app = Probe()
        call(DeadlineMiddleware(app, margin=0.05, clock=clock), X_REQUEST_TIMEOUT_MS="1500")
        assert app.remaining == pytest.approx(1.45)
        assert current_deadline() is None

    def test_counts_from_receipt(self, clock: FakeClock) -> None:
        """
        The deadline is fixed when the request arrives: time the app spends counts against it.
        """
        seen: list[float] = []

        def app(env: dict[str, Any], start: Any) -> list[bytes]:
            clock.advance(0.5)
            d = current_deadline()
            assert d is not None
            seen.append(d.remaining())
            return []

        call(DeadlineMiddleware(app, margin=0.0, clock=clock), X_REQUEST_TIMEOUT_MS="2000")
        assert seen == [1.5]

    @pytest.mark.parametrize("value", ["soon", "-1", "1.5", "", "1e9"])
    def test_malformed_header_is_ignored(self, clock: FakeClock, value: str) -> None:
        """
        A malformed deadline header sets no deadline and does not crash.
        """
        app = Probe()
        call(DeadlineMiddleware(app, clock=clock), X_REQUEST_TIMEOUT_MS=value)
        assert app.remaining is None

    def test_no_header_no_deadline(self, clock: FakeClock) -> None:
        """
        A request without the header runs with no inherited deadline.
        """
        app = Probe()
        call(DeadlineMiddleware(app, clock=clock))
        assert (app.remaining, app.retries) == (None, True)

    def test_huge_header_is_capped(self, clock: FakeClock) -> None:
        """
        A huge value is capped at ``max_seconds``.
        """
        app = Probe()
        mw = DeadlineMiddleware(app, margin=0.0, max_seconds=30.0, clock=clock)
        mw(environ(X_REQUEST_TIMEOUT_MS="9" * 30), start_response)
        assert app.remaining == 30.0

    def test_hostile_header_never_lengthens_our_total(self, clock: FakeClock, peer: Peer) -> None:
        """
        An inbound header longer than our own total leaves the onward call's total as it was.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 2.0}, propagation={})

        def app(env: dict[str, Any], start: Any) -> list[bytes]:
            s.get(URL)
            return []

        call(DeadlineMiddleware(app, clock=clock), X_REQUEST_TIMEOUT_MS="99999999")
        assert rec.values == ["2000"]

    def test_onward_call_gets_the_inherited_time(self, clock: FakeClock, peer: Peer) -> None:
        """
        An onward call made while serving a request forwards the inherited time, less the margin.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0}, propagation={})

        def app(env: dict[str, Any], start: Any) -> list[bytes]:
            s.get(URL)
            return []

        call(DeadlineMiddleware(app, margin=0.1, clock=clock), X_REQUEST_TIMEOUT_MS="800")
        assert rec.values == ["700"]

    def test_spent_on_arrival_fails_onward_calls_at_once(
        self, clock: FakeClock, peer: Peer
    ) -> None:
        """
        A request that arrives with 0 ms (or less than the margin) makes no onward call.
        """
        rec = serve(peer, Recorder(clock))
        s = session(clock, timeout={"total": 10.0})
        errors: list[BaseException] = []

        def app(env: dict[str, Any], start: Any) -> list[bytes]:
            try:
                s.get(URL)
            except DeadlineExceeded as e:
                errors.append(e)
            return []

        call(DeadlineMiddleware(app, margin=0.05, clock=clock), X_REQUEST_TIMEOUT_MS="20")
        assert len(errors) == 1 and rec.values == []

    @pytest.mark.parametrize(
        ("value", "retries"), [("1", True), ("2", False), ("7", False), ("x", True)]
    )
    def test_attempt_header_turns_retries_off_for_a_retry(
        self, clock: FakeClock, value: str, retries: bool
    ) -> None:
        """
        A request whose attempt header says it is a retry (> 1) runs with onward retries off.
        """
        app = Probe()
        call(DeadlineMiddleware(app, clock=clock), X_RETRY_ATTEMPT=value)
        assert app.retries is retries

    def test_attempt_header_can_be_ignored(self, clock: FakeClock) -> None:
        """
        With ``attempt_header=None`` the attempt number is not read and retries stay on.
        """
        app = Probe()
        call(DeadlineMiddleware(app, attempt_header=None, clock=clock), X_RETRY_ATTEMPT="3")
        assert app.retries is True

    def test_custom_header_names(self, clock: FakeClock) -> None:
        """
        Both header names are configurable.
        """
        app = Probe()
        mw = DeadlineMiddleware(
            app, header="Grpc-Budget", attempt_header="X-Try", margin=0.0, clock=clock
        )
        mw(environ(GRPC_BUDGET="250", X_TRY="2"), start_response)
        assert app.remaining == pytest.approx(0.25)
        assert app.retries is False

    def test_scope_is_reset_when_the_app_raises(self, clock: FakeClock) -> None:
        """
        An app that raises leaves no deadline behind for the next request on this thread.
        """

        def app(env: dict[str, Any], start: Any) -> list[bytes]:
            raise RuntimeError("boom")

        with pytest.raises(RuntimeError):
            call(DeadlineMiddleware(app, clock=clock), X_REQUEST_TIMEOUT_MS="500")
        assert current_deadline() is None

    def test_list_bodies_are_returned_as_they_are(self, clock: FakeClock) -> None:
        """
        A list body is handed back untouched (no wrapper on the common path).
        """
        body = [b"a", b"b"]
        out = call(DeadlineMiddleware(Probe(body), clock=clock), X_REQUEST_TIMEOUT_MS="500")
        assert out is body

    def test_generator_bodies_run_in_scope(self, clock: FakeClock) -> None:
        """
        A streamed body's code (and its close) runs with the request's deadline, and only then.
        """
        seen: list[object] = []

        def body() -> Iterator[bytes]:
            try:
                seen.append(current_deadline())
                yield b"a"
                seen.append(current_deadline())
                yield b"b"
            finally:
                seen.append(("closed", current_deadline()))

        out = call(DeadlineMiddleware(Probe(body()), clock=clock), X_REQUEST_TIMEOUT_MS="500")
        it = iter(out)
        assert next(it) == b"a"
        assert current_deadline() is None
        assert next(it) == b"b"
        out.close()
        assert seen[0] is not None and seen[1] is seen[0] and seen[2] == ("closed", seen[0])
        assert current_deadline() is None

    @pytest.mark.parametrize(
        "kwargs",
        [{"header": "bad header"}, {"margin": -1}, {"max_seconds": 0}, {"max_seconds": math.inf},
         {"attempt_header": ""}],
    )
    def test_bad_arguments_are_refused(self, kwargs: dict[str, Any]) -> None:
        """
        Invalid middleware settings raise ConfigError at construction.
        """
        with pytest.raises(ConfigError):
            DeadlineMiddleware(Probe(), **kwargs)


# -- ASGI ----------------------------------------------------------------------------


class TestASGIDeadlineMiddleware:
    def run(self, mw: ASGIDeadlineMiddleware, scope: dict[str, Any]) -> None:
        async def receive() -> dict[str, Any]:
            return {"type": "http.request"}

        async def send(message: Any) -> None:
            return None

        asyncio.run(mw(scope, receive, send))

    def test_sets_the_deadline_for_the_request(self, clock: FakeClock) -> None:
        """
        An ASGI app sees the inherited deadline, also from code run through asyncio.to_thread.
        """
        seen: list[object] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(current_deadline())
            seen.append(await asyncio.to_thread(current_deadline))

        mw = ASGIDeadlineMiddleware(app, margin=0.0, clock=clock)
        self.run(mw, {"type": "http", "headers": [(b"x-request-timeout-ms", b"1200")]})
        assert seen[0] is not None and seen[1] is seen[0]
        assert seen[0].remaining() == pytest.approx(1.2)  # type: ignore[attr-defined]
        assert current_deadline() is None

    def test_repeated_header_gives_the_smaller(self, clock: FakeClock) -> None:
        """
        A header sent twice gives the smaller value; the attempt header is read too.
        """
        seen: list[tuple[float | None, bool]] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            from resilient_client._propagation import retries_allowed

            d = current_deadline()
            seen.append((None if d is None else d.remaining(), retries_allowed()))

        mw = ASGIDeadlineMiddleware(app, margin=0.0, clock=clock)
        headers = [
            (b"x-request-timeout-ms", b"900"),
            (b"x-request-timeout-ms", b"300"),
            (b"x-retry-attempt", b"2"),
        ]
        self.run(mw, {"type": "http", "headers": headers})
        ((remaining, retries),) = seen
        assert remaining == pytest.approx(0.3)
        assert retries is False

    def test_lifespan_passes_through(self, clock: FakeClock) -> None:
        """
        Non-HTTP scopes (lifespan) reach the app untouched.
        """
        seen: list[object] = []

        async def app(scope: Any, receive: Any, send: Any) -> None:
            seen.append(scope["type"])

        self.run(ASGIDeadlineMiddleware(app, clock=clock), {"type": "lifespan"})
        assert seen == ["lifespan"]


class TestPublicNames:
    def test_new_names_are_exported(self) -> None:
        """
        The propagation API is importable from the package root and listed in __all__.
        """
        for name in ("ASGIDeadlineMiddleware", "DeadlineMiddleware", "PropagationPolicy",
                     "current_deadline", "deadline"):
            assert name in resilient_client.__all__
            assert hasattr(resilient_client, name)

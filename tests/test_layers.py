"""
Bulkheads, fallbacks and the public surface of ResilientSession, against a
real peer on 127.0.0.1.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from peers import Peer, Switch, answer, delay, gate, sequence

import resilient_client
from resilient_client import (
    BulkheadFull,
    CallableFallback,
    CircuitOpenError,
    Policy,
    ResilientSession,
)
from resilient_client.testing import FakeClock

OK = answer(200, b'{"ok": true}', {"Content-Type": "application/json"})


@dataclass
class Server:
    """The test server, with the gate /slow waits for and the switch /toggle plays."""

    peer: Peer
    gate: threading.Event
    toggle: Switch

    def hits(self) -> int:
        return self.peer.hits()


@pytest.fixture
def server() -> Iterator[Server]:
    """
    The test server, answering by path: /fail (503), /slow (waits for the
    gate), /toggle (switched by the test), and 200 to everything else.
    """
    room = Server(Peer(lifetime=60.0), threading.Event(), Switch(answer(200, b'{"n": 1}')))
    room.peer.on("/fail", answer(503))
    room.peer.on("/slow", sequence(gate(room.gate, 5.0), answer(200, b'{"slow": true}')))
    room.peer.on("/toggle", room.toggle)
    room.peer.on("*", OK)
    with room.peer:
        try:
            yield room
        finally:
            room.gate.set()


@pytest.fixture
def peer(server: Server) -> str:
    """The server's base URL."""
    return server.peer.origin


def _config(base: str, **sections: Any) -> dict[str, Any]:
    return {"endpoints": [{"name": "peer", "match": base + "/", "retry": None, **sections}]}


#: The service author's surface, pinned: a name joins or leaves it on purpose.
PUBLIC_NAMES = {
    "__version__",
    # the session and its errors
    "ResilientSession",
    "ResilienceError", "CircuitOpenError", "DeadlineExceeded", "BulkheadFull", "ConfigError",
    "Throttled",
    # configuration and the policies a user constructs
    "Config", "Endpoint", "Secrets", "Policy", "Timeouts", "RetryPolicy", "BackoffPolicy", "Jitter",
    "BudgetPolicy", "BreakerPolicy", "BreakerMode", "BulkheadPolicy", "StaticFallback",
    "StaleFallback", "CallableFallback", "PropagationPolicy", "PoolPolicy",
    "ThrottlePolicy", "ConcurrencyPolicy", "ProxyErrorsPolicy", "HedgePolicy",
    # what a callable fallback returns
    "fallback_response",
    # what session.circuit(), .resolve() and a clock= argument give or take
    "CircuitBreaker", "BreakerState", "BreakerStats", "Resolution", "Clock",
    # what session.overload() gives
    "OverloadStatus",
    # deadlines across services
    "Deadline", "deadline", "current_deadline", "DeadlineMiddleware", "ASGIDeadlineMiddleware",
    "AsyncResilientClient",
    # events and listeners
    "Event", "Listener", "OUTCOMES", "AttemptFinished", "RetryScheduled", "GaveUp",
    "BudgetExhausted", "BreakerStateChanged", "BreakerRejected", "FallbackServed",
    "BulkheadRejected", "DeadlinePassed", "CallFinished", "CallThrottled", "ConcurrencyLimitChanged",
    "HedgeSent", "HedgeWon", "HedgeSkipped",
    "ThrottleRateChanged",
    "prometheus_listener", "otel_listener", "otel_trace_listener",
    # health
    "Health", "EndpointHealth", "health_app",
}

#: Taken out of __all__ in 0.1.0; they still import from the root, with a
#: DeprecationWarning naming their new home, for one release.
MOVED = {
    "check_haproxy": "resilient_client.tools",
    "Finding": "resilient_client.tools",
    "Bulkhead": "resilient_client._bulkhead",
    "SYSTEM_CLOCK": "resilient_client._clock",
    "log_event": "resilient_client._events",
    "parse_retry_after": "resilient_client._retry",
}


class TestPublicSurface:
    def test_all_is_the_pinned_surface(self) -> None:
        """__all__ is exactly the service author's surface, with no duplicates."""
        assert sorted(resilient_client.__all__) == sorted(PUBLIC_NAMES)
        assert len(resilient_client.__all__) == len(set(resilient_client.__all__))
        # Every public name is either loaded eagerly or known to the lazy loader, never both.
        eager = {"__version__", "ResilienceError", "CircuitOpenError", "DeadlineExceeded",
                 "BulkheadFull", "ConfigError", "Throttled"}
        lazy = set(resilient_client._LAZY)
        assert lazy | eager == PUBLIC_NAMES and not lazy & eager
        assert not set(resilient_client._MOVED) & PUBLIC_NAMES

    def test_all_lists_exactly_the_public_names(self) -> None:
        """Once every name is loaded, everything public in the package is in __all__, and nothing else."""
        for name in resilient_client.__all__:
            getattr(resilient_client, name)
        public = {n for n in vars(resilient_client) if not n.startswith(("_", "@"))}
        public -= {"annotations", "exceptions", "testing", "tools"}  # modules and the __future__ import
        assert public == set(resilient_client.__all__) - {"__version__"}
        assert set(resilient_client.__all__) <= set(dir(resilient_client))

    def test_import_loads_only_the_exceptions(self) -> None:
        """`import resilient_client` loads no session, policy, tool or HTTP-free core module until used."""
        code = (
            "import sys, resilient_client\n"
            "print(sorted(m for m in sys.modules if m.startswith('resilient_client')))\n"
            "resilient_client.ResilientSession\n"
            "print(sorted(m for m in sys.modules if m.startswith('resilient_client.tools')))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                             timeout=60).stdout.splitlines()
        # _errors holds ConfigError, which exceptions re-exports (the core raises it).
        assert out[0] == str(["resilient_client", "resilient_client._errors", "resilient_client._version",
                              "resilient_client.exceptions"])
        assert out[1] == "[]"  # building a session never loads the tools

    @pytest.mark.parametrize("name", sorted(MOVED))
    def test_moved_names_still_import_with_a_warning(self, name: str) -> None:
        """A name taken out of __all__ still resolves, to the same object, and the warning names its home."""
        home = importlib.import_module(MOVED[name])
        with pytest.warns(DeprecationWarning, match=MOVED[name].replace(".", r"\.")) as caught:
            value = getattr(resilient_client, name)
        assert value is getattr(home, name)
        assert caught[0].filename == __file__  # points at the caller's line, not at the package
        assert name not in resilient_client.__all__

    def test_unknown_names_are_still_attribute_errors(self) -> None:
        """A typo is an AttributeError (and an ImportError from `from ... import`), as without laziness."""
        with pytest.raises(AttributeError, match="no attribute 'ResilientSesion'"):
            resilient_client.ResilientSesion  # noqa: B018
        with pytest.raises(ImportError):
            exec("from resilient_client import ResilientSesion", {})

    def test_exceptions_fit_the_requests_hierarchy(self) -> None:
        """Each library error is caught by the requests except-blocks users already have."""
        assert issubclass(resilient_client.ResilienceError, requests.RequestException)
        assert issubclass(CircuitOpenError, requests.ConnectionError)
        assert issubclass(resilient_client.DeadlineExceeded, requests.Timeout)
        assert issubclass(BulkheadFull, resilient_client.ResilienceError)
        assert issubclass(resilient_client.ConfigError, ValueError)

    def test_is_a_requests_session(self, peer: str) -> None:
        """ResilientSession is a requests.Session and works as a context manager."""
        with ResilientSession() as s:
            assert isinstance(s, requests.Session)
            r = s.get(peer + "/ok")
        assert r.json() == {"ok": True}
        assert r.attempts == 1 and r.is_fallback is False

    def test_policy_for_and_resolve_explain_the_match(self, peer: str) -> None:
        """policy_for names the endpoint; resolve says which rule matched and why."""
        s = ResilientSession(_config(peer))
        assert s.policy_for("GET", peer + "/items?id=3").name == "peer"
        assert "endpoints[0]" in str(s.resolve("GET", peer + "/x"))
        other = "http://127.0.0.2:9/x"
        assert s.policy_for("GET", other).name == "default"
        assert "http://127.0.0.2:9" in str(s.resolve("GET", other))


class TestBulkhead:
    def test_call_beyond_max_concurrent_is_refused_at_once(self, peer: str, server: Server) -> None:
        """With max_concurrent calls in flight, one more raises BulkheadFull without reaching the peer."""
        s = ResilientSession(_config(peer, bulkhead={"max_concurrent": 2}))
        results: list[object] = []
        threads = [
            threading.Thread(target=lambda: results.append(s.get(peer + "/slow").status_code))
            for _ in range(2)
        ]
        for t in threads:
            t.start()
        bulkhead = s._route_for("GET", peer + "/slow").state.bulkhead
        assert bulkhead is not None
        for _ in range(500):  # bounded wait until both calls hold a slot and reached the peer
            if bulkhead.in_flight == 2 and server.hits() == 2:
                break
            threading.Event().wait(0.005)
        hits_before = server.hits()
        with pytest.raises(BulkheadFull) as info:
            s.get(peer + "/slow")
        assert info.value.endpoint == "peer" and info.value.max_concurrent == 2
        assert server.hits() == hits_before
        server.gate.set()
        for t in threads:
            t.join(5)
        assert results == [200, 200]
        assert bulkhead.in_flight == 0

    def test_slot_is_released_on_exceptions(self, peer: str) -> None:
        """A call that raises gives its slot back."""
        s = ResilientSession({"endpoints": [{"name": "dead", "match": "http://127.0.0.1:1/",
                                             "retry": None, "bulkhead": {"max_concurrent": 1}}]})
        for _ in range(3):
            with pytest.raises(requests.ConnectionError):
                s.get("http://127.0.0.1:1/x")
        assert s._route_for("GET", "http://127.0.0.1:1/x").state.bulkhead.in_flight == 0  # type: ignore[union-attr]

    def test_streamed_response_holds_its_slot_until_closed(self, peer: str) -> None:
        """A stream=True response keeps its slot until it is consumed or closed."""
        s = ResilientSession(_config(peer, bulkhead={"max_concurrent": 1}))
        r = s.get(peer + "/ok", stream=True)
        with pytest.raises(BulkheadFull):
            s.get(peer + "/ok")
        r.close()
        assert s.get(peer + "/ok").status_code == 200

    def test_streamed_response_releases_when_consumed(self, peer: str) -> None:
        """Reading a streamed body to the end frees the slot."""
        s = ResilientSession(_config(peer, bulkhead={"max_concurrent": 1}))
        r = s.get(peer + "/ok", stream=True)
        assert r.content == b'{"ok": true}'
        assert s.get(peer + "/ok").status_code == 200

    def test_full_bulkhead_serves_the_fallback(self, peer: str) -> None:
        """A refused call gets the fallback, with attempts == 0."""
        s = ResilientSession(_config(peer, bulkhead={"max_concurrent": 1},
                                     fallback={"status": 200, "json": {"fallback": True}}))
        held = s.get(peer + "/ok", stream=True)
        r = s.get(peer + "/ok")
        assert r.is_fallback and r.attempts == 0 and r.json() == {"fallback": True}
        held.close()


class TestFallback:
    def test_static_json_fallback_on_failure_status(self, peer: str) -> None:
        """A final status in failure_status is replaced by the static fallback."""
        s = ResilientSession(_config(peer, fallback={"status": 200, "json": {"items": []},
                                                     "headers": {"X-Fallback": "1"}}))
        r = s.get(peer + "/fail")
        assert r.status_code == 200 and r.json() == {"items": []}
        assert r.headers["X-Fallback"] == "1" and r.headers["Content-Type"] == "application/json"
        assert r.is_fallback is True and r.attempts == 1

    def test_static_text_fallback_on_connection_error(self) -> None:
        """A connection error is replaced by the text fallback."""
        s = ResilientSession({"endpoints": [{"match": "http://127.0.0.1:1/", "retry": None,
                                             "fallback": {"status": 503, "text": "later"}}]})
        r = s.get("http://127.0.0.1:1/x")
        assert (r.status_code, r.text, r.is_fallback) == (503, "later", True)

    def test_stale_serves_the_last_good_get_with_its_age(self, peer: str, server: Server) -> None:
        """stale answers with the last 2xx GET for the same URL, and says how old it is."""
        s = ResilientSession(_config(peer, fallback="stale"))
        good = s.get(peer + "/toggle")
        server.toggle.to(answer(503, b'{"n": 2}'))
        r = s.get(peer + "/toggle")
        assert r.is_fallback and r.content == good.content
        assert r.status_code == 200 and "Age" in r.headers
        assert r.stale_age >= 0

    def test_stale_without_a_good_response_returns_the_failure(self, peer: str) -> None:
        """With nothing cached, the caller gets the real failing response."""
        s = ResilientSession(_config(peer, fallback="stale"))
        r = s.get(peer + "/fail")
        assert r.status_code == 503 and r.is_fallback is False

    def test_stale_memory_is_bounded(self, peer: str) -> None:
        """The stale cache keeps at most max_entries URLs."""
        s = ResilientSession(_config(peer, fallback={"stale": {"max_entries": 3}}))
        for i in range(10):
            s.get(f"{peer}/ok?i={i}")
        stale = s._route_for("GET", peer + "/ok").state.stale
        assert stale is not None and len(stale) == 3

    def test_callable_fallback_gets_request_and_error(self, peer: str) -> None:
        """A Python fallback receives the request and the failing response or error."""
        seen: list[object] = []

        def fallback(request: requests.PreparedRequest, failure: object) -> requests.Response:
            seen.append((request.url, failure))
            r = requests.Response()
            r.status_code = 299
            r._content = b"computed"
            return r

        base = Policy(name="peer", retry=None, fallback=CallableFallback(fallback))
        cfg = resilient_client.Config(endpoints=(resilient_client.Endpoint(match=peer + "/", policy=base),))
        s = ResilientSession(cfg)
        r = s.get(peer + "/fail")
        assert r.status_code == 299 and r.is_fallback
        assert isinstance(seen[0][1], requests.Response) and seen[0][1].status_code == 503  # type: ignore[index]

    def test_raising_fallback_surfaces_its_error_with_the_original_as_cause(self) -> None:
        """A fallback that raises surfaces its own error, caused by the original failure."""

        def broken(request: requests.PreparedRequest, failure: object) -> requests.Response:
            raise RuntimeError("fallback broke")

        policy = Policy(name="dead", retry=None, fallback=CallableFallback(broken))
        endpoint = resilient_client.Endpoint(match="http://127.0.0.1:1/", policy=policy)
        cfg = resilient_client.Config(endpoints=(endpoint,))
        with pytest.raises(RuntimeError, match="fallback broke") as info:
            ResilientSession(cfg).get("http://127.0.0.1:1/")
        assert isinstance(info.value.__cause__, requests.ConnectionError)

    @pytest.mark.parametrize("returned", [None, {"items": []}, "cached"], ids=["None", "dict", "str"])
    def test_fallback_returning_a_non_response_is_a_type_error_naming_it(self, returned: object) -> None:
        """
        A callable fallback that returns no Response raises a TypeError naming the fallback, what it
        returned and what is expected, caused by the original failure.
        """

        def not_a_response(request: requests.PreparedRequest, failure: object) -> Any:
            return returned

        policy = Policy(name="dead", retry=None, fallback=CallableFallback(not_a_response))
        endpoint = resilient_client.Endpoint(match="http://127.0.0.1:1/", policy=policy)
        with pytest.raises(TypeError) as info:
            ResilientSession(resilient_client.Config(endpoints=(endpoint,))).get("http://127.0.0.1:1/")
        message = str(info.value)
        assert "not_a_response" in message and "'dead'" in message
        assert type(returned).__name__ in message and "expected a requests.Response" in message
        assert isinstance(info.value.__cause__, requests.ConnectionError)

    def test_fallback_returning_a_non_response_for_a_failure_status_closes_that_response(
        self, peer: str
    ) -> None:
        """For a failing response (no exception to chain), the TypeError still names the fallback."""
        failures: list[requests.Response] = []

        def not_a_response(request: requests.PreparedRequest, failure: Any) -> Any:
            failures.append(failure)
            return None

        base = Policy(name="peer", retry=None, fallback=CallableFallback(not_a_response))
        cfg = resilient_client.Config(endpoints=(resilient_client.Endpoint(match=peer + "/", policy=base),))
        with pytest.raises(TypeError, match=r"\(.*not_a_response\) returned NoneType"):
            ResilientSession(cfg).get(peer + "/fail")
        assert failures[0].status_code == 503 and failures[0].raw.closed

    def test_open_breaker_serves_fallback_without_touching_the_network(
        self, peer: str, server: Server
    ) -> None:
        """With the breaker forced open, the fallback answers and the peer sees nothing."""
        s = ResilientSession(_config(peer, fallback={"status": 200, "text": "cached"}))
        s.circuit("peer").open()
        r = s.get(peer + "/ok")
        assert r.text == "cached" and r.attempts == 0 and r.is_fallback
        assert server.hits() == 0

    def test_fallback_event_records_the_replaced_error(self, peer: str) -> None:
        """The fallback_served event carries what the fallback replaced."""
        events: list[resilient_client.Event] = []
        s = ResilientSession(_config(peer, fallback={"status": 200, "text": "x"}), listeners=[events.append])
        s.get(peer + "/fail")
        served = [e for e in events if isinstance(e, resilient_client.FallbackServed)]
        assert len(served) == 1 and served[0].error == "status 503" and served[0].fallback == "static"


class TestCircuit:
    def test_circuit_by_name_and_by_url_is_the_same_breaker(self, peer: str) -> None:
        """session.circuit accepts an endpoint name or a URL."""
        s = ResilientSession(_config(peer))
        assert s.circuit("peer") is s.circuit(peer + "/anything")
        assert s.circuit("peer").state == "closed"

    def test_open_breaker_fails_fast(self, peer: str, server: Server) -> None:
        """A forced-open breaker raises CircuitOpenError naming the endpoint, without a request."""
        s = ResilientSession(_config(peer))
        s.circuit("peer").open()
        with pytest.raises(CircuitOpenError) as info:
            s.get(peer + "/ok")
        assert info.value.endpoint == "peer" and server.hits() == 0
        s.circuit("peer").close()
        assert s.get(peer + "/ok").status_code == 200

    def test_unknown_endpoint_is_a_key_error(self) -> None:
        """Asking for a breaker that does not exist names the known endpoints."""
        with pytest.raises(KeyError, match="nope"):
            ResilientSession().circuit("nope")

    def test_failures_open_the_breaker(self, peer: str, server: Server) -> None:
        """failure_threshold failing attempts open the breaker; then calls fail fast."""
        s = ResilientSession(_config(peer, breaker={"failure_threshold": 2, "reset_timeout": 60}))
        for _ in range(2):
            assert s.get(peer + "/fail").status_code == 503
        assert s.circuit("peer").state == "open"
        with pytest.raises(CircuitOpenError):
            s.get(peer + "/fail")
        assert server.hits() == 2


class TestConcurrencyThroughOneBreaker:
    @pytest.mark.parametrize("storage", ["memory", "redis"])
    def test_calls_through_one_breaker_run_concurrently(self, storage: str, request: Any) -> None:
        """8 threads calling a 400 ms peer through one breaker finish in well under 2 x 400 ms."""
        breaker: dict[str, Any] = {"failure_threshold": 5}
        if storage == "redis":
            breaker["storage"] = request.getfixturevalue("redis_url")
        with Peer().on("*", delay(0.4, answer(200, b"ok"))) as slow:
            base = slow.origin
            s = ResilientSession({"endpoints": [{"name": "slow", "match": base + "/", "breaker": breaker}]})
            s.get(base + "/warm")  # connect to Redis and the peer once
            statuses: list[int] = []
            threads = [
                threading.Thread(target=lambda: statuses.append(s.get(base + "/x").status_code))
                for _ in range(8)
            ]
            started = time.monotonic()
            for t in threads:
                t.start()
            for t in threads:
                t.join(5)
            elapsed = time.monotonic() - started
        assert statuses == [200] * 8
        # Serialised, as pybreaker's call() would, this takes 8 x 0.4 = 3.2 s.
        assert elapsed < 0.8, f"8 concurrent calls took {elapsed:.3f}s"


class TestEarlyRefusal:
    def test_open_breaker_refuses_before_preparing(self, peer: str, server: Server, monkeypatch: Any) -> None:
        """With the breaker open and no fallback, session.get raises before any request preparation."""
        s = ResilientSession(_config(peer))
        s.circuit("peer").open()
        prepared: list[object] = []
        original = requests.Session.prepare_request
        monkeypatch.setattr(requests.Session, "prepare_request",
                            lambda self, req: prepared.append(req) or original(self, req))
        events: list[resilient_client.Event] = []
        s.subscribe(events.append)
        with pytest.raises(CircuitOpenError):
            s.get(peer + "/ok", params={"q": "1"})
        assert prepared == [] and server.hits() == 0
        assert [type(e).__name__ for e in events] == ["BreakerRejected", "CallFinished"]
        assert s.circuit("peer").stats().rejected == 1

    def test_the_half_open_trial_still_goes_through(self, peer: str) -> None:
        """After reset_timeout the early check lets the trial reach the peer, which closes the breaker."""
        clock = FakeClock()
        breaker = {"failure_threshold": 1, "reset_timeout": 30}
        s = ResilientSession(_config(peer, breaker=breaker), clock=clock)
        assert s.get(peer + "/fail").status_code == 503
        with pytest.raises(CircuitOpenError):
            s.get(peer + "/ok")
        clock.advance(31)
        assert s.get(peer + "/ok").status_code == 200
        assert s.circuit("peer").state == "closed"

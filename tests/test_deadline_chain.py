"""
End to end on loopback: three real services A -> B -> C (WSGI apps on
the test server), where C hangs.

With propagation on, A's remaining time travels to B in the deadline header,
B's `DeadlineMiddleware` makes it B's deadline, and B gives up on C within a
small margin of A's deadline, freeing its worker. With it off, B waits for
its own full timeout although nobody is waiting for its answer any more.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import requests
from peers import Peer, wsgi

from resilient_client import DeadlineMiddleware, ResilientSession

A_TOTAL = 0.6  # A's deadline for its call to B
B_TOTAL = 1.5  # B's own deadline for its call to C
MARGIN = 0.05  # what B keeps back for answering
SLACK = 0.15  # scheduling and loopback latency allowed on top


class Service:
    """A WSGI app served by the test server on 127.0.0.1, on a free port."""

    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.peer = Peer(lifetime=30.0).on("*", wsgi(app)).start()
        self.url = self.peer.url("/")

    def close(self) -> None:
        self.peer.stop()


class Chain:
    """A -> B -> C, recording when each hop started and finished, on time.monotonic."""

    def __init__(self, propagate: bool) -> None:
        self.release = threading.Event()  # lets C's hung handlers go at teardown
        self.b_done = threading.Event()
        self.times: dict[str, float] = {}
        self.c_header: list[str | None] = []
        self.b_in_flight = 0
        self._lock = threading.Lock()
        prop: dict[str, Any] = {"propagation": {}} if propagate else {}

        def c_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            self.c_header.append(environ.get("HTTP_X_REQUEST_TIMEOUT_MS"))
            self.release.wait(5)  # hangs (bounded, so teardown never waits long)
            start("200 OK", [("Content-Type", "text/plain")])
            return [b"late"]

        self.c = Service(c_app)
        b_session = ResilientSession({"defaults": {
            "timeout": {"connect": 1.0, "read": B_TOTAL, "total": B_TOTAL}, "retry": None, **prop,
        }})

        def b_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            with self._lock:
                self.b_in_flight += 1
            self.times["b_start"] = time.monotonic()
            try:
                status = f"{b_session.get(self.c.url).status_code} From C"
            except requests.RequestException:
                status = "504 Gave Up On C"
            finally:
                self.times["b_end"] = time.monotonic()
                with self._lock:
                    self.b_in_flight -= 1
                self.b_done.set()
            start(status, [("Content-Type", "text/plain")])
            return [b""]

        self.b = Service(DeadlineMiddleware(b_app, margin=MARGIN))
        a_session = ResilientSession({"defaults": {
            "timeout": {"connect": 1.0, "read": 5.0, "total": A_TOTAL}, "retry": None, **prop,
        }})

        def a_app(environ: dict[str, Any], start: Any) -> list[bytes]:
            self.times["a_start"] = time.monotonic()
            try:
                status = f"{a_session.get(self.b.url).status_code} From B"
            except requests.RequestException:
                status = "504 Gave Up On B"
            self.times["a_end"] = time.monotonic()
            start(status, [("Content-Type", "text/plain")])
            return [b""]

        self.a = Service(a_app)
        self.sessions = (a_session, b_session)

    def run(self) -> requests.Response:
        """One request to A, then wait (bounded) for B to finish its side."""
        resp = requests.get(self.a.url, timeout=5)
        assert self.b_done.wait(B_TOTAL + 2), "B never finished"
        return resp

    def close(self) -> None:
        self.release.set()
        for s in (self.a, self.b, self.c):
            s.close()
        for session in self.sessions:
            session.close()


@pytest.fixture
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    c = Chain(propagate=request.param)
    try:
        yield c
    finally:
        c.close()


class TestDeadlineChain:
    @pytest.mark.parametrize("chain", [True], indirect=True, ids=["propagation-on"])
    def test_b_gives_up_with_a(self, chain: Chain) -> None:
        """
        With propagation on, B abandons the hung C within a small margin of A's deadline and is free
        again.
        """
        resp = chain.run()
        t = chain.times
        a_deadline = t["a_start"] + A_TOTAL
        assert resp.status_code == 504
        # B gave up no later than A's deadline plus slack, and not absurdly early.
        assert t["b_end"] <= a_deadline + SLACK
        assert t["b_end"] >= a_deadline - MARGIN - SLACK
        # Its worker is free: nothing in flight on B any more.
        assert chain.b_in_flight == 0
        # C was told how long it had: A's remaining time less B's margin.
        (value,) = chain.c_header
        assert value is not None and 0 < int(value) <= (A_TOTAL - MARGIN) * 1000

    @pytest.mark.parametrize("chain", [False], indirect=True, ids=["propagation-off"])
    def test_b_waits_its_own_timeout(self, chain: Chain) -> None:
        """
        With propagation off, B keeps waiting on C for its own full timeout after A has given up.
        """
        resp = chain.run()
        t = chain.times
        assert resp.status_code == 504
        assert t["a_end"] - t["a_start"] < A_TOTAL + SLACK  # A gave up on time...
        assert t["b_end"] - t["b_start"] >= B_TOTAL - 0.01  # ...B did not
        assert t["b_end"] - t["a_end"] >= B_TOTAL - A_TOTAL - SLACK
        assert chain.c_header == [None]

"""
Retries against real sockets on 127.0.0.1: the test server (tests/peers.py)
answers 503, refuses, hangs, or fails everything under concurrent load.
Backoff is zero or a few milliseconds, so the whole file runs in seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from peers import Peer, answer, free_port, hang

import resilient_client
from resilient_client import GaveUp, RetryScheduled

NO_WAIT = {"initial": 0.0, "max": 0.0, "jitter": "none"}
UNAVAILABLE = answer(503, b"unavailable")


def make_session(
    retry: dict[str, Any] | None = None, **sections: Any
) -> resilient_client.ResilientSession:
    """A session on the real clock with the breaker off and tiny backoff."""
    defaults: dict[str, Any] = {
        "breaker": None,
        "budget": None,
        "timeout": {"connect": 1.0, "read": 2.0, "total": 10.0},
        "retry": {"backoff": {"initial": 0.001, "max": 0.002, "jitter": "full"}, **(retry or {})},
    }
    defaults.update(sections)
    session = resilient_client.ResilientSession({"defaults": defaults})
    session.trust_env = False  # loopback only: no proxy from the environment
    return session


@pytest.fixture
def peer() -> Iterator[Peer]:
    """A peer for one test, stopped after it."""
    with Peer(lifetime=60.0) as p:
        yield p


class TestStatusThenSuccess:
    def test_503_then_200(self, peer):
        """
        A 503 followed by a 200 gives the caller the 200, after two attempts on one connection.
        """
        peer.on("/items/1", answer(503, b"ok"), answer(200, b"ok"))
        with make_session() as session:
            resp = session.get(peer.url("/items/1"))
        assert (resp.status_code, resp.attempts, resp.text) == (200, 2, "ok")
        assert (peer.hits(), peer.connections) == (2, 1)

    def test_exhausted_returns_the_last_503(self, peer):
        """When every attempt gets a 503, the caller gets the last one with attempts == 3."""
        peer.on("/", UNAVAILABLE)
        with make_session() as session:
            resp = session.get(peer.url("/"))
        assert (resp.status_code, resp.attempts, peer.hits()) == (503, 3, 3)


class TestRefusedPort:
    def test_post_is_retried_after_a_refused_connection(self, peer):
        """
        A refused connection sent nothing, so a POST is retried; its body arrives whole on the
        retry.
        """
        peer.on("/orders", answer(201, b"created"))
        peer.refuse()

        def open_port(event: Any) -> None:
            # The first attempt was refused: now open the port for the retry.
            if isinstance(event, RetryScheduled):
                peer.accept()

        with make_session() as session:
            session.subscribe(open_port)
            resp = session.post(peer.url("/orders"), data=b'{"sku": 42}')
        assert (resp.status_code, resp.attempts) == (201, 2)
        assert [r.body for r in peer.requests] == [b'{"sku": 42}']

    def test_refused_every_time_raises_connection_error(self):
        """A port that keeps refusing raises ConnectionError after every attempt was made."""
        events: list[Any] = []
        with make_session() as session:
            session.subscribe(events.append)
            with pytest.raises(requests.ConnectionError):
                session.post(f"http://127.0.0.1:{free_port()}/orders", data=b"x")
        assert [(e.attempts, e.reason) for e in events if isinstance(e, GaveUp)] == [
            (3, "attempts")
        ]


class TestReadTimeout:
    @pytest.fixture
    def hanging(self, peer):
        return peer.on("*", hang())

    def test_post_is_not_retried(self, hanging):
        """A read timeout on POST may mean the peer acted on it: it is raised after one attempt."""
        with make_session(timeout={"connect": 1.0, "read": 0.1, "total": 10.0}) as session:
            started = time.monotonic()
            with pytest.raises(requests.ReadTimeout):
                session.post(hanging.origin + "/orders", data=b"x")
        assert hanging.hits() == 1
        assert time.monotonic() - started < 1.0

    def test_get_is_retried(self, hanging):
        """The same read timeout on GET is retried up to the attempts."""
        with (
            make_session(timeout={"connect": 1.0, "read": 0.1, "total": 10.0}) as session,
            pytest.raises(requests.ReadTimeout),
        ):
            session.get(hanging.origin + "/items")
        assert hanging.hits() == 3

    def test_post_with_idempotency_key_is_retried(self, hanging):
        """A POST carrying the idempotency header is retried after a read timeout."""
        with (
            make_session(
                {"idempotency_header": "Idempotency-Key"},
                timeout={"connect": 1.0, "read": 0.1, "total": 10.0},
            ) as session,
            pytest.raises(requests.ReadTimeout),
        ):
            session.post(hanging.origin + "/orders", data=b"x", headers={"Idempotency-Key": "k1"})
        assert hanging.hits() == 3


class TestConnectionReuse:
    def test_1000_retried_failures_reuse_one_connection(self, peer):
        """
        1,000 retried 503s go over a handful of keep-alive connections: each discarded response is
        released.
        """
        peer.on("/", answer(503, b"x" * 512))
        with make_session({"attempts": 5, "backoff": NO_WAIT}) as session:
            for _ in range(250):
                assert session.get(peer.url("/")).attempts == 5
        assert peer.hits() == 1250  # 1,000 retried failures and 250 final answers
        assert peer.connections <= 2

    def test_streamed_retries_are_drained_and_reused(self, peer):
        """
        With stream=True the 1,000 discarded bodies are drained, so their connections are reused
        too.
        """
        peer.on("/", answer(503, b"y" * 4096))
        with make_session({"attempts": 5, "backoff": NO_WAIT}) as session:
            for _ in range(250):
                resp = session.get(peer.url("/"), stream=True)
                assert len(resp.content) == 4096  # the caller reads the last one
        assert peer.hits() == 1250
        assert peer.connections <= 2

    def test_concurrent_retries_stay_within_the_pool(self, peer):
        """Eight threads retrying failures never open more connections than there are callers."""
        peer.on("/", UNAVAILABLE)
        session = make_session({"attempts": 4, "backoff": NO_WAIT})

        def caller() -> None:
            for _ in range(40):
                session.get(peer.url("/"))

        threads = [threading.Thread(target=caller) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        session.close()
        assert peer.hits() == 8 * 40 * 4
        assert peer.connections <= 8


class TestBudgetUnderOutage:
    def test_amplification_stays_near_one_plus_ratio(self, peer):
        """
        Eight threads in a full outage: the peer sees at most (1 + ratio) x calls + the reserve, not
        3 x.
        """
        peer.on("/", UNAVAILABLE)
        # ratio 0.2, and a reserve of min_per_second x window = 1 x 10 = 10 retries:
        # peer calls <= 1.2 x calls + 10, i.e. <= 1.225 x for 400 calls.
        session = make_session(
            {"attempts": 3, "backoff": NO_WAIT},
            budget={"ratio": 0.2, "min_per_second": 1.0, "window": 10.0},
        )
        calls_per_thread, threads_n = 50, 8
        calls = calls_per_thread * threads_n

        def caller() -> None:
            for _ in range(calls_per_thread):
                assert session.get(peer.url("/")).status_code == 503

        threads = [threading.Thread(target=caller) for _ in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        session.close()
        bound = (1.2 * calls + 10) / calls
        amplification = peer.hits() / calls
        assert amplification <= bound <= 1.25
        assert amplification >= 1.2  # the budget's retries were used, not refused wholesale

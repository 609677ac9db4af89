"""
Hedged requests: the config section, the latency window, and the race
between copies on real loopback sockets (the peer counts the connections the
losers leave open, `threading.enumerate` the threads they leave running).
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from peers import Peer, Request, answer, delay, gate, hang, sequence, server_error
from requests.auth import HTTPDigestAuth

from resilient_client import (
    AttemptFinished,
    ConfigError,
    DeadlineExceeded,
    HedgePolicy,
    HedgeSent,
    HedgeWon,
    Policy,
    ResilientSession,
)
from resilient_client._config import Config
from resilient_client._hedge import HEDGE_THREADS, HedgePool, Race, hedge_pool
from resilient_client._latency import MIN_SAMPLES, REFRESH, WINDOW, LatencyWindow
from resilient_client._policy import HEDGE_DELAY_CEILING, HEDGE_DELAY_FLOOR


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as p:
        yield p


def make_session(hedge: dict[str, Any] | None = None, **defaults: Any) -> tuple[ResilientSession, list[Any]]:
    events: list[Any] = []
    config = {"defaults": {"hedge": hedge if hedge is not None else {"delay": 0.02},
                           "timeout": {"total": 3.0}, **defaults}}
    return ResilientSession(config, listeners=[events.append]), events


def hedge_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("resilient_client-hedge")]


def wait_for(predicate: Any, timeout: float = 2.0) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:  # bounded
        if predicate():
            return True
        time.sleep(0.005)
    return bool(predicate())


class TestConfig:
    def test_off_by_default(self) -> None:
        """No policy hedges unless configured."""
        assert Policy().hedge is None
        assert Config.load(None).defaults.hedge is None

    def test_endpoints_merge_over_defaults_and_null_switches_off(self) -> None:
        """`hedge` merges key by key over defaults; null in an endpoint turns it off there."""
        config = Config.load({
            "defaults": {"hedge": {"delay": "p95"}},
            "endpoints": [{"name": "a", "match": "http://a/", "hedge": {"max_extra": 2}},
                          {"name": "b", "match": "http://b/", "hedge": None}],
        })
        assert config.endpoints[0].policy.hedge == HedgePolicy(delay="p95", max_extra=2)
        assert config.endpoints[1].policy.hedge is None
        assert config.defaults.hedge is not None and config.defaults.hedge.percentile == 95.0

    @pytest.mark.parametrize(("value", "message"), [
        ({"delay": "p10"}, "endpoints[0].hedge.delay: must be seconds or a percentile"),
        ({"delay": "fast"}, "endpoints[0].hedge.delay: must be seconds or a percentile"),
        ({"delay": 0}, "endpoints[0].hedge.delay: must be a number > 0"),
        ({"max_extra": 0}, "endpoints[0].hedge.max_extra: must be an integer >= 1"),
        ({"max_extra": 9}, "endpoints[0].hedge.max_extra: must be at most 4"),
        ({"dealy": 0.1}, "endpoints[0].hedge.dealy: unknown key"),
        ([0.1], "endpoints[0].hedge: must be a mapping"),
    ])
    def test_bad_values_name_the_key_path(self, value: object, message: str) -> None:
        """Every bad hedge value is a ConfigError at its key path."""
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            Config.load({"endpoints": [{"name": "a", "match": "http://a/", "hedge": value}]})


class TestLatencyWindow:
    def test_cold_window_gives_the_ceiling(self) -> None:
        """Until MIN_SAMPLES latencies were seen, the delay is the ceiling: rare hedges, not blind ones."""
        w = LatencyWindow(95)
        for _ in range(MIN_SAMPLES - 1):
            w.record(0.01)
        assert w.value == HEDGE_DELAY_CEILING

    def test_percentile_of_the_recent_latencies(self) -> None:
        """The nearest-rank percentile of what was recorded, refreshed every REFRESH records."""
        w = LatencyWindow(90)
        for i in range(100):
            w.record(0.01 if i % 20 else 0.5)  # 5 % slow
        assert w.value == pytest.approx(0.01)
        w2 = LatencyWindow(95)
        for i in range(REFRESH * 10):
            w2.record(0.2 if i % 10 == 0 else 0.02)
        assert w2.value == pytest.approx(0.2)

    def test_clamped_to_floor_and_ceiling(self) -> None:
        """A very fast peer still waits the floor; a very slow one at most the ceiling."""
        fast, slow = LatencyWindow(95), LatencyWindow(95)
        for _ in range(REFRESH * 4):
            fast.record(0.0001)
            slow.record(30.0)
        assert fast.value == HEDGE_DELAY_FLOOR
        assert slow.value == HEDGE_DELAY_CEILING

    def test_memory_is_bounded_and_old_latencies_forgotten(self) -> None:
        """Only the last WINDOW latencies count: a slow spell is forgotten after WINDOW fast calls."""
        w = LatencyWindow(50)
        for _ in range(WINDOW * 3):
            w.record(0.5)
        for _ in range(WINDOW):
            w.record(0.01)
        assert w.value == pytest.approx(0.01)
        assert len(w._ring) == WINDOW and w.count == WINDOW * 4


class TestRace:
    def test_copies_finishing_after_close_are_told_so(self) -> None:
        """The caller takes finished copies in order; once closed, a finishing copy must clean up itself."""
        from resilient_client._hedge import Copy

        race = Race()
        a, b, c = Copy(0, None, 0.0), Copy(1, None, 0.0), Copy(2, None, 0.0)
        assert race.next_finished(0.0) is None
        assert race.finish(b, "b") and race.finish(a, "a")
        assert race.next_finished(0.0) is b
        assert race.close() == [a]
        assert race.finish(c, "c") is False and c.done

    def test_pool_refuses_instead_of_queueing(self) -> None:
        """A full pool runs nothing and says so; a freed worker is reused, not a new thread."""
        pool = HedgePool(1)
        release, ran = threading.Event(), []
        assert pool.threads() == 0  # lazily started
        assert pool.try_submit(release.wait, 2.0)
        assert not pool.try_submit(ran.append, 1)
        release.set()
        assert wait_for(lambda: pool.try_submit(ran.append, 2))
        assert wait_for(lambda: ran == [2]) and pool.threads() == 1


class TestOnSockets:
    def test_the_hedge_answers_when_the_first_copy_is_slow(self, peer: Peer) -> None:
        """First request slow, the next fast: the hedge's answer is taken, well before the slow one."""
        peer.on("/x", delay(2.0, answer(200, b"slow")), answer(200, b"fast"))
        session, events = make_session()
        started = time.monotonic()
        resp = session.get(peer.url("/x"))
        took = time.monotonic() - started
        assert resp.text == "fast" and resp.attempts == 2 and resp.hedged is True
        assert took < 1.0
        assert [type(e) for e in events if isinstance(e, (HedgeSent, HedgeWon))] == [HedgeSent, HedgeWon]
        # The loser's connection is closed at once (not pooled half-read): one stays open, for reuse.
        assert peer.wait_open_at_most(1) == 1
        again = session.get(peer.url("/x"))
        assert again.text == "fast" and again.attempts == 1 and again.hedged is False
        assert peer.wait_open_at_most(2) <= 2

    def test_a_fast_answer_sends_no_hedge(self, peer: Peer) -> None:
        """An answer before the delay: one request on the wire, hedged False."""
        peer.on("/x", answer(200, b"ok"))
        session, events = make_session({"delay": 1.0})
        for _ in range(5):
            resp = session.get(peer.url("/x"))
            assert resp.attempts == 1 and resp.hedged is False
        assert peer.hits("/x") == 5 and not [e for e in events if isinstance(e, HedgeSent)]

    def test_race_decided_by_events_first_copy_wins(self, peer: Peer) -> None:
        """Deterministic race: both copies sent, the first released first: its answer, the hedge abandoned."""
        first, second = threading.Event(), threading.Event()
        peer.on("/r", sequence(gate(first), answer(200, b"first")),
                sequence(gate(second), answer(200, b"second")))
        session, events = make_session({"delay": 0.01})
        got: list[requests.Response] = []
        caller = threading.Thread(target=lambda: got.append(session.get(peer.url("/r"))))
        caller.start()
        assert wait_for(lambda: peer.hits("/r") == 2)  # the hedge is on the wire too
        first.set()
        caller.join(5)
        assert got[0].text == "first" and got[0].attempts == 2 and got[0].hedged is True
        assert not [e for e in events if isinstance(e, HedgeWon)]
        assert peer.wait_open_at_most(1) == 1  # the hedge's connection was closed, not kept waiting

    def test_race_decided_by_events_hedge_wins(self, peer: Peer) -> None:
        """Deterministic race: the hedge released first wins; the first copy's connection is closed."""
        first, second = threading.Event(), threading.Event()
        peer.on("/r", sequence(gate(first), answer(200, b"first")),
                sequence(gate(second), answer(200, b"second")))
        session, events = make_session({"delay": 0.01})
        got: list[requests.Response] = []
        caller = threading.Thread(target=lambda: got.append(session.get(peer.url("/r"))))
        caller.start()
        assert wait_for(lambda: peer.hits("/r") == 2)
        second.set()
        caller.join(5)
        assert got[0].text == "second" and got[0].attempts == 2
        assert [e.attempt for e in events if isinstance(e, HedgeWon)] == [2]
        assert peer.wait_open_at_most(1) == 1
        first.set()

    def test_both_copies_failing_follow_the_one_retry_verdict(self, peer: Peer) -> None:
        """Two 503s make one failed attempt; the retry then answers; attempts counts every copy."""
        peer.on("/x", delay(0.1, server_error(503)), server_error(503), answer(200, b"ok"))
        session, _ = make_session({"delay": 0.02},
                                  retry={"backoff": {"initial": 0.001, "max": 0.001}})
        resp = session.get(peer.url("/x"))
        assert resp.status_code == 200 and resp.attempts >= 3 and resp.hedged is True

    @pytest.mark.parametrize("how", ["post", "post_keyed", "stream", "generator"])
    def test_unsafe_calls_are_never_hedged(self, peer: Peer, how: str) -> None:
        """POST (even with an idempotency key), stream=True and a one-shot body: one copy only."""
        peer.on("/x", delay(0.15, answer(200, b"ok")))
        session, events = make_session({"delay": 0.01}, retry={"idempotency_header": "Idempotency-Key"})
        url = peer.url("/x")
        if how == "post":
            resp = session.post(url, data=b"x")
        elif how == "post_keyed":
            resp = session.post(url, data=b"x", headers={"Idempotency-Key": "k1"})
        elif how == "stream":
            resp = session.get(url, stream=True)
            resp.close()
        else:
            resp = session.put(url, data=iter([b"a", b"b"]))
        assert resp.attempts == 1 and resp.hedged is False and peer.hits("/x") == 1
        assert not [e for e in events if isinstance(e, HedgeSent)]

    def test_an_exhausted_budget_sends_no_hedge(self, peer: Peer) -> None:
        """A hedge draws on the retry budget: with none left, the slow copy is waited for."""
        peer.on("/x", delay(0.15, answer(200, b"ok")))
        session, _ = make_session({"delay": 0.01}, budget={"ratio": 0.0, "min_per_second": 0.0})
        resp = session.get(peer.url("/x"))
        assert resp.hedged is False and resp.attempts == 1 and peer.hits("/x") == 1

    def test_a_full_bulkhead_sends_no_hedge(self, peer: Peer) -> None:
        """A hedge needs a bulkhead slot of its own: the call holds the only one."""
        peer.on("/x", delay(0.15, answer(200, b"ok")))
        session, _ = make_session({"delay": 0.01}, bulkhead={"max_concurrent": 1})
        resp = session.get(peer.url("/x"))
        assert resp.hedged is False and peer.hits("/x") == 1
        state = session._route_for("GET", peer.url("/x")).state
        assert state.bulkhead is not None and state.bulkhead.in_flight == 0

    def test_a_half_open_breaker_lets_only_the_trial_through(self, peer: Peer) -> None:
        """Half-open: the first copy is the one trial; no hedge joins it."""
        peer.on("/y", server_error(500), delay(0.15, answer(200, b"ok")))
        session, _ = make_session({"delay": 0.01}, breaker={"failure_threshold": 1, "reset_timeout": 0.05})
        assert session.get(peer.url("/y"), policy={"hedge": None}).status_code == 500
        assert session.circuit(peer.url("/y")).state != "closed"
        time.sleep(0.06)
        resp = session.get(peer.url("/y"))
        assert resp.status_code == 200 and resp.hedged is False and peer.hits("/y") == 2
        assert session.circuit(peer.url("/y")).state == "closed"

    def test_a_breaker_not_closed_sends_no_hedge(self, peer: Peer) -> None:
        """The breaker opens while the first copy waits: no hedge follows it."""
        release = threading.Event()
        session, events = make_session({"delay": 0.2})
        breaker = session.circuit(peer.url("/x"))

        def first_copy_arrives(request: Any) -> Any:
            breaker.open()  # as the first copy reaches the peer, long before the delay
            return sequence(gate(release), answer(200, b"ok"))

        peer.on("/x", first_copy_arrives)
        got: list[requests.Response] = []
        caller = threading.Thread(target=lambda: got.append(session.get(peer.url("/x"))))
        caller.start()
        assert wait_for(lambda: peer.hits("/x") >= 1)
        time.sleep(0.3)  # past the hedge delay
        release.set()
        caller.join(5)
        assert got[0].hedged is False and peer.hits("/x") == 1
        assert not [e for e in events if isinstance(e, HedgeSent)]

    def test_the_deadline_with_hedges_on_a_hanging_peer(self, peer: Peer) -> None:
        """Hedges sent (retry on), every copy hangs: the deadline holds, no connection stays open."""
        peer.on("/x", hang())
        session, events = make_session({"delay": 0.02, "max_extra": 2}, timeout={"total": 0.3})
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded) as info:
            session.get(peer.url("/x"))
        assert time.monotonic() - started < 0.3 + 0.3  # "well under a second late"
        assert len([e for e in events if isinstance(e, HedgeSent)]) == 2
        assert info.value.attempts == 3  # type: ignore[attr-defined]
        assert peer.wait_open_at_most(0) == 0
        assert wait_for(lambda: threading.active_count() <= 4 + HEDGE_THREADS)

    def test_threads_stay_bounded_and_reused(self, peer: Peer) -> None:
        """Many hedged calls from several callers: hedge threads never exceed the pool's bound."""
        peer.on("/x", delay(0.05, answer(200, b"slow")), answer(200, b"fast"))
        session, _ = make_session({"delay": 0.01})
        seen: list[int] = []

        def caller() -> None:
            for _ in range(10):
                session.get(peer.url("/x"))
                seen.append(len(hedge_threads()))

        callers = [threading.Thread(target=caller) for _ in range(4)]
        for t in callers:
            t.start()
        for t in callers:
            t.join(10)
        assert max(seen) <= HEDGE_THREADS and hedge_pool().threads() <= HEDGE_THREADS

    def test_hedged_survives_pickling(self, peer: Peer) -> None:
        """resp.hedged is kept by pickle, like attempts and is_fallback."""
        peer.on("/x", delay(1.0, answer(200, b"slow")), answer(200, b"fast"))
        session, _ = make_session()
        resp = pickle.loads(pickle.dumps(session.get(peer.url("/x"))))
        assert resp.hedged is True and resp.attempts == 2

    def test_learned_delay_hedges_only_the_tail(self, peer: Peer) -> None:
        """With delay p90, the window learns a fast peer's latency, and only its slowest calls are hedged."""
        peer.on("/x", answer(200, b"ok"))
        session, events = make_session({"delay": "p90"})
        for _ in range(60):
            session.get(peer.url("/x"))
        state = session._route_for("GET", peer.url("/x")).state
        assert state.latency is not None and state.latency.count >= 60
        assert state.latency.value < HEDGE_DELAY_CEILING
        # Cold (the first 20 calls) no hedge can fire; warm, about 10 % of calls exceed a p90.
        assert len([e for e in events if isinstance(e, HedgeSent)]) <= 20


def test_a_session_without_hedging_starts_no_thread(peer: Peer) -> None:
    """The hedge pool is started by the first hedged call, never by a session that does not hedge."""
    peer.on("/x", answer(200, b"ok"))
    code = (
        "import resilient_client, threading\n"
        "from resilient_client._hedge import hedge_pool\n"
        f"s = resilient_client.ResilientSession()\n"
        f"assert s.get({peer.url('/x')!r}).status_code == 200\n"
        "print(hedge_pool().threads(), threading.active_count())\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.split() == ["0", "1"]


class TestWithTheTestingKit:
    def test_first_copy_held_the_hedge_answers(self) -> None:
        """The kit scripts "the first copy is slow, the hedge is fast": hold the first, answer the next."""
        from resilient_client.testing import fake_peers

        url = "https://search.internal/q"
        with fake_peers() as peers:
            search = peers.url(url).hold(body=b"slow", times=1).respond(200, body=b"fast")
            session = peers.session({"defaults": {"hedge": {"delay": 0.01}}})
            resp = session.get(url)
            search.release()  # the first copy, abandoned, is let go
            assert resp.text == "fast" and resp.hedged is True and resp.attempts == 2
            assert peers.attempts(url) == 2
            assert len(peers.events.of(HedgeWon)) == 1


def test_policy_switches_hedging_off_for_one_call(peer: Peer) -> None:
    """policy={"hedge": None} sends one copy only, on an endpoint that hedges."""
    peer.on("/x", delay(0.1, answer(200, b"slow")), answer(200, b"fast"))
    session, _ = make_session({"delay": 0.01})
    resp = session.get(peer.url("/x"), policy={"hedge": None})
    assert resp.text == "slow" and resp.hedged is False and peer.hits("/x") == 1


def test_a_closed_session_keeps_no_connection_open(peer: Peer) -> None:
    """The losing copy's error holds no reference cycle to the pool: closing the session closes it all."""
    peer.on("/x", delay(2.0, answer(200, b"slow")), answer(200, b"fast"))
    session, _ = make_session({"delay": 0.02})
    assert session.get(peer.url("/x")).text == "fast"
    session.close()
    assert peer.wait_open_at_most(0) == 0


def test_prometheus_counts_hedges_sent_and_won() -> None:
    """hedges_total{result=sent|won} follows the HedgeSent and HedgeWon events."""
    from prometheus_client import CollectorRegistry

    from resilient_client import prometheus_listener

    registry = CollectorRegistry()
    listen = prometheus_listener(registry)
    listen(HedgeSent("search", "GET", "https://search.internal/q", 2, 0.02))
    listen(HedgeSent("search", "GET", "https://search.internal/q", 2, 0.02))
    listen(HedgeWon("search", "GET", "https://search.internal/q", 2, 0.03))
    name = "resilient_client_hedges_total"
    assert registry.get_sample_value(name, {"endpoint": "search", "result": "sent"}) == 2
    assert registry.get_sample_value(name, {"endpoint": "search", "result": "won"}) == 1


def test_copies_run_in_the_callers_context() -> None:
    """A copy on a worker thread sees the caller's context variables (a trace's current span)."""
    import contextvars

    var: contextvars.ContextVar[str] = contextvars.ContextVar("var", default="unset")
    seen: list[str] = []
    done = threading.Event()
    pool = HedgePool(1)
    var.set("the caller's")
    assert pool.try_submit(lambda: (seen.append(var.get()), done.set()))
    assert done.wait(2) and seen == ["the caller's"]


def test_the_async_client_says_it_does_not_hedge(caplog: pytest.LogCaptureFixture) -> None:
    """AsyncResilientClient does not hedge yet, and says so rather than ignoring the section."""
    pytest.importorskip("httpx")
    import logging

    from resilient_client import AsyncResilientClient

    with caplog.at_level(logging.WARNING, logger="resilient_client"):
        AsyncResilientClient({"endpoints": [{"name": "s", "match": "http://s/", "hedge": {}}]})
    assert "AsyncResilientClient does not hedge requests yet" in caplog.text and "'s'" in caplog.text


class _DigestPeer:
    """Asks for digest auth; answers an authenticated request 200, after *pause* seconds for the first."""

    def __init__(self, pause: float = 0.0) -> None:
        self.pause = pause
        self.authenticated = 0
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Any:
        if "authorization" not in request.headers:
            challenge = 'Digest realm="r", nonce="n1", qop="auth"'
            return answer(401, b"auth please", {"WWW-Authenticate": challenge})
        with self.lock:
            self.authenticated += 1
            first = self.authenticated == 1
        return delay(self.pause, answer(200, b"slow")) if first and self.pause else answer(200, b"secret")


class TestReviewFindings:
    @pytest.mark.parametrize("pause", [0.0, 1.0], ids=["no hedge sent", "hedge sent"])
    def test_digest_auth_works_with_hedging_on(self, peer: Peer, pause: float) -> None:
        """Each copy runs on a pool thread: the digest auth's per-thread state is set up there."""
        peer.on("/d", _DigestPeer(pause))
        session, _ = make_session({"delay": 0.1})
        resp = session.get(peer.url("/d"), auth=HTTPDigestAuth("u", "p"))
        assert resp.status_code == 200 and resp.text == "secret"
        assert peer.last("/d").headers["authorization"].startswith("Digest ")

    def test_a_copy_not_sent_when_the_race_is_decided_is_never_sent(self, peer: Peer) -> None:
        """The hedge's thread starts late, after the first copy won: it sends nothing, attempts counts one."""
        peer.on("/x", delay(0.15, answer(200, b"first")))
        session, events = make_session({"delay": 0.02})
        release, ran = threading.Event(), threading.Event()
        run_copy = session._run_copy

        def late(copy_: Any, race: Race, bulkhead: Any) -> None:
            if copy_.index == 1:
                release.wait(2)
            run_copy(copy_, race, bulkhead)
            if copy_.index == 1:
                ran.set()

        session._run_copy = late  # type: ignore[method-assign]
        resp = session.get(peer.url("/x"))
        release.set()
        assert ran.wait(2)
        assert [type(e) for e in events if isinstance(e, HedgeSent)] == [HedgeSent]
        assert resp.text == "first" and resp.attempts == peer.hits("/x") == 1

    def test_the_losing_copy_has_its_attempt_event(self, peer: Peer) -> None:
        """The abandoned copy was on the wire: its AttemptFinished says "abandoned"."""
        peer.on("/x", delay(2.0, answer(200, b"slow")), answer(200, b"fast"))
        session, events = make_session({"delay": 0.02})
        resp = session.get(peer.url("/x"))
        assert resp.text == "fast" and resp.attempts == 2
        assert wait_for(lambda: len([e for e in events if isinstance(e, AttemptFinished)]) == 2)
        finished = sorted((e.attempt, e.outcome) for e in events if isinstance(e, AttemptFinished))
        assert finished == [(1, "abandoned"), (2, "ok")]

    def test_a_call_with_no_thread_free_says_its_hedge_was_skipped(self, peer: Peer) -> None:
        """Every hedging thread busy: the call runs unhedged, and HedgeSkipped (and the metric) says so."""
        from prometheus_client import CollectorRegistry

        from resilient_client import HedgeSkipped, prometheus_listener

        peer.on("/x", answer(200, b"ok"))
        registry = CollectorRegistry()
        session, events = make_session({"delay": 0.02})
        session.subscribe(prometheus_listener(registry))
        release = threading.Event()
        taken = 0
        try:
            while taken < HEDGE_THREADS and hedge_pool().try_submit(release.wait, 5.0):  # bounded
                taken += 1
            resp = session.get(peer.url("/x"))
        finally:
            release.set()
        assert resp.text == "ok" and resp.attempts == 1 and resp.hedged is False
        skipped = [e for e in events if isinstance(e, HedgeSkipped)]
        assert [(e.method, e.reason) for e in skipped] == [("GET", "no_thread")]
        sample = registry.get_sample_value("resilient_client_hedges_total",
                                           {"endpoint": skipped[0].endpoint, "result": "skipped"})
        assert sample == 1


def test_check_shows_hedge_as_rows_and_warns_when_nothing_is_hedged(
    tmp_path: Any, capsys: pytest.CaptureFixture[str],
) -> None:
    """`resilient-client check`: hedge.delay and hedge.max_extra rows; hedge with retry: null is a warning."""
    import json

    from resilient_client.tools._cli import main

    path = tmp_path / "c.json"
    path.write_text(json.dumps({"endpoints": [
        {"name": "search", "match": "http://a/", "hedge": {"delay": "p90", "max_extra": 2}},
        {"name": "pay", "match": "http://b/", "retry": None, "hedge": {}},
    ]}))
    assert main(["check", str(path), "--width", "200"]) == 0  # warnings only
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  hedge.")}
    assert rows == {"hedge.delay": ["off", "p90", "*", "0.05", "*"],
                    "hedge.max_extra": ["off", "2", "*", "1", "*"]}
    assert "HedgePolicy(" not in out
    warned = [line for line in out.splitlines() if "[hedge-without-retry]" in line]
    assert len(warned) == 1 and "endpoint 'pay'" in warned[0]

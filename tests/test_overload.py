"""
Overload control (issue 14): client-side adaptive throttling (`_throttle`),
the adaptive concurrency limit (`_concurrency`), 429/Retry-After as an
endpoint-wide signal and errors the proxy made (`proxy_errors`).

The arithmetic runs on a fake clock with an injected random source; the
session's behaviour runs against real loopback peers (tests/peers.py); the
host-shared throttle against a second real process.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from peers import Peer, answer, delay, gate, redirect, retry_after, sequence

import resilient_client
from resilient_client import (
    BulkheadFull,
    CallThrottled,
    ConcurrencyPolicy,
    ConfigError,
    ResilienceError,
    Throttled,
    ThrottlePolicy,
)
from resilient_client._concurrency import AdaptiveLimit
from resilient_client._overload import Overload
from resilient_client._policy import Policy
from resilient_client._throttle import Throttle, reject_probability
from resilient_client._verdict import AttemptOutcome, of_proxy_status, of_status
from resilient_client.testing import FakeClock

OK = of_status(200, frozenset({500, 502, 503, 504}))
FAILED = of_status(503, frozenset({500, 502, 503, 504}))


def throttle(rand: float = 0.0, **kw: Any) -> tuple[Throttle, FakeClock]:
    clock = FakeClock()
    policy = ThrottlePolicy(**{"min_requests": 0, **kw})
    return Throttle(policy, clock, rand=lambda: rand), clock


# -- the arithmetic, on a fake clock ------------------------------------------------


class TestRejectProbability:
    def test_the_sre_formula(self) -> None:
        """(requests - k * accepts) / (requests + 1), floored at 0."""
        policy = ThrottlePolicy(k=2.0, min_requests=0, max_reject=1.0)
        assert reject_probability(100, 40, policy) == pytest.approx(20 / 101)
        assert reject_probability(100, 50, policy) == 0.0
        assert reject_probability(100, 0, policy) == pytest.approx(100 / 101)

    def test_capped_at_max_reject(self) -> None:
        assert reject_probability(1000, 0, ThrottlePolicy(max_reject=0.5, min_requests=0)) == 0.5

    def test_nothing_below_min_requests(self) -> None:
        policy = ThrottlePolicy(min_requests=20)
        assert reject_probability(19, 0, policy) == 0.0
        assert reject_probability(20, 0, policy) > 0.0


class TestThrottle:
    def test_a_healthy_peer_is_never_throttled(self) -> None:
        t, clock = throttle(rand=0.0)  # rand 0: any probability above 0 refuses
        for _ in range(500):
            assert t.admit()
            t.record(True)
            clock.advance(0.01)
        assert t.refused == 0

    def test_failing_peer_is_throttled_up_to_max_reject(self) -> None:
        t, _ = throttle(rand=0.5, max_reject=0.9)
        for _ in range(100):
            t.record(False)
        assert t.rate() == pytest.approx(0.9)
        assert not t.admit()
        assert t.snapshot() == (101, 0)  # the refusal counts as a request

    def test_counts_leave_the_window(self) -> None:
        """Buckets older than `window` are forgotten: the peer gets a fresh chance."""
        t, clock = throttle(window=10.0)
        for _ in range(50):
            t.record(False)
        clock.advance(5.0)
        for _ in range(50):
            t.record(True)
        assert t.snapshot() == (100, 50)
        clock.advance(5.5)  # the first 50 slid out
        assert t.snapshot() == (50, 50)
        clock.advance(100.0)
        assert t.snapshot() == (0, 0)
        assert t.rate() == 0.0

    def test_recovers_once_the_peer_accepts_again(self) -> None:
        t, clock = throttle(rand=0.99, window=10.0, max_reject=0.9)
        for _ in range(100):
            t.record(False)
        assert t.rate() > 0.8
        for _ in range(200):  # the peer is back: accepts outweigh the window's failures
            clock.advance(0.05)
            if t.admit():
                t.record(True)
        assert t.rate() == 0.0


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from(["ok", "fail", "call", "tick"]), st.floats(0, 1)),
             max_size=300),
    st.floats(0.0, 1.0),
    st.floats(1.0, 4.0),
)
def test_property_reject_rate_is_capped_and_zero_while_healthy(
    steps: list[tuple[str, float]], max_reject: float, k: float,
) -> None:
    """
    Whatever the sequence of outcomes, refusals and time, the refusal
    probability never exceeds max_reject; while the peer accepted every
    completed call, it is 0 and nothing is refused.
    """
    clock = FakeClock()
    draws = iter([d for _, d in steps] + [0.0] * 1000)
    t = Throttle(ThrottlePolicy(k=k, max_reject=max_reject, min_requests=0, window=5.0), clock,
                 rand=lambda: next(draws))
    healthy = True
    for action, value in steps:
        if action == "tick":
            clock.advance(value * 3)
        elif action == "call":
            if not t.admit():
                assert not healthy
        else:
            healthy = healthy and action == "ok"
            t.record(action == "ok")
        assert 0.0 <= t.rate() <= max_reject
        if healthy:
            assert t.rate() == 0.0


class TestAdaptiveLimit:
    def test_aimd_grows_while_in_use_and_backs_off_on_a_drop(self) -> None:
        limit = AdaptiveLimit(ConcurrencyPolicy(initial=4, min=2, backoff=0.5), ceiling=8)
        for _ in range(4):
            assert limit.try_acquire()
        assert not limit.try_acquire()
        assert limit.rejected == 1
        for _ in range(5):  # a window of calls with the limit in use: +1
            limit.release(dropped=False, rtt=0.01)
            limit.try_acquire()
        assert limit.limit == 5
        for _ in range(100):
            limit.release(dropped=False, rtt=0.01)
            limit.try_acquire()
        assert limit.limit == 8  # the bulkhead's ceiling
        for _ in range(limit.in_flight):
            limit.release(dropped=False, rtt=None)
        limit.release(dropped=True, rtt=None)
        assert limit.limit == 4
        for _ in range(5):
            limit.release(dropped=True, rtt=None)
        assert limit.limit == 2  # never below min

    def test_aimd_backs_off_once_per_window_of_calls(self) -> None:
        """Ten calls in flight that all saw one queue are one signal, not ten back-offs."""
        limit = AdaptiveLimit(ConcurrencyPolicy(initial=10, backoff=0.5), ceiling=50)
        for _ in range(10):
            assert limit.try_acquire()
        for _ in range(10):
            limit.release(dropped=True, rtt=None)
        assert limit.limit == 5
        limit.release(dropped=True, rtt=None)  # a later call: the next window
        assert limit.limit == 2

    def test_aimd_does_not_grow_when_the_limit_is_not_in_use(self) -> None:
        limit = AdaptiveLimit(ConcurrencyPolicy(initial=10), ceiling=50)
        for _ in range(100):
            assert limit.try_acquire()
            limit.release(dropped=False, rtt=0.01)
        assert limit.limit == 10

    @staticmethod
    def calls(limit: AdaptiveLimit, rtts: list[float]) -> list[int]:
        """Each rtt one call made with the limit in use; the limit after each."""
        seen = []
        for rtt in rtts:
            while limit.in_flight < limit.limit and limit.try_acquire():
                pass
            limit.release(dropped=False, rtt=rtt)
            seen.append(limit.limit)
        return seen

    def test_aimd_treats_a_sustained_latency_rise_as_a_drop(self) -> None:
        limit = AdaptiveLimit(ConcurrencyPolicy(initial=10, latency_factor=2.0, backoff=0.5), ceiling=10)
        assert self.calls(limit, [0.05] * 50)[-1] == 10
        after = self.calls(limit, [0.5] * 30)  # 10x the usual, call after call: the peer is queueing
        assert after[:9] == [10] * 9  # not on the first slow calls: sustained
        assert min(after) <= 5

    def test_aimd_keeps_its_limit_on_a_healthy_peer_with_mixed_latencies(self) -> None:
        """A 1 ms lookup beside a 30 ms report is not a queue (review of issue 14: limit 1)."""
        import random

        rng = random.Random(7)
        for mix in (0.5, 0.2, 0.05):
            limit = AdaptiveLimit(ConcurrencyPolicy(initial=10, latency_factor=2.0), ceiling=10)
            rtts = [0.03 if rng.random() < mix else 0.001 for _ in range(2000)]
            assert min(self.calls(limit, rtts)) == 10, mix

    def test_aimd_a_rare_slow_call_is_not_a_drop(self) -> None:
        limit = AdaptiveLimit(ConcurrencyPolicy(initial=10, latency_factor=2.0), ceiling=10)
        rtts = ([0.001] * 99 + [0.5]) * 10  # one call in a hundred 500x slower
        assert min(self.calls(limit, rtts)) == 10

    def test_gradient_shrinks_when_latency_rises(self) -> None:
        limit = AdaptiveLimit(ConcurrencyPolicy(algorithm="gradient", initial=20), ceiling=100)
        for _ in range(50):
            for _ in range(20):
                limit.try_acquire()
            for _ in range(20):
                limit.release(dropped=False, rtt=0.05)
        steady = limit.limit
        for _ in range(3):  # soon after the rise (the slow average drifts to a new baseline later)
            for _ in range(steady):
                limit.try_acquire()
            for _ in range(steady):
                limit.release(dropped=False, rtt=0.5)
        assert limit.limit < steady


class TestOverloadCounting:
    def make(self) -> tuple[Overload, FakeClock]:
        clock = FakeClock()
        policy = Policy(throttle=ThrottlePolicy(min_requests=1000), concurrency=ConcurrencyPolicy())
        return Overload(policy, clock), clock

    def test_accepts_are_answers_that_are_not_failures_429s_or_proxy_errors(self) -> None:
        o, _ = self.make()
        for outcome in (OK, FAILED, of_status(429, frozenset()), of_proxy_status(503),
                        of_proxy_status(502), AttemptOutcome("read_timeout", None, True, True)):
            assert o.admit() is None
            o.finish(outcome, 0.01)
        assert o.status().requests == 6 and o.status().accepts == 1

    def test_refusals_and_calls_with_no_attempt_are_not_counted(self) -> None:
        o, _ = self.make()
        for outcome in (None, AttemptOutcome("circuit_open", None, False, False),
                        AttemptOutcome("bulkhead_full", None, False, False)):
            assert o.admit() is None
            o.finish(outcome, 0.01)
        assert (o.status().requests, o.status().in_flight) == (0, 0)

    def test_a_call_the_deadline_ended_is_a_request_without_an_accept(self) -> None:
        """Cut by the deadline after it was sent (HAProxy's queue longer than the deadline)."""
        o, _ = self.make()
        for reached in (True, False):  # cut in flight, or between its attempts
            assert o.admit() is None
            o.finish(AttemptOutcome("deadline", None, reached, False), 0.01)
        assert (o.status().requests, o.status().accepts, o.status().in_flight) == (2, 0, 0)

    def test_a_retry_after_holds_the_endpoint(self) -> None:
        o, clock = self.make()
        o.hold(2.0)
        assert o.admit() == "retry_after"
        assert o.status().retry_in == pytest.approx(2.0)
        clock.advance(2.0)
        assert o.admit() is None


class TestConfig:
    def test_sections_merge_from_defaults_and_switch_off(self) -> None:
        config = resilient_client.Config.load({
            "defaults": {"throttle": {"k": 1.5}, "concurrency": {"initial": 5}},
            "endpoints": [{"match": "http://a/", "throttle": {"window": 10}, "concurrency": None},
                          {"match": "http://b/", "proxy_errors": {}}],
        })
        a, b = (e.policy for e in config.endpoints)
        assert a.throttle == ThrottlePolicy(k=1.5, window=10.0) and a.concurrency is None
        assert b.proxy_errors is not None and b.proxy_errors.header == "X-Proxy-Error"
        assert config.defaults.proxy_errors is None

    def test_bad_values_name_their_key_path(self) -> None:
        with pytest.raises(ConfigError) as err:
            resilient_client.Config.load({"endpoints": [{"match": "http://a/", "throttle": {
                "k": 0.5, "max_reject": 1.5, "window": 0, "min_requests": -1, "kk": 1},
                "concurrency": {"algorithm": "vegas", "initial": 1, "min": 2, "backoff": 1.0},
                "proxy_errors": {"header": "X Proxy"}}]})
        text = str(err.value)
        for path in ("throttle.k", "throttle.max_reject", "throttle.window", "throttle.min_requests",
                     "throttle.kk", "concurrency.algorithm", "concurrency.initial",
                     "concurrency.backoff", "proxy_errors.header"):
            assert f"endpoints[0].{path}:" in text, path

    @pytest.mark.parametrize("window", [1e-310, 1e-3, 0.5])
    def test_a_throttle_window_under_a_second_is_refused_at_load(self, window: float) -> None:
        """Not accepted and then failing every call (1e-310 overflowed the bucket arithmetic)."""
        with pytest.raises(ConfigError, match=r"defaults\.throttle\.window: must be at least 1"):
            resilient_client.Config.load({"defaults": {"throttle": {"window": window}}})
        resilient_client.Config.load({"defaults": {"throttle": {"window": 1}}})

    def test_concurrency_min_above_the_bulkhead_is_refused(self) -> None:
        """The limit is a ceiling under the bulkhead: it could never keep its promised min."""
        with pytest.raises(ConfigError, match=r"endpoints\[0\]\.concurrency\.min: must be <= "
                                              r"bulkhead\.max_concurrent \(5\), got 20"):
            resilient_client.Config.load({"defaults": {"concurrency": {"min": 20, "initial": 30}},
                                          "endpoints": [{"match": "http://a/",
                                                         "bulkhead": {"max_concurrent": 5}}]})

    def test_endpoints_sharing_a_name_must_agree(self) -> None:
        with pytest.raises(ConfigError, match=r"endpoints\[1\]\.throttle"):
            resilient_client.Config.load({"endpoints": [
                {"name": "x", "match": "http://a/", "throttle": {}},
                {"name": "x", "match": "http://b/"}]})


# -- the session, on real sockets ---------------------------------------------------


def session(config: dict[str, Any], **kw: Any) -> resilient_client.ResilientSession:
    s = resilient_client.ResilientSession(config, **kw)
    s.trust_env = False
    return s


THROTTLED = {"defaults": {"retry": None, "breaker": None, "budget": None,
                          "throttle": {"min_requests": 10, "window": 60, "max_reject": 0.9}}}


class TestThrottleOnSockets:
    def test_a_failing_peer_gets_a_fraction_of_the_calls(self) -> None:
        events: list[Any] = []
        with Peer().on("*", answer(503)) as peer, session(THROTTLED, listeners=[events.append]) as s:
            refused = 0
            for _ in range(300):
                try:
                    s.get(peer.url("/x"))
                except Throttled as exc:
                    assert isinstance(exc, requests.ConnectionError) and isinstance(exc, ResilienceError)
                    assert exc.reason == "throttle"
                    refused += 1
            assert refused + peer.hits() == 300
            # The book's steady state lets through about (1 - max_reject) of the calls.
            assert peer.hits() < 100
            status = s.overload(peer.url("/"))
            assert status.refused == refused and status.reject_rate == pytest.approx(0.9)
            kinds = {e.reason for e in events if isinstance(e, CallThrottled)}
            assert kinds == {"throttle"}
            health = s.health().endpoints[0]
            assert health.throttle_reject_rate == pytest.approx(0.9)

    def test_a_healthy_peer_is_never_throttled(self) -> None:
        with Peer().on("*", answer(200, b"ok")) as peer, session(THROTTLED) as s:
            for _ in range(200):
                assert s.get(peer.url("/x")).status_code == 200
            assert s.overload(peer.url("/")).refused == 0
            assert peer.hits() == 200

    def test_a_refused_call_gets_the_fallback(self) -> None:
        config = {"defaults": {**THROTTLED["defaults"], "fallback": {"status": 200, "text": "cached"}}}
        with Peer().on("*", answer(500)) as peer, session(config) as s:
            answers = [s.get(peer.url("/x")) for _ in range(100)]
            fallbacks = [r for r in answers if r.is_fallback and r.attempts == 0]
            assert fallbacks and all(r.text == "cached" for r in fallbacks)
            assert peer.hits() + len(fallbacks) == 100

    def test_off_by_default(self) -> None:
        with session(None) as s, pytest.raises(KeyError, match="no overload control"):
            s.overload("http://127.0.0.1:1/")


class TestConcurrencyOnSockets:
    def test_a_call_beyond_the_limit_is_refused_as_bulkhead_full(self) -> None:
        release = threading.Event()
        config = {"defaults": {"retry": None, "concurrency": {"initial": 2}}}
        with Peer().on("/slow", sequence(gate(release), answer(200))).on("*", answer(200)) as peer, \
                session(config) as s:
            results: list[Any] = []
            threads = [threading.Thread(target=lambda: results.append(s.get(peer.url("/slow"))))
                       for _ in range(2)]
            for t in threads:
                t.start()
            for _ in range(200):  # bounded wait until both calls are in flight
                if s.overload(peer.url("/")).in_flight == 2:
                    break
                release.wait(0.01)
            with pytest.raises(BulkheadFull) as err:
                s.get(peer.url("/other"))
            assert err.value.max_concurrent == 2
            release.set()
            for t in threads:
                t.join(5)
            assert [r.status_code for r in results] == [200, 200]
            assert peer.hits("/other") == 0

    def test_the_limit_learns_from_failures(self) -> None:
        config = {"defaults": {"retry": None, "breaker": None,
                               "concurrency": {"initial": 20, "min": 3, "backoff": 0.5}}}
        with Peer().on("*", answer(503)) as peer, session(config) as s:
            for _ in range(10):
                s.get(peer.url("/x"))
            assert s.overload(peer.url("/")).limit == 3
            assert s.health().endpoints[0].concurrency_limit == 3


class TestRetryAfterOnSockets:
    def test_a_429_with_retry_after_holds_the_whole_endpoint(self) -> None:
        clock = FakeClock()
        config = {"defaults": {"retry": None, "concurrency": {}}}
        events: list[Any] = []
        with Peer().on("/a", retry_after(429, "5")).on("*", answer(200)) as peer, \
                session(config, clock=clock, listeners=[events.append]) as s:
            assert s.get(peer.url("/a")).status_code == 429
            with pytest.raises(Throttled) as err:
                s.get(peer.url("/b"))  # another path, the same endpoint: not sent
            assert err.value.reason == "retry_after" and err.value.retry_in == pytest.approx(5.0)
            assert peer.hits("/b") == 0
            clock.advance(5.0)
            assert s.get(peer.url("/b")).status_code == 200
            assert [e.reason for e in events if isinstance(e, CallThrottled)] == ["retry_after"]

    def test_without_overload_control_a_retry_after_only_delays_that_call(self) -> None:
        with Peer().on("/a", retry_after(429, "5")).on("*", answer(200)) as peer, \
                session({"defaults": {"retry": None}}) as s:
            assert s.get(peer.url("/a")).status_code == 429
            assert s.get(peer.url("/b")).status_code == 200

    def test_respect_retry_after_false_does_not_hold_the_endpoint(self) -> None:
        config = {"defaults": {"retry": {"attempts": 1, "respect_retry_after": False},
                               "concurrency": {}}}
        with Peer().on("/a", retry_after(429, "10")).on("*", answer(200)) as peer, session(config) as s:
            assert s.get(peer.url("/a")).status_code == 429
            assert s.overload(peer.url("/")).retry_in == 0.0
            assert s.get(peer.url("/b")).status_code == 200

    def test_a_429_is_a_drop_for_the_adaptive_limit(self) -> None:
        config = {"defaults": {"retry": None, "concurrency": {"initial": 10, "backoff": 0.5}}}
        with Peer().on("*", answer(429)) as peer, session(config) as s:
            s.get(peer.url("/a"))
            assert s.overload(peer.url("/")).limit == 5


PROXY = {"retry": {"backoff": {"initial": 0, "max": 0}}, "breaker": None,
         "proxy_errors": {"header": "X-Proxy-Error"}}


class TestProxyErrorsOnSockets:
    def test_a_proxy_503_is_retried_for_every_method(self) -> None:
        events: list[Any] = []
        proxy_503 = answer(503, b"", {"X-Proxy-Error": "queue timeout"})
        with Peer().on("/w", proxy_503, answer(201)) as peer, \
                session({"defaults": PROXY}, listeners=[events.append]) as s:
            resp = s.post(peer.url("/w"), data=b"x")
            assert (resp.status_code, resp.attempts, peer.hits("/w")) == (201, 2, 2)
            first = next(e for e in events if isinstance(e, resilient_client.AttemptFinished))
            assert (first.outcome, first.status, first.proxy_error) == ("connect_error", 503, True)

    def test_a_503_from_the_peer_itself_is_not_retried_for_a_post(self) -> None:
        with Peer().on("/w", answer(503), answer(201)) as peer, session({"defaults": PROXY}) as s:
            assert s.post(peer.url("/w"), data=b"x").status_code == 503
            assert peer.hits("/w") == 1

    @pytest.mark.parametrize("status", [502, 504])
    def test_a_proxy_502_or_504_is_retried_only_as_its_method_allows(self, status: int) -> None:
        bad = answer(status, b"", {"X-Proxy-Error": "1"})
        with Peer().on("/w", bad, answer(201)).on("/r", bad, answer(200)) as peer, \
                session({"defaults": PROXY}) as s:
            assert s.post(peer.url("/w"), data=b"x").status_code == status
            assert s.get(peer.url("/r")).status_code == 200
            assert (peer.hits("/w"), peer.hits("/r")) == (1, 2)

    def test_a_proxy_error_is_a_breaker_failure_whatever_failure_status_says(self) -> None:
        config = {"defaults": {**PROXY, "retry": None, "failure_status": [500],
                               "breaker": {"failure_threshold": 2}}}
        with Peer().on("*", answer(503, b"", {"X-Proxy-Error": "1"})) as peer, session(config) as s:
            s.get(peer.url("/"))
            s.get(peer.url("/"))
            assert s.circuit(peer.url("/")).state == "open"

    def test_a_proxy_error_is_a_rejection_for_the_throttle(self) -> None:
        config = {"defaults": {**PROXY, "retry": None, "throttle": {"min_requests": 0}}}
        with Peer().on("*", answer(502, b"", {"X-Proxy-Error": "1"})) as peer, session(config) as s:
            s.get(peer.url("/"))
            status = s.overload(peer.url("/"))
            assert (status.requests, status.accepts) == (1, 0)


class TestHostThrottle:
    def test_two_processes_share_the_counts(self, tmp_path: Any) -> None:
        """What another process saw (a failing peer) throttles this one's calls."""
        with Peer().on("*", answer(503)) as peer:
            config = {"state_dir": str(tmp_path),
                      "endpoints": [{"name": "shared", "match": peer.url("/"), "state": "host",
                                     "retry": None, "breaker": None, "budget": None,
                                     "throttle": {"min_requests": 10, "max_reject": 0.9}}]}
            script = textwrap.dedent(f"""
                import resilient_client
                s = resilient_client.ResilientSession({config!r})
                s.trust_env = False
                for _ in range(40):
                    try:
                        s.get({peer.url("/x")!r})
                    except resilient_client.Throttled:
                        pass
                print(s.overload("shared").requests)
            """)
            out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                                 timeout=60, check=True)
            assert int(out.stdout.strip()) >= 40
            hits_before = peer.hits()
            with session(config) as s:
                status = s.overload("shared")
                assert status.requests is not None and status.requests >= 40
                assert status.reject_rate == pytest.approx(0.9)
                refused = 0
                for _ in range(50):
                    try:
                        s.get(peer.url("/x"))
                    except Throttled:
                        refused += 1
                assert refused > 30
            assert peer.hits() - hits_before == 50 - refused

    def test_two_windows_for_one_name_keep_their_counts_apart_and_warn(
            self, tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
        """Two services on the host, one endpoint name, windows 60 and 120: no wiping, one warning."""
        import logging

        from resilient_client._host_throttle import HostThrottle

        clock = FakeClock()
        a = HostThrottle(ThrottlePolicy(window=60, min_requests=0), clock, str(tmp_path), "svc")
        b = HostThrottle(ThrottlePolicy(window=120, min_requests=0), clock, str(tmp_path), "svc")
        with caplog.at_level(logging.WARNING, logger="resilient_client"):
            for _ in range(3):
                a.record(False)
                b.record(True)
                clock.advance(0.1)
                a.snapshot(), b.snapshot()  # each a flush
        assert (a.snapshot(), b.snapshot()) == ((3, 0), (3, 3))
        warned = [r for r in caplog.records if "another window" in r.getMessage()]
        assert len(warned) == 1 and "svc" in warned[0].getMessage()

    def test_counts_pending_at_exit_reach_the_file(self, tmp_path: Any) -> None:
        """A process that records and exits at once: its last counts are not lost."""
        child = textwrap.dedent(f"""
            from resilient_client._clock import SYSTEM_CLOCK
            from resilient_client._host_throttle import HostThrottle
            from resilient_client import ThrottlePolicy
            t = HostThrottle(ThrottlePolicy(window=600), SYSTEM_CLOCK, {str(tmp_path)!r}, "svc")
            for _ in range(37):
                t.record(True)
        """)
        for _ in range(2):
            subprocess.run([sys.executable, "-c", child], check=True, timeout=60)
        from resilient_client._clock import SYSTEM_CLOCK
        from resilient_client._host_throttle import HostThrottle

        here = HostThrottle(ThrottlePolicy(window=600), SYSTEM_CLOCK, str(tmp_path), "svc")
        assert here.snapshot() == (74, 74)

    def test_a_damaged_file_degrades_to_process_local_counts(self, tmp_path: Any) -> None:
        (tmp_path / "blocked").mkdir()
        with Peer().on("*", answer(200)) as peer:
            config = {"state_dir": str(tmp_path / "blocked" / "file-not-dir"),
                      "endpoints": [{"name": "e", "match": peer.url("/"), "state": "host",
                                     "breaker": None, "budget": None, "bulkhead": None,
                                     "throttle": {"min_requests": 0}}]}
            (tmp_path / "blocked" / "file-not-dir").write_text("x")
            with session(config) as s:
                for _ in range(5):
                    assert s.get(peer.url("/")).status_code == 200
                assert s.overload("e").requests == 5


def test_delay_peer_keeps_the_limit_when_latency_is_steady() -> None:
    """A peer answering in steady time: the adaptive limit does not collapse."""
    config = {"defaults": {"retry": None, "concurrency": {"initial": 4}}}
    with Peer().on("*", delay(0.005)) as peer, session(config) as s:
        for _ in range(20):
            assert s.get(peer.url("/")).status_code == 200
        assert s.overload(peer.url("/")).limit >= 1


def test_calls_the_deadline_ends_make_the_throttle_refuse() -> None:
    """A peer slower than the callers' deadline accepts nothing in time: the throttle sees it."""
    config = {"defaults": {"retry": None, "breaker": None, "timeout": {"total": 0.03},
                           "throttle": {"min_requests": 0}}}
    with Peer().on("*", delay(0.3)) as peer, session(config) as s:
        cut = 0
        for _ in range(4):
            try:
                s.get(peer.url("/"))
            except resilient_client.DeadlineExceeded:
                cut += 1
            except Throttled:  # what the fix is for: the throttle saw the cuts
                pass
        status = s.overload(peer.url("/"))
        assert cut >= 1 and status.accepts == 0 and status.requests == 4
        assert status.reject_rate is not None and status.reject_rate > 0.5


def test_a_redirect_into_another_endpoint_charges_the_endpoint_that_answered() -> None:
    """A -> B, B answers 429 Retry-After: B is held and counts it; A counts its own redirect."""
    with Peer() as a, Peer() as b:
        b.on("*", retry_after(429, "20"))
        a.on("/go", redirect(b.url("/x"))).on("*", answer(200))
        config = {"defaults": {"retry": None, "breaker": None, "budget": None,
                               "throttle": {"min_requests": 1000}, "concurrency": {}},
                  "endpoints": [{"name": "A", "match": a.url("/")}, {"name": "B", "match": b.url("/")}]}
        with session(config) as s:
            assert s.get(a.url("/go")).status_code == 429
            sa, sb = s.overload("A"), s.overload("B")
            assert (sa.retry_in, sa.requests, sa.accepts, sa.limit, sa.in_flight) == (0.0, 1, 1, 10, 0)
            assert sb.retry_in > 19 and (sb.requests, sb.accepts, sb.limit, sb.in_flight) == (1, 0, 9, 0)
            assert s.get(a.url("/ok")).status_code == 200  # A answered nothing wrong
            with pytest.raises(Throttled):
                s.get(b.url("/x"))
            with pytest.raises(requests.ConnectionError, match="Retry-After"):
                s.get(a.url("/go"))  # not followed into B while B asked for quiet
            assert b.hits("/x") == 1


def test_the_reject_rate_gauge_falls_back_to_zero_when_the_peer_recovers() -> None:
    """Not stuck at the last refusal's rate: calls that complete move it (review of issue 14)."""
    from prometheus_client import CollectorRegistry

    registry, clock, moves = CollectorRegistry(), FakeClock(), []
    listeners = [resilient_client.prometheus_listener(registry), moves.append]
    with Peer().on("*", answer(503)) as peer, session(
            {"defaults": {"retry": None, "breaker": None, "budget": None,
                          "throttle": {"window": 10, "min_requests": 5}},
             "endpoints": [{"name": "svc", "match": peer.url("/")}]}, clock=clock, listeners=listeners) as s:
        for _ in range(40):
            with pytest.raises((Throttled, requests.HTTPError)):
                s.get(peer.url("/")).raise_for_status()
        gauge = registry.get_sample_value("resilient_client_throttle_reject_rate", {"endpoint": "svc"})
        assert gauge is not None and gauge > 0.5
        peer.on("*", answer(200))
        clock.advance(11)  # the window forgets the failures
        for _ in range(3):
            assert s.get(peer.url("/")).status_code == 200
        assert registry.get_sample_value("resilient_client_throttle_reject_rate", {"endpoint": "svc"}) == 0.0
    changed = [e for e in moves if isinstance(e, resilient_client.ThrottleRateChanged)]
    assert changed[-1].new == 0.0 and changed[-1].old > 0.5


def test_a_healthy_peer_with_mixed_latencies_is_never_shed() -> None:
    """/fast (at once) and /slow (20 ms) on one endpoint, 8 threads: no call refused, limit kept."""
    config = {"defaults": {"retry": None, "breaker": None, "budget": None, "concurrency": {}}}
    refused: list[BaseException] = []
    with Peer().on("/fast", answer(200)).on("/slow", delay(0.02)) as peer, session(config) as s:
        def worker(n: int) -> None:
            for i in range(24):
                try:
                    s.get(peer.url("/slow" if (i + n) % 2 else "/fast"))
                except BulkheadFull as exc:
                    refused.append(exc)

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert not refused and s.overload(peer.url("/")).limit >= 10


def test_status_shows_the_limit_and_the_refusal_rate_of_a_running_service(tmp_path: Any) -> None:
    """`resilient-client status --from URL/health` reads a live session's overload control."""
    import contextlib
    import io
    import wsgiref.simple_server

    from resilient_client import health_app
    from resilient_client.tools._cli import main

    config = {"defaults": {"retry": None, "breaker": None, "concurrency": {"initial": 7},
                           "throttle": {"min_requests": 0}}}
    with Peer().on("*", answer(200)) as peer, session(config) as s:
        s.get(peer.url("/"))
        server = wsgiref.simple_server.make_server("127.0.0.1", 0, health_app(s))
        thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
        thread.start()
        try:
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                main(["status", "--from", f"http://127.0.0.1:{server.server_port}/health"])
        finally:
            server.shutdown()
            thread.join(5)
            server.server_close()
    assert "overload" in out.getvalue() and "limit 7, refusing 0%" in out.getvalue()


def test_a_call_that_never_reaches_send_gives_its_place_back() -> None:
    """requests failing while preparing an admitted call leaks no place under the limit."""
    config = {"defaults": {"retry": None, "concurrency": {"initial": 1}}}
    with session(config) as s:
        for _ in range(3):
            with pytest.raises(requests.exceptions.InvalidHeader):
                s.get("http://127.0.0.1:9/", headers={"X-Bad": "a\nb"})
        assert s.overload("http://127.0.0.1:9/").in_flight == 0


def test_a_call_made_while_another_is_prepared_keeps_both_admissions_apart() -> None:
    """An auth hook that calls the same endpoint: each call holds and returns its own place."""
    config = {"defaults": {"retry": None, "concurrency": {"initial": 5}}}
    with Peer().on("*", answer(200)) as peer, session(config) as s:
        def auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
            r.headers["X-Token"] = s.get(peer.url("/token")).text or "t"
            return r

        assert s.get(peer.url("/data"), auth=auth).status_code == 200
        assert s.overload(peer.url("/")).in_flight == 0
        assert peer.hits("/token") == 1 and peer.hits("/data") == 1


def test_the_async_client_warns_once_about_overload_keys_it_does_not_apply(
        caplog: pytest.LogCaptureFixture) -> None:
    """Not applied by AsyncResilientClient yet: said once when it is built, never silently."""
    import asyncio
    import logging

    config = {"defaults": {"throttle": {}, "concurrency": {}},
              "endpoints": [{"name": "svc", "match": "http://svc/", "proxy_errors": {}}]}
    with caplog.at_level(logging.WARNING, logger="resilient_client"):
        client = resilient_client.AsyncResilientClient(config)
        plain = resilient_client.AsyncResilientClient({"defaults": {"retry": None}})
    asyncio.run(client.aclose())
    asyncio.run(plain.aclose())
    said = [r.getMessage() for r in caplog.records if "does not apply" in r.getMessage()]
    assert len(said) == 1
    assert all(key in said[0] for key in ("throttle (defaults, svc)", "concurrency", "proxy_errors (svc)",
                                          "Retry-After"))


def test_a_nested_call_with_policy_asks_for_its_own_admission() -> None:
    """policy= on the auth hook's call: it neither takes the outer call's place nor skips the limit."""
    config = {"defaults": {"retry": None, "breaker": None, "concurrency": {"initial": 1}}}
    with Peer().on("*", answer(200)) as peer, session(config) as s:
        seen: list[Any] = []

        def auth(r: requests.PreparedRequest) -> requests.PreparedRequest:
            try:
                s.get(peer.url("/token"), policy={"timeout": {"total": 5}})
                seen.append("sent")
            except BulkheadFull:
                seen.append("refused")  # the outer call holds the only place
            seen.append(s.overload(peer.url("/")).in_flight)
            return r

        assert s.get(peer.url("/data"), auth=auth).status_code == 200
        assert seen == ["refused", 1] and peer.hits("/token") == 0
        assert s.overload(peer.url("/")).in_flight == 0


def test_check_prints_the_overload_sections_one_row_per_key(tmp_path: Any) -> None:
    """Not a Python repr: throttle.window, concurrency.algorithm... like every other section."""
    import contextlib
    import io

    from resilient_client.tools._cli import main

    path = tmp_path / "client.yaml"
    path.write_text("defaults:\n  throttle: {window: 10}\nendpoints:\n  - name: a\n    match: http://a/\n"
                    "    concurrency: {algorithm: gradient}\n    proxy_errors: {}\n")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        main(["check", str(path), "--width", "200"])
    rows = [line.split() for line in out.getvalue().splitlines()]
    assert ["throttle.window", "10", "10"] in rows
    assert ["concurrency.algorithm", "off", "gradient", "*"] in rows
    assert ["proxy_errors.header", "off", "X-Proxy-Error", "*"] in rows
    assert "Policy(" not in out.getvalue()


def test_the_throttles_draw_is_deterministic_under_the_testing_kit(fake_peers: Any) -> None:
    """The kit seeds the session's rng, and the throttle draws from it: the same refusals each run."""
    fake_peers.url("https://svc.test/*").respond(503)
    config = {"defaults": {"retry": None, "breaker": None, "budget": None,
                           "throttle": {"min_requests": 5, "max_reject": 0.5}}}

    def refusals() -> list[bool]:
        session, out = fake_peers.session(config), []
        for _ in range(60):
            try:
                session.get("https://svc.test/x")
                out.append(False)
            except Throttled:
                out.append(True)
        return out

    first = refusals()
    assert any(first) and not all(first) and refusals() == first

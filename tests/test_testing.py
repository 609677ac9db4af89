"""
Direct tests of `resilient_client.testing`: the fake clock, every peer
script, the recording and strict mode, without going through pytest's
plugin machinery (that is `test_testing_plugin.py`).
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import unittest
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
import responses

import resilient_client as rc
from resilient_client import (
    BreakerPolicy,
    BudgetExhausted,
    BulkheadFull,
    BulkheadRejected,
    CircuitBreaker,
    DeadlineExceeded,
    FallbackServed,
    GaveUp,
    RetryScheduled,
    _deadline,
)
from resilient_client._clock import SYSTEM_CLOCK
from resilient_client._outcome import failure_kind
from resilient_client.testing import (
    AppCall,
    FakeClock,
    FakePeers,
    PeerCall,
    UnmatchedRequest,
    fake_peers,
)

URL = "https://inventory.internal/items/42"

CONFIG = {
    "defaults": {"timeout": {"connect": 1.0, "read": 2.0, "total": 5.0}},
    "endpoints": [
        {
            "name": "inventory",
            "match": "https://inventory.internal/",
            "retry": {"attempts": 3, "on_status": [429, 503]},
            "breaker": {"failure_threshold": 5, "reset_timeout": 30.0},
            "fallback": {"status": 200, "json": {"stock": None}},
        },
        {
            "name": "catalog",
            "match": "https://catalog.internal/",
            "retry": {"attempts": 3, "on_status": [503]},
        },
    ],
}
CATALOG = "https://catalog.internal/products/7"


def with_endpoint(name, **sections):
    """CONFIG with *sections* replacing those of endpoint *name*."""
    endpoints = [{**ep, **sections} if ep["name"] == name else ep for ep in CONFIG["endpoints"]]
    return {**CONFIG, "endpoints": endpoints}


@pytest.fixture
def peers():
    """A started, strict registry on its own fake clock; verified at the end of the test."""
    registry = FakePeers()
    registry.start()
    yield registry
    registry.stop()


class TestFakeClock:
    def test_sleep_moves_the_clock_and_is_recorded(self):
        """sleep() moves the clock at once and records what was asked."""
        clock = FakeClock()
        clock.sleep(1.5)
        clock.sleep(0.25)
        assert clock.monotonic() == 1.75
        assert clock.sleeps == [1.5, 0.25]
        assert clock.slept == 1.75

    def test_instant_sleep_records_without_moving(self):
        """Under instant_sleep a sleep is recorded but time stands still."""
        clock = FakeClock(start=10.0)
        clock.instant_sleep = True
        clock.sleep(3.0)
        assert clock.now == 10.0
        assert clock.sleeps == [3.0]

    def test_time_never_goes_back(self):
        """advance() and advance_to() refuse to move a monotonic clock backwards."""
        clock = FakeClock(start=5.0)
        with pytest.raises(ValueError, match="cannot go back"):
            clock.advance(-1)
        with pytest.raises(ValueError, match="cannot go back"):
            clock.advance_to(4.0)
        with pytest.raises(ValueError, match="non-negative"):
            clock.sleep(-0.1)
        clock.advance_to(7.5)
        assert clock.elapsed == 2.5

    def test_drives_a_breaker_reset_timeout_without_waiting(self):
        """A 30-second reset_timeout is crossed by advance(31): the breaker goes half-open."""
        clock = FakeClock()
        breaker = CircuitBreaker(
            "inventory", BreakerPolicy(failure_threshold=1, reset_timeout=30.0), clock=clock
        )
        breaker.record(success=False, is_trial=False)
        assert breaker.state == "open"
        clock.advance(29)
        assert breaker.state == "open"
        clock.advance(2)
        assert breaker.state == "half-open"

    def test_repr_reads_like_the_constructor(self):
        """The repr shows the current reading."""
        assert repr(FakeClock(start=2.5)) == "FakeClock(now=2.5)"


class TestStatuses:
    def test_sequence_then_the_last_status_keeps_answering(self, peers):
        """statuses([503, 503, 200]) answers in order and then keeps answering 200."""
        peers.url(URL).statuses([503, 503, 200], json={"stock": 3})
        session = peers.session(CONFIG)
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts, resp.json()) == (200, 3, {"stock": 3})
        assert session.get(URL).status_code == 200
        assert [c.outcome for c in peers.calls] == ["503", "503", "200", "200"]

    def test_backoff_sleeps_run_on_the_fake_clock(self, peers):
        """The two backoff sleeps between three attempts are fake time: nothing really waited."""
        peers.url(URL).statuses([503, 503, 200])
        peers.session(CONFIG).get(URL)
        assert len(peers.clock.sleeps) == 2
        assert peers.elapsed == pytest.approx(sum(peers.clock.sleeps))
        delays = [e.delay for e in peers.events.of(RetryScheduled)]
        assert delays == peers.clock.sleeps

    def test_seeded_jitter_repeats_run_after_run(self):
        """Two registries with the same seed sleep exactly the same jittered delays."""
        runs = []
        for _ in range(2):
            with fake_peers(seed=7) as peers:
                peers.url(URL).statuses([503, 503, 200])
                rc.ResilientSession(CONFIG).get(URL)
                runs.append(peers.clock.sleeps)
        assert runs[0] == runs[1] and len(runs[0]) == 2

    def test_retry_after_is_slept_on_the_fake_clock(self, peers):
        """A 429 with Retry-After: 2 makes the session sleep exactly 2 fake seconds."""
        peers.url(URL).respond(429, retry_after=2, times=1).respond(200)
        resp = peers.session(CONFIG).get(URL)
        assert (resp.status_code, resp.attempts) == (200, 2)
        assert peers.clock.sleeps == [2.0]
        assert peers.events.of(RetryScheduled)[0].delay == 2.0

    def test_retry_after_over_the_maximum_is_returned_at_once(self, peers):
        """A Retry-After of an hour is refused: the 503 is returned without a retry."""
        peers.url(CATALOG).statuses([503, 200], retry_after=3600).optional()
        resp = peers.session(CONFIG).get(CATALOG)
        assert (resp.status_code, resp.attempts) == (503, 1)
        assert resp.headers["Retry-After"] == "3600"
        assert peers.attempts(CATALOG) == 1
        assert peers.events.of(GaveUp)[0].reason == "retry_after_refused"

    def test_retry_after_string_is_sent_verbatim(self, peers):
        """A string Retry-After goes out as written, e.g. a non-integer the library refuses."""
        peers.url(CATALOG).respond(503, retry_after="1.5", times=1).respond(200).optional()
        resp = peers.session(CONFIG).get(CATALOG)
        assert resp.headers["Retry-After"] == "1.5"
        assert resp.attempts == 1

    def test_flap_fails_every_nth_request(self, peers):
        """flap(every=3) fails the 3rd, 6th... requests and answers 200 to the others."""
        peers.endpoint("catalog").flap(every=3)
        session = peers.session(with_endpoint("catalog", retry=None))
        assert [session.get(CATALOG).status_code for _ in range(7)] == [
            200,
            200,
            503,
            200,
            200,
            503,
            200,
        ]

    def test_flap_can_fail_with_a_refused_connection(self, peers):
        """flap(failure="refuse") refuses instead of answering a status."""
        peers.endpoint("catalog").flap(every=2, failure="refuse")
        session = peers.session(with_endpoint("catalog", retry=None))
        session.get(CATALOG)
        with pytest.raises(requests.ConnectionError):
            session.get(CATALOG)

    def test_recover_at_answers_healthy_from_that_fake_time(self, peers):
        """A peer refusing until t=60 answers 200 once the clock reaches 60."""
        peers.endpoint("catalog").refuse().recover_at(60, json={"ok": True})
        session = peers.session(with_endpoint("catalog", retry=None))
        with pytest.raises(requests.ConnectionError):
            session.get(CATALOG)
        peers.clock.advance_to(60)
        assert session.get(CATALOG).json() == {"ok": True}


class TestFailures:
    def test_refused_is_a_connect_error_retried_even_for_post(self, peers):
        """A refused connection is classified connect_error, so even a POST is retried."""
        peers.url(URL, method="POST").refuse(times=2).respond(201)
        resp = peers.session(CONFIG).post(URL, json={"n": 1})
        assert (resp.status_code, resp.attempts) == (201, 3)
        assert [c.outcome for c in peers.calls] == ["refused", "refused", "201"]

    def test_refused_error_is_shaped_like_requests(self, peers):
        """The refusal is the same requests.ConnectionError that a closed port gives."""
        peers.url(URL).refuse()
        with pytest.raises(requests.ConnectionError) as info:
            requests.get(URL, timeout=1)
        assert failure_kind(info.value) == "connect_error"
        assert "Connection refused" in str(info.value)

    def test_connect_timeout_spends_the_connect_timeout(self, peers):
        """Each connect timeout costs the attempt's connect timeout (1 s) of fake time."""
        peers.url(URL).connect_timeout(times=2).respond(200)
        no_jitter = {
            **CONFIG,
            "defaults": {**CONFIG["defaults"], "retry": {"backoff": {"jitter": "none"}}},
        }
        resp = peers.session(no_jitter).get(URL)
        assert resp.status_code == 200
        arrivals = [c.at for c in peers.calls]
        assert arrivals == pytest.approx([0.0, 1.0 + 0.1, 2.1 + 0.2])

    def test_connect_timeout_is_classified_as_such(self, peers):
        """The error is requests.ConnectTimeout, kind connect_timeout."""
        peers.url(URL).connect_timeout()
        with pytest.raises(requests.ConnectTimeout) as info:
            requests.get(URL, timeout=(0.5, 3))
        assert failure_kind(info.value) == "connect_timeout"
        assert peers.clock.now == 0.5

    def test_read_timeout_is_not_retried_for_post(self, peers):
        """A read timeout happens after the request was sent: a POST is not retried."""
        peers.url(URL, method="POST").read_timeout()
        session = peers.session(with_endpoint("inventory", fallback=None))
        with pytest.raises(requests.ReadTimeout):
            session.post(URL, data=b"x")
        assert peers.attempts() == 1
        assert peers.clock.now == 2.0

    def test_read_timeouts_end_in_deadline_exceeded_exactly_at_the_deadline(self, peers):
        """Read timeouts retried until the 5 s deadline raise DeadlineExceeded at t=5 exactly."""
        peers.endpoint("catalog").read_timeout()
        with pytest.raises(DeadlineExceeded) as info:
            peers.session(CONFIG).get(CATALOG)
        assert isinstance(info.value.__cause__, requests.ReadTimeout)
        assert peers.clock.now == 5.0
        assert "deadline_passed" in peers.events.kinds()

    def test_a_wait_cut_by_the_deadline_lands_exactly_on_it(self):
        """Where float rounding would stop short, a timeout bound by the deadline ends on it."""
        # 0.72 + (3.02 - 0.72) < 3.02 in floating point: without landing on
        # the deadline, the session would not see it expired.
        clock = FakeClock(start=0.36)
        config = with_endpoint(
            "catalog",
            timeout={"read": 5.0, "total": 2.66},
            retry={"backoff": {"initial": 0.36, "jitter": "none"}},
        )
        with fake_peers(clock=clock) as peers:
            peers.url(CATALOG).refuse(times=1).read_timeout()
            with pytest.raises(DeadlineExceeded):
                peers.session(config).get(CATALOG)
        assert clock.now == 0.36 + 2.66

    def test_request_without_timeout_cannot_hang_a_test(self, peers):
        """A plain requests call with no timeout against a silent peer fails instead of hanging."""
        peers.url(URL).read_timeout()
        with pytest.raises(AssertionError, match="no read timeout"):
            requests.get(URL)


class TestSlowAndDrip:
    def test_slow_answer_within_the_read_timeout(self, peers):
        """slow(1.5) answers after 1.5 fake seconds."""
        peers.endpoint("catalog").slow(1.5, json={"id": 7})
        assert peers.session(CONFIG).get(CATALOG).json() == {"id": 7}
        assert peers.clock.now == 1.5
        assert peers.calls[0].outcome == "200 after 1.5s"

    def test_slow_answer_past_the_read_timeout_times_out(self, peers):
        """slow(3) against a 2 s read timeout is a read timeout after 2 fake seconds."""
        peers.endpoint("catalog").slow(3.0)
        session = peers.session(with_endpoint("catalog", retry=None))
        with pytest.raises(requests.ReadTimeout):
            session.get(CATALOG)
        assert peers.clock.now == 2.0

    def test_drip_within_the_deadline_delivers_the_body(self, peers):
        """Ten bytes, one every 0.1 s, arrive whole in 1 fake second."""
        peers.endpoint("catalog").drip(b"0123456789", every=0.1)
        assert peers.session(CONFIG).get(CATALOG).content == b"0123456789"
        assert peers.clock.now == pytest.approx(1.0)

    def test_drip_past_the_deadline_is_cut_off_at_the_deadline(self, peers):
        """A body dripping for 10 s is cut at the 5 s deadline, though no read ever timed out."""
        peers.endpoint("catalog").drip(b"x" * 100, every=0.1)
        with pytest.raises(DeadlineExceeded):
            peers.session(CONFIG).get(CATALOG)
        assert peers.clock.now == 5.0
        assert peers.calls[0].outcome.startswith("200 body cut after ")

    def test_streamed_drip_is_bounded_by_the_read_timeout_only(self, peers):
        """With stream=True the body is the caller's: the deadline no longer applies to it."""
        peers.endpoint("catalog").drip(b"x" * 100, every=0.1)
        resp = peers.session(CONFIG).get(CATALOG, stream=True)
        assert len(resp.content) == 100
        assert peers.clock.now == pytest.approx(10.0)

    def test_drip_slower_than_the_read_timeout_times_out(self, peers):
        """A chunk every 3 s against a 2 s read timeout fails the body read."""
        peers.endpoint("catalog").drip(b"xy", every=3.0)
        session = peers.session(
            with_endpoint("catalog", retry=None, timeout={"read": 2.0, "total": None})
        )
        with pytest.raises(requests.ConnectionError):
            session.get(CATALOG)
        assert peers.clock.now == 2.0


class TestHold:
    def test_held_requests_fill_the_bulkhead(self, peers):
        """A held request keeps its bulkhead slot: the next call is rejected, and recorded."""
        gate = peers.endpoint("catalog").hold(json={"id": 7})
        session = peers.session(with_endpoint("catalog", bulkhead={"max_concurrent": 1}))
        with ThreadPoolExecutor(1) as pool:
            first = pool.submit(session.get, CATALOG)
            gate.wait_held(1)
            with pytest.raises(BulkheadFull):
                session.get(CATALOG)
            gate.release()
            assert first.result(timeout=5).json() == {"id": 7}
        [event] = peers.events.of(BulkheadRejected)
        assert event.max_concurrent == 1
        assert [c.outcome for c in peers.app_calls] == ["200", "raised BulkheadFull"]

    def test_a_forgotten_hold_fails_instead_of_hanging(self, peers):
        """A held request never released fails after its timeout."""
        peers.url(URL).hold(timeout=0.01)
        with pytest.raises(AssertionError, match=r"not released within 0\.01s"):
            requests.get(URL, timeout=1)

    def test_wait_held_is_bounded(self, peers):
        """wait_held() gives up with a message when nothing arrives."""
        peer = peers.url(URL).hold().optional()
        with pytest.raises(AssertionError, match=r"0 request\(s\) held after 0\.01s, expected 1"):
            peer.wait_held(1, timeout=0.01)


class TestScriptingRules:
    def test_a_step_for_every_later_request_must_be_last(self, peers):
        """Scripting after refuse() (every later request) is an error that says how to fix it."""
        peer = peers.url(URL).refuse()
        with pytest.raises(ValueError, match="times=N"):
            peer.respond(200)
        peer.clear().respond(200)
        assert requests.get(URL, timeout=1).status_code == 200

    @pytest.mark.parametrize("times", [0, -1, 1.5, True])
    def test_times_must_be_a_positive_integer(self, peers, times):
        """times= rejects zero, negatives, floats and booleans."""
        with pytest.raises(ValueError, match="times must be"):
            peers.url(URL).optional().refuse(times=times)

    def test_bad_arguments_are_rejected_where_written(self, peers):
        """Bad statuses, both json and body, and unknown failures fail at scripting time."""
        peer = peers.url(URL).optional()
        with pytest.raises(ValueError, match="HTTP status"):
            peer.respond(99)
        with pytest.raises(ValueError, match="not both"):
            peer.respond(200, json={}, body=b"x")
        with pytest.raises(ValueError, match="failure must be"):
            peer.flap(every=2, failure="explode")
        with pytest.raises(ValueError, match="at least one"):
            peer.statuses([])
        with pytest.raises(ValueError, match="absolute URL"):
            peers.url("inventory")

    def test_same_url_gives_the_same_peer(self, peers):
        """Asking for a URL twice returns one peer, so its calls can be read later."""
        peer = peers.url(URL).respond(200)
        requests.get(URL, timeout=1)
        assert peers.url(URL) is peer
        assert peer.call_count == 1

    def test_repr_reads_like_the_script(self, peers):
        """A peer's repr is the code that scripted it."""
        peer = peers.endpoint("inventory").refuse(times=2).respond(200).optional()
        assert repr(peer) == "endpoint('inventory').refuse(times=2).respond(200).optional()"

    def test_wildcard_url_matches_everything_under_it(self, peers):
        """A URL with * matches every path under it."""
        peers.url("https://inventory.internal/items/*").respond(204)
        assert requests.get(URL, timeout=1).status_code == 204
        assert requests.get(URL + "?fresh=1", timeout=1).status_code == 204

    def test_wildcard_url_naming_the_default_port_matches_urls_without_it(self, peers):
        """A wildcard URL that spells out the default port matches the URL requests sends."""
        peers.url("https://inventory.internal:443/items/*").respond(204)
        assert requests.get(URL, timeout=1).status_code == 204

    def test_regex_url(self, peers):
        """A compiled regex matches as in responses."""
        peers.url(re.compile(r"https://inventory\.internal/items/\d+")).respond(204)
        assert requests.get(URL, timeout=1).status_code == 204

    def test_query_in_the_url_must_match(self, peers):
        """A URL with a query matches only that query (in any order)."""
        peers.url(URL + "?a=1&b=2").respond(204)
        peers.strict = False
        assert requests.get(URL + "?b=2&a=1", timeout=1).status_code == 204
        with pytest.raises(requests.ConnectionError):
            requests.get(URL + "?a=1", timeout=1)

    def test_method_limits_a_peer(self, peers):
        """A peer scripted for GET does not answer DELETE."""
        peers.url(URL, method="get").respond(200)
        peers.url(URL, method="DELETE").respond(204)
        assert requests.get(URL, timeout=1).status_code == 200
        assert requests.delete(URL, timeout=1).status_code == 204

    def test_responses_matchers_and_plain_responses_keep_working(self, peers):
        """responses' matchers restrict a peer, and plain responses on peers.mock answer too."""
        peers.url(URL, match=[responses.matchers.header_matcher({"X-Tenant": "a"})]).respond(200)
        peers.mock.add(responses.GET, URL, json={"plain": True})
        assert requests.get(URL, headers={"X-Tenant": "a"}, timeout=1).status_code == 200
        assert requests.get(URL, timeout=1).json() == {"plain": True}
        assert len(peers.mock.calls) == 2


class TestEndpointTargets:
    def test_endpoint_peer_answers_every_url_of_the_endpoint(self, peers):
        """endpoint("inventory") answers any URL the session routes to inventory."""
        peers.endpoint("inventory").respond(200)
        session = peers.session(CONFIG)
        session.get(URL)
        session.get("https://inventory.internal/other")
        assert [c.endpoint for c in peers.calls] == ["inventory", "inventory"]

    def test_endpoint_near_miss_names_the_endpoint_it_went_to(self, peers):
        """A request routed to catalog misses endpoint('inventory') and the error says so."""
        peers.endpoint("inventory").respond(200).optional()
        peers.strict = True
        with pytest.raises(UnmatchedRequest, match="went to endpoint 'catalog', not 'inventory'"):
            peers.session(CONFIG).get(CATALOG)
        peers.unmatched.clear()

    def test_plain_requests_have_no_endpoint(self, peers):
        """A request from plain requests cannot match an endpoint peer; the near miss says why."""
        peers.endpoint("inventory").respond(200).optional()
        with pytest.raises(UnmatchedRequest, match="not sent by a ResilientSession"):
            requests.get(URL, timeout=1)
        peers.unmatched.clear()


class TestRecording:
    def test_calls_reached_versus_calls_made(self, peers):
        """Under a full outage without budget, each app call makes 3 attempts: amplification 3."""
        peers.endpoint("catalog").refuse()
        session = peers.session(
            {**CONFIG, "defaults": {**CONFIG["defaults"], "budget": None, "breaker": None}}
        )
        for _ in range(4):
            with pytest.raises(requests.ConnectionError):
                session.get(CATALOG)
        assert peers.attempts("catalog") == 12
        assert len(peers.app_calls_to("catalog")) == 4
        assert peers.amplification("catalog") == 3.0

    def test_budget_keeps_amplification_near_one_plus_ratio(self, peers):
        """With a 20 % retry budget, 50 failing calls reach the peer about 60 times, not 150."""
        peers.endpoint("catalog").refuse()
        config = {
            **CONFIG,
            "defaults": {
                **CONFIG["defaults"],
                "breaker": None,
                "budget": {"ratio": 0.2, "min_per_second": 0},
            },
        }
        session = peers.session(config)
        for _ in range(50):
            with pytest.raises(requests.ConnectionError):
                session.get(CATALOG)
        assert peers.amplification("catalog") <= 1.25
        assert peers.events.of(BudgetExhausted)

    def test_breaker_stops_the_hammering_and_recovers_after_reset(self, peers):
        """
        Five failures open the breaker, later calls get the fallback without
        reaching the peer, and 31 s later one trial call closes it.
        """
        inventory = peers.endpoint("inventory").refuse(times=5).respond(200, json={"stock": 3})
        session = peers.session(CONFIG)
        answers = [session.get(URL) for _ in range(6)]
        assert all(r.is_fallback for r in answers)
        assert inventory.call_count == 5
        assert peers.breaker("inventory").state == "open"
        assert peers.transitions("inventory") == [("closed", "open")]
        peers.clock.advance(31)
        assert peers.breaker("inventory").state == "half-open"
        assert session.get(URL).json() == {"stock": 3}
        assert peers.breaker("inventory").state == "closed"
        assert peers.transitions("inventory")[-1][1] == "closed"

    def test_fallbacks_and_their_events(self, peers):
        """A refused call answered by the fallback is listed, with the FallbackServed event."""
        peers.endpoint("inventory").refuse()
        resp = peers.session(CONFIG).get(URL)
        assert resp.is_fallback
        [call] = peers.fallbacks("inventory")
        assert (call.status, call.fallback, call.attempts, call.reached) == (200, True, 3, 3)
        [event] = peers.events.of(FallbackServed)
        assert event.fallback == "static" and "Connection refused" in event.error

    def test_a_call_that_raised_records_the_error_and_attempts(self, peers):
        """An app call that raised keeps its exception and the attempts that ran."""
        peers.endpoint("catalog").refuse()
        with pytest.raises(requests.ConnectionError):
            peers.session(CONFIG).get(CATALOG)
        [call] = peers.app_calls
        assert isinstance(call, AppCall)
        assert isinstance(call.error, requests.ConnectionError)
        assert (call.attempts, call.reached, call.outcome) == (3, 3, "raised ConnectionError")

    def test_events_are_recorded_in_order(self, peers):
        """The session's events are kept; kinds() leaves out the per-attempt ones unless asked."""
        peers.url(URL).statuses([503, 200])
        peers.session(CONFIG).get(URL)
        assert peers.events.kinds() == ["retry_scheduled"]
        assert peers.events.kinds(detailed=True) == [
            "attempt_finished",
            "retry_scheduled",
            "attempt_finished",
            "call_finished",
        ]
        assert len(peers.events.for_endpoint("inventory")) == 4

    def test_redirect_is_one_app_call_and_two_peer_calls(self, peers):
        """A redirect followed inside an attempt is one app call and two requests to peers."""
        peers.url(URL).respond(302, headers={"Location": "https://inventory.internal/items/43"})
        peers.url("https://inventory.internal/items/43").respond(200)
        resp = peers.session(CONFIG).get(URL)
        assert resp.status_code == 200
        assert len(peers.app_calls) == 1 and len(peers.calls) == 2

    def test_timeline_tells_the_story(self, peers):
        """The timeline lists the app call, each request and its answer, and the events."""
        peers.url(URL).statuses([503, 200])
        peers.session(CONFIG).get(URL)
        text = peers.timeline()
        assert (
            "call  GET https://inventory.internal/items/42 [inventory] -> 200 after 2 attempts"
            in text
        )
        assert "peer  GET https://inventory.internal/items/42 -> 503" in text
        assert "retry_scheduled [inventory] attempt=1" in text

    def test_timeline_redacts_secret_query_values(self, peers):
        """A secret query parameter never shows in the timeline."""
        peers.url(URL).respond(200)
        session = peers.session({**CONFIG, "secrets": {"query": ["token"]}})
        session.get(URL, params={"token": "s3cret"})
        assert "s3cret" not in peers.timeline()
        assert "s3cret" not in repr(peers.calls[0])

    def test_near_misses_redact_secret_query_values(self, peers):
        """An unmatched request's message never shows a secret query value."""
        peers.url(URL).respond(200).optional()
        session = peers.session({**CONFIG, "secrets": {"query": ["token"]}})
        with pytest.raises(UnmatchedRequest) as info:
            session.get(URL + "/stock", params={"token": "s3cret"})
        assert "s3cret" not in str(info.value)
        assert "token=REDACTED" in str(info.value)
        peers.unmatched.clear()

    def test_reprs_are_short(self, peers):
        """PeerCall and AppCall reprs show method, URL and outcome."""
        peers.url(URL).respond(200)
        peers.session(CONFIG).get(URL)
        assert repr(peers.calls[0]) == f"<PeerCall GET {URL} -> 200 at t=0.000>"
        assert isinstance(peers.calls[0], PeerCall)
        assert repr(peers.app_calls[0]) == f"<AppCall GET {URL} -> 200, attempts=1 reached=1>"
        assert "active" in repr(peers)


class TestSessionWiring:
    def test_sessions_built_inside_run_on_the_fake_clock(self, peers):
        """A session the application builds while the registry is active gets its clock."""
        session = rc.ResilientSession(CONFIG)
        assert session.clock is peers.clock

    def test_an_explicit_clock_is_kept(self, peers):
        """A session given clock= keeps it, and is still recorded."""
        own = FakeClock()
        peers.url(URL).respond(200)
        session = rc.ResilientSession(CONFIG, clock=own)
        assert session.clock is own
        session.get(URL)
        assert len(peers.app_calls) == 1

    def test_attach_rewires_and_resets_a_session_built_before(self):
        """attach() resets a module-level session onto the fake clock, and restores it after."""
        session = rc.ResilientSession(CONFIG)
        session.circuit("inventory").open()
        with fake_peers() as peers:
            peers.url(URL).respond(200, json={"stock": 1})
            peers.attach(session)
            assert session.clock is peers.clock
            assert session.get(URL).json() == {"stock": 1}
            assert len(peers.app_calls) == 1
        assert session.clock is SYSTEM_CLOCK
        assert "send" not in vars(session)

    def test_sessions_are_unwired_when_the_registry_stops(self):
        """After the block a session is no longer recorded and its own sessions are closed."""
        with fake_peers() as peers:
            session = peers.session(CONFIG)
        assert "send" not in vars(session)
        assert peers.app_calls == []

    def test_only_one_registry_at_a_time(self, peers):
        """A second active registry is refused with a clear message."""
        with pytest.raises(RuntimeError, match="already active"):
            FakePeers().start()


class TestStrictMode:
    def test_unmatched_request_raises_through_the_fallback(self, peers):
        """An unmatched request fails loudly even where a fallback exists, with near misses."""
        peers.url(URL).statuses([503, 200]).optional()
        with pytest.raises(UnmatchedRequest) as info:
            peers.session(CONFIG).get("https://inventory.internal/items/43")
        message = str(info.value)
        assert "GET https://inventory.internal/items/43 [endpoint inventory]" in message
        assert "Near misses" in message
        assert (
            "URL https://inventory.internal/items/43 is not https://inventory.internal/items/42"
            in message
        )
        assert peers.attempts() == 1 and peers.events.of(FallbackServed) == []
        peers.unmatched.clear()

    def test_near_misses_put_the_closest_first_and_hint_at_wildcards(self, peers):
        """A URL under a scripted one is hinted to use *; a different host comes last."""
        peers.url("https://elsewhere.internal/").respond(200).optional()
        peers.url("https://inventory.internal/items").respond(200).optional()
        peers.url(URL, method="POST").respond(200).optional()
        with pytest.raises(UnmatchedRequest) as info:
            requests.get(URL, timeout=1)
        lines = str(info.value).splitlines()
        misses = [line for line in lines if line.startswith("  - ")]
        assert "method GET is not POST" in misses[0]
        assert "end it with * to match everything under it" in misses[1]
        assert "elsewhere" in misses[2]
        peers.unmatched.clear()

    def test_unused_and_partly_used_peers_are_reported(self):
        """Leaving with a step never reached fails with what was expected and what happened."""
        peers = fake_peers()
        with pytest.raises(AssertionError) as info, peers:
            peers.url(URL).statuses([503, 503, 200])
            peers.url("https://inventory.internal/never").refuse()
            session = peers.session(with_endpoint("inventory", retry=None))
            session.get(URL)
            session.get(URL)
        message = str(info.value)
        assert "fake peers: 2 problems (strict mode)" in message
        assert (
            "statuses([503, 503, 200]) was not used up: expected at least 3 requests, "
            "got 2 (503, 503); step 3 (200) was never reached"
        ) in message
        assert "url('https://inventory.internal/never').refuse() was never used" in message
        assert "What happened (fake clock" in message

    def test_steps_with_times_must_all_be_reached(self):
        """refuse(times=2) reached once is reported as reached 1 of 2 times."""
        peers = fake_peers()
        with (
            pytest.raises(AssertionError, match=r"step 1 \(refused\) was reached 1 of 2 times"),
            peers,
        ):
            peers.url(URL).refuse(times=2).respond(200)
            with pytest.raises(requests.ConnectionError):
                requests.get(URL, timeout=1)

    def test_unused_plain_response_is_reported(self):
        """A plain responses entry never used is a problem too."""
        peers = fake_peers()
        with (
            pytest.raises(
                AssertionError,
                match=r"plain response GET https://inventory\.internal/x was never used",
            ),
            peers,
        ):
            peers.mock.add(responses.GET, "https://inventory.internal/x")

    def test_optional_and_non_strict_are_not_reported(self):
        """optional() peers and non-strict registries check nothing on exit."""
        with fake_peers() as peers:
            peers.url(URL).refuse().optional()
        with fake_peers(strict=False) as peers:
            peers.url(URL).refuse()
            with pytest.raises(requests.ConnectionError, match="no fake peer matched"):
                requests.get("https://inventory.internal/unmatched", timeout=1)
        assert len(peers.unmatched) == 1

    def test_non_strict_unmatched_is_a_refused_connection(self):
        """Without strict mode an unmatched request is refused, so the fallback answers it."""
        with fake_peers(strict=False) as peers:
            resp = peers.session(CONFIG).get(URL)
        assert resp.is_fallback and resp.attempts == 3

    def test_a_failing_block_is_not_reported_twice(self):
        """When the block raised, the exit does not add a strict-mode report on top."""
        with pytest.raises(KeyError), fake_peers() as peers:
            peers.url(URL).refuse()
            raise KeyError("the test's own failure")


class TestPublicSurface:
    def test_all_lists_exactly_the_public_names(self):
        """resilient_client.testing exports exactly its documented names (and the pytest hook)."""
        import resilient_client.testing as testing

        public = {
            name
            for name, value in vars(testing).items()
            if not name.startswith("_") and getattr(value, "__module__", None) == testing.__name__
        }
        assert public == set(testing.__all__)

    def test_breaker_can_be_read_after_the_block(self):
        """A unittest user can ask about a breaker once the registry has stopped."""
        with fake_peers() as peers:
            peers.endpoint("inventory").refuse()
            peers.session(CONFIG).get(URL)
        assert peers.breaker("inventory").state == "closed"
        with pytest.raises(KeyError, match="no session under this registry"):
            peers.breaker("billing")


class TestWithoutPytest:
    def test_unittest_testcase_uses_the_context_manager(self):
        """A unittest TestCase scripts peers with the context manager alone."""

        class InventoryTest(unittest.TestCase):
            def test_retries_then_succeeds(self):
                with fake_peers() as peers:
                    peers.url(URL).statuses([503, 200])
                    resp = peers.session(CONFIG).get(URL)
                self.assertEqual(resp.attempts, 2)

        result = unittest.TextTestRunner(stream=io.StringIO()).run(
            unittest.defaultTestLoader.loadTestsFromTestCase(InventoryTest)
        )
        assert result.wasSuccessful(), result.failures + result.errors

    def test_module_imports_without_pytest_and_explains_missing_responses(self):
        """Without pytest the module imports; without responses FakePeers says what to install."""
        code = (
            "import sys; sys.modules['pytest'] = None; sys.modules['responses'] = None\n"
            "import resilient_client.testing as t\n"
            "assert not hasattr(t, '_fake_peers_fixture')\n"
            "t.FakeClock().sleep(1)\n"
            "try:\n"
            "    t.fake_peers()\n"
            "except ImportError as e:\n"
            "    print(e)\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert out.returncode == 0, out.stderr
        assert "pip install 'resilient_client[testing]'" in out.stdout


class TestSessionBugsFoundWithTheToolkit:
    def test_a_failed_streamed_call_does_not_leave_its_deadline_armed(self, peers):
        """A call with no deadline is not cut by the deadline of an earlier failed stream=True call."""
        peers.url("https://a.internal/").refuse()
        peers.url("https://b.internal/").drip(b"0123456789", every=0.5)
        a = peers.session({"defaults": {"timeout": {"total": 1.0}, "retry": None, "breaker": None}})
        b = peers.session({"defaults": {"timeout": {"total": None}, "retry": None, "breaker": None}})
        with pytest.raises(requests.ConnectionError):
            a.get("https://a.internal/", stream=True)
        assert b.get("https://b.internal/").content == b"0123456789"

    def test_the_registry_leaves_no_fake_deadline_armed(self):
        """Whatever the session leaves armed on our clock, stopping the registry disarms it."""
        with fake_peers() as peers:
            peers.url("https://a.internal/").refuse()
            a = peers.session({"defaults": {"timeout": {"total": 1.0}, "retry": None}})
            with pytest.raises(requests.ConnectionError):
                a.get("https://a.internal/", stream=True)
        arm = getattr(_deadline._local, "arm", None)
        assert arm is None or arm.deadline is None

"""
The session's layers against real sockets on 127.0.0.1: redirect hops,
calls made from inside another call, auth that keeps state per call, response
hooks and the breaker, streamed responses and their bulkhead slots, and the
bound on per-origin state.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import pickle
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from peers import (
    Blackhole,
    Peer,
    Request,
    answer,
    close_early,
    delay,
    drip,
    free_port,
    hang,
    head,
    redirect,
    reset,
    send,
    sequence,
)
from requests.auth import HTTPDigestAuth

import resilient_client
from resilient_client import AttemptFinished
from resilient_client._endpoints import MAX_ORIGIN_STATES

FAST_RETRY = {"attempts": 3, "backoff": {"initial": 0.001, "max": 0.002, "jitter": "none"}}


def make_session(**defaults: Any) -> resilient_client.ResilientSession:
    config: dict[str, Any] = {"breaker": None, "budget": None, "retry": FAST_RETRY}
    config.update(defaults)
    session = resilient_client.ResilientSession({"defaults": config})
    session.trust_env = False  # loopback only: no proxy from the environment
    return session


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer(lifetime=20.0) as p:
        yield p


class TestRedirectHops:
    def test_a_write_redirected_to_a_refusing_target_is_sent_once(self, peer: Peer) -> None:
        """A POST answered with 303 is not resent when the redirect target refuses: it reached the peer."""
        peer.on("/orders", redirect(f"http://127.0.0.1:{free_port()}/done", status=303))
        session = make_session()
        with pytest.raises(requests.ConnectionError):
            session.post(peer.url("/orders"), json={"item": 1})
        assert peer.hits("/orders") == 1

    def test_an_idempotent_call_redirected_to_a_refusing_target_is_retried(self, peer: Peer) -> None:
        """A GET whose redirect target refuses is retried as usual: repeating it is safe."""
        peer.on("/items", redirect(f"http://127.0.0.1:{free_port()}/moved"))
        session = make_session()
        with pytest.raises(requests.ConnectionError):
            session.get(peer.url("/items"))
        assert peer.hits("/items") == 3

    def test_a_write_refused_before_its_first_hop_is_retried(self, peer: Peer) -> None:
        """A failure before the first byte of the first hop still makes a POST safe to resend."""
        session = make_session()
        events: list[AttemptFinished] = []
        session.subscribe(lambda e: events.append(e) if isinstance(e, AttemptFinished) else None)
        with pytest.raises(requests.ConnectionError):
            session.post(f"http://127.0.0.1:{free_port()}/orders", json={})
        assert len(events) == 3

    def test_each_hop_gets_only_the_time_left_when_it_starts(self, peer: Peer) -> None:
        """A hop after a slow first hop is cut off at `total`, not `total` plus the first hop's time."""
        hole = Blackhole()
        try:
            peer.on("/slow", delay(0.6, redirect(hole.url("/next"))))
            session = make_session(timeout={"connect": 5.0, "read": 5.0, "total": 1.0}, retry=None)
            started = time.monotonic()
            with pytest.raises(resilient_client.DeadlineExceeded):
                session.get(peer.url("/slow"))
            assert time.monotonic() - started < 1.3
        finally:
            hole.close()

    def test_a_chain_of_fast_hops_stops_at_the_deadline(self, peer: Peer) -> None:
        """Every hop is quick but the chain is long: the call ends at `total`."""
        peer.on("/a", delay(0.15, redirect("/b")))
        peer.on("/b", delay(0.15, redirect("/a")))
        session = make_session(timeout={"total": 0.5}, retry=None)
        session.max_redirects = 50
        started = time.monotonic()
        with pytest.raises(resilient_client.DeadlineExceeded):
            session.get(peer.url("/a"))
        assert time.monotonic() - started < 0.8


class TestNestedCalls:
    def test_a_call_made_from_a_response_hook_has_its_own_policy(self, peer: Peer) -> None:
        """A token refresh from a response hook is bounded by the read timeout, as any call is."""
        peer.on("/api", answer(401, b"expired"))
        peer.on("/token", hang())
        session = make_session(timeout={"connect": 0.5, "read": 0.3, "total": None}, retry=None)
        nested: list[BaseException] = []

        def refresh(resp: requests.Response, **kwargs: Any) -> None:
            if resp.status_code == 401 and resp.request.path_url == "/api":
                try:
                    session.get(peer.url("/token"))
                except requests.RequestException as exc:
                    nested.append(exc)

        session.hooks["response"].append(refresh)
        started = time.monotonic()
        assert session.get(peer.url("/api")).status_code == 401
        assert time.monotonic() - started < 2.0
        assert [type(e) for e in nested] == [requests.ReadTimeout]

    def test_a_call_made_from_a_listener_has_its_own_policy(self, peer: Peer) -> None:
        """A listener that calls out (an alert) when an attempt fails gets the policy's timeouts too."""
        peer.on("/api", reset())
        peer.on("/alert", hang())
        session = make_session(timeout={"connect": 0.5, "read": 0.3, "total": None}, retry=None)
        nested: list[BaseException] = []

        def alert(event: Any) -> None:
            if isinstance(event, AttemptFinished) and "/api" in event.url:
                try:
                    session.get(peer.url("/alert"))
                except requests.RequestException as exc:
                    nested.append(exc)

        session.subscribe(alert)
        started = time.monotonic()
        with pytest.raises(requests.ConnectionError):
            session.get(peer.url("/api"))
        assert time.monotonic() - started < 2.0
        assert [type(e) for e in nested] == [requests.ReadTimeout]

    def test_a_nested_call_leaves_the_outer_calls_hops_under_its_deadline(self, peer: Peer) -> None:
        """After a hook's own call, the outer call's redirect hops are still cut off at its `total`."""
        peer.on("/start", redirect("/drip"))
        peer.on("/side", answer(200, b"ok"))
        # Headers at once (no Connection: close), then the body one byte every 50 ms.
        dripped = sequence(send(head(200, length=40)), drip(b"x" * 40, 0.05),
                           close_early(after_headers=False))
        peer.on("/drip", dripped)
        session = make_session(timeout={"connect": 1.0, "read": 1.0, "total": 0.6}, retry=None)

        def side_call(resp: requests.Response, **kwargs: Any) -> None:
            if resp.request.path_url == "/start":
                session.get(peer.url("/side"))

        session.hooks["response"].append(side_call)
        started = time.monotonic()
        with pytest.raises(resilient_client.DeadlineExceeded):
            session.get(peer.url("/start"))
        assert time.monotonic() - started < 0.9


class _DigestPeer:
    """Asks for digest auth, then answers the first authenticated request 503 and the rest 200."""

    def __init__(self) -> None:
        self.authenticated = 0
        self.lock = threading.Lock()

    def __call__(self, request: Request) -> Any:
        if "authorization" not in request.headers:
            nonce = hashlib.sha256(b"n").hexdigest()
            challenge = f'Digest realm="r", nonce="{nonce}", qop="auth"'
            return answer(401, b"auth please", {"WWW-Authenticate": challenge})
        with self.lock:
            self.authenticated += 1
            first = self.authenticated == 1
        return answer(503, b"busy") if first else answer(200, b"secret data")


class TestStatefulAuth:
    def test_digest_auth_is_applied_afresh_on_a_retry(self, peer: Peer) -> None:
        """A retry after a 503 on the authenticated leg authenticates again, as a new call would."""
        peer.on("/x", _DigestPeer())
        session = make_session()
        resp = session.get(peer.url("/x"), auth=HTTPDigestAuth("u", "p"))
        assert (resp.status_code, resp.text, resp.attempts) == (200, "secret data", 2)
        assert "authorization" in peer.last("/x").headers

    def test_the_users_hooks_still_run_after_the_auth_hooks_on_a_retry(self, peer: Peer) -> None:
        """The re-applied auth keeps requests' order: the auth's hooks first, then the call's."""
        peer.on("/x", _DigestPeer())
        session = make_session()
        seen: list[int] = []
        resp = session.get(peer.url("/x"), auth=HTTPDigestAuth("u", "p"),
                           hooks={"response": lambda r, **kw: seen.append(r.status_code)})
        assert resp.status_code == 200
        assert seen == [503, 200]  # the auth hook had already answered the 401s


class TestHooksAndTheBreaker:
    def test_a_raising_hook_does_not_hide_failures_from_the_breaker(self, peer: Peer) -> None:
        """A raise_for_status hook raises HTTPError, yet the breaker counts the 503 and opens."""
        peer.on("/x", answer(503))
        session = make_session(breaker={"failure_threshold": 3}, retry=None)
        session.hooks["response"].append(lambda r, **kw: r.raise_for_status())
        for _ in range(3):
            with pytest.raises(requests.HTTPError):
                session.get(peer.url("/x"))
        with pytest.raises(resilient_client.CircuitOpenError):
            session.get(peer.url("/x"))
        assert peer.hits("/x") == 3

    def test_a_raising_hook_on_a_good_answer_counts_as_a_success(self, peer: Peer) -> None:
        """A hook that raises on a 200 does not count against the peer."""
        peer.on("/x", answer(503), answer(503), answer(200), answer(503))
        session = make_session(breaker={"failure_threshold": 3}, retry=None)

        def picky(r: requests.Response, **kwargs: Any) -> None:
            if r.status_code == 200:
                raise ValueError("unexpected body")

        session.hooks["response"].append(picky)
        for _ in range(2):
            session.get(peer.url("/x"))
        with pytest.raises(ValueError):
            session.get(peer.url("/x"))
        session.get(peer.url("/x"))
        assert session.circuit(peer.url("/x")).state == "closed"


class TestStreamedSlots:
    def test_a_dropped_unread_stream_gives_its_slot_back(self, peer: Peer) -> None:
        """`if r.status_code != 200: return` with stream=True does not wedge the bulkhead."""
        peer.on("/x", answer(200, b"x" * 100_000))
        session = make_session(bulkhead={"max_concurrent": 2})

        def peek() -> int:
            return session.get(peer.url("/x"), stream=True).status_code

        for _ in range(4):
            assert peek() == 200
            gc.collect()
        assert session.get(peer.url("/x")).status_code == 200

    def test_a_stream_kept_alive_still_holds_its_slot(self, peer: Peer) -> None:
        """The slot is the response's while the caller keeps it unread."""
        peer.on("/x", answer(200, b"x" * 100_000))
        session = make_session(bulkhead={"max_concurrent": 1}, fallback=None)
        kept = session.get(peer.url("/x"), stream=True)
        with pytest.raises(resilient_client.BulkheadFull):
            session.get(peer.url("/x"))
        kept.close()
        assert session.get(peer.url("/x")).status_code == 200


class TestOriginState:
    def test_state_for_unmatched_origins_is_bounded(self) -> None:
        """Ever new origins do not grow the session's endpoint state without bound."""
        session = make_session()
        limit = MAX_ORIGIN_STATES
        for i in range(limit + 300):
            session.policy_for("GET", f"http://h{i}.test/")  # resolution alone keeps no state
            session._route_for("GET", f"http://h{i}.test/x")
        assert limit * 3 // 4 <= len(session._all_states()) <= limit

    def test_an_origin_with_a_call_in_flight_is_not_forgotten(self, peer: Peer) -> None:
        """Eviction skips an origin whose bulkhead has a call in flight."""
        peer.on("/x", answer(200, b"x" * 100_000))
        session = make_session(bulkhead={"max_concurrent": 1})
        held = session.get(peer.url("/x"), stream=True)
        for i in range(MAX_ORIGIN_STATES + 5):
            session._route_for("GET", f"http://h{i}.test/x")
        with pytest.raises(resilient_client.BulkheadFull):
            session.get(peer.url("/x"))
        held.close()


class TestDeadlineIsNotThePeersFailure:
    def test_an_attempt_cut_short_by_the_calls_deadline_is_not_counted(self, peer: Peer) -> None:
        """A hang cut off by a tight `total` before the read timeout leaves the breaker closed."""
        peer.on("/x", hang())
        session = make_session(timeout={"connect": 1.0, "read": 5.0, "total": 0.2},
                               breaker={"failure_threshold": 1}, retry=None)
        with pytest.raises(resilient_client.DeadlineExceeded):
            session.get(peer.url("/x"))
        assert session.circuit(peer.url("/x")).state == "closed"

    def test_an_attempt_that_ran_out_its_own_read_timeout_counts(self, peer: Peer) -> None:
        """The same hang, ended by the read timeout well before `total`, opens the breaker."""
        peer.on("/x", hang())
        session = make_session(timeout={"connect": 1.0, "read": 0.2, "total": 5.0},
                               breaker={"failure_threshold": 1}, retry=None)
        with pytest.raises(requests.ReadTimeout):
            session.get(peer.url("/x"))
        assert session.circuit(peer.url("/x")).state == "open"


class _Signing(requests.auth.AuthBase):
    """An auth that signs the query and counts how often it was applied."""

    def __init__(self) -> None:
        self.applied = 0

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self.applied += 1
        r.prepare_url(r.url, {"sig": f"s{self.applied}"})
        return r


class TestHookErrorsAreTheCallersOwn:
    def test_a_hook_whose_own_call_fails_does_not_resend_the_write(self, peer: Peer) -> None:
        """A hook raising ConnectionError (its sidecar is down) is not a transport failure of the POST."""
        peer.on("/orders", answer(201, b"created"))
        session = make_session()
        dead = f"http://127.0.0.1:{free_port()}/audit"

        def audit(r: requests.Response, **kwargs: Any) -> None:
            if r.request.method == "POST":
                requests.get(dead, timeout=1)

        session.hooks["response"].append(audit)
        with pytest.raises(requests.ConnectionError):
            session.post(peer.url("/orders"), json={"item": 1})
        assert peer.hits("/orders") == 1

    def test_a_hook_error_is_not_hidden_by_the_fallback(self, peer: Peer) -> None:
        """A fallback answers the peer's failures, not an exception the caller's hook raised."""
        peer.on("/x", answer(200, b"real"))
        session = make_session(fallback={"status": 200, "text": "cached"})

        def broken(r: requests.Response, **kwargs: Any) -> None:
            raise requests.ConnectionError("the hook's own failure")

        session.hooks["response"].append(broken)
        with pytest.raises(requests.ConnectionError, match="the hook's own failure"):
            session.get(peer.url("/x"))
        assert peer.hits("/x") == 1

    def test_resending_a_responses_request_counts_once(self, peer: Peer) -> None:
        """`session.send(resp.request)` does not run the breaker's bookkeeping twice."""
        peer.on("/x", answer(503))
        session = make_session(breaker={"failure_threshold": 3}, retry=None)
        session.hooks["response"].append(lambda r, **kw: r.raise_for_status())
        with pytest.raises(requests.HTTPError) as first:
            session.get(peer.url("/x"))
        with pytest.raises(requests.HTTPError):
            session.send(first.value.response.request)
        breaker = session.circuit(peer.url("/x"))
        assert (breaker.state, breaker.stats().consecutive_failures) == ("closed", 2)
        assert peer.hits("/x") == 2


class TestStreamWithFallback:
    def test_a_dripped_failure_body_is_not_drained_past_the_deadline(self, peer: Peer) -> None:
        """stream=True, a 503 whose body drips, and a fallback: the call still ends at `total`."""
        peer.on("/x", sequence(send(head(503, length=40, reason="X")), drip(b"e" * 40, 0.1),
                               close_early(after_headers=False)))
        session = make_session(timeout={"connect": 1.0, "read": 1.0, "total": 1.0}, retry=None,
                               fallback={"status": 200, "text": "cached"})
        started = time.monotonic()
        resp = session.get(peer.url("/x"), stream=True)
        assert (resp.status_code, resp.is_fallback) == (200, True)
        assert time.monotonic() - started < 1.3


class TestAuthOnRetries:
    def test_a_stateful_auth_is_applied_to_the_request_as_it_was_before_auth(self, peer: Peer) -> None:
        """A signing auth adds one signature per attempt, never one on top of the last."""
        peer.on("/x", answer(503), answer(200, b"ok"))
        session = make_session()
        auth = _Signing()
        assert session.get(peer.url("/x"), auth=auth).status_code == 200
        assert peer.last("/x").query["sig"] == ["s2"]

    def test_hooks_added_after_preparing_survive_a_retry(self, peer: Peer) -> None:
        """A hook registered on the prepared request runs on every attempt, auth or not."""
        peer.on("/x", answer(503), answer(200, b"ok"))
        session = make_session()
        prepared = session.prepare_request(requests.Request("GET", peer.url("/x"), auth=_Signing()))
        seen: list[int] = []
        prepared.register_hook("response", lambda r, **kw: seen.append(r.status_code))
        assert session.send(prepared).status_code == 200
        assert seen == [503, 200]


@pytest.fixture
def two() -> Iterator[tuple[Peer, Peer]]:
    """Two loopback peers, for redirects from one endpoint into another."""
    with Peer(lifetime=20.0) as a, Peer(lifetime=20.0) as b:
        yield a, b


def two_endpoints(
    a: Peer, b: Peer, names: tuple[str, str], **defaults: Any
) -> resilient_client.ResilientSession:
    """A session with one endpoint per peer (breaker threshold 2, no retry, no budget)."""
    config: dict[str, Any] = {"budget": None, "retry": None, "breaker": {"failure_threshold": 2}}
    config.update(defaults)
    session = resilient_client.ResilientSession({
        "defaults": config,
        "endpoints": [{"name": names[0], "match": a.url("/")}, {"name": names[1], "match": b.url("/")}],
    })
    session.trust_env = False
    return session


class TestRedirectIntoAnotherEndpoint:
    names = ("api", "cdn")

    def test_the_targets_forced_open_breaker_is_respected(self, two: tuple[Peer, Peer]) -> None:
        """A redirect into an endpoint forced open is not followed; the error does not claim no send."""
        a, b = two
        a.on("/go", redirect(b.url("/file")))
        b.on("/file", answer(200, b"data"))
        session = two_endpoints(a, b, self.names)
        session.circuit("cdn").open()
        with pytest.raises(requests.ConnectionError, match="redirect into endpoint 'cdn'") as caught:
            session.get(a.url("/go"))
        # CircuitOpenError promises the network was not touched; the first hop was.
        assert not isinstance(caught.value, resilient_client.CircuitOpenError)
        assert (a.hits(), b.hits()) == (1, 0)

    def test_the_targets_failures_count_against_the_target_not_the_source(
        self, two: tuple[Peer, Peer]
    ) -> None:
        """A dead redirect target opens its own breaker; the source that answered stays closed."""
        a, b = two
        a.on("/go", redirect(b.url("/file")))
        b.on("/file", answer(503))
        session = two_endpoints(a, b, self.names)
        for _ in range(2):
            assert session.get(a.url("/go")).status_code == 503
        assert (session.circuit("api").state, session.circuit("cdn").state) == ("closed", "open")


class TestMoreHops:
    def test_a_call_made_while_preparing_a_hop_is_not_taken_for_the_hop(self, peer: Peer) -> None:
        """A rebuild_auth that fetches a token through the session makes a call of its own."""
        peer.on("/start", redirect("/next"))
        peer.on("/next", answer(200, b"ok"))
        peer.on("/token", answer(200, b"t"))

        class TokenSession(resilient_client.ResilientSession):
            def rebuild_auth(self, prepared_request: Any, response: Any) -> None:
                prepared_request.headers["Authorization"] = "Bearer " + self.get(peer.url("/token")).text

        session = TokenSession({"defaults": {"bulkhead": {"max_concurrent": 2}, "retry": None}})
        session.trust_env = False
        events: list[AttemptFinished] = []
        session.subscribe(lambda e: events.append(e) if isinstance(e, AttemptFinished) else None)
        assert session.get(peer.url("/start")).status_code == 200
        assert peer.last("/next").headers["authorization"] == "Bearer t"
        assert sorted(e.url.rsplit("/", 1)[1] for e in events) == ["start", "token"]

    def test_a_call_from_a_hook_inherits_the_enclosing_deadline(self, peer: Peer) -> None:
        """A hook's call is part of its caller's time: it ends at the caller's `total`."""
        peer.on("/api", delay(0.3, answer(200, b"ok")))
        peer.on("/slow", hang())
        session = make_session(timeout={"connect": 1.0, "read": 5.0, "total": 0.5}, retry=None)
        nested: list[BaseException] = []

        def side(r: requests.Response, **kwargs: Any) -> None:
            if r.request.path_url == "/api":
                try:
                    session.get(peer.url("/slow"), timeout=(1.0, 5.0))
                except requests.RequestException as exc:
                    nested.append(exc)

        session.hooks["response"].append(side)
        started = time.monotonic()
        session.get(peer.url("/api"))
        assert time.monotonic() - started < 0.7  # not 0.3 s + the nested call's own 0.5 s
        assert [type(e) for e in nested] == [resilient_client.DeadlineExceeded]


class TestSlotsAndEviction:
    def test_a_kept_raw_stream_holds_the_slot(self, peer: Peer) -> None:
        """`raw = session.get(url, stream=True).raw` keeps the slot while raw is read."""
        peer.on("/x", answer(200, b"x" * 100_000))
        session = make_session(bulkhead={"max_concurrent": 1}, fallback=None)
        raw = session.get(peer.url("/x"), stream=True).raw
        gc.collect()
        with pytest.raises(resilient_client.BulkheadFull):
            session.get(peer.url("/x"))
        raw.read()
        raw.release_conn()
        assert session.get(peer.url("/x")).status_code == 200

    def test_a_forced_open_origin_is_never_forgotten(self) -> None:
        """An operator's `.open()` on an origin survives any number of other origins."""
        session = make_session(breaker={"failure_threshold": 5})
        held = [session.circuit(f"http://held{i}.test/") for i in range(20)]
        for breaker in held:
            breaker.open()
        for i in range(MAX_ORIGIN_STATES + 20):
            session.circuit(f"http://h{i}.test/")
        assert [session.circuit(f"http://held{i}.test/").state for i in range(20)] == ["open"] * 20

    def test_the_origin_in_use_is_kept_over_ones_not_used(self, peer: Peer) -> None:
        """Eviction forgets the least recently used origin, not the one a call just used."""
        peer.on("/x", answer(200, b"ok"))
        session = make_session()
        state = session._route_for("GET", peer.url("/x")).state  # the oldest origin
        for i in range(MAX_ORIGIN_STATES + 50):
            session.get(peer.url("/x"))
            session._route_for("GET", f"http://h{i}.test/")
        assert session._route_for("GET", peer.url("/x")).state is state

    def test_circuit_resolves_a_url_for_the_method_given(self) -> None:
        """`circuit(url, method)` finds the breaker of a rule limited to that method."""
        session = resilient_client.ResilientSession({"endpoints": [
            {"name": "writes", "match": "http://api.test/", "methods": ["POST"]}]})
        assert session.circuit("http://api.test/x", "POST") is session.circuit("writes")
        assert session.circuit("http://api.test/x") is not session.circuit("writes")


class TestSecretsAcrossNestedCalls:
    def test_a_nested_call_leaves_urllib3s_log_lines_of_the_outer_call_redacted(
        self, peer: Peer, caplog: pytest.LogCaptureFixture
    ) -> None:
        """After a hook's own call, the outer call's redirect hop is still logged with its secret redacted."""
        peer.on("/start", redirect("/cb?token=HOPSECRET1"))
        peer.on("/cb", answer(200, b"ok"))
        peer.on("/side", answer(200, b"ok"))
        session = resilient_client.ResilientSession({"secrets": {"query": ["token"]}})
        session.trust_env = False

        def side(r: requests.Response, **kwargs: Any) -> None:
            if r.request.path_url == "/start":
                session.get(peer.url("/side"))

        session.hooks["response"].append(side)
        with caplog.at_level("DEBUG", logger="urllib3"):
            assert session.get(peer.url("/start")).status_code == 200
        assert "/cb?token=" in caplog.text and "HOPSECRET1" not in caplog.text

    def test_prepare_request_called_directly_redacts_its_errors(self) -> None:
        """A secret header value requests refuses while preparing is not quoted in the error."""
        session = resilient_client.ResilientSession()
        bad = requests.Request("GET", "http://api.test/", headers={"Authorization": "Bearer S3CRETVAL\n"})
        with pytest.raises(requests.exceptions.InvalidHeader) as caught:
            session.prepare_request(bad)
        assert "S3CRETVAL" not in str(caught.value)


class TestWhatACallSays:
    def test_an_error_after_retries_carries_the_attempt_count(self) -> None:
        """`exc.attempts` and a note say how many tries were made; urllib3's message counts none of ours."""
        session = make_session()
        with pytest.raises(requests.ConnectionError) as caught:
            session.get(f"http://127.0.0.1:{free_port()}/x")
        assert caught.value.attempts == 3
        assert "gave up after 3 attempts" in "".join(getattr(caught.value, "__notes__", []))

    def test_an_error_of_a_single_try_says_one(self) -> None:
        """Without a retry, attempts is 1 and no note is added."""
        session = make_session(retry=None)
        with pytest.raises(requests.ConnectionError) as caught:
            session.get(f"http://127.0.0.1:{free_port()}/x")
        assert caught.value.attempts == 1
        assert not getattr(caught.value, "__notes__", [])

    def test_every_response_has_stale_age(self, peer: Peer) -> None:
        """stale_age is None on a live response and on a static fallback (as every response has attempts)."""
        peer.on("/ok", answer(200, b"ok"))
        peer.on("/down", answer(503))
        session = make_session(retry=None, fallback={"status": 200, "text": "cached"})
        live, fallback = session.get(peer.url("/ok")), session.get(peer.url("/down"))
        assert (live.stale_age, live.is_fallback) == (None, False)
        assert (fallback.stale_age, fallback.is_fallback) == (None, True)


class TestPolicyForOneCall:
    def test_policy_none_switches_retries_off_for_one_call(self, peer: Peer) -> None:
        """`policy={"retry": None}` makes one try; the next call retries again."""
        peer.on("/x", answer(503))
        session = make_session()
        assert session.get(peer.url("/x"), policy={"retry": None}).attempts == 1
        assert session.get(peer.url("/x")).attempts == 3
        assert peer.hits("/x") == 4

    def test_a_calls_total_replaces_the_endpoints(self, peer: Peer) -> None:
        """`policy={"timeout": {"total": 0.3}}` cuts this call off at 0.3 s."""
        peer.on("/x", hang())
        session = make_session(timeout={"connect": 1.0, "read": 5.0, "total": 10.0}, retry=None)
        started = time.monotonic()
        with pytest.raises(resilient_client.DeadlineExceeded):
            session.get(peer.url("/x"), policy={"timeout": {"total": 0.3}})
        assert time.monotonic() - started < 0.6

    def test_send_takes_policy_too(self, peer: Peer) -> None:
        """`session.send(prepared, policy=...)` is accepted, not passed on to the adapter."""
        peer.on("/x", answer(503))
        session = make_session()
        prepared = session.prepare_request(requests.Request("GET", peer.url("/x")))
        assert session.send(prepared, policy={"retry": None}).attempts == 1

    def test_shared_state_cannot_change_for_one_call(self, peer: Peer) -> None:
        """The breaker is the endpoint's: asking to change it for one call is a ConfigError naming it."""
        session = make_session()
        with pytest.raises(resilient_client.ConfigError, match=r"^policy\.breaker: cannot be changed"):
            session.get(peer.url("/x"), policy={"breaker": None})

    def test_a_fallback_for_one_call_answers_an_open_breaker(self, peer: Peer) -> None:
        """With the breaker open, a call given its own fallback gets it instead of CircuitOpenError."""
        peer.on("/x", answer(200, b"ok"))
        session = make_session(breaker={"failure_threshold": 1})
        session.circuit(peer.url("/x")).open()
        resp = session.get(peer.url("/x"), policy={"fallback": {"status": 200, "text": "later"}})
        assert (resp.is_fallback, resp.text) == (True, "later")
        with pytest.raises(resilient_client.CircuitOpenError):
            session.get(peer.url("/x"))


class TestSecondReview:
    names = ("a", "b")

    def test_a_per_call_timeout_holds_on_a_hop_into_another_endpoint(self, two: tuple[Peer, Peer]) -> None:
        """timeout= given by the caller applies to every hop, whichever endpoint it enters."""
        a, b = two
        a.on("/go", redirect(b.url("/hang")))
        b.on("/hang", hang())
        session = two_endpoints(a, b, self.names, timeout={"connect": 1.0, "read": 3.0, "total": None})
        started = time.monotonic()
        with pytest.raises(requests.ReadTimeout):
            session.get(a.url("/go"), timeout=(0.5, 0.3))
        assert time.monotonic() - started < 1.0

    def test_a_bounce_back_to_the_source_counts_its_own_failure(self, two: tuple[Peer, Peer]) -> None:
        """A -> B -> A ending in A's 503 is A's failure (an SSO bounce)."""
        a, b = two
        a.on("/login", redirect(b.url("/auth")))
        b.on("/auth", redirect(a.url("/callback")))
        a.on("/callback", answer(503))
        session = two_endpoints(a, b, self.names)
        for _ in range(2):
            assert session.get(a.url("/login")).status_code == 503
        assert (session.circuit("a").state, session.circuit("b").state) == ("open", "closed")

    def test_a_raising_hook_on_a_hop_reports_to_the_targets_breaker(self, two: tuple[Peer, Peer]) -> None:
        """raise_for_status on a 503 from the redirect target counts against the target, not the source."""
        a, b = two
        a.on("/go", redirect(b.url("/file")))
        b.on("/file", answer(503))
        session = two_endpoints(a, b, self.names)
        for _ in range(2):
            with pytest.raises(requests.HTTPError):
                session.get(a.url("/go"), hooks={"response": lambda r, **kw: r.raise_for_status()})
        assert (session.circuit("a").state, session.circuit("b").state) == ("closed", "open")

    def test_a_listener_call_after_the_attempt_inherits_the_deadline(self, peer: Peer) -> None:
        """A listener calling out on RetryScheduled still ends within the outer call's total."""
        peer.on("/x", answer(503))
        peer.on("/alert", hang())
        session = make_session(timeout={"connect": 1.0, "read": 5.0, "total": 1.0})

        def alert(event: Any) -> None:
            if isinstance(event, resilient_client.RetryScheduled):
                with contextlib.suppress(requests.RequestException):
                    # Its own total is long: only the enclosing call's can stop it in time.
                    session.get(peer.url("/alert"), policy={"timeout": {"total": 5.0}})

        session.subscribe(alert)
        started = time.monotonic()
        with contextlib.suppress(requests.RequestException):
            session.get(peer.url("/x"))
        assert time.monotonic() - started < 1.3

    def test_a_stream_whose_body_a_hook_read_frees_its_slot(self, peer: Peer) -> None:
        """A hook that reads r.content of a stream=True response leaves no slot held."""
        peer.on("/x", answer(200, b"x" * 1000))
        session = make_session(bulkhead={"max_concurrent": 1})
        def read_it(r: requests.Response, **kwargs: Any) -> None:
            r.content  # noqa: B018  (the read is the point)

        kept = [session.get(peer.url("/x"), stream=True, hooks={"response": read_it}) for _ in range(3)]
        assert all(r.status_code == 200 for r in kept)

    def test_a_dropped_stream_frees_its_slot_without_a_garbage_collection(self, peer: Peer) -> None:
        """No reference cycle keeps a dropped response (and its slot) alive until gc runs."""
        peer.on("/x", answer(200, b"x" * 100_000))
        session = make_session(bulkhead={"max_concurrent": 1})
        gc.disable()
        try:
            for _ in range(3):
                session.get(peer.url("/x"), stream=True)  # dropped at once
        finally:
            gc.enable()

    def test_a_response_with_hooks_pickles(self, peer: Peer) -> None:
        """The hook guard does not stop a response (and its request) from pickling."""
        peer.on("/x", answer(200, b"ok"))
        session = make_session(breaker={"failure_threshold": 5})  # the guard then holds a breaker
        resp = session.get(peer.url("/x"), hooks={"response": _noop_hook})
        again = pickle.loads(pickle.dumps(resp))
        assert again.request.hooks["response"][0].hooks == [_noop_hook]

    def test_a_trailing_dot_host_gets_its_endpoints_policy(self) -> None:
        """https://inventory.internal./ is inventory.internal, for routing."""
        session = resilient_client.ResilientSession({"endpoints": [
            {"name": "inventory", "match": "https://inventory.internal/"}]})
        assert session.policy_for("GET", "https://inventory.internal./items").name == "inventory"

    def test_an_unparseable_url_keeps_no_secret_in_its_context(self) -> None:
        """The InvalidURL for a URL urllib3 cannot parse carries no __context__ quoting it."""
        session = resilient_client.ResilientSession({"secrets": {"query": ["token"]}})
        with pytest.raises(requests.exceptions.InvalidURL) as caught:
            session.get("http://127.0.0.1:99999/x?token=CTXSECRET1")
        chain, e = [], caught.value
        while e is not None:
            chain.append(f"{e!r} {e}")
            e = e.__cause__ or e.__context__
        assert "CTXSECRET1" not in " ".join(chain)


def _noop_hook(r: requests.Response, **kwargs: Any) -> None:
    return None


class TestMintedIdempotencyKeys:
    def session(self, **retry: Any) -> resilient_client.ResilientSession:
        return make_session(retry={**FAST_RETRY, "mint_idempotency_key": True, **retry})

    def test_a_write_gets_one_key_for_every_retry(self, peer: Peer) -> None:
        """A POST without a key gets a UUID4 Idempotency-Key, the same on each retry, and is retried."""
        peer.on("/orders", answer(503), answer(503), answer(201, b"created"))
        resp = self.session().post(peer.url("/orders"), json={"item": 1})
        assert (resp.status_code, resp.attempts) == (201, 3)
        keys = {r.headers.get("idempotency-key") for r in peer.requests}
        assert len(keys) == 1 and None not in keys
        assert len(keys.pop()) == 36  # a UUID

    def test_each_call_gets_its_own_key_and_a_given_key_is_kept(self, peer: Peer) -> None:
        """Two calls, two keys; a caller's own key is never replaced; a GET gets none."""
        peer.on("/orders", answer(201))
        peer.on("/items", answer(200))
        session = self.session()
        session.post(peer.url("/orders"))
        session.post(peer.url("/orders"))
        session.post(peer.url("/orders"), headers={"Idempotency-Key": "mine"})
        session.get(peer.url("/items"))
        keys = [r.headers.get("idempotency-key") for r in peer.requests]
        assert keys[0] != keys[1] and keys[2] == "mine" and keys[3] is None

    def test_a_409_for_a_keyed_request_is_retried_whatever_on_status_says(self, peer: Peer) -> None:
        """409: the first request with this key is still being processed; retry with backoff."""
        peer.on("/orders", answer(409), answer(201))
        resp = self.session(on_status=[503]).post(peer.url("/orders"))
        assert (resp.status_code, resp.attempts) == (201, 2)

    def test_a_422_for_a_keyed_request_is_never_retried_and_said_so(self, peer: Peer) -> None:
        """422: the key was reused with another payload; the caller's bug, reported as such."""
        peer.on("/orders", answer(422), answer(201))
        session = self.session()
        events: list[Any] = []
        session.subscribe(events.append)
        resp = session.post(peer.url("/orders"))
        assert (resp.status_code, resp.attempts) == (422, 1)
        gave_up = [e for e in events if isinstance(e, resilient_client.GaveUp)]
        assert [e.reason for e in gave_up] == ["idempotency_key_reused"]

    def test_without_a_key_409_is_an_answer(self, peer: Peer) -> None:
        """An unkeyed POST answered 409 is not retried."""
        peer.on("/orders", answer(409), answer(201))
        assert make_session().post(peer.url("/orders")).status_code == 409
        assert peer.hits("/orders") == 1

    def test_minting_must_be_a_boolean(self) -> None:
        """`mint_idempotency_key: "yes"` is a ConfigError naming the key."""
        with pytest.raises(resilient_client.ConfigError, match=r"defaults\.retry\.mint_idempotency_key"):
            resilient_client.ResilientSession({"defaults": {"retry": {"mint_idempotency_key": "yes"}}})


class _TokenAuth(requests.auth.AuthBase):
    """An auth that fetches a token through the same session while the call is prepared."""

    def __init__(self, session: resilient_client.ResilientSession, url: str) -> None:
        self.session, self.url, self.got = session, url, None

    def __call__(self, r: requests.PreparedRequest) -> requests.PreparedRequest:
        self.got = self.session.get(self.url)
        r.headers["Authorization"] = "Bearer " + self.got.text
        return r


class TestThirdReview:
    def test_a_call_made_while_preparing_does_not_take_the_outer_policy(self, peer: Peer) -> None:
        """Auth fetching a token mid-preparation gets its own policy, not the outer call's fallback."""
        peer.on("/token", answer(500, b"token down"))
        peer.on("/data", answer(200, b"data"))
        session = make_session(retry=None)
        auth = _TokenAuth(session, peer.url("/token"))
        cached = {"fallback": {"status": 200, "text": "cached"}}
        resp = session.get(peer.url("/data"), auth=auth, policy=cached)
        assert auth.got is not None and (auth.got.status_code, auth.got.is_fallback) == (500, False)
        assert (resp.status_code, resp.text) == (200, "data")

    def test_an_early_refusal_says_zero_attempts(self, peer: Peer) -> None:
        """The CircuitOpenError raised before requests prepares the call carries attempts == 0."""
        session = make_session(breaker={"failure_threshold": 1})
        session.circuit(peer.url("/x")).open()
        with pytest.raises(resilient_client.CircuitOpenError) as caught:
            session.get(peer.url("/x"))
        assert caught.value.attempts == 0

    def test_the_extra_attributes_survive_pickling_a_response(self, peer: Peer) -> None:
        """attempts, is_fallback and stale_age come back from pickle (HTTP caches pickle responses)."""
        peer.on("/x", answer(503), answer(200, b"ok"))
        resp = make_session().get(peer.url("/x"))
        again = pickle.loads(pickle.dumps(resp))
        assert (again.attempts, again.is_fallback, again.stale_age) == (2, False, None)

    def test_a_session_pickles_under_the_fake_clock(self, fake_peers: Any) -> None:
        """The test kit's clock does not make the application's sessions unpicklable."""
        session = resilient_client.ResilientSession()
        again = pickle.loads(pickle.dumps(session))
        assert again.clock.monotonic() == session.clock.monotonic()

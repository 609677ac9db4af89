"""The first attempt runs before tenacity; tenacity still makes every retry decision."""

from __future__ import annotations

from unittest import mock

import pytest
import requests
import responses

import resilient_client
from resilient_client.testing import FakeClock

URL = "http://peer.test/items"


def _session(**kw):
    config = {"defaults": {"retry": {"attempts": 3, "backoff": {"initial": 0.1, "jitter": "none"}},
                           "breaker": None}}
    return resilient_client.ResilientSession(config, clock=FakeClock(1000.0), **kw)


def _retrying_spy(session):
    """Wrap the session's tenacity Retrying to count how often it is entered."""
    route = session._route_for("GET", URL)
    spy = mock.Mock(wraps=route.retrying)
    route.retrying = spy
    return spy


class TestFirstAttemptShortcut:
    @responses.activate
    def test_success_does_not_enter_tenacity(self):
        """A 200 at the first attempt is returned without entering tenacity."""
        responses.get(URL, json={"ok": True})
        s = _session()
        spy = _retrying_spy(s)
        resp = s.get(URL)
        assert (resp.status_code, resp.attempts, resp.is_fallback) == (200, 1, False)
        assert spy.call_count == 0

    @responses.activate
    def test_status_not_retried_does_not_enter_tenacity(self):
        """A 404 (not in on_status) comes back at once, as tenacity would have returned it."""
        responses.get(URL, status=404)
        s = _session()
        spy = _retrying_spy(s)
        assert s.get(URL).status_code == 404
        assert spy.call_count == 0
        assert len(responses.calls) == 1

    @responses.activate
    def test_retryable_status_is_replayed_into_tenacity(self):
        """A 503 first enters tenacity, which sleeps its backoff and retries: 503, 503, 200 takes 3 tries."""
        for status in (503, 503, 200):
            responses.get(URL, status=status)
        s = _session()
        spy = _retrying_spy(s)
        resp = s.get(URL)
        assert (resp.status_code, resp.attempts) == (200, 3)
        assert spy.call_count == 1
        assert len(responses.calls) == 3
        assert s.clock.sleeps == [0.1, 0.2]

    @responses.activate
    def test_exhausted_retries_return_the_last_response(self):
        """When tenacity gives up, the caller gets the last attempt's own response."""
        for _ in range(3):
            responses.get(URL, status=503)
        resp = _session().get(URL)
        assert (resp.status_code, resp.attempts) == (503, 3)
        assert len(responses.calls) == 3

    @responses.activate
    def test_open_breaker_is_raised_without_tenacity(self):
        """An open breaker's CircuitOpenError (never retried) is raised at once, without entering tenacity."""
        responses.get(URL, json={"ok": True})
        config = {"defaults": {"retry": {"attempts": 3}}}
        s = resilient_client.ResilientSession(config, clock=FakeClock(1000.0))
        spy = _retrying_spy(s)
        s.circuit(URL).open()
        with pytest.raises(resilient_client.CircuitOpenError):
            s.get(URL)
        assert spy.call_count == 0
        assert len(responses.calls) == 0

    @responses.activate
    def test_first_exception_is_replayed_into_tenacity(self):
        """A connection error at the first attempt is retried by tenacity; the second try succeeds."""
        responses.get(URL, body=requests.ConnectionError("refused"))
        responses.get(URL, json={"ok": True})
        resp = _session().get(URL)
        assert (resp.status_code, resp.attempts) == (200, 2)

    @responses.activate
    def test_not_retryable_exception_is_raised_unchanged(self):
        """An error tenacity does not retry reaches the caller as itself, after one try."""
        boom = requests.exceptions.InvalidHeader("bad header")
        responses.get(URL, body=boom)
        with pytest.raises(requests.exceptions.InvalidHeader) as exc:
            _session().get(URL)
        assert exc.value is boom
        assert len(responses.calls) == 1

    @responses.activate
    def test_user_retry_if_still_decides_for_a_success(self):
        """With a user retry_if, even a 200 goes through tenacity, so the predicate can ask for a retry."""
        responses.get(URL, json={"n": 1})
        responses.get(URL, json={"n": 2})
        seen = []

        def retry_if(request, outcome):
            seen.append(outcome.status_code)
            return len(seen) == 1

        resp = _session(retry_if=retry_if).get(URL)
        assert resp.json() == {"n": 2}
        assert resp.attempts == 2
        assert seen == [200, 200]

    def test_keyboard_interrupt_propagates(self):
        """A KeyboardInterrupt in the first attempt is not swallowed or retried."""
        from requests.adapters import HTTPAdapter

        with mock.patch.object(HTTPAdapter, "send", side_effect=KeyboardInterrupt) as send, \
                pytest.raises(KeyboardInterrupt):
            _session().get(URL)
        assert send.call_count == 1


def _response(status):
    r = requests.Response()
    r.status_code = status
    return r


OUTCOMES = [
    *(_response(s) for s in (200, 201, 204, 301, 400, 404, 408, 429, 500, 502, 503, 504)),
    requests.ConnectionError("refused"),
    requests.ConnectTimeout("connect timeout"),
    requests.ReadTimeout("read timeout"),
    requests.exceptions.ChunkedEncodingError("broken"),
    requests.exceptions.SSLError("tls"),
    requests.exceptions.InvalidURL("bad url"),
    resilient_client.CircuitOpenError("peer", None),
    resilient_client.DeadlineExceeded("peer", 1.0),
    ValueError("a bug"),
    KeyboardInterrupt(),
]


class TestOneVerdict:
    @pytest.mark.parametrize("outcome", OUTCOMES, ids=repr)
    @pytest.mark.parametrize("predicate", [None, lambda r, o: True, lambda r, o: False, lambda r, o: None],
                             ids=["no retry_if", "retry_if True", "retry_if False", "retry_if None"])
    @pytest.mark.parametrize("retry", [
        resilient_client.RetryPolicy(),
        resilient_client.RetryPolicy(on_status=frozenset({500}), on=frozenset({"connect_error"})),
    ], ids=["default policy", "narrow policy"])
    def test_tenacity_strategy_gives_the_shortcuts_verdict(self, outcome, predicate, retry):
        """RetrySafely (tenacity's strategy) answers exactly what `decide` (the shortcut's verdict) says."""
        import tenacity

        from resilient_client._retry import Call, RetrySafely, decide

        request = requests.Request("GET", URL).prepare()
        call = Call(request, {}, None, None, idempotent=True, replayable=True)
        rs = tenacity.RetryCallState(retry_object=None, fn=None, args=(call,), kwargs={})
        if isinstance(outcome, BaseException):
            rs.set_exception((type(outcome), outcome, None))
        else:
            rs.set_result(outcome)
        assert RetrySafely(retry, predicate)(rs) is decide(call, outcome, retry, predicate)

    def test_retry_if_is_asked_once_per_attempt(self, fake_peers, no_backoff):
        """The shortcut's verdict is reused by tenacity: a retry_if predicate is asked once per attempt."""
        asked = []

        def retry_if(request, outcome):
            asked.append(outcome.status_code)
            return None

        session = resilient_client.ResilientSession(listeners=(), retry_if=retry_if)
        fake_peers.attach(session)
        fake_peers.url(URL).statuses([503, 503, 200])
        assert session.get(URL).status_code == 200
        assert asked == [503, 503, 200]

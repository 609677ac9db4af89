"""
Tests for the retry layer (`_retry`, `_outcome`, the retry path of `_session`).

Everything here runs on a fake clock and a scripted transport mounted on the
session, so every layer above the transport runs for real and nothing sleeps.
"""

from __future__ import annotations

import contextlib
import email.utils
import io
import random
import time
from typing import Any, ClassVar

import pytest
import requests
from hypothesis import given, settings
from hypothesis import strategies as st
from retry_helpers import (
    BEFORE_SEND,
    FAILURES,
    PEER,
    ScriptedAdapter,
    connect_error,
    read_error,
    read_timeout,
    retry_config,
    session_with,
)
from urllib3.exceptions import MaxRetryError

import resilient_client
from resilient_client import (
    BackoffPolicy,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    GaveUp,
    Jitter,
    RetryPolicy,
    RetryScheduled,
)
from resilient_client._retry import Backoff, parse_retry_after

URL = PEER + "/items/1"
NOW = 1_445_412_480.0  # Wed, 21 Oct 2015 07:28:00 GMT


def http_date(ts: float) -> str:
    return email.utils.formatdate(ts, usegmt=True)


class _TrackedBody(io.BytesIO):
    """A response body that records whether its connection was released."""

    released = 0

    def release_conn(self) -> None:
        self.released += 1


# -- backoff -------------------------------------------------------------------


def backoff(jitter: str, seed: int = 7, **kw: float) -> Backoff:
    policy = BackoffPolicy(
        **{"initial": 0.1, "multiplier": 2.0, "max": 1.0, **kw}, jitter=Jitter(jitter)
    )
    return Backoff(policy, rng=random.Random(seed))


def sequence(b: Backoff, n: int = 7) -> list[float]:
    out, prev = [], 0.0
    for i in range(1, n + 1):
        prev = b.sleep_for(i, prev)
        out.append(prev)
    return out


class TestBackoffSequences:
    # Seeded with random.Random(7), initial 0.1, multiplier 2, max 1.0.
    EXPECTED: ClassVar[dict[str, list[float]]] = {
        "none": [0.1, 0.2, 0.4, 0.8, 1.0, 1.0, 1.0],
        "full": [0.032383, 0.03017, 0.260374, 0.057949, 0.535882, 0.365689, 0.057999],
        "equal": [0.066192, 0.115085, 0.330187, 0.428975, 0.767941, 0.682844, 0.528999],
        "decorrelated": [0.164767, 0.15948, 0.346339, 0.168019, 0.316527, 0.410682, 0.165657],
    }

    @pytest.mark.parametrize("jitter", list(EXPECTED))
    def test_exact_sequence_per_jitter(self, jitter):
        """Each jitter kind gives the exact seeded sequence of sleeps."""
        assert sequence(backoff(jitter)) == pytest.approx(self.EXPECTED[jitter], abs=1e-6)

    @pytest.mark.parametrize("jitter", list(EXPECTED))
    def test_sequence_follows_brookers_formulae(self, jitter):
        """
        Each sleep is what the formula of "Exponential Backoff and Jitter" gives for the same draws.
        """
        rng, prev, want = random.Random(7), 0.1, []
        for n in range(1, 8):
            base = min(1.0, 0.1 * 2 ** (n - 1))
            if jitter == "none":
                s = base
            elif jitter == "full":
                s = rng.uniform(0, base)
            elif jitter == "equal":
                s = base / 2 + rng.uniform(0, base / 2)
            else:
                s = prev = min(1.0, rng.uniform(0.1, prev * 3))
            want.append(s)
        assert sequence(backoff(jitter)) == pytest.approx(want)

    @pytest.mark.parametrize("jitter", list(EXPECTED))
    def test_session_sleeps_the_seeded_sequence(self, jitter):
        """A session given rng= sleeps exactly the seeded sequence between its attempts."""
        config = retry_config(
            {
                "attempts": 5,
                "backoff": {"initial": 0.1, "multiplier": 2.0, "max": 1.0, "jitter": jitter},
            },
            timeout={"total": None},
        )
        session, adapter, clock = session_with([503], config, rng=random.Random(7))
        assert session.get(URL).status_code == 503
        assert clock.sleeps == pytest.approx(self.EXPECTED[jitter][:4], abs=1e-6)
        assert len(adapter.requests) == 5

    def test_huge_attempt_numbers_do_not_overflow(self):
        """The exponent is capped, so the 10,000th sleep is the maximum, not an OverflowError."""
        assert backoff("none", multiplier=10.0).sleep_for(10_000) == 1.0

    def test_defaults_are_bounded_and_jittered(self):
        """The default backoff has a finite maximum and full jitter."""
        p = RetryPolicy().backoff
        assert (p.initial, p.multiplier, p.max, p.jitter) == (0.1, 2.0, 5.0, Jitter.FULL)


policies = st.builds(
    BackoffPolicy,
    initial=st.floats(0, 2),
    multiplier=st.floats(1, 10),
    max=st.floats(2, 60),
    jitter=st.sampled_from(list(Jitter)),
)


class TestBackoffProperties:
    @settings(max_examples=300, deadline=None, database=None)
    @given(policies, st.integers(1, 200), st.floats(0, 100), st.integers(0, 2**32))
    def test_every_sleep_is_within_zero_and_max(self, policy, n, previous, seed):
        """
        Every computed sleep lies in [0, max], whatever the policy, attempt number or previous
        sleep.
        """
        s = Backoff(policy, rng=random.Random(seed)).sleep_for(n, min(previous, policy.max))
        assert 0.0 <= s <= policy.max

    @settings(max_examples=150, deadline=None, database=None)
    @given(
        total=st.floats(0.05, 20),
        cost=st.floats(0, 3),
        attempts=st.integers(2, 10),
        jitter=st.sampled_from([j.value for j in Jitter]),
        initial=st.floats(0, 3),
        retry_after=st.none() | st.integers(0, 40),
        seed=st.integers(0, 2**32),
    )
    def test_no_sleep_runs_past_the_deadline(
        self, total, cost, attempts, jitter, initial, retry_after, seed
    ):
        """
        However backoff, Retry-After and attempt times add up, no sleep ends past the total
        deadline.
        """
        headers = {} if retry_after is None else {"Retry-After": str(retry_after)}
        config = retry_config(
            {"attempts": attempts, "backoff": {"initial": initial, "max": 10.0, "jitter": jitter}},
            timeout={"total": total},
        )
        session, adapter, clock = session_with(
            [(503, headers)], config, cost=cost, rng=random.Random(seed)
        )
        start = clock.monotonic()
        with contextlib.suppress(DeadlineExceeded):
            session.get(URL)
        assert sum(clock.sleeps) <= total
        for began, length in clock.sleep_log:
            assert began + length < start + total
        assert len(adapter.requests) <= attempts


class TestDeadline:
    def test_sleep_ending_on_the_deadline_is_not_slept(self):
        """
        A sleep that would end exactly on the deadline (to the last float bit) returns the last
        outcome now.
        """
        # Regression: `sleep >= remaining()` rounded 1000.3199... - 1000 up, so
        # this sleep ran to the deadline and the call raised DeadlineExceeded.
        total = 0.3199161359027062
        config = retry_config(
            {"attempts": 2, "backoff": {"initial": total, "max": 10.0, "jitter": "none"}},
            timeout={"total": total},
        )
        session, _adapter, clock = session_with([503, 200], config)
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps) == (503, 1, [])

    def test_sleep_that_fits_is_slept(self):
        """A sleep ending before the deadline is slept and the retry goes ahead."""
        config = retry_config({"attempts": 2}, timeout={"total": 0.15})
        session, _adapter, clock = session_with([503, 200], config, cost=0.01)
        assert session.get(URL).attempts == 2
        assert clock.sleeps == [0.1]

    def test_attempt_timeouts_are_capped_by_the_time_left(self):
        """The retry's connect and read timeouts shrink to what is left of the deadline."""
        config = retry_config({"attempts": 2}, timeout={"connect": 1.0, "read": 5.0, "total": 2.0})
        session, adapter, _clock = session_with([503, 200], config, cost=0.5)
        session.get(URL)
        assert adapter.timeouts[0] == (1.0, 2.0)
        assert adapter.timeouts[1] == pytest.approx((1.0, 1.4))


# -- Retry-After ---------------------------------------------------------------


class TestParseRetryAfter:
    @pytest.mark.parametrize(
        ("value", "expected"),
        [
            ("120", 120.0),
            ("0", 0.0),
            ("  7 ", 7.0),
            (http_date(NOW + 30), 30.0),  # HTTP-date in the future
            ("Sunday, 25-Oct-15 07:28:00 GMT", 4 * 86400.0),  # RFC 850 date
            ("Sun Oct 25 07:28:00 2015", 4 * 86400.0),  # asctime date: no zone, means UTC
            (http_date(NOW - 3600), 0.0),  # a past date means "now"
            ("99999999999999999999", 1e20),  # huge: parsed, then refused by max_retry_after
            ("Fri, 31 Dec 9999 23:59:59 GMT", 253402300799.0 - NOW),  # huge date
            ("-5", None),  # negative
            ("+5", None),
            ("1.5", None),  # the RFC wants an integer
            ("1e3", None),
            ("soon", None),  # garbage
            ("Wed, 99 Oct 2015 07:28:00 GMT", None),
            ("\u00b2", None),  # latin-1 superscript two: isdigit() but no number
            ("1\u00b9", None),
            ("", None),  # empty
            ("   ", None),
        ],
        ids=lambda v: repr(v)[:32],
    )
    def test_table(self, value, expected):
        """
        Each Retry-After form parses to the seconds it asks for, or None when it must be refused.
        """
        got = parse_retry_after(value, now=lambda: NOW)
        if expected is None:
            assert got is None
        else:
            assert got == pytest.approx(expected)


class TestRetryAfterInSession:
    def config(self, **retry: Any) -> dict[str, Any]:
        return retry_config({"attempts": 3, **retry}, timeout={"total": 60.0})

    def test_seconds_are_slept(self):
        """
        A 503 with Retry-After: 2 is retried after sleeping exactly 2 seconds, not the backoff.
        """
        session, _adapter, clock = session_with([(503, {"Retry-After": "2"}), 200], self.config())
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps) == (200, 2, [2.0])

    def test_http_date_is_slept(self):
        """An HTTP-date Retry-After is slept until that date (HTTP-dates have whole seconds)."""
        when = http_date(time.time() + 4)
        session, _adapter, clock = session_with([(429, {"Retry-After": when}), 200], self.config())
        assert session.get(URL).status_code == 200
        assert len(clock.sleeps) == 1 and 2.5 < clock.sleeps[0] <= 4.0

    @pytest.mark.parametrize(
        "value",
        ["31", "99999999999999999999", "-1", "soon", "", "1.5", "\u00b2"],
        ids=["over-max", "huge", "negative", "garbage", "empty", "fraction", "latin-1"],
    )
    def test_refused_value_returns_that_response_at_once(self, value):
        """
        A Retry-After over max_retry_after, negative or unparseable is not slept: that response
        comes back at once.
        """
        events: list[Any] = []
        session, adapter, clock = session_with(
            [(503, {"Retry-After": value}), 200], self.config(), listeners=[events.append]
        )
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps, len(adapter.requests)) == (
            503,
            1,
            [],
            1,
        )
        assert [e.reason for e in events if isinstance(e, GaveUp)] == ["retry_after_refused"]

    def test_value_at_max_is_slept(self):
        """A Retry-After equal to max_retry_after is still honoured."""
        session, _adapter, clock = session_with([(503, {"Retry-After": "30"}), 200], self.config())
        assert session.get(URL).status_code == 200
        assert clock.sleeps == [30.0]

    def test_value_past_the_deadline_stops_now(self):
        """
        A Retry-After longer than the time left returns the response now instead of sleeping into
        the deadline.
        """
        config = retry_config({"attempts": 3}, timeout={"total": 10.0})
        session, _adapter, clock = session_with([(503, {"Retry-After": "20"}), 200], config)
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts, clock.sleeps) == (503, 1, [])

    def test_ignored_when_not_respected(self):
        """With respect_retry_after off, the backoff applies and the header is ignored."""
        session, _adapter, clock = session_with(
            [(503, {"Retry-After": "soon"}), 200], self.config(respect_retry_after=False)
        )
        assert session.get(URL).status_code == 200
        assert clock.sleeps == [0.1]


# -- what is retried -----------------------------------------------------------

METHODS = ["GET", "PUT", "DELETE", "POST", "PATCH"]
PHASES = ["connect_error", "connect_timeout", "read_timeout", "read_error", "status_503"]
BODIES = ["none", "bytes", "generator", "file"]
PAYLOAD = b"payload-0123456789"


def make_body(kind: str, tmp_path: Any) -> Any:
    if kind == "none":
        return None
    if kind == "bytes":
        return PAYLOAD
    if kind == "generator":
        return (PAYLOAD[i : i + 4] for i in range(0, len(PAYLOAD), 4))
    path = tmp_path / "body.bin"
    path.write_bytes(PAYLOAD)
    return path.open("rb")


class TestIdempotencyTable:
    @pytest.mark.parametrize("body", BODIES)
    @pytest.mark.parametrize("keyed", [False, True], ids=["no-key", "idempotency-key"])
    @pytest.mark.parametrize("phase", PHASES)
    @pytest.mark.parametrize("method", METHODS)
    def test_table(self, method, phase, keyed, body, tmp_path):
        """
        A failure is retried before the send for any method, after it only for idempotent or keyed
        requests with a replayable body.
        """
        failure = 503 if phase == "status_503" else FAILURES[phase]()
        config = retry_config({"idempotency_header": "Idempotency-Key"})
        session, adapter, _clock = session_with([failure, 200], config)
        headers = {"Idempotency-Key": "k-1"} if keyed else {}
        data = make_body(body, tmp_path)
        try:
            if phase in BEFORE_SEND:
                expected = True
            else:
                idempotent = method in {"GET", "PUT", "DELETE"} or keyed
                expected = idempotent and body in ("none", "bytes")
            try:
                resp = session.request(method, URL, data=data, headers=headers)
            except requests.RequestException as exc:
                assert exc is failure
                assert not expected
                outcome = "raised"
            else:
                outcome = resp.status_code
                assert resp.attempts == (2 if expected else 1)
            assert len(adapter.requests) == (2 if expected else 1)
            if expected:
                assert outcome == 200
                # The attempt that reached the peer sent the whole body.
                assert adapter.bodies[-1] == (None if body == "none" else PAYLOAD)
        finally:
            if hasattr(data, "close"):
                data.close()

    def test_custom_methods_replace_the_default_list(self):
        """A retry.methods list including POST makes a POST 503 retryable."""
        session, _adapter, _ = session_with([503, 200], retry_config({"methods": ["POST"]}))
        assert session.post(URL, data=b"x").attempts == 2

    def test_failure_kind_not_in_on_is_not_retried(self):
        """A read timeout is not retried when retry.on leaves read_timeout out."""
        session, adapter, _ = session_with(
            [read_timeout(), 200], retry_config({"on": ["connect_error"]})
        )
        with pytest.raises(requests.ReadTimeout):
            session.get(URL)
        assert len(adapter.requests) == 1

    def test_status_not_in_on_status_is_not_retried(self):
        """A 500 is returned at once when on_status does not list it."""
        session, _adapter, _ = session_with([500, 200], retry_config())
        assert session.get(URL).attempts == 1


class TestNeverRetried:
    @pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 410, 422])
    def test_4xx(self, status):
        """A 4xx other than 408 and 429 is returned after one attempt."""
        session, adapter, _ = session_with([status, 200], retry_config())
        assert (session.get(URL).status_code, len(adapter.requests)) == (status, 1)

    @pytest.mark.parametrize("status", [408, 429])
    def test_408_and_429_are_retried(self, status):
        """408 and 429 can be fixed by trying again, so a GET is retried after them."""
        session, _adapter, _ = session_with([status, 200], retry_config({"on_status": [408, 429]}))
        assert session.get(URL).attempts == 2

    def test_tls_certificate_error(self):
        """A certificate error is a ConnectionError, yet it is raised after one attempt."""
        err = requests.exceptions.SSLError(
            MaxRetryError(None, URL, Exception("CERTIFICATE_VERIFY_FAILED"))
        )  # type: ignore[arg-type]
        session, adapter, _ = session_with([err, 200], retry_config())
        with pytest.raises(requests.exceptions.SSLError):
            session.get(URL)
        assert len(adapter.requests) == 1

    def test_invalid_url_from_the_transport(self):
        """An InvalidURL raised by the transport is not retried."""
        session, adapter, _ = session_with(
            [requests.exceptions.InvalidURL("bad port"), 200], retry_config()
        )
        with pytest.raises(requests.exceptions.InvalidURL):
            session.get(URL)
        assert len(adapter.requests) == 1

    def test_invalid_url_before_the_transport(self):
        """A URL that cannot be prepared fails without any attempt."""
        session, adapter, _ = session_with([200], retry_config())
        with pytest.raises(requests.exceptions.InvalidURL):
            session.get("http://")
        assert adapter.requests == []

    def test_too_many_redirects(self):
        """
        A redirect loop raises TooManyRedirects after one attempt's hops, never a second round.
        """
        session, adapter, _ = session_with([(302, {"Location": URL})], retry_config())
        session.max_redirects = 3
        with pytest.raises(requests.TooManyRedirects):
            session.get(URL)
        assert len(adapter.requests) == 4  # one attempt: the request and 3 hops

    def test_deadline_exceeded_even_when_retry_if_says_yes(self):
        """DeadlineExceeded ends the call at once, even with a retry_if that retries everything."""
        config = retry_config({"attempts": 5}, timeout={"total": 1.0})
        session, adapter, clock = session_with(
            [read_timeout()], config, cost=1.5, retry_if=lambda r, o: True
        )
        with pytest.raises(DeadlineExceeded) as info:
            session.get(URL)
        assert isinstance(info.value.__cause__, requests.ReadTimeout)
        assert (len(adapter.requests), clock.sleeps) == (1, [])

    def test_circuit_open_even_when_retry_if_says_yes(self):
        """
        An open breaker stops the remaining retries at once, even with a retry_if that retries
        everything.
        """
        config = retry_config(
            {"attempts": 5}, breaker={"failure_threshold": 2, "reset_timeout": 60}
        )
        session, adapter, clock = session_with(
            [connect_error()], config, retry_if=lambda r, o: True
        )
        with pytest.raises(requests.ConnectionError) as info:
            session.get(URL)
        # Two attempts open the breaker; the call stops there, with the last
        # attempt's own error, and sleeps no backoff toward a refused third.
        assert not isinstance(info.value, CircuitOpenError)
        assert (len(adapter.requests), len(clock.sleeps)) == (2, 1)

    def test_keyboard_interrupt_even_when_retry_if_says_yes(self):
        """An interrupt is never retried, whatever retry_if says."""
        session, adapter, clock = session_with(
            [KeyboardInterrupt(), 200], retry_config(), retry_if=lambda r, o: True
        )
        with pytest.raises(KeyboardInterrupt):
            session.get(URL)
        assert (len(adapter.requests), clock.sleeps) == (1, [])


class TestOnStatusValidation:
    @pytest.mark.parametrize("code", [400, 401, 403, 404, 409, 422, 425, 499])
    def test_other_4xx_is_a_config_error(self, code):
        """A 4xx other than 408/429 in on_status is a ConfigError naming the entry and the value."""
        with pytest.raises(
            ConfigError, match=rf"^on_status\[1\]: must not be a 4xx .* got {code}$"
        ):
            RetryPolicy(on_status=[503, code])  # type: ignore[arg-type]

    def test_key_path_from_config(self):
        """From a config, the error names the full key path."""
        with pytest.raises(ConfigError) as info:
            resilient_client.ResilientSession({"defaults": {"retry": {"on_status": [502, 404]}}})
        assert str(info.value).startswith("defaults.retry.on_status[1]: must not be a 4xx status")

    @pytest.mark.parametrize("codes", [[408], [429], [500, 502, 503, 504], [599], []])
    def test_allowed_statuses(self, codes):
        """408, 429 and any 5xx are accepted."""
        assert RetryPolicy(on_status=codes).on_status == frozenset(codes)  # type: ignore[arg-type]


# -- the outcome the caller gets ---------------------------------------------------


class TestLastOutcome:
    def test_last_response_with_attempts(self):
        """
        When retries run out the caller gets the last attempt's own response, with attempts set.
        """
        session, adapter, _ = session_with(
            [(503, {"X-N": "1"}), (503, {"X-N": "2"}), (503, {"X-N": "3"})], retry_config()
        )
        resp = session.get(URL)
        assert (resp.headers["X-N"], resp.attempts, resp.is_fallback) == ("3", 3, False)
        assert resp is adapter.responses[-1]

    def test_last_exception_is_the_attempts_own(self):
        """
        When retries run out the caller gets the last attempt's exception object, its cause chain
        intact.
        """
        root = ConnectionRefusedError(111, "refused")
        errors = [connect_error(), connect_error(), connect_error()]
        for e in errors:
            e.__cause__ = root
        session, _adapter, _ = session_with(errors, retry_config())
        with pytest.raises(requests.ConnectionError) as info:
            session.get(URL)
        assert info.value is errors[2]
        assert info.value.__cause__ is root
        assert isinstance(info.value.args[0], MaxRetryError)

    def test_no_retry_means_one_attempt(self):
        """A first-try success carries attempts == 1."""
        session, _, _ = session_with([200], retry_config())
        assert session.get(URL).attempts == 1

    def test_retry_null_sends_once(self):
        """retry: null makes exactly one attempt, even on a retryable status."""
        session, adapter, _ = session_with(
            [503, 200], {"defaults": {"retry": None, "breaker": None}}
        )
        assert (session.get(URL).attempts, len(adapter.requests)) == (1, 1)

    def test_events_say_why_it_stopped(self):
        """
        GaveUp names the reason (attempts) and the outcome; each retry is announced with its delay.
        """
        events: list[Any] = []
        session, _, _ = session_with([503], retry_config(), listeners=[events.append])
        session.get(URL)
        scheduled = [
            (e.attempt, e.delay, e.reason) for e in events if isinstance(e, RetryScheduled)
        ]
        assert scheduled == [(1, 0.1, "status 503"), (2, 0.2, "status 503")]
        assert [(e.reason, e.outcome, e.attempts) for e in events if isinstance(e, GaveUp)] == [
            ("attempts", "status 503", 3)
        ]


class TestDiscard:
    def test_retried_responses_release_their_connection(self):
        """Each discarded response is closed, which hands its connection back to the pool."""
        bodies: list[_TrackedBody] = []
        session, adapter, _ = session_with([503, 503, 200], retry_config())
        original = adapter.send

        def send(request, **kw):
            resp = original(request, **kw)
            resp.raw = _TrackedBody(b"")
            bodies.append(resp.raw)
            return resp

        adapter.send = send  # type: ignore[method-assign]
        resp = session.get(URL)
        assert [b.released for b in bodies] == [1, 1, 0]
        assert resp.status_code == 200


# -- attempt header and retry_if --------------------------------------------------


class TestAttemptHeader:
    def test_numbers_each_attempt(self):
        """The configured header carries 1, 2, 3 on the successive attempts."""
        session, adapter, _ = session_with(
            [503, 503, 200], retry_config({"attempt_header": "X-Attempt"})
        )
        session.get(URL)
        assert [r.headers["X-Attempt"] for r in adapter.requests] == ["1", "2", "3"]

    def test_off_by_default(self):
        """No attempt header is sent unless configured."""
        session, adapter, _ = session_with([503, 200], retry_config())
        session.get(URL)
        assert all("X-Attempt" not in r.headers for r in adapter.requests)
        assert RetryPolicy().attempt_header is None

    def test_callers_request_is_not_modified(self):
        """The header goes on a copy: the caller's prepared request is left as it was."""
        session, _adapter, _ = session_with(
            [503, 200], retry_config({"attempt_header": "X-Attempt"})
        )
        prepared = session.prepare_request(requests.Request("GET", URL))
        session.send(prepared)
        assert "X-Attempt" not in prepared.headers


class TestRetryIf:
    def test_can_retry_what_the_rules_would_not(self):
        """A retry_if returning True retries a POST 503 (a deliberate choice of the caller)."""
        seen: list[Any] = []

        def predicate(request, outcome):
            seen.append((request.method, getattr(outcome, "status_code", outcome)))
            return True if getattr(outcome, "status_code", 0) == 503 else None

        session, _adapter, _ = session_with([503, 200], retry_config(), retry_if=predicate)
        assert session.post(URL, data=b"x").attempts == 2
        assert seen == [("POST", 503), ("POST", 200)]

    def test_can_refuse_what_the_rules_would_retry(self):
        """A retry_if returning False stops a GET 503 from being retried."""
        session, _adapter, _ = session_with([503, 200], retry_config(), retry_if=lambda r, o: False)
        assert session.get(URL).attempts == 1

    def test_none_defers_to_the_rules(self):
        """A retry_if returning None leaves the built-in decision."""
        session, _adapter, _ = session_with(
            [503, 503, 200], retry_config(), retry_if=lambda r, o: None
        )
        assert session.get(URL).attempts == 3

    def test_sees_exceptions(self):
        """retry_if receives the attempt's exception, and may retry a read timeout on POST."""
        err = read_timeout()
        session, _adapter, _ = session_with(
            [err, 200],
            retry_config(),
            retry_if=lambda r, o: isinstance(o, requests.ReadTimeout) or None,
        )
        assert session.post(URL, data=b"x").attempts == 2

    def test_never_resends_an_unreplayable_body(self):
        """Even a retry_if that says yes cannot make a generator body be sent twice."""
        session, adapter, _ = session_with(
            [read_error(), 200], retry_config(), retry_if=lambda r, o: True
        )
        with pytest.raises(requests.ConnectionError):
            session.put(URL, data=(c for c in [b"a", b"b"]))
        assert len(adapter.requests) == 1

    def test_retries_stay_bounded_by_attempts(self):
        """A retry_if that always says yes still stops at retry.attempts."""
        session, _adapter, _ = session_with(
            [200], retry_config({"attempts": 4}), retry_if=lambda r, o: True
        )
        assert session.get(URL).attempts == 4


# -- stop order: what charges the budget ------------------------------------------


def budget_config(reserve: int, **retry: Any) -> dict[str, Any]:
    """A budget of exactly *reserve* retries (no ratio) over a long window."""
    return retry_config(
        {"attempts": 3, **retry},
        budget={"ratio": 0.0, "min_per_second": reserve / 100, "window": 100.0},
        timeout={"total": 60.0},
    )


class TestBudgetCharge:
    def test_only_retries_that_happen_are_charged(self):
        """
        A call whose attempts run out is charged for its 2 retries, not 3: the budget is asked last.
        """
        session, _adapter, _ = session_with([503], budget_config(3))
        assert session.get(URL).attempts == 3
        assert session.get(URL).attempts == 2  # one retry was left
        assert session.get(URL).attempts == 1

    def test_refused_retry_after_is_not_charged(self):
        """A refused Retry-After stops before the budget is asked."""
        session, _adapter, _ = session_with(
            [(503, {"Retry-After": "soon"}), 503, 200], budget_config(1)
        )
        assert session.get(URL).attempts == 1
        assert session.get(URL).attempts == 2  # the one retry is still there

    def test_deadline_stop_is_not_charged(self):
        """A stop because the sleep would pass the deadline is not charged."""
        session, _adapter, _ = session_with(
            [(503, {"Retry-After": "59"}), 503, 200], budget_config(1)
        )
        assert session.get(URL).attempts == 1
        assert session.get(URL).attempts == 2

    def test_not_retryable_is_not_charged(self):
        """An outcome that is not retryable costs nothing."""
        session, _adapter, _ = session_with([404, 404, 503, 200], budget_config(1))
        session.get(URL)
        session.get(URL)
        assert session.get(URL).attempts == 2

    def test_spent_budget_returns_the_last_outcome(self):
        """With the budget spent, the call returns its response and says why."""
        events: list[Any] = []
        session, _adapter, _ = session_with([503], budget_config(0), listeners=[events.append])
        resp = session.get(URL)
        assert (resp.status_code, resp.attempts) == (503, 1)
        assert [e.reason for e in events if isinstance(e, GaveUp)] == ["budget"]
        assert any(e.kind == "budget_exhausted" for e in events)


class TestOneRetryLayer:
    @pytest.mark.parametrize("url", ["http://a.test/", "https://a.test/"])
    def test_adapter_does_not_retry(self, url):
        """The session's own adapters have max_retries 0, so attempts never multiply."""
        session = resilient_client.ResilientSession()
        retries = session.get_adapter(url).max_retries
        assert (retries.total, retries.read) == (0, False)

    def test_one_adapter_send_per_attempt(self):
        """Each attempt reaches the transport exactly once."""
        session, adapter, _ = session_with([connect_error()], retry_config({"attempts": 4}))
        with pytest.raises(requests.ConnectionError):
            session.get(URL)
        assert len(adapter.requests) == 4


def test_scripted_adapter_is_a_transport():
    """The helper transport is an adapter (so the layers above it are the real ones)."""
    assert isinstance(ScriptedAdapter([200]), requests.adapters.BaseAdapter)


class TestBreakerStopsRetries:
    def test_no_backoff_is_slept_once_the_breaker_opened(self) -> None:
        """When an attempt opens the breaker, the call stops at once instead of sleeping toward a refusal."""
        import responses

        from resilient_client import ResilientSession
        from resilient_client.testing import FakeClock

        clock = FakeClock()
        config = {"defaults": {"breaker": {"failure_threshold": 1}, "retry": {"attempts": 3}}}
        with responses.RequestsMock() as mock:
            mock.add(responses.GET, "http://peer.internal/x", status=503)
            resp = ResilientSession(config, clock=clock).get("http://peer.internal/x")
        assert resp.status_code == 503 and resp.attempts == 1
        assert clock.sleeps == []

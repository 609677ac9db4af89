"""
The retry verdict and the attempt outcome table (`resilient_client._verdict`),
on plain values: no HTTP client, no socket.
"""

from __future__ import annotations

import itertools

import pytest

from resilient_client import RetryPolicy
from resilient_client._verdict import (
    BEFORE_SEND,
    OUTCOMES,
    REFUSALS,
    AttemptOutcome,
    of_status,
    retry_verdict,
)

POLICY = RetryPolicy()  # on_status 429/502/503/504; every transport kind in `on`


def error(kind: str, *, reached_peer: bool | None = None) -> AttemptOutcome:
    reached = kind not in BEFORE_SEND if reached_peer is None else reached_peer
    return AttemptOutcome(kind, None, reached, kind not in REFUSALS and kind != "error")


class TestOutcomes:
    def test_a_status_in_failure_status_is_a_failure_that_reached_the_peer(self) -> None:
        """503 with the default failure_status is kind `status`, a failure, and reached the peer."""
        assert of_status(503, frozenset({500, 503})) == AttemptOutcome("status", 503, True, True)

    def test_any_other_status_is_ok(self) -> None:
        """A 404 is the peer's answer, not its failure."""
        assert of_status(404, frozenset({500, 503})) == AttemptOutcome("ok", 404, True, False)

    def test_refusals_want_the_fallback_but_are_no_failure(self) -> None:
        """Our own refusals are not the peer's failure, yet a fallback answers them."""
        for kind in REFUSALS:
            outcome = AttemptOutcome(kind, None, False, False)
            assert outcome.refused and outcome.wants_fallback and not outcome.failure

    def test_every_kind_is_listed(self) -> None:
        """OUTCOMES, a metric label set, names every kind the table uses."""
        others = {"ok", "status", "read_timeout", "read_error", "abandoned", "error"}
        assert set(BEFORE_SEND) | set(REFUSALS) | others == set(OUTCOMES)


class TestRetryVerdict:
    @pytest.mark.parametrize("kind", sorted(BEFORE_SEND))
    @pytest.mark.parametrize(("idempotent", "replayable"), list(itertools.product([True, False], repeat=2)))
    def test_a_failure_before_send_is_retried_whatever_the_method(self, kind, idempotent, replayable):
        """Nothing reached the peer: any request may be sent again."""
        assert retry_verdict(POLICY, error(kind), idempotent=idempotent, replayable=replayable)

    @pytest.mark.parametrize("kind", sorted(BEFORE_SEND))
    def test_a_failure_after_an_answered_hop_is_not_before_send(self, kind):
        """A refused redirect target after the first hop was answered: a write is not resent."""
        outcome = error(kind, reached_peer=True)
        assert not retry_verdict(POLICY, outcome, idempotent=False, replayable=True)
        assert retry_verdict(POLICY, outcome, idempotent=True, replayable=True)

    @pytest.mark.parametrize("kind", ["read_timeout", "read_error"])
    def test_a_failure_after_send_needs_an_idempotent_replayable_request(self, kind):
        """After send, only an idempotent request with a replayable body is retried."""
        verdicts = {(i, r): retry_verdict(POLICY, error(kind), idempotent=i, replayable=r)
                    for i, r in itertools.product([True, False], repeat=2)}
        assert [pair for pair, verdict in verdicts.items() if verdict] == [(True, True)]

    def test_a_kind_left_out_of_on_is_not_retried(self) -> None:
        """`retry.on` narrows the kinds retried."""
        narrow = RetryPolicy(on=frozenset({"connect_error"}))
        assert not retry_verdict(narrow, error("read_timeout"), idempotent=True, replayable=True)

    @pytest.mark.parametrize("status", [429, 502, 503, 504, 500, 404, 200])
    def test_a_status_is_retried_only_when_in_on_status(self, status):
        """A response is retried when its status is in on_status and the request is safe to repeat."""
        outcome = of_status(status, frozenset({500, 502, 503, 504}))
        retried = retry_verdict(POLICY, outcome, idempotent=True, replayable=True)
        assert retried is (status in POLICY.on_status)
        assert not retry_verdict(POLICY, outcome, idempotent=False, replayable=True)

    @pytest.mark.parametrize("user", [True, False, None])
    @pytest.mark.parametrize("kind", sorted(REFUSALS))
    def test_refusals_are_never_retried_whatever_the_user_says(self, kind, user):
        """An open breaker, a passed deadline or a full bulkhead ends the call."""
        outcome = AttemptOutcome(kind, None, False, False)
        assert not retry_verdict(POLICY, outcome, idempotent=True, replayable=True, user=user)

    def test_the_user_cannot_resend_a_body_that_cannot_be_replayed(self) -> None:
        """retry_if=True still never resends a consumed generator after it was sent."""
        assert not retry_verdict(POLICY, error("read_timeout"), idempotent=True, replayable=False, user=True)
        assert retry_verdict(POLICY, error("connect_error"), idempotent=False, replayable=False, user=True)
        status = of_status(503, frozenset())
        assert not retry_verdict(POLICY, status, idempotent=True, replayable=False, user=True)

    def test_the_user_may_refuse_what_the_rules_would_retry(self) -> None:
        """retry_if=False wins over the built-in rules."""
        assert not retry_verdict(POLICY, error("connect_error"), idempotent=True, replayable=True, user=False)


class TestKeyedRequests:
    def test_409_is_retried_for_a_keyed_request_only(self) -> None:
        """The key's first request is still running: retry, whatever on_status says."""
        outcome = of_status(409, frozenset())
        assert retry_verdict(POLICY, outcome, idempotent=True, replayable=True, keyed=True)
        assert not retry_verdict(POLICY, outcome, idempotent=True, replayable=True, keyed=False)

    def test_422_is_never_retried_for_a_keyed_request(self) -> None:
        """The key was reused with another payload: retrying cannot help."""
        outcome = of_status(422, frozenset())
        assert not retry_verdict(POLICY, outcome, idempotent=True, replayable=True, keyed=True)

    def test_a_keyed_409_still_needs_a_replayable_body(self) -> None:
        """A consumed generator body is not resent, key or not."""
        outcome = of_status(409, frozenset())
        assert not retry_verdict(POLICY, outcome, idempotent=True, replayable=False, keyed=True)

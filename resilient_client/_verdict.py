"""
What one attempt came to, and whether it may be tried again.

Each attempt is classified once, by the front that made it (the requests
front: `resilient_client._outcome.classify_error` and `of_status`), into a
frozen `AttemptOutcome`. Everything downstream reads that value and nothing
re-derives it: the retry verdict, the breaker, the fallback, events, metrics.
This module knows nothing of HTTP clients.

The table (also in docs/retries.md):

=================  ============  ==========  ===========================================
kind               reached peer  failure     what produced it
=================  ============  ==========  ===========================================
ok                 yes           no          a response whose status is not in failure_status
status             yes           yes         a response whose status is in failure_status
connect_error      no [1]_       yes         refused, DNS, unreachable, proxy refused
connect_timeout    no [1]_       yes         the connection was not made in time
read_timeout       yes           yes         no byte within the read timeout
read_error         yes           yes         the connection broke after the request was sent
deadline           maybe         no [2]_     the call's deadline cut the attempt short
circuit_open       no            no          our breaker refused the call
bulkhead_full      no            no          our bulkhead (or adaptive concurrency limit) refused the call
throttled          no            no          our throttle (or a Retry-After hold) refused the call
error              maybe         no          anything else (TLS, invalid URL, a hook raised)
=================  ============  ==========  ===========================================

.. [1] unless an earlier redirect hop of the same attempt was answered: then
   the peer has the request, and the outcome reached it.
.. [2] an attempt cut short by the call's deadline (its own ``total`` or one
   inherited from the caller) before its own connect/read timeout passed is
   not the peer's failure: one tight caller must not open the breaker for
   everyone.

A response that a proxy made itself (``proxy_errors``) has ``proxy=True``
and is always a failure: a 503 is ``connect_error`` (never reached the
peer, retried as a connect error whatever the method), a 502 or 504 is
``status`` (forwarded: retried only as its method allows).

Why ``reached_peer`` is not derived from the kind: a kind says where one
connection failed, not whether the call already acted. A POST answered with
``303`` whose redirect target refuses the connection fails with a
``connect_error``, yet its first hop reached the peer and did the work:
resending it would duplicate a write.
"""

from __future__ import annotations

from dataclasses import dataclass

from ._policy import RetryPolicy

__all__ = [
    "BEFORE_SEND",
    "OUTCOMES",
    "REFUSALS",
    "AttemptOutcome",
    "of_proxy_status",
    "of_status",
    "retry_verdict",
]

#: Failure kinds that happen before any byte reached the peer: safe to retry
#: whatever the method, unless an earlier hop of the same attempt was answered.
BEFORE_SEND = frozenset({"connect_error", "connect_timeout"})

#: Kinds that are the library's own refusals: never retried, never the peer's
#: failure, and answered by the fallback when there is one.
REFUSALS = frozenset({"deadline", "circuit_open", "bulkhead_full", "throttled"})

#: Every kind, a closed set (safe as a metric label).
OUTCOMES = (
    "ok",
    "status",
    "connect_error",
    "connect_timeout",
    "read_timeout",
    "read_error",
    "deadline",
    "circuit_open",
    "bulkhead_full",
    "throttled",
    "abandoned",
    "error",
)


@dataclass(frozen=True, slots=True)
class AttemptOutcome:
    """
    One attempt's outcome, classified once.

    Attributes:
        kind: one of `OUTCOMES`.
        status: the response's status, or None when the attempt raised.
        reached_peer: the peer may have acted on the request.
        failure: it counts against the peer (breaker, fallback, health).
        proxy: a proxy in front of the peer made the response itself.
    """

    kind: str
    status: int | None
    reached_peer: bool
    failure: bool
    proxy: bool = False

    @property
    def refused(self) -> bool:
        """The library itself ended the call (deadline, open breaker, full bulkhead, throttle)."""
        return self.kind in REFUSALS

    @property
    def wants_fallback(self) -> bool:
        """A fallback applies: the peer failed, or we refused the call."""
        return self.failure or self.kind in REFUSALS


def of_status(status: int, failure_status: frozenset[int]) -> AttemptOutcome:
    """The outcome of an attempt that got a response with *status*."""
    failed = status in failure_status
    return AttemptOutcome("status" if failed else "ok", status, True, failed)


#: A 503 that a proxy made before forwarding the request: a connect error.
PROXY_503 = AttemptOutcome("connect_error", 503, False, True, True)


def of_proxy_status(status: int) -> AttemptOutcome:
    """The outcome of a response a proxy made itself (see the module docstring)."""
    if status == 503:
        return PROXY_503
    return AttemptOutcome("status", status, True, True, True)


def retry_verdict(
    policy: RetryPolicy,
    outcome: AttemptOutcome,
    *,
    idempotent: bool,
    replayable: bool,
    user: bool | None = None,
    keyed: bool = False,
) -> bool:
    """
    Whether an attempt's *outcome* may be retried (attempts, budget, deadline
    and the breaker are the stop strategies' business, not this one's).

    Args:
        policy: the endpoint's retry policy.
        outcome: what the attempt came to.
        idempotent: the method is in ``retry.methods`` or the request
            carries the idempotency header.
        replayable: the body can be sent again.
        user: a ``retry_if`` predicate's answer (None: no opinion). It can
            never resend a body that cannot be replayed, nor retry the
            library's own refusals.
        keyed: the request carries an idempotency key. Then, as the IETF
            idempotency-key draft asks, 409 (the first request with this key
            is still being processed) is retried whatever ``on_status`` says,
            and 422 (the key was reused with another payload) never is.
    """
    if outcome.refused:
        return False
    if outcome.status is not None and outcome.reached_peer:
        if user is not None:
            return user and replayable
        if keyed and outcome.status in (409, 422):
            return outcome.status == 409 and replayable
        return outcome.status in policy.on_status and idempotent and replayable
    # A proxy's own 503 never reached the peer, but the proxy read the body:
    # only a body that can be replayed may be sent again.
    before_send = not outcome.reached_peer and (replayable or not outcome.proxy)
    if user is not None:
        return user and (before_send or replayable)
    if outcome.kind not in policy.on:
        return False
    return before_send or (idempotent and replayable)

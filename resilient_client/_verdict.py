"""
The retry verdict: may this attempt's outcome be tried again?

One pure function answers it, for every front and every path: tenacity's
retry strategy (`resilient_client._retry.RetrySafely`) asks it after each
attempt, and the session's first-attempt shortcut asks it before deciding
whether tenacity need be entered at all. Neither re-decides, so the two
cannot drift apart (urllib3's ``Retry.is_retry`` is the model).

It knows nothing of HTTP clients: the front classifies what an attempt
produced into a *kind* (``connect_error``, ``read_timeout``, ...; see
`BEFORE_SEND`) or a status, and says what it knows of the request.

Why ``reached_peer`` exists beside the kind: a failure *kind* says where one
connection failed, not whether the call already acted. A POST answered with
``303`` whose redirect target refuses the connection fails with a
``connect_error``, yet its first hop reached the peer and did the work:
resending it would duplicate a write. Only a failure before the first byte
of the first hop makes a request safe to resend whatever its method.
"""

from __future__ import annotations

from ._policy import RetryPolicy

__all__ = ["BEFORE_SEND", "retry_verdict"]

#: Failure kinds that happen before any byte reached the peer: safe to retry
#: whatever the method, unless an earlier hop of the same attempt already did.
BEFORE_SEND = frozenset({"connect_error", "connect_timeout"})


def retry_verdict(
    policy: RetryPolicy,
    *,
    kind: str | None,
    status: int | None,
    idempotent: bool,
    replayable: bool,
    reached_peer: bool,
    user: bool | None = None,
) -> bool:
    """
    Whether an attempt's outcome may be retried (attempts, budget, deadline
    and the breaker are the stop strategies' business, not this one's).

    Args:
        policy: the endpoint's retry policy.
        kind: for a raised error, its failure kind, or None when it is no
            transport failure a retry could fix; ignored for a response.
        status: the response's status, or None when the attempt raised.
        idempotent: the method is in ``retry.methods`` or the request
            carries the idempotency header.
        replayable: the body can be sent again.
        reached_peer: an earlier hop of this attempt (a redirect) got an
            answer from the peer.
        user: a ``retry_if`` predicate's answer (None: no opinion). It can
            never resend a body that cannot be replayed.
    """
    if status is not None:
        if user is not None:
            return user and replayable
        return status in policy.on_status and idempotent and replayable
    before_send = kind in BEFORE_SEND and not reached_peer
    if user is not None:
        return user and (before_send or replayable)
    if kind is None or kind not in policy.on:
        return False
    return before_send or (idempotent and replayable)

"""
The requests front's attempt classifier: what requests and urllib3 raised,
turned into the core's `AttemptOutcome` (see `resilient_client._verdict` for
the table). One place maps exceptions, so the retry layer, the breaker, the
fallback and the events agree.
"""

from __future__ import annotations

from collections.abc import Callable

import requests
from urllib3.exceptions import (
    ConnectTimeoutError,
    MaxRetryError,
    NameResolutionError,
    NewConnectionError,
    ProtocolError,
    ProxyError,
    ReadTimeoutError,
)

from ._verdict import BEFORE_SEND, AttemptOutcome, of_status
from .exceptions import BulkheadFull, CircuitOpenError, DeadlineExceeded, ResilienceError, Throttled

__all__ = [
    "BEFORE_SEND",
    "Outcome",
    "RetryPredicate",
    "classify_error",
    "failure_kind",
    "is_peer_failure",
    "is_replayable",
    "of_status",
    "outcome_of",
]

#: What one attempt produced.
Outcome = requests.Response | BaseException

#: A user's override of the retry decision: ``(request, outcome)`` -> True
#: (retry), False (do not), or None (let the built-in rules decide).
RetryPredicate = Callable[[requests.PreparedRequest, Outcome], bool | None]

# What counts against the peer even when no retry could fix it (TLS errors).
_PEER_ERRORS = (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
_TIMEOUT_KINDS = frozenset({"connect_timeout", "read_timeout", "read_error"})


def failure_kind(exc: BaseException) -> str | None:
    """
    Return the ``retry.on`` kind of *exc*, or None when it is not a transport
    failure that a retry could fix (TLS errors, bad URLs, redirects, our own
    errors).
    """
    if isinstance(exc, (ResilienceError, requests.exceptions.SSLError)):
        return None
    if isinstance(exc, requests.ConnectTimeout):
        return "connect_timeout"
    if isinstance(exc, requests.ReadTimeout):
        return "read_timeout"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "read_error"
    if isinstance(exc, requests.ConnectionError):
        reason: object = exc.args[0] if exc.args else None
        if isinstance(reason, MaxRetryError):
            reason = reason.reason
        if isinstance(reason, ReadTimeoutError):
            return "read_timeout"  # requests reports a body read timeout as ConnectionError
        if isinstance(reason, ConnectTimeoutError) and not isinstance(reason, NewConnectionError):
            return "connect_timeout"
        if isinstance(reason, (NewConnectionError, NameResolutionError, ProxyError)):
            return "connect_error"
        if isinstance(reason, ProtocolError):
            return "read_error"
        # An unknown connection error may have happened after the request was
        # sent: treat it as the less safe kind.
        return "read_error"
    return None


def classify_error(
    exc: BaseException, *, reached_peer: bool = False, deadline_passed: bool = False
) -> AttemptOutcome:
    """
    The outcome of an attempt (or a call) that raised *exc*.

    Args:
        reached_peer: an earlier redirect hop of the attempt was answered.
        deadline_passed: the call's deadline had passed when *exc* was
            raised; a timeout then was the deadline's doing (each timeout is
            capped by the time left), not the peer's.
    """
    if isinstance(exc, ResilienceError):
        if isinstance(exc, DeadlineExceeded):
            return AttemptOutcome("deadline", None, reached_peer, False)
        if isinstance(exc, CircuitOpenError):
            return AttemptOutcome("circuit_open", None, False, False)
        if isinstance(exc, BulkheadFull):
            return AttemptOutcome("bulkhead_full", None, False, False)
        if isinstance(exc, Throttled):
            return AttemptOutcome("throttled", None, False, False)
        return AttemptOutcome("error", None, False, False)
    kind = failure_kind(exc)
    if kind is None:
        # Not retryable (TLS, invalid URL, a hook that raised...), and it may
        # have been sent. A TLS failure is still the peer's (a bad certificate).
        return AttemptOutcome("error", None, True, isinstance(exc, _PEER_ERRORS))
    if deadline_passed and kind in _TIMEOUT_KINDS:
        return AttemptOutcome("deadline", None, reached_peer or kind not in BEFORE_SEND, False)
    return AttemptOutcome(kind, None, reached_peer or kind not in BEFORE_SEND, True)


def outcome_of(exc: BaseException) -> str:
    """The `OUTCOMES` value for a call or attempt that raised *exc*."""
    return classify_error(exc).kind


def is_peer_failure(exc: BaseException) -> bool:
    """Whether *exc* counts against the peer (breaker, fallback): transport errors and timeouts."""
    return classify_error(exc).failure


def is_replayable(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again: none, bytes or str (not a generator or a file)."""
    body = request.body
    return body is None or isinstance(body, (bytes, str))

"""
What an attempt's outcome means: a failure of the peer or not, retryable or not.

One place decides, so the retry layer, the breaker and the fallback agree.
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

from ._verdict import BEFORE_SEND
from .exceptions import ResilienceError

__all__ = [
    "BEFORE_SEND",
    "Outcome",
    "RetryPredicate",
    "failure_kind",
    "is_peer_failure",
    "is_replayable",
]

#: What one attempt produced.
Outcome = requests.Response | BaseException

#: A user's override of the retry decision: ``(request, outcome)`` -> True
#: (retry), False (do not), or None (let the built-in rules decide).
RetryPredicate = Callable[[requests.PreparedRequest, Outcome], bool | None]



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


def is_peer_failure(exc: BaseException) -> bool:
    """Whether *exc* counts against the peer (breaker, fallback): transport errors and timeouts."""
    if isinstance(exc, ResilienceError):
        return False
    return isinstance(
        exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)
    )


def is_replayable(request: requests.PreparedRequest) -> bool:
    """Whether the body can be sent again: none, bytes or str (not a generator or a file)."""
    body = request.body
    return body is None or isinstance(body, (bytes, str))

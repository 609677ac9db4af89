"""
The httpx front's exceptions, and its attempt classifier.

The async client raises subclasses of the public exceptions that also derive
from httpx's own classes, so that code written for ``httpx.AsyncClient``
keeps catching what it caught, and code written for resilient_client too::

    resilient_client.ResilienceError
    ├── CircuitOpenError   ← AsyncCircuitOpenError(+ httpx.ConnectError)
    ├── DeadlineExceeded   ← AsyncDeadlineExceeded(+ httpx.TimeoutException)
    ├── BulkheadFull       ← AsyncBulkheadFull(+ httpx.TransportError)
    └── Throttled          ← AsyncThrottled(+ httpx.ConnectError)

They pickle and copy whole, as the sync ones (`ResilienceError.__reduce__`).

This module imports httpx: only the httpx front imports it, so ``import
resilient_client`` never loads httpx. `classify_error` is the httpx side of
`resilient_client._outcome.classify_error`: what httpx raised, turned into
the core's `AttemptOutcome` (the table is in `resilient_client._verdict`).

Why the double inheritance works: requests' exceptions derive from
``OSError`` and httpx's from ``Exception``; C3 puts ``OSError`` before httpx's
classes, whose only state, ``request``, is a property that requests'
``RequestException.__init__`` sets through its setter.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from . import exceptions as _sync
from ._verdict import BEFORE_SEND, AttemptOutcome

__all__ = [
    "AsyncBulkheadFull",
    "AsyncCircuitOpenError",
    "AsyncDeadlineExceeded",
    "AsyncThrottled",
    "classify_error",
]


class AsyncCircuitOpenError(_sync.CircuitOpenError, httpx.ConnectError):  # type: ignore[misc]  # `request`: see the module docstring
    """
    `resilient_client.CircuitOpenError` as the async client raises it: also
    an ``httpx.ConnectError`` (nothing touched the network).

    .. versionadded:: 0.2.0
    """

    def __init__(self, endpoint: str, retry_at: float | None = None, *,
                 retry_in: float | None = None, **kwargs: Any) -> None:
        _sync.CircuitOpenError.__init__(self, endpoint, retry_at, retry_in=retry_in, **kwargs)

    __reduce__ = _sync.CircuitOpenError.__reduce__  # not httpx's (BaseException's)


class AsyncDeadlineExceeded(_sync.DeadlineExceeded, httpx.TimeoutException):  # type: ignore[misc]  # `request`: see the module docstring
    """
    `resilient_client.DeadlineExceeded` as the async client raises it: also
    an ``httpx.TimeoutException``.

    .. versionadded:: 0.2.0
    """

    def __init__(self, endpoint: str, total: float, **kwargs: Any) -> None:
        _sync.DeadlineExceeded.__init__(self, endpoint, total, **kwargs)

    __reduce__ = _sync.DeadlineExceeded.__reduce__


class AsyncBulkheadFull(_sync.BulkheadFull, httpx.TransportError):  # type: ignore[misc]  # `request`: see the module docstring
    """
    `resilient_client.BulkheadFull` as the async client raises it: also an
    ``httpx.TransportError``.

    .. versionadded:: 0.2.0
    """

    def __init__(self, endpoint: str, max_concurrent: int, **kwargs: Any) -> None:
        _sync.BulkheadFull.__init__(self, endpoint, max_concurrent, **kwargs)

    __reduce__ = _sync.BulkheadFull.__reduce__


class AsyncThrottled(_sync.Throttled, httpx.ConnectError):  # type: ignore[misc]  # `request`: see the module docstring
    """
    `resilient_client.Throttled` as the async client raises it: also an
    ``httpx.ConnectError`` (nothing touched the network).

    .. versionadded:: 0.2.0
    """

    def __init__(self, endpoint: str, reason: str = "throttle", retry_in: float | None = None,
                 **kwargs: Any) -> None:
        _sync.Throttled.__init__(self, endpoint, reason, retry_in, **kwargs)

    __reduce__ = _sync.Throttled.__reduce__


def _tls(exc: BaseException) -> bool:
    """httpx raises a TLS failure as ConnectError: look at what caused it."""
    seen = 0
    cause: BaseException | None = exc
    while cause is not None and seen < 8:  # bounded: a cause chain may loop
        if isinstance(cause, ssl.SSLError):
            return True
        cause = cause.__cause__ or cause.__context__
        seen += 1
    return False


def failure_kind(exc: BaseException) -> str | None:
    """The ``retry.on`` kind of an httpx error, or None when no retry could fix it."""
    if isinstance(exc, _sync.ResilienceError):
        return None
    if isinstance(exc, httpx.ConnectTimeout):
        return "connect_timeout"  # nothing was sent
    if isinstance(exc, httpx.ReadTimeout):
        return "read_timeout"
    if isinstance(exc, (httpx.ConnectError, httpx.ProxyError)):
        return None if _tls(exc) else "connect_error"
    if isinstance(exc, (httpx.ReadError, httpx.WriteError, httpx.WriteTimeout,
                        httpx.RemoteProtocolError, httpx.CloseError)):
        return "read_error"  # the request may have reached the peer
    if isinstance(exc, httpx.TransportError) and not isinstance(
            exc, (httpx.UnsupportedProtocol, httpx.LocalProtocolError)):
        return "read_error"  # an unknown transport error: the less safe kind
    return None


def classify_error(
    exc: BaseException, *, deadline_passed: bool = False
) -> AttemptOutcome:
    """The outcome of an attempt (or a call) that raised *exc* (see `_outcome.classify_error`)."""
    if isinstance(exc, _sync.ResilienceError):
        if isinstance(exc, _sync.DeadlineExceeded):
            return AttemptOutcome("deadline", None, False, False)
        if isinstance(exc, _sync.CircuitOpenError):
            return AttemptOutcome("circuit_open", None, False, False)
        if isinstance(exc, _sync.BulkheadFull):
            return AttemptOutcome("bulkhead_full", None, False, False)
        if isinstance(exc, _sync.Throttled):
            return AttemptOutcome("throttled", None, False, False)
        return AttemptOutcome("error", None, False, False)
    if isinstance(exc, httpx.PoolTimeout):
        # Our own pool had no connection for us in time (the caller's
        # ``limits=``): local, as a full bulkhead; never the peer's failure,
        # never retried. Raised as it is, unless the deadline was what ended it.
        return AttemptOutcome("deadline" if deadline_passed else "error", None, False, False)
    kind = failure_kind(exc)
    if kind is None:
        # TLS, invalid URL, a hook that raised: not retryable, maybe sent; a
        # TLS failure is still the peer's (a bad certificate).
        peer = isinstance(exc, httpx.TransportError)
        return AttemptOutcome("error", None, True, peer)
    if deadline_passed and kind not in ("connect_error",):
        return AttemptOutcome("deadline", None, kind not in BEFORE_SEND, False)
    return AttemptOutcome(kind, None, kind not in BEFORE_SEND, True)


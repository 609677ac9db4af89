"""
Exceptions raised by resilient_client.

Every exception fits the requests hierarchy, so existing
``except requests.RequestException`` / ``except requests.Timeout`` /
``except requests.ConnectionError`` blocks keep working::

    ResilienceError(requests.RequestException)
    ├── CircuitOpenError(+ requests.ConnectionError)   .endpoint, .retry_at
    ├── DeadlineExceeded(+ requests.Timeout)           __cause__ = what was running
    └── BulkheadFull                                   .endpoint, .max_concurrent
    ConfigError(ValueError)    bad configuration, names the key path

.. versionadded:: 0.1.0
"""

from __future__ import annotations

from typing import Any

import requests

from ._errors import ConfigError

__all__ = [
    "BulkheadFull",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "ResilienceError",
]


class ResilienceError(requests.RequestException):
    """
    Base class of the errors that resilient_client itself raises.

    .. versionadded:: 0.1.0
    """


class CircuitOpenError(ResilienceError, requests.ConnectionError):
    """
    The endpoint's circuit breaker is open: the call was refused without
    touching the network.

    Attributes:
        endpoint: the endpoint name whose breaker is open.
        retry_at: monotonic time (on the session's clock) at which a trial
            call becomes possible, or ``None`` when the breaker was forced
            open with ``.open()``.

    .. versionadded:: 0.1.0
    """

    def __init__(
        self, endpoint: str, retry_at: float | None = None, **kwargs: Any
    ) -> None:
        self.endpoint = endpoint
        self.retry_at = retry_at
        super().__init__(f"circuit breaker for endpoint {endpoint!r} is open", **kwargs)


class DeadlineExceeded(ResilienceError, requests.Timeout):
    """
    The call's ``total`` deadline passed. ``__cause__`` is the error that was
    raised by what was running when time ran out, if any.

    Attributes:
        endpoint: the endpoint name.
        total: the deadline, in seconds, that applied to the call.

    .. versionadded:: 0.1.0
    """

    def __init__(self, endpoint: str, total: float, **kwargs: Any) -> None:
        self.endpoint = endpoint
        self.total = total
        super().__init__(
            f"call to endpoint {endpoint!r} exceeded its total deadline of {total:g}s",
            **kwargs,
        )


class BulkheadFull(ResilienceError):
    """
    The endpoint already has ``max_concurrent`` calls in flight; this call was
    refused at once.

    .. versionadded:: 0.1.0
    """

    def __init__(self, endpoint: str, max_concurrent: int, **kwargs: Any) -> None:
        self.endpoint = endpoint
        self.max_concurrent = max_concurrent
        super().__init__(
            f"bulkhead for endpoint {endpoint!r} is full "
            f"({max_concurrent} calls in flight)",
            **kwargs,
        )

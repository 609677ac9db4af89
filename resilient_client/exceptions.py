"""
Exceptions raised by resilient_client.

Every exception fits the requests hierarchy, so existing
``except requests.RequestException`` / ``except requests.Timeout`` /
``except requests.ConnectionError`` blocks keep working::

    ResilienceError(requests.RequestException)
    ├── CircuitOpenError(+ requests.ConnectionError)   .endpoint, .retry_in
    ├── DeadlineExceeded(+ requests.Timeout)           __cause__ = what was running
    ├── BulkheadFull                                   .endpoint, .max_concurrent
    └── Throttled(+ requests.ConnectionError)          .endpoint, .reason, .retry_in
    ConfigError(ValueError)    bad configuration, names the key path

.. versionadded:: 0.1.0
"""

from __future__ import annotations

import warnings
from typing import Any

import requests

from ._errors import ConfigError

__all__ = [
    "BulkheadFull",
    "CircuitOpenError",
    "ConfigError",
    "DeadlineExceeded",
    "ResilienceError",
    "Throttled",
]


class ResilienceError(requests.RequestException):
    """
    Base class of the errors that resilient_client itself raises.

    Each one pickles and copies whole (its own arguments, then its state:
    ``request``, ``response``...), as multiprocessing, Celery or
    ``concurrent.futures`` ship it: `_arguments` says what it was made of.

    .. versionadded:: 0.1.0
    """

    def _arguments(self) -> dict[str, Any]:
        """The keyword arguments that make this exception again (its message aside)."""
        return {}

    def __reduce__(self) -> tuple[Any, ...]:
        # BaseException's own reduce calls ``cls(*self.args)``: our messages
        # are made from the arguments, so it nested or failed.
        return _rebuild, (type(self), self._arguments()), dict(self.__dict__)


def _rebuild(cls: type[ResilienceError], arguments: dict[str, Any]) -> ResilienceError:
    """Unpickling: the exception made again from its arguments (its state is set after)."""
    return cls(**arguments)


class CircuitOpenError(ResilienceError, requests.ConnectionError):
    """
    The endpoint's circuit breaker is open: the call was refused without
    touching the network.

    Attributes:
        endpoint: the endpoint name whose breaker is open.
        retry_in: seconds from when it was raised until a trial call may go
            through, or ``None`` when the breaker was forced open with
            ``.open()`` (no trial until ``.close()``).
        trial_in_flight: half-open, another call's trial is in flight;
            ``retry_in`` is then the wait for the next trial if it fails.
        retry_at: deprecated (a reading of the session's monotonic clock,
            meaningless in a log); use ``retry_in``. Removed in 0.3.0.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``retry_in``; ``retry_at`` deprecated.
    .. versionchanged:: 0.2.0 ``trial_in_flight``.
    """

    def __init__(
        self, endpoint: str, retry_at: float | None = None, *, retry_in: float | None = None,
        trial_in_flight: bool = False, **kwargs: Any,
    ) -> None:
        self.endpoint = endpoint
        self._retry_at = retry_at
        self.retry_in = retry_in
        #: Half-open: another call's trial is in flight (``retry_in``: if it fails).
        self.trial_in_flight = trial_in_flight
        if trial_in_flight:
            when = "a trial call is in flight"
            if retry_in is not None:
                when += f"; if it fails, the next trial is {retry_in:.1f} s away"
        elif retry_in is not None:
            when = f"a trial call may go through in {retry_in:.1f} s"
        elif retry_at is None:
            when = "forced open: no trial call until it is closed"
        else:
            when = "a trial call becomes possible later"
        super().__init__(f"circuit breaker for endpoint {endpoint!r} is open ({when})", **kwargs)

    def _arguments(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "retry_at": self._retry_at, "retry_in": self.retry_in,
                "trial_in_flight": self.trial_in_flight}

    @property
    def retry_at(self) -> float | None:
        """Deprecated: a monotonic-clock reading; use ``retry_in``."""
        warnings.warn("CircuitOpenError.retry_at is deprecated (a monotonic-clock reading); "
                      "use retry_in, the seconds until a trial call", DeprecationWarning, stacklevel=2)
        return self._retry_at


class DeadlineExceeded(ResilienceError, requests.Timeout):
    """
    The call's ``total`` deadline passed. ``__cause__`` is the error that was
    raised by what was running when time ran out, if any.

    Attributes:
        endpoint: the endpoint name.
        total: the deadline, in seconds, that applied to the call.
        inherited: the deadline was the caller's (an inbound deadline
            header, `resilient_client.deadline()`, an enclosing call), not
            the endpoint's ``total``.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``inherited``.
    """

    def __init__(self, endpoint: str, total: float, *, inherited: bool = False, **kwargs: Any) -> None:
        self.endpoint = endpoint
        self.total = total
        self.inherited = inherited
        if inherited:
            what = f"the deadline it inherited from its caller ({total:g}s left when it started)"
        else:
            what = f"its total deadline of {total:g}s"
        super().__init__(f"call to endpoint {endpoint!r} exceeded {what}", **kwargs)

    def _arguments(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "total": self.total, "inherited": self.inherited}


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

    def _arguments(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "max_concurrent": self.max_concurrent}


class Throttled(ResilienceError, requests.ConnectionError):
    """
    Overload control refused the call locally, without touching the network:
    adaptive throttling (``reason`` ``"throttle"``) or a ``Retry-After``
    from the peer that has not passed yet (``"retry_after"``; ``retry_in``
    says how long is left).

    .. versionadded:: 0.2.0
    """

    def __init__(self, endpoint: str, reason: str = "throttle", retry_in: float | None = None,
                 **kwargs: Any) -> None:
        self.endpoint = endpoint
        self.reason = reason
        self.retry_in = retry_in
        if reason == "retry_after":
            why = f"the peer asked for no calls for {retry_in or 0.0:.1f} s more (Retry-After)"
        else:
            why = "adaptive throttling: the peer accepts too few of our calls"
        super().__init__(f"call to endpoint {endpoint!r} refused locally: {why}", **kwargs)

    def _arguments(self) -> dict[str, Any]:
        return {"endpoint": self.endpoint, "reason": self.reason, "retry_in": self.retry_in}

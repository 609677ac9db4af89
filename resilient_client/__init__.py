"""
resilient_client: a drop-in `requests.Session` that keeps service-to-service
calls from taking their callers down.

    import resilient_client

    session = resilient_client.ResilientSession("resilience.yaml")
    resp = session.get("https://inventory.internal/items/42")

Everything public is importable from here; modules starting with an
underscore are private. The HAProxy check lives in `resilient_client.tools`
and the test kit in `resilient_client.testing`.

Importing the package loads only the exceptions (and so requests, which
every user of a requests drop-in loads anyway). Every other name is loaded
from its module on first use (PEP 562), so a service pays for the session's
modules when it builds a session, and never for the metrics, health,
propagation or tooling modules it does not use. httpx is imported only
with `AsyncResilientClient` (the httpx front, extra ``httpx``).
"""

from __future__ import annotations

import importlib as _importlib
import typing as _typing
import warnings as _warnings

from ._version import __version__

# Eager: small, and `except resilient_client.CircuitOpenError:` must work in
# code that never touched anything else.
from .exceptions import (
    BulkheadFull,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    ResilienceError,
    Throttled,
)

if _typing.TYPE_CHECKING:
    # What type checkers and the API docs see: every public name, statically.
    # At run time __getattr__ below imports these on first use.
    from ._async_client import AsyncResilientClient
    from ._breaker import BreakerState, BreakerStats, CircuitBreaker
    from ._clock import Clock, Deadline
    from ._config import Config, Endpoint, Secrets
    from ._events import (
        OUTCOMES,
        AttemptFinished,
        BreakerRejected,
        BreakerStateChanged,
        BudgetExhausted,
        BulkheadRejected,
        CallFinished,
        CallThrottled,
        ConcurrencyLimitChanged,
        DeadlinePassed,
        Event,
        FallbackServed,
        GaveUp,
        HedgeSent,
        HedgeSkipped,
        HedgeWon,
        Listener,
        RetryScheduled,
        ThrottleRateChanged,
    )
    from ._fallback import fallback_response
    from ._health import EndpointHealth, Health, health_app
    from ._metrics import otel_listener, prometheus_listener
    from ._overload import OverloadStatus
    from ._policy import (
        BackoffPolicy,
        BreakerMode,
        BreakerPolicy,
        BudgetPolicy,
        BulkheadPolicy,
        CallableFallback,
        ConcurrencyPolicy,
        HedgePolicy,
        Jitter,
        Policy,
        PoolPolicy,
        PropagationPolicy,
        ProxyErrorsPolicy,
        RetryPolicy,
        StaleFallback,
        StaticFallback,
        ThrottlePolicy,
        Timeouts,
    )
    from ._propagation import (
        ASGIDeadlineMiddleware,
        DeadlineMiddleware,
        current_deadline,
        deadline,
    )
    from ._routing import Resolution
    from ._session import ResilientSession
    from ._tracing import otel_trace_listener

if _typing.TYPE_CHECKING:
    # Deprecated here (see _MOVED): still typed for one release, so code that
    # imports them keeps type-checking while the DeprecationWarning says where to go.
    from ._bulkhead import Bulkhead as Bulkhead
    from ._clock import SYSTEM_CLOCK as SYSTEM_CLOCK
    from ._events import log_event as log_event
    from ._retry import parse_retry_after as parse_retry_after
    from .tools import Finding as Finding
    from .tools import check_haproxy as check_haproxy

__all__ = [
    "OUTCOMES",
    "ASGIDeadlineMiddleware",
    "AsyncResilientClient",
    "AttemptFinished",
    "BackoffPolicy",
    "BreakerMode",
    "BreakerPolicy",
    "BreakerRejected",
    "BreakerState",
    "BreakerStateChanged",
    "BreakerStats",
    "BudgetExhausted",
    "BudgetPolicy",
    "BulkheadFull",
    "BulkheadPolicy",
    "BulkheadRejected",
    "CallFinished",
    "CallThrottled",
    "CallableFallback",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "ConcurrencyLimitChanged",
    "ConcurrencyPolicy",
    "Config",
    "ConfigError",
    "Deadline",
    "DeadlineExceeded",
    "DeadlineMiddleware",
    "DeadlinePassed",
    "Endpoint",
    "EndpointHealth",
    "Event",
    "FallbackServed",
    "GaveUp",
    "Health",
    "HedgePolicy",
    "HedgeSent",
    "HedgeSkipped",
    "HedgeWon",
    "Jitter",
    "Listener",
    "OverloadStatus",
    "Policy",
    "PoolPolicy",
    "PropagationPolicy",
    "ProxyErrorsPolicy",
    "ResilienceError",
    "ResilientSession",
    "Resolution",
    "RetryPolicy",
    "RetryScheduled",
    "Secrets",
    "StaleFallback",
    "StaticFallback",
    "ThrottlePolicy",
    "ThrottleRateChanged",
    "Throttled",
    "Timeouts",
    "__version__",
    "current_deadline",
    "deadline",
    "fallback_response",
    "health_app",
    "otel_listener",
    "otel_trace_listener",
    "prometheus_listener",
]

#: Where each lazily loaded public name lives (a module of this package).
_LAZY: dict[str, str] = {
    # The httpx front: imports httpx, so only when asked for (extra `httpx`).
    "AsyncResilientClient": "_async_client",
    **dict.fromkeys(["BreakerState", "BreakerStats", "CircuitBreaker"], "_breaker"),
    "Clock": "_clock",
    **dict.fromkeys(["Config", "Endpoint", "Secrets"], "_config"),
    "Deadline": "_clock",
    **dict.fromkeys([
        "OUTCOMES", "AttemptFinished", "BreakerRejected", "BreakerStateChanged",
        "BudgetExhausted", "BulkheadRejected", "CallFinished", "CallThrottled",
        "ConcurrencyLimitChanged", "DeadlinePassed", "Event",
        "FallbackServed", "GaveUp", "HedgeSent", "HedgeSkipped", "HedgeWon", "Listener",
        "RetryScheduled", "ThrottleRateChanged",
    ], "_events"),
    "fallback_response": "_fallback",
    **dict.fromkeys(["EndpointHealth", "Health", "health_app"], "_health"),
    **dict.fromkeys(["otel_listener", "prometheus_listener"], "_metrics"),
    "OverloadStatus": "_overload",
    "otel_trace_listener": "_tracing",
    **dict.fromkeys([
        "BackoffPolicy", "BreakerMode", "BreakerPolicy", "BudgetPolicy", "BulkheadPolicy",
        "CallableFallback", "ConcurrencyPolicy", "HedgePolicy", "Jitter", "Policy", "PoolPolicy",
        "PropagationPolicy", "ProxyErrorsPolicy", "RetryPolicy", "StaleFallback", "StaticFallback",
        "ThrottlePolicy", "Timeouts",
    ], "_policy"),
    **dict.fromkeys(
        ["ASGIDeadlineMiddleware", "DeadlineMiddleware", "current_deadline", "deadline"],
        "_propagation"),
    "Resolution": "_routing",
    "ResilientSession": "_session",
}

#: Names taken out of __all__ in 0.1.0 that still resolve here, with a
#: DeprecationWarning, until the next release: name -> (module, what to do).
_MOVED: dict[str, tuple[str, str]] = {
    "check_haproxy": ("tools", "import it from resilient_client.tools"),
    "Finding": ("tools", "import it from resilient_client.tools"),
    "Bulkhead": ("_bulkhead", "it is the session's internal slot counter (private "
                 "resilient_client._bulkhead); read bulkhead usage from session.health()"),
    "SYSTEM_CLOCK": ("_clock", "it is the default of every clock= argument: leave clock= out "
                     "(private resilient_client._clock)"),
    "log_event": ("_events", "it is the listener every session already has first (private "
                  "resilient_client._events)"),
    "parse_retry_after": ("_retry", "the session honours Retry-After itself (private "
                          "resilient_client._retry)"),
}


def _lazy_attribute(name: str) -> object:
    """Import *name*'s module on first use (PEP 562); warn for a moved name."""
    module = _LAZY.get(name)
    if module is not None:
        value: object = getattr(_importlib.import_module(f".{module}", __name__), name)
        # Cache it: the next access is a plain attribute, __getattr__ is not called again.
        globals()[name] = value
        return value
    moved = _MOVED.get(name)
    if moved is not None:
        module, advice = moved
        _warnings.warn(
            f"resilient_client.{name} is deprecated and leaves the package root in the next "
            f"release: {advice}.",
            DeprecationWarning,
            stacklevel=3,  # the user's line, past this function and __getattr__
        )
        # Not cached, so every import of the old spelling warns.
        return getattr(_importlib.import_module(f".{module}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _dir() -> list[str]:
    return sorted({*globals(), *__all__})


if not _typing.TYPE_CHECKING:
    # Bound only at run time: were mypy to see a module __getattr__, it would
    # accept any attribute of the package, typos included.
    def __getattr__(name: str) -> object:
        return _lazy_attribute(name)

    __dir__ = _dir

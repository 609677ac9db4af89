"""
resilient_client: a drop-in `requests.Session` that keeps service-to-service
calls from taking their callers down.

    import resilient_client

    session = resilient_client.ResilientSession("resilience.yaml")
    resp = session.get("https://inventory.internal/items/42")

Everything public is importable from here; modules starting with an
underscore are private.
"""

from __future__ import annotations

from ._breaker import BreakerState, BreakerStats, CircuitBreaker
from ._bulkhead import Bulkhead
from ._clock import SYSTEM_CLOCK, Clock
from ._config import Config, Endpoint, Secrets
from ._deadline import Deadline
from ._events import (
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    DeadlinePassed,
    Event,
    FallbackServed,
    GaveUp,
    Listener,
    RetryScheduled,
)
from ._policy import (
    BackoffPolicy,
    BreakerMode,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    CallableFallback,
    Jitter,
    Policy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
    Timeouts,
)
from ._retry import parse_retry_after
from ._routing import Resolution
from ._session import ResilientSession
from ._version import __version__
from .exceptions import (
    BulkheadFull,
    CircuitOpenError,
    ConfigError,
    DeadlineExceeded,
    ResilienceError,
)

__all__ = [
    "SYSTEM_CLOCK",
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
    "Bulkhead",
    "BulkheadFull",
    "BulkheadPolicy",
    "BulkheadRejected",
    "CallFinished",
    "CallableFallback",
    "CircuitBreaker",
    "CircuitOpenError",
    "Clock",
    "Config",
    "ConfigError",
    "Deadline",
    "DeadlineExceeded",
    "DeadlinePassed",
    "Endpoint",
    "Event",
    "FallbackServed",
    "GaveUp",
    "Jitter",
    "Listener",
    "Policy",
    "Resolution",
    "ResilienceError",
    "ResilientSession",
    "RetryPolicy",
    "RetryScheduled",
    "Secrets",
    "StaleFallback",
    "StaticFallback",
    "Timeouts",
    "__version__",
    "parse_retry_after",
]

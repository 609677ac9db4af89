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
    OUTCOMES,
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
    log_event,
)
from ._health import EndpointHealth, Health, health_app
from ._metrics import otel_listener, prometheus_listener
from ._policy import (
    BackoffPolicy,
    BreakerMode,
    BreakerPolicy,
    BudgetPolicy,
    BulkheadPolicy,
    CallableFallback,
    Jitter,
    Policy,
    PropagationPolicy,
    RetryPolicy,
    StaleFallback,
    StaticFallback,
    Timeouts,
)
from ._propagation import (
    ASGIDeadlineMiddleware,
    DeadlineMiddleware,
    current_deadline,
    deadline,
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
from .tools._haproxy import Finding, check_haproxy

__all__ = [
    "OUTCOMES",
    "SYSTEM_CLOCK",
    "ASGIDeadlineMiddleware",
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
    "DeadlineMiddleware",
    "DeadlinePassed",
    "Endpoint",
    "EndpointHealth",
    "Event",
    "FallbackServed",
    "Finding",
    "GaveUp",
    "Health",
    "Jitter",
    "Listener",
    "Policy",
    "PropagationPolicy",
    "ResilienceError",
    "ResilientSession",
    "Resolution",
    "RetryPolicy",
    "RetryScheduled",
    "Secrets",
    "StaleFallback",
    "StaticFallback",
    "Timeouts",
    "__version__",
    "check_haproxy",
    "current_deadline",
    "deadline",
    "health_app",
    "log_event",
    "otel_listener",
    "parse_retry_after",
    "prometheus_listener",
]

"""
Events: frozen records of what the resilience layers did, handed to small
listeners (any callable taking one event).

URLs in events are already redacted. A listener that raises never breaks
the request: the error is logged once per listener and the listener keeps
being called.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

__all__ = [
    "AttemptFinished",
    "BreakerRejected",
    "BreakerStateChanged",
    "BudgetExhausted",
    "BulkheadRejected",
    "CallFinished",
    "DeadlinePassed",
    "Event",
    "EventBus",
    "FallbackServed",
    "GaveUp",
    "Listener",
    "RetryScheduled",
]

logger = logging.getLogger("resilient_client")
# A library configures no output of its own: the application decides.
logger.addHandler(logging.NullHandler())


@dataclass(frozen=True)
class Event:
    """
    Base of every event: the endpoint name it concerns.

    .. versionadded:: 0.1.0
    """

    endpoint: str

    @property
    def kind(self) -> str:
        """The event's name in snake case, e.g. ``retry_scheduled``."""
        return _KINDS[type(self)]

    def as_dict(self) -> dict[str, Any]:
        """The fields, plus ``event`` = `kind`, for structured logs."""
        d = asdict(self)
        d["event"] = self.kind
        return d


@dataclass(frozen=True)
class AttemptFinished(Event):
    """One attempt ended: ``outcome`` is ``ok``, ``status`` (a failure status) or an error kind."""

    method: str
    url: str
    attempt: int
    outcome: str
    status: int | None
    duration: float
    error: str | None = None


@dataclass(frozen=True)
class RetryScheduled(Event):
    """A retry will follow after ``delay`` seconds, because of ``reason``."""

    method: str
    url: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True)
class GaveUp(Event):
    """
    Retries stopped with a failure: ``reason`` is attempts, budget, deadline,
    retry_after_refused, not_retryable, no_retry, or caller_retrying (the
    request being served is itself a retry, so this call made one attempt).
    """

    method: str
    url: str
    attempts: int
    reason: str
    outcome: str


@dataclass(frozen=True)
class BudgetExhausted(Event):
    """A retry was refused because the endpoint's retry budget is spent."""

    method: str
    url: str
    attempt: int


@dataclass(frozen=True)
class BreakerStateChanged(Event):
    """The endpoint's breaker moved from ``old`` to ``new``."""

    old: str
    new: str
    failures: int


@dataclass(frozen=True)
class BreakerRejected(Event):
    """A call was refused without touching the network because the breaker is open."""

    method: str
    url: str


@dataclass(frozen=True)
class FallbackServed(Event):
    """
    A fallback (``static``, ``stale`` or ``callable``) answered instead of the
    peer; ``error`` is what it replaced.
    """

    method: str
    url: str
    fallback: str
    error: str


@dataclass(frozen=True)
class BulkheadRejected(Event):
    """A call was refused because ``max_concurrent`` calls were in flight."""

    method: str
    url: str
    max_concurrent: int


@dataclass(frozen=True)
class DeadlinePassed(Event):
    """The call's ``total`` deadline passed."""

    method: str
    url: str
    total: float
    attempts: int


@dataclass(frozen=True)
class CallFinished(Event):
    """A call returned or raised, after all its attempts."""

    method: str
    url: str
    attempts: int
    outcome: str
    status: int | None
    duration: float
    fallback: bool


_KINDS: dict[type, str] = {
    AttemptFinished: "attempt_finished",
    RetryScheduled: "retry_scheduled",
    GaveUp: "gave_up",
    BudgetExhausted: "budget_exhausted",
    BreakerStateChanged: "breaker_state_changed",
    BreakerRejected: "breaker_rejected",
    FallbackServed: "fallback_served",
    BulkheadRejected: "bulkhead_rejected",
    DeadlinePassed: "deadline_passed",
    CallFinished: "call_finished",
}

# Per-call events happen on every request: built only when someone listens.
HOT_EVENTS = (AttemptFinished, CallFinished)


class Listener(Protocol):
    """
    Anything callable with one `Event`.

    .. versionadded:: 0.1.0
    """

    def __call__(self, event: Event) -> None: ...


_LEVELS: dict[type, int] = {
    AttemptFinished: logging.DEBUG,
    CallFinished: logging.DEBUG,
    RetryScheduled: logging.INFO,
    GaveUp: logging.WARNING,
    BudgetExhausted: logging.WARNING,
    BreakerStateChanged: logging.WARNING,
    BreakerRejected: logging.INFO,
    FallbackServed: logging.WARNING,
    BulkheadRejected: logging.WARNING,
    DeadlinePassed: logging.WARNING,
}


def log_event(event: Event) -> None:
    """
    The default listener: one line on the ``resilient_client`` logger, with
    the event's fields in ``extra`` (prefixed ``rc_`` to stay clear of
    `logging.LogRecord` attributes).
    """
    level = _LEVELS.get(type(event), logging.INFO)
    if logger.isEnabledFor(level):
        fields = event.as_dict()
        text = " ".join(f"{k}={v}" for k, v in fields.items() if k not in ("event", "endpoint"))
        logger.log(
            level,
            "%s endpoint=%s %s",
            event.kind,
            event.endpoint,
            text,
            extra={f"rc_{k}": v for k, v in fields.items()},
        )


class EventBus:
    """The listeners of one session."""

    def __init__(self, listeners: list[Callable[[Event], None]] | None = None) -> None:
        self._listeners: tuple[Callable[[Event], None], ...] = (log_event, *(listeners or ()))
        self._failed: set[int] = set()
        self._lock = threading.Lock()

    @property
    def listeners(self) -> tuple[Callable[[Event], None], ...]:
        return self._listeners

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Add *listener*; returns a function that removes it."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)

        return unsubscribe

    def wants_hot(self) -> bool:
        """Whether per-call events are worth building: a listener besides logging, or debug logs."""
        return len(self._listeners) > 1 or logger.isEnabledFor(logging.DEBUG)

    def emit(self, event: Event) -> None:
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                # Never break the request; say so once per listener.
                if id(listener) not in self._failed:
                    self._failed.add(id(listener))
                    logger.exception(
                        "event listener %r raised; further errors from it are not logged", listener
                    )

"""
Events: frozen records of what the resilience layers did, handed to small
listeners (any callable taking one event).

Every URL in an event is already redacted, and no event carries a header.
A listener that raises never breaks the request: the error is logged once
per listener and the listener keeps being called.

Listeners run synchronously on the calling thread, in the order they were
added (the logging listener first): keep them fast, and hand slow work
(shipping to a remote collector) to a queue.
"""

from __future__ import annotations

import logging
import pkgutil
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields
from typing import Any, Protocol, cast

from ._errors import ConfigError, Problems
from ._traced import TracedCall, TracingListener, tracers_of
from ._verdict import OUTCOMES

__all__ = [
    "OUTCOMES",
    "AttemptFinished",
    "BreakerRejected",
    "BreakerStateChanged",
    "BudgetExhausted",
    "BulkheadRejected",
    "CallFinished",
    "CallThrottled",
    "ConcurrencyLimitChanged",
    "DeadlinePassed",
    "Event",
    "EventBus",
    "FallbackServed",
    "GaveUp",
    "HedgeSent",
    "HedgeSkipped",
    "HedgeWon",
    "Listener",
    "RetryScheduled",
    "ThrottleRateChanged",
    "format_event",
    "load_listeners",
    "log_event",
    "resolve_callable",
]

logger = logging.getLogger("resilient_client")
# A library configures no output of its own: the application decides.
logger.addHandler(logging.NullHandler())

# OUTCOMES (from the core's outcome table) is every value ``outcome`` takes
# in `AttemptFinished` and `CallFinished`: a closed set, safe as a metric
# label. ``ok`` is a response whose status is not in ``failure_status`` (a
# 404 is ``ok``: the peer answered); ``status`` is a response whose status is.


@dataclass(frozen=True)
class Event:
    """
    Base of every event: the endpoint name it concerns (or the origin
    ``scheme://host:port`` for a URL that no endpoint matched).

    .. versionadded:: 0.1.0
    """

    endpoint: str

    @property
    def kind(self) -> str:
        """The event's name in snake case, e.g. ``retry_scheduled``."""
        return _KINDS[type(self)]

    def as_dict(self) -> dict[str, Any]:
        """The fields, plus ``event`` = `kind`, for structured logs."""
        d = {name: getattr(self, name) for name in _field_names(type(self))}
        d["event"] = self.kind
        return d


@dataclass(frozen=True)
class AttemptFinished(Event):
    """
    One attempt (one request on the wire) ended after ``duration`` seconds.
    ``outcome`` is one of `OUTCOMES`; ``status`` is the response's status, or
    None when it raised; ``error`` is the exception's type name;
    ``proxy_error`` is true for a response the proxy made itself
    (``proxy_errors``).

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``proxy_error``.
    """

    method: str
    url: str
    attempt: int
    outcome: str
    status: int | None
    duration: float
    error: str | None = None
    proxy_error: bool = False


@dataclass(frozen=True)
class RetryScheduled(Event):
    """
    A retry will follow after ``delay`` seconds, because of ``reason`` (a
    failure kind such as ``read_timeout``, or ``status 503``); ``attempt`` is
    the attempt that failed.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    attempt: int
    delay: float
    reason: str


@dataclass(frozen=True)
class GaveUp(Event):
    """
    A call failed after ``attempts`` tries and no more will be made:
    ``reason`` is ``attempts``, ``budget``, ``deadline``,
    ``retry_after_refused``, ``breaker_open`` (the breaker opened after an
    attempt), ``not_retryable``, ``no_retry``, or ``caller_retrying`` (the
    request being served is itself a retry, so this call made one attempt);
    ``outcome`` is the last attempt's: ``status 503`` for a failing
    status, else one of `OUTCOMES`.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    attempts: int
    reason: str
    outcome: str


@dataclass(frozen=True)
class BudgetExhausted(Event):
    """
    A retry was refused because the endpoint's retry budget is spent.
    ``scope`` says where the state that decided it lives: ``process``,
    ``host`` (``state: host``, or a ``redis://`` state's budget and
    bulkhead) or ``redis``; ``process`` also while a shared store is
    unusable and the process carries on with its own.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``scope``.
    """

    method: str
    url: str
    attempt: int
    scope: str = "process"


@dataclass(frozen=True)
class BreakerStateChanged(Event):
    """
    The endpoint's breaker moved from ``old`` to ``new`` (``closed``,
    ``open`` or ``half-open``) after ``failures`` consecutive failures.
    ``scope`` says where the state that decided it lives: ``process``,
    ``host`` (``state: host``, or a ``redis://`` state's budget and
    bulkhead) or ``redis``; ``process`` also while a shared store is
    unusable and the process carries on with its own.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``scope``.
    """

    old: str
    new: str
    failures: int
    scope: str = "process"


@dataclass(frozen=True)
class BreakerRejected(Event):
    """
    A call was refused without touching the network because the endpoint's
    breaker is open; ``retry_in`` is the seconds until a trial call becomes
    possible, None when it was forced open. ``retry_at`` (a monotonic-clock
    reading) is deprecated, left out of log lines, and goes in 0.3.0.
    ``scope`` says where the state that decided it lives: ``process``,
    ``host`` (``state: host``, or a ``redis://`` state's budget and
    bulkhead) or ``redis``; ``process`` also while a shared store is
    unusable and the process carries on with its own.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``retry_in``; ``retry_at`` deprecated.
    .. versionchanged:: 0.2.0 ``scope``.
    """

    method: str
    url: str
    retry_at: float | None = None
    retry_in: float | None = None
    scope: str = "process"


@dataclass(frozen=True)
class FallbackServed(Event):
    """
    A fallback (``static``, ``stale`` or ``callable``) answered instead of
    the peer; ``error`` is what it replaced (redacted).

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    fallback: str
    error: str


@dataclass(frozen=True)
class BulkheadRejected(Event):
    """
    A call was refused because ``max_concurrent`` calls were in flight.
    ``scope`` says where the state that decided it lives: ``process``,
    ``host`` (``state: host``, or a ``redis://`` state's budget and
    bulkhead) or ``redis``; ``process`` also while a shared store is
    unusable and the process carries on with its own.

    .. versionadded:: 0.1.0
    .. versionchanged:: 0.2.0 ``scope``.
    """

    method: str
    url: str
    max_concurrent: int
    scope: str = "process"


@dataclass(frozen=True)
class CallThrottled(Event):
    """
    Overload control refused a call locally: ``reason`` is ``throttle``
    (adaptive throttling, refusing with probability ``reject_rate``) or
    ``retry_after`` (a Retry-After from the peer has ``retry_in`` seconds
    left).

    .. versionadded:: 0.2.0
    """

    method: str
    url: str
    reason: str
    reject_rate: float
    retry_in: float | None = None
    #: Where the refusing state lives: ``host`` for a throttle shared on
    #: the host, else ``process`` (the hold and the adaptive limit are per
    #: process).
    scope: str = "process"


@dataclass(frozen=True)
class ConcurrencyLimitChanged(Event):
    """
    An endpoint's adaptive concurrency limit (``concurrency``) moved from
    ``old`` to ``new`` calls in flight.

    .. versionadded:: 0.2.0
    """

    old: int
    new: int


@dataclass(frozen=True)
class ThrottleRateChanged(Event):
    """
    An endpoint's throttle refusal probability (``throttle``) moved from
    ``old`` to ``new``, seen as calls complete: at once when it moved by more
    than 0.01, else at most once a second, so it falls back to 0 when the
    peer recovers (a refusal's ``call_throttled`` says the rate too).

    .. versionadded:: 0.2.0
    """

    old: float
    new: float


@dataclass(frozen=True)
class DeadlinePassed(Event):
    """
    The call's ``total`` deadline passed during its ``attempts``-th attempt.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    total: float
    attempts: int


@dataclass(frozen=True)
class CallFinished(Event):
    """
    A call returned or raised, after all its attempts: ``outcome`` (one of
    `OUTCOMES`) is what the peer or the protections did, ``status`` the
    status the caller got (a fallback's, when ``fallback`` is true) and
    ``duration`` the whole call, backoff sleeps included.

    .. versionadded:: 0.1.0
    """

    method: str
    url: str
    attempts: int
    outcome: str
    status: int | None
    duration: float
    fallback: bool


@dataclass(frozen=True)
class HedgeSent(Event):
    """
    A hedge: another copy of a safe call was started because no copy had
    answered ``delay`` seconds (the delay in effect: fixed, or learned)
    after the last one. ``attempt`` is the number the copy gets, counting
    every copy of the call so far (2 for the first hedge of a first try). A
    copy started just as another copy answered is not put on the wire.

    .. versionadded:: 0.2.0
    """

    method: str
    url: str
    attempt: int
    delay: float


@dataclass(frozen=True)
class HedgeWon(Event):
    """
    A hedge's answer was taken: the copy numbered ``attempt`` answered
    first (and acceptably) while an earlier copy was still waiting; that
    copy was abandoned and its connection closed. ``duration`` is the
    seconds from the try's first copy being started to the winner's
    response being read.

    .. versionadded:: 0.2.0
    """

    method: str
    url: str
    attempt: int
    duration: float


@dataclass(frozen=True)
class HedgeSkipped(Event):
    """
    A hedge the call would have sent (or could have, for ``reason``
    ``"no_thread"``) was not: ``reason`` is ``"no_thread"`` (every hedging
    thread was busy, so the try ran unhedged on the caller's thread, or its
    hedge found no thread), ``"budget"`` (the retry budget was spent) or
    ``"bulkhead"`` (no bulkhead slot was free).

    .. versionadded:: 0.2.0
    """

    method: str
    url: str
    reason: str


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
    CallThrottled: "call_throttled",
    ConcurrencyLimitChanged: "concurrency_limit_changed",
    HedgeSent: "hedge_sent",
    HedgeWon: "hedge_won",
    HedgeSkipped: "hedge_skipped",
    ThrottleRateChanged: "throttle_rate_changed",
}

_FIELDS: dict[type, tuple[str, ...]] = {}


def _field_names(kind: type) -> tuple[str, ...]:
    names = _FIELDS.get(kind)
    if names is None:
        names = _FIELDS[kind] = tuple(f.name for f in fields(kind))
    return names


class Listener(Protocol):
    """
    Anything callable with one `Event`.

    .. versionadded:: 0.1.0
    """

    def __call__(self, event: Event) -> None: ...


# Per-call events (every call makes them) are DEBUG; what an operator should
# see without asking is a level above. Under a full outage each call still
# makes a line at INFO (rejected, fallback served): turn the logger to
# WARNING to keep only what changed (breaker moves) and what gave up.
_LEVELS: dict[type, int] = {
    AttemptFinished: logging.DEBUG,
    CallFinished: logging.DEBUG,
    RetryScheduled: logging.INFO,
    BreakerRejected: logging.INFO,
    FallbackServed: logging.INFO,
    GaveUp: logging.WARNING,
    BudgetExhausted: logging.WARNING,
    BreakerStateChanged: logging.WARNING,
    BulkheadRejected: logging.WARNING,
    DeadlinePassed: logging.WARNING,
    CallThrottled: logging.INFO,
    ConcurrencyLimitChanged: logging.DEBUG,
    HedgeSent: logging.DEBUG,
    HedgeWon: logging.DEBUG,
    HedgeSkipped: logging.DEBUG,
    ThrottleRateChanged: logging.DEBUG,
}


#: Fields kept one release for compatibility, left out of log lines.
_DEPRECATED_FIELDS = frozenset({"retry_at"})


def format_event(event: Event) -> str:
    """``kind endpoint=... k=v ...``: the event as one log line."""
    parts = [event.kind, f"endpoint={event.endpoint}"]
    for name in _field_names(type(event)):
        if name != "endpoint" and name not in _DEPRECATED_FIELDS:
            value = getattr(event, name)
            parts.append(f"{name}={value:.6f}" if isinstance(value, float) else f"{name}={value}")
    return " ".join(parts)


def log_event(event: Event) -> None:
    """
    The default listener: one line on the ``resilient_client`` logger, with
    the event's fields in ``extra`` (prefixed ``rc_`` to stay clear of
    `logging.LogRecord` attributes): ``rc_event``, ``rc_endpoint``,
    ``rc_method``, ``rc_url``, ``rc_attempt``, ``rc_outcome``, ``rc_delay``...

    .. versionadded:: 0.1.0
    """
    level = _LEVELS.get(type(event), logging.INFO)
    if logger.isEnabledFor(level):
        logger.log(
            level,
            "%s",
            format_event(event),
            extra={f"rc_{k}": v for k, v in event.as_dict().items() if k not in _DEPRECATED_FIELDS},
        )


# "pkg.module:attr.sub" or "pkg.module.attr", as pkgutil.resolve_name takes.
_DOTTED = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*)?$")


def check_listener_path(path: str, value: object, *, what: str = "listener") -> None:
    """Raise `ConfigError` at *path* unless *value* is a callable or a dotted path."""
    if callable(value):
        return
    if not isinstance(value, str) or not _DOTTED.match(value):
        raise ConfigError(
            path, f"must be a dotted path such as 'package.module:{what}', got {value!r}"
        )


def resolve_callable(path: str, spec: object, *, what: str = "listener") -> Callable[..., Any]:
    """
    The callable *spec* names (a callable passes through): the one loader of
    dotted paths, for listeners and for callable fallbacks alike.

    Raises:
        ConfigError: at *path* when *spec* is no dotted path, cannot be
            imported, or does not name a callable.
    """
    if callable(spec):
        return spec
    check_listener_path(path, spec, what=what)
    try:
        obj = pkgutil.resolve_name(str(spec))
    except (Exception, SystemExit) as e:  # ImportError, AttributeError, whatever the module raised
        raise ConfigError(path, f"cannot import {spec!r}: {type(e).__name__}: {e}") from None
    if not callable(obj):
        raise ConfigError(path, f"{spec!r} is not callable, got {obj!r}")
    return cast("Callable[..., Any]", obj)


def load_listeners(specs: Iterable[object]) -> list[Callable[[Event], None]]:
    """
    Import each dotted path in *specs* (callables pass through).

    Raises:
        ConfigError: naming ``listeners[i]`` when a path cannot be imported
            or does not name a callable (every such path, at once).
    """
    out: list[Callable[[Event], None]] = []
    problems = Problems()
    for i, spec in enumerate(specs):
        with problems.at():
            listener = resolve_callable(f"listeners[{i}]", spec)
            name = getattr(listener, "__name__", "")
            if name in _FACTORIES and getattr(listener, "__module__", "").startswith("resilient_client."):
                # It would be called with each event, as a tracer provider.
                raise ConfigError(
                    f"listeners[{i}]",
                    f"{spec!r} names the factory {name}, not a listener: name a module "
                    f"attribute holding its result (listener = resilient_client.{name}())")
            out.append(listener)
    problems.raise_if_any()
    return out


#: The library's listener factories: a config naming one meant its result.
_FACTORIES = frozenset({"otel_trace_listener", "otel_listener", "prometheus_listener"})


class EventBus:
    """
    The listeners of one session (the logging listener first), and the
    calls being traced on each thread (see `_traced`).
    """

    __slots__ = ("_ever_traced", "_failed", "_listeners", "_lock", "_plain", "_traced", "tracing")

    def __init__(self, listeners: Iterable[Callable[[Event], None]] = ()) -> None:
        self._listeners: tuple[Callable[[Event], None], ...] = (log_event, *listeners)
        self._update()
        # id -> listener: holding the listener keeps its id from being reused.
        self._failed: dict[int, Callable[[Event], None]] = {}
        self._lock = threading.Lock()
        self._traced = threading.local()
        # Set by the first traced call, never reset (a call keeps its spans
        # though its listener leaves): until then `emit` skips the per-thread
        # stack, a thread-local miss that costs more than the rest of a
        # refused call's event.
        self._ever_traced = False

    def _update(self) -> None:
        #: The listeners holding spans around calls and requests (may be empty).
        self.tracing: tuple[TracingListener, ...] = tracers_of(self._listeners)
        self._plain = tuple(x for x in self._listeners if not isinstance(x, TracingListener))

    def start_trace(self, endpoint: str, method: str, url: str) -> TracedCall | None:
        """
        Open the call's spans with the tracing listeners subscribed now (the
        call keeps them to its end); None when there is none.
        """
        tracers = self.tracing
        if not tracers:
            return None
        traced = TracedCall(tracers, endpoint, method, url)
        self._ever_traced = True
        stack: list[TracedCall] | None = getattr(self._traced, "stack", None)
        if stack is None:
            stack = self._traced.stack = []
        stack.append(traced)
        return traced

    def end_trace(self, traced: TracedCall) -> None:
        """Close the call's spans (their outcome came with `CallFinished`)."""
        stack: list[TracedCall] = self._traced.stack
        if stack and stack[-1] is traced:
            stack.pop()
        traced.exit()

    @property
    def listeners(self) -> tuple[Callable[[Event], None], ...]:
        """The listeners, in calling order."""
        return self._listeners

    def subscribe(self, listener: Callable[[Event], None]) -> Callable[[], None]:
        """Add *listener*; returns a function that removes it."""
        with self._lock:
            self._listeners = (*self._listeners, listener)
            self._update()

        def unsubscribe() -> None:
            with self._lock:
                self._listeners = tuple(x for x in self._listeners if x is not listener)
                self._update()

        return unsubscribe

    def wants_hot(self) -> bool:
        """Whether per-call events are worth building: a listener besides logging, or debug logs."""
        return len(self._listeners) > 1 or logger.isEnabledFor(logging.DEBUG)

    def emit(self, event: Event) -> None:
        """
        Hand *event* to every listener; one that raises is logged once and
        skipped. The tracing listeners get it on the spans of the innermost
        call this session traces on this thread (an event outside any call,
        ``session.circuit(...).open()``, has no span).
        """
        if self._ever_traced:
            stack: list[TracedCall] | None = getattr(self._traced, "stack", None)
            if stack:
                stack[-1].event(event)
        for listener in self._plain:
            try:
                listener(event)
            except Exception:
                # Never break the request; say so once per listener.
                with self._lock:
                    first = id(listener) not in self._failed
                    self._failed[id(listener)] = listener
                if first:
                    logger.exception(
                        "event listener %r raised on %s; further errors from it are not logged",
                        listener,
                        event.kind,
                    )

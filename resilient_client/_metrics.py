"""
Metrics as listeners: Prometheus (``prometheus-client``) and OpenTelemetry
(``opentelemetry-api``), both optional extras.

Neither package is imported until its factory is called: a process that
uses neither pays nothing, not even the import. Each listener turns events
into counter increments and histogram observations; label values come from
closed vocabularies (`OUTCOMES`, fallback kinds, breaker states), so series
stay bounded by endpoints x methods.

The label children (Prometheus) and attribute sets (OpenTelemetry) are
cached per label combination: after the first call of a kind, an event
costs a dict lookup and an increment.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from typing import Any

from ._events import (
    OUTCOMES,
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BulkheadRejected,
    CallFinished,
    CallThrottled,
    ConcurrencyLimitChanged,
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
from ._version import __version__

__all__ = ["BREAKER_STATES", "PROMETHEUS_METRICS", "otel_listener", "prometheus_listener"]

#: The values of the ``state`` label of the breaker state gauge.
BREAKER_STATES = ("closed", "open", "half-open")

#: name (after the prefix) -> (type, labels, help). The docs' metric table is
#: this, and a test holds the two together.
PROMETHEUS_METRICS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "requests_total": (
        "counter", ("endpoint", "method", "outcome"),
        "Calls made through the session, by what happened (fallbacks included).",
    ),
    "request_duration_seconds": (
        "histogram", ("endpoint", "method", "outcome"),
        "Duration of whole calls: every attempt and backoff sleep.",
    ),
    "attempts_total": (
        "counter", ("endpoint", "method", "outcome"),
        "Requests put on the wire (first tries and retries).",
    ),
    "attempt_duration_seconds": (
        "histogram", ("endpoint", "method", "outcome"),
        "Duration of single attempts.",
    ),
    "retries_total": (
        "counter", ("endpoint", "reason"),
        "Retries scheduled, by the failure that caused them.",
    ),
    "gave_up_total": (
        "counter", ("endpoint", "reason"),
        "Calls that failed with no retry left, by why retrying stopped.",
    ),
    "fallbacks_total": (
        "counter", ("endpoint", "fallback"),
        "Responses made by a fallback (static, stale, callable).",
    ),
    "rejections_total": (
        "counter", ("endpoint", "by", "scope"),
        "Calls refused without touching the network, by bulkhead, breaker, throttle, "
        "retry_after (a Retry-After hold) or concurrency (the adaptive limit), and the "
        "scope of the state that refused (process, host or redis).",
    ),
    "breaker_state": (
        "gauge", ("endpoint", "state"),
        "1 for the breaker's current state, 0 for the others (since its first transition).",
    ),
    "breaker_transitions_total": (
        "counter", ("endpoint", "state", "scope"),
        "Breaker state changes, by the state entered, and the breaker's scope.",
    ),
    "throttle_reject_rate": (
        "gauge", ("endpoint",),
        "The throttle's refusal probability, as of its last refusal or completed call (throttle).",
    ),
    "concurrency_limit": (
        "gauge", ("endpoint",),
        "The adaptive concurrency limit (concurrency), since it first moved.",
    ),
    "hedges_total": (
        "counter", ("endpoint", "result"),
        "Hedged copies: sent, those whose answer was taken (won), and those not sent "
        "for want of a thread, budget or bulkhead slot (skipped).",
    ),
}

_EXTRA_HINT = "pip install 'resilient_client[{extra}]'"


# -- Prometheus ----------------------------------------------------------------


class _PromMetrics:
    """The collectors of one (registry, prefix), created once."""

    def __init__(self, prometheus_client: Any, registry: Any, prefix: str) -> None:
        kinds = {
            "counter": prometheus_client.Counter,
            "gauge": prometheus_client.Gauge,
            "histogram": prometheus_client.Histogram,
        }
        self.by_name: dict[str, Any] = {}
        for name, (kind, labels, doc) in PROMETHEUS_METRICS.items():
            # prometheus_client adds "_total" to counters itself.
            base = name[: -len("_total")] if kind == "counter" else name
            self.by_name[name] = kinds[kind](f"{prefix}_{base}", doc, labels, registry=registry)


_prom_lock = threading.Lock()
_prom_cache: weakref.WeakKeyDictionary[Any, dict[str, _PromMetrics]] = weakref.WeakKeyDictionary()


class _Children:
    """Label children of one metric, cached by label values."""

    __slots__ = ("_cache", "_metric")

    def __init__(self, metric: Any) -> None:
        self._metric = metric
        self._cache: dict[tuple[str, ...], Any] = {}

    def __call__(self, *labels: str) -> Any:
        child = self._cache.get(labels)
        if child is None:
            child = self._cache[labels] = self._metric.labels(*labels)
        return child


class _PrometheusListener:
    """
    Turns events into Prometheus metrics; see `prometheus_listener`.
    """

    def __init__(self, metrics: _PromMetrics, registry: Any = None, prefix: str = "resilient_client") -> None:
        #: What `prometheus_listener` was given: an unpickled listener asks it again.
        self._made_with = (registry, prefix)
        m = metrics.by_name
        self._requests = _Children(m["requests_total"])
        self._request_duration = _Children(m["request_duration_seconds"])
        self._attempts = _Children(m["attempts_total"])
        self._attempt_duration = _Children(m["attempt_duration_seconds"])
        self._retries = _Children(m["retries_total"])
        self._gave_up = _Children(m["gave_up_total"])
        self._fallbacks = _Children(m["fallbacks_total"])
        self._rejections = _Children(m["rejections_total"])
        self._state = _Children(m["breaker_state"])
        self._transitions = _Children(m["breaker_transitions_total"])
        self._reject_rate = _Children(m["throttle_reject_rate"])
        self._limit = _Children(m["concurrency_limit"])
        self._hedges = _Children(m["hedges_total"])
        # (endpoint, method) pairs whose counters by outcome exist (at 0).
        self._known: set[tuple[str, str]] = set()
        self._handlers: dict[type, Callable[[Any], None]] = {
            CallThrottled: self._throttled,
            ConcurrencyLimitChanged: lambda e: self._limit(e.endpoint).set(e.new),
            ThrottleRateChanged: lambda e: self._reject_rate(e.endpoint).set(e.new),
            AttemptFinished: self._attempt,
            CallFinished: self._call,
            RetryScheduled: self._retry,
            GaveUp: self._give_up,
            FallbackServed: self._fallback,
            BulkheadRejected: self._bulkhead,
            BreakerRejected: self._breaker_rejected,
            BreakerStateChanged: self._breaker,
            HedgeSent: lambda e: self._hedges(e.endpoint, "sent").inc(),
            HedgeWon: lambda e: self._hedges(e.endpoint, "won").inc(),
            HedgeSkipped: lambda e: self._hedges(e.endpoint, "skipped").inc(),
        }

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickled with a session: rebuilt from what made it (the collectors
        # are the registry's, shared, never copied). A registry of one's own
        # is pickled as it is, and prometheus_client's hold a lock: only the
        # default registry's listener pickles.
        registry, prefix = self._made_with
        return (prometheus_listener, (registry, prefix))

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _first(self, endpoint: str, method: str) -> None:
        """
        The first call to (endpoint, method): its counters by outcome start at
        0, so that rate() and increase() see the first failure (a series
        born at 1 has no earlier sample to count from).
        """
        self._known.add((endpoint, method))
        for outcome in OUTCOMES:
            self._requests(endpoint, method, outcome)
            self._attempts(endpoint, method, outcome)

    def _attempt(self, e: AttemptFinished) -> None:
        if (e.endpoint, e.method) not in self._known:
            self._first(e.endpoint, e.method)
        self._attempts(e.endpoint, e.method, e.outcome).inc()
        self._attempt_duration(e.endpoint, e.method, e.outcome).observe(e.duration)

    def _call(self, e: CallFinished) -> None:
        if (e.endpoint, e.method) not in self._known:
            self._first(e.endpoint, e.method)
        self._requests(e.endpoint, e.method, e.outcome).inc()
        self._request_duration(e.endpoint, e.method, e.outcome).observe(e.duration)

    def _retry(self, e: RetryScheduled) -> None:
        self._retries(e.endpoint, e.reason).inc()

    def _give_up(self, e: GaveUp) -> None:
        self._gave_up(e.endpoint, e.reason).inc()

    def _fallback(self, e: FallbackServed) -> None:
        self._fallbacks(e.endpoint, e.fallback).inc()

    def _bulkhead(self, e: BulkheadRejected) -> None:
        self._rejections(e.endpoint, "bulkhead", e.scope).inc()

    def _breaker_rejected(self, e: BreakerRejected) -> None:
        self._rejections(e.endpoint, "breaker", e.scope).inc()

    def _throttled(self, e: CallThrottled) -> None:
        self._rejections(e.endpoint, e.reason, e.scope).inc()
        if e.reason == "throttle":
            self._reject_rate(e.endpoint).set(e.reject_rate)

    def _breaker(self, e: BreakerStateChanged) -> None:
        for state in BREAKER_STATES:
            self._state(e.endpoint, state).set(1.0 if state == e.new else 0.0)
            self._transitions(e.endpoint, state, e.scope)  # each state's series exists, at 0 until it comes
        self._transitions(e.endpoint, e.new, e.scope).inc()

    def __repr__(self) -> str:
        return "prometheus_listener()"


def prometheus_listener(registry: Any = None, prefix: str = "resilient_client") -> Listener:
    """
    A listener recording Prometheus metrics (names in the observability docs):
    ``<prefix>_requests_total``, ``_request_duration_seconds``,
    ``_attempts_total``, ``_attempt_duration_seconds``, ``_retries_total``,
    ``_gave_up_total``, ``_fallbacks_total``, ``_rejections_total``,
    ``_breaker_state``, ``_breaker_transitions_total`` and ``_hedges_total``.

    Listeners made for the same *registry* (default: prometheus_client's
    global one) and *prefix* share their collectors, so every session of a
    process may have its own listener.

    Raises:
        ImportError: prometheus-client is not installed.

    .. versionadded:: 0.1.0
    """
    try:
        import prometheus_client
    except ImportError:
        raise ImportError(
            "prometheus_listener needs prometheus-client: " + _EXTRA_HINT.format(extra="prometheus")
        ) from None
    if registry is None:
        registry = prometheus_client.REGISTRY
    with _prom_lock:
        per_prefix = _prom_cache.setdefault(registry, {})
        metrics = per_prefix.get(prefix)
        if metrics is None:
            metrics = per_prefix[prefix] = _PromMetrics(prometheus_client, registry, prefix)
    return _PrometheusListener(metrics, None if registry is prometheus_client.REGISTRY else registry, prefix)


# -- OpenTelemetry ---------------------------------------------------------------

# The buckets the HTTP semantic conventions advise for request durations.
_OTEL_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_CACHE_LIMIT = 4096


def _server(url: str) -> tuple[str, int]:
    """(server.address, server.port) of *url*, without parsing more than the authority."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return "", 0
    authority = rest.split("/", 1)[0].split("?", 1)[0].rpartition("@")[2]
    if authority.startswith("["):  # [::1]:8080
        host, _, port = authority[1:].partition("]")
        port = port.lstrip(":")
    else:
        host, _, port = authority.partition(":")
    return host.lower(), int(port) if port.isdigit() else _DEFAULT_PORTS.get(scheme.lower(), 0)


class _OTelListener:
    """
    Turns events into OpenTelemetry metrics; see `otel_listener`.
    """

    def __init__(self, meter: Any) -> None:
        http = {"unit": "s", "description": "Duration of HTTP client requests."}
        try:
            self._http_duration = meter.create_histogram(
                "http.client.request.duration", **http,
                explicit_bucket_boundaries_advisory=list(_OTEL_BUCKETS))
        except TypeError:  # opentelemetry-api < 1.23 has no advisory buckets
            self._http_duration = meter.create_histogram("http.client.request.duration", **http)
        self._call_duration = meter.create_histogram(
            "resilient_client.call.duration", unit="s",
            description="Duration of whole calls: every attempt and backoff sleep.")
        counters = {
            "retries": ("{retry}", "Retries scheduled."),
            "gave_up": ("{call}", "Calls that failed with no retry left."),
            "fallbacks": ("{response}", "Responses made by a fallback."),
            "rejections": ("{call}", "Calls refused without touching the network."),
            "breaker.transitions": ("{transition}", "Breaker state changes."),
            "hedges": ("{request}", "Hedged copies sent, those whose answer was taken, and those skipped."),
        }
        self._counters = {
            name: meter.create_counter(f"resilient_client.{name}", unit=unit, description=doc)
            for name, (unit, doc) in counters.items()
        }
        self._states: dict[str, str] = {}
        self._states_lock = threading.Lock()
        meter.create_observable_gauge(
            "resilient_client.breaker.state", callbacks=[self._observe_states], unit="1",
            description="1 for each breaker's current state, 0 for the others.")
        self._attrs: dict[tuple[Any, ...], dict[str, Any]] = {}
        # (endpoint, method) pairs whose counters by outcome exist (at 0).
        self._known: set[tuple[str, str]] = set()
        self._handlers: dict[type, Callable[[Any], None]] = {
            AttemptFinished: self._attempt,
            CallFinished: self._call,
            RetryScheduled: lambda e: self._count("retries", e.endpoint, "reason", e.reason),
            GaveUp: lambda e: self._count("gave_up", e.endpoint, "reason", e.reason),
            FallbackServed: lambda e: self._count("fallbacks", e.endpoint, "fallback", e.fallback),
            BulkheadRejected: lambda e: self._rejected(e.endpoint, "bulkhead", e.scope),
            CallThrottled: lambda e: self._rejected(e.endpoint, e.reason, e.scope),
            BreakerRejected: lambda e: self._rejected(e.endpoint, "breaker", e.scope),
            BreakerStateChanged: self._breaker,
            HedgeSent: lambda e: self._count("hedges", e.endpoint, "hedge", "sent"),
            HedgeWon: lambda e: self._count("hedges", e.endpoint, "hedge", "won"),
            HedgeSkipped: lambda e: self._count("hedges", e.endpoint, "hedge", "skipped"),
        }

    def __call__(self, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            handler(event)

    def _cached(self, key: tuple[Any, ...], build: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        attrs = self._attrs.get(key)
        if attrs is None:
            if len(self._attrs) >= _CACHE_LIMIT:
                self._attrs.clear()  # bounded: origins of unmatched URLs may be many
            attrs = self._attrs[key] = build()
        return attrs

    def _count(self, counter: str, endpoint: str, name: str, value: str, scope: str | None = None) -> None:
        def build() -> dict[str, Any]:
            attrs = {"resilient_client.endpoint": endpoint, f"resilient_client.{name}": value}
            if scope is not None:
                attrs["resilient_client.scope"] = scope
            return attrs

        self._counters[counter].add(1, self._cached((counter, endpoint, value, scope), build))

    def _rejected(self, endpoint: str, by: str, scope: str) -> None:
        self._count("rejections", endpoint, "rejected_by", by, scope)

    def _attempt(self, e: AttemptFinished) -> None:
        # Keyed by scheme://authority, not the URL: paths with ids must not grow the cache.
        scheme, sep, rest = e.url.partition("://")
        head = scheme + sep + rest.split("/", 1)[0].split("?", 1)[0]
        key = ("attempt", e.endpoint, e.method, head, e.status, e.outcome)
        self._http_duration.record(e.duration, self._cached(key, lambda: _http_attrs(e, head)))

    def _call(self, e: CallFinished) -> None:
        key = ("call", e.endpoint, e.method, e.outcome, e.fallback)
        attrs = self._cached(key, lambda: {
            "resilient_client.endpoint": e.endpoint,
            "http.request.method": e.method if e.method in _KNOWN_METHODS else "_OTHER",
            "resilient_client.outcome": e.outcome,
            "resilient_client.fallback": e.fallback,
        })
        self._call_duration.record(e.duration, attrs)

    def _breaker(self, e: BreakerStateChanged) -> None:
        with self._states_lock:
            self._states[e.endpoint] = e.new
        self._count("breaker.transitions", e.endpoint, "breaker.state", e.new, e.scope)

    def _observe_states(self, options: Any) -> list[Any]:
        from opentelemetry.metrics import Observation

        with self._states_lock:
            states = list(self._states.items())
        return [
            Observation(1 if state == current else 0, {
                "resilient_client.endpoint": endpoint, "resilient_client.breaker.state": state})
            for endpoint, current in states
            for state in BREAKER_STATES
        ]

    def __repr__(self) -> str:
        return "otel_listener()"


def _http_attrs(e: AttemptFinished, head: str) -> dict[str, Any]:
    """The HTTP client semantic conventions' attributes of one attempt."""
    host, port = _server(head)
    known = e.method in _KNOWN_METHODS
    attrs: dict[str, Any] = {
        "http.request.method": e.method if known else "_OTHER",
        "server.address": host,
        "server.port": port,
        "network.protocol.version": "1.1",  # all urllib3 speaks
        "resilient_client.endpoint": e.endpoint,
    }
    if not known:
        attrs["http.request.method_original"] = e.method
    if e.status is not None:
        attrs["http.response.status_code"] = e.status
        if e.status >= 400:
            attrs["error.type"] = str(e.status)
    else:
        # The conventions allow a low-cardinality identifier of ours: read_timeout...
        attrs["error.type"] = e.outcome
    return attrs


def otel_listener(meter_provider: Any = None, *, meter: Any = None) -> Listener:
    """
    A listener recording OpenTelemetry metrics through ``opentelemetry-api``:
    ``http.client.request.duration`` per attempt, with the HTTP client
    semantic conventions' attributes (``http.request.method``,
    ``server.address``, ``server.port``, ``http.response.status_code``,
    ``error.type``), plus ``resilient_client.*`` counters and a call
    duration histogram.

    Args:
        meter_provider: where to get the meter (default: the global one,
            which does nothing until an SDK is configured).
        meter: a meter to use as is (overrides *meter_provider*).

    Raises:
        ImportError: opentelemetry-api is not installed.

    .. versionadded:: 0.1.0
    """
    if meter is None:
        try:
            from opentelemetry import metrics
        except ImportError:
            raise ImportError(
                "otel_listener needs opentelemetry-api: " + _EXTRA_HINT.format(extra="otel")
            ) from None
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        meter = provider.get_meter("resilient_client", __version__)
    return _OTelListener(meter)

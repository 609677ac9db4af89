"""
Traces as a listener: OpenTelemetry spans through ``opentelemetry-api`` (the
``otel`` extra), imported only when `otel_trace_listener` is called.

The trace of one call::

    GET inventory                   INTERNAL  the call: resilient_client.* attributes,
    │                                         events retry_scheduled, breaker_rejected,
    │                                         budget_exhausted, fallback_served, gave_up...
    ├── GET                         CLIENT    attempt 1: the HTTP client conventions
    ├── GET                         CLIENT    attempt 1's redirect hop: resend_count=1
    └── GET                         CLIENT    attempt 2: http.request.resend_count=2

Why the call span is INTERNAL and the attempts are CLIENT: the HTTP semantic
conventions make each request put on the wire a CLIENT span (a resend
included, with ``http.request.resend_count``), parented by the logical
operation that resent it. A call refused by an open breaker sent nothing,
so it has no CLIENT span, and a service map drawn from CLIENT spans counts
only requests that reached for the peer.

Why the request suppresses other HTTP instrumentation: the request's span *is*
the HTTP client span of that request. ``opentelemetry-instrumentation-requests``
wraps ``requests.Session.send``, which each attempt (and each redirect hop)
calls; left alone it would add a second CLIENT span for the same request
under ours and overwrite our ``traceparent`` with its own. While an attempt
runs, its context carries the key that every OpenTelemetry HTTP
instrumentation checks (``suppress_http_instrumentation``, the same key
that instrumentation sets to silence urllib3's below it), so theirs steps
aside. Without this listener nothing changes: their span per attempt.

The session calls the hooks (`TracingListener` in `_traced`) through the
call's `TracedCall`, fixed when the call starts and guarded there: entering
and leaving a call and each request on the wire (an attempt, a redirect
hop), and the response hooks (run under the request's span but without the
suppression flag: they are the application's code), so that the spans are
current while the work runs (a span the application starts in a fallback or
a response hook nests under them, and the trace context goes out in each
request's headers). A session without a tracing listener checks one
attribute per call, and nothing more.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

from ._config import Secrets
from ._events import (
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    DeadlinePassed,
    Event,
    FallbackServed,
    GaveUp,
    RetryScheduled,
)
from ._metrics import _KNOWN_METHODS, _server
from ._redact import REDACTED, redact_url
from ._traced import TracingListener
from ._version import __version__

__all__ = ["otel_trace_listener"]

_EXTRA_HINT = "pip install 'resilient_client[otel]'"


class _Span:
    """What leaving a span needs: the span and its context token."""

    __slots__ = ("ctx", "span", "token")

    def __init__(self, span: Any, ctx: Any, token: Any) -> None:
        self.span = span
        self.ctx = ctx
        self.token = token


class _OTelTracing(TracingListener):
    """
    Turns calls, requests on the wire and events into OpenTelemetry spans;
    see `otel_trace_listener`. It keeps no state of its own between hooks:
    the session hands each hook the span it opened (`resilient_client._traced`).
    """

    def __init__(self, tracer: Any, propagate: bool, propagator: Any) -> None:
        from opentelemetry import context, trace
        from opentelemetry import propagate as otel_propagate
        from opentelemetry.trace import SpanKind, Status, StatusCode

        self._tracer = tracer
        self._propagator = propagator
        self._context = context
        self._set_span = trace.set_span_in_context
        self._internal, self._client = SpanKind.INTERNAL, SpanKind.CLIENT
        self._error = StatusCode.ERROR
        self._status = Status
        #: Whether the session must give each attempt's headers to `enter_attempt`.
        self.injects = propagate
        self._inject: Callable[..., None] = (
            propagator.inject if propagator is not None else otel_propagate.inject)
        # The key every OpenTelemetry HTTP instrumentation checks before making
        # its own span (opentelemetry-api >= 1.24 defines it; older: none to set).
        self._suppress_key: str | None = getattr(context, "_SUPPRESS_HTTP_INSTRUMENTATION_KEY", None)
        self._handlers: dict[type, Callable[[Any, Any], None]] = {
            CallFinished: self._call_finished,
            RetryScheduled: lambda s, e: s.add_event("retry_scheduled", {
                "resilient_client.attempt": e.attempt, "resilient_client.delay": e.delay,
                "resilient_client.reason": e.reason}),
            BudgetExhausted: lambda s, e: s.add_event("budget_exhausted", {
                "resilient_client.attempt": e.attempt}),
            GaveUp: lambda s, e: s.add_event("gave_up", {
                "resilient_client.attempts": e.attempts, "resilient_client.reason": e.reason,
                "resilient_client.outcome": e.outcome}),
            BreakerRejected: lambda s, e: s.add_event("breaker_rejected", {
                "resilient_client.retry_in": e.retry_in if e.retry_in is not None else -1.0}),
            BulkheadRejected: lambda s, e: s.add_event("bulkhead_rejected", {
                "resilient_client.max_concurrent": e.max_concurrent}),
            FallbackServed: lambda s, e: s.add_event("fallback_served", {
                "resilient_client.fallback": e.fallback, "resilient_client.error": e.error}),
            DeadlinePassed: lambda s, e: s.add_event("deadline_passed", {
                "resilient_client.total": e.total, "resilient_client.attempts": e.attempts}),
            BreakerStateChanged: lambda s, e: s.add_event("breaker_state_changed", {
                "resilient_client.old": e.old, "resilient_client.new": e.new,
                "resilient_client.failures": e.failures}),
        }

    # Pickled with the session (a tracer holds locks): unpickled, the
    # listener takes its tracer from the global tracer provider.
    def __reduce__(self) -> tuple[Any, ...]:
        return (otel_trace_listener, (), {"propagate": self.injects, "propagator": self._propagator})

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.injects = state["propagate"]
        if state["propagator"] is not None:
            self._propagator = state["propagator"]
            self._inject = state["propagator"].inject

    # -- the session's hooks -----------------------------------------------

    def enter_call(self, endpoint: str, method: str, url: str) -> object:
        """Start the call's span and make it current."""
        attrs = _http_attrs(method, url)
        attrs["resilient_client.endpoint"] = endpoint
        span = self._tracer.start_span(f"{method} {endpoint}", kind=self._internal, attributes=attrs)
        ctx = self._set_span(span)
        return _Span(span, ctx, self._context.attach(ctx))

    def exit_call(self, call: object) -> None:
        """End the call's span (its attributes came with `CallFinished`)."""
        assert isinstance(call, _Span)
        self._context.detach(call.token)
        call.span.end()

    def on_event(self, call: object, event: Event) -> None:
        handler = self._handlers.get(type(event))
        if handler is not None:
            assert isinstance(call, _Span)
            handler(call.span, event)

    def enter_attempt(
        self, call: object, endpoint: str, method: str, url: str, attempt: int, resend: int,
        headers: MutableMapping[str, str] | None,
    ) -> object:
        """
        Start a request's CLIENT span under the call's, put its trace context
        in *headers* (when given), and make it current with other HTTP
        instrumentation suppressed.
        """
        assert isinstance(call, _Span)
        attrs = _http_attrs(method, url)
        attrs["resilient_client.endpoint"] = endpoint
        attrs["resilient_client.attempt"] = attempt
        if resend:
            attrs["http.request.resend_count"] = resend
        name = method if method in _KNOWN_METHODS else "HTTP"
        span = self._tracer.start_span(name, context=call.ctx, kind=self._client, attributes=attrs)
        ctx = self._set_span(span)
        if headers is not None:
            try:
                self._inject(headers, context=ctx)
            except BaseException:
                span.end()  # the request goes on untraced; the session logs this once
                raise
        key = self._suppress_key
        current = self._context.set_value(key, True, ctx) if key is not None else ctx
        return _Span(span, ctx, self._context.attach(current))

    def enter_hooks(self, attempt: object) -> object:
        """The response hooks run under the request's span, instrumentation not suppressed."""
        assert isinstance(attempt, _Span)
        return self._context.attach(attempt.ctx)

    def exit_hooks(self, token: object) -> None:
        self._context.detach(cast(Any, token))

    def exit_attempt(self, attempt: object, status: int | None, outcome: str, error: str | None) -> None:
        """End a request's span with what came back."""
        assert isinstance(attempt, _Span)
        self._context.detach(attempt.token)
        span = attempt.span
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if error is not None and status is not None:
            # The answer came, then the application's response hook raised.
            span.set_attribute("error.type", error)
            span.set_status(self._status(self._error, error))
        elif status is not None:
            if status >= 400:  # a client span's error, as the conventions say
                span.set_attribute("error.type", str(status))
                span.set_status(self._status(self._error))
        else:
            # A low-cardinality identifier of ours, as the metrics use: read_timeout...
            span.set_attribute("error.type", outcome)
            span.set_status(self._status(self._error, error))
        span.set_attribute("resilient_client.outcome", outcome)
        span.end()

    # -- events --------------------------------------------------------------

    def _call_finished(self, span: Any, e: CallFinished) -> None:
        span.set_attribute("resilient_client.attempts", e.attempts)
        span.set_attribute("resilient_client.outcome", e.outcome)
        span.set_attribute("resilient_client.fallback", e.fallback)
        if e.status is not None:
            span.set_attribute("http.response.status_code", e.status)
        if e.fallback:
            return  # the caller got an answer: the events say what it replaced
        if e.status is None or e.outcome == "status":
            span.set_attribute("error.type", e.outcome if e.status is None else str(e.status))
            span.set_status(self._status(self._error))

    def __repr__(self) -> str:
        return "otel_trace_listener()"


# The query parameters the HTTP semantic conventions redact in url.full by
# default (presigned URLs: AWS, GCS, Azure), lower-cased, as `Secrets.query`.
SEMCONV_QUERY = frozenset({
    "awsaccesskeyid", "signature", "sig", "x-goog-signature",
    "x-amz-signature", "x-amz-credential", "x-amz-security-token"})
_SEMCONV_SECRETS = Secrets(query=SEMCONV_QUERY)


def semconv_url(url: str) -> str:
    """
    *url* (already redacted as the library's logs are) as the conventions
    want ``url.full``: ``REDACTED:REDACTED@`` for any user info, and the
    values of presigned URLs' signature parameters replaced.
    """
    if "@" in url:
        try:
            parts = urlsplit(url)
        except ValueError:
            return REDACTED
        if "@" in parts.netloc:
            hostport = parts.netloc.rpartition("@")[2]
            url = urlunsplit(parts._replace(netloc=f"{REDACTED}:{REDACTED}@{hostport}"))
    return redact_url(url, _SEMCONV_SECRETS)


def _http_attrs(method: str, url: str) -> dict[str, Any]:
    """The HTTP client conventions' request attributes; *url* is already redacted."""
    url = semconv_url(url)
    host, port = _server(url)
    known = method in _KNOWN_METHODS
    attrs: dict[str, Any] = {
        "http.request.method": method if known else "_OTHER",
        "server.address": host,
        "server.port": port,
        "url.full": url,
    }
    if not known:
        attrs["http.request.method_original"] = method
    return attrs


def otel_trace_listener(
    tracer_provider: Any = None,
    *,
    tracer: Any = None,
    propagate: bool = True,
    propagator: Any = None,
) -> _OTelTracing:
    """
    A listener making OpenTelemetry traces through ``opentelemetry-api``: an
    INTERNAL span per call (``{method} {endpoint}``) with a CLIENT span per
    request on the wire (each attempt and each redirect hop) under it,
    following the HTTP client semantic conventions
    (``http.request.method``, ``server.address``, ``server.port``,
    ``url.full`` redacted as the conventions ask (user info, presigned-URL
    signatures) and as the library's logs are,
    ``http.response.status_code``, ``http.request.resend_count``,
    ``error.type``), and span events for retries, breaker rejections,
    fallbacks, a spent retry budget, a full bulkhead and a passed deadline.
    While a request is sent, ``opentelemetry-instrumentation-requests`` (and
    any other HTTP instrumentation) makes no span of its own; response hooks
    run without that suppression. A tracing component that raises is
    logged once and skipped: it never fails the request. The listener may
    be shared by sessions, and pickles (coming back with the global tracer
    provider's tracer).

    Args:
        tracer_provider: where to get the tracer (default: the global one,
            which does nothing until an SDK is configured).
        tracer: a tracer to use as is (overrides *tracer_provider*).
        propagate: put each attempt's trace context in its headers
            (``traceparent``...), with *propagator*.
        propagator: a ``TextMapPropagator`` (default: the global one,
            W3C trace context and baggage unless ``OTEL_PROPAGATORS`` says
            otherwise).

    Raises:
        ImportError: opentelemetry-api is not installed.

    .. versionadded:: 0.2.0
    """
    try:
        from opentelemetry import trace
    except ImportError:
        raise ImportError("otel_trace_listener needs opentelemetry-api: " + _EXTRA_HINT) from None
    if tracer is None:
        provider = tracer_provider if tracer_provider is not None else trace.get_tracer_provider()
        tracer = provider.get_tracer("resilient_client", __version__)
    return _OTelTracing(tracer, propagate, propagator)

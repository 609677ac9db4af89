"""Traces: otel_trace_listener against the SDK's in-memory exporter, on loopback sockets."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from peers import Peer, answer, hang

import resilient_client as rc

FAST_RETRY = {"retry": {"backoff": {"initial": 0.001, "max": 0.002}}}


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@pytest.fixture
def peer() -> Iterator[Peer]:
    with Peer() as p:
        yield p


def traced(provider: TracerProvider, config: dict[str, Any] | None = None, **kw: Any) -> rc.ResilientSession:
    return rc.ResilientSession(config or {"defaults": FAST_RETRY},
                               listeners=[rc.otel_trace_listener(provider, **kw)])


def by_kind(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, list[ReadableSpan]]:
    """(the one call span, the attempt spans in order)."""
    finished = [s for s in exporter.get_finished_spans()
                if s.instrumentation_scope is not None and s.instrumentation_scope.name == "resilient_client"]
    [call] = [s for s in finished if s.kind is SpanKind.INTERNAL]
    attempts = sorted((s for s in finished if s.kind is SpanKind.CLIENT),
                      key=lambda s: s.attributes["resilient_client.attempt"])  # type: ignore[index]
    return call, attempts


def traceparent_of(span: ReadableSpan) -> str:
    """The ``traceparent`` naming *span*, up to its flags (sampled; the SDK may add "random")."""
    ctx = span.get_span_context()
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-"


def events(span: ReadableSpan) -> list[str]:
    return [e.name for e in span.events]


class TestSpans:
    def test_a_retried_call_is_one_span_with_a_client_span_per_attempt(self, spans, peer):
        """
        A 503 then a 200: an INTERNAL call span, two CLIENT attempt spans
        under it, resend_count on the second.
        """
        provider, exporter = spans
        peer.on("/items", answer(503), answer(200, b"ok"))
        resp = traced(provider).get(peer.url("/items?q=1"))
        assert resp.status_code == 200
        call, (first, second) = by_kind(exporter)
        assert call.name == f"GET {peer.url('')}"  # the endpoint: here the origin no rule matched
        for attempt in (first, second):
            assert attempt.parent is not None and attempt.parent.span_id == call.context.span_id
            assert attempt.name == "GET"
            assert attempt.attributes["http.request.method"] == "GET"
            assert attempt.attributes["server.address"] == "127.0.0.1"
            assert attempt.attributes["server.port"] == peer.port
            assert attempt.attributes["url.full"] == peer.url("/items?q=1")
        assert first.attributes["http.response.status_code"] == 503
        assert first.attributes["error.type"] == "503"
        assert first.status.status_code is StatusCode.ERROR
        assert "http.request.resend_count" not in first.attributes
        assert second.attributes["http.request.resend_count"] == 1
        assert second.attributes["http.response.status_code"] == 200
        assert "error.type" not in second.attributes
        assert events(call) == ["retry_scheduled"]
        assert call.attributes["resilient_client.attempts"] == 2
        assert call.attributes["http.response.status_code"] == 200
        assert call.status.status_code is StatusCode.UNSET

    def test_each_attempt_sends_its_own_trace_context(self, spans, peer):
        """The peer sees a traceparent per attempt naming that attempt's span: its server span nests there."""
        provider, exporter = spans
        seen: list[str] = []
        peer.on("/items", lambda req: (seen.append(req.headers["traceparent"]),
                                       answer(503) if len(seen) == 1 else answer(200))[1])
        traced(provider).get(peer.url("/items"))
        _, attempts = by_kind(exporter)
        assert [value[:-2] for value in seen] == [traceparent_of(a) for a in attempts]

    def test_propagate_false_sends_no_trace_context(self, spans, peer):
        """propagate=False: spans are made, headers are left alone."""
        provider, exporter = spans
        peer.on("/items", answer(200))
        traced(provider, propagate=False).get(peer.url("/items"))
        assert "traceparent" not in peer.last("/items").headers
        assert len(exporter.get_finished_spans()) == 2

    def test_a_timed_out_attempt_names_its_error(self, spans, peer):
        """A read timeout: error.type read_timeout, no status code, span status ERROR."""
        provider, exporter = spans
        peer.on("/slow", hang())
        session = traced(provider, {"defaults": {"retry": None, "timeout": {"read": 0.1}}})
        with pytest.raises(requests.Timeout):
            session.get(peer.url("/slow"))
        assert not trace.get_current_span().get_span_context().is_valid  # nothing left attached
        call, [attempt] = by_kind(exporter)
        assert attempt.attributes["error.type"] == "read_timeout"
        assert "http.response.status_code" not in attempt.attributes
        assert attempt.status.status_code is StatusCode.ERROR
        assert call.status.status_code is StatusCode.ERROR
        assert call.attributes["error.type"] == "read_timeout"

    def test_url_full_is_redacted_as_the_logs_are(self, spans, peer):
        """Secret query values and a URL's password never reach a span."""
        provider, exporter = spans
        peer.on("/items", answer(200))
        session = traced(provider, {"secrets": {"query": ["token"]}})
        url = peer.url("/items?token=s3cret&q=1").replace("http://", "http://user:pw@")
        session.get(url)
        for span in exporter.get_finished_spans():
            assert "s3cret" not in span.attributes["url.full"]  # type: ignore[operator]
            assert ":pw@" not in span.attributes["url.full"]  # type: ignore[operator]


class TestEvents:
    def test_an_open_breaker_and_its_fallback_are_events_of_a_call_with_no_attempt(self, spans, peer):
        """Nothing went on the wire: no CLIENT span; the call span has breaker_rejected, fallback_served."""
        provider, exporter = spans
        session = traced(provider, {"defaults": {"fallback": {"status": 200, "text": "cached"}}})
        session.circuit(peer.url("/")).open()
        assert session.get(peer.url("/items")).text == "cached"
        call, attempts = by_kind(exporter)
        assert attempts == []
        assert events(call) == ["breaker_rejected", "fallback_served"]
        assert call.attributes["resilient_client.fallback"] is True
        assert call.status.status_code is StatusCode.UNSET  # the caller got an answer

    def test_a_call_refused_early_by_an_open_breaker_has_its_span(self, spans, peer):
        """Without a fallback the refusal happens before requests prepares: still one span, in error."""
        provider, exporter = spans
        session = traced(provider, {"defaults": {}})
        session.circuit(peer.url("/")).open()
        with pytest.raises(rc.CircuitOpenError):
            session.get(peer.url("/items"))
        call, attempts = by_kind(exporter)
        assert attempts == [] and events(call) == ["breaker_rejected"]
        assert call.status.status_code is StatusCode.ERROR
        assert call.attributes["error.type"] == "circuit_open"

    def test_a_spent_budget_is_an_event(self, spans, peer):
        """No retry budget left: budget_exhausted then gave_up on the call span, one attempt."""
        provider, exporter = spans
        peer.on("/items", answer(503))
        session = traced(provider, {"defaults": {**FAST_RETRY,
                                                 "budget": {"ratio": 0.0, "min_per_second": 0.0}}})
        assert session.get(peer.url("/items")).status_code == 503
        call, attempts = by_kind(exporter)
        assert len(attempts) == 1
        assert events(call) == ["budget_exhausted", "gave_up"]
        assert call.events[1].attributes["resilient_client.reason"] == "budget"


class TestListener:
    def test_a_session_without_it_holds_no_tracing_hooks(self):
        """The default session checks one attribute per call and attempt: None."""
        assert rc.ResilientSession()._bus.tracing is None
        assert rc.ResilientSession(listeners=[rc.otel_listener()])._bus.tracing is None

    def test_subscribing_and_unsubscribing_turns_spans_on_and_off(self, spans, peer):
        """session.subscribe works as listeners= does; unsubscribing stops the spans."""
        provider, exporter = spans
        peer.on("/items", answer(200))
        session = rc.ResilientSession()
        stop = session.subscribe(rc.otel_trace_listener(provider))
        session.get(peer.url("/items"))
        stop()
        session.get(peer.url("/items"))
        assert len(exporter.get_finished_spans()) == 2
        assert session._bus.tracing is None

    def test_spans_nest_under_the_callers_span_and_the_callers_stay_current(self, spans, peer):
        """The call span is a child of the application's current span, which is current again after."""
        provider, exporter = spans
        peer.on("/items", answer(200))
        tracer = provider.get_tracer("app")
        with tracer.start_as_current_span("handler") as handler:
            traced(provider).get(peer.url("/items"))
            assert trace.get_current_span() is handler
        call, _ = by_kind(exporter)
        assert call.parent is not None and call.parent.span_id == handler.get_span_context().span_id

    def test_without_opentelemetry_the_factory_says_what_to_install(self, monkeypatch):
        """A missing extra is an ImportError naming the pip extra."""
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        with pytest.raises(ImportError, match=r"resilient_client\[otel\]"):
            rc.otel_trace_listener()


@pytest.fixture
def instrumented(spans) -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    """opentelemetry-instrumentation-requests, patching requests.Session.send, on the same provider."""
    instrumentation = pytest.importorskip("opentelemetry.instrumentation.requests")
    instrumentor = instrumentation.RequestsInstrumentor()
    provider, exporter = spans
    instrumentor.instrument(tracer_provider=provider)
    try:
        yield provider, exporter
    finally:
        instrumentor.uninstrument()


class TestWithRequestsInstrumentation:
    def test_both_installed_make_no_duplicate_client_span(self, instrumented, peer):
        """Our attempt span is the request's CLIENT span; the instrumentation steps aside, injects nothing."""
        provider, exporter = instrumented
        peer.on("/items", answer(503), answer(200))
        traced(provider).get(peer.url("/items"))
        _, attempts = by_kind(exporter)
        assert len(exporter.get_finished_spans()) == 3  # the call and its two attempts, nothing else
        assert all(a.instrumentation_scope.name == "resilient_client" for a in attempts)
        assert peer.last("/items").headers["traceparent"][:-2] == traceparent_of(attempts[-1])

    def test_without_our_listener_the_instrumentation_still_sees_every_attempt(self, instrumented, peer):
        """What a user sees with only the instrumentation: one CLIENT span of theirs per attempt."""
        _, exporter = instrumented
        peer.on("/items", answer(503), answer(200))
        rc.ResilientSession({"defaults": FAST_RETRY}).get(peer.url("/items"))
        finished = exporter.get_finished_spans()
        assert [s.kind for s in finished] == [SpanKind.CLIENT, SpanKind.CLIENT]
        assert {s.instrumentation_scope.name for s in finished} == {"opentelemetry.instrumentation.requests"}

    def test_a_plain_session_keeps_its_instrumentation_span(self, instrumented, peer):
        """Our suppression is scoped to our attempts: plain requests calls are traced as before."""
        provider, exporter = instrumented
        peer.on("/items", answer(200))
        traced(provider).get(peer.url("/items"))
        requests.Session().get(peer.url("/items"))
        scopes = [s.instrumentation_scope.name for s in exporter.get_finished_spans()]
        assert scopes.count("opentelemetry.instrumentation.requests") == 1


def test_a_hedged_calls_losing_copy_has_its_attempt_span(spans, peer):
    """Both copies were on the wire: two CLIENT spans under the call, the loser's ended as abandoned."""
    import time

    from peers import delay

    provider, exporter = spans
    peer.on("/x", delay(2.0, answer(200, b"slow")), answer(200, b"fast"))
    session = traced(provider, {"defaults": {"hedge": {"delay": 0.02}, "timeout": {"total": 3.0}}})
    assert session.get(peer.url("/x")).text == "fast"
    end = time.monotonic() + 2
    while len(exporter.get_finished_spans()) < 3 and time.monotonic() < end:  # bounded
        time.sleep(0.005)
    call, (first, second) = by_kind(exporter)
    assert first.parent is not None and first.parent.span_id == call.context.span_id
    assert second.parent is not None and second.parent.span_id == call.context.span_id
    assert first.attributes["resilient_client.outcome"] == "abandoned"
    assert second.attributes["http.response.status_code"] == 200

"""Traces: otel_trace_listener against the SDK's in-memory exporter, on loopback sockets."""

from __future__ import annotations

import logging
import pickle
import sys
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
import requests
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from peers import Peer, answer, hang, redirect

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
        assert rc.ResilientSession()._bus.tracing == ()
        assert rc.ResilientSession(listeners=[rc.otel_listener()])._bus.tracing == ()

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
        assert session._bus.tracing == ()

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


class Raising(SpanProcessor):
    """A span processor whose on_start or on_end raises on CLIENT spans while armed."""

    def __init__(self, where: str) -> None:
        self.where, self.armed = where, True

    def _maybe(self, span: Any, where: str) -> None:
        if self.armed and self.where == where and span.kind is SpanKind.CLIENT:
            raise RuntimeError(f"{where} failed")

    def on_start(self, span: Any, parent_context: Any = None) -> None:
        self._maybe(span, "on_start")

    def on_end(self, span: Any) -> None:
        self._maybe(span, "on_end")


class TestTracingFailures:
    @pytest.mark.parametrize("where", ["on_start", "on_end"])
    def test_a_raising_span_processor_fails_no_request_and_frees_the_trial(self, where, peer, caplog):
        """
        The half-open trial whose span processor raises still answers the
        caller and closes the breaker: the trial is recorded, never left leased.
        """
        peer.on("/x", answer(503), answer(503), answer(200, b"ok"))
        clock = rc.testing.FakeClock()
        provider = TracerProvider()
        processor = Raising(where)
        provider.add_span_processor(processor)
        session = rc.ResilientSession(
            {"defaults": {"retry": None, "breaker": {"failure_threshold": 2, "reset_timeout": 1}}},
            listeners=[rc.otel_trace_listener(provider)], clock=clock)
        for _ in range(2):
            assert session.get(peer.url("/x")).status_code == 503
        assert session.circuit(peer.url("/x")).state == "open"
        clock.advance(2)
        with caplog.at_level(logging.ERROR, "resilient_client"):
            assert session.get(peer.url("/x")).status_code == 200  # the trial
            assert session.get(peer.url("/x")).status_code == 200
        assert session.circuit(peer.url("/x")).state == "closed"
        assert sum("tracing listener" in r.getMessage() for r in caplog.records) == 1  # logged once

    def test_a_raising_propagator_fails_no_request(self, spans, peer):
        """The request goes out without a trace context; the call span is still exported."""
        provider, exporter = spans
        peer.on("/x", answer(200))
        propagator = mock.Mock()
        propagator.inject.side_effect = ValueError("bad propagator")
        assert traced(provider, propagator=propagator).get(peer.url("/x")).status_code == 200
        assert "traceparent" not in peer.last("/x").headers
        call, _ = by_kind(exporter)
        assert call.attributes["resilient_client.outcome"] == "ok"


class TestRequestsOnTheWire:
    def test_each_redirect_hop_is_a_client_span_with_its_own_trace_context(self, spans, peer):
        """Three requests on the wire, three CLIENT spans: own url, status, traceparent, resend_count."""
        provider, exporter = spans
        peer.on("/start", redirect("/next"))
        peer.on("/next", redirect("/final", 307))
        peer.on("/final", answer(200))
        assert traced(provider).get(peer.url("/start")).status_code == 200
        finished = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
        hops = sorted(finished, key=lambda s: s.attributes.get("http.request.resend_count", 0))
        paths = ("/start", "/next", "/final")
        assert [s.attributes["url.full"] for s in hops] == [peer.url(p) for p in paths]
        assert [s.attributes["http.response.status_code"] for s in hops] == [302, 307, 200]
        assert [s.attributes.get("http.request.resend_count") for s in hops] == [None, 1, 2]
        for path, span in zip(("/start", "/next", "/final"), hops, strict=True):
            assert peer.last(path).headers["traceparent"][:-2] == traceparent_of(span)
        assert len({s.parent.span_id for s in hops}) == 1  # siblings under the call span

    def test_a_raising_response_hook_keeps_the_status_and_names_the_exception(self, spans, peer):
        """The answer came (its status is recorded); error.type is the hook's exception type."""
        provider, exporter = spans
        peer.on("/x", answer(200))

        def hook(resp: requests.Response, **kw: Any) -> None:
            raise KeyError("hook bug")

        with pytest.raises(KeyError):
            traced(provider).get(peer.url("/x"), hooks={"response": hook})
        _, [attempt] = by_kind(exporter)
        assert attempt.attributes["http.response.status_code"] == 200
        assert attempt.attributes["error.type"] == "KeyError"
        assert attempt.status.status_code is StatusCode.ERROR

    def test_url_full_redacts_user_info_and_presigned_signatures(self, spans, peer):
        """As the HTTP conventions redact url.full: REDACTED:REDACTED@, signature parameters' values."""
        provider, exporter = spans
        peer.on("/o", answer(200))
        params = ("X-Amz-Credential=AK&X-Amz-Signature=S1&X-Amz-Security-Token=T&sig=S2"
                  "&X-Goog-Signature=S3&Signature=S4&AWSAccessKeyId=AK2&keep=1")
        url = peer.url("/o?" + params).replace("http://", "http://alice:pw@")
        traced(provider).get(url)
        call, [attempt] = by_kind(exporter)
        for span in (call, attempt):
            full = span.attributes["url.full"]
            assert full.startswith("http://REDACTED:REDACTED@127.0.0.1:")
            assert not {"alice", "pw", "AK", "S1", "T", "S2", "S3", "S4", "AK2"} & set(
                v for kv in full.split("?")[1].split("&") for v in kv.split("=")[1:])
            assert full.endswith("&keep=1")


class TestWhichListenersTrace:
    def test_a_mock_is_an_ordinary_listener(self, spans, peer):
        """Only the library's tracing listeners get the span hooks: a Mock() hears events only."""
        provider, exporter = spans
        peer.on("/x", answer(200))
        m = mock.Mock()
        session = rc.ResilientSession(listeners=[m, rc.otel_trace_listener(provider)])
        session.get(peer.url("/x"))
        assert [c[0] for c in m.mock_calls] == ["", ""]  # AttemptFinished, CallFinished
        assert len(exporter.get_finished_spans()) == 2

    def test_two_tracing_listeners_both_export_and_one_twice_counts_once(self, peer):
        """Each of two listeners makes the whole trace; the same listener twice, one trace."""
        peer.on("/x", answer(503), answer(200), answer(200))
        exporters = []
        listeners = []
        for _ in range(2):
            exporter, provider = InMemorySpanExporter(), TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            exporters.append(exporter)
            listeners.append(rc.otel_trace_listener(provider))
        session = rc.ResilientSession({"defaults": FAST_RETRY}, listeners=listeners)
        session.subscribe(listeners[0])
        session.get(peer.url("/x"))
        for exporter in exporters:
            call, attempts = by_kind(exporter)
            assert len(attempts) == 2
            assert events(call) == ["retry_scheduled"]

    def test_a_listener_shared_by_two_sessions_keeps_their_spans_apart(self, spans, peer):
        """Session B called from a hook of session A: A's events stay on A's call span."""
        provider, exporter = spans
        peer.on("/a", answer(503), answer(200))
        peer.on("/b", answer(200))
        listener = rc.otel_trace_listener(provider)
        a = rc.ResilientSession({"defaults": FAST_RETRY}, listeners=[listener])
        b = rc.ResilientSession({"defaults": FAST_RETRY}, listeners=[listener])

        def hook(resp: requests.Response, **kw: Any) -> None:
            b.get(peer.url("/b"))

        a.get(peer.url("/a"), hooks={"response": hook})
        calls = {s.attributes["url.full"]: s for s in exporter.get_finished_spans()
                 if s.kind is SpanKind.INTERNAL}
        assert events(calls[peer.url("/a")]) == ["retry_scheduled"]
        assert calls[peer.url("/a")].attributes["resilient_client.attempts"] == 2
        assert events(calls[peer.url("/b")]) == []
        assert calls[peer.url("/b")].attributes["resilient_client.attempts"] == 1

    def test_a_calls_tracing_is_fixed_when_it_starts(self, spans, peer):
        """
        Subscribed mid-call: no orphan attempt span; unsubscribed mid-call:
        the call span keeps its outcome.
        """
        provider, exporter = spans
        peer.on("/x", answer(503), answer(200), answer(503), answer(200))
        listener = rc.otel_trace_listener(provider)
        session = rc.ResilientSession({"defaults": FAST_RETRY})
        held: list[Any] = []

        def subscribe(resp: requests.Response, **kw: Any) -> None:
            if not held:
                held.append(session.subscribe(listener))

        session.get(peer.url("/x"), hooks={"response": subscribe})
        assert exporter.get_finished_spans() == ()  # nothing of a call that began untraced

        def unsubscribe(resp: requests.Response, **kw: Any) -> None:
            if held:
                held.pop()()

        session.get(peer.url("/x"), hooks={"response": unsubscribe})
        call, attempts = by_kind(exporter)
        assert len(attempts) == 2
        assert call.attributes["resilient_client.outcome"] == "ok"
        assert call.attributes["resilient_client.attempts"] == 2

    def test_a_traced_session_pickles(self, spans, peer):
        """Unpickled, the listener traces again, with the global tracer provider."""
        provider, _ = spans
        session = pickle.loads(pickle.dumps(traced(provider, propagate=False)))
        [listener] = session._bus.tracing
        assert listener.injects is False
        peer.on("/x", answer(200))
        assert session.get(peer.url("/x")).status_code == 200


class TestWithHooks:
    def test_a_plain_requests_call_from_a_response_hook_is_instrumented(self, instrumented, peer):
        """The suppression covers the send only: a hook's plain call gets its span and traceparent."""
        provider, exporter = instrumented
        peer.on("/x", answer(200))
        peer.on("/audit", answer(200))

        def hook(resp: requests.Response, **kw: Any) -> None:
            requests.Session().get(peer.url("/audit"))

        traced(provider).get(peer.url("/x"), hooks={"response": hook})
        theirs = [s for s in exporter.get_finished_spans()
                  if s.instrumentation_scope.name == "opentelemetry.instrumentation.requests"]
        assert len(theirs) == 1
        _, [attempt] = by_kind(exporter)
        assert theirs[0].parent.span_id == attempt.context.span_id  # under the attempt that ran the hook
        assert peer.last("/audit").headers["traceparent"][:-2] == traceparent_of(theirs[0])


class TestHedges:
    def test_each_hedge_copy_is_its_own_client_span(self, spans, peer):
        """A hedged attempt's copies run at once: each its own CLIENT span and traceparent, all ended."""
        from peers import delay

        provider, exporter = spans
        peer.on("/x", delay(0.5, answer(200, b"slow")), answer(200, b"fast"))
        session = rc.ResilientSession({"defaults": {"hedge": {"delay": 0.02}, "timeout": {"total": 3.0}}},
                                      listeners=[rc.otel_trace_listener(provider)])
        assert session.get(peer.url("/x")).text == "fast"
        for _ in range(200):  # bounded: the abandoned copy ends its span on its own thread
            clients = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.CLIENT]
            if len(clients) == 2:
                break
            time.sleep(0.01)
        [call] = [s for s in exporter.get_finished_spans() if s.kind is SpanKind.INTERNAL]
        assert len(clients) == 2
        assert {s.parent.span_id for s in clients} == {call.context.span_id}
        wire = {r.headers["traceparent"][:-2] for r in peer.requests if r.path == "/x"}
        assert wire == {traceparent_of(s) for s in clients}


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

"""Events: each kind emitted where it should be, config listeners, the logging listener."""

from __future__ import annotations

import logging
from typing import Any

import obs_support
import pytest
import requests
import responses
from urllib3.exceptions import NewConnectionError

import resilient_client as rc
from resilient_client import (
    AttemptFinished,
    BreakerRejected,
    BreakerStateChanged,
    BudgetExhausted,
    BulkheadRejected,
    CallFinished,
    DeadlinePassed,
    FallbackServed,
    GaveUp,
    RetryScheduled,
)
from resilient_client.testing import FakeClock

URL = "http://api.test/items"
NO_JITTER = {"backoff": {"initial": 0.1, "multiplier": 2.0, "max": 1.0, "jitter": "none"}}


def refused() -> requests.ConnectionError:
    """What requests raises when the peer refuses the connection."""
    return requests.ConnectionError(NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]


def make(config: dict[str, Any] | None = None,
         **kwargs: Any) -> tuple[rc.ResilientSession, list[Any], FakeClock]:
    clock = FakeClock(1000.0)
    events: list[Any] = []
    session = rc.ResilientSession(config, clock=clock, listeners=[events.append], **kwargs)
    return session, events, clock


def kinds(events: list[Any]) -> list[str]:
    return [e.kind for e in events]


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


class TestEmittedEvents:
    def test_success_makes_one_attempt_and_one_call_event(self, mocked):
        """A call answered at once emits attempt_finished then call_finished, nothing else."""
        mocked.add(responses.GET, URL, status=200)
        session, events, _ = make()
        session.get(URL)
        assert kinds(events) == ["attempt_finished", "call_finished"]
        attempt, call = events
        assert (attempt.attempt, attempt.outcome, attempt.status, attempt.error) == (1, "ok", 200, None)
        assert (call.attempts, call.outcome, call.status, call.fallback) == (1, "ok", 200, False)
        assert call.endpoint == "http://api.test:80"

    def test_retries_carry_delay_and_reason(self, mocked):
        """Each retry is announced with the delay actually slept and the failure that caused it."""
        for status in (503, 502, 200):
            mocked.add(responses.GET, URL, status=status)
        session, events, clock = make({"defaults": {"retry": NO_JITTER}})
        assert session.get(URL).status_code == 200
        assert kinds(events) == ["attempt_finished", "retry_scheduled", "attempt_finished",
                                 "retry_scheduled", "attempt_finished", "call_finished"]
        retries = [e for e in events if isinstance(e, RetryScheduled)]
        assert [(r.attempt, r.reason) for r in retries] == [(1, "status 503"), (2, "status 502")]
        assert [r.delay for r in retries] == clock.sleeps == [0.1, 0.2]
        assert events[-1].attempts == 3 and events[-1].outcome == "ok"

    def test_exhausted_retries_give_up_with_the_last_outcome(self, mocked):
        """When attempts run out, gave_up says why and what the last attempt did."""
        mocked.add(responses.GET, URL, status=503)
        session, events, _ = make({"defaults": {"retry": NO_JITTER}})
        assert session.get(URL).status_code == 503
        gave_up = [e for e in events if isinstance(e, GaveUp)]
        assert [(g.reason, g.outcome, g.attempts) for g in gave_up] == [("attempts", "status 503", 3)]
        assert (events[-1].outcome, events[-1].status) == ("status", 503)

    def test_a_connect_error_is_retried_with_its_kind_as_reason(self, mocked):
        """A refused connection is retried and reported as connect_error, then gives up."""
        mocked.add(responses.GET, URL, body=refused())
        session, events, _ = make({"defaults": {"retry": {**NO_JITTER, "attempts": 2}}})
        with pytest.raises(requests.ConnectionError):
            session.get(URL)
        assert [e.outcome for e in events if isinstance(e, AttemptFinished)] == ["connect_error"] * 2
        assert [e.reason for e in events if isinstance(e, RetryScheduled)] == ["connect_error"]
        assert [e.error for e in events if isinstance(e, AttemptFinished)] == ["ConnectionError"] * 2
        assert events[-1].outcome == "connect_error" and events[-1].status is None

    def test_a_spent_budget_is_announced_before_giving_up(self, mocked):
        """With no retry budget left, budget_exhausted then gave_up(reason=budget) are emitted."""
        mocked.add(responses.GET, URL, status=503)
        session, events, _ = make({"defaults": {"retry": NO_JITTER,
                                                "budget": {"ratio": 0.0, "min_per_second": 0.0}}})
        session.get(URL)
        assert kinds(events) == ["attempt_finished", "budget_exhausted", "gave_up", "call_finished"]
        assert isinstance(events[1], BudgetExhausted) and events[1].attempt == 1
        assert events[2].reason == "budget"

    def test_breaker_opens_then_rejects_without_an_attempt(self, mocked):
        """The breaker's move is an event, and a refused call has no attempt and gives nothing up."""
        mocked.add(responses.GET, URL, body=refused())
        breaker = {"failure_threshold": 2, "reset_timeout": 30}
        session, events, clock = make({"defaults": {"retry": None, "breaker": breaker}})
        with pytest.raises(requests.ConnectionError):
            session.get(URL)
        events.clear()
        with pytest.raises(requests.ConnectionError):
            session.get(URL)
        # The attempt is reported before what the breaker made of it.
        assert kinds(events) == ["attempt_finished", "breaker_state_changed", "gave_up", "call_finished"]
        change = events[1]
        assert (change.old, change.new, change.failures) == ("closed", "open", 2)
        assert (events[2].reason, events[2].outcome) == ("no_retry", "connect_error")
        events.clear()
        with pytest.raises(rc.CircuitOpenError):
            session.get(URL)
        assert kinds(events) == ["breaker_rejected", "call_finished"]
        assert isinstance(events[0], BreakerRejected)
        assert events[0].retry_in == pytest.approx(30)
        assert events[0].retry_at == pytest.approx(clock.monotonic() + 30)  # deprecated alias
        assert "retry_in=30" in rc._events.format_event(events[0])
        assert "retry_at" not in rc._events.format_event(events[0])
        assert (events[1].outcome, events[1].attempts) == ("circuit_open", 0)

    def test_a_breaker_opened_by_the_attempt_stops_the_retries(self, mocked):
        """When an attempt opens the breaker, no backoff is slept and gave_up says breaker_open."""
        mocked.add(responses.GET, URL, body=refused())
        session, events, clock = make({"defaults": {"retry": NO_JITTER, "breaker": {"failure_threshold": 1}}})
        with pytest.raises(requests.ConnectionError):
            session.get(URL)
        assert kinds(events) == ["attempt_finished", "breaker_state_changed", "gave_up", "call_finished"]
        gave_up = events[2]
        assert (gave_up.reason, gave_up.outcome, gave_up.attempts) == ("breaker_open", "connect_error", 1)
        assert clock.sleeps == []

    def test_a_breaker_opened_during_the_backoff_is_why_retries_stopped(self, mocked):
        """A breaker opened elsewhere while a call slept refuses its retry, and gave_up says so."""
        mocked.add(responses.GET, URL, status=503)
        session, events, _ = make({"defaults": {"retry": NO_JITTER}})
        session.subscribe(lambda e: session.circuit(URL).open() if isinstance(e, RetryScheduled) else None)
        with pytest.raises(rc.CircuitOpenError):
            session.get(URL)
        assert kinds(events) == ["attempt_finished", "retry_scheduled", "breaker_state_changed",
                                 "breaker_rejected", "gave_up", "call_finished"]
        gave_up = events[4]
        assert (gave_up.reason, gave_up.outcome, gave_up.attempts) == ("breaker_open", "circuit_open", 1)
        assert (events[-1].outcome, events[-1].attempts) == ("circuit_open", 1)

    def test_fallback_after_failure_is_reported_with_what_it_replaced(self, mocked):
        """A static fallback emits fallback_served naming the error, and the call event says fallback."""
        mocked.add(responses.GET, URL, body=refused())
        session, events, _ = make({"defaults": {"retry": None, "fallback": {"status": 200, "json": []}}})
        resp = session.get(URL)
        assert resp.is_fallback and resp.attempts == 1
        served = [e for e in events if isinstance(e, FallbackServed)]
        assert len(served) == 1 and served[0].fallback == "static"
        assert served[0].error.startswith("ConnectionError: ")
        call = events[-1]
        assert (call.outcome, call.status, call.fallback, call.attempts) == ("connect_error", 200, True, 1)

    def test_fallback_for_a_failure_status_keeps_status_as_outcome(self, mocked):
        """A 500 replaced by a fallback is a call with outcome status and fallback true."""
        mocked.add(responses.GET, URL, status=500)
        session, events, _ = make({"defaults": {"retry": None, "fallback": {"status": 203, "text": "x"}}})
        assert session.get(URL).status_code == 203
        assert [e.error for e in events if isinstance(e, FallbackServed)] == ["status 500"]
        assert (events[-1].outcome, events[-1].status, events[-1].fallback) == ("status", 203, True)

    def test_open_breaker_fallback_made_without_any_try_has_zero_attempts(self, mocked):
        """A fallback served because the breaker is open reports attempts == 0, as the contract says."""
        mocked.add(responses.GET, URL, status=200)
        session, events, _ = make({"defaults": {"fallback": {"status": 200, "text": "cached"}}})
        session.circuit(URL).open()
        resp = session.get(URL)
        assert resp.is_fallback and resp.attempts == 0
        assert kinds(events) == ["breaker_state_changed", "breaker_rejected", "fallback_served",
                                 "call_finished"]
        assert (events[-1].outcome, events[-1].attempts, events[-1].fallback) == ("circuit_open", 0, True)

    def test_bulkhead_rejection_is_an_event_and_a_call_outcome(self, mocked):
        """A call beyond max_concurrent emits bulkhead_rejected and a call_finished(bulkhead_full)."""
        mocked.add(responses.GET, URL, status=200)
        session, events, _ = make({"defaults": {"bulkhead": {"max_concurrent": 1}}})
        inner: list[BaseException] = []

        def call_again_while_in_flight(event: Any) -> None:
            # The first call still holds the only slot while its attempt is reported.
            if isinstance(event, AttemptFinished) and not inner:
                try:
                    session.get(URL)
                except rc.BulkheadFull as e:
                    inner.append(e)

        session.subscribe(call_again_while_in_flight)
        session.get(URL)
        assert len(inner) == 1
        rejected = [e for e in events if isinstance(e, BulkheadRejected)]
        assert len(rejected) == 1 and rejected[0].max_concurrent == 1
        calls = [e for e in events if isinstance(e, CallFinished)]
        assert [(c.outcome, c.attempts) for c in calls] == [("bulkhead_full", 0), ("ok", 1)]

    def test_deadline_passing_mid_attempt_is_an_event(self, mocked):
        """An attempt that runs past total emits deadline_passed and the call ends with outcome deadline."""
        session, events, clock = make({"defaults": {"timeout": {"total": 1.0}}})

        def slow(request: Any) -> Any:
            clock.advance(1.5)
            raise requests.ReadTimeout("read timed out")

        mocked.add_callback(responses.GET, URL, callback=slow)
        with pytest.raises(rc.DeadlineExceeded):
            session.get(URL)
        passed = [e for e in events if isinstance(e, DeadlinePassed)]
        assert [(p.total, p.attempts) for p in passed] == [(1.0, 1)]
        assert events[-1].outcome == "deadline"
        assert events[-1].duration == pytest.approx(1.5)

    def test_durations_come_from_the_session_clock(self, mocked):
        """Attempt and call durations are measured on the injected clock, backoff included."""
        session, events, clock = make({"defaults": {"retry": NO_JITTER}})
        statuses = iter([503, 200])

        def answer(request: Any) -> Any:
            clock.advance(0.25)
            return (next(statuses), {}, "")

        mocked.add_callback(responses.GET, URL, callback=answer)
        session.get(URL)
        assert [e.duration for e in events if isinstance(e, AttemptFinished)] == [0.25, 0.25]
        assert events[-1].duration == pytest.approx(0.25 + 0.1 + 0.25)

    def test_events_are_frozen_and_describe_themselves(self):
        """Events cannot be changed, and as_dict gives every field plus the kind."""
        e = RetryScheduled("inv", "GET", URL, 1, 0.5, "status 503")
        with pytest.raises(AttributeError):
            e.delay = 1.0  # type: ignore[misc]
        assert e.as_dict() == {"endpoint": "inv", "method": "GET", "url": URL, "attempt": 1,
                               "delay": 0.5, "reason": "status 503", "event": "retry_scheduled"}

    def test_every_outcome_is_in_the_closed_vocabulary(self, mocked):
        """outcome_of maps our errors and requests' errors onto OUTCOMES only."""
        from resilient_client._outcome import outcome_of

        errors = [rc.DeadlineExceeded("e", 1.0), rc.CircuitOpenError("e"), rc.BulkheadFull("e", 1),
                  requests.ConnectTimeout(), requests.ReadTimeout(), refused(), ValueError("x"),
                  requests.exceptions.InvalidURL("x")]
        got = [outcome_of(e) for e in errors]
        assert got == ["deadline", "circuit_open", "bulkhead_full", "connect_timeout",
                       "read_timeout", "connect_error", "error", "error"]
        assert set(got) <= set(rc.OUTCOMES)


class TestConfigListeners:
    @pytest.mark.parametrize("spec", ["obs_support:record", "obs_support.record"])
    def test_a_dotted_path_in_config_is_subscribed(self, mocked, spec):
        """Both 'module:attr' and 'module.attr' name a listener that receives every event."""
        mocked.add(responses.GET, URL, status=200)
        obs_support.RECORDED.clear()
        session = rc.ResilientSession({"listeners": [spec]})
        session.get(URL)
        assert [e.kind for e in obs_support.RECORDED] == ["attempt_finished", "call_finished"]

    def test_config_listeners_run_before_constructor_listeners(self, mocked):
        """Listeners named in the config are called first, then those passed to the session."""
        mocked.add(responses.GET, URL, status=200)
        obs_support.RECORDED.clear()
        order: list[str] = []
        session = rc.ResilientSession(
            {"listeners": ["obs_support:record"]},
            listeners=[lambda e: order.append(f"ctor:{len(obs_support.RECORDED)}")],
        )
        session.get(URL)
        assert order == ["ctor:1", "ctor:2"]

    @pytest.mark.parametrize(
        ("spec", "problem"),
        [
            ("no_such_module_xyz:listener",
             "cannot import 'no_such_module_xyz:listener': ModuleNotFoundError"),
            ("obs_support:no_such_name", "cannot import 'obs_support:no_such_name': AttributeError"),
            ("obs_support:NOT_CALLABLE", "'obs_support:NOT_CALLABLE' is not callable, got 42"),
        ],
    )
    def test_an_unimportable_listener_fails_at_session_construction(self, spec, problem):
        """A listener path that cannot be used is a ConfigError naming listeners[i]."""
        with pytest.raises(rc.ConfigError) as info:
            rc.ResilientSession({"listeners": ["obs_support:record", spec]})
        assert info.value.path == "listeners[1]"
        assert info.value.problem.startswith(problem)

    @pytest.mark.parametrize("factory", ["resilient_client:otel_trace_listener",
                                         "resilient_client:prometheus_listener",
                                         "resilient_client.otel_listener"])
    def test_a_listener_factory_named_instead_of_a_listener_is_a_config_error(self, factory):
        """The factory would be called with each event: refused, saying what to name instead."""
        with pytest.raises(rc.ConfigError) as info:
            rc.ResilientSession({"listeners": [factory]})
        assert info.value.path == "listeners[0]"
        assert "names the factory" in info.value.problem
        assert "listener = resilient_client." in info.value.problem

    @pytest.mark.parametrize("bad", ["has space:x", "1abc", "a:b:c", "", 3, ["x"]])
    def test_a_malformed_listener_entry_fails_when_the_config_loads(self, bad):
        """A listener entry that is not a dotted path is refused by Config.load, path included."""
        with pytest.raises(rc.ConfigError) as info:
            rc.Config.load({"listeners": [bad]})
        assert info.value.path == "listeners[0]"

    def test_listeners_must_be_a_list(self):
        """A single string instead of a list is refused, naming the key."""
        with pytest.raises(rc.ConfigError, match=r"^listeners: must be a list"):
            rc.Config.load({"listeners": "obs_support:record"})

    def test_a_callable_may_be_given_in_python(self, mocked):
        """A Config built in Python may hold the listener itself."""
        mocked.add(responses.GET, URL, status=200)
        seen: list[Any] = []
        session = rc.ResilientSession(rc.Config(listeners=(seen.append,)))
        session.get(URL)
        assert len(seen) == 2


class TestFailingListener:
    def test_a_raising_listener_never_breaks_the_call_and_is_logged_once(self, mocked, caplog):
        """A listener that always raises is logged once, and the calls and other listeners go on."""
        mocked.add(responses.GET, URL, status=200)

        def broken(event: Any) -> None:
            raise RuntimeError("listener bug")

        after: list[Any] = []
        session = rc.ResilientSession(listeners=[broken, after.append])
        with caplog.at_level(logging.ERROR, logger="resilient_client"):
            for _ in range(3):
                assert session.get(URL).status_code == 200
        errors = [r for r in caplog.records if r.levelno == logging.ERROR]
        assert len(errors) == 1
        assert "raised on attempt_finished" in errors[0].getMessage()
        assert errors[0].exc_info is not None and "listener bug" in str(errors[0].exc_info[1])
        assert len(after) == 6

    def test_two_raising_listeners_are_each_logged_once(self, mocked, caplog):
        """The once-only rule is per listener, not per session."""
        mocked.add(responses.GET, URL, status=200)

        def a(event: Any) -> None:
            raise ValueError("a")

        def b(event: Any) -> None:
            raise ValueError("b")

        session = rc.ResilientSession(listeners=[a, b])
        with caplog.at_level(logging.ERROR, logger="resilient_client"):
            session.get(URL)
            session.get(URL)
        assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 2

    def test_unsubscribe_stops_delivery(self, mocked):
        """The function returned by subscribe removes the listener."""
        mocked.add(responses.GET, URL, status=200)
        seen: list[Any] = []
        session = rc.ResilientSession()
        stop = session.subscribe(seen.append)
        session.get(URL)
        stop()
        session.get(URL)
        assert len(seen) == 2


class TestLogging:
    def test_log_records_carry_structured_fields(self, mocked, caplog):
        """Each event is one record on 'resilient_client' with rc_-prefixed fields in extra."""
        mocked.add(responses.GET, URL, status=503)
        mocked.add(responses.GET, URL, status=200)
        session = rc.ResilientSession({"defaults": {"retry": NO_JITTER}}, clock=FakeClock(1000.0))
        with caplog.at_level(logging.DEBUG, logger="resilient_client"):
            session.get(URL + "?page=2")
        records = [r for r in caplog.records if r.name == "resilient_client"]
        by_event = {r.rc_event: r for r in records}  # type: ignore[attr-defined]
        assert list(by_event) == ["attempt_finished", "retry_scheduled", "call_finished"]
        retry = by_event["retry_scheduled"]
        assert retry.levelno == logging.INFO
        assert (retry.rc_endpoint, retry.rc_method, retry.rc_url, retry.rc_attempt, retry.rc_delay) == (  # type: ignore[attr-defined]
            "http://api.test:80", "GET", URL + "?page=2", 1, 0.1)
        assert by_event["call_finished"].rc_outcome == "ok"  # type: ignore[attr-defined]
        assert by_event["attempt_finished"].levelno == logging.DEBUG
        assert retry.getMessage().startswith("retry_scheduled endpoint=http://api.test:80 method=GET")

    def test_levels_keep_per_call_noise_at_debug(self):
        """Per-call events log at DEBUG, breaker moves and give-ups at WARNING."""
        from resilient_client._events import _LEVELS

        assert _LEVELS[AttemptFinished] == _LEVELS[CallFinished] == logging.DEBUG
        assert _LEVELS[RetryScheduled] == _LEVELS[BreakerRejected] == _LEVELS[FallbackServed] == logging.INFO
        assert _LEVELS[BreakerStateChanged] == _LEVELS[GaveUp] == logging.WARNING
        assert set(_LEVELS) == set(rc.Event.__subclasses__())

    def test_per_call_events_are_only_built_when_someone_listens(self, mocked, caplog):
        """With only the logging listener and DEBUG off, the hot path builds no per-call event."""
        from resilient_client._events import EventBus

        bus = EventBus()
        with caplog.at_level(logging.INFO, logger="resilient_client"):
            assert not bus.wants_hot()
        with caplog.at_level(logging.DEBUG, logger="resilient_client"):
            assert bus.wants_hot()
        bus.subscribe(lambda e: None)
        with caplog.at_level(logging.INFO, logger="resilient_client"):
            assert bus.wants_hot()

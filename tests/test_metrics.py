"""Metrics: Prometheus scraped from a real registry, OpenTelemetry through an in-memory SDK reader."""

from __future__ import annotations

import pathlib
import pickle
import subprocess
import sys
from typing import Any

import pytest
import requests
import responses
from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from urllib3.exceptions import NewConnectionError

import resilient_client as rc
from resilient_client._metrics import PROMETHEUS_METRICS
from resilient_client.testing import FakeClock

ROOT = pathlib.Path(__file__).resolve().parents[1]
URL = "http://api.test:8080/items"
EP = "inventory"
CONFIG = {
    "defaults": {"retry": {"attempts": 3, "backoff": {"initial": 0.1, "max": 0.1, "jitter": "none"}}},
    "endpoints": [{"name": EP, "match": "http://api.test:8080/",
                   "breaker": {"failure_threshold": 3, "reset_timeout": 30}}],
}


def refused() -> requests.ConnectionError:
    return requests.ConnectionError(NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    """One sample of the scrape, as a Prometheus query would read it."""
    return registry.get_sample_value(f"resilient_client_{name}", labels)


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


def run_scenario(mocked: responses.RequestsMock, listener: Any) -> rc.ResilientSession:
    """503 then 200 (one retry); then three refused (breaker opens); then one rejected call."""
    clock = FakeClock(1000.0)
    session = rc.ResilientSession(CONFIG, clock=clock, listeners=[listener])
    mocked.add(responses.GET, URL, status=503)
    mocked.add(responses.GET, URL, status=200)
    assert session.get(URL).status_code == 200
    mocked.replace(responses.GET, URL, body=refused())
    with pytest.raises(requests.ConnectionError):
        session.get(URL)
    with pytest.raises(rc.CircuitOpenError):
        session.get(URL)
    return session


class TestPrometheus:
    def test_counters_and_histograms_after_a_scenario(self, mocked):
        """Requests, attempts, retries, rejections and latencies are counted per endpoint and outcome."""
        registry = CollectorRegistry()
        run_scenario(mocked, rc.prometheus_listener(registry))

        def value(name: str, **labels: str) -> float | None:
            return registry.get_sample_value(f"resilient_client_{name}", labels)

        assert value("requests_total", endpoint=EP, method="GET", outcome="ok") == 1
        assert value("requests_total", endpoint=EP, method="GET", outcome="connect_error") == 1
        assert value("requests_total", endpoint=EP, method="GET", outcome="circuit_open") == 1
        assert value("attempts_total", endpoint=EP, method="GET", outcome="status") == 1
        assert value("attempts_total", endpoint=EP, method="GET", outcome="ok") == 1
        # The refused call: attempts 1..3 fail, the third opens the breaker.
        assert value("attempts_total", endpoint=EP, method="GET", outcome="connect_error") == 3
        assert value("retries_total", endpoint=EP, reason="status 503") == 1
        assert value("retries_total", endpoint=EP, reason="connect_error") == 2
        assert value("gave_up_total", endpoint=EP, reason="attempts") == 1
        assert value("rejections_total", endpoint=EP, by="breaker", scope="process") == 1
        assert value("breaker_state", endpoint=EP, state="open") == 1
        assert value("breaker_state", endpoint=EP, state="closed") == 0
        assert value("breaker_transitions_total", endpoint=EP, state="open", scope="process") == 1
        get = {"endpoint": EP, "method": "GET"}
        assert value("attempt_duration_seconds_count", **get, outcome="connect_error") == 3
        # Durations are on the session's clock: the 0.1 s backoff is in the call's latency.
        assert value("request_duration_seconds_sum", **get, outcome="ok") == pytest.approx(0.1)
        assert value("request_duration_seconds_bucket", **get, outcome="ok", le="0.05") == 0
        assert value("request_duration_seconds_bucket", **get, outcome="ok", le="0.25") == 1

    def test_fallbacks_and_bulkhead_rejections_are_counted(self, mocked):
        """A fallback is counted by kind and a full bulkhead as a rejection."""
        registry = CollectorRegistry()
        session = rc.ResilientSession(
            {"defaults": {"retry": None, "bulkhead": {"max_concurrent": 1},
                          "fallback": {"status": 200, "text": "later"}}},
            listeners=[rc.prometheus_listener(registry)],
        )
        mocked.add(responses.GET, URL, status=500)
        done: list[int] = []

        def nested(event: Any) -> None:
            if isinstance(event, rc.AttemptFinished) and not done:
                done.append(session.get(URL).status_code)  # the slot is held: fallback

        session.subscribe(nested)
        session.get(URL)
        ep = "http://api.test:8080"
        assert sample(registry, "fallbacks_total", endpoint=ep, fallback="static") == 2
        assert sample(registry, "rejections_total", endpoint=ep, by="bulkhead", scope="process") == 1
        assert sample(registry, "requests_total", endpoint=ep, method="GET", outcome="bulkhead_full") == 1

    def test_the_scrape_has_exactly_the_documented_metrics(self, mocked):
        """What a Prometheus server scrapes parses, with the documented names, types and labels."""
        registry = CollectorRegistry()
        run_scenario(mocked, rc.prometheus_listener(registry))
        families = {f.name: f for f in text_string_to_metric_families(generate_latest(registry).decode())
                    if not f.name.endswith("_created")}  # prometheus_client's own creation stamps
        expected = {}
        for name, (kind, labels, _) in PROMETHEUS_METRICS.items():
            base = name[: -len("_total")] if kind == "counter" else name
            expected[f"resilient_client_{base}"] = (kind, set(labels))
        assert set(families) == set(expected)
        for name, family in families.items():
            kind, labels = expected[name]
            assert family.type == kind
            if family.samples:  # a labelled metric shows no sample before its first event
                assert {k for s in family.samples for k in s.labels} - {"le"} == labels, name

    def test_listeners_for_one_registry_share_their_collectors(self, mocked):
        """Two sessions, each with its own listener on one registry, add up instead of clashing."""
        registry = CollectorRegistry()
        mocked.add(responses.GET, URL, status=200)
        for _ in range(2):
            rc.ResilientSession(listeners=[rc.prometheus_listener(registry)]).get(URL)
        assert registry.get_sample_value(
            "resilient_client_requests_total",
            {"endpoint": "http://api.test:8080", "method": "GET", "outcome": "ok"}) == 2

    def test_prefix_names_every_metric(self, mocked):
        """The prefix replaces resilient_client in every name."""
        registry = CollectorRegistry()
        mocked.add(responses.GET, URL, status=200)
        rc.ResilientSession(listeners=[rc.prometheus_listener(registry, prefix="svc_out")]).get(URL)
        names = {f.name for f in text_string_to_metric_families(generate_latest(registry).decode())}
        assert names and all(n.startswith("svc_out_") for n in names)

    def test_breaker_gauge_follows_forced_moves(self):
        """Opening and closing a breaker by hand moves the state gauge."""
        registry = CollectorRegistry()
        session = rc.ResilientSession(CONFIG, listeners=[rc.prometheus_listener(registry)])
        breaker = session.circuit(EP)
        breaker.open()
        assert sample(registry, "breaker_state", endpoint=EP, state="open") == 1
        breaker.close()
        assert sample(registry, "breaker_state", endpoint=EP, state="open") == 0
        assert sample(registry, "breaker_state", endpoint=EP, state="closed") == 1

    def test_counter_series_start_at_zero_so_the_first_increment_shows(self, mocked):
        """
        rate() and increase() need a sample before the first increment: the
        counters by outcome of an (endpoint, method), and every breaker
        state's transitions, exist at 0 from the first event.
        """
        registry = CollectorRegistry()
        run_scenario(mocked, rc.prometheus_listener(registry))
        get = {"endpoint": EP, "method": "GET"}
        for outcome in rc.OUTCOMES:
            assert sample(registry, "requests_total", **get, outcome=outcome) is not None, outcome
            assert sample(registry, "attempts_total", **get, outcome=outcome) is not None, outcome
        assert sample(registry, "requests_total", **get, outcome="read_timeout") == 0
        scope = {"scope": "process"}
        assert sample(registry, "breaker_transitions_total", endpoint=EP, state="half-open", **scope) == 0
        assert sample(registry, "breaker_transitions_total", endpoint=EP, state="closed", **scope) == 0

    def test_a_session_with_the_listener_pickles(self, mocked):
        """The default registry's listener is rebuilt on unpickling and counts into the same collectors."""
        session = rc.ResilientSession(listeners=[rc.prometheus_listener(prefix="rc_pickled")])
        mocked.add(responses.GET, URL, status=200)
        copy = pickle.loads(pickle.dumps(session))
        copy.get(URL)
        assert REGISTRY.get_sample_value("rc_pickled_requests_total", {
            "endpoint": "http://api.test:8080", "method": "GET", "outcome": "ok"}) == 1

    def test_without_prometheus_client_the_factory_says_what_to_install(self, monkeypatch):
        """A missing extra is an ImportError naming the pip extra."""
        monkeypatch.setitem(sys.modules, "prometheus_client", None)
        with pytest.raises(ImportError, match=r"resilient_client\[prometheus\]"):
            rc.prometheus_listener()


def otel_reader() -> tuple[Any, Any]:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    return MeterProvider(metric_readers=[reader]), reader


def otel_points(reader: Any) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    out: dict[str, list[Any]] = {}
    for rm in data.resource_metrics:
        for sm in rm.scope_metrics:
            assert sm.scope.name == "resilient_client"
            for m in sm.metrics:
                out.setdefault(m.name, []).extend(m.data.data_points)
    return out


class TestOpenTelemetry:
    def test_http_client_duration_follows_the_semantic_conventions(self, mocked):
        """Each attempt is one http.client.request.duration point with the convention's attributes."""
        provider, reader = otel_reader()
        run_scenario(mocked, rc.otel_listener(provider))
        points = otel_points(reader)
        by_attrs = {tuple(sorted(p.attributes.items())): p for p in points["http.client.request.duration"]}
        base = {"http.request.method": "GET", "server.address": "api.test", "server.port": 8080,
                "network.protocol.version": "1.1", "resilient_client.endpoint": EP}
        ok = by_attrs[tuple(sorted({**base, "http.response.status_code": 200}.items()))]
        status_503 = {**base, "http.response.status_code": 503, "error.type": "503"}
        failed = by_attrs[tuple(sorted(status_503.items()))]
        refused_ = by_attrs[tuple(sorted({**base, "error.type": "connect_error"}.items()))]
        assert (ok.count, failed.count, refused_.count) == (1, 1, 3)
        assert len(by_attrs) == 3
        # The conventions' advised buckets.
        assert list(ok.explicit_bounds)[:3] == [0.005, 0.01, 0.025]

    def test_resilience_counters_and_breaker_state(self, mocked):
        """Retries, rejections, give-ups, call durations and the breaker state gauge are recorded."""
        provider, reader = otel_reader()
        run_scenario(mocked, rc.otel_listener(provider))
        points = otel_points(reader)

        def total(name: str, **attrs: Any) -> float:
            return sum(p.value for p in points[name]
                       if all(p.attributes.get(k) == v for k, v in attrs.items()))

        assert total("resilient_client.retries", **{"resilient_client.reason": "connect_error"}) == 2
        assert total("resilient_client.rejections", **{"resilient_client.rejected_by": "breaker",
                                                       "resilient_client.scope": "process"}) == 1
        assert total("resilient_client.gave_up", **{"resilient_client.reason": "attempts"}) == 1
        calls = {p.attributes["resilient_client.outcome"]: p.count
                 for p in points["resilient_client.call.duration"]}
        assert calls == {"ok": 1, "connect_error": 1, "circuit_open": 1}
        states = {p.attributes["resilient_client.breaker.state"]: p.value
                  for p in points["resilient_client.breaker.state"]}
        assert states == {"closed": 0, "open": 1, "half-open": 0}

    def test_works_against_any_meter_implementing_the_api(self, mocked):
        """Given a meter (here a fake one), the listener records through it and nothing else."""
        recorded: list[tuple[str, float, dict[str, Any]]] = []

        class Instrument:
            def __init__(self, name: str) -> None:
                self.name = name

            def record(self, value: float, attributes: dict[str, Any]) -> None:
                recorded.append((self.name, value, attributes))

            add = record

        class FakeMeter:
            def create_histogram(self, name: str, **kw: Any) -> Instrument:
                return Instrument(name)

            create_counter = create_histogram

            def create_observable_gauge(self, name: str, **kw: Any) -> None:
                return None

        mocked.add(responses.GET, URL, status=200)
        rc.ResilientSession(listeners=[rc.otel_listener(meter=FakeMeter())]).get(URL + "?q=1")
        names = [r[0] for r in recorded]
        assert names == ["http.client.request.duration", "resilient_client.call.duration"]
        assert recorded[0][2]["server.port"] == 8080 and recorded[0][2]["http.response.status_code"] == 200

    def test_an_unknown_method_is_reported_as_other(self, mocked):
        """Methods outside the known set are _OTHER, with the original kept aside."""
        provider, reader = otel_reader()
        mocked.add("PURGE", URL, status=200)
        rc.ResilientSession(listeners=[rc.otel_listener(provider)]).request("PURGE", URL)
        [point] = otel_points(reader)["http.client.request.duration"]
        assert point.attributes["http.request.method"] == "_OTHER"
        assert point.attributes["http.request.method_original"] == "PURGE"


class TestLazyExtras:
    def test_importing_and_using_the_package_imports_no_metrics_library(self):
        """A process that builds a session and never asks for metrics never imports their packages."""
        code = (
            # pybreaker imports redis when it is installed, and redis-py imports the
            # OpenTelemetry SDK when that is installed: their choice, not ours.
            "import sys; sys.modules['redis'] = None\n"
            "import resilient_client as rc\n"
            "s = rc.ResilientSession({'defaults': {'retry': None}})\n"
            "s.health()\n"
            "extras = ('prometheus_client', 'opentelemetry')\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in extras))\n"
        )
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                             timeout=60)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "[]"

    def test_without_opentelemetry_the_factory_says_what_to_install(self, monkeypatch):
        """A missing extra is an ImportError naming the pip extra."""
        monkeypatch.setitem(sys.modules, "opentelemetry", None)
        with pytest.raises(ImportError, match=r"resilient_client\[otel\]"):
            rc.otel_listener()

    def test_the_docs_table_lists_every_metric(self):
        """docs/observability.md documents each Prometheus metric with its labels."""
        doc = (ROOT / "docs" / "observability.md").read_text(encoding="utf-8")
        for name, (kind, labels, _) in PROMETHEUS_METRICS.items():
            row = f"| `resilient_client_{name}` | {kind} | {', '.join(f'`{label}`' for label in labels)} |"
            assert row in doc, row


class TestScope:
    def test_host_state_says_host_in_events_and_labels(self, mocked, tmp_path: pathlib.Path) -> None:
        """state: host: the breaker's transition and rejection, and the bulkhead's, say scope host."""
        registry = CollectorRegistry()
        events: list[Any] = []
        session = rc.ResilientSession(
            {"state_dir": str(tmp_path),
             "defaults": {"state": "host", "retry": None, "bulkhead": {"max_concurrent": 1},
                          "breaker": {"failure_threshold": 1, "reset_timeout": 60}},
             # Named: an unmatched origin's state stays in the process.
             "endpoints": [{"name": "api", "match": "http://api.test:8080/"}]},
            listeners=[rc.prometheus_listener(registry), events.append],
        )
        mocked.add(responses.GET, URL, status=503)
        held: list[BaseException] = []

        def nested(event: Any) -> None:
            if isinstance(event, rc.AttemptFinished) and not held:
                try:
                    session.get(URL)  # the slot is held: the bulkhead refuses
                except rc.BulkheadFull as exc:
                    held.append(exc)

        session.subscribe(nested)
        session.get(URL)
        with pytest.raises(rc.CircuitOpenError):
            session.get(URL)
        ep = "api"
        kinds = {type(e).__name__: e.scope for e in events if hasattr(e, "scope")}
        assert kinds == {"BulkheadRejected": "host", "BreakerStateChanged": "host", "BreakerRejected": "host"}
        assert sample(registry, "rejections_total", endpoint=ep, by="bulkhead", scope="host") == 1
        assert sample(registry, "rejections_total", endpoint=ep, by="breaker", scope="host") == 1
        assert sample(registry, "breaker_transitions_total", endpoint=ep, state="open", scope="host") == 1

    def test_an_unusable_host_file_says_process(
        self, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A state_dir that cannot be used: the pieces carry on in the process, and say so."""
        monkeypatch.delenv("RESILIENT_CLIENT_TEST_STATE_DIR", raising=False)  # the kit's would win
        shared = tmp_path / "shared"
        shared.mkdir(mode=0o777)
        shared.chmod(0o777)  # others may write: refused
        session = rc.ResilientSession({"state_dir": str(shared), "defaults": {"state": "host"},
                                       "endpoints": [{"name": "api", "match": "http://api.test:8080/"}]})
        state = session._route_for("GET", URL).state
        assert state.bulkhead is not None and state.budget is not None and state.breaker is not None
        assert state.bulkhead.try_acquire()
        state.budget.try_spend()
        state.breaker.before_call()
        assert (state.bulkhead.scope, state.budget.scope, state.breaker.scope) == ("process",) * 3

    def test_budget_exhausted_says_its_scope(self, mocked, tmp_path: pathlib.Path) -> None:
        """A retry refused by the host-wide budget: BudgetExhausted says host."""
        events: list[Any] = []
        session = rc.ResilientSession(
            {"state_dir": str(tmp_path),
             "defaults": {"state": "host", "breaker": None,
                          "retry": {"attempts": 3, "backoff": {"initial": 0, "max": 0}},
                          "budget": {"ratio": 0.0, "min_per_second": 0.1, "window": 10}},
             "endpoints": [{"name": "api", "match": "http://api.test:8080/"}]},
            listeners=[events.append],
        )
        mocked.add(responses.GET, URL, status=503)
        session.get(URL)
        assert [e.scope for e in events if isinstance(e, rc.BudgetExhausted)] == ["host"]

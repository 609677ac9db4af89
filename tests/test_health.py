"""The health view, and the WSGI app serving it to HAProxy, on a real wsgiref server on loopback."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import responses
from peers import Peer, answer, free_port, wsgi
from urllib3.exceptions import NewConnectionError

import resilient_client as rc
from resilient_client.testing import FakeClock

CONFIG: dict[str, Any] = {
    "defaults": {"retry": None, "breaker": {"failure_threshold": 2, "reset_timeout": 30}},
    "endpoints": [
        {"name": "inventory", "match": "http://inventory.test/"},
        {"name": "search", "match": "http://search.test/", "critical": False, "bulkhead": None},
    ],
}


def refused() -> requests.ConnectionError:
    return requests.ConnectionError(NewConnectionError(None, "Connection refused"))  # type: ignore[arg-type]


@pytest.fixture
def mocked():
    with responses.RequestsMock(assert_all_requests_are_fired=False) as r:
        yield r


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(1000.0)


@pytest.fixture
def session(clock: FakeClock) -> rc.ResilientSession:
    return rc.ResilientSession(CONFIG, clock=clock)


def fail_twice(mocked: responses.RequestsMock, session: rc.ResilientSession, url: str) -> None:
    mocked.add(responses.GET, url, body=refused())
    for _ in range(2):
        with pytest.raises(requests.ConnectionError):
            session.get(url)


class TestHealthView:
    def test_a_fresh_session_lists_every_endpoint_healthy(self, session):
        """Every configured endpoint appears, breakers closed, bulkheads empty, no error rate yet."""
        h = session.health()
        assert (h.healthy, h.status) == (True, "ok")
        assert [e.name for e in h.endpoints] == ["inventory", "search"]
        inv = h["inventory"]
        assert (inv.breaker, inv.consecutive_failures, inv.retry_in) == ("closed", 0, None)
        assert inv.storage == "memory"
        assert (inv.in_flight, inv.max_concurrent, inv.critical) == (0, 50, True)
        assert (inv.attempts, inv.failures, inv.error_rate) == (0, 0, None)
        assert h["search"].max_concurrent is None and h["search"].critical is False

    def test_an_open_breaker_to_a_critical_endpoint_makes_the_service_unhealthy(self, mocked, session, clock):
        """Failures that open a critical endpoint's breaker flip healthy and say when it may retry."""
        session.health()
        fail_twice(mocked, session, "http://inventory.test/x")
        clock.advance(10)
        h = session.health()
        assert (h.healthy, h.status) == (False, "unhealthy")
        inv = h["inventory"]
        assert (inv.healthy, inv.breaker, inv.consecutive_failures) == (False, "open", 2)
        assert inv.retry_in == pytest.approx(20.0)

    def test_an_open_breaker_to_a_non_critical_endpoint_only_degrades(self, mocked, session):
        """critical: false keeps the service healthy while its breaker is open."""
        fail_twice(mocked, session, "http://search.test/q")
        h = session.health()
        assert (h.healthy, h.status) == (True, "degraded")
        assert h["search"].healthy is False and h["search"].breaker == "open"

    def test_half_open_counts_as_healthy_so_the_trial_call_can_come(self, mocked, session, clock):
        """After reset_timeout the breaker is half-open and the service healthy again (no dead end)."""
        fail_twice(mocked, session, "http://inventory.test/x")
        assert not session.health().healthy
        clock.advance(31)
        h = session.health()
        assert h["inventory"].breaker == "half-open"
        assert (h.healthy, h.status) == (True, "degraded")

    def test_a_forced_open_breaker_has_no_retry_time(self, session):
        """A breaker opened by hand stays open: unhealthy, with no retry_in."""
        session.circuit("inventory").open()
        h = session.health()
        assert not h.healthy and h["inventory"].retry_in is None

    def test_error_rate_counts_recent_attempts_only(self, mocked, session, clock):
        """The error rate covers attempts seen since health was first asked, over the last minute."""
        mocked.add(responses.GET, "http://inventory.test/ok", status=200)
        mocked.add(responses.GET, "http://inventory.test/bad", status=503)
        session.get("http://inventory.test/ok")  # before anyone asked: not counted
        session.health()
        for path in ("ok", "ok", "ok", "bad"):
            session.get(f"http://inventory.test/{path}")
        inv = session.health()["inventory"]
        assert (inv.attempts, inv.failures, inv.error_rate) == (4, 1, 0.25)
        clock.advance(35)
        session.get("http://inventory.test/bad")
        assert session.health()["inventory"].attempts == 5
        clock.advance(35)  # the first four slid out of the window
        inv = session.health()["inventory"]
        assert (inv.attempts, inv.failures, inv.error_rate) == (1, 1, 1.0)

    def test_bulkhead_usage_shows_calls_in_flight(self):
        """A streamed response holding its slot shows as one call in flight."""
        with Peer().on("*", answer(200, b'{"ok": true}')) as peer:
            s = rc.ResilientSession({"endpoints": [{"name": "peer", "match": peer.url("/"),
                                                    "bulkhead": {"max_concurrent": 4}}]})
            held = s.get(peer.url("/x"), stream=True)
            assert (s.health()["peer"].in_flight, s.health()["peer"].max_concurrent) == (1, 4)
            held.close()
            assert s.health()["peer"].in_flight == 0

    def test_unmatched_origins_appear_once_called(self, mocked, session):
        """A URL that no endpoint matches shows up under its origin after its first call."""
        mocked.add(responses.GET, "http://other.test:8080/", status=200)
        session.get("http://other.test:8080/")
        assert [e.name for e in session.health().endpoints][-1] == "http://other.test:8080"

    def test_the_budget_and_redis_storage_are_shown_without_secrets(self):
        """The retry budget's use appears, and a Redis URL's password never does."""
        url = f"redis://:hunter2secret@127.0.0.1:{free_port()}/0"
        s = rc.ResilientSession({"endpoints": [{"name": "shared", "match": "http://shared.test/",
                                                "breaker": {"storage": url}}]})
        h = s.health()
        assert h["shared"].storage == f"redis://:REDACTED@127.0.0.1:{url.rsplit(':', 1)[1]}"
        assert (h["shared"].budget_requests, h["shared"].budget_retries) == (0, 0)
        assert "hunter2secret" not in json.dumps(h.as_dict())


#: A config where one endpoint has a fallback and one is critical by choice despite its fallback.
FALLBACKS: dict[str, Any] = {
    "defaults": {"retry": None, "breaker": {"failure_threshold": 2, "reset_timeout": 30}},
    "endpoints": [
        {"name": "inventory", "match": "http://inventory.test/"},
        {"name": "reco", "match": "http://reco.test/", "fallback": {"status": 200, "json": []}},
        {"name": "prices", "match": "http://prices.test/", "fallback": "stale", "critical": True},
    ],
}


class TestCritical:
    def test_critical_follows_having_no_fallback(self):
        """Without `critical`, an endpoint is critical exactly when it has no fallback."""
        h = rc.ResilientSession(FALLBACKS).health()
        assert [(e.name, e.critical) for e in h.endpoints] == [
            ("inventory", True), ("reco", False), ("prices", True)]

    def test_an_endpoint_serving_its_fallback_keeps_the_service_healthy(self, mocked):
        """A dead peer behind a fallback opens its breaker, answers with the fallback, and only degrades."""
        session = rc.ResilientSession(FALLBACKS)
        mocked.add(responses.GET, "http://reco.test/for/42", body=refused())
        for _ in range(3):
            r = session.get("http://reco.test/for/42")
            assert r.is_fallback and r.json() == []
        h = session.health()
        assert h["reco"].breaker == "open" and h["reco"].critical is False
        assert (h.healthy, h.status) == (True, "degraded")

    def test_an_explicit_critical_true_wins_over_the_fallback(self):
        """`critical: true` on an endpoint with a fallback still makes the service unhealthy."""
        session = rc.ResilientSession(FALLBACKS)
        session.circuit("prices").open()
        assert (session.health().healthy, session.health().status) == (False, "unhealthy")

    @pytest.mark.parametrize(("defaults", "endpoint", "critical"), [
        ({"critical": True}, {"fallback": "stale"}, True),        # true in defaults is explicit too
        ({"critical": False}, {}, False),                         # so is false
        ({"fallback": "stale"}, {}, False),                       # the defaults' fallback is inherited
        ({"fallback": "stale"}, {"fallback": None}, True),         # switched off: critical again
        ({"fallback": "stale", "critical": True}, {"critical": None}, False),  # null: follow the fallback
    ])
    def test_defaults_merge_key_by_key(self, defaults, endpoint, critical):
        """`critical` and `fallback` merge from defaults like any key; null means "follow the fallback"."""
        config = {"defaults": defaults, "endpoints": [{"name": "e", "match": "http://e.test/", **endpoint}]}
        assert rc.ResilientSession(config).health()["e"].critical is critical

    def test_unmatched_origins_follow_the_defaults(self, mocked):
        """An origin no endpoint matches takes the defaults' fallback, so it is not critical either."""
        session = rc.ResilientSession({"defaults": {"fallback": {"status": 204}}})
        mocked.add(responses.GET, "http://other.test/", status=200)
        session.get("http://other.test/")
        session.circuit("http://other.test/").open()
        h = session.health()
        assert h["http://other.test:80"].critical is False and h.healthy


@pytest.fixture
def serve() -> Iterator[Any]:
    """Run a WSGI app on the test server on 127.0.0.1; yields a function(app) -> base URL."""
    peers: list[Peer] = []

    def start(app: Any) -> str:
        peer = Peer().on("*", wsgi(app)).start()
        peers.append(peer)
        return peer.origin

    yield start
    for peer in peers:
        peer.stop()


def raw_status(base: str, request: bytes) -> tuple[int, bytes]:
    """Send *request* as is (as HAProxy's check does) and return the status and body."""
    host, port = base.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=2) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


class TestHealthApp:
    def test_healthy_is_200_json_and_unhealthy_is_503(self, serve, session):
        """The app answers 200 with the view as JSON, and 503 once a critical breaker is open."""
        base = serve(rc.health_app(session))
        r = requests.get(base + "/health", timeout=2)
        assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
        assert r.headers["Cache-Control"] == "no-store"
        body = r.json()
        assert body["healthy"] is True and [e["name"] for e in body["endpoints"]] == ["inventory", "search"]
        session.circuit("inventory").open()
        r = requests.get(base + "/health", timeout=2)
        assert r.status_code == 503 and r.json()["status"] == "unhealthy"
        session.circuit("inventory").close()
        assert requests.get(base + "/health", timeout=2).status_code == 200

    def test_haproxy_checks_get_the_status_they_expect(self, serve, session):
        """HAProxy's default check (OPTIONS / HTTP/1.0) and a GET check both see 200 or 503."""
        base = serve(rc.health_app(session))
        assert raw_status(base, b"OPTIONS / HTTP/1.0\r\n\r\n") == (200, b"")
        get = b"GET /health HTTP/1.1\r\nHost: svc\r\nConnection: close\r\n\r\n"
        assert raw_status(base, get)[0] == 200
        session.circuit("inventory").open()
        assert raw_status(base, b"OPTIONS / HTTP/1.0\r\n\r\n")[0] == 503
        status, body = raw_status(base, get)
        assert status == 503 and json.loads(body)["healthy"] is False

    def test_head_has_no_body_and_post_is_refused(self, serve, session):
        """HEAD gets the status alone; other methods get 405 with Allow."""
        base = serve(rc.health_app(session))
        assert requests.head(base, timeout=2).status_code == 200
        r = requests.post(base, timeout=2)
        assert r.status_code == 405 and r.headers["Allow"] == "GET, HEAD, OPTIONS"

    def test_as_middleware_it_answers_its_path_and_passes_the_rest(self, serve, session):
        """Wrapping an application serves /health from the view and every other path from the app."""

        def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"the app: " + environ["PATH_INFO"].encode()]

        base = serve(rc.health_app(session, app, path="/_health"))
        assert requests.get(base + "/orders", timeout=2).text == "the app: /orders"
        assert "endpoints" in requests.get(base + "/_health", timeout=2).json()

    def test_the_app_starts_counting_errors_when_made(self, mocked, session):
        """Building the app subscribes the tracker, so calls made after it count."""
        rc.health_app(session)
        mocked.add(responses.GET, "http://inventory.test/x", status=503)
        session.get("http://inventory.test/x")
        assert session.health()["inventory"].failures == 1


HAPROXY_CHECKS = {
    "GET /health": ("    option httpchk\n"
                    "    http-check send meth GET uri /health ver HTTP/1.1 hdr Host localhost\n"
                    "    http-check expect status 200\n"),
    "bare option httpchk": "    option httpchk\n",  # OPTIONS / HTTP/1.0
}


def haproxy_server_status(sock_path: str) -> str | None:
    """The check status of server app/app1, from HAProxy's stats socket."""
    with socket.socket(socket.AF_UNIX) as c:
        c.settimeout(2)
        c.connect(sock_path)
        c.sendall(b"show stat\n")
        data = b""
        while chunk := c.recv(65536):
            data += chunk
    for line in data.decode().splitlines():
        if line.startswith("app,app1,"):
            return line.split(",")[17]  # the "status" column
    return None


@pytest.mark.parametrize("check", list(HAPROXY_CHECKS))
def test_a_real_haproxy_takes_the_service_out_and_back(tmp_path, serve, check):
    """HAProxy's health check marks the server DOWN while a critical breaker is open, UP after;
    an open breaker to a non-critical endpoint, or to one with a fallback, keeps it UP."""
    reco = FALLBACKS["endpoints"][1]  # has a fallback, no `critical`
    session = rc.ResilientSession({**CONFIG, "endpoints": [*CONFIG["endpoints"], reco]})
    haproxy = shutil.which("haproxy") or shutil.which("/usr/sbin/haproxy")
    if haproxy is None:
        pytest.fail("haproxy is not installed (apt-get install haproxy); .ci/run installs it")
    port = serve(rc.health_app(session)).rsplit(":", 1)[1]
    sock = str(tmp_path / "admin.sock")
    (tmp_path / "h.cfg").write_text(
        f"global\n    stats socket {sock} mode 600 level admin\n\n"
        "defaults\n    mode http\n    timeout connect 1s\n    timeout client 5s\n    timeout server 5s\n\n"
        f"backend app\n{HAPROXY_CHECKS[check]}"
        "    default-server inter 50ms fall 1 rise 1\n"
        f"    server app1 127.0.0.1:{port} check\n"
    )
    proc = subprocess.Popen([haproxy, "-f", str(tmp_path / "h.cfg"), "-db"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def wait_for(status: str) -> None:
        deadline = time.monotonic() + 5
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = haproxy_server_status(sock)
            except OSError:
                seen = None  # the socket is not there yet
            if seen is not None and seen.startswith(status):
                return
            time.sleep(0.02)
        pytest.fail(f"HAProxy did not see {status} within 5 s (last: {seen})")

    try:
        wait_for("UP")
        session.circuit("inventory").open()
        wait_for("DOWN")
        session.circuit("inventory").close()
        wait_for("UP")
        session.circuit("search").open()  # not critical: stays in rotation
        session.circuit("reco").open()  # serves its fallback: stays in rotation
        time.sleep(0.2)
        wait_for("UP")
    finally:
        proc.terminate()
        proc.wait(timeout=5)

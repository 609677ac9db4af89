"""
The one test server, tests/peers.py, does what it says, seen through plain
requests (so a failure here is the server's, not the session's).
"""

from __future__ import annotations

import gc
import ssl
import time
from collections.abc import Iterable, Iterator
from typing import Any

import pytest
import requests
from faults import REDIRECT_TARGET, client_sockets
from peers import (
    Blackhole,
    Peer,
    Switch,
    answer,
    blackholed,
    ca_bundle,
    close_early,
    delay,
    drip,
    drip_body,
    drip_headers,
    echo,
    flap,
    free_port,
    garbage,
    hang,
    head,
    oversized_headers,
    pause,
    peer_process,
    redirect,
    redirect_chain,
    redirect_to,
    reset,
    send,
    sequence,
    server_error,
    truncated,
    wsgi,
)


@pytest.fixture
def http() -> Iterator[requests.Session]:
    with requests.Session() as s:
        yield s


class TestPeer:
    def test_answers_in_turn_and_counts(self, http: requests.Session) -> None:
        """A path plays its behaviours in turn (the last repeats) and counts requests and connections."""
        with Peer() as peer:
            peer.on("/x", server_error(503), answer(200, "ok"))
            statuses = [http.get(peer.url("/x"), timeout=2).status_code for _ in range(3)]
            assert statuses == [503, 200, 200]
            assert peer.hits("/x") == 3 and peer.hits() == 3
            assert peer.connections == 1  # keep-alive
            assert http.get(peer.url("/unknown"), timeout=2).status_code == 404

    def test_echo_and_redirect(self, http: requests.Session) -> None:
        """echo describes the request; redirect sends a Location."""
        with Peer() as peer:
            peer.on("/echo", echo())
            peer.on("/go", redirect("/echo", 307))
            got = http.post(peer.url("/go?q=1"), data=b"body", timeout=2).json()
            assert (got["method"], got["path"], got["body"]) == ("POST", "/echo", "body")
            assert peer.last("/go").query == {"q": ["1"]}

    def test_hang_never_answers(self, http: requests.Session) -> None:
        """hang reads the request and sends nothing: the client's read timeout fires."""
        with Peer() as peer:
            peer.on("/h", hang())
            with pytest.raises(requests.ReadTimeout):
                http.get(peer.url("/h"), timeout=(1, 0.2))

    def test_drips_are_slow_but_complete(self, http: requests.Session) -> None:
        """drip_body and drip_headers deliver everything, one byte per interval."""
        with Peer() as peer:
            peer.on("/b", drip_body(b"abcd", interval=0.05))
            peer.on("/h", drip_headers(interval=0.001, body=b"done"))
            started = time.monotonic()
            assert http.get(peer.url("/b"), timeout=1).content == b"abcd"
            assert time.monotonic() - started >= 0.15
            assert http.get(peer.url("/h"), timeout=1).content == b"done"

    @pytest.mark.parametrize(
        ("behaviour", "error"),
        [
            (reset(), requests.ConnectionError),
            (reset(mid_response=True), requests.exceptions.ChunkedEncodingError),
            (reset(mid_headers=True), requests.ConnectionError),
            (truncated(), requests.exceptions.ChunkedEncodingError),
            (garbage(), requests.ConnectionError),
            (oversized_headers(), requests.ConnectionError),
            (close_early(), requests.exceptions.ChunkedEncodingError),
            (close_early(after_headers=False), requests.ConnectionError),
        ],
        ids=["reset", "reset-mid", "reset-mid-headers", "truncated", "garbage", "oversized-headers",
             "close-early", "close-before-headers"],
    )
    def test_broken_connections(self, http: requests.Session, behaviour: object, error: type) -> None:
        """Resets and early closes surface as requests' connection errors."""
        with Peer() as peer:
            peer.on("/x", behaviour)  # type: ignore[arg-type]
            with pytest.raises(error):
                http.get(peer.url("/x"), timeout=2)

    def test_stop_ends_hangs_at_once(self) -> None:
        """stop() returns promptly even while a connection hangs."""
        peer = Peer().start()
        peer.on("/h", hang())
        with pytest.raises(requests.ReadTimeout):
            requests.get(peer.url("/h"), timeout=(1, 0.1))
        started = time.monotonic()
        peer.stop()
        assert time.monotonic() - started < 1.0


class TestPorts:
    def test_free_port_refuses(self) -> None:
        """Nothing listens on free_port(): the connect is refused."""
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{free_port()}/", timeout=1)

    def test_blackhole_times_out_the_connect(self) -> None:
        """A Blackhole's connects time out (ConnectTimeout), never refused."""
        with Blackhole() as hole, pytest.raises(requests.ConnectTimeout):
            requests.get(hole.url(), timeout=(0.2, 1))


class TestComposition:
    def test_a_sequence_delays_then_drips_then_resets(self, http: requests.Session) -> None:
        """sequence() plays its steps in order: the pause, then the dripped bytes, then the RST."""
        with Peer() as peer:
            peer.on("/s", sequence(pause(0.1), send(head(200, length=10)), drip(b"abc", 0.02), reset()))
            started = time.monotonic()
            resp = http.get(peer.url("/s"), timeout=2, stream=True)
            assert time.monotonic() - started >= 0.1
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                resp.content  # noqa: B018
            assert peer.hits("/s") == 1

    def test_delay_then_any_behaviour(self, http: requests.Session) -> None:
        """delay() answers after its pause with what it wraps (200 ``ok`` by default)."""
        with Peer() as peer:
            peer.on("/d", delay(0.05))
            peer.on("/e", delay(0.0, server_error(502)))
            started = time.monotonic()
            assert http.get(peer.url("/d"), timeout=2).text == "ok"
            assert time.monotonic() - started >= 0.05
            assert http.get(peer.url("/e"), timeout=2).status_code == 502

    def test_a_wildcard_route_answers_any_other_path(self, http: requests.Session) -> None:
        """``"*"`` plays for every path without a route of its own."""
        with Peer() as peer:
            peer.on("*", answer(201))
            peer.on("/own", answer(202))
            statuses = [http.get(peer.url(p), timeout=2).status_code for p in ("/a", "/b/c", "/own")]
            assert statuses == [201, 201, 202]
            assert (peer.hits("/a"), peer.hits()) == (1, 3)

    def test_a_wsgi_app_answers(self, http: requests.Session) -> None:
        """wsgi() serves a WSGI application: its status, headers and body, the request's environ."""

        def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
            start_response("418 I'm a teapot", [("X-Path", environ["PATH_INFO"])])
            return [environ["wsgi.input"].read(), environ["QUERY_STRING"].encode()]

        with Peer() as peer:
            peer.on("/w", wsgi(app))
            resp = http.post(peer.url("/w?q=1"), data=b"tea;", timeout=2)
            assert (resp.status_code, resp.headers["X-Path"], resp.text) == (418, "/w", "tea;q=1")


class TestTLS:
    def test_serves_https_verified_against_the_test_ca(self, http: requests.Session) -> None:
        """A TLS peer answers over HTTPS; the bundle of ca_bundle() verifies it, per call."""
        with Peer(tls=True) as peer:
            peer.on("/x", answer(200, b"secure"))
            assert peer.url("/x").startswith("https://127.0.0.1:")
            assert http.get(peer.url("/x"), verify=ca_bundle(), timeout=2).text == "secure"
            assert http.get(peer.url("/x", host="localhost"), verify=ca_bundle(), timeout=2).ok
            assert (peer.hits("/x"), peer.connections, peer.handshakes) == (2, 2, 2)

    def test_without_the_bundle_the_certificate_is_refused(self, http: requests.Session) -> None:
        """The test CA is in no system store: verify=True fails on it."""
        with Peer(tls=True) as peer, pytest.raises(requests.exceptions.SSLError):
            http.get(peer.url("/x"), verify=True, timeout=2)

    def test_an_untrusted_peer_fails_verification(self, http: requests.Session) -> None:
        """trusted=False: a certificate from another CA, which the bundle does not hold."""
        with Peer(tls=True, trusted=False) as peer, pytest.raises(requests.exceptions.SSLError):
            http.get(peer.url("/x"), verify=ca_bundle(), timeout=2)
        assert (peer.connections, peer.handshakes, peer.hits()) == (1, 0, 0)

    def test_a_stalled_handshake_times_out_at_the_connect_timeout(self, http: requests.Session) -> None:
        """handshake="stall": the TCP connect succeeds, the ClientHello is never answered."""
        with Peer(tls=True, handshake="stall") as peer:
            started = time.monotonic()
            with pytest.raises(requests.Timeout):
                http.get(peer.url("/x"), verify=ca_bundle(), timeout=(0.2, 5))
            assert time.monotonic() - started < 1.0
            assert (peer.connections, peer.handshakes) == (1, 0)

    def test_behaviours_play_over_tls(self, http: requests.Session) -> None:
        """Drips, resets and hangs work over TLS as over TCP."""
        with Peer(tls=True) as peer:
            peer.on("/drip", drip_body(b"abc", 0.01))
            peer.on("/reset", reset(mid_response=True))
            peer.on("/hang", hang())
            assert http.get(peer.url("/drip"), verify=ca_bundle(), timeout=2).content == b"abc"
            with pytest.raises(requests.exceptions.ChunkedEncodingError):
                http.get(peer.url("/reset"), verify=ca_bundle(), timeout=2)
            with pytest.raises(requests.ReadTimeout):
                http.get(peer.url("/hang"), verify=ca_bundle(), timeout=(1, 0.1))
            assert peer.wait_open_at_most(1) <= 1

    def test_the_ca_bundle_is_a_pem_file(self) -> None:
        """ca_bundle() is one file, the same on every call, that ssl can load."""
        assert ca_bundle() == ca_bundle()
        ssl.create_default_context(cafile=ca_bundle())


class TestPeerProcess:
    def test_a_peer_in_another_process_is_controlled_through_a_pipe(self, http: requests.Session) -> None:
        """peer_process() starts a peer elsewhere; on() sends behaviours, hits() and connections count."""
        with peer_process(lifetime=30.0) as remote:
            remote.on("/x", answer(503), answer(200, b"ok"))
            assert [http.get(remote.url("/x"), timeout=2).status_code for _ in range(3)] == [503, 200, 200]
            remote.on("/x", flap(answer(201), answer(202)))
            assert [http.get(remote.url("/x"), timeout=2).status_code for _ in range(2)] == [201, 202]
            assert (remote.hits("/x"), remote.hits(), remote.connections) == (5, 5, 1)


class TestConnectionFaultsAndCounts:
    def test_refusing_closes_the_port_and_accepting_reopens_it(self) -> None:
        """
        While refusing, connects to the peer's port are refused; afterwards it serves again.
        """
        with Peer() as peer:
            peer.on("/x", answer(200, b"ok"))
            with requests.Session() as s:
                with peer.refusing(), pytest.raises(requests.ConnectionError):
                    s.get(peer.url("/x"), timeout=1)
                assert s.get(peer.url("/x"), timeout=1).text == "ok"
            assert peer.hits("/x") == 1

    def test_open_connections_fall_back_when_the_client_leaves_a_hang(self) -> None:
        """
        hang() frees its connection as soon as the client gives up.
        """
        with Peer() as peer, requests.Session() as s:
            peer.on("/h", hang())
            with pytest.raises(requests.ReadTimeout):
                s.get(peer.url("/h"), timeout=(1, 0.05))
            assert peer.wait_open_at_most(0) == 0
            assert peer.max_open == 1

    def test_flap_by_count_and_switch(self) -> None:
        """
        flap() alternates per request; a Switch plays what it was last switched to.
        """
        switch = Switch(answer(201))
        with Peer() as peer, requests.Session() as s:
            peer.on("/f", flap(answer(503), answer(200), every=2))
            peer.on("/s", switch)
            assert [s.get(peer.url("/f")).status_code for _ in range(5)] == [503, 503, 200, 200, 503]
            assert s.get(peer.url("/s")).status_code == 201
            switch.to(answer(202))
            assert s.get(peer.url("/s")).status_code == 202

    def test_redirect_to_a_blackhole_and_a_redirect_chain(self) -> None:
        """
        redirect_to works its Location out from the peer (its own blackhole); a chain counts its hops.
        """
        with Peer() as peer, requests.Session() as s:
            peer.on("/hole", redirect_to(blackholed("/x")))
            peer.on("/c", redirect_chain(3, 0.0))
            peer.on(REDIRECT_TARGET, redirect_chain(3, 0.0))
            with pytest.raises(requests.ConnectTimeout):
                s.get(peer.url("/hole"), timeout=(0.05, 1))
            assert peer.blackhole() is peer.blackhole()
            resp = s.get(peer.url("/c"), timeout=1)
            assert (resp.text, len(resp.history)) == ("ok", 3)
            assert (peer.hits("/c"), peer.hits(REDIRECT_TARGET)) == (1, 3)
        assert peer._blackhole is None  # stop() closed it

    def test_client_sockets_counts_what_the_client_holds(self) -> None:
        """
        client_sockets() sees a pooled keep-alive connection, and none once it is closed.
        """
        with Peer() as peer:
            peer.on("/k", answer(200))
            s = requests.Session()
            s.get(peer.url("/k")).close()
            assert client_sockets(peer.port) == 1
            s.close()
            gc.collect()
            assert client_sockets(peer.port) == 0

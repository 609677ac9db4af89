"""
The loopback peers of tests/peers.py do what they say, seen through plain
requests (so a failure here is the peer's, not the session's).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests
from peers import (
    Blackhole,
    Peer,
    answer,
    close_early,
    drip_body,
    drip_headers,
    echo,
    hang,
    redirect,
    refused_port,
    reset,
    server_error,
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
            (close_early(), requests.exceptions.ChunkedEncodingError),
            (close_early(after_headers=False), requests.ConnectionError),
        ],
        ids=["reset", "reset-mid", "close-early", "close-before-headers"],
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
    def test_refused_port_refuses(self) -> None:
        """Nothing listens on refused_port(): the connect is refused."""
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{refused_port()}/", timeout=1)

    def test_blackhole_times_out_the_connect(self) -> None:
        """A Blackhole's connects time out (ConnectTimeout), never refused."""
        with Blackhole() as hole, pytest.raises(requests.ConnectTimeout):
            requests.get(hole.url(), timeout=(0.2, 1))
